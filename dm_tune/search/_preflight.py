"""Pre-flight checks of a search: everything that can fail on user input fails here, before
anything is written (the tracking server answers, the data loads, Ray is reachable, the GPUs
asked for exist)."""

from __future__ import annotations

import ipaddress
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dm_tune.errors import UserError, check_reachable, parse_url
from dm_tune.search._local_ray import PRIVATE_RESOURCE
from dm_tune.search._study import Study


STORAGE_TIMEOUT_S = 60.0
_STORAGE_PROBE = """import sys
import pyarrow.fs
try:
    fs, path = pyarrow.fs.FileSystem.from_uri(sys.argv[1])
    fs.get_file_info(path)
except Exception as e:
    print(" ".join((str(e) or type(e).__name__).split())[:300], file=sys.stderr)
    sys.exit(3)
"""


def _run_probe(script: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a child Python within ``timeout`` (subprocess.TimeoutExpired past it): a
    connection that never answers is killed with the child, not left holding this process."""
    # PYTHONSAFEPATH: not the current folder on sys.path (its inspect.py would shadow the library's)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONSAFEPATH": "1"})


# Remote storage whose URI names its bucket where a URL names its host (hdfs:///path is the
# cluster's default file system, so it is not among them).
_BUCKETED = ("s3", "gs", "gcs")


def check_storage(uri: str, timeout: float = STORAGE_TIMEOUT_S) -> None:
    """A remote --storage-path (s3://, gs://, hdfs://, ...) must open and answer, as Ray opens it
    (pyarrow's filesystem from the URI); otherwise Ray failed with a traceback once the search had
    started, after the study had been stored with that path. Asked in a child process: one that
    does not answer is killed at ``timeout`` (a thread left waiting on S3 held the exit for minutes)."""
    parsed = parse_url("--storage-path", uri)
    if parsed.scheme in _BUCKETED and not parsed.netloc:  # (the probe waited for an answer that never came)
        raise UserError(f"--storage-path {uri}: names no bucket; expected {parsed.scheme}://BUCKET/PATH")
    try:
        proc = _run_probe(_STORAGE_PROBE, [uri], timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"--storage-path {uri}: no answer within {timeout:g} s") from None
    if proc.returncode != 0:
        said = proc.stderr.strip().splitlines()
        cause = said[-1] if said else f"exit status {proc.returncode}"
        raise UserError(f"--storage-path {uri}: cannot be opened ({cause})")


def check_tracking(uri: str) -> None:
    parsed = parse_url("--tracking-uri", uri)
    if parsed.scheme in ("http", "https"):
        from dm_tune._tracking_server import check_server

        check_server(uri)
    elif parsed.scheme != "sqlite" or not uri.startswith("sqlite:////"):
        # (sqlite:///rel.db is relative to wherever the search was started: a store no later command finds)
        raise UserError(f"--tracking-uri {uri}: expected an http(s):// MLflow server or sqlite:////abs/path.db")


# How long a search waits for a Ray cluster to answer (seconds; the environment variable sets it).
CONNECT_TIMEOUT_ENV = "DMTUNE_RAY_CONNECT_TIMEOUT"
CONNECT_TIMEOUT_S = 60.0
_PROBE = """import sys
import ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
except Exception as e:
    print("dm-tune-probe: " + " ".join((str(e).strip() or type(e).__name__).split())[:600], file=sys.stderr)
    sys.exit(3)
print(f"dm-tune-probe-address: {ray.get_runtime_context().gcs_address}", flush=True)
print(f"dm-tune-probe-private: {int(ray.cluster_resources().get(sys.argv[2], 0) > 0)}", flush=True)
ray.shutdown()
"""


def is_local_address(address: str | None) -> bool:
    """Whether ``address`` names a cluster on this machine: ``auto`` or a loopback HOST:PORT. Ray
    turns a loopback address into the machine's external one unless local-only mode is on, and a
    head that listens on loopback alone is then never reached (it retries without end)."""
    if address == "auto":
        return True
    host = (address or "").rpartition(":")[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def probe_ray(address: str) -> str:
    """Connect to the cluster at ``address`` once, in a child process and within a time limit, and
    return its address as HOST:PORT: ``ray.init`` retries without end where no Ray answers (a port
    of another service, an address nothing listens on), a cluster that requires a token says so
    only in Ray's C++ log lines, and ``auto`` with several clusters on the machine takes any one
    (the search then joins the one the probe found, not another)."""
    raw = os.environ.get(CONNECT_TIMEOUT_ENV, "")
    try:
        timeout = float(raw) if raw else CONNECT_TIMEOUT_S
    except ValueError:
        timeout = math.nan
    if not (math.isfinite(timeout) and timeout > 0):
        raise UserError(f"{CONNECT_TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0")
    try:
        proc = _run_probe(_PROBE, [address, PRIVATE_RESOURCE], timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise UserError(f"--address {address}: no Ray cluster answered within {timeout:g} s{_auth_hint(err)} "
                        f"(a Ray head's GCS port, 6379 by default? {CONNECT_TIMEOUT_ENV} sets the wait)") from None
    if proc.returncode != 0:
        said = [ln for ln in proc.stderr.splitlines() if ln.startswith("dm-tune-probe: ")]
        cause = said[-1].removeprefix("dm-tune-probe: ") if said else f"exit status {proc.returncode}"
        raise UserError(f"--address {address}: could not connect to a Ray cluster ({cause}){_auth_hint(proc.stderr)}"
                        f"{_version_hint(cause)}")
    said = dict(ln.removeprefix("dm-tune-probe-").split(": ", 1) for ln in proc.stdout.splitlines()
                if ln.startswith("dm-tune-probe-") and ": " in ln)
    found = said["address"] if said.get("address") not in (None, "", "None") else address
    if said.get("private") == "1":
        raise UserError(f"--address {address}: the Ray at {found} is another dm-tune search's own local Ray, which "
                        "ends when that search does; give the address of a cluster started with 'ray start --head', "
                        "or leave --address out (the search then starts its own)")
    return found


def _version_hint(cause: str) -> str:
    if cause.startswith("Version mismatch"):  # Ray's own message names both versions (on several lines)
        return "; run dm-tune with the cluster's Ray and Python versions"
    return ""


def _auth_hint(log: str) -> str:
    if "Unauthenticated" in log or "InvalidAuthToken" in log:
        return ("; the cluster requires a token: set RAY_AUTH_MODE=token, with the cluster's token, where dm-tune "
                "runs")
    return ""


def check_address(address: str | None) -> None:
    """A HOST:PORT address must answer on TCP (Ray itself would retry for a minute)."""
    if address and address != "auto":
        host, _, port = address.rpartition(":")
        if address.startswith("ray://"):
            raise UserError(f"--address {address}: Ray Client addresses are not supported; use HOST:PORT")
        if not host or not port.isdigit():
            raise UserError(f"--address {address}: expected 'auto' or HOST:PORT (e.g. 10.0.0.5:6379)")
        if ":" in host and not host.startswith("["):
            raise UserError(f"--address {address}: write an IPv6 address in brackets, [ADDRESS]:PORT")
        check_reachable(host.strip("[]"), int(port), f"--address {address}")


def connect_ray(address: str | None, cpus: int | None = None) -> None:
    """Connect to the cluster at ``address``, or start a local Ray that listens on 127.0.0.1 only."""
    import ray

    from dm_tune.search._local_ray import hide_gpu_tip, init_local_ray

    if ray.is_initialized():
        return
    if address is None:
        try:
            init_local_ray(num_cpus=cpus)
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as e:  # (Ray's own start-up failures are bare Exceptions: "timed out during startup")
            cause = " ".join(str(e).split()).split(". ")[0][:300]
            logs = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "session_latest" / "logs"
            raise UserError(f"the local Ray instance did not start ({cause}); its logs are in {logs}") from None
        return
    check_address(address)
    try:
        hide_gpu_tip()
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as e:
        cause = " ".join(str(e).split())[:600]
        raise UserError(f"--address {address}: could not connect to a Ray cluster ({cause}){_version_hint(cause)}") \
            from None


def check_resources(study: Study) -> None:
    import ray

    res = ray.cluster_resources()
    need_gpu = study.resources.gpus_per_trial
    if need_gpu > 0 and res.get("GPU", 0) < need_gpu:
        raise UserError(f"resources.gpus_per_trial: {need_gpu:g} GPUs per trial requested but the Ray "
                        f"cluster has {res.get('GPU', 0):g}; use 0 on a CPU-only machine")
    if res.get("CPU", 0) < study.resources.cpus_per_trial:
        raise UserError(f"resources.cpus_per_trial: {study.resources.cpus_per_trial:g} CPUs per trial "
                        f"requested but the Ray cluster has {res.get('CPU', 0):g}")


STORAGE_PROBE_SECONDS = 60.0  # each node's answer to check_shared_storage (a worker to start there)


def check_shared_storage(storage: Path, flag: str, probe: Any = os.path.isfile) -> None:
    """On a Ray cluster of several nodes, that every node sees the local folder ``storage`` (Ray's
    trial results and checkpoints): Ray writes there from the node a trial runs on and fails a
    trial on a node that cannot see it, once it starts. Each node is asked (``probe``, run there)
    for a marker file written here, before any trial."""
    import secrets

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    made = [p for p in (storage, *storage.parents) if not p.exists()]  # (removed again: Ray makes them)
    storage.mkdir(parents=True, exist_ok=True)
    marker = storage / f".dmtune-visible-{secrets.token_hex(8)}"
    marker.write_bytes(b"")
    try:
        sees = ray.remote(num_cpus=0)(probe)
        asked = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                 .remote(str(marker)) for n in nodes]
        answered = set(ray.wait(asked, num_returns=len(asked), timeout=STORAGE_PROBE_SECONDS)[0])
        seen = [bool(ray.get(ref)) if ref in answered else None for ref in asked]
    finally:
        marker.unlink(missing_ok=True)
        for p in made:
            try:
                p.rmdir()
            except OSError:
                break
    silent = [str(n.get("NodeManagerAddress")) for n, ok in zip(nodes, seen) if ok is None]
    if silent:  # (a node that starts no worker fails its trials its own way)
        print(f"dm-tune: warning: {', '.join(silent)}: did not say within {STORAGE_PROBE_SECONDS:g} s whether "
              f"{'it sees' if len(silent) == 1 else 'they see'} {storage} ({flag})", file=sys.stderr)
    blind = [str(n.get("NodeManagerAddress")) for n, ok in zip(nodes, seen) if ok is False]
    if blind:
        raise UserError(f"{flag} {storage}: not visible from {len(blind)} of the Ray cluster's {len(nodes)} nodes "
                        f"({', '.join(blind)}): Ray writes each trial's results and checkpoints there from the node "
                        "it runs on, and fails a trial where it cannot; give --storage-path a folder every node "
                        "mounts at the same path (NFS) or a URI (s3://bucket/path, gs://bucket/path)")


def check_local_gpus(study: Study) -> None:
    """A search on a local Ray: the GPUs asked for exist on this machine (answered before Ray
    starts; a cluster's GPUs are checked by ``check_resources`` once connected)."""
    need = study.resources.gpus_per_trial
    if need <= 0:
        return
    import torch

    have = torch.cuda.device_count()
    if have < need:
        raise UserError(f"resources.gpus_per_trial: {need:g} GPUs per trial requested but torch sees {have} CUDA "
                        "GPUs on this machine; use 0 on a CPU-only machine")


def check_local_cpus(study: Study, resuming: bool = False) -> None:
    """A search on a local Ray: no trial asks for more CPUs than the machine has (answered before
    Ray starts and before any store is made; Ray refused it only once started, the stores and the
    experiment already made). The machine's count (``os.cpu_count``) is the most a local Ray counts:
    it leaves a ``taskset`` aside (a pinned search still runs, as before) and takes a container's
    CPU limit below it, which its own check refuses once started (``check_resources``), as it does a
    cluster's once joined."""
    need, have = study.resources.cpus_per_trial, os.cpu_count() or 1
    if need > have:
        what = (f"resume it on a machine with {need:g} CPUs, or with --address of a Ray cluster that has them"
                if resuming else f"ask for {have} or fewer, or give --address of a Ray cluster that has them")
        raise UserError(f"resources.cpus_per_trial: {need:g} CPUs per trial requested but this machine has {have} "
                        f"CPUs; {what}")


def _check_applies(study: Study, trials: list[Any], new: bool) -> None:
    """config.APPLIES for the training fields that the trials' model, optimiser, schedule or dataset
    decide (``trials``: one resolved config per setting; the method-dependent fields are
    Study.unused_training's, by the study's baselines): refused in a new study, a warning in a
    stored one (it goes on as it began)."""
    from dm_tune._validate import ConfigError
    from dm_tune.config import APPLIES

    for key, (applies, where, decider) in APPLIES.items():
        if decider in ("model", "optimizer", "schedule", "dataset") and study.training.get(key) is not None \
                and not any(map(applies, trials)):
            why = f"only applies to {where}; this study trains with {decider} " + ", ".join(
                sorted({str(getattr(c, decider)) for c in trials}))
            if new:
                raise ConfigError(f"training.{key}", study.training[key], why)
            print(f"dm-tune: warning: training.{key} is ignored (it {why})", file=sys.stderr)


def _classes(src: Any, val_fraction: float) -> int:
    """The classes a trial's noise draws from: a retrieval run's are the training identities left
    once validation holds out its share (refused, as the trials would, where it cannot)."""
    if src.gallery is None:
        return src.num_classes
    from dm_tune._validate import ConfigError
    from dm_tune.data_reid import training_identities

    try:
        return training_identities(src, val_fraction)
    except ConfigError as e:
        raise ConfigError("training.val_fraction", e.value, f"{e.allowed} (dataset {src.name!r})") from None


def setting_data(study: Study, setting: Any, source: Any) -> dict[str, str]:
    """The fingerprint of ``setting``'s dataset as ``source`` holds it and, where its noise is read from
    a label file, of that file (``dm_tune.datasets._fingerprint``): {"dataset": ..., "noise_file": ...}."""
    from dm_tune.datasets._fingerprint import file_fingerprint, source_fingerprint
    from dm_tune.errors import resolve_path

    prints = {"dataset": source_fingerprint(source)}
    noise_file = study.train_config(setting).noise_file
    if setting.noise == "file" and noise_file:
        prints["noise_file"] = file_fingerprint(resolve_path(noise_file, "training.noise_file:"))
    return prints


def load_sources(study: Study, new: bool = True, data_root_hint: str = "--data-root") -> dict[str, Any]:
    """Every dataset of the study, loaded once in the driver (pre-flight: bad data fails here).
    ``new``: a study not stored yet (a stored one, resumed, is not refused what it began with);
    ``data_root_hint``: where the caller's user gives a data root."""
    from dm_tune._names import DATASET_ROOTS
    from dm_tune._validate import ConfigError

    pretrained = study.training.get("pretrained")
    if pretrained and not Path(str(pretrained)).expanduser().is_file():
        raise ConfigError("training.pretrained", pretrained, "expected an existing local weights file")
    on_disk = [ds for ds in study.settings.dataset if DATASET_ROOTS[ds]]
    if on_disk and not study.training.get("data_root"):  # answered before torch is imported
        raise ConfigError("data_root", None, f"dataset {on_disk[0]!r} is read from disk; give {data_root_hint}")
    from dm_tune.data import check_own_validation, load_source

    sources: dict[str, Any] = {}
    for setting in study.expand():
        if setting.dataset not in sources:
            sources[setting.dataset] = load_source(study.train_config(setting))
    from dm_tune.data import training_class_counts
    from dm_tune.noise import check_imbalance, check_noise

    trials = []  # each setting's training config, resolved: what decides the fields it uses
    for setting in study.expand():  # prepare() refuses these in every trial; say them once, now
        src = sources[setting.dataset]
        config = study.train_config(setting)
        trials.append(config.resolve(src.defaults, src.default_model, src.input_kind))
        try:
            check_noise(setting.noise, setting.noise_rate, _classes(src, trials[-1].val_fraction), src.class_groups,
                        prefix="settings.")
        except ConfigError as e:
            raise ConfigError(e.field, e.value, f"{e.allowed} (setting {setting.key})") from None
        if setting.noise == "file":  # a label file that does not fit the data: every trial failed on it
            from dm_tune.data import prepare

            prepare(config, src)
        if new and setting.imbalance != "none":  # (a stored study goes on as it began: its trials take what the
            # classes can; a new one is told now)
            available = training_class_counts(src, config.val_fraction)
            try:
                check_imbalance(available, setting.imbalance, setting.imbalance_ratio, "settings.imbalance")
            except ConfigError as e:
                raise ConfigError(e.field, f"{setting.imbalance}:{setting.imbalance_ratio:g}",
                                  f"{e.allowed} (setting {setting.key})") from None
    _check_applies(study, trials, new)  # a training field no trial's model, optimiser, schedule or dataset uses
    for name, src in sources.items() if new else ():  # 'default' and the model it stands for: trained twice
        models = [src.default_model if m == "default" else m for m in study.settings.model]
        if len(set(models)) < len(models):
            raise ConfigError("settings.model", list(study.settings.model), f"expected distinct models: 'default' "
                              f"is {src.default_model} on {name}, so two settings would train the same")
    for src in sources.values():
        check_own_validation(src, any(t.val_noisy for t in trials), study.training.get("val_fraction"),
                             "training.")  # (as the trials read it: the text "false" is False)
    for setting, trial in zip(study.expand(), trials):  # the search selects by final validation accuracy (mAP)
        if sources[setting.dataset].val is None and trial.val_fraction == 0.0:
            raise ConfigError("training.val_fraction", 0.0, f"expected > 0: dataset {setting.dataset!r} has no "
                              "validation split of its own, and the search selects arms by final validation "
                              f"{'mAP' if study.task == 'retrieval' else 'accuracy'}")
    check_models(study, sources)
    if study.scheduler.kind == "asha":  # the budget is known once the datasets' defaults are
        for setting, trial in zip(study.expand(), trials):
            epochs = int(trial.epochs)
            if study.scheduler.grace_period >= epochs:
                raise ConfigError("scheduler.grace_period", study.scheduler.grace_period,
                                  f"expected fewer than the {epochs} epochs of setting {setting.key}: ASHA stops "
                                  "a trial only at a rung before the budget, so it would stop none")
    return sources


def check_models(study: Study, sources: dict[str, Any]) -> None:
    """Each setting's model fits its data (resnet20 on digits' vectors would fail in every trial):
    built once per dataset and model, on the meta device (no memory, no weights loaded)."""
    import torch

    from dm_tune._validate import ConfigError
    from dm_tune.data import input_shape
    from dm_tune.models import ModelSpec, build_model

    seen: set[tuple[str, str]] = set()
    for setting in study.expand():
        src = sources[setting.dataset]
        config = study.train_config(setting)
        model = str(config.model or src.default_model)
        if (setting.dataset, model) in seen:
            continue
        seen.add((setting.dataset, model))
        spec = ModelSpec(input_shape(src.train.inputs), src.input_kind, src.num_classes, config.hidden_dim,
                         None, int(src.info.get("vocab_size", 0)))
        try:
            with torch.device("meta"):
                build_model(model, spec)
        except ConfigError as e:
            raise ConfigError(e.field, e.value, f"{e.allowed} (setting {setting.key})") from None  # (model, hidden_dim)
