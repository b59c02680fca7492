"""MLflow tracking from the Tune driver: one experiment per study, a parent run per setting,
a child run per trial.

All MLflow writes happen in the driver process (a Tune ``Callback``), so the embedded sqlite
store has a single writer. Runs are found by tag before they are created, so a resumed search
continues the runs it started instead of duplicating them.

Schema (what ``reports`` reads):
  parent: tags dmtune.role=setting, dmtune.setting; params = the setting.
  child:  tags mlflow.parentRunId, dmtune.role=trial, dmtune.setting, dmtune.stage
          (search|confirm), dmtune.baseline ("" for DM arms), dmtune.status
          (running|finished|diverged|early-stopped|errored), dmtune.trial_key, dmtune.git_commit,
          dmtune.versions; params: method, lam, beta, psi, rho, setting fields, seed, epochs;
          metrics per epoch (step = epoch) and final_* metrics; artifacts result.json, weights.csv.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from dm_tune.provenance import git_commit, package_versions
from dm_tune.search._summary import trial_status

EPOCH_METRICS = ("train_loss", "train_acc", "train_clean_acc", "val_acc", "test_acc", "weight_clean",
                 "weight_noisy", "noisy_fit", "weight_var", "lr", "epoch_time_s")
FINAL_METRICS = ("final_test_acc", "final_val_acc", "best_test_acc", "best_val_acc",
                 "val_selected_test_acc", "best_epoch", "epochs_reached", "train_time_s",
                 "noise_rate_realised")
FLUSH_S = 10.0
TERMINAL = ("finished", "diverged", "early-stopped", "errored")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str, artifact_root: Path | None = None) -> str:
    """The study's experiment, created on first use. With a local store its artifacts go under
    ``artifact_root`` (MLflow's default is ./mlruns in whatever directory the search ran from)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = (artifact_root / name).as_uri() if artifact_root is not None else None
    return client.create_experiment(name, artifact_location=location, tags={"dmtune.study": name})


def find_run(uri: str, exp_id: str, tags: dict[str, str]):
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = _client(uri).search_runs([exp_id], filter_string=query, max_results=1)
    return runs[0] if runs else None


def setting_run(uri: str, exp_id: str, key: str, params: dict[str, Any]) -> str:
    """The parent run of a setting, created on first use."""
    run = find_run(uri, exp_id, {"dmtune.role": "setting", "dmtune.setting": key})
    if run is not None:
        return run.info.run_id
    client = _client(uri)
    run = client.create_run(exp_id, run_name=key, tags={
        "dmtune.role": "setting", "dmtune.setting": key, "dmtune.git_commit": git_commit()})
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, _param(v)) for k, v in params.items()])
    return run.info.run_id


def _param(v: Any) -> str:
    return "" if v is None else str(v)


def _finite(metrics: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for name in names:
        v = metrics.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[name] = float(v)
    return out


@dataclass(frozen=True)
class _Trial:
    """What the writer needs of a Tune trial, copied when the event happens."""

    trial_id: str
    config: dict[str, Any]


def _view(trial) -> _Trial:
    return _Trial(trial.trial_id, dict(trial.config))


class MLflowTracker(tune.Callback):
    """Logs every trial of one setting's Tune experiment as a child run of the setting's run.

    The Tune callbacks only queue the events; one writer thread does the MLflow calls in order,
    so that the Tune driver loop never waits on the tracking store (with short trials that wait
    left trial slots idle). ``drain`` waits for the queue; ``reconcile`` makes MLflow agree with
    Tune's final results (after a resume, or if the driver stopped with events still queued).
    """

    def __init__(self, uri: str, exp_id: str, parent_id: str, setting: str, describe,
                 echo: bool = True) -> None:
        self.uri, self.exp_id, self.parent_id = uri, exp_id, parent_id
        self.setting = setting
        self.describe = describe  # trial config -> (params dict, baseline name)
        self.echo = echo
        self._runs: dict[str, str] = {}
        self._done: set[str] = set()
        self._pending: dict[str, list] = {}  # run id -> epoch metrics not yet written
        self._written: dict[str, int] = {}   # run id -> last epoch whose metrics are written
        self._last_flush = time.monotonic()
        self.completed = 0
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    # Tune pickles callbacks with the experiment; the client is re-created lazily.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runs": {}, "_done": set(), "_pending": {}, "_written": {},
                "_queue": None, "_thread": None}

    # --- the writer thread ------------------------------------------------------------------

    def _submit(self, fn, *args) -> None:
        if self._thread is None:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._work, name="dm-tune-mlflow", daemon=True)
            self._thread.start()
        self._queue.put((fn, args))

    def _work(self) -> None:
        assert self._queue is not None
        while True:
            fn, args = self._queue.get()
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - the search goes on; reconcile() retries
                print(f"dm-tune: MLflow write failed ({type(e).__name__}: {e}); will retry at the end",
                      file=sys.stderr, flush=True)
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until every queued MLflow write is done."""
        if self._queue is not None:
            self._queue.join()

    def reconcile(self, results) -> None:
        """Record every ended trial of a finished experiment that MLflow does not show as ended."""
        for r in results:
            m = r.metrics or {}
            if m.get("trial_id"):
                self._submit(self._finish, _Trial(m["trial_id"], dict(r.config)), dict(m), r.error is not None)
        self._submit(self._flush)
        self.drain()

    # --- Tune events (queued) -----------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._submit(self._run_id, _view(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._submit(self._result, _view(trial), dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._submit(self._finish, _view(trial), dict(trial.last_result or {}), False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._submit(self._finish, _view(trial), dict(trial.last_result or {}), True)

    def on_experiment_end(self, trials, **info) -> None:
        self._submit(self._flush)
        self.drain()

    # --- the MLflow writes (writer thread) -------------------------------------------------------

    def _key(self, trial) -> str:
        return f"{self.setting}/{trial.trial_id}"

    @staticmethod
    def _stage(trial) -> str:
        return "confirm" if "arm" in trial.config else "search"

    def _run_id(self, trial) -> str | None:
        key = self._key(trial)
        if key in self._runs:
            return self._runs[key]
        run = find_run(self.uri, self.exp_id, {"dmtune.trial_key": key})
        if run is not None:
            if run.data.tags.get("dmtune.status") in TERMINAL:
                self._done.add(key)
            self._runs[key] = run.info.run_id
            # A resumed trial: its epochs up to here are already in MLflow.
            history = _client(self.uri).get_metric_history(run.info.run_id, "epoch_time_s")
            self._written[run.info.run_id] = max((h.step for h in history), default=0)
            return run.info.run_id
        params, baseline = self.describe(trial.config)
        client = _client(self.uri)
        run = client.create_run(self.exp_id, run_name=f"{self.setting}-{trial.trial_id}", tags={
            "mlflow.parentRunId": self.parent_id, "dmtune.role": "trial",
            "dmtune.setting": self.setting, "dmtune.stage": self._stage(trial),
            "dmtune.baseline": baseline, "dmtune.status": "running", "dmtune.trial_key": key,
            "dmtune.git_commit": git_commit(), "dmtune.versions": json.dumps(package_versions())})
        from mlflow.entities import Param

        client.log_batch(run.info.run_id, params=[Param(k, _param(v)) for k, v in params.items()])
        self._runs[key] = run.info.run_id
        return run.info.run_id

    def _result(self, trial: _Trial, result: dict[str, Any]) -> None:
        run_id = self._run_id(trial)
        if run_id is None or self._key(trial) in self._done or result.get("final"):
            return
        from mlflow.entities import Metric

        step, now = int(result.get("epoch", 0)), int(time.time() * 1000)
        if step <= self._written.get(run_id, 0):
            return
        self._pending.setdefault(run_id, []).extend(
            Metric(k, v, now, step) for k, v in _finite(result, EPOCH_METRICS).items())
        # Epoch metrics are written in batches (every FLUSH_S and at the end of each trial):
        # one sqlite transaction per epoch per trial would make the driver the bottleneck.
        if time.monotonic() - self._last_flush > FLUSH_S:
            self._flush()

    def _flush(self, only: str | None = None) -> None:
        client = _client(self.uri)
        for run_id in [only] if only else list(self._pending):
            metrics = self._pending.pop(run_id, [])
            for i in range(0, len(metrics), 1000):  # MLflow's batch limit
                client.log_batch(run_id, metrics=metrics[i:i + 1000])
            if metrics:
                self._written[run_id] = max(self._written.get(run_id, 0), max(m.step for m in metrics))
        if only is None:
            self._last_flush = time.monotonic()

    def _finish(self, trial: _Trial, result: dict[str, Any], errored: bool) -> None:
        key = self._key(trial)
        run_id = self._run_id(trial)
        if run_id is None or key in self._done:
            return
        epochs = int(result.get("epochs_reached", result.get("epoch", 0)) or 0)
        status = trial_status(result, errored)
        if result.get("result_json"):
            # The full per-epoch history (trials report to Tune only every few epochs when no
            # scheduler needs every epoch): write the epochs not written yet.
            self._pending.pop(run_id, None)
            now = int(time.time() * 1000)
            written = self._written.get(run_id, 0)
            from mlflow.entities import Metric as _Metric

            self._pending[run_id] = [
                _Metric(k, v, now, int(h["epoch"])) for h in json.loads(result["result_json"]).get("history", [])
                if int(h["epoch"]) > written for k, v in _finite(h, EPOCH_METRICS).items()]
        self._flush(only=run_id)
        final = _finite(result, FINAL_METRICS)
        if "final" not in result:  # no final report (early-stopped or errored): from the last epoch
            final.update(_finite({"final_test_acc": result.get("test_acc"),
                                  "final_val_acc": result.get("val_acc"), "epochs_reached": epochs},
                                 FINAL_METRICS))
        client = _client(self.uri)
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        tags = [RunTag("dmtune.status", status)]
        if result.get("node_id"):
            tags.append(RunTag("dmtune.node_id", str(result["node_id"])))
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in final.items()], tags=tags)
        if result.get("result_json"):
            self._log_artifacts(client, run_id, result["result_json"])
        client.set_terminated(run_id, "FAILED" if errored else "FINISHED")
        self._done.add(key)
        self.completed += 1
        if self.echo:
            params, baseline = self.describe(trial.config)
            arm = baseline or "dm " + " ".join(f"{k}={params[k]:.3g}" for k in ("psi", "rho", "lam", "beta")
                                               if isinstance(params.get(k), float))
            acc = result.get("test_acc")
            acc_s = f"val {100 * result.get('val_acc', float('nan')):.1f}% test {100 * acc:.1f}%" if acc is not None else "no result"
            print(f"  [{self.setting} {self._stage(trial)}] {arm} seed {params.get('seed')}: {acc_s} ({status}, "
                  f"{epochs} epochs)", file=sys.stderr, flush=True)

    @staticmethod
    def _log_artifacts(client, run_id: str, result_json: str) -> None:
        result = json.loads(result_json)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "result.json").write_text(json.dumps(result, indent=1) + "\n")
            rows = ["epoch,weight_clean,weight_noisy,noisy_fit,weight_var"]
            rows += [",".join(str(h.get(k, "")) for k in ("epoch", "weight_clean", "weight_noisy", "noisy_fit", "weight_var"))
                     for h in result.get("history", [])]
            Path(tmp, "weights.csv").write_text("\n".join(rows) + "\n")
            client.log_artifacts(run_id, tmp)
