"""reports: the response surface across settings (fit, serialise, recommend, leave-one-setting-out)
on synthetic campaigns whose best (psi, rho) and gains over CCE are known."""

from __future__ import annotations

import html
import itertools
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dm_tune.errors import UserError
from dm_tune.reports import build_guidelines, load_guidelines, recommend
from dm_tune.reports._guidelines import dumps, guidelines_markdown
from dm_tune.reports._load import tidy
from dm_tune.reports._loso import _local_gp, _summary, leave_one_setting_out
from dm_tune.reports._surface import (dm_rows, fit_gp, fit_surface, fit_surface_model, gp_from_dict, gp_predict,
                                      gp_to_dict, grid, recommend_from_surface)

_IDS = itertools.count()
BEST_PSI, BEST_LOG_RHO = 0.5, 1.5
RATES = (0.0, 0.2, 0.4, 0.6)


def run(setting: str, stage: str, seed: int, val: float, test: float, psi: float | None = None,
        rho: float | None = None, baseline: str = "", method: str = "dm", cw: str = "none",
        **desc: Any) -> dict[str, Any]:
    """One trial run as load_runs sees it (params are strings; DM logged as psi, rho)."""
    params = dict(dataset="digits", noise="symmetric", noise_rate="0.4", imbalance="none", imbalance_ratio="1",
                  model="mlp", num_classes="10", pretrained="false", epochs="10")
    params.update({k: str(v) for k, v in desc.items()})
    return {"run_id": f"r{next(_IDS)}", "experiment": "study", "setting": setting, "stage": stage,
            "baseline": baseline, "status": "finished", "method": method, "seed": str(seed),
            "psi": "" if psi is None else str(psi), "rho": "" if rho is None else str(rho), "class_weighting": cw,
            "final_val_acc": val, "final_test_acc": test, "best_test_acc": test, "git_commit": "abc", **params}


def gain(psi: float, rho: float, offset: float) -> float:
    """Points over CCE: peaked at (psi 0.5, rho e^1.5), shifted by a setting-dependent offset."""
    return offset - 40 * (psi - BEST_PSI) ** 2 - 1.5 * (math.log(rho) - BEST_LOG_RHO) ** 2


def campaign(noise_sd: float = 0.3, cw_gain: dict[str, float] | None = None, n_search: int = 15,
             datasets: tuple[str, ...] = ("digits",), imbalance: str = "none", ratio: float = 1.0) -> pd.DataFrame:
    """Per (dataset, rate): random search trials, a confirmed arm at the optimum (3 seeds) and CCE
    (3 seeds). CCE's validation accuracy is 90 - 40 x rate points; DM's gain peaks at 20 x rate.
    Test accuracy = validation accuracy - 1 point. ``cw_gain``: extra trials with that class
    weighting, whose gain is higher by the given points."""
    rng = np.random.default_rng(0)
    rows = []
    for dataset, rate in itertools.product(datasets, RATES):
        key, cce, offset = f"{dataset}/{rate}", 0.9 - 0.4 * rate, 20 * rate
        desc = dict(dataset=dataset, noise="none" if rate == 0 else "symmetric", noise_rate=rate,
                    imbalance=imbalance, imbalance_ratio=ratio)
        for cw, extra in [("none", 0.0), *(cw_gain or {}).items()]:
            for _ in range(n_search):
                psi, rho = float(rng.uniform(0, 0.75)), float(math.exp(rng.uniform(math.log(0.25), math.log(12))))
                g = gain(psi, rho, offset) + extra + float(rng.normal(0, noise_sd))
                rows.append(run(key, "search", 0, cce + g / 100, cce + (g - 1) / 100, psi, rho, cw=cw, **desc))
        for seed in range(3):
            rows.append(run(key, "confirm", seed, cce + offset / 100, cce + (offset - 1) / 100, BEST_PSI,
                            math.exp(BEST_LOG_RHO), **desc))
            rows.append(run(key, "confirm", seed, cce, cce - 0.01, baseline="cce", method="cce", **desc))
    return tidy(rows)


@pytest.fixture(scope="module")
def surface() -> dict[str, Any]:
    return fit_surface(campaign())


def test_the_surface_recovers_the_optimum_across_settings(surface: dict[str, Any]) -> None:
    assert surface["n_rows"] == len(RATES) * (15 + 1)  # one row per arm: the confirmed one over its 3 seeds
    assert surface["encoding"]["features"] == ["psi", "log_rho", "noise_rate"]  # the rest never varies
    assert [s["best_gain"] for s in surface["settings"]] == pytest.approx([20 * r for r in RATES])
    for rate in (0.3, 0.4):  # between measured rates, and at one
        rec = recommend_from_surface(surface, 10, "symmetric", rate)
        assert rec["psi"] == pytest.approx(BEST_PSI, abs=0.05)
        assert math.log(rec["rho"]) == pytest.approx(BEST_LOG_RHO, abs=0.35)
        assert rec["predicted_gain"]["mean"] == pytest.approx(20 * rate, abs=1.0)
        assert rec["warnings"] == [] and rec["class_weighting"] == "none"
        g = rec["predicted_gain"]
        assert g["low"] == pytest.approx(g["mean"] - 1.96 * rec["predicted_std"]) and g["level"] == 0.95
    rec = recommend_from_surface(surface, 10, "symmetric", 0.3)
    assert {s["noise_rate"] for s in rec["leans_on"][:2]} == {0.2, 0.4}  # the two neighbouring rates
    assert all(1 >= s["correlation"] > 0 for s in rec["leans_on"]) and len(rec["leans_on"]) == 3


def test_the_region_holds_the_optimum_and_only_cells_within_one_point(surface: dict[str, Any]) -> None:
    rec = recommend_from_surface(surface, 10, "symmetric", 0.4)
    region, best = rec["region"], rec["predicted_gain"]["mean"]
    assert region["within_points"] == 1.0
    assert region["psi"][0] <= BEST_PSI <= region["psi"][1]
    assert region["rho"][0] <= math.exp(BEST_LOG_RHO) <= region["rho"][1]
    psis, rhos = grid(surface)
    cells = [(p, r) for p in psis for r in rhos]
    X = [[p, math.log(r), 0.4] for p, r in cells]
    mean, std = gp_predict(surface["model"], X)
    near = [c for c, m in zip(cells, mean) if m >= best - 1.0]
    assert region["psi"] == [min(p for p, _ in near), max(p for p, _ in near)]
    assert region["rho"] == pytest.approx([min(r for _, r in near), max(r for _, r in near)])
    assert max(mean) == pytest.approx(best, abs=0.05) and all(best - m <= 1.0 for c, m in zip(cells, mean) if c in near)
    wide = region["plausible"]
    assert wide["psi"][0] <= region["psi"][0] <= region["psi"][1] <= wide["psi"][1]
    assert wide["rho"][0] <= region["rho"][0] <= region["rho"][1] <= wide["rho"][1]


@pytest.fixture(scope="module")
def guidelines_text() -> str:
    return dumps(build_guidelines(campaign()))


@pytest.mark.parametrize("edit, problem", [
    (lambda m: m.update(theta=m["theta"][:3]), "surface.model.theta: '3 values' is not allowed; expected 5 values"),
    (lambda m: m["X"][1].pop(), "surface.model.X: 'a row of 2' is not allowed; expected rows of 3 values"),
    (lambda m: m["y"].pop(), "surface.model.y: "),
    (lambda m: m.update(feature_names=["psi", "log_rho", "log_num_classes"]), "surface.encoding.features: "),
    # numbers that pass as floats but break the kernel: exp() overflow, a negative jitter, an unknown feature
    (lambda m: m["theta"].__setitem__(0, 1e308), "surface.model.theta: 1e+308 is not allowed; expected finite log"),
    (lambda m: m.update(alpha=-1.0), "surface.model.alpha: -1.0 is not allowed; expected a finite jitter >= 0"),
    (lambda m: m.update(feature_names=["zzz", "log_rho", "noise_rate"]), "surface.model.feature_names: 'zzz'"),
    # within exp()'s range but far outside the fit's own bounds: intervals of 1e154 points, answered
    (lambda m: m.update(theta=[700.0] * len(m["theta"])), "surface.model.theta: 700.0 is not allowed; expected log "
                                                          "values within the fit's kernel.constant_value_bounds"),
    (lambda m: m["kernel"].update(length_scale_bounds=[0, 5]), "surface.model.kernel.length_scale_bounds: [0, 5]"),
])
def test_a_surface_whose_shapes_disagree_is_named(guidelines_text: str, edit: Any, problem: str) -> None:
    """A truncated theta was broadcast over every feature (another surface, silently), a short row
    of X was a numpy traceback: both are one line naming the field."""
    from dm_tune.reports._schema import validate_guidelines

    doc = json.loads(guidelines_text)
    assert validate_guidelines(doc) is None and len(doc["surface"]["model"]["feature_names"]) == 3
    edit(doc["surface"]["model"])
    assert (validate_guidelines(doc) or "").startswith(problem)


@pytest.mark.parametrize("one_thread_rows", [1024, 0])  # (0: the large surface's path, scipy's triangular solves)
def test_the_fitted_gp_round_trips_through_json(monkeypatch, one_thread_rows) -> None:
    from dm_tune.reports import _surface

    monkeypatch.setattr(_surface, "ONE_THREAD_ROWS", one_thread_rows)
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 1, size=(40, 3))
    y = 10 * np.sin(3 * X[:, 0]) + X[:, 1] + rng.normal(0, 0.1, 40)
    gp = fit_gp(X, y)
    d = json.loads(json.dumps(gp_to_dict(gp, ["a", "b", "c"], y)))
    assert set(d) >= {"feature_names", "X", "y", "theta", "kernel", "sklearn_version"} and len(d["theta"]) == 5
    rebuilt = gp_from_dict(d)
    Xq = rng.uniform(-0.2, 1.2, size=(25, 3))
    mean, std = gp.predict(Xq, return_std=True)
    mean2, std2 = rebuilt.predict(Xq, return_std=True)
    mean3, std3 = gp_predict(d, Xq)  # numpy, as recommend does
    assert np.allclose(mean, mean2, atol=1e-6, rtol=0) and np.allclose(std, std2, atol=1e-6, rtol=0)
    assert np.allclose(mean, mean3, atol=1e-6, rtol=0) and np.allclose(std, std3, atol=1e-6, rtol=0)


def test_a_small_gp_is_fitted_and_asked_on_one_blas_thread_and_a_large_one_keeps_its_threads() -> None:
    """OpenBLAS's threads on a small GP's matrices waited for cores on a busy machine: a 9-arm
    local GP took 22.6 s beside a search, 2.9 s on one thread. Fits and posteriors of fewer than
    ONE_THREAD_ROWS rows take one thread, and give the threads back after; larger ones keep them."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from dm_tune.reports._surface import ONE_THREAD_ROWS, blas_threads

    def threads() -> set[int]:
        return {int(pool["num_threads"]) for pool in threadpool_info() if pool["user_api"] == "blas"}

    np.linalg.cholesky(np.eye(2))  # (numpy's BLAS loaded)
    with threadpool_limits(limits=2, user_api="blas"):
        assert threads() == {2}
        with blas_threads(ONE_THREAD_ROWS - 1):
            assert threads() == {1}
        assert threads() == {2}
        with blas_threads(ONE_THREAD_ROWS):
            assert threads() == {2}


def test_leave_one_setting_out_scores_against_the_best_confirmed_arm() -> None:
    df = campaign()
    loso = leave_one_setting_out(df, start=fit_surface(df))
    assert loso is not None and "estimated from the setting's own trials" in loso["note"]
    rows = loso["rows"]
    assert [r["noise_rate"] for r in rows] == list(RATES)
    for r, rate in zip(rows, RATES):
        best_test = 100 * (0.9 - 0.4 * rate) + 20 * rate - 1  # the confirmed arm at the optimum
        assert r["best_arm"]["test_acc"] == pytest.approx(best_test)
        assert r["best_arm"]["psi"] == pytest.approx(BEST_PSI) and r["cce_test_acc"] == pytest.approx(
            100 * (0.9 - 0.4 * rate) - 1)
        for who in ("surface", "paper"):
            s = r[who]
            assert s["regret"] == pytest.approx(best_test - s["test_acc"])
            assert s["gain_over_cce"] == pytest.approx(s["test_acc"] - r["cce_test_acc"])
        # the surface's answer for a held-out setting is near the optimum: regret within a point
        assert r["surface"]["regret"] < 1.0
    summary = loso["summary"]
    assert summary["n_settings"] == 4
    assert summary["surface"]["mean_regret"] == pytest.approx(np.mean([r["surface"]["regret"] for r in rows]))
    assert summary["surface"]["beats_cce"] == sum(r["surface"]["gain_over_cce"] > 0 for r in rows) >= 3
    assert summary["paper"]["mean_regret"] > summary["surface"]["mean_regret"]  # paper's psi 1/3 at rate 0.2...


def test_above_hyperparameter_rows_the_surface_learns_its_kernel_on_a_subset_and_its_posterior_on_every_row(
        monkeypatch) -> None:
    """An optimiser step is O(rows^3) and holds rows^2 x features floats: at thousands of arms the
    hyper-parameters come from a seeded subset of HYPERPARAMETER_ROWS rows, the posterior from all of
    them, and the report says so. The answer stays at the campaign's known optimum."""
    from dm_tune.reports import _surface
    from dm_tune.reports._guidelines import surface_markdown
    from dm_tune.reports._html import _surface_section
    from dm_tune.reports._surface import features, hyperparameter_subset, training_rows

    df = campaign()
    whole = fit_surface(df)
    n = whole["n_rows"]
    assert whole["fitted"]["hyperparameter_rows"] == n and "optimised on" not in "\n".join(surface_markdown(whole))
    monkeypatch.setattr(_surface, "HYPERPARAMETER_ROWS", 40)
    part = fit_surface(df)
    rows, y = training_rows(df)
    X = np.asarray(features(rows, part["encoding"]))
    pick = hyperparameter_subset(X)
    assert part["fitted"]["hyperparameter_rows"] == len(pick) == 40 and len(part["model"]["X"]) == n == part["n_rows"]
    assert part["model"]["theta"] == pytest.approx(fit_gp(X[pick], np.asarray(y)[pick]).kernel_.theta.tolist())
    assert part["model"]["theta"] != pytest.approx(whole["model"]["theta"], abs=1e-3)
    for rate in RATES:
        rec = recommend_from_surface(part, 10, "symmetric", rate, "none", 1.0)
        assert rec["psi"] == pytest.approx(BEST_PSI, abs=0.1), rate
    phrase = f"its kernel's hyper-parameters optimised on 40 of the {n} rows (seeded at random), its posterior on all"
    assert phrase in "\n".join(surface_markdown(part)) and html.escape(phrase) in "".join(_surface_section(part))
    # a kept model is the rows and the hyper-parameters, and predicts as scikit-learn's GP of them does
    kept = fit_surface_model(X, y, part["encoding"]["features"], theta0=part["model"]["theta"], optimize=False)
    assert kept["theta"] == pytest.approx(part["model"]["theta"]) and kept["X"] == X.tolist()
    mean, std = gp_predict(kept, X[:5])
    ref_mean, ref_std = gp_from_dict(kept).predict(X[:5], return_std=True)
    assert mean == pytest.approx(ref_mean, abs=1e-6) and std == pytest.approx(ref_std, abs=1e-6)


def test_the_hyper_parameters_subset_makes_every_varying_feature_vary(monkeypatch) -> None:
    """A class weighting two arms of 3,000 ran is constant in most random subsets of 100: its
    length scale would stay where the optimiser started it. The subset takes a further row for each
    feature that varies across the rows but not within it."""
    from dm_tune.reports import _surface
    from dm_tune.reports._surface import hyperparameter_subset

    monkeypatch.setattr(_surface, "HYPERPARAMETER_ROWS", 100)
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.uniform(0, 0.75, 3000), rng.normal(0, 1, 3000), np.zeros(3000), np.full(3000, 0.4)])
    X[[17, 2500], 2] = 1.0  # cw=inverse on two arms; the last feature never varies
    plain = np.sort(np.random.default_rng(0).choice(3000, 100, replace=False))
    assert not X[plain, 2].any()  # (the draw the subset starts from misses both)
    pick = hyperparameter_subset(X)
    assert len(pick) == 101 and set(plain) < set(pick) and X[pick, 2].sum() == 1.0
    assert list(pick) == sorted(pick) and len(set(pick)) == len(pick)
    X[:, 2] = 0.0
    assert list(hyperparameter_subset(X)) == list(plain)  # nothing missing: the seeded draw alone


def _refit_thetas(monkeypatch, df: pd.DataFrame, start: dict[str, Any] | None, **kwargs: Any):
    """leave_one_setting_out's answer and, per held-out refit, (theta it started from, theta it ended with)."""
    from dm_tune.reports import _loso

    seen = []

    def spy(X, y, names, n_restarts_optimizer=0, theta0=None, optimize=True):
        model = fit_surface_model(X, y, names, n_restarts_optimizer, theta0, optimize=optimize)
        seen.append((theta0, model["theta"]))
        return model

    monkeypatch.setattr(_loso, "fit_surface_model", spy)
    return leave_one_setting_out(df, start=start, **kwargs), seen


def test_leave_one_setting_out_keeps_the_full_fits_hyper_parameters_when_told_or_from_kept_rows_up(monkeypatch) -> None:
    """A refit that re-optimises its kernel costs tens of O(rows^3) likelihood evaluations; at
    thousands of arms leave-one-setting-out keeps the full fit's hyper-parameters (one factorisation
    each) and says so in the document. Both ways recommend alike on a campaign with a known optimum."""
    from dm_tune.reports import _loso
    from dm_tune.reports._guidelines import loso_markdown
    from dm_tune.reports._html import _loso_section

    df = campaign()
    start = fit_surface(df)
    refitted, moved = _refit_thetas(monkeypatch, df, start, hyperparameters="refit")
    kept, stayed = _refit_thetas(monkeypatch, df, start, hyperparameters="kept")
    assert len(moved) == len(stayed) == len(RATES)
    assert all(after == pytest.approx(before, abs=1e-12) for before, after in stayed)
    assert not all(after == pytest.approx(before, abs=1e-3) for before, after in moved)  # (the optimiser ran)
    assert (refitted["hyperparameters"], kept["hyperparameters"]) == ("refit", "kept")
    assert kept["n_surface_rows"] == start["n_rows"]
    for r, k in zip(refitted["rows"], kept["rows"]):
        assert k["setting"] == r["setting"] and k["surface"]["psi"] == pytest.approx(r["surface"]["psi"], abs=0.1)
        assert k["surface"]["regret"] < 1.0
    assert "kept from the fit on every setting" in "\n".join(loso_markdown(kept))
    assert "kept from the fit on every setting" in "".join(_loso_section(kept, {}))
    assert "re-optimised without the held-out setting" in "\n".join(loso_markdown(refitted))
    legacy = {k: v for k, v in kept.items() if k not in ("hyperparameters", "n_surface_rows")}
    assert "re-optimised without the held-out setting" in "\n".join(loso_markdown(legacy))

    # auto: re-optimised below KEPT_ROWS surface rows, kept from there up; without a full fit, re-optimised
    assert _refit_thetas(monkeypatch, df, start)[0]["hyperparameters"] == "refit"
    monkeypatch.setattr(_loso, "KEPT_ROWS", start["n_rows"])
    assert _refit_thetas(monkeypatch, df, start)[0]["hyperparameters"] == "kept"
    no_start, seen = _refit_thetas(monkeypatch, df, None, hyperparameters="kept")
    assert no_start["hyperparameters"] == "refit" and all(before is None for before, _ in seen)
    with pytest.raises(ValueError, match="hyperparameters must be one of auto, refit, kept, not 'fixed'"):
        leave_one_setting_out(df, start=start, hyperparameters="fixed")
    with pytest.raises(ValueError, match="optimize=False keeps theta0"):
        fit_surface_model([[0.0], [1.0]], [0.0, 1.0], ["psi"], optimize=False)


def test_a_kept_refit_without_a_feature_keeps_the_others_hyper_parameters_by_name(monkeypatch) -> None:
    """Holding out the one setting of a second dataset drops the surface's dataset feature from the
    refit: the refit keeps the full fit's constant, noise and every other length scale, by name."""
    both = campaign(datasets=("digits", "mnist1d"))
    df = tidy(both[(both["dataset"] == "digits") | (both["setting"] == "mnist1d/0.4")].to_dict("records"))
    start = fit_surface(df)
    names = start["encoding"]["features"]
    assert names == ["psi", "log_rho", "noise_rate", "dataset=digits", "dataset=mnist1d"]
    kept, seen = _refit_thetas(monkeypatch, df, start, hyperparameters="kept")
    assert [r["setting"] for r in kept["rows"]][-1] == "mnist1d/0.4" and len(seen) == 5
    theta = start["model"]["theta"]  # constant, 5 length scales, noise
    assert seen[-1][1] == pytest.approx(theta[:4] + theta[-1:])  # (no dataset feature: one dataset left)
    assert all(after == pytest.approx(theta) for _, after in seen[:-1])


def test_the_local_gp_estimates_a_measured_arm_near_its_measured_mean() -> None:
    """Five arms of a measured setting (digits, 40% symmetric noise, 5 epochs; final test
    accuracies): the local GP's optimiser, with two restarts, ended in its flat "all noise"
    optimum, and scored the measured best arm (89.7) at the arms' mean, 71.0: a regret of 18.7
    points for the setting's own best arm in the leave-one-setting-out table."""
    from dm_tune.reports._loso import LOCAL_RESTARTS, _scored

    arms = {(0.41161, 3.984243): (73.1481, 74.6296, 73.7037), (1 / 3, 3.079201): (87.7778, 90.9259, 90.3704),
            (2 / 3, 3.555556): (62.0370, 47.9630), (0.5, 4.0): (48.8889, 48.8889),
            (0.5, 2.0): (87.0370, 86.4815, 89.0741)}
    runs = pd.DataFrame([{"setting": "s", "arm": f"dm({psi:.3f},{rho:.3f})", "seed": seed, "psi": psi, "rho": rho,
                          "class_weighting": "none", "final_test_acc": acc / 100}
                         for (psi, rho), accs in arms.items() for seed, acc in enumerate(accs)])
    local = _local_gp(runs, LOCAL_RESTARTS)
    best = float(np.mean(arms[(1 / 3, 3.079201)]))
    for (psi, rho), accs in arms.items():  # every arm, within 3 points of its own mean
        est = _scored(local, psi, rho, "none", best, 89.26)["test_acc"]
        assert abs(est - float(np.mean(accs))) < 3.0, (psi, rho, est)


def test_an_estimate_beyond_the_measured_arms_is_marked_capped() -> None:
    """The local GP's estimate is kept within the arms' range: one above it got the best arm's
    accuracy, a regret of 0 that no trial measured, shown like any other. It is marked (the
    Markdown, the summary), with the count of such estimates."""
    from dm_tune.reports._guidelines import loso_markdown
    from dm_tune.reports._loso import _scored

    df = campaign()
    loso = leave_one_setting_out(df, start=fit_surface(df))
    row = loso["rows"][0]
    local = _local_gp(dm_rows(df[df["setting"] == row["setting"]]), 0)
    sf = row["surface"]
    raw = _scored({**local, "range": [-1e9, 1e9]}, sf["psi"], sf["rho"], sf["class_weighting"], 80.0, 60.0)
    assert not raw["capped"]
    capped = _scored({**local, "range": [-1e9, raw["test_acc"] - 5.0]}, sf["psi"], sf["rho"], sf["class_weighting"],
                     raw["test_acc"] - 5.0, 60.0)
    assert capped["capped"] == "above" and capped["test_acc"] == pytest.approx(raw["test_acc"] - 5.0)
    assert capped["regret"] == 0.0
    for r in loso["rows"]:
        r["surface"] = {**r["surface"], "capped": ""}
        r["paper"] = r["paper"] and {**r["paper"], "capped": ""}
    assert "capped" not in "\n".join(loso_markdown({**loso, "summary": _summary(loso["rows"])}))
    row["surface"] = capped
    loso["summary"] = _summary(loso["rows"])
    assert loso["summary"]["surface"]["capped_above"] == 1
    text = "\n".join(loso_markdown(loso))
    assert " \\*" in text and "capped: 1 at the highest arm mean measured: optimistic)" in text
    assert "†" not in text and "lowest" not in text
    # below every arm: the worst arm's accuracy, a regret no trial measured either, marked apart
    low = _scored({**local, "range": [raw["test_acc"] + 5.0, 1e9]}, sf["psi"], sf["rho"], sf["class_weighting"],
                  raw["test_acc"] + 5.0, 60.0)
    assert low["capped"] == "below" and low["test_acc"] == pytest.approx(raw["test_acc"] + 5.0)
    loso["rows"][1]["surface"] = low
    loso["summary"] = _summary(loso["rows"])
    assert loso["summary"]["surface"]["capped_below"] == 1
    text = "\n".join(loso_markdown(loso))
    assert " †" in text and "capped: 1 at the highest arm mean measured: optimistic; 1 at the lowest arm mean " \
                               "measured)" in text
    assert "† capped: the local GP's estimate there was below" in text
    from dm_tune.reports._html import _loso_section

    page = "".join(_loso_section(loso, {}))
    assert f"{low['test_acc']:.1f} +/- {low['test_acc_std']:.1f} †</td>" in page
    assert "* capped: the local GP&#x27;s estimate there was above" in page
    assert "† capped: the local GP&#x27;s estimate there was below" in page
    # a file of the report before this count marked its rows but counted only estimates capped above
    for who in ("surface", "paper"):
        loso["summary"][who].pop("capped_below", None)
    assert "† capped: the local GP's estimate there was below" in "\n".join(loso_markdown(loso))


def test_a_dm_family_baseline_is_a_point_of_the_surface_but_never_a_settings_measured_best() -> None:
    """IMAE (DM at lambda 0) validating above every searched arm: the per-setting analysis ignores
    it, so the surface's measured best must too (it contradicted the guideline)."""
    rows = [run("s", "confirm", seed, 0.8, 0.79, 0.5, 2.0) for seed in range(3)]
    rows += [run("s", "confirm", seed, 0.9, 0.89, 0.0, 2.0, baseline="imae") for seed in range(3)]
    rows += [run("s", "confirm", seed, 0.6, 0.59, baseline="cce", method="cce") for seed in range(3)]
    rows += [run("s", "search", 0, 0.7 + 0.01 * i, 0.7, 0.1 * i, 1.0 + i) for i in range(6)]
    surf = fit_surface(tidy(rows))
    (measured,) = surf["settings"]
    assert measured["best_arm"].startswith("dm(") and measured["best_psi"] == pytest.approx(0.5)
    assert measured["best_gain"] == pytest.approx(20.0) and measured["n_rows"] == 8  # 6 search + confirmed + imae


def test_an_arm_that_diverged_on_some_seeds_is_never_a_settings_measured_best() -> None:
    """B validates best on its one finished seed and diverged on two: the per-setting analysis
    rejects it, so the surface's measured best must too."""
    rows = [run("s", "confirm", seed, 0.80, 0.79, 0.5, 2.0) for seed in range(3)]
    rows += [run("s", "confirm", 0, 0.95, 0.94, 0.7, 4.0)]
    rows += [run("s", "confirm", seed, math.nan, math.nan, 0.7, 4.0) | {"status": "diverged"} for seed in (1, 2)]
    rows += [run("s", "confirm", seed, 0.6, 0.59, baseline="cce", method="cce") for seed in range(3)]
    rows += [run("s", "search", 0, 0.7 + 0.01 * i, 0.7, 0.1 * i, 1.0 + i) for i in range(6)]
    df = tidy(rows)
    from dm_tune.reports._analysis import analyse_setting

    (measured,) = fit_surface(df)["settings"]
    assert measured["best_arm"] == analyse_setting(df)["arm"] and measured["best_psi"] == pytest.approx(0.5)


def test_a_setting_measured_by_two_studies_is_held_out_whole(monkeypatch) -> None:
    """KEY@A and KEY@B are one setting measured twice: holding out one while the other trains the
    surface would score the surface on a setting it has seen."""
    from dm_tune.reports import _loso

    df = campaign(n_search=6)
    twin = df[df["setting"] == "digits/0.4"].assign(experiment="b")
    both = tidy(pd.concat([df.assign(experiment="a"), twin]).to_dict("records"))
    assert {"digits/0.4@a", "digits/0.4@b"} <= set(both["setting"])
    seen: dict[int, set[str]] = {}
    real = _loso.measured_settings
    monkeypatch.setattr(_loso, "measured_settings", lambda r, y: seen.setdefault(len(seen), {x["setting"] for x in r})
                        and real(r, y))
    loso = leave_one_setting_out(both, start=fit_surface(both))
    held = [r["setting"] for r in loso["rows"]]
    for setting, trained_on in zip(held, seen.values()):
        assert setting not in trained_on and setting.split("@")[0] not in {k.split("@")[0] for k in trained_on}


@pytest.mark.parametrize("extra, chosen", [(3.0, "inverse"), (0.4, "none")])
def test_class_weighting_is_chosen_only_when_it_helps_by_a_point(extra: float, chosen: str) -> None:
    surf = fit_surface(campaign(cw_gain={"inverse": extra}, n_search=12, imbalance="longtail", ratio=10.0))
    assert surf["encoding"]["class_weightings"] == ["none", "inverse"] and "cw=inverse" in surf["encoding"]["features"]
    rec = recommend_from_surface(surf, 10, "symmetric", 0.4, "longtail", 10.0)
    assert rec["class_weighting"] == chosen
    assert rec["class_weighting_gain"]["inverse"] == pytest.approx(extra, abs=0.8)


def test_balanced_data_gets_no_class_weighting():
    """On balanced data every scheme weighs each class 1: runs that asked for one count as none,
    and a recommendation for balanced data never names one."""
    imbalanced = campaign(cw_gain={"inverse": 3.0}, n_search=12, imbalance="longtail", ratio=10.0)
    balanced = campaign(cw_gain={"inverse": 3.0}, n_search=12)
    assert fit_surface(balanced)["encoding"]["class_weightings"] == ["none"]
    surf = fit_surface(imbalanced)
    rec = recommend_from_surface(surf, 10, "symmetric", 0.4)  # balanced request, imbalance not measured
    assert rec["class_weighting"] == "none" and set(rec["class_weighting_gain"]) == {"none"}


def test_extrapolation_is_warned_about(surface: dict[str, Any]) -> None:
    def warned(**kwargs: Any) -> list[str]:
        args = dict(num_classes=10, noise_type="symmetric", noise_rate=0.4) | kwargs
        return recommend_from_surface(surface, **args)["warnings"]

    assert warned() == []
    assert any("noise rate 0.8 is outside the measured range [0, 0.6]" in w for w in warned(noise_rate=0.8))
    assert any("noise type 'pair' was not measured" in w for w in warned(noise_type="pair"))
    # an unmeasured type's rate was not compared with any measured rate
    assert any("noise rate 0.8 is outside the measured range [0, 0.6] of any noise type" in w
               for w in warned(noise_type="pair", noise_rate=0.45, num_classes=10) + warned(noise_type="file",
                                                                                          noise_rate=0.8))
    assert any("number of classes 100 is outside the measured range [10, 10]" in w for w in warned(num_classes=100))
    assert any("imbalance 'longtail' was not measured" in w for w in warned(imbalance="longtail", imbalance_ratio=10))
    assert any("dataset 'cifar10' was not measured" in w for w in warned(dataset="cifar10"))
    assert warned(dataset="digits") == [] and warned(noise_type="none", noise_rate=0.0) == []
    # Noisy runs widen the interval, but a well-measured setting is not one the surface is unsure of;
    # a setting far from every measured one is.
    noisy = fit_surface(campaign(noise_sd=4.0))
    rec = recommend_from_surface(noisy, 10, "symmetric", 0.4)
    assert rec["predicted_std"] > 3 > rec["surface_std"] and not any("unsure" in w for w in rec["warnings"])
    sparse = fit_surface(campaign(noise_sd=4.0, n_search=6))
    far = recommend_from_surface(sparse, 10, "symmetric", 0.99)  # measured up to 0.6
    assert far["surface_std"] > 3 and any("the surface is unsure here: its own std" in w for w in far["warnings"])


def test_factors_measured_apart_but_never_together_are_warned_about() -> None:
    """Symmetric noise on balanced digits at rates 0-0.6, pair noise on balanced MNIST-1D, longtail
    imbalance at rates 0 and 0.2 only: pair noise with longtail imbalance, pair noise on digits or
    longtail at rate 0.6 are combinations the surface only infers."""
    pair = campaign(n_search=6, datasets=("mnist1d",))
    pair["noise"] = pair["noise"].replace("symmetric", "pair")
    longtail = campaign(n_search=6, imbalance="longtail", ratio=10.0)
    longtail = longtail[longtail["noise_rate"] <= 0.2].assign(setting=lambda d: d["setting"] + "-lt")
    surf = fit_surface(pd.concat([campaign(n_search=6), pair, longtail], ignore_index=True))

    def warned(**kwargs: Any) -> list[str]:
        args = dict(num_classes=10, noise_type="pair", noise_rate=0.4) | kwargs
        return [w for w in recommend_from_surface(surf, **args)["warnings"] if w.startswith("extrapolation")]

    assert warned() == [] == warned(dataset="mnist1d") == warned(noise_type="symmetric", noise_rate=0.2,
                                                                  imbalance="longtail", imbalance_ratio=10.0)
    (together,) = warned(imbalance="longtail", imbalance_ratio=10.0)
    assert together.startswith("extrapolation: pair noise with longtail imbalance was not measured together")
    (on_digits,) = warned(dataset="digits")
    assert on_digits.startswith("extrapolation: pair noise on balanced data on digits was not measured together")
    (rate,) = warned(noise_type="symmetric", noise_rate=0.6, imbalance="longtail", imbalance_ratio=10.0)
    assert rate == ("extrapolation: noise rate 0.6 is outside [0, 0.2], the rates measured for symmetric noise "
                    "with longtail imbalance")
    # told beside another extrapolation (a class count, an unmeasured dataset), not in its place
    more = warned(imbalance="longtail", imbalance_ratio=10.0, num_classes=20)
    assert len(more) == 2 and more[0].startswith("extrapolation: number of classes 20")
    assert more[1] == together
    unknown = warned(imbalance="longtail", imbalance_ratio=10.0, dataset="cifar10")
    assert together in unknown


def test_an_unknown_dataset_gets_no_dataset_feature() -> None:
    surf = fit_surface(campaign(n_search=8, datasets=("digits", "mnist1d")))
    assert {"dataset=digits", "dataset=mnist1d"} <= set(surf["encoding"]["features"])
    rec = recommend_from_surface(surf, 10, "symmetric", 0.4, dataset="svhn")
    assert any("dataset 'svhn' was not measured" in w for w in rec["warnings"])
    assert recommend_from_surface(surf, 10, "symmetric", 0.4, dataset="mnist1d")["warnings"] == []


def test_a_confirmed_arm_that_diverged_on_a_seed_is_still_preferred_to_search_arms_as_in_the_analysis() -> None:
    """Every confirmed arm diverged on one confirm seed: the analysis chooses among them (and says
    so); the surface's measured best had taken a search arm, so recommend named another arm."""
    from dm_tune.reports._analysis import analyse_setting

    rows = []
    for psi, rho, val in ((0.5, 2.0, 0.80), (0.6, 3.0, 0.78)):
        rows += [run("s", "confirm", seed, val, val - 0.01, psi, rho) for seed in range(2)]
        rows += [run("s", "confirm", 2, math.nan, math.nan, psi, rho) | {"status": "diverged"}]
    rows += [run("s", "confirm", seed, 0.6, 0.59, baseline="cce", method="cce") for seed in range(3)]
    rows += [run("s", "search", 0, 0.7 + 0.01 * i, 0.7, 0.1 * i, 1.0 + i) for i in range(6)]
    rows += [run("s", "search", 0, 0.85, 0.84, 0.3, 9.0)]  # searched once, better than both confirmed arms
    df = tidy(rows)
    (measured,) = fit_surface(df)["settings"]
    assert measured["best_arm"] == analyse_setting(df)["arm"] and measured["best_stage"] == "confirm"
    assert measured["best_psi"] == pytest.approx(0.5) and measured["best_gain"] == pytest.approx(20.0)


def test_arms_at_one_point_fit_no_surface() -> None:
    """Every searched arm diverged and IMAE alone finished: a surface fitted on its one point gave
    a zero-width 95% interval (+16.3 to +16.3) for a setting the report could not resolve."""
    rows = [run("s", "confirm", seed, 0.6, 0.59, baseline="cce", method="cce") for seed in range(3)]
    rows += [run("s", "confirm", seed, 0.76, 0.75, 0.0, 2.0, baseline="imae") for seed in range(3)]
    rows += [run("s", "search", 0, math.nan, math.nan, 0.1 * i, 1.0 + i) | {"status": "diverged"} for i in range(4)]
    df = tidy(rows)
    assert fit_surface(df) is None
    doc = build_guidelines(df, generated="2026-01-01T00:00:00+00:00")
    assert doc["surface"] is None and "No surface was fitted" in guidelines_markdown(doc)
    with pytest.raises(UserError, match="no measured settings to recommend from"):  # as the report: none resolved
        recommend(doc, num_classes=10, noise_type="symmetric", noise_rate=0.4)
    more = rows + [run("s", "search", 0, 0.72, 0.71, 0.3, 1.0)]
    assert fit_surface(tidy(more))["n_rows"] == 2


def test_recommend_names_the_model_and_the_arms_the_surface_leans_on() -> None:
    rows = [run("s", "confirm", seed, 0.6, 0.59, baseline="cce", method="cce") for seed in range(3)]
    rows += [run("s", "confirm", seed, 0.76, 0.75, 0.0, 2.0, baseline="imae") for seed in range(3)]
    rows += [run("s", "search", 0, 0.7 + 0.01 * i, 0.7, 0.1 * i, 1.0 + i) for i in range(6)]
    rows += [run("s", "search", seed, 0.9, 0.89, 0.5, -2.0) for seed in (0, 1)]  # beta < 0: not on the surface
    doc = build_guidelines(tidy(rows), generated="2026-01-01T00:00:00+00:00")
    assert doc["surface"]["n_rows"] == 7 and doc["surface"]["n_baseline_rows"] == 1
    assert "fitted on 7 arms (6 DM, 1 IMAE; 1 DM arm(s) with beta < 0 left out, the surface covers beta > 0)" in (
        guidelines_markdown(doc))
    rec = recommend(doc, num_classes=10, noise_type="symmetric", noise_rate=0.4, dataset="digits")
    assert rec.leans_on[0]["model"] == "mlp"
    assert "7 arms (6 DM, 1 IMAE; 1 DM arm(s) with beta < 0 left out" in rec.evidence
    assert "(digits, mlp)" in rec.evidence and "?" not in rec.evidence


def test_a_prediction_above_every_arm_of_the_measured_setting_asked_for_is_warned_about(surface) -> None:
    """The shipped guidelines recommended psi 0.75 for clean digits at +5.1 predicted, where the
    setting's own best arm had gained +0.7: said, with the measured arm, only for that setting."""
    import copy

    plain = recommend_from_surface(surface, 10, "symmetric", 0.4, dataset="digits")
    assert not any("was measured" in w for w in plain["warnings"])
    low = copy.deepcopy(surface)
    (m,) = [m for m in low["settings"] if m["noise_rate"] == 0.4]
    m["best_gain"] = plain["predicted_gain"]["mean"] - 3.0
    r = recommend_from_surface(low, 10, "symmetric", 0.4, dataset="digits")
    (w,) = [w for w in r["warnings"] if "was measured" in w]
    assert w.startswith(f"this setting was measured ({m['setting']}): its best arm gained {m['best_gain']:+.1f} points")
    assert "prefer the measured arm" in w
    # and the gain predicted for it is no more than its own best arm's (it was +3 points above)
    assert r["predicted_gain"]["mean"] == pytest.approx(m["best_gain"])
    assert r["predicted_gain"]["high"] - r["predicted_gain"]["low"] == pytest.approx(
        plain["predicted_gain"]["high"] - plain["predicted_gain"]["low"], rel=0.2)
    assert "capped at the measured gain, its interval moved down with it" in w
    assert not any(x.startswith("the surface predicted") for x in r["warnings"])  # one cap, said once
    assert not any("was measured" in w for w in recommend_from_surface(low, 10, "symmetric", 0.2)["warnings"])
    assert not any("was measured" in w for w in recommend_from_surface(low, 10, "pair", 0.4)["warnings"])


def test_guidelines_carry_the_surface_and_recommend_json_on_the_command_line(tmp_path: Path) -> None:
    doc = build_guidelines(campaign(n_search=10), generated="2026-01-01T00:00:00+00:00")
    path = tmp_path / "guidelines.json"
    path.write_text(dumps(doc))
    loaded = load_guidelines(path)
    assert loaded["schema_version"] == 2 and loaded["surface"]["task"] == "classification"
    assert len(loaded["loso"]["rows"]) == 4
    md = guidelines_markdown(loaded)
    assert "## Response surface" in md and "log_rho" in md and "Over 4 held-out settings" in md
    rec = recommend(loaded, num_classes=10, noise_type="symmetric", noise_rate=0.4, dataset="digits")
    assert rec.region is not None and rec.psi == pytest.approx(BEST_PSI, abs=0.05)
    code = ("import json, sys, contextlib, io\n"
            "from dm_tune.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            f"    rc = main(['recommend', '--num-classes', '10', '--noise-rate', '0.4', '--dataset', 'digits',\n"
            f"               '--guidelines', {str(path)!r}, '--json'])\n"
            "print(json.dumps({'rc': rc, 'rec': json.loads(buf.getvalue()),\n"
            "                  'heavy': [m for m in ('torch', 'ray', 'mlflow', 'pandas', 'optuna', 'sklearn')\n"
            "                            if m in sys.modules]}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(proc.stdout)
    assert out["rc"] == 0 and out["heavy"] == []  # recommend stays light: numpy only
    rec_json = out["rec"]
    # (class_weighting_gain, which the README says --json holds, was left out)
    assert set(rec_json) == {"lam", "beta", "psi", "rho", "evidence", "settings", "warnings", "class_weighting",
                             "class_weighting_gain", "region", "predicted_gain", "predicted_std", "surface_std",
                             "leans_on", "guidelines"}
    assert rec_json["class_weighting_gain"]["none"] == 0.0
    assert set(rec_json["region"]) == {"psi", "rho", "plausible", "within_points"}
    assert set(rec_json["predicted_gain"]) == {"mean", "low", "high", "level", "metric"}
    assert rec_json["predicted_gain"]["metric"] == "final validation accuracy, points over CCE"
    assert rec_json["psi"] == pytest.approx(rec.psi) and rec_json["class_weighting"] == "none"


def test_a_surface_that_passes_the_schema_but_cannot_be_used_is_one_line() -> None:
    """Lists the schema cannot relate (a dataset feature with no dataset in the encoding) made numpy
    tracebacks deep in the prediction: one line naming the surface block, and what to do."""
    import copy

    from dm_tune.errors import UserError
    from dm_tune.reports._recommend import recommend
    from dm_tune.reports._schema import default_guidelines_path, load_guidelines, validate_guidelines

    shipped = load_guidelines(default_guidelines_path())
    no_datasets, huge_target = copy.deepcopy(shipped), copy.deepcopy(shipped)
    no_datasets["surface"]["encoding"]["datasets"] = []
    huge_target["surface"]["model"]["y"][0] = 1e308  # its std overflows: NaN predictions
    for doc in (no_datasets, huge_target):
        assert validate_guidelines(doc) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy's RuntimeWarnings were printed, several lines, before the error
            with pytest.raises(UserError, match=r"the guidelines' surface block cannot be used \(.*\); write it again"):
                recommend(doc, num_classes=10, noise_type="symmetric", noise_rate=0.4, dataset="digits")
    assert recommend(shipped, num_classes=10, noise_type="symmetric", noise_rate=0.4, dataset="digits").lam > 0
    # names the surface's vocabularies hold are dm-tune's: a class weighting 'bogus' was recommended (and
    # printed in the try: line), a setting's noise 'weird' taken
    bogus, weird = copy.deepcopy(shipped), copy.deepcopy(shipped)
    bogus["surface"]["encoding"]["class_weightings"] = ["none", "bogus"]
    weird["surface"]["settings"][0]["noise"] = "weird"
    assert validate_guidelines(bogus).startswith("surface.encoding.class_weightings[1]: 'bogus' is not allowed; "
                                                 "expected one of: none, inverse, sqrt-inverse, effective-number")
    assert validate_guidelines(weird).startswith("surface.settings[0].noise: 'weird' is not allowed")
    from dm_tune.class_weighting import SCHEMES
    from dm_tune._names import CLASS_WEIGHTING_NAMES

    assert CLASS_WEIGHTING_NAMES == SCHEMES  # the light copy follows the schemes


@pytest.mark.parametrize("key", ["n_rows", "n_baseline_rows", "n_negative_beta_arms"])
def test_a_surface_whose_arm_counts_are_no_counts_is_refused_or_read_as_unstated(key: str, tmp_path: Path,
                                                                                   capsys: Any) -> None:
    """The counts the text states ("381 arms (379 DM, 2 IMAE)"): text, NaN or null there was an
    int() traceback from recommend and validate (which left its progress file behind)."""
    import copy

    from dm_tune.reports._recommend import recommend
    from dm_tune.reports._schema import default_guidelines_path, load_guidelines, validate_guidelines
    from dm_tune.reports._surface import arms_phrase

    shipped = load_guidelines(default_guidelines_path())
    for bad, words in (("garbage", "'garbage' is not allowed; expected an integer"), (-3, "-3 is not allowed"),
                       (2.5, "2.5 is not allowed; expected an integer")):
        doc = copy.deepcopy(shipped)
        doc["surface"][key] = bad
        assert f"surface.{key}: {words}" in str(validate_guidelines(doc))
    unstated = copy.deepcopy(shipped)
    unstated["surface"][key] = None
    assert validate_guidelines(unstated) is None
    assert arms_phrase(unstated["surface"]).split()[0].isdigit()
    assert recommend(unstated, num_classes=10, noise_type="symmetric", noise_rate=0.4, dataset="digits").lam > 0
    from dm_tune.cli import main

    doc = copy.deepcopy(shipped)
    doc["surface"][key] = "garbage"
    (tmp_path / "g.json").write_text(json.dumps(doc))
    capsys.readouterr()
    argv = ["recommend", "--num-classes", "10", "--noise-rate", "0.3", "--guidelines", str(tmp_path / "g.json")]
    assert main(argv) == 2
    assert f"surface.{key}: 'garbage' is not allowed; expected an integer" in capsys.readouterr().err


def test_a_surface_target_is_paired_with_cce_on_the_arms_own_seeds() -> None:
    """An arm searched on seeds 0 and 1 is compared with CCE on seeds 0 and 1 (93.2 and 91.2), not with
    CCE's mean over its three confirm seeds: its gain is -0.2 points, not +0.27."""
    from dm_tune.reports._surface import training_rows

    rows = [run("s", "search", s, v, v - 0.01, 0.3, 2.0) for s, v in ((0, 0.920), (1, 0.920))]
    rows += [run("s", "confirm", s, v, v - 0.01, baseline="cce", method="cce")
             for s, v in ((0, 0.932), (1, 0.912), (2, 0.875))]
    rows += [run("s", "search", 3, 0.90, 0.89, 0.6, 4.0)]  # a seed CCE never ran: against CCE's mean
    described, y = training_rows(tidy(rows))
    by_psi = {round(float(r["psi"]), 2): v for r, v in zip(described, y)}
    assert by_psi[0.3] == pytest.approx(92.0 - 92.2)
    assert by_psi[0.6] == pytest.approx(90.0 - (93.2 + 91.2 + 87.5) / 3)


def test_recommend_stays_within_the_knobs_that_were_searched_and_says_when_it_is_at_their_edge() -> None:
    """Arms searched at psi up to 0.4 and rho up to 3, the gain rising with both: the GP, its length
    scales long, extended the trend to the grid's corner, psi 0.75 and rho 12 (beta 114, never run),
    +16.7 points [15.9, 17.5], and warned of nothing."""
    rng = np.random.default_rng(1)
    rows = []
    for rate in (0.2, 0.4, 0.6):
        key, cce = f"digits/{rate}", 0.9 - 0.4 * rate
        for _ in range(20):
            psi, rho = float(rng.uniform(0, 0.4)), float(math.exp(rng.uniform(math.log(0.5), math.log(3))))
            g = 10 * rate + 15 * psi + math.log(rho) + float(rng.normal(0, 0.2))
            rows.append(run(key, "search", 0, cce + g / 100, cce + g / 100, psi, rho, noise_rate=rate))
        rows += [run(key, "confirm", seed, cce, cce, baseline="cce", method="cce", noise_rate=rate)
                 for seed in range(3)]
    df = tidy(rows)
    surface = fit_surface(df)
    for rate in (0.4, 0.3):
        rec = recommend_from_surface(surface, 10, "symmetric", rate, dataset="digits")
        assert df["psi"].min() - 1e-9 <= rec["psi"] <= df["psi"].max() + 1e-9
        assert df["rho"].min() - 1e-9 <= rec["rho"] <= df["rho"].max() + 1e-9
        for spans in (rec["region"], rec["region"]["plausible"]):
            assert spans["psi"][1] <= df["psi"].max() + 1e-9 and spans["rho"][1] <= df["rho"].max() + 1e-9
        (edge,) = [w for w in rec["warnings"] if "at the edge of what was searched" in w]
        # (not the corner itself: no arm ran there, and no cell beats the best the arms' knobs predict)
        assert f"psi {rec['psi']:.3g}, the highest searched" in edge or f"rho {rec['rho']:.3g}, the highest" in edge
    # a surface whose optimum lies inside what was searched: no such warning
    inside = recommend_from_surface(fit_surface(campaign()), 10, "symmetric", 0.4)
    assert not any("edge of what was searched" in w for w in inside["warnings"])


def test_the_search_spaces_own_bounds_are_no_searched_edge() -> None:
    """Arms sampled up to psi 0.7499 and rho 11.83, within 0.75 and 12, the decoupled space's bounds
    (a sampler never draws them exactly): a recommendation there was told to search beyond them."""
    rng = np.random.default_rng(2)
    rows = []
    for rate in (0.2, 0.4):
        key, cce = f"digits/{rate}", 0.9 - 0.4 * rate
        arms = [(float(rng.uniform(0.0004, 0.7499)), float(math.exp(rng.uniform(math.log(0.258), math.log(11.83)))))
                for _ in range(20)] + [(0.7499, 11.83), (0.0004, 0.258)]
        for psi, rho in arms:
            g = 10 * rate + 15 * psi + math.log(rho) + float(rng.normal(0, 0.2))  # best at the corner
            rows.append(run(key, "search", 0, cce + g / 100, cce + g / 100, psi, rho, noise_rate=rate))
        rows += [run(key, "confirm", seed, cce, cce, baseline="cce", method="cce", noise_rate=rate)
                 for seed in range(3)]
    rec = recommend_from_surface(fit_surface(tidy(rows)), 10, "symmetric", 0.3, dataset="digits")
    assert rec["psi"] == pytest.approx(0.7499) and rec["rho"] == pytest.approx(11.83)
    assert not any("edge of what was searched" in w for w in rec["warnings"])


# The audit's tiny search: five arms in each of two settings, every one behind CCE (validation points).
LOSING_ARMS = ((0.3333, 3.079, -8.333, -14.583), (0.4116, 3.984, -43.75, -57.917), (0.5, 4.0, -45.417, -64.167),
               (0.6667, 3.556, -48.75, -72.5), (0.5, 2.0, -19.583, -26.667))


def losing_campaign(**imbalanced: Any) -> pd.DataFrame:
    """``imbalanced``: the DM arms' class weighting (``cw``) and the settings' imbalance, if any."""
    cw = {"cw": imbalanced.pop("cw")} if "cw" in imbalanced else {}
    rows = []
    for k, rate in enumerate((0.2, 0.5)):
        key, cce = f"features/{rate}", 0.8 - 0.4 * rate
        desc = dict(dataset="features", noise_rate=rate, **imbalanced)
        for seed in range(3):
            rows += [run(key, "confirm", seed, cce + arm[2 + k] / 100, cce + arm[2 + k] / 100, arm[0], arm[1],
                         **cw, **desc) for arm in LOSING_ARMS]
            rows.append(run(key, "confirm", seed, cce, cce, baseline="cce", method="cce", **desc))
    return tidy(rows)


def test_a_search_where_every_arm_lost_to_cce_is_promised_no_gain() -> None:
    """Every arm of two settings lost to CCE (best -8.3 and -14.6 points): the GP (noise std ~0.1
    against a signal std ~40) extended a steep slope into a cell nobody ran, psi 0.33, rho 2.6, and
    recommend chose it at +3.8 [-6.8, +14.3]; at 20%, +4.6 [-5.8, +15.1], excluding the -8.3
    measured there. No cell is chosen for more than the arms' configurations are predicted, and the
    mean is capped at the leaned-on settings' measured best (said in a warning where it bites)."""
    doc = build_guidelines(losing_campaign(), generated="2026-01-01T00:00:00+00:00")
    surface = doc["surface"]
    assert [round(s["best_gain"], 1) for s in surface["settings"]] == [-8.3, -14.6]
    for rate in (0.3, 0.2, 0.1):
        rec = recommend(doc, num_classes=10, noise_type="symmetric", noise_rate=rate, dataset="features")
        g, top = rec.predicted_gain, max(s["best_gain"] for s in rec.leans_on)
        assert top == pytest.approx(-8.333, abs=1e-3)
        assert g["mean"] <= top + 1e-9 and g["high"] == pytest.approx(g["mean"] + 1.96 * rec.predicted_std)
        assert f"predicted {g['mean']:+.1f}" in rec.evidence
        # the point: not a cell the GP itself said beats CCE, but the measured best arm's (psi 0.33, rho 3.08)
        raw, _ = gp_predict(surface["model"], [[rec.psi, math.log(rec.rho), rate]])
        assert float(raw[0]) < 0 and rec.psi == pytest.approx(0.3333) and rec.rho == pytest.approx(3.079, rel=0.05)
        assert any("capped" in w for w in rec.warnings) == (rate == 0.1)
    assert recommend(doc, num_classes=10, noise_type="symmetric", noise_rate=0.2,
                     dataset="features").predicted_gain["mean"] == pytest.approx(-8.333, abs=0.5)  # as measured
    r = recommend_from_surface(surface, 10, "symmetric", 0.1, dataset="features")  # beyond 20%: the trend
    (w,) = [w for w in r["warnings"] if "capped" in w]
    assert w.startswith("the surface predicted ") and w.endswith(
        "above every measured best of the settings it leans on: capped at the highest, -8.3 "
        "(features/0.2), its interval moved down with it")
    assert r["predicted_gain"]["mean"] == pytest.approx(-8.333, abs=1e-3)


def test_the_cap_holds_where_every_arm_ran_one_class_weighting() -> None:
    """Arms all of one weighting drop its feature, and the configurations they ran read as 'none':
    the cells of the weighting asked about went uncapped (psi 0.33, rho 2.59, predicted +5.0)."""
    doc = build_guidelines(losing_campaign(cw="effective-number", imbalance="step", imbalance_ratio=10),
                           generated="2026-01-01T00:00:00+00:00")
    rec = recommend(doc, num_classes=10, noise_type="symmetric", noise_rate=0.1, imbalance="step",
                    imbalance_ratio=10, dataset="features")
    assert rec.psi == pytest.approx(0.3333) and rec.rho == pytest.approx(3.079, rel=0.05)  # the measured best arm
    assert not any("predicted +" in w for w in rec.warnings)
    # the weighting every arm trained with, not none (no arm measured that); no gain over none claimed
    assert rec.class_weighting == "effective-number" and rec.class_weighting_gain is None
    assert ("every arm on imbalanced data trained with class weighting 'effective-number': the weighting is "
            "kept, its gain over no weighting was not measured") in rec.warnings


def test_no_weighting_is_not_recommended_for_imbalanced_data_where_no_arm_measured_it() -> None:
    """Balanced settings (no weighting) beside imbalanced ones whose arms all weighted by inverse
    frequency: 'none' on imbalanced data is a cell no arm ran; the recommendation keeps 'inverse'."""
    balanced = losing_campaign()
    imbalanced = losing_campaign(cw="inverse", imbalance="step", imbalance_ratio=10)
    imbalanced["setting"] = imbalanced["setting"] + "/step"
    doc = build_guidelines(pd.concat([balanced, imbalanced], ignore_index=True), generated="2026-01-01T00:00:00+00:00")
    assert "cw=inverse" in doc["surface"]["encoding"]["features"]
    rec = recommend(doc, num_classes=10, noise_type="symmetric", noise_rate=0.2, imbalance="step",
                    imbalance_ratio=10, dataset="features")
    assert rec.class_weighting == "inverse" and rec.class_weighting_gain is None
    assert any(w.startswith("every arm on imbalanced data trained with class weighting 'inverse'")
               for w in rec.warnings)
    balanced_rec = recommend(doc, num_classes=10, noise_type="symmetric", noise_rate=0.2, dataset="features")
    assert balanced_rec.class_weighting == "none" and balanced_rec.class_weighting_gain == {"none": 0.0}
    assert not any("every arm on imbalanced" in w for w in balanced_rec.warnings)


def test_the_cap_leaves_a_prediction_within_the_measured_gains_alone(surface: dict[str, Any]) -> None:
    """A prediction at or below the best gain measured in the settings it leans on, at an optimum the
    arms ran, is the GP's own: the point the uncapped cautious optimum chooses, its mean, no warning."""
    psis, rhos = grid(surface)
    cells = [(p, r) for p in psis for r in rhos]
    for rate in (0.3, 0.4):
        rec = recommend_from_surface(surface, 10, "symmetric", rate)
        mean, std = gp_predict(surface["model"], [[p, math.log(r), rate] for p, r in cells])
        i = int(np.argmax(mean - std))
        assert (rec["psi"], rec["rho"]) == cells[i]
        assert rec["predicted_gain"]["mean"] == pytest.approx(mean[i], abs=0.05)
        assert mean[i] <= max(s["best_gain"] for s in rec["leans_on"])
        assert not any("capped" in w for w in rec["warnings"])


def test_a_query_outside_a_dimension_every_setting_shared_gets_the_priors_interval(surface) -> None:
    """Every shipped setting has 10 classes: 21,843 classes (or 2, or 100) got the 10-class gain and
    its interval, +15.6 (+8.5 to +22.6), with a warning only; an unmeasured noise type was read as
    symmetric. Now: outside a dimension the surface dropped, the interval is no narrower than the
    GP's prior (its length scale there unknown); the point stays the measured settings' best."""
    from dm_tune.reports._schema import default_guidelines_path, load_guidelines
    from dm_tune.reports._surface import gp_prior_std

    shipped = load_guidelines(default_guidelines_path())["surface"]
    prior, _ = gp_prior_std(shipped["model"])
    ten = recommend_from_surface(shipped, 10, "symmetric", 0.3)
    assert not any(w.startswith("no calibrated gain") for w in ten["warnings"])
    for classes in (2, 100, 21843):
        far = recommend_from_surface(shipped, classes, "symmetric", 0.3)
        g = far["predicted_gain"]
        assert (far["psi"], far["rho"], far["class_weighting"]) == (ten["psi"], ten["rho"], ten["class_weighting"])
        width = ten["predicted_gain"]["high"] - ten["predicted_gain"]["low"]
        assert g["high"] - g["low"] >= 2 * 1.96 * prior - 1e-9 > width
        assert any(w.startswith(f"no calibrated gain: number of classes {classes} (every measured setting: 10)")
                   for w in far["warnings"])
        # (the prior's std, said there: not again as the surface's own at the point)
        assert not any(w.startswith("the surface is unsure here") for w in far["warnings"])
    # A noise type not measured, where two were (symmetric, pair): a mixture over them, their
    # disagreement in the interval (it was read as symmetric, with symmetric's interval)
    sym = ten["predicted_gain"]
    for noise in ("file", "cifar100-superclass"):
        mixed = recommend_from_surface(shipped, 10, noise, 0.3)
        assert mixed["predicted_gain"]["high"] - mixed["predicted_gain"]["low"] > sym["high"] - sym["low"] + 1.0
        assert any("average over the measured noise types" in w for w in mixed["warnings"])
    # Where one noise type was measured (the fixture's symmetric), another has no feature: the prior
    fixture_prior, _ = gp_prior_std(surface["model"])
    for noise in ("pair", "file"):
        r = recommend_from_surface(surface, 10, noise, 0.4)
        assert r["predicted_std"] >= fixture_prior - 1e-9
        assert any(w.startswith(f"no calibrated gain: noise type {noise!r} (measured: symmetric)")
                   for w in r["warnings"])
    step = recommend_from_surface(surface, 10, "symmetric", 0.4, "step", 10.0)
    assert any(w.startswith("no calibrated gain: imbalance ratio 10") and "imbalance 'step'" in w
               for w in step["warnings"])


def test_the_measured_arm_to_prefer_and_the_settings_leaned_on_name_their_class_weighting(capsys) -> None:
    """'prefer the measured arm' gave its psi and rho but not its class weighting (inverse here,
    where the recommendation says none), nor did the leans-on lines: that arm could not be trained."""
    from dm_tune.cli import main
    from dm_tune.reports._schema import default_guidelines_path, load_guidelines

    query = dict(num_classes=10, noise_type="symmetric", noise_rate=0.3, imbalance="longtail", imbalance_ratio=10.0)
    r = recommend_from_surface(load_guidelines(default_guidelines_path())["surface"], **query)
    (w,) = [w for w in r["warnings"] if "prefer the measured arm" in w]
    assert "at psi 0.50, rho 1.49, class weighting inverse;" in w
    assert main(["recommend", "--num-classes", "10", "--noise-rate", "0.3", "--imbalance", "longtail:10"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "measured best" in x]
    assert len(lines) == 3 and all(", class weighting " in x for x in lines)
    assert lines[0].endswith("at psi 0.50, rho 1.49, class weighting inverse")
    rec = recommend(load_guidelines(default_guidelines_path()), **query)
    assert "(validation), class weighting inverse" in rec.evidence


def test_a_superclass_rate_is_dm_tune_trains_and_is_read_as_its_fraction_of_wrong_labels(capsys) -> None:
    """cifar100-superclass at rate 0.4 (dm-tune train's per-pair rate) makes about 16% of labels wrong,
    but recommend read it as 40% wrong when comparing it with the measured types (its help said the
    rate is the fraction of wrong labels). Now it is train's rate, read at 16% against the others,
    and the try: line trains rate 0.4."""
    from dm_tune.cli import main
    from dm_tune.reports._schema import default_guidelines_path, load_guidelines

    shipped = load_guidelines(default_guidelines_path())["surface"]
    superclass = recommend_from_surface(shipped, 100, "cifar100-superclass", 0.4)
    as_file = recommend_from_surface(shipped, 100, "file", 0.16)  # 16% wrong labels of an unmeasured type
    assert (superclass["psi"], superclass["rho"]) == (as_file["psi"], as_file["rho"])
    assert superclass["predicted_gain"]["mean"] == pytest.approx(as_file["predicted_gain"]["mean"])
    assert any(w.startswith("noise rate 0.4 of cifar100-superclass noise makes about 16% of the labels wrong")
               for w in superclass["warnings"])
    assert main(["recommend", "--num-classes", "100", "--noise", "cifar100-superclass", "--noise-rate", "0.4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("DM for 100 classes, cifar100-superclass noise at rate 0.4 (about 16% of labels wrong):")
    assert "--noise cifar100-superclass --noise-rate 0.4 --method dm" in out
    # without a surface: interpolated at 16% between the measured symmetric settings (0.1 and 0.3)
    doc = {**load_guidelines(default_guidelines_path()), "surface": None}
    base = next(s for s in doc["settings"] if s["noise"] == "symmetric" and s["imbalance"] == "none")
    doc["settings"] = [{**base, "setting": f"s{r}", "num_classes": 100, "noise_rate": r, "psi": r, "dataset": "d"}
                       for r in (0.1, 0.3)]
    rec = recommend(doc, num_classes=100, noise_type="cifar100-superclass", noise_rate=0.4)
    assert rec.psi == pytest.approx(0.16)


def test_an_unmeasured_noise_type_is_compared_with_each_measured_type_at_its_own_rate() -> None:
    """Measured: symmetric and cifar100-superclass (the paper's CIFAR-100 pair), the gain 50 x the
    fraction of wrong labels. Pair noise at 0.4 was averaged with superclass at rate 0.4 (16% wrong),
    +15.1 ± 5.9 where symmetric at 40% wrong gives +21; superclass reaches 40% wrong at no rate (its
    limit is 0.5, 20% wrong), so it is symmetric's answer, with the prior's interval. At 16% wrong the
    two measured types agree, each at its own rate (symmetric 0.16, superclass 0.4)."""
    from dm_tune.reports._surface import encoding_of, features, gp_prior_std, measured_settings

    rows, y = [], []
    rng = np.random.default_rng(0)
    for noise, share in (("symmetric", 1.0), ("cifar100-superclass", 0.4)):
        for rate in (0.1, 0.2, 0.3, 0.4):
            for psi in (0.1, 0.3, 0.5):
                for rho in (1.0, 3.0):
                    rows.append(dict(setting=f"{noise}{rate}", arm=f"{psi}-{rho}", stage="confirm", baseline="",
                                     complete=True, dataset="cifar100", noise=noise, noise_rate=rate,
                                     num_classes=100, imbalance="none", imbalance_ratio=1.0, model="m", psi=psi,
                                     rho=rho, class_weighting="none"))
                    y.append(50 * rate * share + 2 * psi + rng.normal(0, 0.2))
    enc = encoding_of(rows)
    surface = {"encoding": enc, "settings": measured_settings(rows, y),
               "model": fit_surface_model(features(rows, enc), y, enc["features"])}
    symmetric = recommend_from_surface(surface, 100, "symmetric", 0.4)["predicted_gain"]
    pair = recommend_from_surface(surface, 100, "pair", 0.4)
    assert pair["predicted_gain"]["mean"] == pytest.approx(symmetric["mean"], abs=0.5)
    assert pair["predicted_std"] >= gp_prior_std(surface["model"])[0] - 1e-9
    assert any(w.startswith("no calibrated gain: noise type 'pair' (measured: cifar100-superclass, symmetric; of "
                            "them only symmetric at 40% of labels wrong)") for w in pair["warnings"])
    low = recommend_from_surface(surface, 100, "pair", 0.16)
    assert low["predicted_gain"]["mean"] == pytest.approx(
        recommend_from_surface(surface, 100, "symmetric", 0.16)["predicted_gain"]["mean"], abs=0.5)
    assert low["predicted_std"] < 1.0 and any("average over the measured noise types" in w for w in low["warnings"])
