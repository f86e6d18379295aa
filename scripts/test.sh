#!/usr/bin/env bash
# Create or reuse .venv, install the project with its dev tools, run the tests.
#   scripts/test.sh              # fast suite (unit + ray + small end-to-end); what CI runs
#   scripts/test.sh --all        # also the slow end-to-end runs
#   scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh

marker=(-m "not slow")
if [[ "${1:-}" == "--all" ]]; then marker=(); shift; fi

echo "== lint (ruff)"
.venv/bin/ruff check .
echo "== tests"
set +e
.venv/bin/python -m pytest "${marker[@]}" "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit $rc
