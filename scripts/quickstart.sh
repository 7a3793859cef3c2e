#!/usr/bin/env bash
# The main job, offline, from a fresh clone: set up, then train + evaluate the quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
textlora train --config configs/quickstart.yaml train.run_name="quickstart-$(date +%Y%m%d-%H%M%S)" "$@"
