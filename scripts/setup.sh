#!/usr/bin/env bash
# Set up dm-tune from a fresh checkout: a venv in .venv with the package and its test extras,
# and (as root, where missing) Debian's Chromium and chromedriver for the HTML report's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# The fused CPU kernel for DM is optional (it needs a C compiler); say so when it is missing.
.venv/bin/python -c "from dm_tune import _native; _native.available() or print(
    'setup: no C compiler: DM runs with torch operations (slower on small CPU batches)')" >&2
if [ "${DMTUNE_SKIP_BROWSER:-0}" != 1 ]; then
    bash scripts/browser.sh
fi
