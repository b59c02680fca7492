"""The end-of-search summary's arithmetic, on hand-made arm results (no training)."""

from __future__ import annotations

import json
import math

import pytest

from dm_tune.search import Study
from dm_tune.search._summary import ArmResult, SettingSummary, markdown, rows, write_summary
from tests.conftest import tiny_study

NAN = float("nan")


def _dm(arm: str, val: list[float], test: list[float], statuses: list[str]) -> ArmResult:
    return ArmResult(arm, "", {"psi": 0.5, "rho": 2.0, "lam": 1.0, "beta": 8.0}, test, val, statuses,
                     list(range(len(test))))


def test_the_best_dm_arm_finished_on_every_seed_as_the_report_chooses():
    """An arm that diverged on one seed is not the best on its other two, however good they were:
    the report would recommend the arm that finished everywhere, and the summary heads with it."""
    lucky = _dm("lucky", [0.95, NAN, 0.95], [0.90, NAN, 0.90], ["finished", "diverged", "finished"])
    steady = _dm("steady", [0.93] * 3, [0.92] * 3, ["finished"] * 3)
    cce = ArmResult("cce", "cce", {}, [0.80, NAN, NAN], [0.81, NAN, NAN], ["finished", "diverged", "errored"],
                    [0, 1, 2])
    summary = SettingSummary("s", [lucky, steady, cce], 2, {"finished": 2}, 1.0)
    assert summary.best_dm() is steady
    first, baseline = rows(summary)
    assert first["val_acc_mean"] == 0.93 and first["test_acc_std"] == 0.0  # three equal seeds: no spread
    assert math.isnan(baseline["test_acc_std"])  # one finished seed: no spread to tell, not 0
    text = markdown([summary], Study.from_dict(tiny_study()), 1.0)
    assert "| cce | 80.0 | +12.0 (1 of 3 seeds) | 1 of 3 (1 diverged, 1 errored) |" in text
    assert "92.0 ± 0.0" in text
    # with no arm finished everywhere, the best of those that finished somewhere
    alone = SettingSummary("s", [lucky, cce], 2, {}, 1.0)
    assert alone.best_dm() is lucky


def test_dm_against_an_arm_is_paired_by_seed_as_the_report_pairs_it():
    """Where a baseline did not finish on a seed, DM minus it was the difference of the two means,
    each over its own seeds (DM's seed 1, a hard one, against none of CCE's): the report and
    validate pair the seeds both finished. The summary pairs them too, and says on how many."""
    dm = _dm("dm", [0.9, 0.8, 0.95], [0.90, 0.80, 0.95], ["finished"] * 3)
    cce = ArmResult("cce", "cce", {}, [0.85, NAN, 0.70], [0.85, NAN, 0.70], ["finished", "diverged", "finished"],
                    [0, 1, 2])
    imae = ArmResult("imae", "imae", {}, [0.70, 0.75, 0.80], [0.7, 0.75, 0.8], ["finished"] * 3, [2, 1, 0])
    summary = SettingSummary("s", [dm, cce, imae], 3, {"finished": 3}, 1.0)
    _, *baselines = rows(summary)
    by_name = {r["baseline"]: r for r in baselines}
    assert by_name["cce"]["dm_minus_arm"] == pytest.approx(((0.90 - 0.85) + (0.95 - 0.70)) / 2)  # not 0.883 - 0.775
    assert by_name["cce"]["dm_minus_arm_n"] == 2
    # pairs by seed, not by position: imae's seeds come in another order
    assert by_name["imae"]["dm_minus_arm"] == pytest.approx(((0.90 - 0.80) + (0.80 - 0.75) + (0.95 - 0.70)) / 3)
    text = markdown([summary], Study.from_dict(tiny_study()), 1.0)
    assert "| cce | 77.5 ± 10.6 | +15.0 (2 of 3 seeds) | 2 of 3 (1 diverged) |" in text
    assert "| imae | 75.0 ± 5.0 | +13.3 | 3 |" in text


def test_a_validation_tie_is_broken_as_the_report_breaks_it():
    """Validation accuracy moves in steps (1/250 on digits): the summary took the arm that ended
    first, the report the one whose label sorts first, and the two named different arms. Both now
    take the smaller std over seeds, then the smaller lambda; the same runs through the report's
    choice give the same arm, in either order."""
    import itertools

    from dm_tune.reports._analysis import best_dm_arm, summarize_arms
    from dm_tune.reports._load import tidy
    from tests.test_reports_analysis import row

    def arm(name: str, lam: float, beta: float, val: list[float]) -> ArmResult:
        return ArmResult(name, "", {"lam": lam, "beta": beta}, [0.9] * len(val), val, ["finished"] * len(val))

    cases = [  # (arms, the one chosen)
        ([arm("a", 2.0, 24.0, [0.936, 0.932]), arm("b", 0.7, 1.5, [0.934, 0.934])], "b"),  # steadier
        ([arm("a", 2.0, 24.0, [0.936, 0.932]), arm("b", 0.7, 1.5, [0.932, 0.936])], "b"),  # smaller lambda
    ]
    for arms, chosen in cases:
        for order in itertools.permutations(arms):
            assert SettingSummary("s", list(order), 0, {}, 1.0).best_dm().arm == chosen
            runs = [row(seed=seed, val=v, lam=a.params["lam"], beta=a.params["beta"])
                    for a in order for seed, v in enumerate(a.val_acc)]
            best, _ = best_dm_arm(summarize_arms(tidy(runs)))
            lam = next(a.params["lam"] for a in arms if a.arm == chosen)
            assert best["lam"] == lam


def test_a_setting_whose_every_dm_arm_was_stopped_says_so():
    """ASHA with two search seeds can stop every arm on one of its seeds: no DM arm is confirmed, and
    the summary showed the baselines alone under a header naming "the DM arm"."""
    cce = ArmResult("cce", "cce", {}, [0.80, 0.82], [0.81, 0.83], ["finished", "finished"], [0, 1])
    summary = SettingSummary("s", [cce], 6, {"early-stopped": 11, "finished": 1}, 1.0)
    text = markdown([summary], Study.from_dict(tiny_study()), 1.0)
    assert "No DM arm was confirmed: none finished on every search seed" in text
    assert text.index("No DM arm") < text.index("| arm |")
    steady = _dm("steady", [0.93] * 3, [0.92] * 3, ["finished"] * 3)
    assert "No DM arm" not in markdown([SettingSummary("s", [steady, cce], 6, {}, 1.0)],
                                       Study.from_dict(tiny_study()), 1.0)


def test_a_row_carries_its_class_weighting():
    """A weighted arm's weighting was only in the free-text arm label of the summary JSON."""
    weighted = ArmResult("dm-cw", "", {"psi": 0.5, "rho": 2.0, "lam": 1.0, "beta": 8.0, "class_weighting": "inverse"},
                         [0.9], [0.9], ["finished"], [0])
    cb = ArmResult("cce-cb", "cce-cb", {"class_weighting": "effective-number"}, [0.8], [0.8], ["finished"], [0])
    cce = ArmResult("cce", "cce", {"class_weighting": "none"}, [0.7], [0.7], ["finished"], [0])
    by_arm = {r["arm"] if not r["baseline"] else r["baseline"]: r["class_weighting"]
              for r in rows(SettingSummary("s", [weighted, cb, cce], 1, {"finished": 1}, 1.0))}
    assert sorted(by_arm.values()) == ["effective-number", "inverse", "none"]
    assert by_arm["cce-cb"] == "effective-number" and by_arm["cce"] == "none"



def test_the_summary_file_names_the_code_and_machine_that_wrote_it(tmp_path):
    """summaries/NAME.json is a result: like every result it names its git commit and package
    versions (it named neither: a table copied from it could not be traced to the code)."""
    steady = _dm("steady", [0.93] * 3, [0.92] * 3, ["finished"] * 3)
    paths = write_summary([SettingSummary("s", [steady], 2, {"finished": 2}, 1.0)],
                          Study.from_dict(tiny_study()), tmp_path, 1.0)
    prov = json.loads(paths["json"].read_text())["provenance"]
    assert prov["git_commit"] and prov["versions"]["dm-tune"] and prov["versions"]["torch"]
    assert {"cpu", "platform"} <= set(prov)
    assert "torch_threads" not in prov  # (the driver's, not the trials': they train with cpus_per_trial)
