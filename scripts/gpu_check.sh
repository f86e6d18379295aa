#!/usr/bin/env bash
# The GPU check: one command for an offline single-GPU machine with a CUDA PyTorch image
# (torch, transformers, accelerate), at most about 8 minutes. It runs backdoor SFT on Ray Train
# with one GPU worker, our PPO (Ray actors sharing the GPU, and in one process) against TRL's
# GRPO on the same GPU at 64 samples x 128 new tokens per step in bf16, and in-process PPO at a
# 768-wide, 12-layer Llama shape; it prints samples/s, the ratio, time per phase and memory
# (bench/gpu_check.py; gpu_check.json in --out).
#
#   scripts/gpu_check.sh [--dry-run] [--out DIR] [--json]
#
# --dry-run: the same stages on the CPU in fp32 with tiny shapes (a CI test runs it).
# On a machine without Ray or pydantic, build the wheels first where there is a network:
#   ../shared/gpu/offline-ray-wheels.sh .gpu-wheels trl==1.16.0 datasets==5.2.0 peft==0.21.2
# and bring .gpu-wheels along; this script installs them into .offline-site (no network used).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=${PYTHON:-python3}
fi
if ! "$PY" -c "import ray, pydantic" 2>/dev/null; then
  if [[ ! -d .gpu-wheels ]]; then
    echo "gpu_check: Ray/pydantic missing and no .gpu-wheels folder (see the header of this script)" >&2
    exit 2
  fi
  echo "== installing .gpu-wheels into .offline-site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target .offline-site .gpu-wheels/*.whl
  export PYTHONPATH="$PWD/.offline-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
exec "$PY" bench/gpu_check.py "$@"
