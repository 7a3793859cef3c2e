#!/usr/bin/env bash
# Trains the base-size runs behind the README's results table, one after another, on all-mpnet-base-v2:
#   configs/agnews-mpnet-r4-qkv.yaml (S1's recipe), configs/agnews-mpnet-best.yaml,
#   configs/agnews-mpnet-r8-qv-top4.yaml (S2's recipe). The best run is then averaged as the published model was
#   (the commands in configs/agnews-mpnet-best.yaml's header): the greedy soup of its kept checkpoints on validation
#   accuracy (runs/agnews-mpnet-best-soup), then that soup moved back towards the start of training, the fraction
#   chosen on validation and shifted accuracy (`textlora average --toward-start`, into runs/agnews-mpnet-best-avg).
# On a CPU each takes hours. Run it again after an interruption: a finished run (summary.json) is kept, an
# unfinished one continues from its newest checkpoint (`textlora train --resume`), a missing one starts.
# A run whose folder holds another configuration than its config file has now (the file was edited since) is
# neither kept as finished nor resumed: the script stops and says what differs (scripts/config_drift.py).
#
#   bash scripts/base-size-runs.sh [CONFIG ...] > runs/base-size.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/textlora ] && . .venv/bin/activate
bash scripts/get-base-model.sh
CONFIGS=("$@")
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=(configs/agnews-mpnet-r4-qkv.yaml configs/agnews-mpnet-best.yaml
                                      configs/agnews-mpnet-r8-qv-top4.yaml)
for config in "${CONFIGS[@]}"; do
    run="runs/$(basename "$config" .yaml)"
    if [ -f "$run/config.yaml" ] && ! differences=$(python scripts/config_drift.py "$config" "$run"); then
        echo "base-size-runs: $run was trained with another configuration than $config has now:" >&2
        echo "$differences" | sed 's/^/    /' >&2
        echo "base-size-runs: move it away (mv $run $run-old) to train $config as it is now" >&2
        exit 1
    fi
    if [ -f "$run/summary.json" ]; then
        echo "base-size-runs: $run is finished"
    elif [ -f "$run/config.yaml" ]; then
        echo "base-size-runs: continuing $run ($(date -u +%FT%TZ))"
        textlora train --resume "$run"
    else
        echo "base-size-runs: starting $run ($(date -u +%FT%TZ))"
        textlora train --config "$config" train.quiet=true
    fi
done
if [ -f runs/agnews-mpnet-best/summary.json ] && [ ! -f runs/agnews-mpnet-best-avg/summary.json ]; then
    [ -f runs/agnews-mpnet-best-soup/summary.json ] ||
        textlora average runs/agnews-mpnet-best --greedy --metric accuracy --output runs/agnews-mpnet-best-soup
    steps=$(python -c "import json; print(','.join(str(s) for s in json.load(open(
        'runs/agnews-mpnet-best-soup/summary.json'))['averaged']['steps']))")
    textlora average runs/agnews-mpnet-best --steps "$steps" --metric mean/accuracy \
        --toward-start 1,0.7,0.6,0.5,0.4,0.3
fi
