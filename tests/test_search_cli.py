"""`dm-tune search` as a user runs it: bad input, an interrupted search resumed, a crashing trial
retried from its checkpoint. Each search here starts its own Ray instance (a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from dm_tune.search._ledger import Ledger
from tests._sockets import descendants, is_loopback, listeners
from tests.conftest import DM_TUNE, free_port, permissions_preexec, tiny_study

pytestmark = pytest.mark.timeout(600)


def _cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([DM_TUNE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _study_file(tmp_path: Path, study: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _trials(ws: Path, name: str):
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if r.data.tags.get("dmtune.role") == "trial"]


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--space", "spherical"], ["search.space", "spherical", "decoupled"]),
    (["--sampler", "annealing"], ["search.sampler", "annealing", "tpe"]),
    (["--dataset", "imagenet"], ["settings.dataset", "imagenet", "digits"]),
    (["--baselines", "cce,focal"], ["baselines", "focal"]),
    (["--noise-rate", "1.2"], ["settings.noise_rate", "1.2"]),
    (["--noise-rate", "abc"], ["--noise-rate", "abc"]),
    # were read as 2.0 (then refused as a rate of 2) and seed 10: Python reads 0_2 as 2
    (["--noise-rate", "0_2"], ["--noise-rate: '0_2' is not allowed; expected numbers"]),
    (["--seeds", "0,1_0"], ["--seeds: '1_0' is not allowed; expected integers"]),
    (["--max-concurrent", "1_0"], ["argument --max-concurrent: expected an integer, not '1_0'"]),
    # were "expected one argument" (argparse takes -1e3 for an option)
    (["--max-concurrent", "-1e3"], ["argument --max-concurrent: expected an integer, not '-1e3'"]),
    (["--population-size", "-1e3"], ["population_size: '-1e3' is not allowed", "auto"]),
    (["--sampler", "grid"], ["search.sampler", "paper-grid"]),
    # its DM knobs were drawn at random, with Optuna's warning on every trial
    (["--sampler", "cmaes", "--space", "paper-grid"], ["search.sampler: 'cmaes'", "all categorical", "tpe, gp"]),
    (["--epochs", "0"], ["training.epochs", "0"]),
    (["--seeds=-1,0"], ["seeds[0]", "-1", "[0, 4294967295]"]),  # was: every trial errored
    (["--seeds", "0,,1"], ["--seeds", "'0,,1'", "none of them empty"]),  # was: seeds 0 and 1, the blank dropped
    (["--dataset", "digits,"], ["--dataset", "'digits,'", "none of them empty"]),
    (["--sampler-seed=-1"], ["search.sampler_seed", "-1", "[0, 4294967295]"]),
    (["--population-size", "0"], ["population_size", "0", "auto"]),
    (["--population-size", "lots"], ["population_size", "lots", "auto"]),
    (["--dataset", "cifar10"], ["data_root", "--data-root"]),
    (["--pretrained", "missing.pth"], ["training.pretrained", "expected an existing local weights file"]),
    (["--pretrained", "w.pth"], ["training.pretrained", "models resnet18, resnet50"]),  # digits' model is mlp
    # past the limit of the 120 identities a reid-synth trial trains on, not its 150 (every trial failed)
    (["--dataset", "reid-synth", "--noise", "symmetric", "--noise-rate", "0.992"],
     ["settings.noise_rate: 0.992", "on 120 classes"]),
    (["--resume", "nothing"], ["--resume nothing", "no such study"]),
    (["--resume", "x", "--epochs", "3"], ["--resume", "--epochs"]),
    (["--address", "127.0.0.1:{port}"], ["--address", "cannot reach"]),
    (["--address", "[::1]:{port}"], ["--address [::1]:", "cannot reach ::1:"]),  # was: "[::1]" not known
    (["--address", "::1:6379"], ["--address ::1:6379", "in brackets, [ADDRESS]:PORT"]),
    (["--address", "no-port"], ["--address", "HOST:PORT"]),
    (["--tracking-uri", "http://127.0.0.1:{port}"], ["--tracking-uri", "cannot reach"]),
    (["--tracking-uri", "ftp://x"], ["--tracking-uri", "sqlite"]),
    # urllib's ValueErrors, read from the URL's host or port: were tracebacks
    (["--tracking-uri", "http://[::1"], ["--tracking-uri http://[::1: not a valid URL (Invalid IPv6 URL)"]),
    (["--tracking-uri", "http://127.0.0.1:99999"], ["--tracking-uri http://127.0.0.1:99999: not a valid URL",
                                                    "Port out of range"]),
    (["--tracking-uri", "http://"], ["--tracking-uri http://: not a valid URL (no host"]),  # was: localhost:80
    (["--storage-path", "file://[::1/x"], ["--storage-path file://[::1/x: not a valid URL"]),
    # relative to wherever the search started: no mlflow.db in the workspace, none a report finds
    (["--tracking-uri", "sqlite:///rel.db"], ["--tracking-uri sqlite:///rel.db", "sqlite:////abs/path.db"]),
    (["--name", ""], ["name: ''", "letters, digits"]),
    (["--name", "a/b"], ["name: 'a/b'", "letters, digits"]),
    (["--resume", ""], ["--resume", "expected a study name, not ''"]),
    (["--resume", "../../etc/passwd"], ["--resume", "no such study"]),
    # answered before Ray starts and the study is stored (a stored study then refused the fixed command)
    (["--warm-start", "no/such/guidelines.json"], ["search.warm_start (--warm-start): guidelines file",
                                                   "no/such/guidelines.json", "does not exist"]),
    # ASHA stops trials only at rungs before the budget: this one would stop none
    (["--scheduler", "asha", "--epochs", "3"], ["scheduler.grace_period", "10", "fewer than the 3 epochs"]),
    # an empty value was read as "not given": --config '' searched the whole default study
    (["--config", ""], ["--config", "expected a path, not ''"]),
    (["--tracking-uri", ""], ["--tracking-uri", "expected an MLflow tracking URI, not ''"]),
    (["--storage-path", ""], ["--storage-path", "expected a path, not ''"]),
    (["--seeds", ""], ["--seeds", "expected comma-separated seeds, not ''"]),
    (["--warm-start", ""], ["--warm-start", "true, false or a guidelines.json path"]),
    (["--epochs", "9" * 400], ["training.epochs", "expected an integer"]),  # was an OverflowError traceback
    # a repeated value was dropped without a word; 'default' and the model it is trained the same twice
    (["--noise-rate", "0.2,0.2"], ["settings.noise_rate", "[0.2, 0.2]", "expected distinct values"]),
    (["--imbalance", "longtail:10,longtail:10.0"], ["settings.imbalance", "expected distinct values"]),
    # a ratio as dm-tune train and recommend read it (1e1 was refused here alone); 10 and 1e1 are one
    (["--imbalance", "longtail:10,longtail:1e1"], ["settings.imbalance", "expected distinct values"]),
    (["--model", "default,mlp"], ["settings.model", "'default' is mlp on digits"]),
    (["--imbalance", "step:1000"],
     ["settings.imbalance: 'step:1000'", "at most about", "digits-symmetric0.4-step1000"]),
    # remote storage that does not open: was a traceback once Ray had started, the study stored with it
    (["--storage-path", "nosuchfs://bucket/x"], ["--storage-path nosuchfs://bucket/x: cannot be opened",
                                                 "Unrecognized filesystem type"]),
    (["--storage-path", "hdfs://127.0.0.1:{port}/x"], ["--storage-path hdfs://127.0.0.1:", "cannot be opened"]),
    # a slash missing: was a local folder 's3:' in the current directory
    (["--storage-path", "s3:/bucket/x"], ["--storage-path s3:/bucket/x: a URI has '://' after its scheme"]),
    (["--storage-path", "gs:bucket"], ["--storage-path gs:bucket: a URI has '://'", "with ./ before it"]),
    # no bucket: was told only after a wait of 60 s for an answer that never came
    (["--storage-path", "gs://"], ["--storage-path gs://: names no bucket; expected gs://BUCKET/PATH"]),
    (["--storage-path", "s3:///x"], ["--storage-path s3:///x: names no bucket; expected s3://BUCKET/PATH"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, needles):
    port = str(free_port())
    args = [a.replace("{port}", port) for a in args]
    (tmp_path / "w.pth").write_bytes(b"")
    proc = _cli("search", "--workspace", str(tmp_path / "ws"), *args, cwd=tmp_path, timeout=60)
    _one_line_error(proc, *needles)
    assert not (tmp_path / "ws").exists()


def test_a_model_too_wide_for_memory_is_refused_before_the_search(tmp_path):
    """hidden_dim 1000000 (within its range) is a 10**12-parameter MLP: the preflight built it on the
    meta device, which allocates nothing, so it passed, and every trial failed in torch's allocator."""
    study = tmp_path / "wide.yaml"
    study.write_text("training:\n  hidden_dim: 1000000\n  epochs: 1\n")
    proc = _cli("search", "--workspace", str(tmp_path / "ws"), "--config", str(study), cwd=tmp_path, timeout=60)
    _one_line_error(proc, "hidden_dim: 1000000 is not allowed; model mlp of that width has 1e+12 parameters",
                    "(setting digits-symmetric0.4-default)")
    assert not (tmp_path / "ws").exists()


def test_a_label_file_that_does_not_fit_the_data_is_refused_before_the_search(tmp_path):
    """A noise_file of the wrong length passed the checks before the search: every trial then
    failed on it (exit 1, the reason in each trial's folder) where `dm-tune train` refused it."""
    np.save(tmp_path / "short.npy", np.zeros(5, dtype=np.int64))
    study = tmp_path / "nf.yaml"
    study.write_text(yaml.safe_dump({"name": "nf", "settings": {"dataset": ["digits"], "noise": ["file"]},
                                     "training": {"noise_file": str(tmp_path / "short.npy"), "epochs": 1}}))
    proc = _cli("search", "--config", str(study), "--workspace", str(tmp_path / "ws"), cwd=tmp_path, timeout=60)
    _one_line_error(proc, f"noise_file {tmp_path / 'short.npy'}: has 5 labels but the training set has ")
    assert not (tmp_path / "ws").exists()


def test_noise_types_at_rate_0_are_said_to_train_once(tmp_path):
    proc = _cli("search", "--workspace", str(tmp_path / "ws"), "--noise", "symmetric,pair", "--noise-rate", "0,0.2",
                "--tracking-uri", "ftp://x", cwd=tmp_path, timeout=60)  # (refused after the note: nothing runs)
    note, error = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert note == ("dm-tune: note: settings.noise pair at noise_rate 0 flips no label: the clean setting is "
                    "trained once, as 'symmetric'")
    assert error.startswith("dm-tune: error: --tracking-uri") and proc.returncode == 2


def test_paths_are_stored_absolute_and_warm_start_switches_stay_switches(tmp_path, monkeypatch):
    """A relative --data-root (or training.noise_file) was stored as given, so --resume from another
    directory read another place; --warm-start false was a file named 'false'."""
    from dm_tune.cli import build_parser
    from dm_tune.search.cli import study_values

    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"training": {"noise_file": "labels.npy"}}))
    args = build_parser().parse_args(["search", "--config", "study.yaml", "--data-root", "data",
                                      "--warm-start", "false", "--pretrained", "w.pth"])
    values = study_values(args)
    assert values["training"] == {"noise_file": str(tmp_path / "labels.npy"), "data_root": str(tmp_path / "data"),
                                  "pretrained": str(tmp_path / "w.pth")}
    assert values["search"]["warm_start"] is False
    args = build_parser().parse_args(["search", "--warm-start", "g.json"])
    assert study_values(args)["search"]["warm_start"] == str(tmp_path / "g.json")


def test_val_noisy_on_a_dataset_with_its_own_validation_set_is_refused_before_the_search(tmp_path):
    """Every trial refused it (prepare()); the search had started, made its stores and failed all."""
    from tests.test_datasets_disk import make_imagefolder

    root = make_imagefolder(tmp_path / "images", with_val=True)
    study = _study_file(tmp_path, tiny_study("vn", settings={"dataset": ["imagefolder"], "noise": ["none"],
                                                              "noise_rate": [0.0]},
                                             training={"epochs": 1, "val_noisy": True, "data_root": str(root)}))
    proc = _cli("search", "--config", str(study), "--workspace", str(tmp_path / "ws"), cwd=tmp_path, timeout=60)
    _one_line_error(proc, "training.val_noisy", "imagefolder has its own validation set")
    assert not (tmp_path / "ws").exists()


def test_val_noisy_given_as_the_text_false_is_false_to_the_search_as_to_its_trials(tmp_path):
    """The search's check read `val_noisy: "false"` (text, which the trials take for False) as true,
    and refused a dataset with its own validation set."""
    from dm_tune._validate import ConfigError
    from dm_tune.search._preflight import load_sources
    from dm_tune.search._study import Study
    from tests.test_datasets_disk import make_imagefolder

    root = make_imagefolder(tmp_path / "images", with_val=True)
    for text, refused in (("false", False), ("True", True)):
        study = Study.from_dict(tiny_study("vn", settings={"dataset": ["imagefolder"], "noise": ["none"],
                                                          "noise_rate": [0.0]},
                                           training={"epochs": 1, "val_noisy": text, "data_root": str(root)}))
        if refused:
            with pytest.raises(ConfigError, match="training.val_noisy"):
                load_sources(study)
        else:
            assert set(load_sources(study)) == {"imagefolder"}


@pytest.mark.parametrize("where", ["file", "proc", "file-uri", "file-uri-one-slash"])
def test_a_storage_path_that_cannot_be_written_is_refused_before_the_search_starts(tmp_path, where):
    """Ray's results folder was first made when Ray started: a traceback, after the workspace's
    stores and stored study were written (a rerun with changed flags was then refused as another
    configuration of the same study)."""
    (tmp_path / "a-file").write_text("x")
    storage = str(tmp_path / "a-file" / "results") if where == "file" else "/proc/results"
    given = {"file-uri": "file://" + storage, "file-uri-one-slash": "file:" + storage}.get(where, storage)
    # (file:// was a pyarrow traceback, after the stores; file:/x, RFC 8089's form, was refused as a URI)
    proc = _cli("search", "--workspace", str(tmp_path / "ws"), "--storage-path", given, cwd=tmp_path, timeout=60)
    _one_line_error(proc, f"--storage-path {storage}:", "is not a directory" if where == "file" else "cannot write")
    assert not (tmp_path / "ws").exists()


def test_a_model_that_does_not_fit_a_settings_data_is_refused_before_the_search_starts(tmp_path):
    """resnet20 on digits' vectors: every trial had errored with the same message, after the search
    had written its workspace (train refuses it in one line). A model that fits is checked without
    memory or weights: on the meta device."""
    from dm_tune.search._preflight import load_sources
    from dm_tune.search._study import Study

    proc = _cli("search", "--workspace", str(tmp_path / "ws"), "--model", "resnet20", cwd=tmp_path, timeout=60)
    _one_line_error(proc, "model: 'resnet20' is not allowed", "needs image inputs, not vector",
                    "setting digits-symmetric0.4-resnet20")
    assert not (tmp_path / "ws").exists()
    fits = tiny_study("fits", settings={"dataset": ["digits", "mnist1d"], "model": ["mlp"]})
    assert set(load_sources(Study.from_dict(fits))) == {"digits", "mnist1d"}


def test_an_address_where_no_ray_answers_is_one_line_within_the_wait(tmp_path):
    """A port that accepts connections but is no Ray head (another service): ray.init retried it
    without end, printing Ray's C++ warnings."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:  # takes connections and says nothing, like a service of another protocol
        held = []
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    given = f"127.0.0.1:{port}"
    env = {"DMTUNE_RAY_CONNECT_TIMEOUT": "15"}
    try:
        t0 = time.monotonic()
        proc = _cli("search", "--workspace", str(tmp_path / "ws"), "--address", given, cwd=tmp_path, env=env,
                    timeout=120)
        took = time.monotonic() - t0
    finally:
        stop.set()
        thread.join()
        server.close()
    _one_line_error(proc, f"--address {given}: no Ray cluster answered within 15 s", "DMTUNE_RAY_CONNECT_TIMEOUT")
    assert took < 60 and not (tmp_path / "ws").exists()


def test_a_noise_rate_past_the_labels_limit_is_refused_before_the_search_starts(tmp_path):
    """Pair noise at 0.5: a class's examples carry its label and its partner's equally, so no arm
    can learn the classes; every trial refused it (prepare()) after the search had started."""
    study = _study_file(tmp_path, tiny_study("nz", settings={"noise": ["symmetric", "pair"], "noise_rate": [0.4, 0.5]}))
    proc = _cli("search", "--config", str(study), "--workspace", str(tmp_path / "ws"), cwd=tmp_path, timeout=60)
    _one_line_error(proc, "settings.noise_rate: 0.5 is not allowed", "below 0.5 for pair noise",
                    "setting digits-pair0.5-default")
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("dataset, metric", [("digits", "accuracy"), ("reid-synth", "mAP")])
def test_a_search_without_a_validation_split_is_refused_before_it_starts(tmp_path, dataset, metric):
    """val_fraction 0 leaves the objective (final validation accuracy or mAP) NaN in every trial: the
    search could rank nothing. A dataset with a validation set of its own needs no carved one."""
    from dm_tune.search._preflight import load_sources
    from dm_tune.search._study import Study
    from tests.test_datasets_disk import make_imagefolder

    study = _study_file(tmp_path, tiny_study("nv", settings={"dataset": [dataset]}, training={"val_fraction": 0.0}))
    proc = _cli("search", "--config", str(study), "--workspace", str(tmp_path / "ws"), cwd=tmp_path, timeout=60)
    _one_line_error(proc, "training.val_fraction: 0.0", f"validation {metric}", repr(dataset))
    assert not (tmp_path / "ws").exists()
    root = make_imagefolder(tmp_path / "images", with_val=True)
    own = tiny_study("own", settings={"dataset": ["imagefolder"], "noise": ["none"], "noise_rate": [0.0]},
                     training={"val_fraction": 0.0, "data_root": str(root)})
    assert set(load_sources(Study.from_dict(own))) == {"imagefolder"}


@pytest.mark.parametrize("content, needle", [
    ("", "empty"),
    ("settings: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "mapping"),
    ("name: x\nsearch: {num_trials: 3}\n", "search.num_trials"),
    ("name: x\ntraining: {lam: -1}\n", "training.lam"),
    ("name: x\nsettings: {noise: [none], noise_rate: [0.4]}\n", "settings"),
])
def test_malformed_study_files(tmp_path, content, needle):
    path = tmp_path / "study.yaml"
    path.write_text(content)
    proc = _cli("search", "--config", str(path), "--workspace", str(tmp_path / "ws"), cwd=tmp_path, timeout=60)
    _one_line_error(proc, needle)
    assert not (tmp_path / "ws").exists()


def test_gpu_request_on_a_cpu_machine_fails_fast(tmp_path):
    t0 = time.monotonic()
    proc = _cli("search", "--workspace", str(tmp_path / "ws"), "--gpus-per-trial", "0.5", cwd=tmp_path, timeout=120)
    _one_line_error(proc, "gpus_per_trial", "0.5")
    assert time.monotonic() - t0 < 90  # no trial left pending forever
    assert not (tmp_path / "ws").exists()


def test_more_cpus_per_trial_than_the_machine_has_fails_before_ray_or_any_store(tmp_path):
    """Refused by Ray's cluster resources once a local Ray had started (seconds), with the MLflow
    experiment and the stores made, and left in a new workspace; now before any of it. A search
    pinned to fewer CPUs (taskset) still runs as a local Ray counts them: the machine's."""
    import sys

    from dm_tune.errors import UserError
    from dm_tune.search._preflight import check_local_cpus
    from dm_tune.search._study import Study

    more = (os.cpu_count() or 1) + 1
    proc = _cli("search", "--workspace", str(tmp_path / "ws"), "--cpus-per-trial", str(more), cwd=tmp_path,
                timeout=120)
    _one_line_error(proc, f"resources.cpus_per_trial: {more} CPUs per trial requested but this machine has "
                    f"{more - 1} CPUs; ask for {more - 1} or fewer")
    assert not (tmp_path / "ws").exists()
    with pytest.raises(UserError, match=f"this machine has {more - 1} CPUs; resume it on a machine with {more} CPUs"):
        check_local_cpus(Study.from_dict({"resources": {"cpus_per_trial": more}}), resuming=True)
    code = ("import os; from dm_tune.search._preflight import check_local_cpus; from dm_tune.search._study import "
            "Study; check_local_cpus(Study.from_dict({'resources': {'cpus_per_trial': os.cpu_count()}}))")
    pinned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert pinned.returncode == 0, pinned.stderr


def _search_until(tmp_path: Path, ws: Path, name: str, finished: int, preexec_fn=None) -> subprocess.Popen:
    """A search of 6 DM trials and a confirm stage of (1 arm + 1 baseline) x 2 seeds, 15 epochs
    each, started as a command and returned running once ``finished`` trials have finished."""
    study = _study_file(tmp_path, tiny_study(name, search={"num_samples": 6, "top_k": 1}, training={"epochs": 15},
                                             baselines=["cce"], checkpoint_every=3))
    proc = subprocess.Popen([DM_TUNE, "search", "--config", str(study), "--workspace", str(ws)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    lines, done = [], 0
    deadline = time.monotonic() + 240
    for line in proc.stderr:  # per-trial lines go to stderr
        lines.append(line)
        done += "(finished," in line
        if done >= finished or time.monotonic() > deadline:
            break
    assert done >= finished, "".join(lines)
    return proc


def _resume_keeps_what_finished(tmp_path: Path, ws: Path, name: str):
    """Resume ``_search_until``'s stopped search: every trial ends finished, once, the ones that had
    finished before kept as they were (their runs); returns the client, the trial runs and the resume."""
    _, before = _trials(ws, name)
    done_before = {r.data.tags["dmtune.trial_key"]: r.info.run_id for r in before
                   if r.data.tags["dmtune.status"] == "finished"}
    assert len(done_before) >= 2
    resumed = _cli("search", "--resume", name, "--workspace", str(ws), "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    client, after = _trials(ws, name)
    assert max(Counter(r.data.tags["dmtune.trial_key"] for r in after).values()) == 1  # no duplicated MLflow runs
    assert Counter(r.data.tags["dmtune.stage"] for r in after) == {"search": 6, "confirm": (1 + 1) * 2}
    assert {r.data.tags["dmtune.status"] for r in after} == {"finished"}
    assert {r.info.run_id for r in after if r.data.tags["dmtune.trial_key"] in done_before} == set(done_before.values())
    exp = client.get_experiment_by_name(name)
    assert {r.info.status for r in client.search_runs([exp.experiment_id])} == {"FINISHED"}  # parent too
    return client, after, resumed


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "kill-9"])
def test_interrupted_search_resumes_without_losing_or_duplicating(tmp_path, sig):
    ws = tmp_path / "ws"
    proc = _search_until(tmp_path, ws, "resumable", finished=3)
    ray_listeners = listeners(descendants(proc.pid))  # a local search is reachable from here only
    assert {"gcs_server", "raylet"} <= {name for *_, name in ray_listeners}
    assert [entry for entry in ray_listeners if not is_loopback(entry[1])] == []
    proc.send_signal(sig)  # Ctrl-C, or the driver killed outright
    _, err = proc.communicate(timeout=120)
    if sig in (signal.SIGINT, signal.SIGTERM):  # (SIGTERM: Ray's handler dumped a stack and aborted)
        assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
        assert "--resume resumable" in err and "SIGTERM received" not in err and "Traceback" not in err, err
    else:
        assert proc.returncode == -signal.SIGKILL

    client, after, resumed = _resume_keeps_what_finished(tmp_path, ws, "resumable")
    assert f"resuming study 'resumable' in {ws}" in resumed.stderr  # said under --quiet too
    keys = {r.data.tags["dmtune.trial_key"] for r in after}
    for r in after:  # every epoch of every run, each once (a finished trial is never re-run)
        steps = [h.step for h in client.get_metric_history(r.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, 16)), r.data.tags["dmtune.trial_key"]
    storage = optuna.storages.RDBStorage(f"sqlite:///{ws / 'optuna.db'}")
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    # Six arms, each told once. A kill -9 in the instant between asking Optuna for a trial and
    # tagging it leaves that trial FAIL ("interrupted"), never run; one asked and tagged is run on resume.
    assert Counter(t.state for t in trials if t.state != optuna.trial.TrialState.FAIL) == {
        optuna.trial.TrialState.COMPLETE: 6}
    ran = {int(key.split("/search/")[1].split("/")[0]) for key in keys if "/search/" in key}
    assert ran == {t.number for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert all(t.user_attrs.get("status") == "interrupted" for t in trials if t.state == optuna.trial.TrialState.FAIL)


def _set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode | 0o200 if writable else mode & ~0o222)


@pytest.mark.slow
def test_a_workspace_made_read_only_mid_search_ends_in_one_line_and_resumes_without_loss(tmp_path):
    """Every store of the workspace (MLflow, Optuna, the ledger, Ray's checkpoints) made read-only
    while trials run: the search was ended by a PermissionError traceback, after hundreds of lines
    of MLflow's and Ray's own tracebacks. Now dm-tune's lines only, the resume command last; once
    writable again, the resume finishes every trial, the ones finished before kept, none twice."""
    ws = tmp_path / "ws"
    proc = _search_until(tmp_path, ws, "ro", finished=2, preexec_fn=permissions_preexec())
    _set_writable(ws, False)
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        _set_writable(ws, True)
    assert proc.returncode == 1, err
    said = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("  [")]  # (per-trial lines)
    assert said[-2].startswith("dm-tune: error: the search's stores cannot be written: their disk is full or "
                               "they are read-only ("), err
    assert said[-1] == f"  dm-tune search --resume ro --workspace {ws}", err
    assert all(ln.startswith("dm-tune: ") for ln in said[:-1]), err  # no traceback, no Ray or MLflow log
    assert len(set(said)) == len(said), err  # each failed write's reason once (was once per write)
    _resume_keeps_what_finished(tmp_path, ws, "ro")


def test_where_a_study_began_is_kept_for_new_studies_only_and_relative_to_a_moved_workspace(tmp_path):
    """A storage path inside the workspace is kept relative to it (a moved workspace was pinned to
    its old place); a study an earlier dm-tune began has no places file and gets none (the flags
    of its first resume, perhaps wrong ones, had become binding)."""
    import argparse

    from dm_tune.errors import UserError
    from dm_tune.search.cli import _places_file, _same_places, _write_places

    ws = tmp_path / "ws"
    (ws / "studies").mkdir(parents=True)
    _write_places(argparse.Namespace(tracking_uri=None, storage_path=str(ws / "raystore")), ws, "s")
    assert json.loads(_places_file(ws, "s").read_text()) == {"tracking_uri": None, "storage_path": "raystore"}
    moved = tmp_path / "moved"
    ws.rename(moved)
    args = argparse.Namespace(tracking_uri=None, storage_path=None)
    _same_places(args, moved, "s")
    assert args.storage_path == str(moved / "raystore") and args.tracking_uri is None
    with pytest.raises(UserError, match=r"began with --storage-path .*moved/raystore \(.*s\.places\)"):
        _same_places(argparse.Namespace(tracking_uri=None, storage_path=str(tmp_path)), moved, "s")
    # a trailing slash is the same place (a server's resume given http://host:P was refused after http://host:P/)
    _write_places(argparse.Namespace(tracking_uri="http://127.0.0.1:5000/", storage_path=None), moved, "served")
    _same_places(argparse.Namespace(tracking_uri="http://127.0.0.1:5000", storage_path=None), moved, "served")
    _same_places(argparse.Namespace(tracking_uri=None, storage_path=str(moved / "raystore") + "/"), moved, "s")
    with pytest.raises(UserError, match=r"--tracking-uri http://127.0.0.1:5001: study 'served' began with"):
        _same_places(argparse.Namespace(tracking_uri="http://127.0.0.1:5001", storage_path=None), moved, "served")
    older = argparse.Namespace(tracking_uri="sqlite:////x.db", storage_path=None)
    _same_places(older, moved, "older")  # no places file: the flags stand, nothing is checked
    assert older.tracking_uri == "sqlite:////x.db"
    # a hand-edited file of the wrong types: one line naming it (was a TypeError traceback)
    _places_file(moved, "odd").write_text(json.dumps({"tracking_uri": 5, "storage_path": ["x"]}))
    with pytest.raises(UserError, match=r"odd\.places: cannot be read \(its tracking_uri is 5, not a string or null\)"):
        _same_places(argparse.Namespace(tracking_uri=None, storage_path=None), moved, "odd")


@pytest.mark.parametrize("uri, hint", [
    ("sqlite:////w s/mlflow.db", "mlflow ui --backend-store-uri 'sqlite:////w s/mlflow.db'"),
    ("http://127.0.0.1:5000", "open http://127.0.0.1:5000 in a browser"),
    ("HTTPS://mlflow.example:443", "open HTTPS://mlflow.example:443 in a browser"),
])
def test_the_summary_says_how_to_look_at_the_runs_of_a_store_and_of_a_server(uri, hint):
    """`mlflow ui --backend-store-uri http://...` ends in a traceback: a server is opened in a browser."""
    from dm_tune.search.cli import browse_runs

    assert browse_runs(uri) == hint


def test_a_quiet_search_still_says_which_cluster_address_auto_joined(tmp_path, monkeypatch, capsys):
    """--quiet leaves out the trials' lines; the cluster `--address auto` found was left out too, so
    a quiet search never said where its trials ran."""
    import dm_tune.search._run as run_module
    from dm_tune.cli import main
    from dm_tune.search import _preflight

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run_study", interrupted)
    monkeypatch.setattr(_preflight, "probe_ray", lambda address: "10.1.2.3:6379")  # (no cluster here)
    monkeypatch.setattr(_preflight, "connect_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr(_preflight, "check_resources", lambda study: None)
    monkeypatch.setattr(_preflight, "check_shared_storage", lambda *args, **kwargs: None)
    rc = main(["search", "--workspace", str(tmp_path / "ws"), "--name", "far", "--address", "auto", "--quiet"])
    assert rc == 130 and "dm-tune: --address auto: the Ray cluster at 10.1.2.3:6379" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "0", "-5", "soon"])
def test_a_connect_wait_that_is_no_positive_number_is_one_line(monkeypatch, value):
    from dm_tune.errors import UserError
    from dm_tune.search._preflight import probe_ray

    monkeypatch.setenv("DMTUNE_RAY_CONNECT_TIMEOUT", value)
    with pytest.raises(UserError, match=f"DMTUNE_RAY_CONNECT_TIMEOUT='{value}': expected a number of seconds > 0"):
        probe_ray("auto")


def test_a_cluster_of_another_ray_version_is_named_with_both_versions(tmp_path, monkeypatch):
    """Ray's version-mismatch error spans lines: its first alone ("The cluster was started with:")
    named no version. A cluster of another Ray cannot run here: the probe meets a stand-in ``ray``
    module that raises Ray's message (ray/_private/utils.py, check_version_info)."""
    from dm_tune.errors import UserError
    from dm_tune.search._preflight import probe_ray

    fake = tmp_path / "fake" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "def init(**kwargs):\n"
        "    raise RuntimeError('Version mismatch: The cluster was started with:\\n    Ray: 2.41.0\\n    Python: "
        "3.11.7\\nThis process on node 10.0.0.9 was started with:\\n    Ray: 2.60.0\\n    Python: 3.11.7\\n')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    with pytest.raises(UserError) as raised:
        probe_ray("10.0.0.5:6379")
    assert str(raised.value) == (
        "--address 10.0.0.5:6379: could not connect to a Ray cluster (Version mismatch: The cluster was started with: "
        "Ray: 2.41.0 Python: 3.11.7 This process on node 10.0.0.9 was started with: Ray: 2.60.0 Python: 3.11.7); run "
        "dm-tune with the cluster's Ray and Python versions")


@pytest.mark.slow
def test_a_study_goes_on_in_the_stores_it_began_with(tmp_path):
    """--resume without the --tracking-uri and --storage-path the study began with recorded every
    trial again in a second store (the workspace's own), leaving the first store's runs open; with
    other ones it is refused before anything is written."""
    from dm_tune.config import TrainConfig
    from dm_tune.data import load_source

    ws, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    elsewhere.mkdir()
    uri = f"sqlite:///{elsewhere / 'runs.db'}"
    study = _study_file(tmp_path, tiny_study("placed", search={"num_samples": 2, "top_k": 1}, baselines=["cce"],
                                             training={"epochs": 2}))
    first = _cli("search", "--config", str(study), "--workspace", str(ws), "--tracking-uri", uri,
                 "--storage-path", "file://" + str(elsewhere / "ray"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert ": 2 DM arms on seeds " in first.stderr and "then the top 1 DM arm and 1 baseline on seeds " in first.stderr
    assert json.loads((ws / "studies" / "placed.places").read_text()) == {
        "tracking_uri": uri, "storage_path": str(elsewhere / "ray")}
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("placed").experiment_id])
    # ... and on the data it began with: their fingerprints, as each trial's run recorded it
    digits = load_source(TrainConfig(dataset="digits")).info["fingerprint"]
    (key,) = json.loads((ws / "studies" / "placed.data").read_text())
    assert json.loads((ws / "studies" / "placed.data").read_text()) == {key: {"dataset": digits}}
    assert {r.data.tags.get("dmtune.data_fingerprint") for r in runs if r.data.tags["dmtune.role"] == "trial"} == {
        digits}
    resumed = _cli("search", "--resume", "placed", "--workspace", str(ws), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"MLflow runs:   {uri}" in resumed.stdout and f"Ray results:   {elsewhere / 'ray'}/placed" in resumed.stdout
    assert not (ws / "mlflow.db").exists() and not (ws / "ray").exists()
    again = client.search_runs([client.get_experiment_by_name("placed").experiment_id])
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)  # nothing recorded twice
    assert {r.info.status for r in again} == {"FINISHED"}
    before = sorted(p.name for p in ws.iterdir())
    for flag, other in (("--tracking-uri", f"sqlite:///{tmp_path / 'other.db'}"), ("--storage-path", str(tmp_path))):
        refused = _cli("search", "--resume", "placed", "--workspace", str(ws), flag, other, cwd=tmp_path, timeout=60)
        _one_line_error(refused, f"{flag} {other}: study 'placed' began with {flag} ", "another --name")
    assert sorted(p.name for p in ws.iterdir()) == before and not (tmp_path / "other.db").exists()
    # A study an earlier dm-tune began (no places file): resumed without its --tracking-uri it is
    # refused before any trial is recorded (the workspace's own store has no run of it); with its
    # flags it goes on, and gets no places file (where it went is the user's word, not a record).
    (ws / "studies" / "placed.places").unlink()
    (ws / "studies" / "placed.data").unlink()
    lost = _cli("search", "--resume", "placed", "--workspace", str(ws), cwd=tmp_path)
    _one_line_error(lost, f"dm-tune: error: MLflow store sqlite:///{ws / 'mlflow.db'} has no run of setting",
                    "has 6 trials: give the --tracking-uri the study began with")
    own = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    assert own.search_runs([own.get_experiment_by_name("placed").experiment_id]) == []
    older = _cli("search", "--resume", "placed", "--workspace", str(ws), "--tracking-uri", uri,
                 "--storage-path", str(elsewhere / "ray"), cwd=tmp_path)
    assert older.returncode == 0, older.stderr
    assert not (ws / "studies" / "placed.places").exists()
    assert json.loads((ws / "studies" / "placed.data").read_text()) == {key: {"dataset": digits}}  # from now on


def test_a_study_resumed_on_changed_data_is_refused_before_anything_is_written(tmp_path):
    """A resume read the data as it was then: a features file relabelled since (or a CIFAR copy, an
    image folder) joined runs trained on other data to the study's, unsaid. Now the study keeps the
    fingerprints of the data it began with (written by a search: test_a_study_goes_on_in_the_stores_it_began_with),
    and a resume on other data is refused before Ray starts or any store is made."""
    from test_datasets_disk import make_features

    from dm_tune.search._preflight import load_sources
    from dm_tune.search._study import Study
    from dm_tune.search.cli import _write_data, data_fingerprints

    data = make_features(tmp_path / "data") / "features.npz"
    ws = tmp_path / "ws"
    (ws / "studies").mkdir(parents=True)
    study = Study.from_dict(tiny_study("fp", settings={"dataset": ["features"], "noise": ["symmetric"],
                                                       "noise_rate": [0.2]}, training={"data_root": str(data)}))
    (ws / "studies" / "fp.json").write_text(json.dumps(study.to_dict()))
    began = data_fingerprints(study, load_sources(study))
    _write_data(ws, "fp", began)
    (key,) = began
    arrays = dict(np.load(data))
    arrays["y_train"][3] = (arrays["y_train"][3] + 1) % 3
    np.savez(data, **arrays)
    now = data_fingerprints(study, load_sources(study))[key]["dataset"]
    refused = _cli("search", "--resume", "fp", "--workspace", str(ws), cwd=tmp_path, timeout=60)
    _one_line_error(refused, f"study 'fp', setting {key}: the dataset features under {data} is not the data the "
                             f"study began with (its fingerprint is {now}, was {began[key]['dataset']}; "
                             f"{ws / 'studies' / 'fp.data'})",
                    "restore it, or search this data under another --name (to go on mixing the two, remove the file)")
    assert sorted(p.name for p in ws.iterdir()) == ["locks", "studies"]  # (no store, nor Ray's folder)
    assert json.loads((ws / "studies" / "fp.data").read_text()) == began


def test_a_label_file_changed_since_the_study_began_or_a_damaged_record_of_its_data_is_one_line(tmp_path):
    """The fingerprints of a setting's label file are kept beside its dataset's; a record of them that
    cannot be read names its file and how to go on (the stored study, the flags and the stores pass)."""
    from dm_tune.config import TrainConfig
    from dm_tune.data import load_source
    from dm_tune.errors import UserError
    from dm_tune.search._preflight import load_sources
    from dm_tune.search._study import Study
    from dm_tune.search.cli import _data_file, _same_data, _write_data, data_fingerprints

    labels = tmp_path / "labels.npy"
    study = Study.from_dict(tiny_study("nf", settings={"dataset": ["digits"], "noise": ["file"], "noise_rate": [0.0]},
                                       training={"noise_file": str(labels), "epochs": 1}))
    given = load_source(TrainConfig(dataset="digits")).train.labels.numpy().copy()
    np.save(labels, given)
    sources = load_sources(study)
    began = data_fingerprints(study, sources)
    (key,) = began
    assert set(began[key]) == {"dataset", "noise_file"}
    (tmp_path / "studies").mkdir()
    _write_data(tmp_path, "nf", began)
    _same_data(tmp_path, study, data_fingerprints(study, sources))  # the same: goes on
    given[5] = (given[5] + 1) % 10
    np.save(labels, given)
    now = data_fingerprints(study, sources)
    assert now[key]["dataset"] == began[key]["dataset"] and now[key]["noise_file"] != began[key]["noise_file"]
    with pytest.raises(UserError, match=rf"setting {key}: the label file {labels} is not the data the study began "
                                        rf"with \(its fingerprint is {now[key]['noise_file']}, was "):
        _same_data(tmp_path, study, now)
    for damaged, why in (("[1, 2]", "not a JSON object of objects"), ("{", "Expecting property name")):
        _data_file(tmp_path, "nf").write_text(damaged)
        with pytest.raises(UserError, match=rf"nf\.data: cannot be read \({why}.*\); it holds the fingerprints "
                                            r"of the data study 'nf' began with: restore it, or remove it"):
            _same_data(tmp_path, study, now)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["raise", "kill-9"])
def test_crashed_trials_are_retried_from_their_checkpoint(tmp_path, how):
    ws, markers = tmp_path / "ws", tmp_path / "faults"
    markers.mkdir()
    study = _study_file(tmp_path, tiny_study("retry", search={"num_samples": 2, "top_k": 1},
                                             training={"epochs": 3}, baselines=["cce"], seeds=[0],
                                             checkpoint_every=1, max_failures=2))
    proc = _cli("search", "--config", str(study), "--workspace", str(ws), cwd=tmp_path,
                env={"DMTUNE_FAULT": f"2:{markers}", "DMTUNE_FAULT_KILL": "1" if how == "kill-9" else "0"})
    assert proc.returncode == 0, proc.stderr
    # Each failure is one line on the terminal (its traceback stays in the trial's folder).
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("retrying from its newest checkpoint") == len(list(markers.glob("*.failed")))
    if how == "raise":
        assert proc.stderr.count("failed (RuntimeError: injected failure at epoch 2 (DMTUNE_FAULT)); retrying") \
            == len(list(markers.glob("*.failed")))
        # a population's failure names every member it trains (it had named the first alone)
        assert "population digits-symmetric0.4-default/search/0 (2 members: search/0, search/1) failed (" \
            in proc.stderr
    client, trials = _trials(ws, "retry")
    assert len(trials) == 2 + 2
    assert {r.data.tags["dmtune.status"] for r in trials} == {"finished"}
    populations = {r.data.tags["dmtune.population"] for r in trials}
    assert len(list(markers.glob("*.failed"))) == len(populations)  # every Ray trial crashed once
    for r in trials:
        steps = sorted(h.step for h in client.get_metric_history(r.info.run_id, "val_acc"))
        assert steps == [1, 2, 3]  # continued from the epoch-1 checkpoint, not restarted
        assert r.data.metrics["epochs_reached"] == 3
    summary = json.loads((ws / "summaries" / "retry.json").read_text())
    assert summary["settings"][0]["rows"][0]["n_seeds"] == 1


@pytest.mark.slow
def test_a_search_where_no_trial_finished_exits_1_and_says_so(tmp_path):
    """Every trial crashes and is not retried (max_failures 0): the summary shows no accuracy
    where there is none ('—', not 'nan ± 0.0'), counts how the seeds ended, and the command
    exits 1 with one line naming where the errors are. (The workspace's name has a space: the
    commands it prints quote it.)"""
    ws, markers = tmp_path / "my ws", tmp_path / "faults"
    markers.mkdir()
    study = _study_file(tmp_path, tiny_study("allfail", search={"num_samples": 2, "top_k": 1},
                                             training={"epochs": 2}, baselines=["cce"], seeds=[0, 1],
                                             checkpoint_every=1, max_failures=0))
    proc = _cli("search", "--config", str(study), "--workspace", str(ws), cwd=tmp_path,
                env={"DMTUNE_FAULT": f"2:{markers}"})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    # the trial's own error, read from its folder before Tune copies it to the storage path
    assert proc.stderr.count("failed for good (RuntimeError: injected failure at epoch 2 (DMTUNE_FAULT))") == 3
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dm-tune: error: no trial of study 'allfail' finished (4 errored); each trial's "
                           f"error is in its folder under {ws / 'ray'}/allfail"), last
    assert "| cce | — |  | 0 of 2 (2 errored) |" in proc.stdout, proc.stdout
    assert f"Next:          dm-tune report --workspace '{ws}' --experiment allfail\n" in proc.stdout
    assert f"mlflow ui --backend-store-uri 'sqlite:///{ws}/mlflow.db')" in proc.stdout
    assert "nan" not in (ws / "summaries" / "allfail.md").read_text()
    # standard JSON: the arm's mean over no results is null, not a bare NaN token
    row = json.loads((ws / "summaries" / "allfail.json").read_text(),
                     parse_constant=lambda token: pytest.fail(f"{token} in a summary"))["settings"][0]["rows"][0]
    assert row["test_acc_mean"] is None
    assert (row["baseline"], row["n_seeds"], row["n_results"], row["statuses"]) == ("cce", 2, 0, ["errored"])
    _, trials = _trials(ws, "allfail")
    assert sorted(r.info.status for r in trials) == ["FAILED"] * 4  # every run ended, none left RUNNING
    # The ledger (and so Optuna) and MLflow agree on how far each crashed trial got: epoch 1 of 2.
    (path,) = (ws / "ledger" / "allfail").glob("*.jsonl")
    ended = Ledger(path).ended
    assert {r.data.tags["dmtune.trial_key"]: r.data.metrics["epochs_reached"] for r in trials} == {
        key: outcome.epochs_reached for key, outcome in ended.items()} and {
        o.epochs_reached for o in ended.values()} == {1}


@pytest.mark.parametrize("content", [b'{"name": "x", "seeds": [', b"\x9c\xff binary", b"[1, 2]\n"],
                         ids=["torn", "binary", "not-a-mapping"])
def test_a_damaged_stored_study_is_one_line_and_left_as_it_was(tmp_path, content):
    ws = tmp_path / "ws"
    (ws / "studies").mkdir(parents=True)
    (ws / "studies" / "x.json").write_bytes(content)
    for args in (["--resume", "x"], ["--name", "x"]):
        proc = _cli("search", "--workspace", str(ws), *args, cwd=tmp_path, timeout=60)
        _one_line_error(proc, f"{ws / 'studies' / 'x.json'}: damaged stored study", "another --name")
    assert sorted(str(p.relative_to(ws)) for p in ws.rglob("*")) == ["studies", "studies/x.json"]
    assert (ws / "studies" / "x.json").read_bytes() == content


def test_a_damaged_ledger_is_told_before_ray_starts(tmp_path):
    """It was told by the setting's run, after the local Ray had started (tens of seconds)."""
    from dm_tune.search._study import Study

    ws = tmp_path / "ws"
    (ws / "studies").mkdir(parents=True)
    study = Study.from_dict(tiny_study("old"))
    (ws / "studies" / "old.json").write_text(json.dumps(study.to_dict()))
    ledger = ws / "ledger" / "old" / f"{study.expand()[0].key}.jsonl"
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b'{"event": "experiment", "key": "run-1"}\n\x9c\xff\n')
    proc = _cli("search", "--workspace", str(ws), "--resume", "old", cwd=tmp_path, timeout=120)
    _one_line_error(proc, f"{ledger}: line 2 holds bytes that are not text; the ledger is damaged")
    assert not (ws / "mlflow.db").exists() and not (ws / "optuna.db").exists()  # (made as Ray starts)


def test_a_stored_study_with_training_fields_its_trials_ignore_still_resumes(tmp_path):
    """Stored by an earlier dm-tune, which accepted training.seed (and ignored it in every trial): the
    resume goes on (here to the unreachable --address, the next check), saying it is ignored."""
    from dm_tune.search._study import Study

    ws = tmp_path / "ws"
    (ws / "studies").mkdir(parents=True)
    stored = Study.from_dict(tiny_study("old")).to_dict()
    assert "gce" not in stored["baselines"]
    stored["training"] = {**stored["training"], "seed": 7, "gce_q": 0.5}
    (ws / "studies" / "old.json").write_text(json.dumps(stored))
    proc = _cli("search", "--workspace", str(ws), "--resume", "old", "--address", f"127.0.0.1:{free_port()}",
                cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == f"dm-tune: warning: {ws / 'studies' / 'old.json'}: training.seed is ignored (set by seeds)"
    assert lines[1] == (f"dm-tune: warning: {ws / 'studies' / 'old.json'}: training.gce_q is ignored (it only "
                        "applies to the gce baseline)")
    assert "--address" in lines[-1] and "cannot reach" in lines[-1]
    # the same command as then goes on too (as the README says); a new study with the field is refused
    config = _study_file(tmp_path, {k: v for k, v in stored.items()})
    proc = _cli("search", "--workspace", str(ws), "--config", str(config), "--address", f"127.0.0.1:{free_port()}",
                cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "training.seed is ignored" in proc.stderr and "cannot reach" in proc.stderr
    proc = _cli("search", "--workspace", str(tmp_path / "new"), "--config", str(config), cwd=tmp_path, timeout=60)
    _one_line_error(proc, "training.seed: 7 is not allowed; set by seeds")


def test_a_stored_study_this_dm_tune_cannot_take_names_its_file(tmp_path):
    """An unknown field (a newer dm-tune's, or an edit) was "foo: 1 is not allowed", naming no file."""
    from dm_tune.search._study import Study

    ws = tmp_path / "ws"
    (ws / "studies").mkdir(parents=True)
    (ws / "studies" / "new.json").write_text(json.dumps({**Study.from_dict(tiny_study("new")).to_dict(), "foo": 1}))
    proc = _cli("search", "--workspace", str(ws), "--resume", "new", cwd=tmp_path, timeout=60)
    _one_line_error(proc, f"{ws / 'studies' / 'new.json'}: the stored study is not valid here (foo", "another --name")


def test_a_stored_study_that_cannot_be_read_is_one_line(tmp_path):
    """A read error (here one that root gets too: /proc/self/mem reads fail) was a traceback."""
    ws = tmp_path / "ws"
    (ws / "studies").mkdir(parents=True)
    (ws / "studies" / "x.json").symlink_to("/proc/self/mem")
    proc = _cli("search", "--workspace", str(ws), "--resume", "x", cwd=tmp_path, timeout=60)
    _one_line_error(proc, f"{ws / 'studies' / 'x.json'}: the stored study cannot be read", "readable")
    # a folder in its place: was "no such study ... (studies there: y)", naming it
    (ws / "studies" / "y.json").mkdir()
    proc = _cli("search", "--workspace", str(ws), "--resume", "y", cwd=tmp_path, timeout=60)
    _one_line_error(proc, f"--resume y: {ws / 'studies' / 'y.json'} is not a file")


def test_a_study_stored_under_the_same_name_with_another_configuration_is_refused(tmp_path, monkeypatch, capsys):
    """Refused before anything runs, and again under the study lock: a search of the same name that
    stored its study while this one was in its pre-flight (and then ended) is not overwritten, nor
    are its results counted as this configuration's."""
    from dm_tune.cli import main
    from dm_tune.search import _preflight
    from dm_tune.search._study import Study

    ws = tmp_path / "ws"
    other = Study.from_dict(tiny_study("x", training={"epochs": 3})).to_dict()
    (ws / "studies").mkdir(parents=True)
    (ws / "studies" / "x.json").write_text(json.dumps(other))
    args = ["search", "--config", str(_study_file(tmp_path, tiny_study("x"))), "--epochs", "4", "--workspace", str(ws)]
    proc = _cli(*args, cwd=tmp_path)
    _one_line_error(proc, "study 'x' already exists", "different configuration", "--resume x")

    (ws / "studies" / "x.json").unlink()
    real = _preflight.load_sources

    def stored_meanwhile(study, new=True):  # the other search stores its study during this one's pre-flight
        (ws / "studies" / "x.json").write_text(json.dumps(other))
        return real(study, new)

    monkeypatch.setattr(_preflight, "load_sources", stored_meanwhile)
    for name in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AIR_NEW_OUTPUT", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS",
                 "TUNE_DISABLE_STRICT_METRIC_CHECKING"):  # what the search sets: as they were, after the test
        monkeypatch.setenv(name, os.environ.get(name, "0"))
    assert main(args) == 2
    assert "different configuration" in capsys.readouterr().err
    assert json.loads((ws / "studies" / "x.json").read_text()) == other


@pytest.mark.slow
def test_a_member_that_diverged_before_its_population_failed_for_good_stays_diverged(tmp_path):
    """CCE and MAE trained together (lr 5): CCE diverges in epoch 1 and is frozen, MAE goes on; the
    population then fails for good at epoch 2 (max_failures 0). CCE ended as diverged, as it would
    alone, with its epoch (it had been recorded errored, with no history), in the ledger and MLflow."""
    ws, markers = tmp_path / "ws", tmp_path / "faults"
    markers.mkdir()
    study = _study_file(tmp_path, tiny_study("frozen", settings={"dataset": ["digits"], "noise": ["none"],
                                                                 "noise_rate": [0.0]},
                                             search={"num_samples": 1, "top_k": 1}, baselines=["cce", "mae"],
                                             seeds=[0], population_size=4, max_failures=0,
                                             resources={"max_concurrent": 1},
                                             training={"epochs": 3, "optimizer": "sgd", "lr": 5.0, "momentum": 0.0,
                                                       "weight_decay": 0.0}))
    proc = _cli("search", "--config", str(study), "--workspace", str(ws), cwd=tmp_path,
                env={"DMTUNE_FAULT": f"2:{markers}"})
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "failed for good (RuntimeError: injected failure at epoch 2 (DMTUNE_FAULT))" in proc.stderr
    (path,) = (ws / "ledger" / "frozen").glob("*.jsonl")
    ledger = Ledger(path)
    ended = {key.split("/")[-2]: outcome for key, outcome in ledger.ended.items() if "/dm-" not in key}
    assert ledger.group[next(k for k in ledger.ended if "/cce/" in k)] == ledger.group[
        next(k for k in ledger.ended if "/mae/" in k)]  # one population
    assert ended["cce"].status == "diverged" and ended["cce"].epochs_reached == 1
    assert len(ended["cce"].history) == 1 and ended["cce"].history[0]["diverged"] == 1.0
    assert ended["mae"].status == "errored"
    _, trials = _trials(ws, "frozen")
    runs = {r.data.tags["dmtune.baseline"]: r for r in trials if r.data.tags["dmtune.baseline"]}
    assert runs["cce"].data.tags["dmtune.status"] == "diverged" and runs["cce"].data.metrics["epochs_reached"] == 1
    assert runs["mae"].data.tags["dmtune.status"] == "errored"


@pytest.mark.slow
def test_members_that_ended_before_their_population_failed_for_good_keep_their_results(tmp_path):
    """Retrieval members train one at a time: in each population the first member finishes, then
    the second fails for good (max_failures 0). The first keeps its result (it was recorded as
    errored, the population's fate), in the ledger, MLflow and the summary alike."""
    ws, markers = tmp_path / "ws", tmp_path / "faults"
    markers.mkdir()
    study = _study_file(tmp_path, tiny_study("oneby", settings={"dataset": ["reid-synth"], "noise_rate": [0.3]},
                                             search={"num_samples": 2, "top_k": 1}, baselines=["cce"],
                                             seeds=[0, 1], training={"epochs": 2}, population_size=2,
                                             checkpoint_every=2, max_failures=0))  # Tune hears every 2nd epoch
    proc = _cli("search", "--config", str(study), "--workspace", str(ws), cwd=tmp_path,
                env={"DMTUNE_FAULT": f"2:{markers}", "DMTUNE_FAULT_MEMBER": "1"})
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "failed for good (RuntimeError: injected failure at epoch 2 (DMTUNE_FAULT))" in proc.stderr
    (path,) = (ws / "ledger" / "oneby").glob("*.jsonl")
    ledger = Ledger(path)
    groups: dict[str, list[str]] = {}
    for key in ledger.started:
        groups.setdefault(ledger.group[key], []).append(key)
    pairs = [keys for keys in groups.values() if len(keys) == 2]
    assert pairs, groups
    _, trials = _trials(ws, "oneby")
    runs = {r.data.tags["dmtune.trial_key"]: r for r in trials}
    for first, second in pairs:
        assert ledger.ended[first].status == "finished" and ledger.ended[first].epochs_reached == 2
        assert ledger.ended[second].status == "errored"
        assert runs[first].info.status == "FINISHED" and 0.0 < runs[first].data.metrics["final_val_map"] < 1.0
        assert runs[second].info.status == "FAILED"


@pytest.mark.parametrize("uri", ["gs://", "gcs:///x", "s3://"])
def test_a_storage_uri_with_no_bucket_is_refused_at_once(uri):
    """pyarrow, given no bucket, waited for the service (until the 60-s limit, on gs://)."""
    from dm_tune.errors import UserError
    from dm_tune.search._preflight import check_storage

    t0 = time.monotonic()
    with pytest.raises(UserError, match=f"^--storage-path {uri}: names no bucket; expected "):
        check_storage(uri, timeout=5)
    assert time.monotonic() - t0 < 1


def test_a_storage_server_that_never_answers_is_given_up_on_at_the_limit(tmp_path):
    """An S3 endpoint that accepts connections and never replies: the probe's thread was left
    waiting, and the process, told "no answer", then hung at exit until the AWS SDK gave up (100 s)."""
    import socket
    import sys

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    uri = f"s3://bucket/x?endpoint_override=127.0.0.1:{server.getsockname()[1]}&scheme=http&region=us-east-1"
    code = ("import sys\nfrom dm_tune.errors import UserError\nfrom dm_tune.search._preflight import check_storage\n"
            f"try:\n    check_storage({uri!r}, timeout=3)\nexcept UserError as e:\n    print(e)\n")
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, cwd=tmp_path)
    finally:
        server.close()
    assert proc.returncode == 0 and "no answer within 3 s" in proc.stdout, proc
    assert time.monotonic() - t0 < 30


@pytest.mark.slow
def test_a_search_under_an_address_space_limit_sizes_rays_object_store_to_fit(tmp_path):
    """Under ``ulimit -v 8000000`` (as some clusters set) Ray's default object store (30% of this
    machine's 23 GB: 7 GB) could not be mapped by its workers, and the search waited for them with
    no output until killed. Its store is now sized to what the limit leaves."""
    import resource

    from dm_tune.search._local_ray import object_store_within_limit

    limit = 8_000_000 * 1024
    study = _study_file(tmp_path, tiny_study("limited", search={"num_samples": 2, "top_k": 1}, seeds=[0],
                                             training={"epochs": 1}, baselines=["cce"]))

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([DM_TUNE, "search", "--config", str(study), "--workspace", str(tmp_path / "ws"), "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=400, preexec_fn=limited)
    assert done.returncode == 0, done.stderr[-2000:]
    _, runs = _trials(tmp_path / "ws", "limited")
    assert {r.data.tags["dmtune.status"] for r in runs} == {"finished"} and len(runs) == 4  # 2 arms, its best, cce
    assert object_store_within_limit() is None  # (no limit here: Ray's default)


@pytest.mark.slow
def test_a_local_ray_that_does_not_start_is_one_line(tmp_path):
    """Under a file-size limit (ulimit -f 2500) Ray's processes cannot write their files and the
    node times out starting: a 25-line traceback. One line naming Ray's logs; no workspace left."""
    import resource

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2500 * 1024, 2500 * 1024))

    done = subprocess.run([DM_TUNE, "search", "--workspace", str(tmp_path / "ws"), "--num-samples", "1", "--epochs",
                           "1", "--seeds", "0", "--search-seeds", "1", "--top-k", "1", "--baselines", "cce"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("dm-tune: error:")]
    assert line.startswith("dm-tune: error: the local Ray instance did not start (") and "its logs are in" in line
    assert not (tmp_path / "ws").exists()


def test_a_second_ctrl_c_during_the_first_ones_stop_still_says_how_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C twice, the second while the search stopped its trials: it ended with 'dm-tune:
    interrupted' alone, without the resume command a single Ctrl-C prints."""
    import dm_tune.search._run as run_module
    from dm_tune.cli import main
    from dm_tune.search import _preflight

    def interrupted_twice(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run_study", interrupted_twice)
    # No Ray: one started in this process outlives the test, and the next test of this pytest worker
    # that starts its own failed ("Maybe you called ray.init twice by accident?").
    monkeypatch.setattr(_preflight, "connect_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr(_preflight, "check_resources", lambda study: None)
    rc = main(["search", "--workspace", str(tmp_path / "ws"), "--name", "twice", "--num-samples", "3", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 130 and err.splitlines()[-2:] == [
        "dm-tune: interrupted; finished trials are kept. Resume with:",
        f"  dm-tune search --resume twice --workspace {tmp_path / 'ws'}"], err
