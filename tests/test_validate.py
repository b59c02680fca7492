"""dm-tune validate: the paired summary on hand-made numbers, the arms, a real run on digits
with a tiny budget, and user mistakes as one line with exit code 2."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from dm_tune.cli import main
from dm_tune.reports._schema import default_guidelines_path
from dm_tune.errors import UserError
from dm_tune.reports._text import SCHEMA_VERSION
from dm_tune.search._study import Study
from dm_tune.validate import arm_overrides, final_accuracies, summarise, to_markdown, validate, validate_study, verdict


# --- the statistics ----------------------------------------------------------------------------


def test_summarise_pairs_the_differences_by_seed():
    rec = {0: 80.0, 1: 82.0, 2: 84.0}
    cce = {0: 70.0, 1: 75.0, 2: 74.0}   # diffs 10, 7, 10: mean 9, std sqrt(3)
    imae = {0: 81.0, 1: 80.0, 2: 85.0}  # diffs -1, 2, -1: mean 0
    out = summarise({"dm-recommended": rec, "cce": cce, "imae": imae})
    assert out["arms"]["dm-recommended"] == {"mean": 82.0, "std": 2.0, "n": 3}
    assert out["arms"]["cce"]["mean"] == pytest.approx(73.0)
    assert out["arms"]["cce"]["std"] == pytest.approx(math.sqrt(7.0))
    vs_cce = out["vs"]["cce"]
    assert vs_cce["mean_diff"] == pytest.approx(9.0)
    assert vs_cce["std"] == pytest.approx(math.sqrt(3.0))  # of the paired differences, not of the arms
    assert vs_cce["n"] == 3 and vs_cce["seeds"] == [0, 1, 2]
    assert vs_cce["verdict"] == "wins"  # 9 > 2 * sqrt(3) / sqrt(3) = 2
    assert out["vs"]["imae"]["mean_diff"] == pytest.approx(0.0)
    assert out["vs"]["imae"]["verdict"] == "within noise"


def test_pairing_removes_the_seed_to_seed_spread():
    # Seeds differ by 20 points, but the recommendation is 1 point better on every one of them.
    rec = {0: 61.0, 1: 81.0, 2: 71.0}
    cce = {0: 60.0, 1: 80.0, 2: 70.0}
    out = summarise({"dm-recommended": rec, "cce": cce, "imae": rec})
    assert out["vs"]["cce"] == {"mean_diff": 1.0, "std": 0.0, "n": 3, "seeds": [0, 1, 2], "verdict": "wins",
                                "did_not_finish": {"dm-recommended": [], "cce": []}}
    assert out["vs"]["imae"]["verdict"] == "within noise"  # identical: 0 is never outside the noise


def test_summarise_pairs_only_seeds_both_arms_have():
    rec = {0: 50.0, 1: 60.0, 2: float("nan")}  # seed 2 diverged
    cce = {0: 55.0, 1: 64.0, 3: 70.0}
    out = summarise({"dm-recommended": rec, "cce": cce, "imae": {}})
    assert out["arms"]["dm-recommended"]["n"] == 2
    assert out["vs"]["cce"]["seeds"] == [0, 1]
    assert out["vs"]["cce"]["mean_diff"] == pytest.approx(-4.5)
    assert out["vs"]["cce"]["std"] == pytest.approx(math.sqrt(0.5))
    assert out["vs"]["cce"]["verdict"] == "within noise"  # -4.5 > -t(0.975, 1) 0.707 / sqrt(2) = -6.35
    assert out["vs"]["imae"]["n"] == 0 and out["vs"]["imae"]["verdict"] == "undetermined"


@pytest.mark.parametrize(("mean", "std", "n", "expected"), [
    (1.59, 1.0, 4, "within noise"),   # bound t(0.975, 3) * 1 / 2 = 1.591: not beyond it
    (1.60, 1.0, 4, "wins"),
    (-1.60, 1.0, 4, "loses"),
    (6.0, 0.707, 2, "within noise"),  # 2 seeds: t(0.975, 1) = 12.7, bound 6.35
    (6.5, 0.707, 2, "wins"),
    (5.0, math.nan, 1, "undetermined"),
    (0.0, 0.0, 3, "within noise"),
])
def test_verdict_rule(mean, std, n, expected):
    assert verdict(mean, std, n) == expected


def test_a_difference_the_same_on_every_seed_is_judged_at_the_test_sets_resolution():
    """Two models one test example apart on both seeds (both at chance, 540 test examples): a
    spread of 0, an interval 0 wide and a certain "loses" for -0.19 points. Accuracies move in
    steps of one example: the spread is taken as at least one."""
    step = 100 / 540
    rec, cce = {2: 100 * 52 / 540, 5: 100 * 54 / 540}, {2: 100 * 53 / 540, 5: 100 * 55 / 540}
    out = summarise(final_accuracies({"dm-recommended": _runs(rec), "cce": _runs(cce), "imae": _runs(cce)}), step)
    c = out["vs"]["cce"]
    assert c["mean_diff"] == pytest.approx(-step) and c["std"] == pytest.approx(0.0, abs=1e-12)
    assert c["verdict"] == "within noise"  # bound 12.7 * 0.185 / sqrt(2) = 1.66 points
    assert verdict(-step, 0.0, 2) == "loses"  # (the bare interval's answer)
    far = {s: v + 10.0 for s, v in cce.items()}  # 10 points on every seed: still beyond it
    assert summarise(final_accuracies({"dm-recommended": _runs(far), "cce": _runs(cce), "imae": _runs(cce)}),
                     step)["vs"]["cce"]["verdict"] == "wins"


def test_a_weighting_recommendation_is_compared_with_the_baselines_weighted_alike_too():
    """Inverse weighting alone was worth 55 points on a 40:1 long tail: DM "won" by the weighting,
    which cce and imae never had. Where the recommendation weights classes, cce and imae train with
    its weighting too (cce-weighted, imae-weighted), and DM is compared with them as well."""
    plain = arm_overrides(SimpleNamespace(lam=1.5, beta=12.0, class_weighting="none"))
    assert list(plain) == ["dm-recommended", "cce", "imae"]  # nothing weighted: no more arms
    arms = arm_overrides(SimpleNamespace(lam=1, beta=2, class_weighting="effective-number"))
    assert arms["cce-weighted"] == {"method": "cce", "class_weighting": "effective-number"}
    assert arms["imae-weighted"] == {"method": "dm", "lam": 1.0, "beta": 8.0, "class_weighting": "effective-number"}
    rec, cce = {0: 77.67, 1: 76.67}, {0: 22.0, 1: 21.67}
    out = summarise({"dm-recommended": rec, "cce": cce, "imae": cce, "cce-weighted": {0: 77.67, 1: 76.33},
                     "imae-weighted": {0: 70.0, 1: 71.0}}, 100 / 300)
    assert out["vs"]["cce"]["verdict"] == "wins"  # the weighting's gain, and DM's
    assert out["vs"]["cce-weighted"]["mean_diff"] == pytest.approx(0.17)
    assert out["vs"]["cce-weighted"]["verdict"] == "within noise"  # DM's own: nothing
    assert out["vs"]["cce-weighted"]["did_not_finish"] == {"dm-recommended": [], "cce-weighted": []}
    assert out["vs"]["imae-weighted"]["mean_diff"] == pytest.approx(6.67)
    assert "cce-weighted" not in summarise({"dm-recommended": rec, "cce": cce, "imae": cce})["vs"]


def _runs(acc_by_seed):
    return {"runs": [{"seed": s, "test_acc": a, "status": "finished", "val_acc": a} for s, a in acc_by_seed.items()]}


def test_each_arm_trains_with_its_own_class_weighting_whatever_the_config_says():
    """The recommendation's class weighting, "none" included, and unweighted baselines: a
    `class_weighting` in the config's training no longer leaks into every arm (a recommended
    "none" was trained with the config's inverse weighting, and CCE and IMAE with it)."""
    from dm_tune.config import TrainConfig

    plain = arm_overrides(SimpleNamespace(lam=1.5, beta=12.0))
    assert plain == {"dm-recommended": {"method": "dm", "lam": 1.5, "beta": 12.0, "class_weighting": "none"},
                     "cce": {"method": "cce", "class_weighting": "none"},
                     "imae": {"method": "dm", "lam": 1.0, "beta": 8.0, "class_weighting": "none"}}
    weighted = arm_overrides(SimpleNamespace(lam=1, beta=2, class_weighting="sqrt-inverse"))
    assert weighted["dm-recommended"]["class_weighting"] == "sqrt-inverse"
    assert weighted["cce"]["class_weighting"] == weighted["imae"]["class_weighting"] == "none"
    training = {"dataset": "digits", "class_weighting": "inverse"}  # the config's
    trained = {arm: TrainConfig.from_dict({**training, **o}).class_weighting for arm, o in plain.items()}
    assert trained == {"dm-recommended": "none", "cce": "none", "imae": "none"}


def test_a_config_class_weighting_is_said_to_be_ignored_and_kept_for_resuming(capsys):
    """No arm trains with a config's training.class_weighting: said, not silent; the field stays in
    the study (a validation begun with it resumes: its settings' identities hold it)."""
    study = Study.from_dict(validate_study({"training": {"class_weighting": "inverse"}}))
    assert study.training["class_weighting"] == "inverse"
    assert "training.class_weighting 'inverse' is ignored: validate trains each arm with its own" in \
        capsys.readouterr().err


# --- the command -------------------------------------------------------------------------------


@pytest.fixture
def guidelines(tmp_path: Path) -> str:
    """The shipped guidelines' settings under the schema version of this checkout (the test does
    not depend on whether the shipped file has been regenerated yet)."""
    doc = json.loads(default_guidelines_path().read_text())
    path = tmp_path / "guidelines.json"
    path.write_text(json.dumps({**doc, "schema_version": SCHEMA_VERSION}))
    return str(path)


def write_config(tmp_path: Path, **overrides) -> Path:
    config = {"settings": {"dataset": ["digits"], "noise": ["symmetric"], "noise_rate": [0.3]},
              "seeds": [0, 1], "training": {"epochs": 2, "device": "cpu"}, **overrides}
    path = tmp_path / "validate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_validate_trains_every_arm_on_every_seed(tmp_path, capsys, guidelines):
    out = tmp_path / "out"
    assert main(["validate", "--config", str(write_config(tmp_path)), "--guidelines", guidelines,
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "digits-symmetric0.3-default" in printed and "rec − cce" in printed
    doc = json.loads((out / "validation.json").read_text())
    assert doc["arms"] == ["dm-recommended", "cce", "imae"] and doc["seeds"] == [0, 1]
    (setting,) = doc["settings"]
    assert setting["recommendation"]["class_weighting"] == "none"
    assert list(setting["arms"]) == doc["arms"] and list(setting["summary"]["vs"]) == ["cce", "imae"]
    assert list(doc["summary"]) == ["cce", "imae"] and "weighted" not in printed
    assert setting["setting"] == "digits-symmetric0.3-default" and setting["num_classes"] == 10
    rec = setting["recommendation"]
    assert {"lam", "beta", "psi", "rho", "evidence"} <= rec.keys()
    assert setting["arms"]["dm-recommended"]["config"]["lam"] == pytest.approx(rec["lam"])
    assert setting["arms"]["cce"]["config"] == {"method": "cce", "class_weighting": "none"}
    for arm in doc["arms"]:
        runs = setting["arms"][arm]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        assert all(0.0 <= r["test_acc"] <= 100.0 for r in runs)  # percentage points
    acc = {arm: {r["seed"]: r["test_acc"] for r in setting["arms"][arm]["runs"]} for arm in doc["arms"]}
    diffs = [acc["dm-recommended"][s] - acc["cce"][s] for s in (0, 1)]
    assert setting["summary"]["vs"]["cce"]["mean_diff"] == pytest.approx(sum(diffs) / 2)
    assert setting["summary"]["vs"]["cce"]["std"] == pytest.approx(abs(diffs[0] - diffs[1]) / math.sqrt(2))
    assert doc["provenance"]["git_commit"]
    md = (out / "validation.md").read_text()
    assert md.startswith("## Validation of the recommendations")
    assert "| setting | recommended | dm-recommended | cce | imae |" in md
    assert "| digits-symmetric0.3-default |" in md


def test_seeds_and_epochs_flags_override_the_config(tmp_path, guidelines):
    out = tmp_path / "out"
    assert main(["validate", "--config", str(write_config(tmp_path)), "--guidelines", guidelines,
                 "--out", str(out), "--quiet", "--seeds", "3", "--epochs", "1"]) == 0
    doc = json.loads((out / "validation.json").read_text())
    (setting,) = doc["settings"]
    assert doc["seeds"] == [3]
    assert "Trained: model mlp, 1 epochs." in (out / "validation.md").read_text()  # the budget is said
    assert [r["seed"] for r in setting["arms"]["imae"]["runs"]] == [3]
    assert setting["summary"]["vs"]["cce"]["verdict"] == "undetermined"  # one seed: no spread


def test_validate_trains_small_in_memory_models_on_one_thread_as_train_does_unless_told(tmp_path, guidelines,
                                                                                      monkeypatch):
    """validate trained with torch's default threads where train takes one for in-memory vector
    and signal data: beside other work, its second thread waited for a core (the README's
    validate was cut off after 9 minutes on a busy machine; what it had left took 2 on one thread).
    --threads as train's."""
    import torch

    from dm_tune import population

    trained_with = []

    def train_population(*args, **kwargs):
        trained_with.append(torch.get_num_threads())
        return real(*args, **kwargs)

    real, kept = population.train_population, torch.get_num_threads()
    monkeypatch.setattr(population, "train_population", train_population)
    try:
        for args, expected in (([], 1), (["--threads", "2"], 2)):
            torch.set_num_threads(3)
            trained_with.clear()
            assert main(["validate", "--config", str(write_config(tmp_path)), "--guidelines", guidelines,
                         "--out", str(tmp_path / f"out{expected}"), "--quiet", "--seeds", "3", "--epochs", "1",
                         *args]) == 0
            assert trained_with and set(trained_with) == {expected}
            assert torch.get_num_threads() == 3  # the caller's, put back
    finally:
        torch.set_num_threads(kept)


def test_validate_says_how_training_goes_now_and_then(tmp_path, capsys, guidelines):
    """validate printed nothing between a group's "training 6 member(s)" and its end (minutes, on a
    setting of 60 epochs): now the group's first epoch, its last, and one line at most every
    PROGRESS_EVERY_S seconds between (digits' epochs take well under a second: none here)."""
    assert main(["validate", "--config", str(write_config(tmp_path)), "--guidelines", guidelines,
                 "--out", str(tmp_path / "out"), "--seeds", "0,1", "--epochs", "4"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("    epoch")]
    assert [ln.split()[1] for ln in lines] == ["1/4", "4/4"], lines
    assert all(" 6/6 members  test " in ln for ln in lines)


def test_validation_json_is_standard_json_and_reads_back(tmp_path, capsys, guidelines):
    """One seed leaves every std NaN, which validation.json wrote as a bare NaN token: not JSON
    (``jq`` and a browser's JSON.parse refuse it). It is null now, and the file renders as before,
    read back by the same validation (finished earlier) and by a report's --validation."""
    out = tmp_path / "out"
    argv = ["validate", "--config", str(write_config(tmp_path)), "--guidelines", guidelines, "--out", str(out),
            "--quiet", "--seeds", "3", "--epochs", "1"]
    assert main(argv) == 0
    table = capsys.readouterr().out.split("validation.json:")[0]

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    doc = json.loads((out / "validation.json").read_text(), parse_constant=refuse)
    (setting,) = doc["settings"]
    assert setting["summary"]["arms"]["cce"]["std"] is None and setting["summary"]["vs"]["cce"]["std"] is None
    assert to_markdown(doc) == (out / "validation.md").read_text()  # the same table as from the run's own numbers
    # which guidelines it validated (a report's --validation section could be another file's)
    assert f"The recommendations of the guidelines file {Path(guidelines).resolve()} (" in to_markdown(doc)
    # a name's tag and | are an entity and \| (raw HTML in guidelines.md; a row split in two)
    odd = {**doc, "settings": [{**setting, "setting": "a<b> & c|d &amp; e < f"}]}
    assert "| a&lt;b> & c\\|d &amp;amp; e < f | " in to_markdown(odd)
    assert main(argv) == 0  # the same validation again: its table, read from the file
    assert capsys.readouterr().out.startswith(table)


def test_each_config_file_trains_on_its_own_seeds(tmp_path, guidelines):
    """Two --config files, seeds [0] and [5]: each setting on its file's seeds (the first file's
    were used for all); --seeds still overrides both."""
    first = write_config(tmp_path, seeds=[0], training={"epochs": 1, "device": "cpu"})
    second = first.with_name("second.yaml")
    second.write_text(yaml.safe_dump({"settings": {"dataset": ["digits"], "noise": ["pair"], "noise_rate": [0.2]},
                                      "seeds": [5], "training": {"epochs": 1, "device": "cpu"}}))
    out = tmp_path / "out"
    assert main(["validate", "--config", str(first), "--config", str(second), "--guidelines", guidelines,
                 "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "validation.json").read_text())
    assert {s["setting"]: s["seeds"] for s in doc["settings"]} == {"digits-symmetric0.3-default": [0],
                                                                  "digits-pair0.2-default": [5]}
    assert [r["seed"] for r in doc["settings"][1]["arms"]["cce"]["runs"]] == [5] and doc["seeds"] == [0, 5]
    assert "each setting's seeds (digits-symmetric0.3-default: 0; digits-pair0.2-default: 5)" in (
        out / "validation.md").read_text()
    # an entry from an older progress file has no "seeds": its runs say which
    old = {**doc, "settings": [{k: v for k, v in doc["settings"][0].items() if k != "seeds"}, doc["settings"][1]]}
    assert "each setting's seeds (digits-symmetric0.3-default: 0; digits-pair0.2-default: 5)" in to_markdown(old)


def test_noise_from_a_file_is_recommended_for_at_the_rate_its_labels_have(tmp_path, guidelines, monkeypatch):
    """A label-file setting has rate 0 in its config (the file sets it): the recommendation is asked
    for the rate the labels have, not for clean data."""
    import numpy as np

    import dm_tune.reports._recommend as recommend_module
    from dm_tune.datasets import DATASETS

    labels = DATASETS["digits"][0](None, {}, False).train.labels.numpy().copy()
    flip = np.random.default_rng(0).random(len(labels)) < 0.3
    labels[flip] = (labels[flip] + 1) % 10
    np.save(tmp_path / "labels.npy", labels)
    asked, real = [], recommend_module.recommend
    monkeypatch.setattr(recommend_module, "recommend", lambda *a, **k: asked.append(k) or real(*a, **k))
    config = write_config(tmp_path, settings={"dataset": ["digits"], "noise": ["file"]},
                          training={"epochs": 1, "device": "cpu", "noise_file": str(tmp_path / "labels.npy")})
    assert main(["validate", "--config", str(config), "--guidelines", guidelines, "--out", str(tmp_path / "out"),
                 "--quiet", "--seeds", "0"]) == 0
    assert len(asked) == 2  # before any setting trains, then as it trains
    for k in asked:
        assert k["noise_type"] == "file" and k["noise_rate"] == pytest.approx(0.3, abs=0.05)
    # validation.json records what the guidelines were asked (the label file's rate is in no config); the table says it
    doc = json.loads((tmp_path / "out" / "validation.json").read_text())
    (entry,) = doc["settings"]
    assert entry["asked"] == {**asked[-1], "dataset": "digits"} and entry["asked"]["noise_rate"] > 0.25
    md = (tmp_path / "out" / "validation.md").read_text()
    assert f"(for the label file's measured noise rate {entry['asked']['noise_rate']:.3g})" in md


def test_the_recommended_class_weighting_is_trained(tmp_path, guidelines, monkeypatch):
    import dm_tune.reports._recommend as recommend_module

    real = recommend_module.recommend

    def weighted(*args, **kwargs):
        rec = real(*args, **kwargs)
        fields = {**rec.to_dict(), "class_weighting": "sqrt-inverse"}
        return SimpleNamespace(**fields, to_dict=lambda: fields)

    monkeypatch.setattr(recommend_module, "recommend", weighted)
    out = tmp_path / "out"
    assert main(["validate", "--config", str(write_config(tmp_path)), "--guidelines", guidelines,
                 "--out", str(out), "--quiet", "--seeds", "0", "--epochs", "1"]) == 0
    arms = json.loads((out / "validation.json").read_text())["settings"][0]["arms"]
    assert arms["dm-recommended"]["train_config"]["class_weighting"] == "sqrt-inverse"
    assert arms["cce"]["train_config"]["class_weighting"] == "none"
    assert arms["imae"]["train_config"]["class_weighting"] == "none"
    assert "sqrt-inverse" in (out / "validation.md").read_text()


def _weighting_recommended(monkeypatch, weighting="sqrt-inverse"):
    import dm_tune.reports._recommend as recommend_module

    real = recommend_module.recommend

    def weighted(*args, **kwargs):
        rec = real(*args, **kwargs)
        fields = {**rec.to_dict(), "class_weighting": weighting}
        return SimpleNamespace(**fields, to_dict=lambda: fields)

    monkeypatch.setattr(recommend_module, "recommend", weighted)


def test_a_recommended_class_weighting_trains_the_baselines_with_it_too(tmp_path, capsys, guidelines, monkeypatch):
    """DM with a class weighting against unweighted baselines measures the weighting as much as DM:
    cce-weighted and imae-weighted train with the recommended one, paired, and DM is compared with them."""
    _weighting_recommended(monkeypatch)
    out = tmp_path / "out"
    assert main(["validate", "--config", str(write_config(tmp_path)), "--guidelines", guidelines,
                 "--out", str(out), "--quiet", "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "validation.json").read_text())
    assert doc["arms"] == ["dm-recommended", "cce", "imae", "cce-weighted", "imae-weighted"]
    (setting,) = doc["settings"]
    arms = setting["arms"]
    assert arms["cce-weighted"]["config"] == {"method": "cce", "class_weighting": "sqrt-inverse"}
    assert arms["imae-weighted"]["config"] == {"method": "dm", "lam": 1.0, "beta": 8.0,
                                               "class_weighting": "sqrt-inverse"}
    for arm, (method, weighting) in {"cce": ("cce", "none"), "imae": ("dm", "none"),
                                     "cce-weighted": ("cce", "sqrt-inverse"),
                                     "imae-weighted": ("dm", "sqrt-inverse")}.items():
        trained = arms[arm]["train_config"]
        assert (trained["method"], trained["class_weighting"]) == (method, weighting)
        assert trained == {**arms[arm.split("-")[0]]["train_config"], "class_weighting": weighting}  # only that
        assert [r["seed"] for r in arms[arm]["runs"]] == [0, 1]
    acc = {arm: {r["seed"]: r["test_acc"] for r in a["runs"]} for arm, a in arms.items()}
    for base in ("cce", "imae", "cce-weighted", "imae-weighted"):  # paired by seed, each against its own arm
        diffs = [acc["dm-recommended"][s] - acc[base][s] for s in (0, 1)]
        assert setting["summary"]["vs"][base]["mean_diff"] == pytest.approx(sum(diffs) / 2)
    assert doc["summary"]["cce-weighted"]["not compared"] == 0 and sum(doc["summary"]["cce-weighted"].values()) == 1
    md = (out / "validation.md").read_text()
    assert ("| setting | recommended | dm-recommended | cce | imae | cce-weighted | imae-weighted | rec − cce | "
            "rec − imae | rec − cce-weighted | rec − imae-weighted |") in md
    assert "what DM adds beyond the class weighting" in md
    assert "rec − cce-weighted (the recommended class weighting; the 1 setting(s) that weight classes): " in md
    assert "rec − cce (unweighted; all 1 setting(s)): " in md
    assert "rec − cce-weighted" in printed and "rec − imae-weighted (the recommended class weighting" in printed
    # an unweighted setting beside it: its weighted cells say there is nothing to compare
    plain = {**setting, "setting": "plain", "recommendation": {**setting["recommendation"], "class_weighting": "none"},
             "arms": {a: arms[a] for a in ("dm-recommended", "cce", "imae")},
             "summary": {**setting["summary"], "vs": {b: setting["summary"]["vs"][b] for b in ("cce", "imae")}}}
    row = next(line for line in to_markdown({**doc, "settings": [setting, plain]}).splitlines()
               if line.startswith("| plain |"))
    cells = row.strip("|").split(" | ")
    assert cells[5:7] == ["—", "—"] and cells[-2:] == ["—", "— "] and "(within noise)" in cells[7] + cells[-3]
    assert "the 1 setting(s) that weight classes" in to_markdown({**doc, "settings": [setting, plain]})


def test_a_validation_finished_before_the_weighted_baselines_resumes_with_them(tmp_path, capsys, guidelines,
                                                                              monkeypatch):
    """A validation.json or progress line of an older dm-tune, whose weighted setting has no
    cce-weighted and imae-weighted: read and rendered as it is, and on resuming only those arms train
    (its own arms kept as they were), paired on its seeds."""
    from dm_tune.validate import PROGRESS_FILE

    _weighting_recommended(monkeypatch, "inverse")
    out = tmp_path / "out"
    argv = ["validate", "--config", str(write_config(tmp_path)), "--guidelines", guidelines, "--out", str(out),
            "--epochs", "1", "--seeds", "0,1"]
    assert main([*argv, "--quiet"]) == 0
    new = json.loads((out / "validation.json").read_text())
    (setting,) = new["settings"]
    old_arms = {a: setting["arms"][a] for a in ("dm-recommended", "cce", "imae")}
    old_arms["dm-recommended"]["runs"][0]["test_acc"] = 12.5  # marked: kept, not trained again
    old = {**setting, "arms": old_arms, "trained_by": {"dm_tune": "0.0.9", "git_commit": "abc123"},
           "summary": {**setting["summary"], "vs": {b: setting["summary"]["vs"][b] for b in ("cce", "imae")}}}
    old_doc = {**new, "arms": ["dm-recommended", "cce", "imae"], "settings": [old],
               "summary": {b: new["summary"][b] for b in ("cce", "imae")}}
    md = to_markdown(old_doc)  # rendered as it is (a report's --validation): the arms it lacks said so
    assert "| not trained | not trained |" in md and "rec − cce-weighted" in md
    capsys.readouterr()
    for kept in ("validation.json", PROGRESS_FILE):
        (out / "validation.md").unlink()
        if kept == "validation.json":
            (out / "validation.json").write_text(json.dumps(old_doc))
        else:
            (out / "validation.json").unlink()
            (out / PROGRESS_FILE).write_text(json.dumps({"identity": new["identities"][0], "setting": old}) + "\n")
        assert main(argv) == 0
        err = capsys.readouterr().err
        assert ("digits-symmetric0.3-default: finished earlier (validation.progress.jsonl; trained by dm-tune 0.0.9 "
                "at commit abc123, not by this dm-tune); training the arms it lacks: cce-weighted, imae-weighted\n"
                in err), kept
        assert ("finished before validate trained cce and imae with the recommended class weighting: 1 setting(s) "
                "lack them" in err) == (kept == "validation.json")
        doc = json.loads((out / "validation.json").read_text())
        (s,) = doc["settings"]
        assert doc["arms"] == new["arms"] and not (out / PROGRESS_FILE).exists()
        assert {a: s["arms"][a] for a in old_arms} == old_arms  # kept as they were
        assert s["arms"]["cce-weighted"]["train_config"]["class_weighting"] == "inverse"
        assert s["arms"]["imae-weighted"]["train_config"]["class_weighting"] == "inverse"
        assert [r["seed"] for r in s["arms"]["imae-weighted"]["runs"]] == [0, 1]
        rec0 = 12.5 - s["arms"]["cce-weighted"]["runs"][0]["test_acc"]
        rec1 = old_arms["dm-recommended"]["runs"][1]["test_acc"] - s["arms"]["cce-weighted"]["runs"][1]["test_acc"]
        assert s["summary"]["vs"]["cce-weighted"]["mean_diff"] == pytest.approx((rec0 + rec1) / 2)
        assert s["summary"]["vs"]["cce"]["mean_diff"] == pytest.approx(
            (12.5 + old_arms["dm-recommended"]["runs"][1]["test_acc"]
             - sum(r["test_acc"] for r in old_arms["cce"]["runs"])) / 2)
        # trained by the same data as before: the arms the first run trained come out the same
        assert s["arms"]["cce-weighted"]["runs"] == setting["arms"]["cce-weighted"]["runs"]
        md = (out / "validation.md").read_text()
        assert "| not trained |" not in md and "- digits-symmetric0.3-default: dm-tune 0.0.9 at commit abc123; its " \
            "cce-weighted by dm-tune " in md  # which dm-tune trained which arms
    assert main(argv) == 0  # finished, with them: nothing trained
    assert "(this validation, finished earlier: nothing trained)" in capsys.readouterr().out


def test_guidelines_that_never_end_are_one_line(tmp_path):
    """--guidelines /dev/zero (a device or pipe without end) was read until memory ran out: a
    MemoryError traceback under a memory limit, all of the machine's memory without one. Run under
    an address-space limit, so that a regression fails here instead of taking the machine."""
    import resource
    import subprocess

    from tests.conftest import DM_TUNE

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    proc = subprocess.run([DM_TUNE, "validate", "--config", str(write_config(tmp_path)), "--guidelines", "/dev/zero",
                           "--out", str(tmp_path / "o"), "--quiet"], capture_output=True, text=True, timeout=120,
                          preexec_fn=limit)
    assert proc.returncode == 2 and proc.stderr == (
        "dm-tune: error: guidelines file /dev/zero: not a regular file, and more than 16,777,216 bytes came from it; "
        "expected a guidelines JSON file\n"), proc.stderr[-2000:]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("overrides", "args", "field"), [
    ({"settings": {"dataset": ["digits"], "noise_rate": [1.5]}}, [], "settings.noise_rate"),
    ({"training": {"epochs": 0}}, [], "training.epochs"),
    ({"seedz": [0]}, [], "seedz"),
    ({}, ["--seeds", "0,x"], "--seeds"),
    ({}, ["--seeds", "0,1_0"], "--seeds '0,1_0': expected a comma-separated list of integers"),  # (was seed 10)
    ({}, ["--guidelines", "nowhere.json"], "nowhere.json"),
    ({}, ["--seeds=0,-1"], "seed -1 is not allowed"),
    ({}, ["--out", "/proc/validation"], "--out /proc/validation: cannot write in /proc"),  # before training
    ({}, ["--threads", "0"], "--threads: 0 is not allowed; expected an integer in [1, 1024]"),
    # beyond the budget's range: refused as "epochs" after --out was made
    ({}, ["--epochs", "1000000"], "--epochs 1000000: expected an integer in [1, 100000]"),
    # a 10**12-parameter MLP: a traceback from torch's allocator, after --out and its lock were made
    ({"training": {"hidden_dim": 1000000}}, [], "hidden_dim: 1000000 is not allowed; model mlp of that width"),
])
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys, guidelines, overrides, args, field):
    code = main(["validate", "--config", str(write_config(tmp_path, **overrides)), "--guidelines", guidelines,
                 "--out", str(tmp_path / "o"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and field in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["validation.progress.jsonl", ".validate.lock"])
def test_an_out_whose_file_names_are_folders_is_one_line_before_training(tmp_path, capsys, guidelines, name):
    """It was an IsADirectoryError traceback, after the first setting had trained."""
    (tmp_path / "o" / name).mkdir(parents=True)
    code = main(["validate", "--config", str(write_config(tmp_path)), "--guidelines", guidelines,
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{tmp_path / 'o' / name} is not a file" in err


def test_a_setting_listed_twice_is_refused_and_one_trained_two_ways_is_named_apart(tmp_path, capsys, guidelines):
    """The same --config twice trained the setting once but reported and counted it twice; the
    same setting with other training (another budget here, another data root in practice) had two
    rows of one name."""
    config = write_config(tmp_path, training={"epochs": 1, "device": "cpu"}, seeds=[0])
    assert main(["validate", "--config", str(config), "--config", str(config), "--guidelines", guidelines,
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "setting digits-symmetric0.3-default is listed twice" in err
    assert not (tmp_path / "o").exists()
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"name": "longer", **yaml.safe_load(config.read_text()),
                                     "training": {"epochs": 2, "device": "cpu"}}))
    assert main(["validate", "--config", str(config), "--config", str(other), "--guidelines", guidelines,
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    doc = json.loads((tmp_path / "o" / "validation.json").read_text())
    names = [s["setting"] for s in doc["settings"]]
    assert len(set(names)) == 2 and names[1] == "digits-symmetric0.3-default (longer)"
    md = (tmp_path / "o" / "validation.md").read_text()
    assert f"Trained: {names[0]}: model mlp, 1 epochs; {names[1]}: model mlp, 2 epochs." in md
    # Two studies of one name, other seeds: named by their --config's place (both were "... (name)",
    # and validation.md gave one row's seeds for both)
    seeds_1 = tmp_path / "seeds1.yaml"
    seeds_1.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "seeds": [1]}))
    assert main(["validate", "--config", str(config), "--config", str(seeds_1), "--guidelines", guidelines,
                 "--out", str(tmp_path / "o2"), "--quiet"]) == 0
    doc = json.loads((tmp_path / "o2" / "validation.json").read_text())
    name = yaml.safe_load(config.read_text()).get("name", "default")
    assert [s["setting"] for s in doc["settings"]] == [f"digits-symmetric0.3-default (config {i}: {name})"
                                                      for i in (1, 2)]
    md = (tmp_path / "o2" / "validation.md").read_text()
    assert f"(config 1: {name}): 0; digits-symmetric0.3-default (config 2: {name}): 1" in md


def test_settings_that_train_the_same_configuration_are_refused(tmp_path, capsys, guidelines):
    """A second --config that spells out a default (digits' batch size), or pair noise at rate 0
    beside clean data, trained the same configuration twice and counted it twice in the tally."""
    config = write_config(tmp_path, training={"epochs": 1, "device": "cpu"}, seeds=[0])
    spelled = tmp_path / "spelled.yaml"
    spelled.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "name": "spelled",
                                       "training": {"epochs": 1, "device": "cpu", "batch_size": 64}}))  # digits default
    assert main(["validate", "--config", str(config), "--config", str(spelled), "--guidelines", guidelines,
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "settings digits-symmetric0.3-default and digits-symmetric0.3-default (studies 'default' and " \
           "'spelled') train the same configuration on the same seeds" in line
    clean = write_config(tmp_path, settings={"dataset": ["digits"], "noise": ["none"], "noise_rate": [0]},
                         training={"epochs": 1, "device": "cpu"}, seeds=[0])
    pair0 = tmp_path / "pair0.yaml"  # (one study's noise types at rate 0 are one setting: Study.expand)
    pair0.write_text(yaml.safe_dump({**yaml.safe_load(clean.read_text()), "name": "pair0",
                                     "settings": {"dataset": ["digits"], "noise": ["pair"], "noise_rate": [0]}}))
    assert main(["validate", "--config", str(clean), "--config", str(pair0), "--guidelines", guidelines,
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "train the same configuration on the same seeds" in line and "studies 'default' and 'pair0'" in line
    assert not (tmp_path / "o").exists()


def test_training_fields_are_checked_against_the_arms_validate_trains(tmp_path, capsys, guidelines):
    """The search's arms decided: an effective-number beta was refused though the recommendation
    weights by it, and a gce_q taken though validate trains no gce arm."""
    out = tmp_path / "o"
    imbalanced = {"dataset": ["digits"], "noise": ["symmetric"], "noise_rate": [0.2], "imbalance": ["longtail:20"]}
    config = write_config(tmp_path, settings=imbalanced, seeds=[0],
                          training={"epochs": 1, "device": "cpu", "class_weighting_beta": 0.99})
    assert main(["validate", "--config", str(config), "--guidelines", guidelines, "--out", str(out), "--quiet"]) == 0
    (setting,) = json.loads((out / "validation.json").read_text())["settings"]
    assert setting["recommendation"]["class_weighting"] == "effective-number"
    assert setting["arms"]["dm-recommended"]["train_config"]["class_weighting_beta"] == 0.99
    capsys.readouterr()
    for training, said in (({"gce_q": 0.5}, "training.gce_q: 0.5 is not allowed; only applies to the gce baseline"),
                           ({"class_weighting_beta": 0.99}, "training.class_weighting_beta: 0.99 is not allowed; only "
                            "applies to class weighting effective-number, which the guidelines recommend for none")):
        config = write_config(tmp_path, seeds=[0], training={"epochs": 1, "device": "cpu", **training})  # balanced
        assert main(["validate", "--config", str(config), "--guidelines", guidelines, "--out", str(tmp_path / "o2"),
                     "--quiet"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert said in line
        assert not (tmp_path / "o2").exists()


def test_a_study_error_names_its_file_among_several(tmp_path, capsys, guidelines):
    """With two --config files, "foo: 1 is not allowed; unknown field" named neither."""
    good = write_config(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load(good.read_text()), "foo": 1}))
    assert main(["validate", "--config", str(good), "--config", str(bad), "--guidelines", guidelines,
                 "--out", str(tmp_path / "o")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"dm-tune: error: --config {bad}: foo: 1 is not allowed")


def test_a_missing_config_file_is_named(tmp_path, capsys):
    assert main(["validate", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: file not found" in capsys.readouterr().err


# --- a validation stopped hard goes on from where it was ---------------------------------------


@pytest.mark.slow
def test_a_killed_validation_goes_on_from_its_finished_settings(tmp_path, capsys, guidelines):
    import os
    import signal
    import subprocess
    import time

    from dm_tune.validate import PROGRESS_FILE
    from tests.conftest import DM_TUNE

    config = write_config(tmp_path, settings={"dataset": ["digits"], "noise": ["symmetric"],
                                              "noise_rate": [0.2, 0.4]},
                          training={"epochs": 40, "device": "cpu"})
    out = tmp_path / "out"
    progress = out / PROGRESS_FILE
    argv = ["validate", "--config", str(config), "--guidelines", guidelines, "--out", str(out), "--quiet"]
    proc = subprocess.Popen([DM_TUNE, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # (a guard against a hang: 30 CPU-seconds of work)
    while not (progress.is_file() and progress.read_text().endswith("\n")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the first setting never finished"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # while the second setting trains
    proc.wait()
    lines = progress.read_text().splitlines()
    assert len(lines) == 1 and not (out / "validation.json").exists(), proc.stderr.read()
    line = json.loads(lines[0])
    first = line["setting"]
    assert first["setting"] == "digits-symmetric0.2-default" and first["trained_by"]["git_commit"]
    # as if dm-tune had been upgraded since: the setting is kept, and said to be another version's
    first["trained_by"] = {"dm_tune": "0.0.9", "git_commit": "abc123"}
    progress.write_text(json.dumps({**line, "setting": first}) + "\n")
    with progress.open("a") as f:
        f.write('{"identity": "torn')  # and the process died while writing one more line

    assert main(argv[:-1]) == 0  # again, with progress shown
    err = capsys.readouterr().err
    assert f"{progress}: 1 setting(s) of this validation finished in an earlier run (not trained again)\n" in err
    assert ("digits-symmetric0.2-default: finished earlier (validation.progress.jsonl; trained by dm-tune 0.0.9 at "
            "commit abc123, not by this dm-tune)") in err and "digits-symmetric0.4-default:\n" in err
    md = (out / "validation.md").read_text()
    assert "trained by more than one dm-tune" in md
    assert "- digits-symmetric0.2-default: dm-tune 0.0.9 at commit abc123" in md
    # the same file rendered by another dm-tune (a report's --validation) or written by one alone: no such list
    doc = json.loads((out / "validation.json").read_text())
    doc["settings"][0]["trained_by"] = doc["settings"][1]["trained_by"] = {"dm_tune": "0.0.8", "git_commit": "x"}
    assert "more than one dm-tune" not in to_markdown(doc)
    doc = json.loads((out / "validation.json").read_text())
    assert [s["setting"] for s in doc["settings"]] == ["digits-symmetric0.2-default", "digits-symmetric0.4-default"]
    assert doc["settings"][0] == first  # taken as it was, not trained again
    assert not progress.exists()  # all of it is in validation.json

    # the same command again: this validation is there, finished; nothing is trained again
    before = (out / "validation.json").read_bytes()
    assert main(argv) == 0
    assert "(this validation, finished earlier: nothing trained)" in capsys.readouterr().out
    assert (out / "validation.json").read_bytes() == before
    assert main([*argv, "--seeds", "1,0"]) == 0  # its seeds in another order: the same validation
    assert "(this validation, finished earlier: nothing trained)" in capsys.readouterr().out
    assert (out / "validation.json").read_bytes() == before
    # stopped after writing validation.json, before validation.md and the progress file's removal:
    # validation.md had never been written, by any rerun
    md_before = (out / "validation.md").read_bytes()
    (out / "validation.md").unlink()
    (out / ".validation.md.k3j_x9q2").write_text("")  # and its write's temporary file, cut off by the kill
    (out / ".validation.mdx").write_text("kept")  # (not one: left as it is)
    progress.write_text(json.dumps({**line, "setting": first}) + "\n")
    assert main(argv) == 0
    assert f"validation.md: {out / 'validation.md'}" in capsys.readouterr().out
    assert (out / "validation.md").read_bytes() == md_before and not progress.exists()
    assert [p.name for p in out.glob(".validation*")] == [".validation.mdx"]
    # a progress file that cannot be removed at the end (its folder made read-only since; here a folder
    # in its place, which root cannot unlink either): a warning, not a traceback after the results
    from dm_tune.validate import Progress

    ended = Progress(progress)
    progress.unlink()
    (progress / "x").mkdir(parents=True)
    ended.release()
    assert capsys.readouterr().err == (f"dm-tune: warning: {progress}: could not be removed (Is a directory); the "
                                       "results are in validation.json, and a rerun removes it\n")
    shutil.rmtree(progress)
    # other inputs (here the epochs) are another validation: refused, the first one's results kept (it
    # replaced the first validation's validation.json)
    assert main([*argv, "--epochs", "1", "--seeds", "0"]) == 2
    assert "holds the results of another validation (validation.json" in capsys.readouterr().err
    assert (out / "validation.json").read_bytes() == before and not progress.exists()
    # nor is another validation's unfinished progress taken over (its settings shared with this one
    # were removed at this one's end, and trained again by it)
    (out / "validation.json").unlink()
    other = json.dumps({"identity": "x", "setting": first}) + "\n"
    progress.write_text(other)
    assert main([*argv, "--epochs", "1", "--seeds", "0"]) == 2
    assert ("holds 1 finished setting(s) of another validation that has not ended (validation.progress.jsonl, "
            "other inputs)") in capsys.readouterr().err
    assert progress.read_text() == other and not (out / "validation.json").exists()


@pytest.mark.slow
def test_a_second_validation_into_the_same_out_is_refused_while_the_first_runs(tmp_path, guidelines):
    import os
    import signal
    import subprocess
    import time

    from dm_tune.validate import PROGRESS_FILE
    from tests.conftest import DM_TUNE

    config = write_config(tmp_path, training={"epochs": 3, "device": "cpu"},
                          settings={"dataset": ["digits"], "noise": ["symmetric"], "noise_rate": [0.2, 0.4]})
    out = tmp_path / "out"
    argv = [DM_TUNE, "validate", "--config", str(config), "--guidelines", guidelines, "--out", str(out), "--quiet"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / ".validate.lock").is_file() or not (out / ".validate.lock").read_text():
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    # The first one paused while it holds the lock: still writing there however slow or busy the
    # machine (it was given 60 epochs to outlast the second, which took over 300 s on a busy one).
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(f"dm-tune: error: --out {out}: another dm-tune validate is writing there "
                           f"(pid {first.pid} on ")
    out_first, err_first = first.communicate(timeout=300)
    assert first.returncode == 0, err_first
    doc = json.loads((out / "validation.json").read_text())
    assert len(doc["settings"]) == 2 and not (out / PROGRESS_FILE).exists()  # the first one's, whole


def test_a_validation_into_an_out_another_is_writing_is_refused_before_its_checks(tmp_path):
    """Refused at once, with the line the lock gives: not after loading its guidelines and checking
    its settings' data (seconds; here a missing guidelines file would be told instead)."""
    import os
    import subprocess

    from dm_tune._locks import held
    from tests.conftest import DM_TUNE

    config = write_config(tmp_path, training={"epochs": 3, "device": "cpu"})
    out = tmp_path / "out"
    with held(out / ".validate.lock", "{holder}"):  # as another dm-tune validate holds it while it writes
        proc = subprocess.run([DM_TUNE, "validate", "--config", str(config), "--guidelines",
                               str(tmp_path / "missing.json"), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"dm-tune: error: --out {out}: another dm-tune validate is writing there "
                           f"(pid {os.getpid()} on ")
    assert sorted(p.name for p in out.iterdir()) == [".validate.lock"]


def test_a_run_that_did_not_finish_is_no_final_accuracy():
    """A diverged run's accuracy is that of the epoch it diverged in: it was averaged in and paired
    as a final accuracy; now the arm's cell says how many of its seeds finished."""
    from dm_tune.validate import table_rows

    def run(seed, acc, status="finished"):
        return {"seed": seed, "test_acc": acc, "status": status, "val_acc": acc}

    runs = {"dm-recommended": {"runs": [run(0, 80.0), run(1, 9.0, "diverged"), run(2, 82.0)]},
            "cce": {"runs": [run(0, 70.0), run(1, 71.0), run(2, 72.0)]},
            "imae": {"runs": [run(0, 10.0, "diverged"), run(1, 11.0, "diverged"), run(2, 12.0, "diverged")]}}
    summary = summarise(final_accuracies(runs))
    assert summary["arms"]["dm-recommended"] == {"mean": 81.0, "std": pytest.approx(math.sqrt(2)), "n": 2}
    # Its finished seeds beat CCE by 10 points, but it diverged on seed 1, where CCE finished: it loses
    assert summary["vs"]["cce"]["seeds"] == [0, 2] and summary["vs"]["cce"]["mean_diff"] == 10.0
    assert summary["vs"]["cce"]["verdict"] == "loses"
    assert summary["vs"]["cce"]["did_not_finish"] == {"dm-recommended": [1], "cce": []}
    # IMAE diverged on every seed, two of them seeds the recommendation finished: it wins
    assert summary["vs"]["imae"]["n"] == 0 and summary["vs"]["imae"]["verdict"] == "wins"
    assert summary["vs"]["imae"]["did_not_finish"] == {"dm-recommended": [], "imae": [0, 2]}
    cce = {"runs": [run(0, 70.0, "diverged"), run(1, 71.0), run(2, 72.0)]}
    both = summarise(final_accuracies({**runs, "cce": cce}))
    assert both["vs"]["cce"]["verdict"] == "undetermined"  # each failed on a seed the other finished
    doc = {"settings": [{"setting": "s", "recommendation": {"lam": 1.0, "beta": 8.0, "psi": 0.5, "rho": 2.0},
                         "arms": runs, "summary": summary}]}
    row = table_rows(doc)[1]
    assert row[2] == "81.00 ± 1.41 (2 of 3 finished)" and row[3] == "71.00 ± 1.00" and row[4] == "n/a (0 of 3 finished)"
    # a verdict that a run which did not finish decided says so: here beside a mean of +10 that "loses"
    assert row[5] == "+10.00 ± 0.00 (loses: dm-recommended did not finish on seed 1)"
    assert row[6] == "n/a (wins: imae did not finish on seeds 0, 2)"


def test_a_progress_file_that_cannot_be_written_is_refused_before_training(tmp_path, capsys):
    """It had been opened only when the first setting ended: hours of training, then a traceback and
    the setting lost. Now refused at the start; one that fails later (a disk full since) warns and
    keeps the setting for validation.json."""
    from dm_tune.errors import UserError
    from dm_tune.validate import Progress

    path = tmp_path / "validation.progress.jsonl"
    path.symlink_to(tmp_path / "gone" / "progress.jsonl")  # no such folder: opening it fails for anyone
    with pytest.raises(UserError, match=r"validation.progress.jsonl: cannot be read and written \(No such file"):
        Progress(path)
    path.unlink()
    progress = Progress(path)
    assert path.is_file() and not progress.done
    path.unlink()
    path.symlink_to(tmp_path / "gone" / "progress.jsonl")
    progress.add("x", {"setting": "s"})
    assert progress.done == {"x": {"setting": "s"}}
    assert "this setting could not be kept there" in capsys.readouterr().err


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from dm_tune.validate import Progress

path = Path(sys.argv[1])
progress = Progress(path)
def entry(name):  # what validate writes of a setting, at its least
    return {"setting": name, "recommendation": {}, "arms": {}, "summary": {"arms": {}, "vs": {}}}
progress.add("a", entry("a"))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 20, resource.RLIM_INFINITY))
progress.add("b", entry("b"))  # cut short: warned, kept in memory
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space freed
progress.add("c", entry("c"))
"""


def test_a_setting_kept_after_one_a_full_disk_cut_short_starts_its_own_line(tmp_path):
    """The line that failed left part of itself in the file: the next setting's line starts anew
    (it was glued onto the torn one, lost with it, and that setting trained again by a resume)."""
    import subprocess
    import sys

    from dm_tune.validate import Progress

    path = tmp_path / "validation.progress.jsonl"
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "this setting could not be kept there (File too large)" in proc.stderr, proc.stderr
    assert sorted(Progress(path).done) == ["a", "c"]


def test_a_setting_train_refuses_is_refused_before_any_setting_trains(tmp_path, capsys, guidelines):
    """noise_rate [0.5, 0.95] on digits: 0.5 trained (minutes, at real budgets), then 0.95 was refused
    at its turn; an on-disk dataset without a data root named --data-root, a flag validate has not."""
    out = tmp_path / "out"
    config = write_config(tmp_path, settings={"dataset": ["digits"], "noise": ["symmetric"], "noise_rate": [0.5, 0.95]})
    assert main(["validate", "--config", str(config), "--guidelines", guidelines, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("dm-tune: error: settings.noise_rate: 0.95 is not allowed; expected below 0.9")
    assert not out.exists() and "training" not in captured.out
    config = write_config(tmp_path, settings={"dataset": ["digits", "cifar10"], "noise": ["symmetric"],
                                              "noise_rate": [0.5]})
    assert main(["validate", "--config", str(config), "--guidelines", guidelines, "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("dataset 'cifar10' is read from disk; give training.data_root in its --config")
    assert not out.exists()


def test_guidelines_that_cannot_answer_a_setting_are_refused_before_any_setting_trains(tmp_path, capsys):
    """A hand-edited guidelines file whose recommendation for the second setting is refused (its
    class weighting): the first setting trained, then the error, naming neither the flag nor the
    file; a rerun with good guidelines into the same --out was then refused as another
    validation's unfinished progress."""
    doc = json.loads(default_guidelines_path().read_text())
    doc.pop("surface"), doc.pop("loso", None)  # (from the measured settings, which carry the class weighting)
    for s in doc["settings"]:
        s["class_weighting"] = "bogus"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    out = tmp_path / "out"
    config = write_config(tmp_path, settings={"dataset": ["digits"], "noise": ["symmetric"], "noise_rate": [0.2],
                                              "imbalance": ["none", "longtail:20"]}, seeds=[0], training={"epochs": 1})
    assert main(["validate", "--config", str(config), "--guidelines", str(bad), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"dm-tune: error: --guidelines {bad}: setting digits-symmetric0.2-longtail20-default: "
                           "class_weighting: 'bogus' is not allowed")
    assert not out.exists() and "training" not in captured.out
    with pytest.raises(UserError, match="^the guidelines: setting digits-symmetric0.2-longtail20-default: "):
        validate(Study.from_dict(yaml.safe_load(config.read_text())), doc, None)


def test_settings_finished_earlier_are_named_as_this_run_names_them(tmp_path, guidelines):
    """A progress line keeps the label its run gave (e.g. "(config 1: x)" with the configs in another
    order): two rows could then carry one label. Reused, a setting takes this run's."""
    from dm_tune.search._study import Study
    from dm_tune.validate import Progress, validate

    study = Study.from_dict(yaml.safe_load(write_config(tmp_path).read_text()))
    (setting,) = study.expand()
    doc = json.loads(Path(guidelines).read_text())
    identity = Progress.identity(study, setting, [0, 1], {}, doc)
    vs = {base: {"verdict": "wins"} for base in ("cce", "imae")}
    path = tmp_path / "progress.jsonl"
    path.write_text(json.dumps({"identity": identity, "setting": {"setting": "digits-x (config 2: old)",
                                                                  "summary": {"vs": vs}}}) + "\n")
    result = validate(study, doc, None, quiet=True, progress=Progress(path))
    assert [s["setting"] for s in result["settings"]] == [setting.key]


def test_a_damaged_entry_of_this_validation_is_trained_again_or_refused_not_a_traceback(tmp_path, capsys, guidelines):
    """A progress line of the right identity whose setting was 5 (or {}) raised AttributeError (or
    KeyError after training the rest) on every rerun; a validation.json of this validation with a
    setting's summary gone raised KeyError, and one with a setting gone was taken, the setting
    dropped without a word."""
    from dm_tune.validate import PROGRESS_FILE, Progress

    config = write_config(tmp_path, settings={"dataset": ["digits"], "noise": ["symmetric"], "noise_rate": [0.2]},
                          training={"epochs": 1, "device": "cpu"})
    out = tmp_path / "out"
    argv = ["validate", "--config", str(config), "--guidelines", guidelines, "--out", str(out), "--quiet",
            "--seeds", "0"]
    assert main(argv) == 0
    good = json.loads((out / "validation.json").read_text())
    (identity,) = good["identities"]
    for damaged in (5, {}, {**good["settings"][0], "summary": None}):
        (out / PROGRESS_FILE).write_text(json.dumps({"identity": identity, "setting": damaged}) + "\n")
        assert Progress(out / PROGRESS_FILE).done == {}  # as a torn line: trained again
    (out / PROGRESS_FILE).unlink()
    capsys.readouterr()
    for settings, said in (([{k: v for k, v in good["settings"][0].items() if k != "summary"}],
                            "settings[0] lacks what validate writes (its arms, runs or summary)"),
                           ([], "it names 1 settings but holds 0")):
        (out / "validation.json").write_text(json.dumps({**good, "settings": settings}))
        assert main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == (f"dm-tune: error: --out {out}: validation.json is this validation's but damaged ({said}); "
                        "move it away to train it again there, or restore it")
    (out / "validation.json").unlink()
    assert main(argv) == 0  # moved away: trained again
