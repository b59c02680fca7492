"""End to end: a small real search (Ray, Optuna, MLflow) -> `dm-tune report` -> `dm-tune recommend`."""

from __future__ import annotations

import json
import re

import pytest

from dm_tune.cli import main
from dm_tune.config import TrainConfig
from dm_tune.data import load_source
from dm_tune.provenance import cpu_model
from dm_tune.search import Study
from dm_tune.search._run import RunOptions, run_study
from tests.conftest import tiny_study

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_report_and_recommend_from_a_real_search(tmp_path, ray_local, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    for rate in (0.2, 0.4):
        study = Study.from_dict(tiny_study(f"e2e{int(rate * 10)}", settings={"noise_rate": [rate]},
                                           search={"num_samples": 4, "top_k": 1}, training={"epochs": 4}))
        run_study(study, RunOptions(workspace=ws, echo=False))

    out = tmp_path / "report"
    assert main(["report", "--workspace", str(ws), "--out", str(out)]) == 0
    for name in ("index.html", "guidelines.md", "guidelines.json"):
        assert (out / name).is_file()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures, "no figures written"

    doc = json.loads((out / "guidelines.json").read_text())
    assert doc["schema_version"] == 2
    assert {m["setting"] for m in doc["surface"]["settings"]} == {s["setting"] for s in doc["settings"]}
    assert len(doc["loso"]["rows"]) == 2  # each setting predicted from the other one
    settings = {(s["dataset"], s["noise"], s["noise_rate"]) for s in doc["settings"]}
    assert settings == {("digits", "symmetric", 0.2), ("digits", "symmetric", 0.4)}
    for s in doc["settings"]:
        assert s["n_seeds"] == 2 and s["lam"] >= 0 and "cce" in s["vs_baselines"]
        assert s["psi"] == pytest.approx(s["lam"] / (1 + s["lam"]))
        # the confirmed arm's seed 0 is its search trial's run, recorded again, not trained again
        assert s["counts"]["reused"] == 1 and s["counts_by_stage"]["confirm"]["reused"] == 1
    # the header counts them apart (it said "N runs", records that trained nothing among them)
    prov = doc["provenance"]
    assert prov["n_reused_runs"] == 2
    assert prov["machines_of_runs"] == [f"{cpu_model()}, 1 torch thread"]  # as the trials' workers recorded it
    digits = load_source(TrainConfig(dataset="digits")).info["fingerprint"]
    assert prov["data_of_runs"] == [f"digits: {digits}"] and prov["settings_on_changed_data"] == {}
    said = f"{prov['n_runs']} runs of e2e2, e2e4 (2 of them confirm-stage records of search runs, not trained again; "
    assert said in (out / "guidelines.md").read_text()
    assert f"- tracking URI: sqlite:///{(ws / 'mlflow.db').resolve()}\n" in (out / "guidelines.md").read_text()

    html = (out / "index.html").read_text()
    assert "<img" in html and "data:image/png;base64," in html and "http://" not in html.split("<body", 1)[1]
    # --figures link: the same figures, linked from figures/ beside the page
    assert main(["report", "--workspace", str(ws), "--out", str(tmp_path / "linked"), "--figures", "link"]) == 0
    linked = (tmp_path / "linked" / "index.html").read_text()
    assert "data:image" not in linked and sorted(re.findall(r"<img src='figures/([^']*)'", linked)) == sorted(
        p.name for p in (tmp_path / "linked" / "figures").glob("*.png")) and len(figures) == linked.count("<img ")

    capsys.readouterr()
    assert main(["recommend", "--num-classes", "10", "--noise-type", "symmetric", "--noise-rate", "0.3",
                 "--guidelines", str(out / "guidelines.json"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert {"lam", "beta", "psi", "rho", "class_weighting", "region", "predicted_gain"} <= set(rec)
    assert rec["region"]["psi"][0] <= rec["psi"] <= rec["region"]["psi"][1]  # the point lies in its region
    assert rec["predicted_gain"]["low"] <= rec["predicted_gain"]["mean"] <= rec["predicted_gain"]["high"]
    assert rec["class_weighting"] == "none"  # nothing else was measured

    # Beyond the measured noise rates: still an answer, with a warning.
    assert main(["recommend", "--num-classes", "10", "--noise-rate", "0.7",
                 "--guidelines", str(out / "guidelines.json"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert any("extrapolat" in w for w in rec["warnings"])
