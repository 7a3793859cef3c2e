#!/usr/bin/env bash
# Rewrites requirements/lock.txt with the newest versions pyproject.toml's ranges admit today:
# installs textlora[test] into a throw-away venv without the lock and freezes it. Then run
# `bash scripts/test.sh` (which installs from the new lock) and commit the lock only if it passes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="$(sed -n 's/^TORCH_SPEC="\${TEXTLORA_TORCH-\(.*\)}"$/\1/p' scripts/setup.sh)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "$TORCH_SPEC"
"$WORK/venv/bin/pip" install -q ".[test]"
{
    sed -n '1,3p' requirements/lock.txt
    "$WORK/venv/bin/pip" freeze --exclude-editable | grep -v -e "^torch==" -e "^textlora" | sort -f
} > requirements/lock.txt.new
mv requirements/lock.txt.new requirements/lock.txt
echo "refresh-lock: wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages); now run bash scripts/test.sh"
