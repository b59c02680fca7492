"""What a benchmark's result file records of the machine it ran on (light: no torch import)."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def machine() -> dict[str, Any]:
    """Python, CPU model and count, platform, the versions of torch, Ray, Optuna, MLflow and dm-tune;
    the GPU where torch is loaded."""
    info: dict[str, Any] = {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                            "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    # The installed versions the figures were measured with (from the package metadata: no import)
    from importlib.metadata import PackageNotFoundError, version

    for package in ("torch", "ray", "optuna", "mlflow", "dm-tune"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (how busy the machine was), where the OS tells."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
