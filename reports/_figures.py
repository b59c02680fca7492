"""Report figures: pure functions (analysed settings / runs in, matplotlib Figure out), Agg only.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot, so no global state and
no interactive backend); ``png_bytes`` renders one with the Agg canvas.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dm_tune.reports._analysis import POINTS, dm_configs, usable
from dm_tune.reports._load import IN_PROGRESS
from dm_tune.reports._paper import CIFAR10_SCHEDULE
from dm_tune.reports._rules import RULE_GROUP, group_label, rate_groups
from dm_tune.reports._text import metric_name, study_of

DPI = 90
MAX_CURVES = 12


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def plane_figure(setting: dict[str, Any], runs: pd.DataFrame) -> Figure:
    """Final validation accuracy over the (psi, rho) plane for one setting, every DM trial marked."""
    fig = Figure(figsize=(5.2, 3.8), dpi=DPI)
    ax = fig.add_subplot()
    dm = dm_configs(runs)
    if "reused_from" in dm:  # a confirm record of a search run: the same training, marked once
        dm = dm[dm["reused_from"].fillna("") == ""]
    ok = usable(dm).dropna(subset=["psi", "rho"])
    not_ok = dm[~dm.index.isin(ok.index)].dropna(subset=["psi", "rho"])
    # still running, or interrupted (a killed search): no outcome yet, not a failure (the table counts them apart)
    pending = not_ok[not_ok["status"].isin(IN_PROGRESS)]
    failed = not_ok[~not_ok["status"].isin(IN_PROGRESS)]
    x, y, acc = ok["psi"].to_numpy(), ok["rho"].to_numpy(), ok["final_val_acc"].to_numpy() * POINTS
    mappable: Any = None
    if len(ok) >= 4 and np.ptp(x) > 0 and np.ptp(y) > 0:
        try:
            mappable = ax.tricontourf(x, y, acc, levels=12, cmap="viridis", alpha=0.75)
        except (ValueError, RuntimeError):  # degenerate (collinear) triangulation: markers only
            mappable = None
    sc = ax.scatter(x, y, c=acc, cmap="viridis", edgecolors="black", linewidths=0.5, s=28, zorder=3,
                    label=f"finished trials ({len(ok)})")
    if len(ok):
        fig.colorbar(mappable if mappable is not None else sc, ax=ax, label=f"final val. {metric_name(setting)} (%)")
    if len(failed):
        ax.scatter(failed["psi"], failed["rho"], marker="x", color="red", s=30, zorder=3,
                   label=f"diverged / early-stopped / errored ({len(failed)})")
    if len(pending):
        ax.scatter(pending["psi"], pending["rho"], marker="o", facecolors="none", edgecolors="grey", s=30,
                   zorder=3, label=f"still running or interrupted ({len(pending)})")
    (p0, p1), (r0, r1) = setting["psi_range"], setting["rho_range"]
    ax.add_patch(_rect(p0, r0, p1, r1))
    ax.scatter([setting["psi"]], [setting["rho"]], marker="*", s=220, color="orange", edgecolors="black",
               zorder=4, label="recommended")
    ax.set(xlabel="mode psi = lambda / (1 + lambda)", ylabel="log-spread rho", title=_short(setting))
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def best_mode_figure(settings: list[dict[str, Any]], rules: list[dict[str, Any]]) -> Figure:
    """Best mode psi against noise rate per group, with the near-best psi range and the paper's CIFAR-10 choice."""
    fig = Figure(figsize=(5.6, 3.8), dpi=DPI)
    ax = fig.add_subplot()
    rates, psis = zip(*CIFAR10_SCHEDULE)
    ax.plot(rates, psis, "k--", marker="s", ms=4, label="paper, CIFAR-10 (symmetric)")
    for group, members in rate_groups(settings):
        key = tuple(group.get(k) for k in RULE_GROUP)
        r = np.array([s["noise_rate"] for s in members])
        p = np.array([s["psi"] for s in members])
        err = np.array([[s["psi"] - s["psi_range"][0] for s in members],
                        [s["psi_range"][1] - s["psi"] for s in members]])
        line = ax.errorbar(r, p, yerr=np.clip(err, 0, None), marker="o", capsize=3, label=group_label(group))
        rule = next((q for q in rules if q["kind"] == "noise_rate" and q["knob"] == "psi" and q["supported"]
                     and tuple(q["group"].get(k) for k in RULE_GROUP) == key), None)
        if rule is not None:
            xs = np.linspace(0, max(r.max(), 0.1), 20)
            ax.plot(xs, rule["a"] + rule["b"] * xs, ":", color=line[0].get_color())
    ax.set(xlabel="noise rate", ylabel="best mode psi", ylim=(-0.05, 1.0))
    ax.set_title("Best mode vs noise rate (bars: configurations within 1 point)", fontsize=10)  # (12 was cut off)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def weight_curves_figure(settings: list[dict[str, Any]]) -> Figure:
    """DM weight curves w(p) of the recommended settings vs CCE's 2(1-p), each normalised to mean 1 on [0, 1]."""
    import torch

    from dm_tune import dm_weight

    p = np.linspace(0.0, 1.0, 401)
    fig = Figure(figsize=(5.6, 3.8), dpi=DPI)
    ax = fig.add_subplot()
    ax.plot(p, 2 * (1 - p), "k--", label="CCE 2(1-p)")  # already mean 1 on [0, 1]
    for s in settings[:MAX_CURVES]:
        w = dm_weight(torch.from_numpy(p), float(s["lam"]), float(s["beta"])).double().numpy()
        ax.plot(p, w / np.trapezoid(w, p), label=f"{_short(s)} (lam {s['lam']:.2g}, beta {s['beta']:.3g})")
    ax.set(xlabel="p (probability of the labelled class)", ylabel="relative weight (mean 1)",
           title="Weight curves of the recommended settings")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def baselines_figure(setting: dict[str, Any]) -> Figure:
    """Final test accuracy (mean +/- std over seeds) of the recommended DM arm and every baseline."""
    # (a baseline with no finished seed has no bar: its row in the report says it diverged)
    shown = {k: b for k, b in setting["vs_baselines"].items() if b.get("baseline_mean") is not None}
    names = ["DM (recommended)"] + list(shown)
    means = [setting["test_acc_mean"]] + [b["baseline_mean"] for b in shown.values()]
    stds = [setting["test_acc_std"]] + [b["baseline_std"] for b in shown.values()]
    ns = [setting["n_seeds"]] + [b["baseline_n"] for b in shown.values()]
    fig = Figure(figsize=(max(4.0, 0.7 * len(names) + 1.5), 3.6), dpi=DPI)
    ax = fig.add_subplot()
    xs = np.arange(len(names))
    ax.bar(xs, means, yerr=[0.0 if s is None else s for s in stds], capsize=3,
           color=["tab:orange"] + ["tab:blue"] * (len(names) - 1))
    for x, m, n in zip(xs, means, ns):
        ax.annotate(f"n={n}", (x, m), ha="center", va="bottom", fontsize=7, xytext=(0, 8), textcoords="offset points")
    ax.set_xticks(xs, names, rotation=30, ha="right", fontsize=8)
    lo = min(means) - 10
    ax.set(ylabel=f"final test {metric_name(setting)} (%)", ylim=(max(0.0, lo), min(100.0, max(means) + 8)),
           title=f"DM vs baselines: {_short(setting)}")
    fig.tight_layout()
    return fig


def weight_history_figure(setting: dict[str, Any], histories: pd.DataFrame | None) -> Figure | None:
    """Mean relative DM weight of clean vs noisy examples over training (mean over the recommended runs)."""
    if histories is None or histories.empty:
        return None
    h = histories[histories["run_id"].isin(setting.get("run_ids", []))
                  & histories["metric"].isin(["weight_clean", "weight_noisy"])]
    if h.empty:
        return None
    curves = h.groupby(["metric", "step"])["value"].mean().unstack(0)
    fig = Figure(figsize=(5.2, 3.4), dpi=DPI)
    ax = fig.add_subplot()
    for metric, style in (("weight_clean", "tab:green"), ("weight_noisy", "tab:red")):
        if metric in curves:
            ax.plot(curves.index, curves[metric], color=style, marker=".", label=metric.replace("_", " "))
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="epoch", ylabel="mean relative weight (batch mean 1)",
           title=f"Clean vs noisy weights: {_short(setting)}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def loso_figure(loso: dict[str, Any]) -> Figure:
    """Leave-one-setting-out, per held-out setting: regret of the surface's recommendation and of the
    paper's guidance (left), and their gains over CCE (right), on the setting's own local GP."""
    rows = loso["rows"]
    labels = [_short(r) for r in rows]
    xs = np.arange(len(rows))
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows) + 3.0), 3.8), dpi=DPI)
    axes = fig.subplots(1, 2)
    for ax, key, title in ((axes[0], "regret", "regret vs the best confirmed arm (lower is better)"),
                           (axes[1], "gain_over_cce", "gain over CCE (higher is better)")):
        for offset, who, color in ((-0.2, "surface", "tab:orange"), (0.2, "paper", "tab:gray")):
            values = [np.nan if r[who] is None else r[who][key] for r in rows]
            ax.bar(xs + offset, values, width=0.4, color=color, label=who)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=7)
        ax.set(ylabel="points of final test accuracy (estimated)", title=title)
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    fig.suptitle("Leave-one-setting-out: surface vs paper", fontsize=10)
    fig.tight_layout()
    return fig


def _rect(x0: float, y0: float, x1: float, y1: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x0, y0), max(x1 - x0, 1e-3), max(y1 - y0, 1e-3), fill=False, ls="--", ec="orange",
                     lw=1.2, label="within 1 point of the best")


def _short(s: dict[str, Any]) -> str:
    rate = s.get("noise_rate") or 0.0
    noise = "clean" if rate == 0 else f"{s['noise']} {rate:g}"
    extra = "" if s.get("imbalance", "none") == "none" else f", {s['imbalance']} {s.get('imbalance_ratio', 1):g}"
    study = f" ({study_of(s)})" if study_of(s) else ""
    return f"{s.get('dataset', '?')} {noise}{extra}{study}"
