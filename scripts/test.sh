#!/usr/bin/env bash
# Set everything up and run the whole test suite (slow end-to-end tests included) on the newest
# dependencies (.venv), then the tests that depend on torch, Ray, Optuna and MLflow versions again on the
# oldest supported ones (.venv-oldest, built once by scripts/oldest.sh and then reused).
# With arguments, only the first run, with those arguments (e.g. -m "not slow", a file).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi

# Two pytest-xdist workers. In one process the suite keeps one core busy about three quarters of
# its time and waits the rest (Ray start-ups, searches run as commands); two workers fill both
# cores (15 minutes -> 10 on a 2-core VM); a third worker adds nothing (tests/test_search_cli.py and
# tests/test_datasets_disk.py: 302 s against 310 s, 2026-12-07): the two are busy. The slow
# end-to-end tests are handed out first (tests/conftest.py), one test at a time: in chunks, the
# first worker took a quarter of its share at once, every slow test among them.
XDIST=(-n 2 --dist load --maxschedchunk 1)
status=0
.venv/bin/python -m pytest -q "${XDIST[@]}" || status=$?

# The lower ends of pyproject's ranges: the Ray API checks, the quick search tests, the report tests
# but the browser's (on pandas 2 there: MLflow 3.9 needs pandas < 3), and the tests of what torch
# and torchvision compute (losses, training, populations, the fused kernel, models, data) (about 4
# minutes on 2 cores, plus about 2 to build .venv-oldest the first time). Left to the newest
# versions: the slow end-to-end searches (about 7 minutes more), the CLI's input checks (answered
# before any of those libraries is imported) and the search with populations (dm-tune's own
# bookkeeping over the Ray and MLflow calls the other searches make).
OLDEST_TESTS=(tests/test_ray_api.py tests/test_local_ray.py tests/test_search_seams.py tests/test_search_stores.py
              tests/test_search_run.py tests/test_search_spaces.py tests/test_search_retrieval.py
              tests/test_reports_load.py tests/test_reports_analysis.py tests/test_reports_surface.py
              tests/test_reports_retrieval.py tests/test_stability.py
              tests/test_losses.py tests/test_weighting.py tests/test_class_weighting.py tests/test_native.py
              tests/test_train.py tests/test_population.py tests/test_cuda.py tests/test_retrieval.py
              tests/test_datasets_disk.py tests/test_bounded_load.py tests/test_fingerprint.py
              --deselect tests/test_search_run.py::test_population_trials_leave_the_same_records_as_single_trials)
echo "== again on the oldest supported torch, torchvision, Ray, Optuna and MLflow (.venv-oldest)"
bash scripts/oldest.sh
.venv-oldest/bin/python -m pytest -q -p no:cacheprovider "${XDIST[@]}" -m "not slow" "${OLDEST_TESTS[@]}" || status=$?
exit $status
