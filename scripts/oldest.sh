#!/usr/bin/env bash
# Build .venv-oldest: the oldest supported torch, torchvision, Ray, Optuna and MLflow (the lower
# bounds in pyproject.toml) layered over .venv, so that everything else already there is reused
# rather than downloaded again (torch 2.6 is PyPI's CUDA build: with its NVIDIA libraries about
# 5 GB, under a minute from the package index here). Skipped when .venv-oldest exists and was
# built from the same pins over the same .venv.
#
# How the layering works: .venv-oldest is a plain venv of the same interpreter whose
# site-packages holds one .pth file that calls site.addsitedir() on .venv's site-packages. Its own
# site-packages comes first on sys.path, so what pip installs there shadows .venv's copies;
# .venv's .pth files (the editable dm_tune install) still run. pip sees .venv's packages as
# installed, keeps those that satisfy the pins, and installs only what the old versions need.
#
# Usage: bash scripts/oldest.sh            (then: .venv-oldest/bin/python -m pytest ...)
set -euo pipefail
cd "$(dirname "$0")/.."

# The lower bounds of pyproject.toml; keep them in step.
PINS=("torch==2.6.0" "torchvision==0.21.0" "ray[tune]==2.41.0" "optuna==3.6.2" "mlflow==3.9.0")

ENV=.venv-oldest
MAIN_SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")
# Rebuilt when the pins, .venv's interpreter or the set of packages in .venv change.
STAMP="${PINS[*]} over $MAIN_SITE $(.venv/bin/python -c 'import sys; print(sys.version.split()[0])') \
$(ls "$MAIN_SITE" | grep -i 'dist-info$' | md5sum | cut -c1-12)"
if [ -f "$ENV/.pins" ] && [ "$(cat "$ENV/.pins")" = "$STAMP" ]; then
    exit 0
fi

rm -rf "$ENV"
# The old CUDA wheels (about 3 GB, downloaded to the temporary folder) and what they unpack to
# (about 5.7 GB) are on disk at once: say so up front rather than fail half-way through pip.
.venv/bin/python - 9 <<'EOF'
import shutil, sys, tempfile
need, tmp = float(sys.argv[1]), tempfile.gettempdir()
free = min(shutil.disk_usage(".").free, shutil.disk_usage(tmp).free) / 2**30
if free < need:
    sys.exit(f"oldest.sh: building .venv-oldest needs about {need:.0f} GB of free disk, here and in {tmp}; "
             f"{free:.1f} GB is free")
EOF
# A half-built environment is removed rather than left to hold gigabytes of disk.
trap 'rm -rf "$ENV"' ERR
# Built from .venv's interpreter, so that .venv's compiled packages fit it.
.venv/bin/python -m venv --without-pip "$ENV"
SITE=$("$ENV/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
echo "import site; site.addsitedir('$MAIN_SITE')" > "$SITE/zz-dmtune-main-venv.pth"
# .venv's pip installs into .venv-oldest (--python); old packages that .venv also has stay in
# .venv untouched ("outside environment") and are shadowed. No cache: the old CUDA wheels are used
# once, and a cached copy would double their few GB on disk.
.venv/bin/python -m pip --python "$ENV/bin/python" install --quiet --disable-pip-version-check --no-cache-dir \
    "${PINS[@]}"
# The dm-tune console script, for the tests that run it.
cat > "$ENV/bin/dm-tune" <<EOF
#!$PWD/$ENV/bin/python
import sys
from dm_tune.cli import main
sys.exit(main())
EOF
chmod +x "$ENV/bin/dm-tune"
"$ENV/bin/python" -c "import torch, torchvision, ray, optuna, mlflow
print('oldest env: torch', torch.__version__, 'torchvision', torchvision.__version__, 'ray', ray.__version__,
      'optuna', optuna.__version__, 'mlflow', mlflow.__version__)"
echo "$STAMP" > "$ENV/.pins"
trap - ERR
