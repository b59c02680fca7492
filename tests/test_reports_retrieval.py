"""reports on retrieval runs: mAP and CMC in place of accuracy, and retrieval guidelines kept apart
from classification ones (``recommend --task retrieval``)."""

from __future__ import annotations

import json
import math

import pytest

from dm_tune.cli import main
from dm_tune.errors import UserError
from dm_tune.reports import build_guidelines, default_guidelines_path, recommend, validate_guidelines
from dm_tune.reports._guidelines import dumps, guidelines_markdown
from dm_tune.reports._load import run_to_row, tidy

PARAMS = dict(dataset="reid-synth", noise="symmetric", noise_rate="0.3", imbalance="none", imbalance_ratio="1.0",
              model="mlp", num_classes="120", pretrained="false", epochs="60")


def _run(i: int, seed: int, val_map: float, test_map: float, baseline: str = "", method: str = "dm",
         lam: float = 1.0, beta: float = 16.0, stage: str = "confirm") -> dict:
    params = {**PARAMS, "method": method, "seed": str(seed)}
    if method == "dm":
        params.update(lam=str(lam), beta=str(beta))
    metrics = {"final_val_map": val_map, "final_test_map": test_map, "best_test_map": test_map + 0.01,
               "val_selected_test_map": test_map, "final_test_rank1": test_map + 0.02,
               "final_test_rank5": 0.6, "final_test_rank10": 0.7,
               "final_val_acc": math.nan, "final_test_acc": math.nan}  # what a retrieval trial logs
    tags = {"dmtune.setting": "reid", "dmtune.stage": stage, "dmtune.baseline": baseline,
            "dmtune.status": "finished"}
    row = run_to_row("reid-study", f"r{i}", params, metrics, tags)
    assert row is not None
    return row


def _runs() -> list[dict]:
    rows = [_run(s, s, 0.44 + 0.01 * s, 0.33 + 0.01 * s) for s in range(3)]
    rows += [_run(10 + s, s, 0.36, 0.25 + 0.01 * s, baseline="cce", method="cce") for s in range(3)]
    rows += [_run(20 + i, 0, 0.40 + 0.005 * i, 0.3, lam=0.5 * i, beta=4.0 * i, stage="search") for i in range(4)]
    return rows


def test_retrieval_runs_load_with_map_in_place_of_accuracy():
    df = tidy(_runs())
    assert set(df["task"]) == {"retrieval"}
    first = df.iloc[0]
    assert first["final_test_acc"] == pytest.approx(0.33) and first["final_val_acc"] == pytest.approx(0.44)
    assert first["final_test_rank1"] == pytest.approx(0.35)
    # a run without its final mAPs is incomplete, as one without accuracies is
    assert run_to_row("x", "r", PARAMS, {"final_val_map": 0.4}, {"dmtune.status": "finished"}) is None


def test_a_diverged_retrieval_run_first_keeps_its_setting_retrieval():
    """A diverged retrieval trial's final mAPs are NaN, which MLflow is not given: the run is still
    a retrieval run (its dataset's task), and listed first (MLflow lists the newest first) it must
    not turn its setting into a classification one."""
    params = {**PARAMS, "method": "dm", "seed": "3", "lam": "2.0", "beta": "40.0"}
    logged = {"best_epoch": 1.0, "best_test_map": 0.05, "epochs_reached": 2.0, "noise_rate_realised": 0.3,
              "train_time_s": 1.0, "val_selected_test_map": 0.05}  # what _tracking logs for it
    diverged = run_to_row("reid-study", "d0", params, logged, {"dmtune.setting": "reid", "dmtune.stage": "search",
                                                               "dmtune.status": "diverged"})
    assert diverged is not None and diverged["task"] == "retrieval"
    doc = build_guidelines(tidy([diverged] + _runs()))
    (s,) = doc["settings"]
    assert s["task"] == "retrieval" and "mAP" in s["guideline"]
    assert recommend(doc, num_classes=120, noise_type="symmetric", noise_rate=0.3, task="retrieval").lam == \
        pytest.approx(s["lam"])


def test_retrieval_guidelines_say_map_and_recommend_keeps_tasks_apart():
    doc = build_guidelines(tidy(_runs()))
    assert validate_guidelines(json.loads(dumps(doc))) is None
    (s,) = doc["settings"]
    assert s["task"] == "retrieval"
    assert s["test_acc_mean"] == pytest.approx(34.0)  # DM's mean final test mAP, points
    assert s["test_rank1_mean"] == pytest.approx(36.0)
    assert s["vs_baselines"]["cce"]["mean_diff"] == pytest.approx(8.0)
    assert "final test mAP 34.0" in s["guideline"] and "re-ID retrieval with 120 identities in the training split" in s["guideline"]
    assert "accuracy 34.0" not in guidelines_markdown(doc)
    rec = recommend(doc, num_classes=120, noise_type="symmetric", noise_rate=0.3, task="retrieval")
    assert rec.lam == pytest.approx(s["lam"]) and rec.beta == pytest.approx(s["beta"])
    assert "points of final test mAP over CCE" in rec.evidence and "accuracy" not in rec.evidence  # (said accuracy)
    # a dataset named was ignored without a word here
    named = recommend(doc, num_classes=120, noise_type="symmetric", noise_rate=0.3, task="retrieval", dataset="mars")
    assert any(w.startswith(f"dataset 'mars' was not measured (measured: {s['dataset']})") for w in named.warnings)
    assert not any("dataset" in w for w in recommend(doc, num_classes=120, noise_type="symmetric", noise_rate=0.3,
                                                      task="retrieval", dataset=s["dataset"]).warnings)
    with pytest.raises(UserError, match="no classification settings"):
        recommend(doc, num_classes=120, noise_type="symmetric", noise_rate=0.3)
    # the shipped (classification) guidelines have no retrieval settings
    shipped = json.loads(default_guidelines_path().read_text())
    with pytest.raises(UserError, match="no retrieval settings"):
        recommend(shipped, num_classes=10, noise_type="symmetric", noise_rate=0.3, task="retrieval")


def test_recommend_task_flag(tmp_path, capsys):
    path = tmp_path / "guidelines.json"
    path.write_text(dumps(build_guidelines(tidy(_runs()))))
    assert main(["recommend", "--task", "retrieval", "--num-classes", "120", "--noise-rate", "0.3",
                 "--guidelines", str(path)]) == 0
    assert "120 identities in the training split (retrieval)" in capsys.readouterr().out
    classification = tmp_path / "classification.json"  # not the shipped file: independent of its version
    doc = build_guidelines(tidy(_runs()))
    classification.write_text(dumps({**doc, "settings": [{**s, "task": "classification"} for s in doc["settings"]]}))
    assert main(["recommend", "--num-classes", "10", "--noise-rate", "0.3", "--task", "retrieval",
                 "--guidelines", str(classification)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no retrieval settings" in err
    # a classification query on retrieval-only guidelines: told to ask with --task retrieval
    assert main(["recommend", "--num-classes", "120", "--noise-rate", "0.3", "--guidelines", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.strip().endswith(
        "(they hold retrieval settings only: for retrieval data, ask with --task retrieval)")
