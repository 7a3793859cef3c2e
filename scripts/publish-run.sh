#!/usr/bin/env bash
# Copies a finished run folder for publishing: everything but its checkpoints (optimizer state, tens of MB)
# and its predictions (the texts it scored). What is left loads, evaluates, predicts and serves as the run does:
# adapter, config, labels, tokenizer, budget, data report, metrics, summary, evaluations, report.
#
#   bash scripts/publish-run.sh runs/agnews-mpnet-best published/agnews-mpnet-best
set -euo pipefail
usage="usage: bash scripts/publish-run.sh RUN DEST"
run=${1:?$usage}
dest=${2:?$usage}
if [ ! -f "$run/summary.json" ] || [ ! -d "$run/adapter" ]; then
    echo "error: $run is not a finished run folder (no summary.json or adapter/); publish a run that finished" >&2
    exit 2
fi
if [ -e "$dest" ]; then
    echo "error: $dest already exists; publishing never replaces a folder: remove it or choose another DEST" >&2
    exit 2
fi
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d "$(dirname "$dest")/.publish.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tar -C "$run" --exclude=./checkpoints --exclude=./predictions -cf - . | tar -C "$tmp" -xf -
mv "$tmp" "$dest"
trap - EXIT
echo "published $run as $dest ($(du -sh "$dest" | cut -f1))"
