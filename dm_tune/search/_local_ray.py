"""Start the local Ray instance of a one-machine search, reachable from this machine only.

By default a local Ray listens on every interface: its gRPC servers (GCS, raylet, each worker,
the driver) bind 0.0.0.0 and its agents bind the machine's external address. Ray binds its
servers to loopback only when the node's IP address is 127.0.0.1, and the one public switch that
makes a local node take 127.0.0.1 is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's "local Ray
only" mode, the default on macOS and Windows). ``ray.init(_node_ip_address="127.0.0.1")`` is
private and, from Ray 2.60 on, turned back into the external address anyway.

Ray reads that variable once, when ``ray`` is first imported: ``init_local_ray`` must run before
anything in the process imports ``ray``, or the variable must be set when the process starts.
Checked on Ray 2.41 and 2.60 by tests/test_local_ray.py.
"""

from __future__ import annotations

import ipaddress
import os
import warnings

# Ray's public switch for "no multi-node cluster": the node takes 127.0.0.1 as its address.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# A custom resource that marks a search's own local Ray: ``--address auto`` finds the newest Ray on
# the machine, which may be another search's, and that one ends (taking the joined search's trials
# with it) when that search does. ``probe_ray`` refuses to join one. Trials never ask for it.
PRIVATE_RESOURCE = "dmtune_private_local_ray"
# Trials that ask for no GPU see none (CUDA_VISIBLE_DEVICES=""), so that ``device: auto`` does not
# train them on a GPU they were not given. Ray up to 2.50 does this by default, later Ray (2.60) only
# with this variable set to 1; a value already in the environment wins.
HIDE_UNREQUESTED_GPUS_ENV = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"


def init_local_ray(num_cpus: int | None = None, num_gpus: int | None = None, *,
                   object_store_memory: int | None = None, logging_level: str | int = "ERROR") -> None:
    """Start a new local Ray instance whose every listening socket is on 127.0.0.1.

    ``num_cpus``/``num_gpus``: what Ray may schedule (None: what the machine has);
    ``object_store_memory`` in bytes (None: Ray's default, 30% of RAM). No dashboard, and the
    workers' output is not copied to the driver. Never connects to an existing cluster (use
    ``ray.init(address=...)`` for that), and marked (``PRIVATE_RESOURCE``) so that no other search
    joins it. Raises RuntimeError when ``ray`` was imported before this
    call without ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the environment, since Ray would then
    listen on every interface.
    """
    os.environ[LOCAL_ONLY_ENV] = "0"
    os.environ.setdefault(HIDE_UNREQUESTED_GPUS_ENV, "1")
    import ray

    # Before ray.init, ray.util.get_node_ip_address() is the address a new local node would take.
    if not ipaddress.ip_address(ray.util.get_node_ip_address()).is_loopback:
        raise RuntimeError(
            f"init_local_ray: ray was imported before {LOCAL_ONLY_ENV}=0 was set, so a local Ray "
            "would listen on every interface; call init_local_ray before importing anything that "
            f"imports ray, or start the process with {LOCAL_ONLY_ENV}=0")
    hide_gpu_tip()
    if object_store_memory is None:
        object_store_memory = object_store_within_limit()
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store_memory,
             resources={PRIVATE_RESOURCE: 1}, include_dashboard=False, log_to_driver=False,
             logging_level=logging_level)


def hide_gpu_tip() -> None:
    """Before ``ray.init``: Ray 2.50 ends it with a FutureWarning that it will stop hiding GPUs from
    tasks that asked for none (the local Ray keeps hiding them; on a cluster the head decides). A
    filter for the process, not one restored afterwards (warnings.catch_warnings is not thread-safe:
    the filters another thread added meanwhile would be lost)."""
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*accelerator visible devices")


# Under an address-space limit (``ulimit -v``, as some clusters set), the object store may take this
# share of what the limit leaves this process: every Ray process maps the whole store, and each
# (this one, a worker that imports torch) holds gigabytes of address space besides.
STORE_SHARE_OF_LIMIT = 0.25
RAY_MIN_OBJECT_STORE = 75 * 2**20  # Ray refuses a smaller store


def object_store_within_limit() -> int | None:
    """An object store size that fits this process's address-space limit, or None (Ray's default,
    30% of the machine's memory) where there is no limit or the default fits. With the default
    over the limit, Ray's workers failed to map the store and the search waited for them forever."""
    from dm_tune._memory import address_space_held, physical_memory

    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, ValueError, OSError):
        return None
    memory, held = physical_memory(), address_space_held()
    if limit == resource.RLIM_INFINITY or memory is None or held is None:
        return None
    room = STORE_SHARE_OF_LIMIT * max(0, limit - held)
    return None if 0.3 * memory <= room else max(RAY_MIN_OBJECT_STORE, int(room))
