"""The guidelines document (schema version 2): built from the runs, rendered as JSON and Markdown.

Beside each setting's measured best arm, the document holds one response surface fitted across
the classification settings (``surface``, see _surface.py; ``recommend`` reads it) and its
leave-one-setting-out validation (``loso``)."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import pandas as pd

from dm_tune.errors import json_safe
from dm_tune.provenance import git_commit
from dm_tune.reports._analysis import analyse_settings
from dm_tune.reports._load import IN_PROGRESS
from dm_tune.reports._loso import leave_one_setting_out, refit_phrase
from dm_tune.reports._surface import NO_SURFACE_TEXT, arms_phrase, fit_surface, hyperparameters_phrase
from dm_tune.reports._text import count_text, md_table, md_text as _text, settings_text
from dm_tune.reports._text import (ACCURACY_UNIT, ANALYSIS_VERSION, REFERENCE_BASELINE, SCHEMA_VERSION, fmt_acc,
                                    fmt_diff, metric_name, runs_phrase, setting_label)
from dm_tune.reports._rules import correct_for_multiplicity, factor_trends, judge, lambda_beta_rule, noise_rate_rules



def build_guidelines(df: pd.DataFrame, generated: str | None = None, loso: str = "auto") -> dict[str, Any]:
    """Analyse every setting and the trends across them into one JSON-ready document (``loso``: how
    leave-one-setting-out's refits get their hyper-parameters: auto, refit or kept)."""
    import dm_tune

    analysed = analyse_settings(df)
    ok = json_safe([s for s in analysed if s.get("status") == "ok"])
    for s in ok:
        s["guideline"] = setting_sentence(s)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "analysis_version": ANALYSIS_VERSION,
        "generated": generated or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "accuracy_unit": ACCURACY_UNIT,
        "accuracy_note": ("test_acc_* are final test accuracies of the configuration chosen by mean final "
                          "validation accuracy; best_test_acc_mean is the best test accuracy over training "
                          "(optimistic, shown only where labelled); in retrieval settings (task: retrieval) "
                          "the same fields hold mAP (validation mAP chooses) and test_rank1/5/10_mean give CMC; "
                          "a difference from a baseline is the mean +/- the sample std of the per-seed "
                          "differences over the seeds both finished, its verdict by the paired 95% t interval "
                          "(the spread at least one test example's worth where the runs recorded the test set's "
                          "size; undetermined over one seed; unpaired, and said so, where the two share no seed)"),
        "provenance": {
            "experiments": sorted(df["experiment"].unique().tolist()),
            "n_runs": int((~df["status"].isin(IN_PROGRESS)).sum()),  # (those in progress are among the skipped)
            "n_skipped_runs": int(df.attrs.get("skipped", 0)),
            # of n_runs, the confirm-stage records of search runs (same configuration and seed, not trained again)
            "n_reused_runs": int(((df["reused_from"] != "") & ~df["status"].isin(IN_PROGRESS)).sum()),
            "git_commits": sorted(c for c in df["git_commit"].unique().tolist() if c),
            "dm_tune_versions_of_runs": sorted(v for v in df["dmtune_version"].unique().tolist() if v),
            # every package's (torch, numpy, ...): each distinct set the runs recorded, one line each
            "package_versions_of_runs": sorted(v for v in df["versions"].unique().tolist() if v),
            # the CPUs and torch threads the runs trained with (each distinct pair; runs that recorded them)
            "machines_of_runs": sorted(m for m in df["machine"].unique().tolist() if m),
            # the data they trained on: each dataset's fingerprint (and label file's) that runs recorded
            "data_of_runs": sorted(f"{d}: {f}" for d, f in set(zip(df["dataset"], df["data"])) if f),
            # settings whose runs did not all train on the same data (it changed during their search)
            "settings_on_changed_data": changed_data(df),
            "dm_tune_version": dm_tune.__version__,
            # the report's own code (its analysis changes between commits of one dm-tune version)
            "report_git_commit": git_commit(),
            "tracking_uri": str(df.attrs.get("tracking_uri", "")),
        },
        "settings": ok,
        "unresolved": [{"setting": s["setting"], "reason": s.get("note", ""), "counts": s["counts"]}
                       for s in analysed if s.get("status") != "ok"],
        **_rules_by_task(ok),
    }
    doc["surface"] = fit_surface(df)
    doc["loso"] = leave_one_setting_out(df, start=doc["surface"], hyperparameters=loso)
    return json_safe(doc)


def changed_data(df: pd.DataFrame) -> dict[str, list[str]]:
    """Per setting whose runs recorded more than one fingerprint of their data: those fingerprints."""
    recorded = df[df["data"] != ""].groupby("setting")["data"].unique()
    return {setting: sorted(prints) for setting, prints in recorded.items() if len(prints) > 1}


def changed_data_lines(prov: dict[str, Any]) -> list[str]:
    """A warning per setting whose runs trained on different data."""
    return [f"warning: the runs of setting {setting} did not all train on the same data (fingerprints: "
            f"{'; '.join(prints)}): its data changed while it was searched, and its results mix the two"
            for setting, prints in prov.get("settings_on_changed_data", {}).items()]


def _rules_by_task(ok: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rules and trends within each task: retrieval settings never enter classification rules."""
    if not ok:
        return {"rules": [], "trends": factor_trends(ok)}
    rules: list[dict[str, Any]] = []
    trends: list[dict[str, Any]] = []
    tasks = sorted({s.get("task", "classification") for s in ok}, key=lambda t: t != "classification")
    for task in tasks:
        group = [s for s in ok if s.get("task", "classification") == task]
        found = noise_rate_rules(group) + [lambda_beta_rule(group)], factor_trends(group)
        if task != "classification":
            for rule in found[0]:
                rule["task"] = task
                judge(rule)  # (its text names the task, however often it is judged; Holm judges some again)
            for trend in found[1]:
                trend.update(task=task, text=f"[{task}] {trend['text']}")
        rules += found[0]
        trends += found[1]
    return {"rules": correct_for_multiplicity(rules), "trends": trends}


def setting_sentence(s: dict[str, Any]) -> str:
    """One plain-language guideline with its numbers."""
    lo, hi = s["rho_range"]
    weighting = s.get("class_weighting") or "none"  # (the winner's: training without it is another arm)
    text = (f"{setting_label(s)}: mode psi about {s['psi']:.2f} (lambda about {s['lam']:.2g}, beta about "
            f"{s['beta']:.3g}{'' if weighting == 'none' else f', class weighting {weighting}'}), log-spread rho "
            f"{s['rho']:.2f} (within 1 point: rho in [{lo:.2f}, {hi:.2f}], "
            f"psi in [{s['psi_range'][0]:.2f}, {s['psi_range'][1]:.2f}])")
    base = s["vs_baselines"].get(REFERENCE_BASELINE)
    name = REFERENCE_BASELINE.upper()
    if base is None and s["vs_baselines"]:
        name, base = next(iter(s["vs_baselines"].items()))
    if base is not None:
        failed = base.get("did_not_finish") or {}
        unpaired = base.get("paired") is False and base["n"]
        text += (f"; {fmt_diff(base['mean_diff'], base['std'])} points over {name} over {base['n']} "
                 f"seed{'s' if base['n'] != 1 else ''}"
                 + (" (unpaired: the two share no seed)" if unpaired else "")
                 if base["n"] else f"; against {name}, no seed both finished")
        if any(failed.values()) and base.get("verdict") == "wins":
            text += f" (better: {name} diverged on a seed where DM finished)"
        elif any(failed.values()) and base.get("verdict") == "loses":
            text += f" (worse: DM diverged on a seed where {name} finished)"
        elif base.get("verdict") in ("wins", "loses", "within noise"):
            text += f" ({_VERDICT_WORDS[base['verdict']]} by the paired 95% t interval)"
        elif base.get("verdict") == "undetermined" and base["n"] == 1:
            text += " (undetermined: one seed)"
    text += f" (final test {metric_name(s)} {fmt_acc(s['test_acc_mean'], s['test_acc_std'])}%"
    if s.get("task") == "retrieval":
        text += f", rank-1 {fmt_acc(s.get('test_rank1_mean'), None)}%"
    text += f", n={s['n_seeds']})"
    if s.get("stage_note"):  # search trials, not confirmed; or no arm finished on every seed (said, not only in JSON)
        text += f" [{s['stage_note']}]"
    elif s.get("stage") != "confirm":
        text += " [from search trials, not confirmed]"
    return text + "."


_VERDICT_WORDS = {"wins": "better", "loses": "worse", "within noise": "within noise"}


def _trials(block: dict[str, Any]) -> str:
    """How many search trials (and, where recorded, configurations) an importance or sensitivity used."""
    configs = block.get("n_configs")  # (absent in guidelines written before it was recorded)
    return f"n={block['n']} trials" + ("" if configs is None else f" of {count_text(configs, 'configuration')}")


def _pairing(b: dict[str, Any]) -> str:
    """How a comparison with a baseline was made: over shared seeds, or not (two arms that share
    seeds but finished none of them together are not "unpaired": a failure decided)."""
    if b["paired"]:
        return "paired by seed"
    return "no seed both finished" if any((b.get("did_not_finish") or {}).values()) else "unpaired"


def decimal_text(x: float | None, digits: int = 2) -> str:
    """A number to ``digits`` decimals, "-" for none."""
    return "-" if x is None else f"{x:.{digits}f}"


def setting_tables(s: dict[str, Any]) -> tuple[list[list[str]], list[str], list[list[str]]]:
    """One setting's results as text, for index.html and guidelines.md alike: its (item, value)
    rows, the header of its baselines' table and that table's rows."""
    imp = s["importance"]
    cw_importance = (f", class weighting {imp['class_weighting']:.2f}" if imp["status"] == "ok"
                     and imp.get("class_weighting") is not None else "")  # (None, or absent before it was)
    importance = (f"psi {imp['psi']:.2f}, rho {imp['rho']:.2f}{cw_importance} (fANOVA, {_trials(imp)})"
                  if imp["status"] == "ok" else f"insufficient: {imp.get('reason', '')}")
    sens = s["sensitivity"]
    within = sens.get("within_class_weighting")
    sensitivity = (f"psi {decimal_text(sens['psi'], 1)}, rho {decimal_text(sens['rho'], 1)} points"
                   + (f" (over the configurations of class weighting {within}, the recommended arm's)"
                      if within else "")
                   + (f"; between class weightings {decimal_text(sens['class_weighting'], 1)} points"
                      if sens.get("class_weighting") is not None else "")
                   + f" (range of binned mean {sens['metric']}, {_trials(sens)})")
    c = s["counts"]
    m = metric_name(s)
    rows = [["recommended", f"lambda {s['lam']:.3g}, beta {s['beta']:.3g} (psi {s['psi']:.3f}, rho {s['rho']:.3f}); "
                            f"arm {s['arm']}"],
            ["chosen from", f"{s['stage']} stage by mean final validation {m} ({s['val_acc_mean']:.1f}%)"
                            + (f"; {s['stage_note']}" if s["stage_note"] else "")],
            [f"final test {m}", f"{fmt_acc(s['test_acc_mean'], s['test_acc_std'])}% (n={s['n_seeds']} seeds)"],
            *([["final test CMC rank-1 / 5 / 10", " / ".join(f"{decimal_text(s.get(f'test_rank{k}_mean'), 1)}%"
                                                           for k in (1, 5, 10))]] if m == "mAP" else []),
            [f"best test {m} over training (optimistic)", f"{decimal_text(s['best_test_acc_mean'], 1)}%"],
            ["within 1 point of the best", f"psi {s['psi_range'][0]:.2f}-{s['psi_range'][1]:.2f}, rho "
                                           f"{s['rho_range'][0]:.2f}-{s['rho_range'][1]:.2f} "
                                           f"({count_text(s['n_configs'], 'configuration')})"],
            ["importance (mode vs spread" + (" vs class weighting" if cw_importance else "") + ")", importance],
            ["sensitivity", sensitivity],
            ["trials", trials_text(c, "(means over finished ones; a diverged seed decides a comparison against "
                                      "its arm)")]]
    base_rows = [[name, f"{fmt_acc(b['baseline_mean'], b['baseline_std'])} (n={b['baseline_n']})",
                  f"{fmt_diff(b['mean_diff'], b['std'])} (n={b['n']}, "
                  f"{_pairing(b)})", b.get("verdict", "")]
                 for name, b in s["vs_baselines"].items()]
    header = ["baseline", f"final test {m} (%)",
              "DM minus baseline (points: mean +/- sample std of the per-seed differences)",
              "verdict (paired 95% t interval)"]
    return rows, header, base_rows


def guidelines_markdown(doc: dict[str, Any]) -> str:
    """The guidelines as Markdown: the sentences, the paper comparison, rules, trends, the surface
    and its leave-one-setting-out check, each setting's results (index.html's, without figures),
    counts and provenance."""
    prov = doc["provenance"]
    lines = ["# DM hyper-parameter guidelines", "",
             f"Generated {doc['generated']} from {runs_phrase(prov, ' of ' + _text(', '.join(prov['experiments'])))}. "
             f"Accuracies in {doc['accuracy_unit']}; "
             f"{doc['accuracy_note']}.", "", "## Guidelines", ""]
    lines += [f"- {_text(s['guideline'])}" for s in doc["settings"]] or ["- (no setting has finished DM runs)"]
    lines += [f"- {_text(w)}" for w in changed_data_lines(prov)]
    if doc["unresolved"]:  # (in the HTML they were named; here only a row of the counts said they existed)
        lines += ["", "Settings without a recommendation:", ""]
        lines += [f"- {_text(u['setting'])}: {_text(u['reason'])}" for u in doc["unresolved"]]
    compared = [[setting_label(s), f"{s['psi']:.2f}", decimal_text(s["paper_comparison"]["paper_psi"]),
                 s["paper_comparison"]["verdict"], s["paper_comparison"]["reason"]] for s in doc["settings"]]
    lines += ["", "## Comparison with the paper's guidance", "",
              *md_table(["setting", "measured psi", "paper psi", "verdict", "reason"], compared)]
    lines += ["", "## Rules across settings", ""]
    lines += [f"- {_text(r['text'])}" + (f" [paper: {_text(r['paper_comparison'])}]" if r.get("paper_comparison")
                                          else "") for r in doc["rules"]]
    lines += ["", "## Trends across settings (descriptive)", ""] + [f"- {_text(t['text'])}" for t in doc["trends"]]
    lines += surface_markdown(doc.get("surface")) + loso_markdown(doc.get("loso"))
    lines += ["", "## Per-setting results", ""]
    lines += [] if doc["settings"] else ["(no setting has finished DM runs)", ""]
    for s in doc["settings"]:  # (index.html's tables, its figures left out)
        rows, header, base_rows = setting_tables(s)
        lines += [f"### {_text(setting_label(s))}", "", f"Setting key {_text(s['setting'])}.", "",
                  *md_table(["", ""], rows), ""]
        lines += [*md_table(header, base_rows), ""] if base_rows else ["No baseline runs.", ""]
    lines += ["## Counts per setting", "", "Trainings by how they ended; *reused*: confirm-stage records of a "
              "search trial's run (same configuration and seed), not trained again.", "",
              *md_table(["setting", "finished", "diverged", "early-stopped", "errored", "in progress", "reused"],
                        [[s["setting"], *(s["counts"][k] for k in ("finished", "diverged", "early_stopped", "errored")),
                          s["counts"].get("in_progress", 0), s["counts"].get("reused", 0)]
                         for s in doc["settings"] + doc["unresolved"]])]
    # (the runs' tags: a store not written by dm-tune may hold anything there)
    lines += ["", "## Provenance", "", f"- git commits: {_text(', '.join(prov['git_commits']) or 'unknown')}",
              f"- dm-tune versions of the runs: {_text(', '.join(prov['dm_tune_versions_of_runs']) or 'unknown')}; "
              + _text(f"report by dm-tune {prov['dm_tune_version']}{report_commit_text(prov)}"),
              *(f"- package versions of the runs: {_text(v)}" for v in prov.get("package_versions_of_runs", [])),
              *(f"- machines of the runs: {_text(m)}" for m in prov.get("machines_of_runs", [])),
              *(f"- data of the runs: {_text(d)}" for d in prov.get("data_of_runs", [])),
              f"- tracking URI: {_text(prov.get('tracking_uri') or 'unknown')}", ""]
    return "\n".join(lines)


def trials_text(counts: dict[str, int], means_note: str = "") -> str:
    """A setting's trainings by how they ended, e.g. "3 finished, 1 diverged, 0 early-stopped, 0 errored"
    (``means_note`` after the four), with the reused and unfinished ones where there are any."""
    c = counts
    return (f"{c['finished']} finished, {c['diverged']} diverged, {c['early_stopped']} early-stopped, "
            f"{c['errored']} errored" + (f" {means_note}" if means_note else "")
            + (f"; and {c['reused']} confirm-stage records of search runs, not trained again" if c.get("reused") else "")
            + (f"; {c['in_progress']} still running or interrupted (no results yet: an arm with one is not complete)"
               if c.get("in_progress") else ""))


def report_commit_text(prov: dict[str, Any]) -> str:
    """" at commit X" for the code that wrote a report ("" in one written before it was recorded), as
    plain text."""
    commit = prov.get("report_git_commit")
    return f" at commit {commit}" if commit else ""


def surface_markdown(surface: dict[str, Any] | None) -> list[str]:
    """The 'Response surface' section: what was fitted, on how much, and what it learned."""
    lines = ["", "## Response surface", ""]
    if not surface:
        return lines + [NO_SURFACE_TEXT, ""]
    fitted = surface["fitted"]
    scales = ", ".join(f"{name} {ls:.3g}" for name, ls in fitted["length_scales"].items())
    lines += [f"A Gaussian process ({surface['model']['kernel']['form']}, normalised targets) of "
              f"{surface['target']}, fitted on {arms_phrase(surface)} (each its mean over its seeds) of "
              f"{settings_text(len(surface['settings']))}{hyperparameters_phrase(surface)}.",
              "", f"- features: {', '.join(surface['encoding']['features'])}",
              f"- fitted length scales (short: the gain changes fast along that feature): {scales}",
              f"- signal std {fitted['signal_std']:.2f} points, noise std {fitted['noise_std']:.2f} points "
              "(seed-to-seed and trial-to-trial scatter the surface does not explain)",
              "- `dm-tune recommend` reads it: the best predicted (psi, rho, class weighting), the region within "
              "1 point and the predicted gain over CCE with its 95% interval", ""]
    return lines


def loso_markdown(loso: dict[str, Any] | None) -> list[str]:
    """The 'Leave-one-setting-out validation' table and its summary."""
    lines = ["## Leave-one-setting-out validation", ""]
    if not loso:
        return lines + ["No setting could be held out (each needs CCE runs, confirm-stage DM arms and another "
                        "setting to fit on).", ""]
    lines += [f"Each setting is held out, the surface refitted on the others ({refit_phrase(loso)}) and asked for "
              f"it; the answer and the paper's guidance are scored on the held-out setting's {loso['metric']}, "
              f"{loso['note']}. "
              "Regret: the setting's best confirmed arm minus the estimate; ± the local GP's predictive std.", ""]
    rows = []
    for r in loso["rows"]:
        sf, pp = r["surface"], r["paper"]
        paper = (["-"] * 4 if pp is None else
                 [f"{pp['psi']:.2f}, {pp['rho']:.2f}", _estimate(pp), f"{pp['regret']:+.1f}",
                  f"{pp['gain_over_cce']:+.1f}"])
        rows.append([setting_label(r), f"{sf['psi']:.2f}, {sf['rho']:.2f}, {sf['class_weighting']}", _estimate(sf),
                     f"{sf['regret']:+.1f}", f"{sf['gain_over_cce']:+.1f}", *paper,
                     f"{r['best_arm']['arm']} ({r['best_arm']['test_acc']:.1f})"])
    lines += md_table(["setting", "surface (psi, rho, cw)", "est. test", "regret", "gain over CCE", "paper (psi, rho)",
                       "est. test", "regret", "gain over CCE", "best arm (test)"], rows)
    for mark, note in capped_notes(loso):
        lines += ["", f"{_md(mark)} {note}"]
    lines += ["", loso_summary_text(loso["summary"]), ""]
    return lines


CAPPED_NOTES = {
    "above": ("*", "capped: the local GP's estimate there was above the mean of every arm the setting measured "
                   "(the point lies beyond them), so it is given the highest of those means, which no trial "
                   "measured there: optimistic, and its regret can be below 0."),
    "below": ("†", "capped: the local GP's estimate there was below the mean of every arm the setting measured, so "
                   "it is given the lowest of those means, which no trial measured there (the GP's own estimate "
                   "was lower still)."),
}


def capped_mark(scored: dict[str, Any]) -> str:
    """' *' (capped above) or ' †' (below) after an estimate that was capped, else ''."""
    side = scored.get("capped") or ""
    return f" {CAPPED_NOTES[side][0]}" if side in CAPPED_NOTES else ""


def capped_notes(loso: dict[str, Any]) -> list[tuple[str, str]]:
    """(mark, note) for each side some estimate was capped on, by the summary's counts; a file of an
    earlier report that marked its rows but counted only one side is read from its rows."""
    def capped(side: str) -> bool:
        counts = [(loso["summary"].get(who) or {}).get(f"capped_{side}") for who in ("surface", "paper")]
        if any(c is None for c in counts):
            return any((r[who] or {}).get("capped") == side for r in loso["rows"] for who in ("surface", "paper"))
        return any(counts)
    return [CAPPED_NOTES[side] for side in ("above", "below") if capped(side)]


def _md(mark: str) -> str:
    return mark.replace("*", "\\*")


def _estimate(scored: dict[str, Any]) -> str:
    return f"{scored['test_acc']:.1f} ± {scored['test_acc_std']:.1f}{_md(capped_mark(scored))}"


def loso_summary_text(summary: dict[str, Any]) -> str:
    """One sentence: mean regret and gain of the surface and of the paper, and how often each beats CCE."""
    def part(who: str, name: str) -> str:
        s = summary[who]
        if not s["n"]:
            return f"{name}: no setting scored"
        capped = [f"{s[f'capped_{side}']} at the {extreme} arm mean measured{tone}"
                  for side, extreme, tone in (("above", "highest", ": optimistic"), ("below", "lowest", ""))
                  if s.get(f"capped_{side}")]
        return (f"{name}: mean regret {s['mean_regret']:.2f} points, mean gain over CCE {s['mean_gain_over_cce']:+.2f}, "
                f"an estimated gain over CCE in {s['beats_cce']} of {settings_text(s['n'])}"
                + (f" (of its estimates, capped: {'; '.join(capped)})" if capped else ""))
    return (f"Over {settings_text(summary['n_settings'], 'held-out')}, {part('surface', 'surface')}; "
            f"{part('paper', 'paper')}.")


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(json_safe(doc), indent=2, sort_keys=False, allow_nan=False) + "\n"


