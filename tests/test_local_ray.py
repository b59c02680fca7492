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

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from /proc (Linux)")]

CHILD = r"""
import ipaddress, json, os, sys
from pathlib import Path

from dm_tune.search._local_ray import init_local_ray


def descendants(root):
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= new
        grew = bool(new)
    return tree


def address(hexaddr):
    raw = bytes.fromhex(hexaddr)  # 32-bit words in host (little-endian) order
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def listeners(pids):
    owner = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    owner[link[8:-1]] = pid
        except OSError:
            pass
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            hexaddr, port = f[1].split(":")
            # TCP: listening sockets (state 0A); UDP: every bound socket.
            if f[9] in owner and (table.startswith("udp") or f[3] == "0A"):
                pid = owner[f[9]]
                name = Path(f"/proc/{pid}/comm").read_text().strip()
                found.append([table, str(address(hexaddr)), int(port, 16), name])
    return found


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
    return {**env, "PYTHONWARNINGS": "ignore"}


def _is_loopback(host: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(host)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_local_ray_listens_on_loopback_only():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=_env(), timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    names = {name for *_, name in out["listeners"]}
    assert {"gcs_server", "raylet"} <= names, out  # the measurement sees Ray's own servers
    exposed = [entry for entry in out["listeners"] if not _is_loopback(entry[1])]
    assert exposed == [], f"Ray {out['ray']} listens beyond loopback: {exposed}"
    assert out["cuda_visible_devices"] == ""  # a trial that asked for no GPU sees none


def test_refuses_when_ray_was_imported_first():
    code = ("import ray\nfrom dm_tune.search._local_ray import init_local_ray\n"
            "try:\n    init_local_ray(num_cpus=1)\nexcept RuntimeError as e:\n    print('refused:', e)\n"
            "else:\n    print('started', ray.is_initialized())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("refused:") and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in proc.stdout
