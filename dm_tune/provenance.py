"""What every result carries: the code's git commit and the versions of the packages that ran it."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from dm_tune import _native

PACKAGES = ("dm-tune", "torch", "torchvision", "numpy", "scikit-learn", "ray", "optuna", "mlflow", "pandas")


@functools.cache
def git_commit() -> str:
    """HEAD of the checkout dm_tune runs from, "+dirty" if it has uncommitted changes; "unknown" outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


@functools.cache
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def provenance() -> dict[str, object]:
    # dm_native: whether the fused CPU kernel for DM was built (it changes rounding, not maths).
    return {"git_commit": git_commit(), "versions": package_versions(), "platform": platform.platform(),
            "dm_native": _native.available()}
