#!/usr/bin/env bash
# Set up dm-tune from a fresh checkout: a venv in .venv with the package and its test extras,
# and (as root, where missing) Debian's Chromium for the HTML report's browser test.
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
if [ "${DMTUNE_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "setup: chromium not found (the report's browser test will be skipped); install chromium and chromium-driver" >&2
    fi
fi
