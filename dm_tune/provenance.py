"""What every result carries: the code's git commit, the versions of the packages that ran it, and
what of the machine decides its rounding (the CPU model; a training result adds torch's threads)."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

# Every package whose version can change a number dm-tune writes: mnist1d generates the MNIST-1D data,
# scipy optimises the report's Gaussian processes (through scikit-learn), cmaes is the cmaes sampler.
PACKAGES = ("dm-tune", "torch", "torchvision", "numpy", "scikit-learn", "scipy", "mnist1d", "ray", "optuna",
            "cmaes", "mlflow", "pandas")


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


@functools.cache
def cpu_model() -> str:
    """The processor's model name ("AMD EPYC", ...), else platform's word for it, else "unknown"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration, UnicodeDecodeError):
        return platform.processor() or "unknown"


def provenance() -> dict[str, object]:
    from dm_tune import _native  # (imports torch: here, as git_commit and package_versions serve the reports)

    # dm_native: whether the fused CPU kernel for DM was built (it changes rounding, not maths).
    # cpu: a run repeats bit for bit only on the same kind of CPU (and with the same torch threads,
    # which a training result adds: read as it trains, they are not the caller's here).
    return {"git_commit": git_commit(), "versions": package_versions(), "platform": platform.platform(),
            "cpu": cpu_model(), "dm_native": _native.available()}
