"""Shared fixtures: a real local Ray instance, tiny studies, and the dm-tune console script."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Local Ray instances of the tests listen on 127.0.0.1 only (read by Ray when first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")

DM_TUNE = str(Path(sys.executable).parent / "dm-tune")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (``-n``), the slow end-to-end tests are handed out first: the workers
    then end on short tests together, not one of them alone on a minute-long search. The order is
    each worker's collection, which the scheduler hands out (a worker's option says no -n: xdist's
    ``workerinput`` marks one); scripts/test.sh hands the tests out one at a time (--maxschedchunk 1),
    or the first worker would take the first quarter of its share, every slow test, at once."""
    if getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train faster on one intra-op thread (much faster on a busy machine), and a
    population is compared with its members' own runs on the same thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _without_dac_override():
    """preexec_fn: as root, give up the capability to ignore file permissions (so that a
    read-only file or directory is read-only for the child, as for any other user)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def permissions_preexec():
    """A subprocess preexec_fn under which file permissions hold: None for a user other than
    root; as root, one that drops the capability to override them. Skips the calling test when
    root cannot drop it here (permissions would not hold, so the test could not fail)."""
    import subprocess

    if os.geteuid() != 0:
        return None
    try:
        subprocess.run(["true"], preexec_fn=_without_dac_override, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE here ({e}): a read-only "
                    "file would be writable, so this test cannot run")
    return _without_dac_override


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_study(name: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """A study small enough for a test: digits, 3 epochs, 3 DM trials (on one seed), 2 seeds, 2 baselines."""
    study: dict[str, Any] = {
        "name": name,
        "settings": {"dataset": ["digits"], "noise": ["symmetric"], "noise_rate": [0.4]},
        "seeds": [0, 1],
        "search": {"num_samples": 3, "top_k": 1},
        "search_seeds": 1,  # one seed per search arm unless a test asks for more
        "baselines": ["cce", "imae"],
        "training": {"epochs": 3},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "max_failures": 1,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(study.get(key), dict):
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    return study


@pytest.fixture(autouse=True)
def no_ray_left_running(request):
    """A test that starts Ray in the pytest process without ``ray_local`` must shut it down: one left
    running made the next test of its worker that starts Ray fail ("Maybe you called ray.init twice
    by accident?"), which test depending on how pytest-xdist shared the tests out."""
    ray = sys.modules.get("ray")
    running = ray is not None and ray.is_initialized()
    yield
    ray = sys.modules.get("ray")
    if "ray_local" in request.fixturenames or running or ray is None or not ray.is_initialized():
        return
    ray.shutdown()
    pytest.fail("this test left Ray running in the pytest process (shut down now)")


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray instance for the module (started once: about 5 s), on 127.0.0.1 only."""
    import ray

    from dm_tune.search._local_ray import init_local_ray

    init_local_ray(num_cpus=2, object_store_memory=200 * 1024 * 1024)
    yield ray
    ray.shutdown()
