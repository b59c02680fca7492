#!/usr/bin/env bash
# Set everything up and run the whole test suite (slow end-to-end tests included) on the newest
# dependencies (.venv), then the tests that depend on Ray, Optuna and MLflow versions again on the
# oldest supported ones (.venv-oldest, built once by scripts/oldest.sh and then reused).
# With arguments, only the first run, with those arguments (e.g. -m "not slow", a file).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi

status=0
.venv/bin/python -m pytest -q || status=$?

# The lower ends of pyproject's ranges: the search tests (slow ones included) and the Ray API
# checks; about 6 minutes on 2 cores (plus about 2 to build .venv-oldest the first time).
OLDEST_TESTS=(tests/test_ray_api.py tests/test_local_ray.py tests/test_search_*.py
              tests/test_reports_load.py tests/test_reports_analysis.py)
echo "== again on the oldest supported Ray, Optuna and MLflow (.venv-oldest)"
bash scripts/oldest.sh
.venv-oldest/bin/python -m pytest -q -p no:cacheprovider "${OLDEST_TESTS[@]}" || status=$?
exit $status
