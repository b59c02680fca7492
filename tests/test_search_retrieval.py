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
    cut = TrialOutcome.from_report({"epoch": 3, "val_map": 0.2, "test_map": 0.1}, errored=False)
    assert cut.status == "early-stopped" and cut.value("final_val_map") == 0.2


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
