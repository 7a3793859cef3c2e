#!/usr/bin/env bash
# The test suite, from a fresh clone: set up, then pytest (offline; ../shared enables integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m pytest "$@"
