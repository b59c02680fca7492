"""reports: the pure analysis, rules, guidelines, schema and recommend functions on hand-built data."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dm_tune import mode_from_lambda, rho_from_beta
from dm_tune.errors import UserError
from dm_tune.reports import (analyse_setting, analyse_settings, build_guidelines, compare_with_paper,
                     default_guidelines_path, fit_line,
                     lambda_beta_rule, load_guidelines, noise_rate_rules, recommend, status_counts,
                     validate_guidelines)
from dm_tune.reports._guidelines import dumps
from dm_tune.reports._recommend import NO_SURFACE
from dm_tune.reports._text import ANALYSIS_VERSION, SCHEMA_VERSION
from dm_tune.reports._load import tidy

SETTING = dict(dataset="digits", noise="symmetric", noise_rate="0.4", imbalance="none", imbalance_ratio="1.0",
               model="mlp", num_classes="10", pretrained="false", epochs="10")


def row(stage: str = "confirm", seed: int = 0, val: float | None = 0.8, test: float | None = 0.7,
        lam: float | None = 1.0, beta: float | None = 8.0, baseline: str = "", method: str = "dm",
        status: str = "finished", setting: str = "digits/symmetric/0.4", **params: str) -> dict[str, Any]:
    """One trial run as ``load_runs`` sees it: params are strings, as MLflow stores them."""
    dm = method == "dm"
    out: dict[str, Any] = {"run_id": f"r{next(_IDS)}", "experiment": "study", "setting": setting, "stage": stage,
                           "baseline": baseline, "status": status, "method": method, "seed": str(seed),
                           "lam": str(lam) if dm else "", "beta": str(beta) if dm else "",
                           "final_val_acc": math.nan if val is None else val,
                           "final_test_acc": math.nan if test is None else test,
                           "best_test_acc": math.nan if test is None else test + 0.05, "git_commit": "abc123"}
    out.update(SETTING)
    out.update(params)
    return out


_IDS = itertools.count()


def known_runs() -> list[dict[str, Any]]:
    """Confirm arms A (best), B (within 1 point), C (worse); baselines; failed runs; 3 search trials."""
    rows = [row(seed=s, val=v, test=t) for s, v, t in zip(range(3), (0.80, 0.81, 0.82), (0.70, 0.72, 0.74))]
    rows += [row(seed=s, val=v, test=0.71, lam=0.5, beta=6.0) for s, v in zip(range(3), (0.79, 0.80, 0.81))]
    rows += [row(seed=s, val=0.70, test=0.65, lam=2.0, beta=12.0) for s in range(3)]
    rows.append(row(seed=3, val=0.99, test=0.99, lam=2.0, beta=12.0, status="early-stopped"))
    rows.append(row(seed=4, val=None, test=None, lam=2.0, beta=12.0, status="diverged"))
    rows.append(row(seed=5, val=None, test=None, lam=3.0, beta=1.0, status="errored"))
    rows += [row(seed=s, test=t, baseline="cce", method="cce") for s, t in zip(range(3), (0.60, 0.62, 0.64))]
    rows += [row(seed=s, test=t, baseline="gce", method="gce") for s, t in zip((5, 6), (0.66, 0.70))]
    rows += [row(stage="search", val=0.805, lam=0.25, beta=4.0), row(stage="search", val=0.75, lam=3.0, beta=30.0),
             row(stage="search", val=0.995, lam=3.0, beta=30.0, status="early-stopped")]
    return rows


def test_best_config_region_baselines_and_counts() -> None:
    res = analyse_setting(tidy(known_runs()))
    assert res["status"] == "ok" and res["stage"] == "confirm" and res["stage_note"] == ""
    assert (res["lam"], res["beta"]) == (1.0, 8.0)
    assert res["psi"] == pytest.approx(0.5) and res["rho"] == pytest.approx(2.0)
    assert res["val_acc_mean"] == pytest.approx(81.0)
    assert res["test_acc_mean"] == pytest.approx(72.0) and res["test_acc_std"] == pytest.approx(2.0)
    assert res["n_seeds"] == 3 and res["best_test_acc_mean"] == pytest.approx(77.0)
    # Region: A, B (80.0) and the search trial at psi 0.2 (80.5) are within 1 point of 81.0; C and psi .75 are not.
    assert res["psi_range"] == pytest.approx([mode_from_lambda(0.25), 0.5])
    assert res["rho_range"] == pytest.approx([2.0, rho_from_beta(6.0, 0.5)])
    assert res["n_configs"] == 3
    cce, gce = res["vs_baselines"]["cce"], res["vs_baselines"]["gce"]
    assert cce["paired"] and cce["mean_diff"] == pytest.approx(10.0) and cce["std"] == pytest.approx(0.0, abs=1e-9)
    assert cce["n"] == 3 and cce["baseline_mean"] == pytest.approx(62.0) and cce["baseline_std"] == pytest.approx(2.0)
    assert not gce["paired"] and gce["mean_diff"] == pytest.approx(4.0)
    assert (cce["verdict"], gce["verdict"]) == ("wins", "unpaired")
    assert res["epochs"] == 10  # the training budget of the setting's runs (stability compares it)
    assert gce["std"] == pytest.approx(math.sqrt(2.0 ** 2 + 8.0)) and gce["n"] == 2
    # Early-stopped (val 99%) and diverged runs are counted but never chosen.
    assert res["counts"] == {"finished": 16, "diverged": 1, "early_stopped": 2, "errored": 1, "in_progress": 0,
                             "reused": 0}
    assert res["counts_by_stage"]["search"]["early_stopped"] == 1
    assert res["paper_comparison"]["verdict"] == "agree"  # CIFAR-10 schedule at r = 0.4: psi 1/2


def test_one_seed_both_finished_is_paired_on_it_not_set_against_the_other_seeds() -> None:
    """DM finished on seeds 0 and 1, IMAE only on 1 (diverged on 0), CCE only on 0 (errored on 1):
    the difference was DM's mean over both seeds against the baseline's one seed, labelled
    "unpaired" (or with the diverged seed's "wins" beside it). It is now the seed both finished."""
    rows = [row(seed=s, val=0.9, test=t) for s, t in ((0, 0.80), (1, 0.50))]
    rows += [row(seed=1, test=0.45, baseline="imae", method="imae"),
             row(seed=0, val=None, test=None, baseline="imae", method="imae", status="diverged"),
             row(seed=0, test=0.70, baseline="cce", method="cce"),
             row(seed=1, val=None, test=None, baseline="cce", method="cce", status="errored")]
    vs = analyse_setting(tidy(rows))["vs_baselines"]
    imae, cce = vs["imae"], vs["cce"]
    assert imae["paired"] and imae["n"] == 1 and imae["mean_diff"] == pytest.approx(5.0)  # 50 - 45, not 65 - 45
    assert imae["verdict"] == "wins" and imae["did_not_finish"] == {"dm": [], "imae": [0]}  # its diverged seed
    assert cce["paired"] and cce["n"] == 1 and cce["mean_diff"] == pytest.approx(10.0)  # 80 - 70, not 65 - 70
    assert cce["verdict"] == "undetermined" and math.isnan(cce["std"])  # no spread over one seed
    from dm_tune.reports._guidelines import build_guidelines

    (s,) = build_guidelines(tidy(rows), generated="2026-01-01T00:00:00+00:00")["settings"]
    assert "points over CCE over 1 seed (undetermined: one seed)" in s["guideline"]
    unpaired = rows[:2] + [row(seed=s, test=t, baseline="cce", method="cce") for s, t in ((5, 0.6), (6, 0.62))]
    (s,) = build_guidelines(tidy(unpaired), generated="2026-01-01T00:00:00+00:00")["settings"]
    assert "over 2 seeds (unpaired: the two share no seed)" in s["guideline"]


def test_the_plane_figure_marks_a_reused_training_once() -> None:
    """A confirm record of a search run (``reused_from``) is that run's training again: the psi x
    rho figure counted and drew it twice ("finished trials (69)" for 63 trainings)."""
    from dm_tune.reports._figures import plane_figure

    def finished_label(rows: list[dict[str, Any]]) -> str:
        df = tidy(rows)
        fig = plane_figure(analyse_setting(df), df)
        (label,) = [t for t in fig.axes[0].get_legend_handles_labels()[1] if t.startswith("finished trials")]
        return label

    rows = known_runs()
    reused = [row(stage="confirm", seed=3, val=0.805, lam=0.25, beta=4.0, reused_from="digits/search/0")]
    assert finished_label(rows + reused) == finished_label(rows)


def test_the_plane_figure_marks_runs_in_progress_apart_from_failed_ones() -> None:
    """A killed search's runs (running, interrupted) have no outcome yet: the figure drew them as
    "diverged / early-stopped / errored" beside a table that counted 0 of those."""
    from dm_tune.reports._figures import plane_figure

    rows = known_runs()  # (two early-stopped, one diverged and one errored DM run among them)
    pending = [row(seed=5, val=None, test=None, lam=3.0, beta=9.0, status=s) for s in ("running", "interrupted")]
    df = tidy(rows + pending)
    labels = plane_figure(analyse_setting(df), df).axes[0].get_legend_handles_labels()[1]
    assert "diverged / early-stopped / errored (4)" in labels and "still running or interrupted (2)" in labels


def test_search_stage_fallback_is_said() -> None:
    rows = [row(stage="search", val=v, lam=lam, beta=4.0) for v, lam in ((0.7, 0.5), (0.9, 2.0), (0.6, 0.0))]
    res = analyse_setting(tidy(rows))
    assert res["stage"] == "search" and "no confirm-stage" in res["stage_note"] and res["lam"] == 2.0
    assert res["test_acc_std"] is None and res["n_seeds"] == 1


def test_an_arm_that_diverged_on_some_seeds_is_not_chosen_over_one_that_finished_on_all() -> None:
    """B's one surviving seed validates best, but B diverged on two of its three seeds: A, finished on
    all three, is the recommendation. With no complete arm the choice falls back, and says so."""
    rows = [row(seed=s, val=0.90, test=0.80) for s in range(3)]
    rows += [row(seed=0, val=0.95, test=0.90, lam=2.0, beta=24.0)]
    rows += [row(seed=s, val=None, test=None, lam=2.0, beta=24.0, status="diverged") for s in (1, 2)]
    res = analyse_setting(tidy(rows))
    assert (res["lam"], res["beta"], res["n_seeds"]) == (1.0, 8.0, 3) and res["stage_note"] == ""
    partial = analyse_setting(tidy(rows[3:] + [row(seed=0, val=0.90, test=0.80),
                                               row(seed=1, val=None, test=None, status="errored")]))
    assert (partial["lam"], partial["n_seeds"]) == (2.0, 1)
    assert "no confirm-stage DM arm finished on every seed" in partial["stage_note"]
    # and the guideline's sentence says so (only the JSON and the HTML table did)
    from dm_tune.reports._guidelines import setting_sentence

    assert setting_sentence(partial).endswith(f"n=1) [{partial['stage_note']}].")
    assert setting_sentence(res).endswith("n=3).")


def test_an_arm_still_running_on_a_seed_is_not_chosen_over_one_that_finished_on_all() -> None:
    """A report of a killed (or running) search: B's seed 1 is still 'running' (its final metrics
    may even be logged); B's one finished seed validates best, but A finished on both seeds. B was
    taken as complete on one seed and recommended, and a baseline still running counted as a
    failure against DM."""
    from dm_tune.reports._load import run_to_row

    rows = [row(seed=s, val=0.90, test=0.80) for s in range(2)]
    rows += [row(seed=0, val=0.95, test=0.90, lam=2.0, beta=24.0)]
    params = {k: v for k, v in row(seed=1, lam=2.0, beta=24.0).items() if k not in ("final_val_acc", "final_test_acc")}
    tags = {"dmtune.setting": "digits/symmetric/0.4", "dmtune.stage": "confirm"}
    running = run_to_row("study", "r-running", params, {"final_val_acc": 0.99, "final_test_acc": 0.99},
                         {**tags, "dmtune.status": "running"})
    rows += [running]
    rows += [row(seed=s, test=0.60, baseline="cce", method="cce") for s in range(2)]
    cce_running = run_to_row("study", "r-cce", {k: v for k, v in rows[-1].items() if k != "final_test_acc"}, {},
                             {**tags, "dmtune.status": "interrupted", "dmtune.baseline": "cce"}) | {"seed": "2"}
    res = analyse_setting(tidy(rows + [cce_running]))
    assert (res["lam"], res["beta"], res["n_seeds"]) == (1.0, 8.0, 2) and res["stage_note"] == ""
    assert res["counts"]["in_progress"] == 2 and res["counts"]["errored"] == 0
    cce = res["vs_baselines"]["cce"]
    assert (cce["n"], cce["baseline_n"], cce["verdict"]) == (2, 2, "wins")


def test_one_setting_from_two_experiments_is_two_settings_counted_by_seed() -> None:
    """Two studies of one setting are not pooled (that counted each seed twice: n 6 from 3 seeds)."""
    rows = [row(seed=s, val=0.8, test=t) | {"experiment": exp} for exp, t in (("a", 0.70), ("b", 0.90))
            for s in range(3)]
    rows += [row(seed=s, val=0.6, test=0.6, baseline="cce", method="cce") | {"experiment": "a"} for s in range(3)]
    results = {r["setting"]: r for r in analyse_settings(tidy(rows))}
    assert set(results) == {"digits/symmetric/0.4@a", "digits/symmetric/0.4@b"}
    a, b = results["digits/symmetric/0.4@a"], results["digits/symmetric/0.4@b"]
    assert (a["n_seeds"], a["test_acc_mean"], b["n_seeds"], b["test_acc_mean"]) == (3, pytest.approx(70.0), 3,
                                                                                     pytest.approx(90.0))
    assert a["vs_baselines"]["cce"]["n"] == 3 and b["vs_baselines"] == {}
    one = analyse_setting(tidy([row(seed=0, val=0.8, test=0.7), row(seed=0, val=0.8, test=0.7)]))
    assert one["n_seeds"] == 1  # a seed recorded twice is one seed


def test_configurations_that_round_to_one_label_stay_two_arms() -> None:
    """lam 0.7001 / beta 12.61 and lam 0.7004 / beta 12.64 both read dm(lam=0.7,beta=12.6): they
    were one arm of four seeds mixing two configurations."""
    rows = [row(seed=s, val=0.9, test=0.9, lam=0.7001, beta=12.61) for s in range(2)]
    rows += [row(seed=s, val=0.5, test=0.5, lam=0.7004, beta=12.64) for s in range(2)]
    df = tidy(rows)
    assert sorted(set(df["arm"])) == ["dm(lam=0.7001,beta=12.61)", "dm(lam=0.7004,beta=12.64)"]
    res = analyse_setting(df)
    assert (res["arm"], res["n_seeds"], res["test_acc_std"]) == ("dm(lam=0.7001,beta=12.61)", 2, 0.0)
    assert set(tidy([row(lam=0.7001, beta=12.61), row(seed=1, lam=0.7001, beta=12.61)])["arm"]) == {
        "dm(lam=0.7,beta=12.6)"}  # one configuration keeps its short name


def test_noise_from_a_file_is_reported_at_the_rate_its_labels_have() -> None:
    """A label file's rate is what each run measured (noise_rate_realised), not a nominal rate."""
    rows = [row(seed=s, noise="file", noise_rate="0", noise_rate_realised=0.38) for s in range(3)]
    res = analyse_setting(tidy(rows))
    assert res["noise"] == "file" and res["noise_rate"] == pytest.approx(0.38)


def test_no_dm_runs_is_unresolved() -> None:
    res = analyse_setting(tidy([row(baseline="cce", method="cce"), row(status="diverged", val=None, test=None)]))
    assert res["status"] == "no-dm-results" and res["counts"]["diverged"] == 1
    # guidelines.md names it beside the settings with a recommendation (the HTML did; the Markdown
    # had only its row of counts)
    from dm_tune.reports._guidelines import build_guidelines, guidelines_markdown

    rows = known_runs() + [row(baseline="cce", method="cce", setting="digits/symmetric/0.6"),
                           row(status="diverged", val=None, test=None, setting="digits/symmetric/0.6")]
    md = guidelines_markdown(build_guidelines(tidy(rows), generated="2026-01-01T00:00:00+00:00"))
    unresolved = md.split("Settings without a recommendation:", 1)[1].split("## ", 1)[0]
    assert "- digits/symmetric/0.6: " in unresolved
    # and index.html says how its trainings ended, as guidelines.md's counts table does
    from dm_tune.reports._html import render_html

    page = render_html(build_guidelines(tidy(rows), generated="2026-01-01T00:00:00+00:00"), {})
    unresolved = page.split("<h3>Settings without a recommendation</h3>", 1)[1].split("<h2", 1)[0]
    assert "<td>digits/symmetric/0.6</td>" in unresolved
    assert "<td>1 finished, 1 diverged, 0 early-stopped, 0 errored</td>" in unresolved  # (its CCE run, its DM run)


def test_names_from_the_store_cannot_break_the_markdown() -> None:
    """A store not written by dm-tune search may name a setting or dataset anything: a | split
    a table row, a newline ended it, and <script> or <img> went into guidelines.md raw."""
    from dm_tune.reports._guidelines import build_guidelines, guidelines_markdown

    odd = "dig|its <script>x</script>\nnext"
    rows = [{**r, "setting": odd, "dataset": odd, "git_commit": "<img src=x onerror=alert(1)>",
             "dmtune_version": "<1@a.b>"} for r in known_runs()]
    md = guidelines_markdown(build_guidelines(tidy(rows), generated="2026-01-01T00:00:00+00:00"))
    assert "<script>" not in md and "&lt;script>x&lt;/script>" in md
    # the runs' own tags too (a store not written by dm-tune may hold anything there)
    assert "- git commits: &lt;img src=x onerror=alert(1)>" in md and "runs: &lt;1@a.b>;" in md
    for block in md.split("\n\n"):
        table = [line for line in block.splitlines() if line.startswith("|")]
        if table:  # every row of a table has its header's cells (a "\|" is not a separator)
            widths = {len(line.replace("\\|", "").split("|")) for line in table}
            assert len(widths) == 1, table
    assert "dig\\|its" in md
    # the report's own comparisons read as written (in a terminal "&lt; 3" is not "< 3")
    plain = guidelines_markdown(build_guidelines(tidy(known_runs()), generated="2026-01-01T00:00:00+00:00"))
    assert "value(s) < 3" in plain and not re.search("&(lt|gt|amp);", plain)


def grid_search_rows(n_psi: int = 4, n_rho: int = 3) -> list[dict[str, Any]]:
    """Search trials on a psi x rho grid whose validation accuracy depends on psi only."""
    rows = []
    for psi in np.linspace(0.1, 0.7, n_psi):
        lam = psi / (1 - psi)
        for rho in np.linspace(1.0, 5.0, n_rho):
            rows.append(row(stage="search", val=0.5 + 0.4 * psi, lam=lam, beta=rho / rho_from_beta(1.0, lam)))
    return rows


def test_importance_and_sensitivity_single_out_the_mode() -> None:
    res = analyse_setting(tidy(grid_search_rows()))
    imp, sens = res["importance"], res["sensitivity"]
    assert imp["status"] == "ok" and imp["n"] == imp["n_configs"] == 12 and imp["psi"] > 0.9 > imp["rho"]
    assert sens["psi"] == pytest.approx(0.4 * 0.6 * 100) and sens["rho"] == pytest.approx(0.0, abs=1e-9)


def test_importance_needs_enough_trials() -> None:
    res = analyse_setting(tidy(grid_search_rows(n_psi=2, n_rho=3)))
    assert res["importance"]["status"] == "insufficient" and res["importance"]["n"] == 6


def test_importance_and_sensitivity_count_configurations_not_their_seeds() -> None:
    """4 configurations on 2 seeds are 8 trials: fANOVA ran on them as if on 8 points, and with one
    configuration a bin both knobs' sensitivities were the same range of the configurations."""
    rows = []
    for psi, rho in ((0.1, 1.0), (0.3, 3.0), (0.5, 2.0), (0.7, 4.0)):  # accuracy 0.5 + 0.4 psi, whatever rho
        lam = psi / (1 - psi)
        rows += [row(stage="search", seed=seed, val=0.5 + 0.4 * psi, lam=lam, beta=rho / rho_from_beta(1.0, lam))
                 for seed in (0, 1)]
    res = analyse_setting(tidy(rows))
    imp, sens = res["importance"], res["sensitivity"]
    assert (imp["status"], imp["n"], imp["n_configs"]) == ("insufficient", 8, 4)
    assert imp["reason"] == "4 searched configurations < 8 needed"
    assert (sens["n"], sens["n_configs"]) == (8, 4)
    # two bins of two configurations: psi's {0.1, 0.3} against {0.5, 0.7}; rho's mix both psi
    assert sens["psi"] == pytest.approx(0.4 * 0.4 * 100) and sens["rho"] == pytest.approx(0.4 * 0.2 * 100)
    # one configuration on three seeds (search_seeds 3, or an arm's seeds ASHA stopped unevenly): binned
    # by trials it filled a bin alone, and both knobs read the same 16.7 points
    accuracy = {0.1: 0.60, 0.3: 0.90, 0.5: 0.70, 0.7: 0.70}
    rows = []
    for psi, rho, seeds in ((0.1, 1.0, (0, 1, 2)), (0.3, 3.0, (0,)), (0.5, 2.0, (0,)), (0.7, 4.0, (0,))):
        lam = psi / (1 - psi)
        rows += [row(stage="search", seed=seed, val=accuracy[psi], lam=lam, beta=rho / rho_from_beta(1.0, lam))
                 for seed in seeds]
    sens = analyse_setting(tidy(rows))["sensitivity"]
    assert (sens["n"], sens["n_configs"]) == (6, 4)
    assert sens["psi"] == pytest.approx(100 * abs((0.70 + 0.70) / 2 - (0.60 + 0.90) / 2))  # {0.1, 0.3} | {0.5, 0.7}
    assert sens["rho"] == pytest.approx(100 * abs((0.90 + 0.70) / 2 - (0.60 + 0.70) / 2))  # {1, 2} | {3, 4}


def test_importance_weighs_each_configuration_once_however_many_seeds_it_ran() -> None:
    """fANOVA fitted every trial as a point: a configuration on three seeds weighed three times one
    on a single seed. Each configuration is now its seeds' mean, so a configuration's extra seeds
    (here all at its mean) leave the importances as they are."""
    from dm_tune.reports._analysis import param_importance

    rng = np.random.default_rng(0)
    configs = [(float(psi), float(rho)) for psi, rho in zip(rng.uniform(0, 0.7, 12), rng.uniform(0.5, 8, 12))]

    def trials(seeds: dict[int, int]) -> Any:
        rows = []
        for i, (psi, rho) in enumerate(configs):
            lam = psi / (1 - psi)
            acc = 0.5 + 0.4 * psi + 0.01 * math.log(rho)
            rows += [row(stage="search", seed=seed, val=acc, lam=lam, beta=rho / rho_from_beta(1.0, lam))
                     for seed in range(seeds.get(i, 1))]
        return tidy(rows)

    once, thrice = param_importance(trials({})), param_importance(trials({0: 3, 5: 3, 7: 3}))
    assert once["status"] == thrice["status"] == "ok" and (once["n"], thrice["n"]) == (12, 18)
    assert once["n_configs"] == thrice["n_configs"] == 12
    assert (thrice["psi"], thrice["rho"]) == pytest.approx((once["psi"], once["rho"]), abs=1e-12)


def weighted_search_rows(imbalance: str = "step") -> list[dict[str, Any]]:
    """Search trials with class weighting searched too, on a psi x rho grid for each weighting:
    accuracy 0.5 + 0.2 psi, whatever rho; inverse 20 points above none; the confirmed arm inverse's."""
    params = {"imbalance": imbalance, "imbalance_ratio": "10" if imbalance != "none" else "1"}
    rows = []
    for cw, extra in (("none", 0.0), ("inverse", 0.2)):
        for psi in np.linspace(0.1, 0.7, 4):
            lam = psi / (1 - psi)
            for rho in np.linspace(1.0, 5.0, 3):
                rows.append(row(stage="search", val=0.5 + 0.2 * psi + extra, lam=lam, class_weighting=cw,
                                beta=rho / rho_from_beta(1.0, lam), **params))
    rows += [row(seed=s, val=0.84, class_weighting="inverse", **params) for s in range(3)]
    return rows


def test_importance_and_sensitivity_tell_the_class_weighting_from_the_knobs() -> None:
    """Class weighting searched beside psi and rho: fANOVA saw psi and rho alone (the weighting's
    20 points read as noise or as the knobs'), and the sensitivity binned both weightings' trials
    together. Now the weighting is a parameter of the importance; psi's and rho's ranges are over the
    recommended arm's weighting, and the weightings' own range is given apart."""
    res = analyse_setting(tidy(weighted_search_rows()))
    imp, sens = res["importance"], res["sensitivity"]
    assert imp["status"] == "ok" and imp["n_configs"] == 24
    assert imp["class_weighting"] > imp["psi"] > imp["rho"] and imp["rho"] < 0.05
    assert sens["within_class_weighting"] == "inverse" and sens["n_configs"] == 24
    assert sens["psi"] == pytest.approx(0.2 * 0.6 * 100) and sens["rho"] == pytest.approx(0.0, abs=1e-9)
    assert sens["class_weighting"] == pytest.approx(20.0)
    # on balanced data every scheme weighs each class 1: one weighting, the knobs' ranges over all
    balanced = analyse_setting(tidy([r for r in weighted_search_rows("none") if r["class_weighting"] == "none"]
                                    + [{**r, "class_weighting": "inverse"} for r in weighted_search_rows("none")
                                       if r["class_weighting"] == "none" and r["stage"] == "search"][:1]))
    assert balanced["importance"]["class_weighting"] is None and balanced["sensitivity"]["class_weighting"] is None
    assert balanced["sensitivity"]["within_class_weighting"] is None
    from dm_tune.reports._html import _setting_section

    page = _setting_section(0, res, {})
    assert "importance (mode vs spread vs class weighting)" in page
    assert f"class weighting {imp['class_weighting']:.2f} (fANOVA" in page
    assert "(over the configurations of class weighting inverse, the recommended arm" in page
    assert "; between class weightings 20.0 points (range of binned mean" in page
    assert "vs class weighting" not in _setting_section(0, balanced, {})


def test_status_counts_maps_statuses() -> None:
    df = tidy([row(status=s) for s in ("finished", "diverged", "early-stopped", "errored", "errored")])
    assert status_counts(df) == {"finished": 1, "diverged": 1, "early_stopped": 1, "errored": 2, "in_progress": 0,
                                 "reused": 0}
    # a confirm-stage record of a search trial's run is no training of its own: counted apart
    reused = tidy([row(stage="search"), row(reused_from="study/s/search/0"), row(seed=2)])
    assert status_counts(reused) == {"finished": 2, "diverged": 0, "early_stopped": 0, "errored": 0,
                                     "in_progress": 0, "reused": 1}


def setting(rate: float, psi: float, rho: float = 2.0, noise: str = "symmetric", classes: int = 10,
            **extra: Any) -> dict[str, Any]:
    """An analysed setting as it appears in guidelines.json."""
    lam = psi / (1 - psi)
    s = {"setting": f"{noise}-{classes}-{rate}", "dataset": "d", "model": "m", "noise": noise, "noise_rate": rate,
         "num_classes": classes, "imbalance": "none", "imbalance_ratio": 1.0, "pretrained": False, "psi": psi,
         "rho": rho, "lam": lam, "beta": rho / rho_from_beta(1.0, lam), "psi_range": [psi, psi],
         "rho_range": [rho, rho], "n_seeds": 3, "test_acc_mean": 70.0, "test_acc_std": 1.0,
         "vs_baselines": {"cce": {"mean_diff": 5.0, "std": 1.0, "n": 3}}}
    s.update(extra)
    return s


def test_fit_line_known_answer() -> None:
    fit = fit_line([0.0, 0.2, 0.4, 0.6], [0.1, 0.26, 0.42, 0.58])
    assert fit["a"] == pytest.approx(0.1) and fit["b"] == pytest.approx(0.8) and fit["r2"] == pytest.approx(1.0)
    from scipy.stats import linregress

    x, y = [0.0, 0.2, 0.4, 0.6], [0.3, 0.5, 0.35, 0.62]
    assert fit_line(x, y)["p"] == pytest.approx(linregress(x, y).pvalue)


def test_a_best_value_the_same_at_every_rate_or_a_line_through_every_point_is_not_a_slope_of_p_0() -> None:
    """A grid search's few values: the best psi 1/3 at three noise rates was "psi* = 0.333 + 0.000 x
    noise_rate (R^2 1.00, slope p 0.000)", a supported rule, and three grid values on one line were
    p 0 too (the t statistic of a line without residual is infinite). A constant has no slope to
    test (NaN, as scipy's linregress); a line through every point is judged by the exact permutation
    test: 2 of the 3! orderings of three points are as steep, 2 of 4!, of 5!."""
    from scipy.stats import linregress

    flat = fit_line([0.2, 0.4, 0.6], [1 / 3] * 3)
    assert flat["constant"] and math.isnan(flat["p"]) and math.isnan(flat["r2"]) and flat["b"] == 0.0
    assert math.isnan(linregress([0.2, 0.4, 0.6], [1 / 3] * 3).pvalue)
    (psi,) = [r for r in noise_rate_rules([setting(r, 1 / 3, rho=1.0 + r) for r in (0.2, 0.4, 0.6)])
              if r["knob"] == "psi"]
    assert not psi["supported"] and psi["reason"] == "psi* is 0.333 at every noise_rate: no slope to test"
    for n, p in ((3, 1 / 3), (4, 1 / 12), (5, 1 / 60)):
        exact = fit_line([0.2 * i for i in range(n)], [i / 3 for i in range(n)])
        assert exact["r2"] == pytest.approx(1.0) and exact["p"] == pytest.approx(p) and not exact["constant"]
    grid = [setting(r, psi) for r, psi in ((0.2, 0.0), (0.4, 1 / 3), (0.6, 2 / 3))]
    assert not any(r["supported"] for r in noise_rate_rules(grid) if r["knob"] == "psi")
    # past 9 points, 99,999 random orderings from a fixed seed: the same p every time
    ten = [fit_line(list(range(10)), [2.0 * i for i in range(10)])["p"] for _ in range(2)]
    assert ten[0] == ten[1] and ten[0] < 1e-4


def test_a_line_through_four_noisy_points_is_no_rule() -> None:
    """R^2 0.5 was enough: over 4 noise rates that is a slope of p 0.29, a line through noise (the
    shipped campaign's five 'supported' rules had R^2 0.52-0.90 over 4 rates). The slope's p-value
    must be below 0.05 too, and the text gives it."""
    weak = [setting(r, p) for r, p in ((0.0, 0.40), (0.2, 0.55), (0.4, 0.45), (0.6, 0.70))]
    (psi_rule,) = [r for r in noise_rate_rules(weak) if r["knob"] == "psi"]
    assert psi_rule["r2"] >= 0.5 and psi_rule["p"] >= 0.05
    assert not psi_rule["supported"] and "the slope's p 0." in psi_rule["reason"]
    strong = [setting(r, 0.3 + 0.5 * r + e) for r, e in ((0.0, 0.01), (0.2, -0.01), (0.4, 0.01), (0.6, -0.01))]
    (psi_rule,) = [r for r in noise_rate_rules(strong) if r["knob"] == "psi"]
    assert psi_rule["supported"] and psi_rule["p"] < 0.05 and "slope p 0.0" in psi_rule["text"]


def test_a_report_claims_rules_by_holm_adjusted_p_values() -> None:
    """Each slope at p < 0.05 claims one rule in twenty by chance; a report fits a dozen. The report
    judges its rules as one family (Holm): a psi line of p 0.019 holds on one dataset (3 slopes
    tested, the largest p: adjusted by 1) and not on each of four (9 slopes, the four largest p:
    adjusted by 4, 0.078); a far steadier rho line holds in both."""
    from dm_tune.reports._guidelines import _rules_by_task
    from dm_tune.reports._rules import correct_for_multiplicity

    def data(name: str) -> list[dict[str, Any]]:
        return [setting(r, 0.3 + 0.5 * r + e, rho=2.0 + 2.0 * r + e / 30, dataset=name, setting=f"{name}-{r}")
                for r, e in ((0.0, 0.01), (0.2, -0.03), (0.4, 0.03), (0.6, -0.01))]

    one = _rules_by_task(data("a"))["rules"]
    (psi,) = [r for r in one if r["knob"] == "psi" and r["kind"] == "noise_rate"]
    assert psi["p"] == pytest.approx(0.0194, abs=1e-4) and psi["tests"] == 3
    assert psi["supported"] and psi["p_holm"] == pytest.approx(psi["p"]) and "Holm-adjusted over 3" in psi["text"]
    four = _rules_by_task([s for name in "abcd" for s in data(name)])["rules"]
    psis = [r for r in four if r["knob"] == "psi" and r["kind"] == "noise_rate"]
    assert len(psis) == 4 and all(r["p"] < 0.05 and not r["supported"] for r in psis)
    assert all(r["p_holm"] == pytest.approx(4 * r["p"]) for r in psis)
    assert all(r["tests"] == 9 and r["p_holm"] >= 0.05 and "Holm-adjusted over 9 slopes" in r["reason"] for r in psis)
    assert all(r["paper_comparison"].startswith("not tested") for r in psis)
    assert all(r["supported"] for r in four if r["knob"] == "rho")  # rho's lines: p under 0.05 / 9
    # rules of another task are judged in the same family and keep the task in their text
    retrieval = [{**x, "task": "retrieval", "setting": f"r-{x['setting']}"} for x in data("r")]
    mixed = _rules_by_task(data("a") + retrieval)["rules"]
    assert all(r["tests"] == 6 for r in mixed if r["kind"] == "noise_rate")
    assert {r["text"].startswith("[retrieval] ") for r in mixed if r.get("task") == "retrieval"} == {True}
    two = _rules_by_task([x for x in retrieval if x["noise_rate"] in (0.0, 0.2)])["rules"]  # (no p: never Holm's)
    assert two and all(r["text"].startswith("[retrieval] ") and "tests" not in r for r in two)
    assert not any(r["text"].startswith("[") for r in mixed if "task" not in r)
    # a line through two noise rates (three settings) has a p-value but can never be claimed: not one of the family
    two_rates = [setting(r, 0.3 + r + e, dataset="t", setting=f"t-{r}-{e}") for r, e in ((0.2, 0.0), (0.2, 0.01), (0.4, 0.0))]
    judged = _rules_by_task(data("a") + two_rates)["rules"]
    assert [r["distinct_x"] for r in judged if r["group"].get("dataset") == "t"] == [2, 2]
    assert all("tests" not in r and not r["supported"] for r in judged if r["group"].get("dataset") == "t")
    assert {r["tests"] for r in judged if "tests" in r} == {3}
    # one by one (each function alone), every psi line would have been claimed
    assert all(r["supported"] for r in noise_rate_rules(data("a")) + noise_rate_rules(data("b")))
    # adjusted p-values are monotone in the raw ones and never below them
    family = correct_for_multiplicity(noise_rate_rules([s for name in "abcd" for s in data(name)]))
    ordered = sorted(family, key=lambda r: r["p"])
    assert all(r["p_holm"] >= r["p"] for r in ordered)
    assert [r["p_holm"] for r in ordered] == sorted(r["p_holm"] for r in ordered)


def test_noise_rate_rule_supported_and_not() -> None:
    good = ([setting(r, 0.1 + 0.8 * r + e, rho=1.0 + r) for r, e in ((0.2, 0.01), (0.4, -0.01), (0.6, 0.005))]
            + [setting(0.0, 0.1, rho=1.0, noise="none")])
    poor = [setting(r, p, noise="pair") for r, p in ((0.2, 0.5), (0.3, 0.05), (0.4, 0.6), (0.5, 0.1))]
    few = [setting(r, 0.3, classes=100) for r in (0.2, 0.4)]
    rules = {(r["group"]["noise"], r["group"]["num_classes"], r["knob"]): r
             for r in noise_rate_rules(good + poor + few)}
    sym = rules[("symmetric", 10, "psi")]
    assert sym["supported"] and sym["n"] == 4 and sym["b"] == pytest.approx(0.8, abs=0.05) and "R^2 1.00" in sym["text"]
    assert sym["paper_comparison"].startswith("agree: the best mode rises")
    pair = rules[("pair", 10, "psi")]
    assert not pair["supported"] and "R^2" in pair["text"] and "does not support" in pair["text"]
    assert pair["paper_comparison"].startswith("not tested")
    hundred = rules[("symmetric", 100, "psi")]
    assert not hundred["supported"] and "only 2 distinct" in hundred["text"]
    assert not rules[("symmetric", 10, "rho")]["supported"]  # rho = 1 + rate exactly: 2 of 4! orderings as steep
    assert rules[("symmetric", 10, "rho")]["p"] == pytest.approx(1 / 12)
    assert sym["text"].startswith("d, m, symmetric noise, 10 classes: psi* = 0.10")


def test_with_100_classes_a_flat_best_mode_agrees_with_the_paper_and_a_rising_one_refines_it() -> None:
    """The paper: with 100 classes the best values move much less with noise (lambda 0.5 at every
    symmetric rate). A flat supported line there was "refine: ... the paper expects this only with
    many (100) classes", and a steep rise "agree"."""
    rates = (0.0, 0.2, 0.4, 0.6, 0.8)
    wobble = (0.004, -0.003, 0.002, -0.004, 0.001)

    def psi_rule(slope: float, classes: int) -> dict[str, Any]:
        group = [setting(r, 0.3 + slope * r + e, rho=2.0 + 5 * e, classes=classes, noise="symmetric" if r else "none")
                 for r, e in zip(rates, wobble)]
        (rule,) = [r for r in noise_rate_rules(group) if r["knob"] == "psi"]
        assert rule["supported"], rule["reason"]
        return rule

    assert psi_rule(0.05, 100)["paper_comparison"].startswith(
        "agree: the best mode hardly moves with the noise rate (slope 0.05), as the paper found with 100 classes")
    assert psi_rule(0.5, 100)["paper_comparison"].startswith(
        "refine: the best mode rises with the noise rate (slope 0.50 psi per unit noise rate); the paper found it "
        "moved much less with 100 classes")
    assert psi_rule(0.5, 10)["paper_comparison"].startswith("agree: the best mode rises")
    assert psi_rule(0.05, 10)["paper_comparison"].startswith("refine: the best mode hardly moves")


def test_a_noise_rate_rule_never_spans_datasets_models_or_imbalance_ratios() -> None:
    """Three rates, but on two datasets (and their psi differs by dataset), or at two imbalance
    ratios: no line; the clean setting joins only its own dataset's group."""
    mixed = [setting(0.2, 0.2), setting(0.4, 0.7, dataset="e"), setting(0.6, 0.3), setting(0.0, 0.1, noise="none",
                                                                                             dataset="e")]
    rules = noise_rate_rules(mixed)
    assert {(r["group"]["dataset"], r["n"]) for r in rules} == {("d", 2), ("e", 2)}
    assert not any(r["supported"] for r in rules)
    ratios = [setting(r, 0.1 + r, imbalance="longtail", imbalance_ratio=q) for r, q in ((0.0, 10.0), (0.2, 10.0),
                                                                                       (0.4, 100.0))]
    assert not any(r["supported"] for r in noise_rate_rules(ratios))
    assert "longtail imbalance 10:1" in noise_rate_rules(ratios)[0]["text"]


def test_factor_trends_match_settings_that_differ_only_in_the_factor() -> None:
    """By imbalance: balanced data (ratio 1) against step 10:1, one dataset; settings of two
    datasets are not matched by noise type; class counts are compared across datasets."""
    from dm_tune.reports._rules import factor_trends

    base = setting(0.2, 0.3)
    step = setting(0.2, 0.5, imbalance="step", imbalance_ratio=10.0, setting="step")
    other_data = setting(0.2, 0.7, noise="pair", dataset="e")
    hundred = setting(0.2, 0.1, classes=100, dataset="c100", model="r")
    trends = {t["factor"]: t for t in factor_trends([base, step, other_data, hundred])}
    assert trends["imbalance"]["n_groups"] == 1 and set(trends["imbalance"]["levels"]) == {"none", "step"}
    assert trends["noise"]["n_groups"] == 0  # pair noise was measured on another dataset only
    assert trends["num_classes"]["n_groups"] == 1 and set(trends["num_classes"]["levels"]) == {"10", "100"}


def test_lambda_beta_rule() -> None:
    rising = [setting(0.2, psi, rho=2.0) for psi in (0.2, 0.4, 0.6)]  # same rho: beta grows with lambda
    rule = lambda_beta_rule(rising)
    assert rule["supported"] and rule["b"] > 0 and rule["paper_comparison"].startswith("agree")
    assert not lambda_beta_rule(rising[:2])["supported"]


def test_the_paper_is_refuted_only_by_a_gap_beyond_seed_noise() -> None:
    """Trials at the paper's mode (psi 1/2 at 40% symmetric noise) more than a point worse refuted
    it, whatever their seeds said: a gap of 2, 10 and 1 points is within seed noise (refine); one of
    2, 2.5 and 1.5 is not (refute). The gap is measured on test: the best arm, the best of many on
    validation, leads there by more than it truly does (the winner's curse)."""
    def verdict(paper_val: list[float], paper_test: list[float] | None = None) -> dict[str, Any]:
        rows = [row(seed=s, val=0.90, test=0.90, lam=0.1, beta=8.0) for s in range(3)]
        rows += [row(seed=s, val=v, test=t, lam=1.0, beta=8.0)
                 for s, (v, t) in enumerate(zip(paper_val, paper_test or paper_val))]
        return analyse_setting(tidy(rows))["paper_comparison"]

    noisy = verdict([0.88, 0.80, 0.89])
    assert noisy["verdict"] == "refine" and "within seed noise" in noisy["reason"]
    clear = verdict([0.88, 0.875, 0.885])
    assert clear["verdict"] == "refute" and "worse on test, beyond seed noise" in clear["reason"]
    assert clear["paper_psi_gap_points"] == pytest.approx(2.0)
    # the same validation gap, none on test: the validation lead was the selection's, not the arm's
    lucky = verdict([0.88, 0.875, 0.885], paper_test=[0.90, 0.90, 0.90])
    assert lucky["verdict"] == "refine" and lucky["paper_psi_gap_points"] == pytest.approx(0.0)
    assert "were as good on test" in lucky["reason"]
    better = verdict([0.88, 0.875, 0.885], paper_test=[0.92, 0.925, 0.915])  # (it read "-2.0 points worse")
    assert better["verdict"] == "refine" and "were 2.0 points better on test" in better["reason"]
    # its search trials (the same configuration on seeds 0 and 1: two seeds, never beyond noise) do
    # not speak for a configuration its confirm arm measured: the search arm's smaller gap hid the refutation
    rows = [row(seed=s, val=0.90, test=0.90, lam=0.1, beta=8.0) for s in range(3)]
    rows += [row(seed=s, val=v, test=v, lam=1.0, beta=8.0) for s, v in enumerate([0.885, 0.88, 0.88])]
    rows += [row(stage="search", seed=s, val=v, test=v, lam=1.0, beta=8.0) for s, v in enumerate([0.885, 0.88])]
    assert analyse_setting(tidy(rows))["paper_comparison"]["verdict"] == "refute"
    # of two arms near the paper's mode, the one closer to the best on validation speaks for it
    rows = [row(seed=s, val=0.90, test=0.90, lam=0.1, beta=8.0) for s in range(3)]
    rows += [row(seed=s, val=0.885, test=t, lam=1.0, beta=8.0) for s, t in enumerate([0.88, 0.875, 0.885])]
    rows += [row(seed=s, val=0.85, test=0.90, lam=1.0, beta=12.0) for s in range(3)]
    chosen = analyse_setting(tidy(rows))["paper_comparison"]
    assert chosen["verdict"] == "refute" and chosen["paper_psi_gap_points"] == pytest.approx(2.0)


def test_the_papers_mode_is_judged_among_arms_of_the_best_arms_class_weighting() -> None:
    """A weighted best arm against unweighted trials at the paper's mode (the paper's suggested
    points are unweighted): their gap was the class weighting's, reported as the mode's, and refuted
    the paper. Only arms of the best arm's weighting speak for the paper's mode."""
    best = [row(seed=s, val=0.90, test=0.90, lam=0.1, beta=8.0, class_weighting="inverse") for s in range(3)]
    unweighted = [row(seed=s, val=v, test=v, lam=1.0, beta=8.0, class_weighting="none")
                  for s, v in enumerate([0.70, 0.71, 0.69])]
    untested = analyse_setting(tidy(best + unweighted))["paper_comparison"]
    assert untested["verdict"] == "refine" and untested["paper_psi_gap_points"] is None
    assert "no trial tested the paper's mode with class weighting inverse" in untested["reason"]
    weighted = [row(seed=s, val=v, test=v, lam=1.0, beta=8.0, class_weighting="inverse")
                for s, v in enumerate([0.88, 0.875, 0.885])]
    judged = analyse_setting(tidy(best + unweighted + weighted))["paper_comparison"]
    assert judged["verdict"] == "refute" and judged["paper_psi_gap_points"] == pytest.approx(2.0)
    assert "trials at the paper's mode with class weighting inverse were 2.0 points worse" in judged["reason"]


def test_a_difference_of_one_test_example_on_every_seed_is_within_noise_as_validate_judges_it() -> None:
    """Both arms near chance, DM one of 540 test examples ahead on each of three seeds: the report
    said "wins" (identical differences: std 0), where validate, taking the spread as at least one
    example's worth, says within noise. Runs that recorded no test set size keep the bare rule."""
    def rows(examples: str) -> list[dict[str, Any]]:
        extra = {"test_examples": examples} if examples else {}
        out = [row(seed=s, val=0.1, test=(54 + s) / 540, **extra) for s in range(3)]
        return out + [row(seed=s, val=0.1, test=(53 + s) / 540, baseline="gce", method="gce", **extra)
                      for s in range(3)]

    judged = analyse_setting(tidy(rows("540")))["vs_baselines"]["gce"]
    assert judged["mean_diff"] == pytest.approx(100 / 540) and judged["verdict"] == "within noise"
    assert analyse_setting(tidy(rows("")))["vs_baselines"]["gce"]["verdict"] == "wins"  # (no size recorded)
    # a real gap stays a win: 20 examples on every seed
    wide = [{**r, "final_test_acc": r["final_test_acc"] + 19 / 540} if r["method"] == "dm" else r for r in rows("540")]
    assert analyse_setting(tidy(wide))["vs_baselines"]["gce"]["verdict"] == "wins"


def test_trials_at_the_papers_mode_that_did_not_finish_are_said_to_have_run() -> None:
    """ASHA stopped every trial near the paper's mode (psi 1/2 at 40% symmetric noise): the report
    said no trial tested it."""
    best = [row(seed=s, val=0.90, test=0.90, lam=0.1, beta=8.0) for s in range(3)]
    stopped = [row(stage="search", seed=s, val=None, test=None, lam=1.0, beta=16.0, status="early-stopped")
               for s in range(2)] + [row(stage="search", seed=0, val=None, test=None, lam=1.1, beta=8.0,
                                         status="diverged")]
    said = analyse_setting(tidy(best + stopped))["paper_comparison"]
    assert said["verdict"] == "refine" and said["paper_psi_gap_points"] is None
    assert ("the optimum sits elsewhere; trials near the paper's mode ran but none finished (1 diverged, "
            "2 early-stopped), so the gap there is not measured") in said["reason"]
    assert "no trial tested the paper's mode" in analyse_setting(tidy(best))["paper_comparison"]["reason"]


def test_paper_comparison_refutes_when_the_papers_mode_was_worse() -> None:
    s = setting(0.4, 0.1, psi_range=[0.05, 0.15])
    assert compare_with_paper(s, paper_psi_gap=3.0, gap_clear=True)["verdict"] == "refute"
    # the same gap within seed noise (two seeds that disagree): the optimum is elsewhere, not a refutation
    noisy = compare_with_paper(s, paper_psi_gap=3.0, gap_clear=False)
    assert noisy["verdict"] == "refine" and "within seed noise" in noisy["reason"]
    # not tested (one seed paired, or none; also what a caller that does not say gets): never a refutation
    untested = compare_with_paper(s, paper_psi_gap=3.0)
    assert untested["verdict"] == "refine" and "not tested against seed noise" in untested["reason"]
    assert compare_with_paper(s, paper_psi_gap=None)["verdict"] == "refine"
    assert compare_with_paper(setting(0.4, 0.45), paper_psi_gap=0.0)["verdict"] == "agree"
    clean = compare_with_paper(setting(0.0, 0.0, noise="none"), paper_psi_gap=None)
    assert clean["paper_psi"] == 0.0 and clean["verdict"] == "agree"
    # Retrieval: the paper's classification schedule (here the 100-class rule) is no yardstick.
    reid = compare_with_paper({**setting(0.3, 0.4, classes=150), "task": "retrieval"}, paper_psi_gap=None)
    assert reid["verdict"] == "none" and reid["paper_psi"] is None and "video retrieval" in reid["reason"]


def guidelines(settings: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "analysis_version": ANALYSIS_VERSION, "generated": "now",
            "provenance": {}, "settings": settings, "rules": []}


def test_recommend_interpolates_in_noise_rate() -> None:
    g = guidelines([setting(0.2, 0.3, rho=2.0), setting(0.6, 0.7, rho=4.0), setting(0.4, 0.6, classes=100)])
    rec = recommend(g, num_classes=10, noise_type="symmetric", noise_rate=0.4)
    assert rec.psi == pytest.approx(0.5) and rec.rho == pytest.approx(3.0) and rec.warnings == [NO_SURFACE]
    assert rec.lam == pytest.approx(1.0) and rec.beta == pytest.approx(12.0)
    assert rec.settings == ["symmetric-10-0.2", "symmetric-10-0.6"] and "interpolated" in rec.evidence
    assert "points of final test accuracy over CCE over 3 seeds (the arm measured on 3 seeds)" in rec.evidence
    assert set(rec.to_dict()) >= {"lam", "beta", "psi", "rho", "evidence", "warnings"}


def test_recommend_warns_when_extrapolating() -> None:
    g = guidelines([setting(0.2, 0.3), setting(0.6, 0.7), setting(0.0, 0.0, noise="none")])
    beyond = recommend(g, num_classes=10, noise_type="symmetric", noise_rate=0.8)
    assert beyond.psi == pytest.approx(0.7) and any("outside the measured range" in w for w in beyond.warnings)
    low = recommend(g, num_classes=10, noise_type="symmetric", noise_rate=0.1)  # clean joins the series
    assert low.psi == pytest.approx(0.15) and low.warnings == [NO_SURFACE]
    other = recommend(g, num_classes=100, noise_type="pair", noise_rate=0.4)
    assert any("noise type 'pair'" in w for w in other.warnings)
    assert any("number of classes 100" in w for w in other.warnings)


@pytest.mark.parametrize("kwargs, message", [
    (dict(noise_rate=1.0), "noise rate must be in [0, 1), got 1.0"),
    (dict(noise_rate=-0.1), "noise rate must be in [0, 1), got -0.1"),
    (dict(num_classes=1), "number of classes must be an integer >= 2, got 1"),
    (dict(num_classes=10**400), "number of classes must be at most 1000000000, got a number of 401 digits"),
    (dict(num_classes=10**10), "number of classes must be at most 1000000000, got 10000000000"),
    # the rates dm-tune train refuses (the recommendation's own "try: dm-tune train ..." then failed)
    (dict(noise_type="pair", noise_rate=0.6), "noise rate must be below 0.5 for pair noise on 10 classes, got 0.6"),
    (dict(num_classes=2, noise_rate=0.5), "noise rate must be below 0.5 for symmetric noise on 2 classes, got 0.5"),
    (dict(noise_type="none", noise_rate=0.2), "noise type 'none' needs noise rate 0, got 0.2"),
    (dict(noise_type="cifar100-superclass"), "noise type 'cifar100-superclass' needs number of classes 100 "
                                             "(CIFAR-100's classes, in their 20 superclasses), got 10"),
    # the imbalance as dm-tune train checks it (these gave a recommendation for data that cannot be)
    (dict(imbalance="zipf", imbalance_ratio=10.0),
     "imbalance 'zipf' is not known; expected one of none, longtail, step"),
    (dict(imbalance_ratio=50.0), "imbalance ratio must be 1 with imbalance 'none', got 50.0"),
    (dict(imbalance="longtail"), "imbalance 'longtail' needs an imbalance ratio > 1"),
    (dict(imbalance="longtail", imbalance_ratio=math.inf),  # was a traceback from the surface's log(ratio)
     "imbalance ratio must be in [1, 10000] (largest / smallest class, as dm-tune train takes it), got inf"),
    # past what dm-tune train takes: was a recommendation at the grid's corner
    (dict(imbalance="longtail", imbalance_ratio=1e5), "imbalance ratio must be in [1, 10000]"),
    # a label file as different from the data as random labels is refused by train, as symmetric noise is
    (dict(noise_type="file", noise_rate=0.9), "noise rate must be below 0.9 for file noise on 10 classes, got 0.9"),
    # True is no rate (it was rate 1 of a ratio, rate 0 as False); a task, then a dataset the query contradicts
    (dict(noise_rate=False), "noise rate must be in [0, 1), got False"),
    (dict(imbalance="step", imbalance_ratio=True), "imbalance ratio must be in [1, 10000]"),
    (dict(task="ranking"), "task 'ranking' is not known; expected one of classification, retrieval"),
    (dict(num_classes=100, dataset="digits"),
     "number of classes 100 does not fit dataset 'digits', which has 10 classes (leave dataset out"),
    (dict(num_classes=150, dataset="reid-synth"),
     "dataset 'reid-synth' is a retrieval dataset, not classification (set task retrieval"),
    # a known name in another case was taken for a dataset never measured, and answered differently
    (dict(dataset="Digits"),
     "dataset 'Digits' is not known; did you mean 'digits'? (dataset names are case-sensitive)"),
    (dict(dataset="D"), "dataset 'D' is not known; did you mean 'd'?"),  # the guidelines' own dataset
])
def test_recommend_rejects_bad_input(kwargs: dict[str, Any], message: str) -> None:
    args = dict(num_classes=10, noise_type="symmetric", noise_rate=0.2) | kwargs
    with pytest.raises(UserError) as info:
        recommend(guidelines([setting(0.2, 0.3)]), **args)
    assert str(info.value).startswith(message)


def test_recommend_takes_numpy_numbers_and_refuses_what_is_no_guidelines_document() -> None:
    """np.int64(10) classes and an np.float32 rate were refused as no integer / no number; None or
    a list as the guidelines raised AttributeError, a setting without its rate KeyError."""
    g = guidelines([setting(0.2, 0.3, rho=2.0), setting(0.6, 0.7, rho=4.0)])
    plain = recommend(g, num_classes=10, noise_type="symmetric", noise_rate=0.4)
    numpy_args = recommend(g, num_classes=np.int64(10), noise_type="symmetric", noise_rate=np.float32(0.4))
    assert numpy_args.psi == pytest.approx(plain.psi, abs=1e-6) and numpy_args.rho == pytest.approx(plain.rho, rel=1e-6)
    dumps(numpy_args.to_dict())  # plain numbers in what it returns
    for doc, message in ((None, "guidelines must be a guidelines document (a mapping"),
                         ([], "guidelines must be a guidelines document (a mapping"),
                         ({**g, "settings": [{"noise": "symmetric"}]}, "the guidelines: settings[0].imbalance")):
        with pytest.raises(UserError) as info:
            recommend(doc, num_classes=10, noise_type="symmetric", noise_rate=0.4)
        assert str(info.value).startswith(message), info.value


def test_noisy_imbalanced_data_reads_its_rate_from_the_noisy_settings_without_a_surface() -> None:
    """Imbalance measured on clean labels only, noise on balanced data: a noisy imbalanced query got
    the clean imbalanced arm, every noisy setting dropped ("noise rate 0.3 is outside [0, 0]")."""
    lt = {"imbalance": "longtail", "imbalance_ratio": 10.0}
    g = guidelines([setting(0.2, 0.3, rho=2.0), setting(0.4, 0.5, rho=4.0),
                    setting(0.0, 0.05, rho=1.0, noise="none", setting="clean-longtail", **lt)])
    rec = recommend(g, num_classes=10, noise_type="symmetric", noise_rate=0.3, imbalance="longtail",
                    imbalance_ratio=10.0)
    assert rec.psi == pytest.approx(0.4) and rec.settings == ["symmetric-10-0.2", "symmetric-10-0.4"]
    assert not any("outside the measured range" in w for w in rec.warnings)
    assert ("imbalance 'longtail' was measured here on clean labels only; ignoring imbalance, so that the noise "
            "rate is read from the noisy settings measured") in rec.warnings
    clean = recommend(g, num_classes=10, noise_type="none", noise_rate=0.0, imbalance="longtail", imbalance_ratio=10.0)
    assert clean.settings == ["clean-longtail"] and clean.psi == pytest.approx(0.05)


def test_an_imbalance_ratio_is_never_printed_as_no_imbalance(tmp_path: Path, capsys) -> None:
    """recommend echoed a longtail ratio of 1.0000000001 as "1:1" (with ``:g``), which reads as no
    imbalance at all beside the class weighting it recommends for it."""
    from dm_tune.cli import main
    from dm_tune.reports._text import ratio_text

    assert [ratio_text(r) for r in (100.0, 12.5, 2, 1.0000000001)] == ["100:1", "12.5:1", "2:1", "1.0000000001:1"]
    path = tmp_path / "guidelines.json"
    path.write_text(dumps(guidelines([setting(0.2, 0.3) | {"imbalance": "longtail", "imbalance_ratio": 10.0}])))
    assert main(["recommend", "--num-classes", "10", "--noise-rate", "0.3", "--imbalance", "longtail",
                 "--imbalance-ratio", "1.0000000001", "--guidelines", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("DM for 10 classes, 30% symmetric noise, longtail imbalance 1.0000000001:1:")
    assert "imbalance ratio 1.0000000001 was not measured" in out  # its warning too (was "ratio 1 was not")


def test_recommend_rejects_an_unknown_noise_type_on_the_command_line(tmp_path: Path) -> None:
    import subprocess

    from dm_tune.noise import NOISE_MODELS
    from dm_tune.reports._recommend import NOISE_TYPES
    from tests.conftest import DM_TUNE

    assert NOISE_TYPES == tuple(NOISE_MODELS)  # the light copy follows the table
    path = tmp_path / "guidelines.json"  # not the shipped file: this test must not depend on its version
    path.write_text(dumps(guidelines([setting(0.2, 0.3)])))
    proc = subprocess.run([DM_TUNE, "recommend", "--num-classes", "10", "--noise-type", "foo", "--noise-rate", "0.3",
                           "--guidelines", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", proc
    (line,) = proc.stderr.splitlines()
    assert line.startswith("dm-tune: error: --noise-type 'foo' is not known") and "'foo'" in line
    assert all(name in line for name in NOISE_TYPES)
    # each input named by its flag (was "noise rate must be ...", "imbalance ratio ...")
    for argv, start in ((["--noise-rate", "nan"], "--noise-rate must be in [0, 1), got nan"),
                        (["--noise-rate", "0.2", "--imbalance", "step"],
                         "dm-tune: error: --imbalance 'step' needs an --imbalance-ratio"),
                        (["--noise-rate", "0.2", "--imbalance", "step:ten"],
                         "--imbalance: 'step:ten' is not allowed; expected KIND or KIND:RATIO"),
                        (["--noise-rate", "0.2", "--imbalance", "step:10", "--imbalance-ratio", "4"],
                         "--imbalance step:10 and --imbalance-ratio 4 give two ratios"),
                        # was taken as a dataset named '' ("dataset '' was not measured")
                        (["--noise-rate", "0.2", "--dataset", ""],
                         "dm-tune recommend: error: argument --dataset: expected a dataset name, not ''"),
                        # was "expected one argument" (argparse takes -1e-3 for an option, -5 for a number)
                        (["--noise-rate", "-1e-3"], "--noise-rate must be in [0, 1), got -0.001"),
                        # was 10 classes (Python reads 1_0 as 10)
                        (["--noise-rate", "0.2", "--num-classes", "1_0"],
                         "dm-tune recommend: error: argument --num-classes: expected an integer, not '1_0'")):
        proc = subprocess.run([DM_TUNE, "recommend", "--num-classes", "10", *argv, "--guidelines", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc
        assert proc.stderr.startswith(start if start.startswith("dm-tune") else f"dm-tune: error: {start}"), proc.stderr


@pytest.mark.parametrize("content, problem", [
    ("{not json", "is not valid JSON: Expecting property name enclosed in double quotes (line 1)"),
    ("[1, 2]", ": the top level: [1, 2] is not allowed; expected a mapping of field: value"),
    ('{"schema_version": 1, "settings": [], "rules": [], "provenance": {}}',
     ": schema_version: 1 is not allowed; expected 2 (a file of schema version 1 must be regenerated with "
     "'dm-tune report'; a later version was written by a newer dm-tune)"),
    ('{"schema_version": 3, "settings": [], "rules": [], "provenance": {}}',  # (was told to regenerate it)
     ": schema_version: 3 is not allowed; expected 2 (a file of schema version 1 must be regenerated with "
     "'dm-tune report'; a later version was written by a newer dm-tune)"),
    ('{"schema_version": 2, "settings": {}, "rules": [], "provenance": {}}',
     ": settings: {} is not allowed; expected a list"),
    ('{"schema_version": 2, "settings": [], "rules": []}', ": provenance: missing; this field is required"),
    ('{"schema_version": 2, "settings": [], "rules": [], "provenance": {}, "surface": {"task": "classification"}}',
     ": surface.encoding: missing; this field is required"),
])
def test_malformed_guidelines_give_one_clear_line(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "g.json"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        load_guidelines(path)
    assert str(err.value).startswith(f"guidelines file {path}") and str(err.value).endswith(problem)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        load_guidelines(tmp_path / "missing.json")


@pytest.mark.parametrize("change, problem", [
    (dict(psi=None), "settings[0].psi: missing; this field is required"),
    (dict(noise_rate=1.5), "settings[0].noise_rate: 1.5 is not allowed; expected a number in [0, 1)"),
    (dict(noise_rate="0.2"), "settings[0].noise_rate: '0.2' is not allowed; expected a number"),  # no coercion
    (dict(rho=math.nan), "settings[0].rho: nan is not allowed; expected a finite number"),
    (dict(lam=True), "settings[0].lam: True is not allowed; expected a number"),
    (dict(num_classes=1), "settings[0].num_classes: 1 is not allowed; expected an integer >= 2"),
    (dict(num_classes=10.5), "settings[0].num_classes: 10.5 is not allowed; expected an integer"),
    (dict(noise=""), "settings[0].noise: '' is not allowed; expected one of: none, symmetric, pair, "
                     "cifar100-superclass, file"),
    (dict(imbalance="zipf"), "settings[0].imbalance: 'zipf' is not allowed; expected one of: none, longtail, step"),
    (dict(psi_range=[0.5, 0.1]), "settings[0].psi_range: [0.5, 0.1] is not allowed; "
                                 "expected a [low, high] pair of numbers"),
    (dict(rho_range=[0.5, "x"]), "settings[0].rho_range[1]: 'x' is not allowed; expected a number"),
    (dict(vs_baselines=[]), "settings[0].vs_baselines: [] is not allowed; expected a mapping"),
])
def test_bad_setting_fields_are_named_with_value_and_what_is_allowed(change: dict[str, Any], problem: str) -> None:
    s = {k: v for k, v in (setting(0.2, 0.3) | change).items() if v is not None}  # None: the key left out
    assert validate_guidelines(guidelines([s])) == problem
    assert validate_guidelines(guidelines([setting(0.2, 0.3)])) is None


def test_built_guidelines_round_trip_through_the_schema(tmp_path: Path) -> None:
    doc = build_guidelines(tidy(known_runs() + grid_search_rows()), generated="2026-01-01T00:00:00+00:00")
    path = tmp_path / "guidelines.json"
    path.write_text(dumps(doc))
    loaded = load_guidelines(path)
    assert loaded["schema_version"] == 2 and loaded["provenance"]["git_commits"] == ["abc123"]
    (s,) = loaded["settings"]
    assert {"rho_range", "psi_range", "test_acc_mean", "vs_baselines", "importance", "paper_comparison",
            "counts", "pretrained", "imbalance_ratio"} <= set(s)
    assert "+10.0 +/- 0.0 points over CCE over 3 seeds" in s["guideline"]
    # One setting: a surface (one row per DM arm with rho > 0: 3 confirmed on 3 seeds, 2 search, 12 grid),
    # nothing to hold out.
    assert loaded["surface"]["n_rows"] == 3 + 2 + 12 and [m["setting"] for m in loaded["surface"]["settings"]] == [s["setting"]]
    assert loaded["loso"] is None
    rec = recommend(loaded, num_classes=10, noise_type="symmetric", noise_rate=0.4)
    # measured setting: no extrapolation (the grid trials disagree with the confirmed arms by 10 points: unsure)
    assert not any("extrapolation" in w for w in rec.warnings)
    assert rec.settings == [s["setting"]] and rec.class_weighting == "none"
    assert rec.lam == pytest.approx(rec.psi / (1 - rec.psi)) and rec.rho == pytest.approx(rho_from_beta(rec.beta, rec.lam))
    gain = rec.predicted_gain
    assert gain is not None and gain["low"] < gain["mean"] < gain["high"] and gain["level"] == 0.95


def test_no_default_guidelines_are_shipped_by_hand() -> None:
    assert default_guidelines_path().name == "default_guidelines.json"
    assert default_guidelines_path().parent.name == "reports"


def test_recommend_without_a_surface_counts_a_clean_setting_of_the_noise_type_once() -> None:
    """A symmetric setting at rate 0 is both of the noise type and clean: it was pooled twice,
    named twice in the evidence and weighted twice in its rate's average (0.1 here, not 0.133)."""
    g = guidelines([setting(0.0, 0.0, setting="symmetric-10-0"), setting(0.0, 0.3, noise="none"),
                    setting(0.4, 0.5)])
    rec = recommend(g, num_classes=10, noise_type="symmetric", noise_rate=0.2)
    assert len(rec.settings) == len(set(rec.settings)) == 3
    assert rec.evidence.count("psi 0.00, rho 2.00") == 1
    assert rec.psi == pytest.approx((0.15 + 0.5) / 2)


def test_recommend_refuses_a_later_analysis_version_and_notes_an_earlier_one(tmp_path: Path, capsys) -> None:
    """analysis_version was never read: a v99 file (a newer dm-tune's) ran silently, and a v5 file
    (the shipped one) gave no sign that its report analysed by older rules."""
    from dm_tune.cli import main

    g = guidelines([setting(0.2, 0.3), setting(0.6, 0.7)])
    assert not any(w.startswith("note:") for w in recommend(g, 10, "symmetric", 0.4).warnings)
    for bad in (99, 0, "7", 7.0):
        with pytest.raises(UserError, match=r"^the guidelines: analysis_version: "):
            recommend({**g, "analysis_version": bad}, 10, "symmetric", 0.4)
    path = tmp_path / "guidelines.json"
    path.write_text(dumps({**g, "analysis_version": 99}))
    with pytest.raises(UserError, match=rf"{path}: analysis_version: 99 is not allowed; expected 1 to "
                                        rf"{ANALYSIS_VERSION} \(a later version was written by a newer dm-tune\)"):
        load_guidelines(path)
    old = recommend({**g, "analysis_version": 5}, 10, "symmetric", 0.4).warnings
    assert old[0].startswith(f"note: these guidelines were written by a report of analysis version 5, this "
                             f"dm-tune's is {ANALYSIS_VERSION} (what changed since: the README, under "
                             "analysis_version)")
    assert sum(w.startswith("note:") for w in old) == 1
    absent = {k: v for k, v in g.items() if k != "analysis_version"}  # written before it was recorded: 1
    assert "analysis version 1," in recommend(absent, 10, "symmetric", 0.4).warnings[0]
    path.write_text(dumps({**g, "analysis_version": 5}))
    assert main(["recommend", "--num-classes", "10", "--noise-rate", "0.4", "--guidelines", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("  note: these guidelines were written") == 1 and "warning: note" not in out


def test_recommend_without_a_surface_keeps_the_measured_class_weighting() -> None:
    """Guidelines without a surface block (the schema allows it): the recommendation had always
    said class weighting "none", whatever the measured best arms used."""
    def imbalanced(rate: float, psi: float, **extra: Any) -> dict[str, Any]:
        return setting(rate, psi, imbalance="longtail", imbalance_ratio=10.0, **extra)

    query = {"num_classes": 10, "noise_type": "symmetric", "noise_rate": 0.5, "imbalance": "longtail",
             "imbalance_ratio": 10.0}
    same = guidelines([imbalanced(0.2, 0.3, class_weighting="effective-number"),
                       imbalanced(0.6, 0.7, class_weighting="effective-number")])
    assert recommend(same, **query).class_weighting == "effective-number"
    mixed = guidelines([imbalanced(0.2, 0.3, class_weighting="inverse"), imbalanced(0.6, 0.7)])
    rec = recommend(mixed, **query)
    assert rec.class_weighting == "none" and any("different class weightings" in w for w in rec.warnings)
    # On balanced settings every scheme weights every class alike: "none", no warning
    balanced = guidelines([setting(0.2, 0.3, class_weighting="inverse"), setting(0.6, 0.7, class_weighting="sqrt-inverse")])
    rec = recommend(balanced, num_classes=10, noise_type="symmetric", noise_rate=0.5)
    assert rec.class_weighting == "none" and not any("class weightings" in w for w in rec.warnings)


def test_the_region_compares_each_configuration_with_the_best_on_its_own_seeds() -> None:
    """The best arm (confirmed on seeds 0-2, mean 82 with a strong seed 2) against a configuration
    searched on seeds 0 and 1 only: on those seeds the best had 80, so 79.5 is within 1 point (its
    unpaired 82 would leave it out). A configuration that diverged on one seed is no part of the
    region, however good its other seeds; one measured in both stages counts once."""
    rows = [row(seed=s, val=v) for s, v in zip(range(3), (0.80, 0.80, 0.86))]
    rows += [row(stage="search", seed=s, val=0.80) for s in (0, 1)]  # the best's own search trials
    rows += [row(stage="search", seed=s, val=0.795, lam=0.25, beta=4.0) for s in (0, 1)]
    rows += [row(seed=s, val=0.90, lam=3.0, beta=2.0) for s in (0, 2)]
    rows.append(row(seed=1, val=None, test=None, lam=3.0, beta=2.0, status="diverged"))
    rows += [row(stage="search", seed=s, val=0.90, lam=3.0, beta=2.0) for s in (0, 1)]  # it finished there
    res = analyse_setting(tidy(rows))
    assert (res["lam"], res["beta"], res["val_acc_mean"]) == (1.0, 8.0, pytest.approx(82.0))
    assert res["psi_range"] == pytest.approx([mode_from_lambda(0.25), 0.5])  # not up to psi 0.75 (lam 3)
    assert res["n_configs"] == 2


def test_the_paper_mode_gap_pairs_seeds() -> None:
    """The best arm is at the paper's mode (psi 0.5 for 40% symmetric noise on 10 classes): its search
    trials on seeds 0 and 1 are the same runs' seeds, so the gap is 0, not the difference between
    its 3-seed and 2-seed means (-1 point)."""
    rows = [row(seed=s, val=v) for s, v in zip(range(3), (0.81, 0.81, 0.78))]
    rows += [row(stage="search", seed=s, val=0.81) for s in (0, 1)]
    rows += [row(stage="search", seed=s, val=0.79, lam=1.0, beta=4.0) for s in (0, 1)]
    res = analyse_setting(tidy(rows))
    assert res["paper_comparison"]["paper_psi_gap_points"] == pytest.approx(0.0, abs=1e-9)


def test_a_difference_of_about_one_std_over_three_seeds_is_within_noise() -> None:
    """DM - GCE of +1.1 ± 0.8 points over 3 seeds: its paired 95% t interval (±2.0) holds 0, so the
    verdict is "within noise", as validate would say; +4.0 ± 0.8 wins and -4.0 ± 0.8 loses."""
    from dm_tune.reports._analysis import compare_baselines

    dm = tidy([row(seed=s, test=t) for s, t in zip(range(3), (0.71, 0.72, 0.73))])
    for shift, expected in ((0.011, "within noise"), (0.04, "wins"), (-0.04, "loses")):
        diffs = (shift - 0.008, shift, shift + 0.008)  # per-seed differences: std 0.8 points
        gce = tidy([row(seed=s, test=t - d, baseline="gce", method="gce")
                    for s, t, d in zip(range(3), (0.71, 0.72, 0.73), diffs)])
        got = compare_baselines(dm, gce)["gce"]
        assert got["paired"] and got["verdict"] == expected, (shift, got)


def test_a_baseline_that_diverged_where_dm_finished_loses_as_in_validate() -> None:
    """DM 80/75/78 against CCE 70/74 and diverged on seed 2: the seeds both finished alone said
    "within noise"; validate's rule (the arm that did not finish where the other did loses) says
    DM wins. The other way round DM loses; early-stopped runs are no failures."""
    from dm_tune.reports._analysis import compare_baselines

    dm = tidy([row(seed=s, test=t) for s, t in zip(range(3), (0.80, 0.75, 0.78))])
    cce = tidy([row(seed=0, test=0.70, baseline="cce", method="cce"),
                row(seed=1, test=0.74, baseline="cce", method="cce"),
                row(seed=2, val=None, test=None, baseline="cce", method="cce", status="diverged")])
    got = compare_baselines(dm, cce)["cce"]
    assert got["verdict"] == "wins" and got["did_not_finish"] == {"dm": [], "cce": [2.0]}
    assert (got["n"], got["baseline_n"]) == (2, 2) and got["mean_diff"] == pytest.approx(5.5)
    diverged = tidy([row(seed=s, test=t) for s, t in zip(range(2), (0.80, 0.75))]
                    + [row(seed=2, val=None, test=None, status="diverged")])
    full = tidy([row(seed=s, test=0.70, baseline="cce", method="cce") for s in range(3)])
    assert compare_baselines(diverged, full)["cce"]["verdict"] == "loses"


def test_a_baseline_that_never_finished_and_an_errored_seed() -> None:
    """A baseline diverged on every seed: an entry with no mean (DM wins), which the figure and the
    guideline sentence take (the figure crashed on its missing bar). An errored seed (a crash of the
    machinery) decides nothing: it is a seed without a result."""
    from dm_tune.reports._analysis import compare_baselines
    from dm_tune.reports._figures import baselines_figure
    from dm_tune.reports._guidelines import setting_sentence

    rows = [row(seed=s, test=t) for s, t in zip(range(3), (0.70, 0.71, 0.72))]
    rows += [row(seed=s, val=None, test=None, baseline="mae", method="mae", status="diverged") for s in range(3)]
    rows += [row(seed=s, test=t, baseline="cce", method="cce") for s, t in ((0, 0.75), (1, 0.76))]
    rows.append(row(seed=2, val=None, test=None, baseline="cce", method="cce", status="errored"))
    res = analyse_setting(tidy(rows))
    mae, cce = res["vs_baselines"]["mae"], res["vs_baselines"]["cce"]
    assert (mae["baseline_mean"], mae["baseline_n"], mae["n"], mae["verdict"]) == (None, 0, 0, "wins")
    assert mae["did_not_finish"] == {"dm": [], "mae": [0, 1, 2]}
    assert cce["verdict"] != "wins" and cce["did_not_finish"] == {"dm": [], "cce": []} and cce["n"] == 2
    baselines_figure(res)  # draws DM and CCE; MAE has no bar
    only_mae = {**res, "vs_baselines": {"mae": mae}}
    text = setting_sentence(only_mae)
    assert "over 0 seeds" not in text and "; against mae, no seed both finished (better: mae diverged on a seed " \
        "where DM finished)" in text, text
    dm_failed = {**cce, "verdict": "loses", "did_not_finish": {"dm": [2], "cce": []}}
    assert "points over CCE over 2 seeds (worse: DM diverged on a seed where CCE finished)" in setting_sentence(
        {**res, "vs_baselines": {"cce": dm_failed}})
    assert compare_baselines(tidy(rows[:3]), tidy(rows[3:6]))["mae"]["verdict"] == "wins"
    # the report's table: the seeds were shared, none finished by both (it read "n=0, unpaired")
    from dm_tune.reports._html import _setting_section

    page = _setting_section(0, res, {})
    assert "(n=0, no seed both finished)" in page and "(n=2, paired by seed)" in page and "unpaired" not in page


def test_a_guideline_names_its_class_weighting_and_the_study_of_a_twin_setting() -> None:
    """The winner's class weighting was in the arm's label only: the guideline sentence, which a
    user follows, read as if it trained without. A setting two studies measured (KEY@A, KEY@B) gave
    two sentences, table rows and figure titles no one could tell apart."""
    from dm_tune.reports._figures import _short
    from dm_tune.reports._guidelines import setting_sentence

    rows = [row(seed=s, test=0.7 + s / 100, class_weighting="inverse") for s in range(3)]
    res = analyse_setting(tidy(rows))
    assert res["class_weighting"] == "inverse"
    assert "(lambda about 1, beta about 8, class weighting inverse)" in setting_sentence(res)
    twins = tidy(rows + [{**row(seed=s, test=0.6), "experiment": "twin"} for s in range(3)])
    labels = {key: (setting_sentence(analyse_setting(twins[twins["setting"] == key])),
                    _short(analyse_setting(twins[twins["setting"] == key]))) for key in twins["setting"].unique()}
    assert set(labels) == {"digits/symmetric/0.4@study", "digits/symmetric/0.4@twin"}
    (study, study_title), (twin, twin_title) = labels["digits/symmetric/0.4@study"], labels["digits/symmetric/0.4@twin"]
    assert "40% symmetric noise, study study: " in study and "40% symmetric noise, study twin: " in twin
    assert study_title.endswith("(study)") and twin_title.endswith("(twin)")
    assert "class weighting" not in twin  # (none: nothing said)


def test_a_configuration_that_diverged_on_every_confirm_seed_is_out_of_the_region() -> None:
    """It has no confirm arm at all (no finished run): its finished search arm had stood for it."""
    rows = [row(seed=s, val=0.80) for s in range(3)]
    rows += [row(stage="search", seed=s, val=0.80) for s in (0, 1)]
    rows += [row(stage="search", seed=s, val=0.90, lam=3.0, beta=2.0) for s in (0, 1)]
    rows += [row(seed=s, val=None, test=None, lam=3.0, beta=2.0, status="diverged") for s in range(3)]
    res = analyse_setting(tidy(rows))
    assert res["psi_range"] == pytest.approx([0.5, 0.5]) and res["n_configs"] == 1


def test_a_configuration_that_finished_no_confirm_seed_is_not_recommended_for_its_search_trials() -> None:
    """Its search trials (the best) had been chosen, with the note that there were no confirm runs."""
    rows = [row(stage="search", seed=s, val=0.90, lam=3.0, beta=2.0) for s in (0, 1)]
    rows += [row(stage="search", seed=s, val=0.895) for s in (0, 1)]
    rows += [row(seed=s, val=None, test=None, lam=3.0, beta=2.0, status="diverged") for s in range(3)]
    res = analyse_setting(tidy(rows))
    assert (res["stage"], res["lam"], res["beta"]) == ("search", 1.0, 8.0)
    assert res["stage_note"].startswith("the confirmed arms finished no seed: chosen from search trials not confirmed")
    assert res["psi_range"] == pytest.approx([0.5, 0.5])


def test_the_printed_train_command_trains_the_setting_asked_about(tmp_path: Path, capsys) -> None:
    """recommend's 'try:' line carried DM's knobs alone: run as printed it trained the embedded
    digits, clean and balanced, whatever noise and imbalance the recommendation was for."""
    import json
    import shlex

    from dm_tune.cli import main

    path = tmp_path / "guidelines.json"
    path.write_text(dumps(guidelines([setting(0.2, 0.3)])))
    assert main(["recommend", "--num-classes", "10", "--noise-rate", "0.3", "--imbalance", "longtail",
                 "--imbalance-ratio", "20", "--dataset", "digits", "--guidelines", str(path)]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("try: ")]
    argv = shlex.split(line.split("try: ", 1)[1])
    assert argv[:2] == ["dm-tune", "train"]
    out = tmp_path / "result.json"
    assert main(argv[1:] + ["--epochs", "1", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    config = json.loads(out.read_text())["config"]
    assert (config["dataset"], config["noise"], config["noise_rate"], config["imbalance"], config["imbalance_ratio"],
            config["method"]) == ("digits", "symmetric", 0.3, "longtail", 20.0, "dm")
    assert main(["recommend", "--num-classes", "10", "--noise-rate", "0.3", "--guidelines", str(path)]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("try: ")]
    assert "--dataset DATASET --data-root DIR --noise symmetric --noise-rate 0.3 --method dm" in line


def test_a_label_files_overall_rate_finds_the_setting_that_measured_it() -> None:
    """A setting of a label file records the rate its training part had (0.329); the file's own rate
    (0.318) was 'outside the measured range [0.329, 0.329]' and not the measured setting."""
    from dm_tune.reports._surface import _extrapolation_warnings, same_noise

    g = guidelines([setting(0.329, 0.4, noise="file"), setting(0.0, 0.1, noise="none")])
    rec = recommend(g, num_classes=10, noise_type="file", noise_rate=0.318)
    assert rec.evidence.startswith("measured at noise rate 0.329") and rec.warnings == [NO_SURFACE]
    assert rec.psi == pytest.approx(0.4)
    far = recommend(g, num_classes=10, noise_type="file", noise_rate=0.36)
    assert any("outside the measured range" in w for w in far.warnings)
    assert same_noise(("file", 0.318), ("file", 0.329)) and not same_noise(("symmetric", 0.318), ("symmetric", 0.329))
    assert not same_noise(("file", 0.30), ("file", 0.329)) and same_noise(("none", 0.0), ("symmetric", 0.0))
    surface = {"settings": [{**setting(0.329, 0.4, noise="file"), "imbalance": "longtail", "imbalance_ratio": r}
                            for r in (10.0, 50.0)], "encoding": {"datasets": ["d"]}}
    for ratio, words in ((40.0, "imbalance ratio 40 was not measured for longtail"),
                         (200.0, "imbalance ratio 200 is outside the measured range for longtail")):
        said = _extrapolation_warnings(surface, 10, "file", 0.318, "longtail", ratio, "d")
        assert not any("noise rate" in w for w in said) and any(words in w for w in said), said


def test_recommend_without_a_surface_reads_a_measured_superclass_rate_as_its_fraction_of_wrong_labels() -> None:
    """Pair noise (not measured) at 0.2 is read against every type at 20% wrong labels: superclass
    at rate 0.5 makes 20% wrong; its 0.5 was read as 50% wrong, and 0.2 was interpolated between
    symmetric 0.1 and 0.4 instead of taken where superclass measured it."""
    g = guidelines([setting(0.1, 0.1, classes=100), setting(0.5, 0.5, noise="cifar100-superclass", classes=100),
                    setting(0.4, 0.7, classes=100)])
    rec = recommend(g, num_classes=100, noise_type="pair", noise_rate=0.2)
    assert rec.psi == pytest.approx(0.5) and rec.settings == ["cifar100-superclass-100-0.5"]


def test_the_report_names_the_commit_of_its_own_code() -> None:
    """A report's numbers come from its analysis code, which changes between commits of one dm-tune
    version: the JSON, guidelines.md and index.html name that commit beside the runs' ones (they
    named only the version, 0.1.0, of every commit)."""
    from dm_tune.provenance import git_commit
    from dm_tune.reports._guidelines import guidelines_markdown
    from dm_tune.reports._html import render_html

    doc = build_guidelines(tidy(known_runs()), generated="2026-01-01T00:00:00+00:00")
    assert doc["provenance"]["report_git_commit"] == git_commit() != ""
    assert f"report by dm-tune {doc['provenance']['dm_tune_version']} at commit {git_commit()}" in \
        guidelines_markdown(doc)
    assert f"<td>{doc['provenance']['dm_tune_version']} at commit {git_commit()}</td>" in render_html(doc, {})


def test_the_report_names_the_package_versions_of_its_runs() -> None:
    """The runs record every package's version (tag dmtune.versions); the report named only
    dm-tune's, so runs of two torch versions pooled in one report looked alike."""
    import json

    from dm_tune.reports._guidelines import guidelines_markdown
    from dm_tune.reports._html import render_html
    from dm_tune.reports._load import run_to_row

    tag = {"dmtune.versions": json.dumps({"python": "3.11.7", "dm-tune": "0.1.0", "torch": "2.14.1"})}
    row = run_to_row("e", "r1", {"method": "cce"}, {"final_test_acc": 0.9, "final_val_acc": 0.9}, tag)
    assert row is not None and row["versions"] == "python 3.11.7, dm-tune 0.1.0, torch 2.14.1"
    runs = known_runs()
    rows = [{**r, "versions": "torch 2.14.1" if i else "torch 2.6.0"} for i, r in enumerate(runs)]
    doc = build_guidelines(tidy(rows), generated="2026-01-01T00:00:00+00:00")
    assert doc["provenance"]["package_versions_of_runs"] == ["torch 2.14.1", "torch 2.6.0"]
    md, page = guidelines_markdown(doc), render_html(doc, {})
    for v in ("torch 2.14.1", "torch 2.6.0"):
        assert f"- package versions of the runs: {v}\n" in md
        assert f"<td>package versions of the runs</td><td>{v}</td>" in page


def test_the_report_names_the_data_of_its_runs_and_warns_of_a_setting_whose_data_changed() -> None:
    """A trial's run records the fingerprint of its dataset (and of its label file: tags
    dmtune.data_fingerprint, dmtune.noise_file_fingerprint): the report lists each one per dataset,
    and warns of a setting whose runs did not all train on the same data."""
    from dm_tune.reports._guidelines import guidelines_markdown
    from dm_tune.reports._html import render_html
    from dm_tune.reports._load import run_to_row

    metrics = {"final_test_acc": 0.9, "final_val_acc": 0.9}
    tags = {"dmtune.data_fingerprint": "0123456789abcdef", "dmtune.noise_file_fingerprint": "fedcba9876543210"}
    recorded = run_to_row("e", "r1", {"method": "cce"}, metrics, tags)["data"]
    assert recorded == "0123456789abcdef, label file fedcba9876543210"
    assert run_to_row("e", "r2", {"method": "cce"}, metrics, {"dmtune.data_fingerprint": "0123"})["data"] == "0123"
    assert run_to_row("e", "r3", {"method": "cce"}, metrics, {})["data"] == ""
    runs = known_runs() + [{**r, "setting": "digits/symmetric/0.2", "noise_rate": "0.2"} for r in known_runs()]
    settings = sorted({r["setting"] for r in runs})
    same = [{**r, "data": "" if i % 5 == 0 else "aaaa"} for i, r in enumerate(runs)]  # (some recorded none)
    doc = build_guidelines(tidy(same), generated="2026-01-01T00:00:00+00:00")
    datasets = sorted({r["dataset"] for r in runs})
    assert doc["provenance"]["data_of_runs"] == [f"{d}: aaaa" for d in datasets]
    assert doc["provenance"]["settings_on_changed_data"] == {}
    assert "did not all train on the same data" not in guidelines_markdown(doc)
    changed = [{**r, "data": "bbbb" if r["setting"] == settings[1] and r["seed"] == "1" else r["data"]} for r in same]
    doc = build_guidelines(tidy(changed), generated="2026-01-01T00:00:00+00:00")
    assert doc["provenance"]["settings_on_changed_data"] == {settings[1]: ["aaaa", "bbbb"]}
    warning = (f"warning: the runs of setting {settings[1]} did not all train on the same data (fingerprints: "
               "aaaa; bbbb): its data changed while it was searched, and its results mix the two")
    md, page = guidelines_markdown(doc), render_html(doc, {})
    assert f"- {warning}\n" in md and f"<li>{warning}</li>" in page
    for d in datasets:
        assert f"- data of the runs: {d}: aaaa\n" in md and f"<td>data of the runs</td><td>{d}: aaaa</td>" in page


def test_the_report_names_the_machines_of_its_runs() -> None:
    """A run repeats bit for bit only on the same kind of CPU with the same torch threads, which a
    trial's run records (tags dmtune.cpu, dmtune.torch_threads, from its worker): the report lists
    each pair its runs trained with; a run recorded without them adds none."""
    from dm_tune.reports._guidelines import guidelines_markdown
    from dm_tune.reports._html import render_html
    from dm_tune.reports._load import run_to_row

    tags = {"dmtune.cpu": "AMD EPYC", "dmtune.torch_threads": "1"}
    row = run_to_row("e", "r1", {"method": "cce"}, {"final_test_acc": 0.9, "final_val_acc": 0.9}, tags)
    assert row is not None and row["machine"] == "AMD EPYC, 1 torch thread"
    assert run_to_row("e", "r2", {"method": "cce"}, {"final_test_acc": 0.9, "final_val_acc": 0.9}, {})["machine"] == ""
    machines = ["AMD EPYC, 1 torch thread", "Intel(R) Xeon(R) Processor, 2 torch threads", ""]
    rows = [{**r, "machine": machines[i % 3]} for i, r in enumerate(known_runs())]
    doc = build_guidelines(tidy(rows), generated="2026-01-01T00:00:00+00:00")
    assert doc["provenance"]["machines_of_runs"] == machines[:2]
    md, page = guidelines_markdown(doc), render_html(doc, {})
    for m in machines[:2]:
        assert f"- machines of the runs: {m}\n" in md and f"<td>machines of the runs</td><td>{m}</td>" in page
