"""init_local_ray: every socket the local Ray instance listens on is on the loopback interface.

Each check runs in a fresh interpreter, since Ray reads its local-only switch when it is first
imported. Sockets are read from /proc (Linux), for the driver and all its descendants (GCS, raylet,
agents, workers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._sockets import is_loopback

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from /proc (Linux)")]

CHILD = r"""
import json, os, sys

sys.path.insert(0, os.environ["DMTUNE_ROOT"])
from dm_tune.search._local_ray import init_local_ray
from tests._sockets import descendants, listeners


init_local_ray(num_cpus=1, object_store_memory=100 * 1024 * 1024)
import ray


@ray.remote(num_gpus=0)
def gpus_seen():
    return os.environ.get("CUDA_VISIBLE_DEVICES")


seen = ray.get(gpus_seen.remote())  # also starts a worker, which listens too
print(json.dumps({"ray": ray.__version__, "listeners": listeners(descendants(os.getpid())),
                  "cuda_visible_devices": seen}))
ray.shutdown()
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    return {**env, "PYTHONWARNINGS": "ignore", "DMTUNE_ROOT": str(Path(__file__).resolve().parents[1])}



def test_local_ray_listens_on_loopback_only():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=_env(), timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    names = {name for *_, name in out["listeners"]}
    assert {"gcs_server", "raylet"} <= names, out  # the measurement sees Ray's own servers
    exposed = [entry for entry in out["listeners"] if not is_loopback(entry[1])]
    assert exposed == [], f"Ray {out['ray']} listens beyond loopback: {exposed}"
    assert out["cuda_visible_devices"] == ""  # a trial that asked for no GPU sees none


def test_refuses_when_ray_was_imported_first():
    code = ("import ray\nfrom dm_tune.search._local_ray import init_local_ray\n"
            "try:\n    init_local_ray(num_cpus=1)\nexcept RuntimeError as e:\n    print('refused:', e)\n"
            "else:\n    print('started', ray.is_initialized())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("refused:") and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in proc.stdout


CLUSTER_CHILD = r"""
import json, os, sys, warnings

sys.path.insert(0, os.environ["DMTUNE_ROOT"])
from ray.cluster_utils import Cluster

import ray
from dm_tune.search._preflight import connect_ray

TIP = ("Tip: In future versions of Ray, Ray will no longer override accelerator visible devices env var if "
       "num_gpus=0 or num_gpus=None (default).")
real_init = ray.init


def init_as_ray_250(*args, **kwargs):  # Ray 2.50's ray.init ends with this warning (2.41 and 2.60 say nothing)
    context = real_init(*args, **kwargs)
    warnings.warn(TIP, FutureWarning)
    return context


ray.init = init_as_ray_250
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        connect_ray(cluster.address)
    print(json.dumps({"ray": ray.__version__, "connected": ray.is_initialized(),
                      "warnings": [f"{w.category.__name__}: {w.message}" for w in seen]}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_joining_a_cluster_prints_no_ray_tip():
    """Ray 2.50's ray.init ends with a FutureWarning about GPUs it will stop hiding: a search that
    joined a cluster printed it among its own lines (a real cluster; ray.init made to warn as 2.50's)."""
    proc = subprocess.run([sys.executable, "-c", CLUSTER_CHILD], capture_output=True, text=True, env=_env(),
                          timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["connected"]
    assert [w for w in out["warnings"] if w.startswith("FutureWarning")] == [], out
