"""Across settings: how the best mode (psi) and spread (rho) move, and rules where evidence supports one.

Inputs are the per-setting results of ``analyse_settings`` (status "ok"); outputs are JSON-ready
dicts. A rule is claimed ("supported": True) only with at least ``MIN_RULE_N`` distinct x values,
R^2 >= ``MIN_RULE_R2`` and a slope whose p-value is below ``MAX_RULE_P``; otherwise the dict says
why the evidence does not support one. Each function judges its rules one by one; a report tests
many slopes at once, and ``correct_for_multiplicity`` judges them again by Holm-adjusted p-values.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_RULE_N = 3
MIN_RULE_R2 = 0.5
MAX_RULE_P = 0.05            # the slope's two-sided p-value: a line must be more than noise
# What a noise-rate rule holds fixed (besides the noise rate it fits against): a line through
# settings that differ in anything else (the dataset, the model, the imbalance ratio) would
# fit that difference as an effect of the noise rate.
RULE_GROUP = ("dataset", "model", "noise", "num_classes", "imbalance", "imbalance_ratio", "pretrained")
FACTORS = ("noise", "num_classes", "imbalance", "pretrained")
MATCH_KEYS = ("dataset", "model", "noise", "noise_rate", "num_classes", "imbalance", "imbalance_ratio", "pretrained")
# Keys that change with a factor, so that a trend by the factor does not hold them fixed: balanced
# data has ratio 1 (imbalanced data never does); a class count comes with its dataset and model.
FACTOR_TIED = {"imbalance": ("imbalance_ratio",), "num_classes": ("dataset", "model")}
FLAT_SLOPE = 0.1             # |d psi* / d noise_rate| below this: the mode does not move with noise


def fit_line(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Least-squares y = a + b x: a, b, R^2, n points, distinct x, and ``p``: the two-sided p-value
    of the slope (t test, n - 2 degrees of freedom; NaN below 3 points).

    Two fits have no t statistic. A constant y (the best value the same at every x, as a grid
    search often finds) has no slope to test: R^2 and ``p`` are NaN, as scipy's ``linregress``
    gives them, and ``constant`` is True. A line through every point (no residual: t is infinite)
    happens with continuous values only by chance but often with a grid's few values: its ``p`` is
    the exact permutation test's of the slope (the share of the points' orderings whose slope is at
    least as steep), 1/3 through three points, 1/12 through four, 1/60 through five."""
    from scipy.stats import t as student_t

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n, distinct = int(len(xs)), int(len(np.unique(xs)))
    if distinct < 2:
        return {"a": float(ys.mean()) if n else math.nan, "b": math.nan, "r2": math.nan, "n": n,
                "distinct_x": distinct, "p": math.nan, "constant": False}
    b, a = np.polyfit(xs, ys, 1)
    resid = ys - (a + b * xs)
    ss_tot, ss_res = float(((ys - ys.mean()) ** 2).sum()), float((resid ** 2).sum())
    constant = ss_tot <= 1e-12 * max(1.0, float((ys ** 2).sum()))
    if constant:
        return {"a": float(ys.mean()), "b": 0.0, "r2": math.nan, "n": n, "distinct_x": distinct, "p": math.nan,
                "constant": True}
    r2, p = 1.0 - ss_res / ss_tot, math.nan
    if n > 2 and ss_res <= 1e-12 * ss_tot:
        p = _permutation_p(xs, ys)
    elif n > 2:
        se = math.sqrt(ss_res / (n - 2) / float(((xs - xs.mean()) ** 2).sum()))
        p = float(2 * student_t.sf(abs(b) / se, n - 2))
    return {"a": float(a), "b": float(b), "r2": r2, "n": n, "distinct_x": distinct, "p": p, "constant": False}


# Up to this many points the permutation test takes every ordering (9! = 362,880); past it, this
# many random ones, from a fixed seed (a report is the same every time it is built).
EXACT_PERMUTATION_N = 9
PERMUTATION_RESAMPLES = 99_999


def _permutation_p(xs: np.ndarray, ys: np.ndarray) -> float:
    """Two-sided p-value of the least-squares slope of ys on xs, by permuting ys."""
    import inspect

    from scipy.stats import permutation_test

    centred = xs - xs.mean()

    def slope(y: np.ndarray, axis: int = -1) -> np.ndarray:
        return (centred * (y - y.mean(axis=axis, keepdims=True))).sum(axis=axis)

    exact = len(ys) <= EXACT_PERMUTATION_N
    seed: dict[str, Any] = {}
    if not exact:  # (scipy 1.15 renamed random_state rng)
        named = "rng" if "rng" in inspect.signature(permutation_test).parameters else "random_state"
        seed = {named: np.random.default_rng(0)}
    result = permutation_test((ys,), slope, permutation_type="pairings", vectorized=True,
                              n_resamples=np.inf if exact else PERMUTATION_RESAMPLES, **seed)
    return float(result.pvalue)


def rate_groups(settings: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Settings grouped by ``RULE_GROUP`` (all but the noise rate), sorted by noise rate.

    Clean settings (noise rate 0) join every noise type's group with the same other keys; a clean
    setting that joins none forms a group of its own.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    clean = [s for s in settings if _is_clean(s)]
    for s in settings:
        if not _is_clean(s):
            groups[tuple(s[k] for k in RULE_GROUP)].append(s)
    out = []
    joined: set[int] = set()
    for key, members in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        group = dict(zip(RULE_GROUP, key))
        matches = [c for c in clean if all(c[k] == group[k] for k in RULE_GROUP if k != "noise")]
        joined.update(id(c) for c in matches)
        out.append((group, sorted(members + matches, key=lambda m: m["noise_rate"])))
    out += [({k: c[k] for k in RULE_GROUP}, [c]) for c in clean if id(c) not in joined]
    return out


def noise_rate_rules(settings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """psi* ~ a + b * noise_rate and rho* ~ a + b * noise_rate per ``rate_groups`` group (noisy ones)."""
    rules = []
    for group, members in rate_groups(settings):
        if group["noise"] == "none":
            continue
        for knob in ("psi", "rho"):
            fit = fit_line([m["noise_rate"] for m in members], [m[knob] for m in members])
            rules.append(_rule("noise_rate", knob, group, fit, [m["setting"] for m in members]))
    return rules


def _mode_rule_vs_paper(rule: dict[str, Any]) -> str:
    """The paper: rising noise -> raise the mode; with 100 classes the best values move much less
    with noise (lambda 0.5 at every symmetric rate)."""
    from dm_tune.reports._paper import MANY_CLASSES

    if not rule["supported"]:
        return "not tested: " + rule["reason"]
    b = rule["b"]
    classes = rule["group"].get("num_classes")
    many = classes is not None and classes >= MANY_CLASSES
    if b >= FLAT_SLOPE:
        rises = f"the best mode rises with the noise rate (slope {b:.2f} psi per unit noise rate)"
        return (f"refine: {rises}; the paper found it moved much less with {classes} classes" if many
                else f"agree: {rises}")
    if b > -FLAT_SLOPE:
        flat = f"the best mode hardly moves with the noise rate (slope {b:.2f})"
        return (f"agree: {flat}, as the paper found with 100 classes" if many
                else f"refine: {flat}; the paper expects this only with many (100) classes")
    return f"refute: the best mode falls as the noise rate rises (slope {b:.2f})"


def lambda_beta_rule(settings: list[dict[str, Any]]) -> dict[str, Any]:
    """Across all settings: does the best beta rise with the best lambda (the paper: it must)?"""
    fit = fit_line([s["lam"] for s in settings], [s["beta"] for s in settings])
    return _rule("lambda_beta", "beta", {}, fit, [s["setting"] for s in settings], x_name="lambda")


def _lambda_beta_vs_paper(rule: dict[str, Any]) -> str:
    if not rule["supported"]:
        return "not tested: " + rule["reason"]
    return ("agree: larger lambda goes with larger beta" if rule["b"] > 0 else
            "refute: the best beta does not rise with lambda")


def factor_trends(settings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Descriptive: mean best psi/rho per level of each factor, over groups of settings matched on the rest."""
    trends = []
    for factor in FACTORS:
        others = [k for k in MATCH_KEYS if k != factor and k not in FACTOR_TIED.get(factor, ())]
        matched: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for s in settings:
            matched[tuple(s[k] for k in others)].append(s)
        usable = [g for g in matched.values() if len({s[factor] for s in g}) >= 2]
        levels: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for g in usable:
            for s in g:
                levels[str(s[factor])].append(s)
        summary = {lvl: {"psi": float(np.mean([s["psi"] for s in ss])), "rho": float(np.mean([s["rho"] for s in ss])),
                         "n": len(ss)} for lvl, ss in sorted(levels.items())}
        if usable:
            parts = ", ".join(f"{lvl}: psi {v['psi']:.2f}, rho {v['rho']:.2f} (n={v['n']})"
                              for lvl, v in summary.items())
            text = f"by {factor} ({len(usable)} matched group(s), descriptive): {parts}"
        else:
            text = f"by {factor}: no settings differ only in {factor}; no evidence"
        trends.append({"kind": "factor", "factor": factor, "levels": summary, "n_groups": len(usable), "text": text})
    return trends


def _rule(kind: str, knob: str, group: dict[str, Any], fit: dict[str, Any], settings: list[str],
          x_name: str = "noise_rate") -> dict[str, Any]:
    rule = {"kind": kind, "knob": knob, "x": x_name, "group": group, "a": fit["a"], "b": fit["b"], "r2": fit["r2"],
            "n": fit["n"], "distinct_x": fit["distinct_x"], "p": fit.get("p", math.nan),
            "constant": fit.get("constant", False), "settings": settings}
    return judge(rule)


def judge(rule: dict[str, Any], p_adjusted: float | None = None, tests: int = 1) -> dict[str, Any]:
    """Set ``supported``, ``reason`` and ``text`` (and a noise-rate psi rule's or the lambda-beta
    rule's ``paper_comparison``) from the fit and the slope's p-value, ``p_adjusted`` when the slope
    was one of ``tests`` tested together (Holm), the raw p otherwise."""
    p = rule["p"]
    p_used = p if p_adjusted is None else p_adjusted
    adjusted = f", Holm-adjusted over {tests} slopes {p_used:.3f}" if p_adjusted is not None and tests > 1 else ""
    x_name, knob = rule["x"], rule["knob"]
    if rule["distinct_x"] < MIN_RULE_N:
        supported, why = False, f"only {rule['distinct_x']} distinct {x_name} value(s) < {MIN_RULE_N}"
    elif rule.get("constant"):
        supported, why = False, f"{knob}* is {rule['a']:.3f} at every {x_name}: no slope to test"
    elif not rule["r2"] >= MIN_RULE_R2:
        supported, why = False, f"R^2 {rule['r2']:.2f} < {MIN_RULE_R2}"
    elif not p_used < MAX_RULE_P:  # (R^2 0.5 over 4 points is a slope of p 0.29: a line through noise)
        supported, why = False, (f"the slope's p {p:.3f}{adjusted} >= {MAX_RULE_P} "
                                 f"(R^2 {rule['r2']:.2f}, n={rule['n']})")
    else:
        supported, why = True, ""
    label = (f"[{rule['task']}] " if rule.get("task") else "") + group_label(rule["group"])
    if supported:
        sign = "-" if rule["b"] < -1e-9 else "+"
        text = (f"{label}: {knob}* = {rule['a']:.3f} {sign} {abs(rule['b']):.3f} x {x_name} "
                f"(R^2 {rule['r2']:.2f}, n={rule['n']}, slope p {p:.3f}{adjusted})")
    else:
        text = f"{label}: the evidence does not support a rule for {knob}* against {x_name}: {why}"
    rule.update(supported=supported, reason=why, text=text)
    if p_adjusted is not None:
        rule.update(p_holm=p_adjusted, tests=tests)
    if rule["kind"] == "noise_rate" and knob == "psi":
        rule["paper_comparison"] = _mode_rule_vs_paper(rule)
    elif rule["kind"] == "lambda_beta":
        rule["paper_comparison"] = _lambda_beta_vs_paper(rule)
    return rule


def correct_for_multiplicity(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Judge ``rules`` again as one family (in place; returned): each slope by its Holm-adjusted
    p-value over every slope tested (those with a p-value and enough distinct x values to be
    claimed at all), so that a report fitting a dozen lines claims one by chance with probability
    at most ``MAX_RULE_P``, not one in twenty each."""
    tested = sorted((r for r in rules if math.isfinite(r["p"]) and r["distinct_x"] >= MIN_RULE_N),
                    key=lambda r: r["p"])
    m, running = len(tested), 0.0
    for i, rule in enumerate(tested):
        running = max(running, min(1.0, (m - i) * rule["p"]))
        judge(rule, running, m)
    return rules


def group_label(group: dict[str, Any]) -> str:
    if not group:
        return "all settings"
    parts = [str(group[k]) for k in ("dataset", "model") if group.get(k)]
    parts += [f"{group['noise']} noise", f"{group['num_classes']} classes"]
    if group.get("imbalance", "none") != "none":
        parts.append(f"{group['imbalance']} imbalance {group.get('imbalance_ratio', 1.0):g}:1")
    if group.get("pretrained"):
        parts.append("pre-trained")
    return ", ".join(parts)


def _is_clean(s: dict[str, Any]) -> bool:
    return s["noise"] == "none" or not s["noise_rate"]
