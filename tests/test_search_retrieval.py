"""Retrieval studies: the task picks the objective (validation mAP), the outcome carries the
retrieval finals through Tune's report, and a study keeps datasets of one task."""

from __future__ import annotations

import math

import pytest

from dm_tune._validate import ConfigError
from dm_tune.search._searcher import top_arms
from dm_tune.search._study import Study
from dm_tune.search._trial import OBJECTIVES, TrialOutcome, TrialSpec


def _search(number: int, val_acc: float, val_map: float) -> tuple[TrialSpec, TrialOutcome]:
    spec = TrialSpec("s", "search", 0, {"method": "dm", "lam": float(number), "beta": 8.0}, number=number)
    return spec, TrialOutcome("finished", 10, final_val_acc=val_acc,
                              task_metrics={"final_val_map": val_map, "final_test_map": val_map / 2})


def test_retrieval_outcome_round_trips_through_the_report():
    outcome = _search(0, math.nan, 0.4)[1]
    back = TrialOutcome.from_report(outcome.to_report(), errored=False)
    assert back.task_metrics == outcome.task_metrics and back.value("final_val_map") == 0.4
    assert TrialOutcome.from_dict(outcome.to_dict()) == outcome
    assert back.usable_for("final_val_map") and not back.usable  # no accuracy: not usable for classification
    ranks = {"val_rank1": 0.3, "test_rank1": 0.15, "test_rank5": 0.4, "test_rank10": 0.5}
    cut = TrialOutcome.from_report({"epoch": 3, "val_map": 0.2, "test_map": 0.1, **ranks}, errored=False)
    assert cut.status == "early-stopped" and cut.value("final_val_map") == 0.2
    # (a trial ASHA stopped kept its mAPs and lost its CMC: "rank-1 nan", no final_test_rank* in MLflow)
    assert {k: cut.value(f"final_{k}") for k in ranks} == ranks


def test_top_arms_rank_by_the_task_objective():
    ended = [_search(0, 0.9, 0.1), _search(1, 0.5, 0.6), _search(2, 0.7, 0.3)]
    by_acc = top_arms(ended, 2)
    by_map = top_arms(ended, 2, OBJECTIVES["retrieval"].final)
    assert [o["lam"] for _, o in by_acc] == [0.0, 2.0]
    assert [o["lam"] for _, o in by_map] == [1.0, 2.0]


def test_study_task_follows_its_datasets():
    assert Study.from_dict({"settings": {"dataset": ["reid-synth"]}}).task == "retrieval"
    assert Study.from_dict({}).task == "classification"
    with pytest.raises(ConfigError, match="settings.dataset: 'digits'.*retrieval"):
        Study.from_dict({"task": "retrieval", "settings": {"dataset": ["reid-synth", "digits"]}})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_retrieval_search_end_to_end(tmp_path, ray_local, monkeypatch):
    """A tiny reid-synth study on real Ray, Optuna and MLflow: Optuna is told validation mAP,
    MLflow holds the per-epoch mAP/CMC and the finals, the report's guidelines say mAP."""
    import optuna
    from mlflow.tracking import MlflowClient

    from dm_tune.reports import build_guidelines
    from dm_tune.reports._load import load_runs
    from dm_tune.search._run import RunOptions, run_study
    from tests.conftest import tiny_study

    monkeypatch.chdir(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    study = Study.from_dict(tiny_study("reid", settings={"dataset": ["reid-synth"], "noise_rate": [0.3]},
                                       search={"num_samples": 2, "top_k": 1}, seeds=[0], baselines=["cce"],
                                       training={"epochs": 2}, population_size=1))
    assert study.task == "retrieval"
    (summary,) = run_study(study, RunOptions(workspace=ws, echo=False))
    assert all(0.0 < v < 1.0 for a in summary.arms for v in a.test_acc)  # test mAP, per seed

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("reid")
    trials = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("dmtune.role") == "trial"]
    assert len(trials) == 2 + 2  # 2 searched, the top arm and CCE on seed 0
    for r in trials:
        m = r.data.metrics
        for key in ("final_val_map", "final_test_map", "final_test_rank1", "final_test_rank5", "final_test_rank10"):
            assert 0.0 <= m[key] <= 1.0
        history = sorted(client.get_metric_history(r.info.run_id, "val_map"), key=lambda h: h.step)
        assert [h.step for h in history] == [1, 2] and history[-1].value == pytest.approx(m["final_val_map"])
        assert len(client.get_metric_history(r.info.run_id, "test_rank10")) == 2

    storage = optuna.storages.RDBStorage(f"sqlite:///{ws / 'optuna.db'}")
    (s,) = optuna.get_all_study_summaries(storage)
    told = {t.number: t.value for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
            if t.state == optuna.trial.TrialState.COMPLETE}
    logged = {int(r.data.tags["dmtune.trial_key"].rsplit("/", 1)[1]): r.data.metrics["final_val_map"]
              for r in trials if r.data.tags["dmtune.stage"] == "search"}
    assert told == pytest.approx(logged)

    (setting,) = build_guidelines(load_runs(f"sqlite:///{ws / 'mlflow.db'}", ["reid"]))["settings"]
    assert setting["task"] == "retrieval" and "final test mAP" in setting["guideline"]
