"""The public Ray Tune API that dm-tune's search relies on, run against the installed Ray.

scripts/test.sh runs this file on the newest Ray (.venv) and again on the oldest supported one
(.venv-oldest, built by scripts/oldest.sh): the ``ray[tune]`` range in pyproject.toml is as wide
as this file passes. Trainables are built by factories so that cloudpickle ships them by value
(Ray's workers cannot import this test module).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

pytestmark = pytest.mark.timeout(300)

STEPS = 4


class ListSearcher(Searcher):
    """Suggests ``x`` from a fixed list, in order; its position survives an experiment restore."""

    def __init__(self, xs: list[float], metric: str = "score", mode: str = "max") -> None:
        super().__init__(metric=metric, mode=mode)
        self.xs = list(xs)
        self.next = 0
        self.suggested: dict[str, float] = {}
        self.completed: dict[str, Any] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.next >= len(self.xs):
            return Searcher.FINISHED
        x = self.xs[self.next]
        self.next += 1
        self.suggested[trial_id] = x
        return {"x": x}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.completed[trial_id] = None if result is None else result.get(self.metric)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump((self.xs, self.next, self.suggested, self.completed), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.xs, self.next, self.suggested, self.completed = pickle.load(f)


class Recorder(tune.Callback):
    """Side effects live in callbacks: this one only records what the driver saw."""

    def __init__(self) -> None:
        self.results: list[tuple[str, int]] = []
        self.completed: list[str] = []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.results.append((trial.trial_id, result["training_iteration"]))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.completed.append(trial.trial_id)


def make_trainable(interrupt: tuple[int, str] | None = None):
    """A function trainable: ``score = x * step``, a checkpoint per step, resumable.

    ``interrupt=(pid, marker)``: the first trial to reach step 2 sends SIGINT to the driver ``pid``
    (once: ``marker`` is created exclusively), as Ctrl+C on the search command would.
    """

    def trainable(config: dict[str, Any], offset: float = 0.0) -> None:
        import json
        import signal
        import tempfile
        import time

        import ray
        from ray import tune

        start, resumed = 0, 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                start = resumed = json.loads(Path(d, "state.json").read_text())["step"]
        ctx = tune.get_context()
        for step in range(start + 1, STEPS + 1):
            time.sleep(0.1)
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "state.json").write_text(json.dumps({"step": step}))
                tune.report({"score": config["x"] * step + offset, "step": step, "resumed_from": resumed,
                             "trial_id": ctx.get_trial_id(), "node": ray.get_runtime_context().get_node_id()},
                            checkpoint=tune.Checkpoint.from_directory(tmp))
            if interrupt is not None and step == 2:
                pid, marker = interrupt
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    continue
                os.kill(pid, signal.SIGINT)
                time.sleep(5)  # the interrupted driver stops this trial before it wakes

    return trainable


def _tuner(trainable, storage: Path, name: str, searcher: Searcher, *, asha: bool,
           callbacks: list[tune.Callback] = ()) -> tune.Tuner:
    scheduler = ASHAScheduler(max_t=STEPS, grace_period=1, reduction_factor=2) if asha else None
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, offset=0.5), {"cpu": 1}),
        tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=len(searcher.xs),
                                    search_alg=ConcurrencyLimiter(searcher, max_concurrent=2),
                                    scheduler=scheduler),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), verbose=0, callbacks=list(callbacks),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=1)),
    )


@pytest.fixture
def result_files(monkeypatch):
    """Tune's own result files, which ExperimentAnalysis reads (conftest turns them off)."""
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)


def test_search_with_asha_a_custom_searcher_and_checkpoints(tmp_path, ray_local, result_files):
    assert ray.is_initialized()
    searcher, recorder = ListSearcher([6.0, 5.0, 4.0, 3.0, 2.0]), Recorder()
    tuner = _tuner(make_trainable(), tmp_path, "asha", searcher, asha=True, callbacks=[recorder])
    grid = tuner.fit()

    assert grid.num_errors == 0 and len(grid) == 5
    iterations = sorted(r.metrics["training_iteration"] for r in grid)
    # Scores fall with each new trial, so ASHA stops some at a rung; the first ones run to the end.
    assert iterations[0] < STEPS and iterations[-1] == STEPS
    best = grid.get_best_result()
    assert best.config["x"] == 6.0 and best.metrics["score"] == 6.0 * STEPS + 0.5
    assert best.checkpoint is not None and best.metrics["node"] == ray.get_runtime_context().get_node_id()
    assert {r.metrics["trial_id"] for r in grid} == set(recorder.completed)
    assert len(recorder.results) == sum(iterations)

    analysis = tune.ExperimentAnalysis(str(tmp_path / "asha"))
    last = analysis.dataframe()  # each trial's last result
    assert len(last) == 5 and set(last["config/x"]) == {6.0, 5.0, 4.0, 3.0, 2.0}
    assert sorted(last["training_iteration"]) == iterations
    best = analysis.dataframe(metric="score", mode="max")  # each trial's best result
    assert sorted(best["score"]) == sorted(r.metrics["score"] for r in grid)


def test_interrupted_experiment_restores_trials_and_searcher(tmp_path, ray_local, result_files):
    path, marker = tmp_path / "resume", str(tmp_path / "interrupted")
    trainable = make_trainable(interrupt=(os.getpid(), marker))
    searcher = ListSearcher([1.0, 2.0, 3.0, 4.0])
    first = _tuner(trainable, tmp_path, "resume", searcher, asha=False).fit()

    assert os.path.exists(marker)
    assert sum(r.metrics.get("training_iteration", 0) == STEPS for r in first) < 4  # cut short
    assert tune.Tuner.can_restore(str(path))
    grid = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True).fit()

    assert grid.num_errors == 0 and len(grid) == 4
    # Every x exactly once: the restored searcher went on from where it stopped.
    assert sorted(r.config["x"] for r in grid) == [1.0, 2.0, 3.0, 4.0]
    assert all(r.metrics["step"] == STEPS for r in grid)
    # The trial that sent the interrupt continued from its checkpoint, not from scratch.
    assert max(r.metrics["resumed_from"] for r in grid) >= 2
    frame = tune.ExperimentAnalysis(str(path)).dataframe(metric="score", mode="max")
    assert len(frame) == 4 and (frame["step"] == STEPS).all()
