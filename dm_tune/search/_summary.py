"""The end-of-search summary: per setting, the best DM arm against every baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dm_tune.errors import json_text, write_output
from dm_tune.search._study import Study
from dm_tune.search._trial import OBJECTIVES


@dataclass
class ArmResult:
    arm: str
    baseline: str
    params: dict[str, Any]
    test_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)   # the seed of each value above

    @property
    def n_results(self) -> int:
        """Seeds with a final accuracy."""
        return sum(math.isfinite(v) for v in self.test_acc)

    def mean(self, values: list[float]) -> float:
        ok = [v for v in values if math.isfinite(v)]
        return sum(ok) / len(ok) if ok else float("nan")

    @property
    def complete(self) -> bool:
        """Whether every seed the arm ran on gave a final accuracy."""
        return self.n_results == len(self.test_acc)

    def std(self, values: list[float]) -> float:
        """Sample std of the finite values; NaN (no spread to tell) with fewer than two."""
        ok = [v for v in values if math.isfinite(v)]
        if len(ok) < 2:
            return float("nan")
        m = sum(ok) / len(ok)
        return math.sqrt(sum((v - m) ** 2 for v in ok) / (len(ok) - 1))


@dataclass
class SettingSummary:
    setting: str
    arms: list[ArmResult]
    search_trials: int
    search_statuses: dict[str, int]
    train_time_s: float

    def best_dm(self) -> ArmResult | None:
        """The DM arm with the best mean validation accuracy among those that finished on every seed,
        among all only when none did; ties as the report breaks them (``reports._analysis.best_dm_arm``):
        more seeds, then the smaller std over seeds, then the smaller lambda, beta, class weighting."""
        dm = [a for a in self.arms if not a.baseline and a.val_acc]

        def rank(a: ArmResult) -> tuple[Any, ...]:
            std = a.std(a.val_acc)
            return (-round(100 * a.mean(a.val_acc), 6), -a.n_results, std if math.isfinite(std) else math.inf,
                    a.params.get("lam", math.inf), a.params.get("beta", math.inf),
                    str(a.params.get("class_weighting", "none")))

        return min([a for a in dm if a.complete] or dm, key=rank, default=None)


def _arm_label(a: ArmResult) -> str:
    if a.baseline:
        return a.baseline
    p = a.params
    cw = p.get("class_weighting", "none")
    weighting = "" if cw == "none" else f", {cw} class weights"
    return f"DM psi={p['psi']:.2f} rho={p['rho']:.2f} (lam={p['lam']:.2f}, beta={p['beta']:.1f}{weighting})"


def _ordered(summary: SettingSummary, best: ArmResult | None) -> list[ArmResult]:
    """``best`` (the best DM arm) first, then the baselines by accuracy (those without any after them)."""

    def key(a: ArmResult) -> float:
        m = a.mean(a.test_acc)
        return -m if math.isfinite(m) else math.inf

    return ([best] if best else []) + sorted((a for a in summary.arms if a.baseline), key=key)


def _seeds_cell(row: dict[str, Any], arm: ArmResult) -> str:
    """How many seeds gave the row its accuracy; the others' endings when some gave none."""
    if row["n_results"] == row["n_seeds"]:
        return str(row["n_seeds"])
    missing = [s for s, v in zip(arm.statuses, arm.test_acc) if not math.isfinite(v)]
    counts = ", ".join(f"{missing.count(s)} {s}" for s in sorted(set(missing)))
    return f"{row['n_results']} of {row['n_seeds']} ({counts})"


def _paired(dm: ArmResult, arm: ArmResult) -> tuple[float, int]:
    """DM minus ``arm`` in final test accuracy, paired by seed: the mean difference over the seeds
    both finished, and their number (as the report's and validate's comparisons; a difference of
    the two means would set one's seed against the other's where one did not finish)."""
    mine = {s: v for s, v in zip(dm.seeds, dm.test_acc) if math.isfinite(v)}
    diffs = [mine[s] - v for s, v in zip(arm.seeds, arm.test_acc) if math.isfinite(v) and s in mine]
    return (sum(diffs) / len(diffs) if diffs else float("nan")), len(diffs)


def _row(a: ArmResult, best: ArmResult | None) -> dict[str, Any]:
    diff, paired = _paired(best, a) if best and a is not best else (None, 0)
    return {
        "arm": _arm_label(a), "baseline": a.baseline,
        "test_acc_mean": a.mean(a.test_acc), "test_acc_std": a.std(a.test_acc),
        "val_acc_mean": a.mean(a.val_acc), "n_seeds": len(a.test_acc),
        "n_results": a.n_results,
        "statuses": sorted(set(a.statuses)),
        "dm_minus_arm": diff, "dm_minus_arm_n": paired,
        "class_weighting": a.params.get("class_weighting") or "none",
        **({k: a.params.get(k) for k in ("lam", "beta", "psi", "rho")} if not a.baseline else {}),
    }


def rows(summary: SettingSummary) -> list[dict[str, Any]]:
    """One row per confirmed arm, the best DM arm first, then the baselines by accuracy."""
    best = summary.best_dm()
    return [_row(a, best) for a in _ordered(summary, best)]


def markdown(summaries: list[SettingSummary], study: Study, wall_s: float) -> str:
    metric = OBJECTIVES[study.task].label
    lines = [f"# dm-tune search: {study.name}", "",
             f"Final test {metric} (%, mean ± std over seeds {list(study.seeds)}); the DM arm is the "
             f"best of the top {study.search.top_k} searched arms by mean final "
             f"{'clean-validation accuracy' if study.task == 'classification' else 'validation ' + metric}. "
             f"Wall time {wall_s:.0f} s.", ""]
    for s in summaries:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(s.search_statuses.items()))
        lines += [f"## {s.setting}", "", f"Search: {s.search_trials} DM trials ({counts}).", "",
                  f"| arm | test {'acc' if study.task == 'classification' else metric} | DM − arm (points, paired by seed) "
                  "| seeds |",
                  "|---|---|---|---|"]
        best = s.best_dm()
        if best is None:  # (the header's "the DM arm is the best of the top k" then named no row)
            lines[-2:-2] = ["No DM arm was confirmed: none finished on every search seed (stopped early by the "
                            "scheduler, diverged or errored); `dm-tune report` chooses among them, and says so.", ""]
        for arm in _ordered(s, best):
            r = _row(arm, best)
            diff = "" if r["dm_minus_arm"] is None or not math.isfinite(r["dm_minus_arm"]) else \
                f"{100 * r['dm_minus_arm']:+.1f}" + ("" if r["dm_minus_arm_n"] == r["n_seeds"]
                                                     else f" ({r['dm_minus_arm_n']} of {r['n_seeds']} seeds)")
            spread = "" if not math.isfinite(r["test_acc_std"]) else f" ± {100 * r['test_acc_std']:.1f}"
            acc = f"{100 * r['test_acc_mean']:.1f}{spread}" if r["n_results"] else "—"
            lines.append(f"| {r['arm']} | {acc} | {diff} | {_seeds_cell(r, arm)} |")
        lines.append("")
    return "\n".join(lines)


def print_summary(summaries: list[SettingSummary], study: Study, wall_s: float) -> None:
    print()
    print(markdown(summaries, study, wall_s))


def write_summary(summaries: list[SettingSummary], study: Study, workspace: Path, wall_s: float) -> dict[str, Path]:
    out = workspace / "summaries"
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{study.name}.md", out / f"{study.name}.json"
    write_output(md, markdown(summaries, study, wall_s) + "\n")
    from dm_tune.provenance import provenance

    write_output(js, json_text({
        # provenance: the code and machine of the driver that wrote the summary (each trial's own is
        # in its MLflow run: a resumed search may have trained trials with other code)
        "study": study.to_dict(), "provenance": provenance(), "wall_time_s": wall_s,
        "train_time_s": sum(s.train_time_s for s in summaries),
        "settings": [{"setting": s.setting, "search_trials": s.search_trials,
                      "search_statuses": s.search_statuses, "rows": rows(s)} for s in summaries],
    }))  # standard JSON: NaN (no spread over one seed) is null
    return {"md": md, "json": js}
