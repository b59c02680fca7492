"""The search's MLflow tracker on a real sqlite store, without Ray: a trial's run is created once,
whatever write fails after it, and a run a killed driver left without its params gets them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dm_tune.search import _tracking
from dm_tune.search._ledger import Ledger
from dm_tune.search._trial import TrialOutcome, TrialSpec

PARAMS = {"method": "dm", "lam": 1.0, "beta": 8.0}


def _tracker(ws: Path) -> tuple[_tracking.MLflowTracker, Ledger, str, str]:
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    exp = _tracking.experiment_id(uri, "study", ws / "artifacts")
    parent = _tracking.setting_run(uri, exp, "set", {"dataset": "digits"})
    ledger = Ledger(ws / "ledger.jsonl")
    return _tracking.MLflowTracker(uri, exp, parent, "set", ledger, lambda spec: PARAMS, echo=False), ledger, uri, exp


def _outcome() -> TrialOutcome:
    return TrialOutcome("finished", 1, final_val_acc=0.5, final_test_acc=0.4,
                        history=({"epoch": 1, "val_acc": 0.5, "epoch_time_s": 0.1},))


def test_a_failed_params_write_is_redone_on_the_same_run(tmp_path, monkeypatch):
    """The store busy (another process writing it) right after the run was created: the next write
    of the trial logs the params on that run (it used to create a second run, left KILLED)."""
    tracker, ledger, uri, exp = _tracker(tmp_path)
    spec = TrialSpec("set", "search", 0, {"method": "dm"}, number=0)
    ledger.start([spec])
    real, calls = _tracking._log_params, []

    def busy_once(client, run_id, params):
        calls.append(run_id)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        return real(client, run_id, params)

    monkeypatch.setattr(_tracking, "_log_params", busy_once)
    with pytest.raises(RuntimeError, match="locked"):
        tracker._open(spec, spec.key, 1)
    ledger.end(spec, _outcome())
    tracker._finish(spec, _outcome())
    tracker.close_open(True)
    (run,) = _tracking.find_runs(uri, exp, {"dmtune.trial_key": spec.key})
    assert calls == [run.info.run_id] * 2
    assert run.info.status == "FINISHED" and run.data.tags["dmtune.status"] == "finished"
    assert run.data.params == {"method": "dm", "lam": "1.0", "beta": "8.0", "population_size": "1"}


def test_a_setting_run_left_without_params_by_a_killed_driver_gets_them_on_resume(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = _tracking.experiment_id(uri, "study", tmp_path / "artifacts")
    params = {"dataset": "digits", "noise_rate": 0.4}
    monkeypatch.setattr(_tracking, "_log_params", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed between creating the run and logging its params
        _tracking.setting_run(uri, exp, "set", params)
    monkeypatch.undo()
    (run,) = _tracking.find_runs(uri, exp, {"dmtune.role": "setting"})
    assert run.data.params == {}
    assert _tracking.setting_run(uri, exp, "set", params) == run.info.run_id
    assert _tracking.setting_run(uri, exp, "set", params) == run.info.run_id  # nothing logged twice
    (run,) = _tracking.find_runs(uri, exp, {"dmtune.role": "setting"})
    assert run.data.params == {"dataset": "digits", "noise_rate": "0.4"} and run.info.status == "RUNNING"


def test_a_run_left_without_params_by_a_killed_driver_gets_them_on_resume(tmp_path):
    tracker, ledger, uri, exp = _tracker(tmp_path)
    spec = TrialSpec("set", "search", 0, {"method": "dm"}, number=0)
    ledger.start([spec])
    client = _tracking._client(uri)
    orphan = client.create_run(exp, tags={"mlflow.parentRunId": tracker.parent_id, "dmtune.role": "trial",
                                          "dmtune.setting": "set", "dmtune.trial_key": spec.key,
                                          "dmtune.status": "running"}).info.run_id  # killed here
    resumed, *_ = _tracker(tmp_path)  # a new driver: the trial started before it
    assert resumed._open(spec, spec.key, 2) == orphan
    resumed._open(spec)  # nothing left to log
    (run,) = _tracking.find_runs(uri, exp, {"dmtune.trial_key": spec.key})
    assert run.data.params == {"method": "dm", "lam": "1.0", "beta": "8.0", "population_size": "2"}


def test_every_open_run_of_an_interrupted_setting_is_closed_past_a_page_of_results(tmp_path, monkeypatch):
    tracker, ledger, uri, exp = _tracker(tmp_path)
    specs = [TrialSpec("set", "search", 0, {"method": "dm"}, number=i) for i in range(5)]
    ledger.start(specs)
    for spec in specs:
        tracker._open(spec, spec.key, 1)
    real = _tracking.find_runs
    monkeypatch.setattr(_tracking, "find_runs", lambda *a, **k: real(*a, **{**k, "max_results": 2}))
    tracker.close_open(False)
    runs = real(uri, exp, {"dmtune.role": "trial"})
    assert len(runs) == 5 and {(r.info.status, r.data.tags["dmtune.status"]) for r in runs} == {("KILLED",
                                                                                                "interrupted")}


def test_a_ledger_that_lost_lines_is_refused_and_one_with_a_torn_last_line_is_not(tmp_path, monkeypatch):
    """A ledger cut short (or restored from an older copy) lacks trials MLflow has runs of: a resume
    trained them again, each with a second run of its key. Refused in one line, as a ledger lost
    whole is; a torn last line (the process died writing it, before its trial had a run) is not."""
    import re

    from dm_tune.errors import UserError
    from dm_tune.search._run import check_ledger

    tracker, ledger, uri, exp = _tracker(tmp_path)
    specs = [TrialSpec("set", "search", 0, {"method": "dm"}, number=i) for i in range(4)]
    for spec in specs[:3]:
        ledger.start([spec])
        tracker._open(spec, spec.key, 1)
        ledger.end(spec, _outcome())
    lines = ledger.path.read_text().splitlines(keepends=True)
    monkeypatch.setattr(_tracking, "_PAGE", 2)  # the runs are read past a page of results

    def resumed(text: str) -> Ledger:
        path = tmp_path / "resumed.jsonl"
        path.write_text(text)
        return Ledger(path)

    check_ledger(resumed("".join(lines)), uri, exp, "set", "study")
    # died writing the next trial's start line (no run yet), or an end line
    start = json.dumps({"event": "start", "key": specs[3].key, "spec": specs[3].to_dict(), "group": specs[3].key})
    check_ledger(resumed("".join(lines) + start[:25]), uri, exp, "set", "study")
    check_ledger(resumed("".join(lines[:-1]) + lines[-1][:20]), uri, exp, "set", "study")
    for kept, lost in ((4, 1), (2, 2), (0, 3)):  # the trials' start and end lines, two a trial
        with pytest.raises(UserError) as info:
            check_ledger(resumed("".join(lines[:kept])), uri, exp, "set", "study")
        path = tmp_path / "resumed.jsonl"
        if kept:
            assert str(info.value) == (
                f"{path}: lacks {lost} trial(s) that MLflow has runs of in experiment 'study' (first "
                f"{sorted(s.key for s in specs[kept // 2:3])[0]}): the ledger lost lines since (cut short, or "
                "restored from an older copy); restore the whole ledger, or run the study in another --workspace")
        else:
            assert re.match(rf"{re.escape(str(path))}: missing or empty, but MLflow has trial runs of setting set",
                            str(info.value))


def test_a_member_ended_before_its_population_trained_again_keeps_the_ledgers_result(tmp_path):
    """The driver killed while a population's end events were written: member 0's end is in the
    ledger, member 1's is not; on resume the population trains again and its new result for
    member 0 must not overwrite what the ledger (and Optuna) hold."""
    from dm_tune.search._trial import population_report

    tracker, ledger, uri, exp = _tracker(tmp_path)
    first, second = (TrialSpec("set", "search", 0, {"method": "dm"}, number=i) for i in range(2))
    ledger.start([first, second])
    recorded = _outcome()
    ledger.end(first, recorded)
    again = TrialOutcome("finished", 1, final_val_acc=0.9, final_test_acc=0.8,
                         history=({"epoch": 1, "val_acc": 0.9, "epoch_time_s": 0.1},))
    # its epochs as it trains again: member 0's run keeps those of the result it ended with
    tracker._member_epochs([first, second], {"epoch": 1, "members": [{"epoch": 1, "val_acc": 0.9}] * 2})
    ledger.end(second, again)
    tracker._end_members([first, second], population_report([again, again]), errored=False)
    tracker.drain()
    runs = {r.data.tags["dmtune.trial_key"]: r for r in _tracking.find_runs(uri, exp, {"dmtune.role": "trial"})}
    assert {k: r.data.metrics["final_test_acc"] for k, r in runs.items()} == {first.key: 0.4, second.key: 0.8}
    assert {k: r.data.metrics["val_acc"] for k, r in runs.items()} == {first.key: 0.5, second.key: 0.9}


def test_a_checkpoint_on_remote_storage_is_recorded_as_a_uri_that_a_resumed_trial_reads(tmp_path, monkeypatch):
    """Remote checkpoint paths carry no scheme (``bucket/prefix/...``): recorded bare, a resumed
    trial found no such folder and trained from scratch. A URI is read through Tune's Checkpoint
    (here a local file:// one, which resolves as S3's would, without a network)."""
    import pyarrow.fs
    import torch
    from ray import tune

    from trainables import _dm

    remote = tune.Checkpoint("bucket/prefix/checkpoint_000001",
                             filesystem=pyarrow.fs.S3FileSystem(anonymous=True, region="us-east-1"))
    assert _tracking.checkpoint_location(remote) == "s3://bucket/prefix/checkpoint_000001"
    local = tune.Checkpoint.from_directory(str(tmp_path))
    assert _tracking.checkpoint_location(local) == str(tmp_path)
    torch.save({"epoch": 3}, tmp_path / _dm.STATE_FILE)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)  # not inside a Tune trial here
    assert _dm._resume_state(tmp_path.as_uri()) == {"epoch": 3} == _dm._resume_state(str(tmp_path))
    assert _dm._resume_state(str(tmp_path / "gone")) is None


_CLAIM = """
import sys, time
from pathlib import Path
from dm_tune.errors import UserError
from dm_tune.search._tracking import experiment_id
uri, ws, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
print("waiting", flush=True)
while not go.exists():
    time.sleep(0.01)
try:
    print("id", experiment_id(uri, "default", None, ws))
except UserError as e:
    print("refused", e)
"""


def test_a_study_name_in_a_shared_tracking_store_belongs_to_one_workspace(tmp_path):
    """Two workspaces tracking into one store (a team's MLflow server) with the same study name: the
    experiment is the first workspace's; the other's search is refused in one line, not mixed in
    (its runs would be reused, closed as interrupted and reported as the first's), even when both
    create it at the same moment."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from dm_tune.errors import UserError

    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    exp = _tracking.experiment_id(uri, "study", None, a)
    assert _tracking.experiment_id(uri, "study", None, a) == exp
    with pytest.raises(UserError, match=rf"experiment 'study' at .* of another workspace \({a}, id "):
        _tracking.experiment_id(uri, "study", None, b)
    client = MlflowClient(uri)
    client.delete_experiment(exp)  # the first workspace removed, its experiment deleted (not purged)
    with pytest.raises(UserError, match=rf"'study' at .* was deleted but is still in the store, with the runs of "
                                        rf"workspace {a} .*purge it \(mlflow gc --backend-store-uri {uri} --experiment-ids {exp}\)"):
        _tracking.experiment_id(uri, "study", None, b)
    assert _tracking.experiment_id(uri, "study", None, a) == exp  # its own workspace restores it
    assert client.get_experiment(exp).lifecycle_stage == "active"
    older = client.create_experiment("older")  # an older dm-tune's: untagged, the next workspace's
    assert _tracking.experiment_id(uri, "older", None, b) == older
    with pytest.raises(UserError, match=str(b)):
        _tracking.experiment_id(uri, "older", None, a)

    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIM, uri, str(ws), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for ws in (a, b)]
    assert [proc.stdout.readline().strip() for proc in procs] == ["waiting"] * 2  # both imported (a sleep of
    go.touch()                                                                    # 3 s did not always wait)
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outs
    assert sorted(out.split()[0] for out, _ in outs) == ["id", "refused"], outs
    assert "another workspace" in next(out for out, _ in outs if out.startswith("refused"))


def test_the_purge_of_a_deleted_experiment_on_a_server_is_told_with_the_servers_own_store():
    """`mlflow gc --backend-store-uri http://...` (and `--tracking-uri http://...`) ends in MLflow's
    traceback: gc purges an experiment from the store the server was started with."""
    assert _tracking.purge_command("sqlite:////w/mlflow.db", "7") == \
        "mlflow gc --backend-store-uri sqlite:////w/mlflow.db --experiment-ids 7"
    said = _tracking.purge_command("http://mlflow-host:5000", "7")
    assert "--backend-store-uri http" not in said and "STORE the server's --backend-store-uri" in said


def test_an_experiment_another_workspace_created_between_the_lookup_and_the_create(tmp_path, monkeypatch):
    """The race above, made to happen: the name was free when looked up and taken when created
    (MLflow refuses the second create); the experiment is then the other workspace's, refused."""
    from dm_tune.errors import UserError

    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    real = _tracking._client
    looked: list[str] = []

    def client_that_looked_too_early(u: str):
        client = real(u)
        lookup = client.get_experiment_by_name

        def get_experiment_by_name(name: str):
            looked.append(name)
            if len(looked) == 1:  # free when b looked; a creates it just after
                _tracking.experiment_id(uri, name, None, a)
                return None
            return lookup(name)

        client.get_experiment_by_name = get_experiment_by_name
        return client

    monkeypatch.setattr(_tracking, "_client", client_that_looked_too_early)
    with pytest.raises(UserError, match=rf"experiment 'study' at .* of another workspace \({a}, id "):
        _tracking.experiment_id(uri, "study", None, b)
    assert looked[0] == looked[-1] == "study" and len(looked) >= 3  # b's two lookups, around a's


@pytest.mark.parametrize("where", ["a new driver", "the same driver"])
def test_final_metrics_logged_before_a_kill_or_a_failed_close_are_not_logged_twice(tmp_path, where):
    """The driver killed (or the store busy) between a run's final metrics and its close: the
    reconcile closes it without a second entry of each final metric."""
    tracker, ledger, uri, exp = _tracker(tmp_path)
    spec = TrialSpec("set", "search", 0, {"method": "dm"}, number=0)
    ledger.start([spec])
    ledger.end(spec, _outcome())
    tracker._finish(spec, _outcome())
    client = _tracking._client(uri)
    run_id = tracker._runs[spec.key]
    client.update_run(run_id, status="RUNNING")  # what the close had not reached
    client.set_tag(run_id, "dmtune.status", "running")
    tracker._closed.clear()
    again = _tracker(tmp_path)[0] if where == "a new driver" else tracker
    again.reconcile()
    (run,) = _tracking.find_runs(uri, exp, {"dmtune.trial_key": spec.key})
    assert run.info.status == "FINISHED" and run.data.tags["dmtune.status"] == "finished"
    for key in ("final_val_acc", "final_test_acc", "epochs_reached", "val_acc"):
        assert len(client.get_metric_history(run_id, key)) == 1, key


def test_a_trial_line_names_its_class_weighting(tmp_path, capsys):
    """Two arms that differ only in class weighting printed the same line."""
    tracker, *_ = _tracker(tmp_path)
    spec = TrialSpec("set", "search", 0, {"method": "dm"}, number=0)
    for weighting, said in (("inverse", " cw=inverse seed 0: val 50.0% test 40.0%"), ("none", " seed 0: val 50.0%")):
        tracker.describe = lambda spec, w=weighting: {**PARAMS, "psi": 0.5, "rho": 2.0, "class_weighting": w}
        tracker._echo(spec, _outcome())
        line = capsys.readouterr().err
        assert "dm psi=0.5 rho=2 lam=1 beta=8" + said in line and (weighting != "none" or "cw=" not in line), line


@pytest.mark.parametrize("where", ["a new driver", "the same driver"])
def test_a_long_history_cut_between_two_batches_is_logged_once(tmp_path, monkeypatch, where):
    """A trial's history past MLflow's 1000 metrics a batch is logged in several batches; the
    driver killed (or the store busy) between two of them: the reconcile logs the epochs that were
    missing once, and no epoch the first batch held again (a batch that ended inside an epoch left
    that epoch without epoch_time_s, by which a resume tells what was logged; the same driver
    counted none of the first batch's epochs as logged: their metrics twice)."""
    tracker, ledger, uri, exp = _tracker(tmp_path)
    spec = TrialSpec("set", "search", 0, {"method": "dm"}, number=0)
    ledger.start([spec])
    keys = ("train_loss", "train_acc", "val_acc", "test_acc", "weight_var", "lr", "epoch_time_s")  # (train()'s order)
    history = tuple({"epoch": e, **{k: 0.5 + e / 1000 for k in keys}} for e in range(1, 201))
    outcome = TrialOutcome("finished", 200, final_val_acc=0.5, final_test_acc=0.4, history=history)
    ledger.end(spec, outcome)
    client_of, batches = _tracking._client, []

    def killed_after_one_batch(u):
        client = client_of(u)
        log_batch = client.log_batch

        def once(run_id, metrics=(), **kw):
            if metrics and batches:
                raise KeyboardInterrupt if where == "a new driver" else RuntimeError("database is locked")
            if metrics:
                batches.append(len(metrics))
            return log_batch(run_id, metrics=metrics, **kw)

        client.log_batch = once
        return client

    monkeypatch.setattr(_tracking, "_client", killed_after_one_batch)
    with pytest.raises((KeyboardInterrupt, RuntimeError)):
        tracker._finish(spec, outcome)
    monkeypatch.undo()
    assert batches and batches[0] < 7 * 200
    (_tracker(tmp_path)[0] if where == "a new driver" else tracker).reconcile()
    (run,) = _tracking.find_runs(uri, exp, {"dmtune.trial_key": spec.key})
    client = _tracking._client(uri)
    for key in keys:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, 201)), key


def test_a_trial_run_names_what_its_worker_trained_it_with(tmp_path):
    """On a cluster a trial trains on another node, with its own code, packages, CPU and torch
    threads: its run was tagged with the driver's. A trial that ended with its result carries its
    worker's (in the ledger too); one without (cut short) keeps the driver's."""
    from dm_tune.provenance import git_commit, package_versions

    tracker, ledger, uri, exp = _tracker(tmp_path)
    worker = {"git_commit": "0123abc", "versions": {"torch": "2.9.0", "dm-tune": "0.1.0"}, "platform": "Linux-x",
              "cpu": "Some CPU", "dm_native": False, "torch_threads": 3}
    ended = TrialSpec("set", "search", 0, {"method": "dm"}, number=0)
    cut = TrialSpec("set", "search", 1, {"method": "dm"}, number=1)
    ledger.start([ended, cut])
    outcome = TrialOutcome("finished", 1, final_val_acc=0.5, final_test_acc=0.4, provenance=worker,
                           history=({"epoch": 1, "val_acc": 0.5, "epoch_time_s": 0.1},))
    ledger.end(ended, outcome)
    ledger.end(cut, _outcome())
    assert Ledger(tmp_path / "ledger.jsonl").ended[ended.key].provenance == worker  # (read back by a resume)
    assert TrialOutcome.from_report(outcome.to_report(), errored=False).provenance == worker
    tracker._finish(ended, outcome)
    tracker._finish(cut, _outcome())
    client = _tracking._client(uri)
    tags = client.get_run(tracker._runs[ended.key]).data.tags
    assert tags["dmtune.git_commit"] == "0123abc" and json.loads(tags["dmtune.versions"]) == worker["versions"]
    assert (tags["dmtune.cpu"], tags["dmtune.torch_threads"], tags["dmtune.platform"], tags["dmtune.dm_native"]) == \
        ("Some CPU", "3", "Linux-x", "False")
    result = Path(client.download_artifacts(tracker._runs[ended.key], "result.json", str(tmp_path)))
    result = json.loads(result.read_text())
    assert result["git_commit"] == "0123abc" and result["package_versions"] == worker["versions"]
    tags = client.get_run(tracker._runs[cut.key]).data.tags
    assert tags["dmtune.git_commit"] == git_commit() and json.loads(tags["dmtune.versions"]) == package_versions()
    assert "dmtune.cpu" not in tags


def test_a_trial_that_trained_on_other_data_than_the_search_read_is_told_once(tmp_path, capsys):
    """On-disk data is read again by each trial: a dataset or label file changed while the search ran
    gave trials of one setting other data, unsaid (their runs recorded it; the report then warns). The
    driver now says so at the first such trial, with --quiet too, and records every trial as before."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = _tracking.experiment_id(uri, "study", tmp_path / "artifacts")
    parent = _tracking.setting_run(uri, exp, "set", {"dataset": "features"})
    ledger = Ledger(tmp_path / "ledger.jsonl")
    tracker = _tracking.MLflowTracker(uri, exp, parent, "set", ledger, lambda spec: PARAMS, echo=False,
                                      data={"dataset": "aaaa", "noise_file": "cccc"})
    specs = [TrialSpec("set", "search", 0, {"method": "dm"}, number=n) for n in range(4)]
    ledger.start(specs)
    prints = [{"data_fingerprint": "aaaa", "noise_file_fingerprint": "cccc"},
              {"data_fingerprint": "bbbb", "noise_file_fingerprint": "cccc"},
              {"data_fingerprint": "bbbb", "noise_file_fingerprint": "dddd"}, {}]
    for spec, prov in zip(specs, prints):
        outcome = TrialOutcome("finished", 1, final_val_acc=0.5, final_test_acc=0.4, provenance=prov,
                               history=({"epoch": 1, "val_acc": 0.5, "epoch_time_s": 0.1},))
        ledger.end(spec, outcome)
        tracker._finish(spec, outcome)
        if spec.number == 0:
            assert "dm-tune:" not in capsys.readouterr().err  # the data the search read
    tracker.close_open(True)
    told = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dm-tune:")]
    assert told == [
        f"dm-tune: warning: setting set: trial {specs[1].key} trained on other data than the search read (dataset "
        "bbbb, not aaaa): its data changed while it was searched, and the setting's results mix the two (the report "
        "names it)"]
    runs = _tracking.find_runs(uri, exp, {"dmtune.role": "trial"})
    assert sorted(r.data.tags.get("dmtune.data_fingerprint", "") for r in runs) == ["", "aaaa", "bbbb", "bbbb"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_server_given_in_capitals_that_stops_answering_is_gone_as_any_other(tmp_path, monkeypatch, capsys):
    """MLflow reads a tracking URI's scheme in any case (HTTP://host is its server); the tracker took
    only http:// and https:// for one, so a failed write to HTTP://host was said as a store's, again at
    each write, and the search waited minutes for each instead of ending as interrupted."""
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"HTTP://127.0.0.1:{free_port()}"  # (no server there)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    tracker = _tracking.MLflowTracker(uri, "1", "parent", "set", ledger, lambda spec: PARAMS, echo=False)
    spec = TrialSpec("set", "search", 0, {"method": "dm"}, number=0)
    ledger.start([spec])
    ledger.end(spec, _outcome())
    tracker._submit(tracker._finish, spec, _outcome())
    tracker.drain()
    assert tracker.failures == 1 and "runs/create failed" in (tracker.gone or ""), tracker.gone  # (refused)
    told = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dm-tune:")]
    assert told == [f"dm-tune: the MLflow server at {uri} stopped answering ({tracker.gone}); the trials go on into "
                    "the ledger, and a resume records them once it answers"]
