"""MLflow tracking from the Tune driver: one experiment per study, a parent run per setting,
a child run per trial.

All MLflow writes happen in the driver process, so the embedded sqlite store has a single
writer; they run on one writer thread so that the Tune driver loop never waits on the store.
A trial's run is found by its trial key (``TrialSpec.key``) before one is created, so a trial
handed out again after an interruption continues its run instead of duplicating it, and the
epochs already logged are not logged twice.

Run states: a trial run is RUNNING while its trial trains and ends FINISHED (finished,
diverged or early-stopped) or FAILED (errored); the setting's parent run ends FINISHED when the
setting is done. An interrupted search marks its open runs KILLED (tag dmtune.status
``interrupted``); resuming reopens them and closes them for good.

Schema (what ``reports`` reads):
  parent: tags dmtune.role=setting, dmtune.setting; params = the setting.
  child:  tags mlflow.parentRunId, dmtune.role=trial, dmtune.setting, dmtune.stage
          (search|confirm), dmtune.baseline ("" for DM arms), dmtune.arm, dmtune.status
          (running|finished|diverged|early-stopped|errored|interrupted), dmtune.trial_key,
          dmtune.population (the population it trained in: its first member's trial key),
          dmtune.reused_from (a confirm trial on a search seed: the search trial whose run it
          repeats, trained once, under that trial's population),
          dmtune.git_commit, dmtune.versions (the driver's when the run starts, the worker's once
          its trial ends with its result, with dmtune.cpu, dmtune.torch_threads, dmtune.platform
          and dmtune.dm_native), dmtune.node_id; params: the resolved training
          config (the method's own knobs only), psi/rho for DM, num_classes, population_size;
          metrics per epoch
          (step = epoch) and final_* metrics; artifacts result.json, weights.csv.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray import tune

from dm_tune.errors import UserError, first_line, is_server, json_text, no_room
from dm_tune.provenance import git_commit, package_versions
from dm_tune.search._ledger import Ledger
from dm_tune.search._trial import TrialOutcome, TrialSpec, member_outcomes

# Per-epoch keys that are not metrics of the run (population bookkeeping stays in result.json).
NOT_EPOCH_METRICS = ("epoch", "diverged", "population_size", "population_epoch_time_s")
WRITER_NICE = 10  # the MLflow writer thread's priority (0 normal, 19 lowest)
RUN_STATE = {"finished": "FINISHED", "diverged": "FINISHED", "early-stopped": "FINISHED", "errored": "FAILED"}


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def purge_command(uri: str, experiment: str) -> str:
    """The command that purges a deleted experiment: ``mlflow gc`` opens the store itself, which for a
    server is the one it was started with (given an http:// URI, either way, gc ends in a traceback)."""
    if is_server(uri):
        return (f"mlflow gc --backend-store-uri STORE --experiment-ids {experiment}, STORE the server's "
                f"--backend-store-uri, where it runs")
    return f"mlflow gc --backend-store-uri {uri} --experiment-ids {experiment}"


def experiment_id(uri: str, name: str, artifact_root: Path | None = None, workspace: Path | None = None,
                  create: bool = True) -> str | None:
    """The study's experiment, created on first use (``create`` False: only checked, nothing
    created, tagged or restored; None where there is none yet). With a local store its artifacts go under
    ``artifact_root`` (MLflow's default is ./mlruns in whatever directory the search ran from).

    A tracking store (a server) may be shared by several workspaces, whose studies would then
    meet under one name: the experiment belongs to the workspace that created it (tag
    ``dmtune.workspace_id``), and another workspace's search of that name is refused, not mixed
    in (its runs would be reused, closed and reported as this one's)."""
    from mlflow.exceptions import MlflowException

    from dm_tune.search._stores import workspace_id

    client = _client(uri)
    owner = {"dmtune.workspace_id": workspace_id(workspace), "dmtune.workspace": str(workspace)} if workspace else {}
    exp = client.get_experiment_by_name(name)
    if exp is None:
        if not create:
            return None
        location = (artifact_root / name).as_uri() if artifact_root is not None else None
        try:
            return client.create_experiment(name, artifact_location=location, tags={"dmtune.study": name, **owner})
        except MlflowException:  # created in the meantime by another process: whose is it?
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if owner:
        theirs = exp.tags.get("dmtune.workspace_id")
        if theirs is None and create:  # an older dm-tune's experiment: this workspace's from now on
            for key, value in owner.items():
                client.set_experiment_tag(exp.experiment_id, key, value)
        elif theirs is not None and theirs != owner["dmtune.workspace_id"]:
            where = exp.tags.get("dmtune.workspace", theirs)
            if exp.lifecycle_stage == "deleted":  # e.g. a workspace removed, its experiment deleted in MLflow
                raise UserError(f"MLflow experiment {name!r} at {uri} was deleted but is still in the store, with "
                                f"the runs of workspace {where} (id {theirs}); purge it "
                                f"({purge_command(uri, exp.experiment_id)}) or search under another --name")
            raise UserError(f"MLflow experiment {name!r} at {uri} holds study {name!r} of another workspace "
                            f"({where}, id {theirs}); search under another --name, or in that workspace")
    if exp.lifecycle_stage == "deleted" and create:
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _runs_filter(tags: Mapping[str, str], status: str | None = None) -> str:
    return " and ".join([f"tags.`{k}` = '{v}'" for k, v in tags.items()]
                        + ([f"attributes.status = '{status}'"] if status else []))


def find_runs(uri: str, exp_id: str, tags: Mapping[str, str], max_results: int = 1000, status: str | None = None):
    return _client(uri).search_runs([exp_id], filter_string=_runs_filter(tags, status), max_results=max_results)


_PAGE = 1000  # runs per MLflow request


def trial_keys(uri: str, exp_id: str, setting: str) -> set[str]:
    """The trial keys (``dmtune.trial_key``) of every trial run of ``setting``, page by page."""
    keys: set[str] = set()
    token = None
    while True:
        page = _client(uri).search_runs([exp_id], filter_string=_runs_filter({"dmtune.role": "trial",
                                                                             "dmtune.setting": setting}),
                                        max_results=_PAGE, page_token=token)
        keys.update(run.data.tags.get("dmtune.trial_key", "") for run in page)
        token = page.token
        if not token:
            keys.discard("")
            return keys


def _param(v: Any) -> str:
    return "" if v is None else str(v)


# The parts of a setting's data (``_preflight.setting_data``), the trials' provenance keys of their
# fingerprints, and what they are called.
DATA_PROVENANCE = (("dataset", "data_fingerprint", "dataset"), ("noise_file", "noise_file_fingerprint", "label file"))


def worker_tags(prov: Mapping[str, Any]) -> dict[str, str]:
    """The run tags of what trained a trial, from its worker's provenance (``TrialOutcome.provenance``;
    none where it is empty): on a cluster another node's code, packages and CPU than the driver's;
    and the fingerprints of the data it trained on (``dm_tune.datasets._fingerprint``)."""
    tags = {}
    if prov.get("git_commit"):
        tags["dmtune.git_commit"] = str(prov["git_commit"])
    if prov.get("versions"):
        tags["dmtune.versions"] = json.dumps(prov["versions"])
    for key in ("cpu", "torch_threads", "platform", "dm_native", "data_fingerprint", "noise_file_fingerprint"):
        if prov.get(key) is not None:
            tags[f"dmtune.{key}"] = str(prov[key])
    return tags


def _log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, _param(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=items[i:i + 100])


def setting_run(uri: str, exp_id: str, key: str, params: Mapping[str, Any]) -> str:
    """The parent run of a setting, created on first use (and reopened by a resume, which logs the
    params a driver killed between creating the run and logging them left out)."""
    runs = find_runs(uri, exp_id, {"dmtune.role": "setting", "dmtune.setting": key}, 1)
    client = _client(uri)
    if runs:
        if runs[0].info.status != "RUNNING":
            client.update_run(runs[0].info.run_id, status="RUNNING")
        missing = {k: v for k, v in params.items() if k not in runs[0].data.params}
        if missing:
            _log_params(client, runs[0].info.run_id, missing)
        return runs[0].info.run_id
    run = client.create_run(exp_id, run_name=key, tags={
        "dmtune.role": "setting", "dmtune.setting": key, "dmtune.git_commit": git_commit()})
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def _finite(values: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def members_of(trial) -> list[TrialSpec]:
    return [TrialSpec.from_dict(d) for d in trial.config["specs"]]


class MLflowTracker(tune.Callback):
    """Logs every trial of one setting as a child run of the setting's run (a Ray trial trains a
    population of them: one run per member, tagged with the population); records each
    population's newest checkpoint in the ledger (for resuming after an interruption)."""

    def __init__(self, uri: str, exp_id: str, parent_id: str, setting: str, ledger: Ledger,
                 describe: Callable[[TrialSpec], dict[str, Any]], echo: bool = True,
                 data: Mapping[str, str] | None = None) -> None:
        self.uri, self.exp_id, self.parent_id, self.setting = uri, exp_id, parent_id, setting
        self.ledger, self.describe, self.echo = ledger, describe, echo
        # The fingerprints of the setting's data as the search read it (``_preflight.setting_data``): a
        # trial that trained on other data (changed on disk while the search ran) is told, once.
        self.data, self.other_data = dict(data or {}), False
        self._runs: dict[str, str] = {}            # trial key -> run id
        self._unlogged: dict[str, dict[str, Any]] = {}  # run id -> params not logged yet
        self._steps: dict[str, set[int]] = {}      # run id -> epochs logged
        self._closed: set[str] = set()             # trial keys whose run was closed here
        self._may_have_finals: set[str] = set()    # run ids whose final metrics may be logged already
        # Only trials that started before this process can have a run already.
        self._earlier = set(ledger.started)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self.failures = 0
        self._said: set[str] = set()  # the reasons of failed writes told so far
        # A tracking server that failed a write after MLflow's own retries (minutes of them) is gone:
        # the writes queued behind it are dropped (each would wait as long), the trials go on into
        # the ledger, and the setting ends as interrupted, for a resume to record once it answers.
        self.gone: str | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into tuner.pkl
        return {**self.__dict__, "_runs": {}, "_unlogged": {}, "_steps": {}, "_closed": set(),
                "_may_have_finals": set(), "_queue": None, "_thread": None, "_said": set()}

    # --- the writer thread ------------------------------------------------------------------

    def _submit(self, fn, *args) -> None:
        if self._thread is None:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._work, name="dm-tune-mlflow", daemon=True)
            self._thread.start()
        self._queue.put((fn, args))

    def _work(self) -> None:
        assert self._queue is not None
        # The writes can wait, the trials cannot: on a machine whose cores the trials fill, this
        # thread takes the CPU they leave (Linux: a thread's own nice value; elsewhere unchanged).
        if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
            except OSError:
                pass
        while True:
            fn, args = self._queue.get()
            try:
                if self.gone is None:
                    fn(*args)
                elif fn == self._finish and self.echo:  # the trial's line, as if it had been recorded
                    self._echo(*args)
            except Exception as e:  # noqa: BLE001 - the search goes on; reconcile() redoes it
                self.failures += 1
                if is_server(self.uri):  # (HTTP:// too: MLflow reads schemes in any case)
                    self.gone = f"{type(e).__name__}: {first_line(e)}"
                    print(f"dm-tune: the MLflow server at {self.uri} stopped answering ({self.gone}); the trials "
                          "go on into the ledger, and a resume records them once it answers", file=sys.stderr,
                          flush=True)
                elif (said := f"{type(e).__name__}: {no_room(e) or first_line(e)}") not in self._said:
                    self._said.add(said)  # (each reason once: a full disk failed every write after it)
                    print(f"dm-tune: MLflow write failed ({said}); it is redone at the end of the setting, and so "
                          "is any other write that fails so", file=sys.stderr, flush=True)
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until every queued MLflow write is done."""
        if self._queue is not None:
            self._queue.join()

    # --- Tune events (the driver loop: queue and return) ------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        members = members_of(trial)
        for spec in members:
            self._submit(self._open, spec, trial.config["group"], len(members))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if not result.get("final"):
            self._member_epochs(members_of(trial), result)

    def _member_epochs(self, members: list[TrialSpec], result: Mapping[str, Any]) -> None:
        """Log each member's epoch; not that of a member whose end the ledger holds already (its
        population trained again after the driver died while its end events were written: the
        run keeps the epochs of the result it ended with)."""
        for spec, metrics in zip(members, result.get("members") or []):
            if metrics and spec.key not in self.ledger.ended:
                self._submit(self._log_epochs, spec, [dict(metrics)])

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        self.ledger.checkpoint(trial.config["group"], checkpoint_location(checkpoint))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        if self.echo:
            print(f"  [{self.setting}] {_trial_name(trial)} failed ({_error_line(trial)}); "
                  "retrying from its newest checkpoint", file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if self.echo:
            print(f"  [{self.setting}] {_trial_name(trial)} failed for good ({_error_line(trial)})",
                  file=sys.stderr, flush=True)
        self._end(trial, errored=True)

    def _end(self, trial, errored: bool) -> None:
        self._end_members(members_of(trial), trial.last_result, errored)

    def _end_members(self, members: list[TrialSpec], last_result: Mapping[str, Any] | None, errored: bool) -> None:
        """Close the members' runs with the ledger's outcome where it has one (Tune tells the searcher,
        which writes the ledger, before the callbacks): a member that had ended before its population
        was trained again (the driver killed while the population's end was being written) keeps the
        result the ledger and Optuna have, not the new run's."""
        for spec, outcome in zip(members, member_outcomes(last_result, len(members), errored)):
            self._submit(self._finish, spec, self.ledger.ended.get(spec.key, outcome))

    # --- the MLflow writes (writer thread) -------------------------------------------------------

    def _open(self, spec: TrialSpec, group: str = "", size: int = 1) -> str:
        """The trial's run: found (a trial started before this process), else created. Its id is
        kept the moment it exists, so a write that fails after (its params: the store busy) is
        redone on this run by the next call, never by a second run."""
        client = _client(self.uri)
        if spec.key not in self._runs:
            params = {**self.describe(spec), "population_size": size}
            found = (find_runs(self.uri, self.exp_id, {"dmtune.trial_key": spec.key}, 1)
                     if spec.key in self._earlier else [])
            if found:  # a trial handed out again after an interruption: continue its run
                run_id = found[0].info.run_id
                self._may_have_finals.add(run_id)
                if found[0].info.status != "RUNNING" and spec.key not in self.ledger.ended:
                    client.update_run(run_id, status="RUNNING")
                    client.set_tag(run_id, "dmtune.status", "running")
                # epoch_time_s: logged every epoch by every task (a retrieval run has no val_acc)
                self._steps[run_id] = {int(m.step) for m in client.get_metric_history(run_id, "epoch_time_s")}
                params = {k: v for k, v in params.items() if k not in found[0].data.params}  # killed before them
            else:
                run_id = client.create_run(self.exp_id, run_name=spec.key.replace("/", "-"), tags={
                    "mlflow.parentRunId": self.parent_id, "dmtune.role": "trial",
                    "dmtune.setting": self.setting, "dmtune.stage": spec.stage, "dmtune.arm": spec.arm,
                    "dmtune.baseline": spec.baseline, "dmtune.status": "running", "dmtune.trial_key": spec.key,
                    "dmtune.population": group or spec.key,
                    "dmtune.git_commit": git_commit(), "dmtune.versions": json.dumps(package_versions())}).info.run_id
                self._steps[run_id] = set()
            self._runs[spec.key] = run_id
            if params:
                self._unlogged[run_id] = params
        run_id = self._runs[spec.key]
        if run_id in self._unlogged:
            _log_params(client, run_id, self._unlogged[run_id])
            del self._unlogged[run_id]
        return run_id

    def _log_epochs(self, spec: TrialSpec, epochs: list[Mapping[str, Any]]) -> None:
        """Log the epochs not logged yet (step = epoch)."""
        from mlflow.entities import Metric

        run_id = self._open(spec)
        done = self._steps[run_id]
        now = int(time.time() * 1000)
        new = [e for e in epochs if int(e.get("epoch", 0)) > 0 and int(e["epoch"]) not in done]
        client = _client(self.uri)
        # At most MLflow's 1000 metrics a batch, each epoch whole in one and counted as logged
        # once its batch is: a driver killed (or a write failed) between two batches leaves no
        # epoch with some of its metrics logged (a resume tells the epochs logged by their
        # epoch_time_s), nor one logged but not counted, to be logged a second time.
        batch: list[Any] = []

        def flush() -> None:
            client.log_batch(run_id, metrics=batch)
            done.update(m.step for m in batch)
            batch.clear()

        for e in new:
            rows = [Metric(k, v, now, int(e["epoch"])) for k, v in _finite(e, NOT_EPOCH_METRICS).items()]
            if batch and len(batch) + len(rows) > 1000:
                flush()
            batch += rows
        if batch:
            flush()

    def _finish(self, spec: TrialSpec, outcome: TrialOutcome) -> None:
        from mlflow.entities import Metric, RunTag

        if spec.key in self._closed:
            return
        if outcome.reused_from:  # a confirm trial that is a search trial's run: tagged with its population
            group = self.ledger.group.get(outcome.reused_from, outcome.reused_from)
            run_id = self._open(spec, group, sum(g == group for g in self.ledger.group.values()))
        else:
            run_id = self._open(spec)
        self._log_epochs(spec, list(outcome.history))
        client = _client(self.uri)
        now = int(time.time() * 1000)
        final = _finite({**{k: getattr(outcome, k) for k in TrialOutcome.SCALARS}, **outcome.task_metrics})
        if run_id in self._may_have_finals:  # killed (or a write failed) after they were logged: not twice
            logged = client.get_run(run_id).data.metrics
            final = {k: v for k, v in final.items() if logged.get(k) != v}
        tags = [RunTag("dmtune.status", outcome.status)]
        if outcome.reused_from:
            tags.append(RunTag("dmtune.reused_from", outcome.reused_from))
        if outcome.node_id:
            tags.append(RunTag("dmtune.node_id", outcome.node_id))
        tags += [RunTag(k, v) for k, v in worker_tags(outcome.provenance).items()]
        self._tell_other_data(spec, outcome.provenance)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in final.items()], tags=tags)
        self._may_have_finals.add(run_id)
        if outcome.history:
            self._log_artifacts(client, run_id, spec, outcome)
        client.set_terminated(run_id, RUN_STATE.get(outcome.status, "FAILED"))
        self._closed.add(spec.key)
        if self.echo:
            self._echo(spec, outcome)

    def _tell_other_data(self, spec: TrialSpec, prov: Mapping[str, Any]) -> None:
        other = [f"{what} {prov[key]}, not {self.data[part]}" for part, key, what in DATA_PROVENANCE
                 if part in self.data and prov.get(key) and prov[key] != self.data[part]]
        if other and not self.other_data:  # (with --quiet too: the setting's results mix two data)
            self.other_data = True
            print(f"dm-tune: warning: setting {self.setting}: trial {spec.key} trained on other data than the "
                  f"search read ({'; '.join(other)}): its data changed while it was searched, and the setting's "
                  "results mix the two (the report names it)", file=sys.stderr, flush=True)

    def _log_artifacts(self, client, run_id: str, spec: TrialSpec, outcome: TrialOutcome) -> None:
        keys = ("epoch", "weight_clean", "weight_noisy", "noisy_fit", "weight_var")
        with tempfile.TemporaryDirectory() as tmp:
            prov = outcome.provenance  # the worker's, as it trained (else the driver's)
            doc = {"spec": spec.to_dict(), "outcome": outcome.to_dict(), "params": self.describe(spec),
                   "git_commit": prov.get("git_commit") or git_commit(),
                   "package_versions": prov.get("versions") or package_versions()}
            Path(tmp, "result.json").write_text(json_text(doc))
            rows = [",".join(keys)] + [",".join(str(h.get(k, "")) for k in keys) for h in outcome.history]
            Path(tmp, "weights.csv").write_text("\n".join(rows) + "\n")
            client.log_artifacts(run_id, tmp)

    def _echo(self, spec: TrialSpec, outcome: TrialOutcome) -> None:
        if spec.baseline:
            arm = spec.baseline
        else:
            knobs = self.describe(spec)
            arm = "dm " + " ".join(f"{k}={float(knobs[k]):.3g}" for k in ("psi", "rho", "lam", "beta") if k in knobs)
            if knobs.get("class_weighting", "none") != "none":  # (two arms that differ only in it read alike)
                arm += f" cw={knobs['class_weighting']}"
        acc = (f"val {100 * outcome.final_val_acc:.1f}% test {100 * outcome.final_test_acc:.1f}%"
               if math.isfinite(outcome.final_test_acc) else "no result")
        if math.isfinite(outcome.value("final_test_map")):  # retrieval
            acc = (f"val mAP {100 * outcome.value('final_val_map'):.1f} test mAP "
                   f"{100 * outcome.value('final_test_map'):.1f} rank-1 {100 * outcome.value('final_test_rank1'):.1f}")
        reused = f"; the run of {outcome.reused_from}" if outcome.reused_from else ""
        print(f"  [{self.setting} {spec.stage}] {arm} seed {spec.seed}: {acc} ({outcome.status}, "
              f"{outcome.epochs_reached} epochs{reused})", file=sys.stderr, flush=True)

    # --- the end of a setting (driver thread, after Tune returned) ----------------------------

    def reconcile(self) -> None:
        """Make MLflow agree with the ledger: every ended trial has a closed run with its results
        (after a resume, or after a write that failed)."""
        self.drain()
        if self.gone is not None:
            from dm_tune.search._run import Interrupted

            raise Interrupted(f"the MLflow server at {self.uri} stopped answering ({self.gone}); the trials "
                              "that ended are in the ledger")
        for spec, outcome in self.ledger.ended_specs():
            if spec.key in self._closed:
                continue
            runs = find_runs(self.uri, self.exp_id, {"dmtune.trial_key": spec.key}, 1)
            if runs and runs[0].info.status != "RUNNING" and runs[0].data.tags.get("dmtune.status") == outcome.status:
                self._closed.add(spec.key)
                continue
            self._finish(spec, outcome)

    def close_open(self, finished: bool) -> None:
        """End the setting: its parent run FINISHED if ``finished``; trial runs left open (their
        trials were interrupted) and, if interrupted, the parent run KILLED."""
        self.drain()
        if self.gone is not None:  # each write would wait out MLflow's retries again: the resume closes them
            return
        client = _client(self.uri)
        trials = {"dmtune.role": "trial", "dmtune.setting": self.setting}
        while runs := find_runs(self.uri, self.exp_id, trials, status="RUNNING"):  # 1000 at a time
            for run in runs:
                client.set_tag(run.info.run_id, "dmtune.status", "interrupted")
                client.set_terminated(run.info.run_id, "KILLED")
        client.set_terminated(self.parent_id, "FINISHED" if finished else "KILLED")


def checkpoint_location(checkpoint) -> str:
    """Where a resumed trial finds a checkpoint: its path on local (or shared) storage, a URI
    (``s3://bucket/...``) on remote storage, whose checkpoint paths carry no scheme."""
    kind = getattr(checkpoint.filesystem, "type_name", "local")
    return checkpoint.path if kind == "local" or "::" in kind else f"{kind}://{checkpoint.path}"


def _error_line(trial) -> str:
    """The last line of a trial's error (Tune keeps the traceback in the trial folder). Tune
    writes it in the trial's local folder first and copies it to the storage path (where
    ``get_error`` reads) later, so when a callback runs the local file may be the only copy."""
    text = str(trial.get_error() or "")
    local = getattr(trial, "error_file", None)
    if not text.strip() and local:
        try:
            text = Path(local).read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return "no error text; see error.txt in the trial's folder"
    return lines[-1] if len(lines[-1]) <= 200 else lines[-1][:199] + "…"  # (cut: said so)


def _trial_name(trial) -> str:
    """"trial GROUP", or for a population every member it trains (a worker's crash fails them all)."""
    members = members_of(trial)
    if len(members) <= 1:
        return f"trial {trial.config['group']}"
    shown = ", ".join(m.key.split("/", 1)[-1] for m in members[:6]) + (", ..." if len(members) > 6 else "")
    return f"population {trial.config['group']} ({len(members)} members: {shown})"
