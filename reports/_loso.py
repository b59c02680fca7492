"""Leave-one-setting-out validation of the response surface (``_surface``).

Each classification setting with CCE runs and confirm-stage DM arms is held out in turn: the
surface is refitted on the other settings and asked for it, and its answer, and the paper's
guidance, are scored on a *local* Gaussian process of the held-out setting's own DM arms (final
test accuracy): an estimate, labelled as such. ``dm-tune validate`` measures instead.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from dm_tune._param import rho_from_beta
from dm_tune.reports._surface import (POINTS, SETTING_KEYS, arm_means, cce_means, dm_rows, encoding_of,
                                      features, fit_gp, fit_surface_model, gp_predict, gp_to_dict,
                                      measured_settings, recommend_from_surface, training_rows)

if TYPE_CHECKING:
    import pandas as pd


# The local GP's optimiser restarts. On a setting's few arms (5 to a few tens) its likelihood has a
# flat "all noise" optimum (a constant at the arms' mean everywhere) beside the fit that follows the
# arms; two restarts ended in it on a 5-arm setting (measured best arm estimated 18.7 points below
# its measured mean) where twenty found the better fit. Fits this small cost milliseconds each.
LOCAL_RESTARTS = 20

# From this many surface rows up, each held-out refit keeps the kernel hyper-parameters of the fit on
# every setting (``hyperparameters`` "auto") instead of re-optimising them: tens of likelihood
# evaluations, each a factorisation of the other settings' rows. At 1,008 rows leave-one-setting-out
# over 112 settings took 46 s against 351 s, with the same recommendation for every setting
# (BENCHMARKS.md, "Thousands of arms"). Those hyper-parameters saw the held-out setting: the document
# says so.
KEPT_ROWS = 512
HYPERPARAMETERS = ("auto", "refit", "kept")

LOCAL_NOTE = ("estimated from the setting's own trials: a GP of final test accuracy (each DM arm's mean over its "
              "seeds) over (psi, log rho, class weighting) fitted on the held-out setting's DM arms only, its "
              "estimates kept within the range those arms measured")


def leave_one_setting_out(df: pd.DataFrame, start: dict[str, Any] | None = None,
                          n_restarts_optimizer: int = 0, hyperparameters: str = "auto") -> dict[str, Any] | None:
    """For each classification setting with CCE runs and confirm-stage DM arms: refit the surface
    without it, recommend for it, and score that recommendation, and the paper's guidance, on a
    local GP of the setting's own trials (final test accuracy). None when no setting qualifies.

    ``start``: the surface fitted on every setting; each refit starts its optimiser from those
    hyper-parameters (a starting point only: the refit sees none of the held-out runs), which
    makes one optimiser run enough (``n_restarts_optimizer`` 0) where a fresh fit needs restarts.
    A GP fit costs O(rows^3) in its rows (one per DM arm); the local GPs, a setting's arms each,
    are small enough for LOCAL_RESTARTS restarts.

    ``hyperparameters``: "refit" re-optimises each refit's from ``start``'s; "kept" keeps ``start``'s
    (they saw the held-out setting, but its runs are not in the refit's posterior); "auto" keeps them
    from KEPT_ROWS rows up. Without ``start`` every refit is re-optimised. The document records which
    ("refit" or "kept")."""
    from dm_tune.reports._analysis import best_dm_arm, confirmed_arms, summarize_arms

    if hyperparameters not in HYPERPARAMETERS:
        raise ValueError(f"hyperparameters must be one of {', '.join(HYPERPARAMETERS)}, not {hyperparameters!r}")
    rows, y = training_rows(df)
    kept = start is not None and (hyperparameters == "kept" or (hyperparameters == "auto" and len(rows) >= KEPT_ROWS))
    cce_test = cce_means(df, "final_test_acc")
    out = []
    for setting in sorted({r["setting"] for r in rows}):
        runs = df[df["setting"] == setting]
        best, _ = best_dm_arm(summarize_arms(runs), confirmed_arms(runs))
        # Held out with any twin measured by another study (KEY@STUDY): its runs are of the same setting.
        others = [(r, v) for r, v in zip(rows, y) if str(r["setting"]).split("@")[0] != setting.split("@")[0]]
        if best is None or best["stage"] != "confirm" or not others or setting not in cce_test:
            continue
        rest_rows, rest_y = [r for r, _ in others], [v for _, v in others]
        enc = encoding_of(rest_rows)
        surface = {"encoding": enc, "settings": measured_settings(rest_rows, rest_y),
                   "model": fit_surface_model(features(rest_rows, enc), rest_y, enc["features"], n_restarts_optimizer,
                                              _theta_for(start, enc["features"]), optimize=not kept)}
        s = next(r for r in rows if r["setting"] == setting)
        rec = recommend_from_surface(surface, int(s["num_classes"]), s["noise"], float(s["noise_rate"]),
                                     s["imbalance"], float(s["imbalance_ratio"]), s["dataset"])
        local = _local_gp(dm_rows(runs), LOCAL_RESTARTS)
        if local is None:
            continue
        best_test, cce = float(best["test_mean"]), cce_test[setting]
        row = {"setting": setting, "model": str(s.get("model", "")),
               **{k: s[k].item() if hasattr(s[k], "item") else s[k] for k in SETTING_KEYS},
               "best_arm": {"arm": str(best["arm"]), "psi": float(best["psi"]), "rho": float(best["rho"]),
                            "class_weighting": str(best["class_weighting"]), "test_acc": best_test},
               "cce_test_acc": cce,
               "surface": _scored(local, rec["psi"], rec["rho"], rec["class_weighting"], best_test, cce),
               "paper": None}
        row["num_classes"] = int(row["num_classes"])
        row["surface"]["warnings"] = rec["warnings"]
        paper = _paper_point(s)
        if paper is not None:
            row["paper"] = _scored(local, paper[0], paper[1], "none", best_test, cce)
        out.append(row)
    if not out:
        return None
    return {"note": LOCAL_NOTE, "metric": "final test accuracy (points)", "rows": out, "summary": _summary(out),
            "hyperparameters": "kept" if kept else "refit", "n_surface_rows": len(rows)}


def refit_phrase(loso: dict[str, Any]) -> str:
    """How each held-out refit got its kernel hyper-parameters, as a clause (a document written
    before this was recorded re-optimised them)."""
    if loso.get("hyperparameters") != "kept":
        return "its kernel's hyper-parameters re-optimised without the held-out setting"
    n = loso.get("n_surface_rows")
    return ("its kernel's hyper-parameters kept from the fit on every setting"
            + (f" ({n:,} rows; re-optimising them costs tens of factorisations per setting)" if n else "")
            + ", so the held-out setting shaped them, but its runs are not in the refit")


def _theta_for(start: dict[str, Any] | None, names: list[str]) -> list[float] | None:
    """``start``'s log hyper-parameters for the features ``names`` (log 1 for a feature it lacks)."""
    if not start:
        return None
    theta = start["model"]["theta"]
    scales = dict(zip(start["model"]["feature_names"], theta[1:-1]))
    return [theta[0], *(scales.get(n, 0.0) for n in names), theta[-1]]


def _paper_point(s: dict[str, Any]) -> tuple[float, float] | None:
    """The paper's (psi, rho) for a setting: its psi, and the midpoint of its beta range as rho."""
    from dm_tune.reports._paper import paper_guidance

    guide = paper_guidance(s["noise"], float(s["noise_rate"]), int(s["num_classes"]), bool(s.get("pretrained", False)))
    if guide["psi"] is None:
        return None
    lo, hi = guide["beta_range"]
    return float(guide["psi"]), rho_from_beta((lo + hi) / 2, float(guide["lam"]))


def _local_gp(runs: pd.DataFrame, n_restarts_optimizer: int) -> dict[str, Any] | None:
    """A GP of the setting's own DM arms: mean final test accuracy over each arm's distinct seeds
    against (psi, log rho, class weighting); its estimates are kept within the range the arms
    measured (a GP may run past it at an edge of the space)."""
    runs = runs[runs["final_test_acc"].notna()]
    means = arm_means(runs, "final_test_acc")
    if len(means) < 2:
        return None
    described = runs.drop_duplicates(["setting", "arm"]).set_index(["setting", "arm"]).loc[means.index]
    rows = described[["psi", "rho", "class_weighting"]].to_dict("records")
    cws = sorted({r["class_weighting"] for r in rows} - {"none"})
    enc = {"features": ["psi", "log_rho"] + [f"cw={c}" for c in cws]}
    y = [float(v) * POINTS for v in means["mean"]]
    return {"encoding": enc, "range": [min(y), max(y)], "n_arms": len(y),
            "model": gp_to_dict(fit_gp(_local_features(rows, enc), y, n_restarts_optimizer), enc["features"], y)}


def _local_features(rows: list[dict[str, Any]], enc: dict[str, Any]) -> list[list[float]]:
    return [[float(r["psi"]), math.log(float(r["rho"]))] + [float(f"cw={r['class_weighting']}" == name)
                                                             for name in enc["features"][2:]] for r in rows]


def _scored(local: dict[str, Any], psi: float, rho: float, cw: str, best_test: float, cce: float) -> dict[str, Any]:
    mean, std = gp_predict(local["model"], _local_features([{"psi": psi, "rho": rho, "class_weighting": cw}],
                                                           local["encoding"]))
    lo, hi = local["range"]
    est = min(max(float(mean[0]), lo), hi)
    # Above every arm measured: the GP ran past its data (the point lies beyond the measured arms) and
    # the estimate is the best arm's, a regret of 0 or less that no trial measured; below every arm,
    # the worst arm's (the GP predicted lower still): both marked as such.
    capped = "above" if float(mean[0]) > hi else "below" if float(mean[0]) < lo else ""
    return {"psi": psi, "rho": rho, "class_weighting": cw, "test_acc": est, "test_acc_std": float(std[0]),
            "capped": capped, "regret": best_test - est, "gain_over_cce": est - cce}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_settings": len(rows)}
    for who in ("surface", "paper"):
        scored = [r[who] for r in rows if r[who] is not None]
        out[who] = ({"n": len(scored), "mean_regret": sum(s["regret"] for s in scored) / len(scored),
                     "mean_gain_over_cce": sum(s["gain_over_cce"] for s in scored) / len(scored),
                     "beats_cce": sum(s["gain_over_cce"] > 0 for s in scored),
                     "capped_above": sum(s.get("capped") == "above" for s in scored),
                     "capped_below": sum(s.get("capped") == "below" for s in scored)} if scored
                    else {"n": 0, "mean_regret": None, "mean_gain_over_cce": None, "beats_cce": 0, "capped_above": 0,
                          "capped_below": 0})
    return out
