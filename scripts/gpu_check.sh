#!/usr/bin/env bash
# Everything textlora checks on a CUDA GPU, in one command of under 10 minutes, for a machine that is
# lent briefly: the CUDA tests, then the GPU benchmarks at roberta-base shape (random weights: speed
# does not depend on them).
#
#   bash scripts/gpu_check.sh [OUT_DIR]      # default gpu-check/
#
# Steps, each under its own time limit, each run even when an earlier one failed (the exit status
# says whether any did):
#   1. tests/test_cuda.py: bf16 and fp16 training, predictions against fp32 on the CPU, the prefix
#      cache, the first-token last layer with CUDA's SDPA, torch.compile, pinned batches   (150 s)
#   2. train_speed: notebook stack vs best-practice Trainer vs textlora, 200 steps, all-layer LoRA;
#      its table gives the projected time of a 120k-text AG News epoch                       (200 s)
#   3. train_speed: LoRA on layers 8-11, prefix cache on vs off, epochs 2-3 timed             (100 s)
#   4. train_speed: textlora with and without train.compile, compilation left out            (130 s)
# OUT_DIR gets env.txt (GPU, driver, versions), one log per step and the BENCHMARKS.md sections
# (*.md) to paste in.
#
# Needs: textlora importable (pip install -e '.[test]'; else src/ is put on PYTHONPATH) and the
# roberta-base config + tokenizer folder, ../shared/models/roberta-base-config by default
# (ROBERTA_SHAPE=folder to change). Training rows: ../shared's 46,965, else the repo's 16,000.
# On a GPU machine without internet that has torch, transformers, peft and accelerate, the rest can
# come as wheels downloaded elsewhere, e.g. for Python 3.12:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d wheels datasets dill multiprocess omegaconf
#   pip wheel --no-deps antlr4-python3-runtime==4.9.3 -w wheels      # omegaconf's parser: no wheel on PyPI
# and there: pip install --no-index --no-deps wheels/*.whl
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
shape="${ROBERTA_SHAPE:-../shared/models/roberta-base-config}"
"$python" -c "import textlora" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$python" - <<'EOF'
import torch, transformers, peft, accelerate, datasets
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.get_device_name()}, "
      f"bf16 {torch.cuda.is_bf16_supported()}; transformers {transformers.__version__}, peft {peft.__version__}, "
      f"accelerate {accelerate.__version__}, datasets {datasets.__version__}")
EOF
} 2>&1 | tee "$out/env.txt"

failed=()
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most $limit s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    local status=$?
    tail -n 25 "$out/$name.log"
    [ "$status" -eq 0 ] || { echo "== $name FAILED (exit $status; 124 = out of time)"; failed+=("$name"); }
}

speed=(benchmarks/train_speed.py --device cuda --model "$shape")
step tests 150 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step train_speed 200 "$python" "${speed[@]}" --steps 200 \
    --out "$out/train_speed-cuda-all.md" --section train_speed-cuda-all
step prefix_cache 100 "$python" "${speed[@]}" --lora-layout top --arms textlora-nocache,textlora-cache \
    --rows 2400 --steps 150 --from-epoch 2 --out "$out/train_speed-cuda-top.md" --section train_speed-cuda-top
step compile 130 "$python" "${speed[@]}" --arms textlora,textlora-compile --steps 300 --skip-steps 50 \
    --out "$out/train_speed-cuda-compile.md" --section train_speed-cuda-compile

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (logs in $out/)"
    exit 1
fi
echo "all steps passed; results in $out/"
