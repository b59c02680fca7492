"""Stability of the guidelines between two runs of one campaign (e.g. two search orders).

``compare(a, b)`` takes two guidelines documents (the JSON that ``dm-tune report`` writes) and
returns a JSON-safe dict: per setting present in both, how far apart the two best points are
(|d psi|, |d rho|, |d log rho| where both rho > 0) and whether their near-best regions overlap
(``psi_range`` and ``rho_range`` intervals); the settings found in one run only; and each
cross-setting rule's status in both runs. A rule is claimed only when it is supported in both
runs with the same sign of slope. ``dm-tune stability A.json B.json`` writes stability.json and
stability.md.

Only the keys used here are checked (not the schema version, which may move): a missing one is
a UserError naming the file, the entry and the key.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dm_tune.errors import (UserError, json_text, output_dir, output_path, path_argument, resolve_path,
                            write_output)
from dm_tune.reports._text import md_table, md_text

SETTING_KEYS = ("setting", "psi", "rho", "psi_range", "rho_range", "vs_baselines")
RULE_KEYS = ("kind", "knob", "supported")
FLAT = 1e-9  # |slope| below this: sign 0


# --- reading -----------------------------------------------------------------------------------


def check_doc(doc: Any, name: str) -> None:
    """Raise UserError naming ``name``, the entry and the first missing or malformed key."""
    if not isinstance(doc, Mapping):
        raise UserError(f"{name}: expected a guidelines document (a JSON object)")
    for key in ("settings", "rules"):
        if not isinstance(doc.get(key), list):
            raise UserError(f"{name}: missing key {key!r} (a list)")
    seen: set[str] = set()
    for i, s in enumerate(doc["settings"]):
        where = f"{name}: settings[{i}]"
        if not isinstance(s, Mapping):
            raise UserError(f"{where}: expected an object")
        for key in SETTING_KEYS:
            if key not in s:
                raise UserError(f"{where}: missing key {key!r}")
        if not isinstance(s["setting"], str) or not s["setting"]:
            raise UserError(f"{where}: setting must be a non-empty string, got {s['setting']!r}")
        if s["setting"] in seen:
            raise UserError(f"{where}: setting {s['setting']!r} appears twice")
        seen.add(s["setting"])
        for key in ("psi_range", "rho_range"):
            r = s[key]
            if not (isinstance(r, list) and len(r) == 2 and all(_is_number(v) for v in r) and r[0] <= r[1]):
                raise UserError(f"{where} ({s['setting']}): {key} must be a [low, high] pair of numbers, low <= high")
        for key in ("psi", "rho"):
            if not _is_number(s[key]):
                raise UserError(f"{where} ({s['setting']}): {key} must be a number")
        if not isinstance(s["vs_baselines"], Mapping):
            raise UserError(f"{where} ({s['setting']}): vs_baselines must be an object")
        cce = s["vs_baselines"].get("cce")
        if isinstance(cce, Mapping):
            for key in ("mean_diff", "std"):
                if key not in cce:
                    raise UserError(f"{where} ({s['setting']}): missing key 'vs_baselines.cce.{key}'")
                if cce[key] is not None and not (isinstance(cce[key], (int, float)) and not isinstance(cce[key], bool)):
                    raise UserError(f"{where} ({s['setting']}): vs_baselines.cce.{key} must be a number or null, "
                                    f"got {cce[key]!r}")
    for i, r in enumerate(doc["rules"]):
        if not isinstance(r, Mapping):
            raise UserError(f"{name}: rules[{i}]: expected an object")
        for key in RULE_KEYS:
            if key not in r:
                raise UserError(f"{name}: rules[{i}]: missing key {key!r}")
        for key in ("kind", "knob", "x", "task"):
            if key in r and not isinstance(r[key], str):
                raise UserError(f"{name}: rules[{i}]: {key} must be a string, got {r[key]!r}")
        if r.get("group") is not None and not (isinstance(r["group"], Mapping)
                                               and all(isinstance(k, str) for k in r["group"])):
            raise UserError(f"{name}: rules[{i}]: group must be an object of field: value, got {r['group']!r}")
        if not isinstance(r["supported"], bool):  # ("no" was taken as true: a rule claimed that is not)
            raise UserError(f"{name}: rules[{i}]: supported must be true or false, got {r['supported']!r}")
        if r["supported"] and not _is_number(r.get("b")):
            raise UserError(f"{name}: rules[{i}]: missing key 'b' (the slope of a supported rule)")
    if doc.get("surface") is not None:
        from dm_tune.reports._schema import surface_problem

        problem = surface_problem(doc["surface"])
        if problem:
            raise UserError(f"{name}: {problem}")


def load_doc(path: str | Path) -> dict[str, Any]:
    from dm_tune.reports._schema import read_guidelines_file

    path = Path(path)
    doc = read_guidelines_file(path)
    check_doc(doc, str(path))
    return doc


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --- comparing (pure) --------------------------------------------------------------------------


def overlaps(a: list[float], b: list[float]) -> bool:
    """Whether closed intervals [a0, a1] and [b0, b1] share a point."""
    return a[0] <= b[1] and b[0] <= a[1]


def _gain(s: Mapping[str, Any]) -> dict[str, Any] | None:
    cce = s["vs_baselines"].get("cce") if isinstance(s["vs_baselines"], Mapping) else None
    return {"mean_diff": cce["mean_diff"], "std": cce["std"], "n": cce.get("n")} if isinstance(cce, Mapping) else None


def _point(s: Mapping[str, Any]) -> dict[str, Any]:
    """A run's recommendation for a setting, with how many seeds measured it and at which stage (a
    search-stage arm was not confirmed: fewer seeds)."""
    return ({k: s[k] for k in ("psi", "rho", "psi_range", "rho_range")}
            | {"gain_vs_cce": _gain(s), "n_seeds": s.get("n_seeds"), "stage": s.get("stage")})


def compare_setting(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """One setting measured in both runs: distances between the points, region overlap, gains."""
    log_rho = (abs(math.log(a["rho"]) - math.log(b["rho"])) if a["rho"] > 0 and b["rho"] > 0 else None)
    psi_ov, rho_ov = overlaps(a["psi_range"], b["psi_range"]), overlaps(a["rho_range"], b["rho_range"])
    return {"setting": a["setting"],
            "a": _point(a), "b": _point(b),
            "d_psi": abs(a["psi"] - b["psi"]), "d_rho": abs(a["rho"] - b["rho"]), "d_log_rho": log_rho,
            "psi_overlap": psi_ov, "rho_overlap": rho_ov, "region_overlap": psi_ov and rho_ov}


def rule_id(rule: Mapping[str, Any]) -> str:
    """What identifies a rule across runs: its task, kind, knob, x and group (not its fitted values)."""
    group = rule.get("group") or {}
    where = ", ".join(f"{k}={group[k]}" for k in sorted(group)) or "all settings"
    task = rule.get("task", "classification")
    return (f"[{task}] " if task != "classification" else "") + f"{rule['kind']}: {rule['knob']} vs " \
        f"{rule.get('x', '?')} ({where})"


def _sign(b: float) -> int:
    return 0 if abs(b) <= FLAT else (1 if b > 0 else -1)


def rule_status(rule: Mapping[str, Any] | None) -> str:
    if rule is None:
        return "absent"
    if not rule["supported"]:
        return "not supported"
    return "supported (" + {1: "+", -1: "-", 0: "flat"}[_sign(rule["b"])] + ")"


def rule_verdict(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> str:
    """"holds in both" (supported in both, same sign of slope), "opposite signs", "only in A",
    "only in B" or "in neither"."""
    sa, sb = bool(a and a["supported"]), bool(b and b["supported"])
    if sa and sb:
        return "holds in both" if _sign(a["b"]) == _sign(b["b"]) else "opposite signs"
    return "only in A" if sa else "only in B" if sb else "in neither"


def compare(a: Mapping[str, Any], b: Mapping[str, Any], names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Two checked guidelines documents (``check_doc``) -> the stability summary (JSON-safe);
    ``names``: how errors name them (their files)."""
    sa = {s["setting"]: s for s in a["settings"]}
    sb = {s["setting"]: s for s in b["settings"]}
    common = [compare_setting(sa[k], sb[k]) for k in sorted(sa.keys() & sb.keys())]
    # Two runs of one campaign share their training: a setting trained for other epochs is another
    # experiment, and its differences are not the search's instability (guidelines written before
    # settings recorded their epochs are taken as they are).
    budgets = [f"{k}: {sa[k]['epochs']} vs {sb[k]['epochs']} epochs" for k in sorted(sa.keys() & sb.keys())
               if sa[k].get("epochs") is not None and sb[k].get("epochs") is not None
               and sa[k]["epochs"] != sb[k]["epochs"]]
    ra = {rule_id(r): r for r in a["rules"]}
    rb = {rule_id(r): r for r in b["rules"]}
    rules = []
    for rid in sorted(ra.keys() | rb.keys()):
        r = ra.get(rid) or rb[rid]
        rules.append({"rule": rid, "kind": r["kind"], "knob": r["knob"], "group": r.get("group") or {},
                      "a": rule_status(ra.get(rid)), "b": rule_status(rb.get(rid)),
                      "verdict": rule_verdict(ra.get(rid), rb.get(rid)),
                      "text_a": ra[rid].get("text") if rid in ra else None,
                      "text_b": rb[rid].get("text") if rid in rb else None})
    # Files of two schema versions were written by reports that analyse differently (version 2 fits
    # a response surface; the ranges and rules may be computed otherwise): not the same measurement.
    versions = [a.get("schema_version"), b.get("schema_version")]
    analyses = [a.get("analysis_version", 1), b.get("analysis_version", 1)]  # (absent: an earlier report's)
    return {"settings": common, "identical": a == b, "different_training": budgets, "schema_versions": versions,
            "different_schema": versions[0] != versions[1], "analysis_versions": analyses,
            "different_analysis": analyses[0] != analyses[1], "only_in_a": sorted(sa.keys() - sb.keys()),
            "only_in_b": sorted(sb.keys() - sa.keys()), "rules": rules, "summary": _summary(common, rules),
            "surfaces": compare_surfaces(a, b, names)}


def compare_surfaces(a: Mapping[str, Any], b: Mapping[str, Any],
                     names: tuple[str, str] = ("A", "B")) -> dict[str, Any] | None:
    """What each run's response surface recommends for every setting both measured: distance
    between the points, whether the regions within 1 point (and the plausible ones) overlap,
    whether the class weighting agrees, and both predicted gains. None without two surfaces."""
    sa, sb = a.get("surface"), b.get("surface")
    if not (isinstance(sa, Mapping) and isinstance(sb, Mapping)) or sa.get("task") != sb.get("task"):
        return None
    from dm_tune.reports._surface import recommend_from_surface

    def rec(surface: Mapping[str, Any], m: Mapping[str, Any], name: str) -> dict[str, Any]:
        try:
            return recommend_from_surface(dict(surface), int(m["num_classes"]), str(m["noise"]),
                                          float(m["noise_rate"]), str(m["imbalance"]), float(m["imbalance_ratio"]),
                                          str(m["dataset"]))
        except (ArithmeticError, IndexError, KeyError, TypeError, ValueError) as e:  # as recommend says it
            raise UserError(f"{name}: the surface block cannot be used ({type(e).__name__}: {e}); write it again "
                            "with 'dm-tune report'") from None

    ma = {m["setting"]: m for m in sa.get("settings", [])}
    mb = {m["setting"]: m for m in sb.get("settings", [])}
    rows = []
    for key in sorted(ma.keys() & mb.keys()):
        ra, rb = rec(sa, ma[key], names[0]), rec(sb, mb[key], names[1])
        near = overlaps(ra["region"]["psi"], rb["region"]["psi"]) and overlaps(ra["region"]["rho"], rb["region"]["rho"])
        pa, pb = ra["region"]["plausible"], rb["region"]["plausible"]
        rows.append({"setting": key,
                     "a": {k: ra[k] for k in ("psi", "rho", "class_weighting", "region", "predicted_gain")},
                     "b": {k: rb[k] for k in ("psi", "rho", "class_weighting", "region", "predicted_gain")},
                     "d_psi": abs(ra["psi"] - rb["psi"]), "d_log_rho": abs(math.log(ra["rho"]) - math.log(rb["rho"])),
                     "region_overlap": near,
                     "plausible_overlap": overlaps(pa["psi"], pb["psi"]) and overlaps(pa["rho"], pb["rho"]),
                     "same_class_weighting": ra["class_weighting"] == rb["class_weighting"]})
    n = len(rows)
    summary = {"n_common": n,
               **{f"{k}_fraction": (sum(r[k] for r in rows) / n if n else None)
                  for k in ("region_overlap", "plausible_overlap", "same_class_weighting")},
               "median_d_psi": statistics.median(r["d_psi"] for r in rows) if rows else None,
               "median_d_log_rho": statistics.median(r["d_log_rho"] for r in rows) if rows else None}
    return {"settings": rows, "summary": summary}


def _summary(common: list[dict[str, Any]], rules: list[dict[str, Any]]) -> dict[str, Any]:
    def frac(key: str) -> float | None:
        return sum(c[key] for c in common) / len(common) if common else None

    def median(key: str) -> float | None:
        values = [c[key] for c in common if c[key] is not None]
        return statistics.median(values) if values else None

    return {"n_common": len(common), "region_overlap_fraction": frac("region_overlap"),
            "psi_overlap_fraction": frac("psi_overlap"), "rho_overlap_fraction": frac("rho_overlap"),
            "median_d_psi": median("d_psi"), "median_d_rho": median("d_rho"),
            "median_d_log_rho": median("d_log_rho"),
            "rules_claimed": sum(r["verdict"] == "holds in both" for r in rules), "rules_total": len(rules)}


# --- output ------------------------------------------------------------------------------------


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _range(r: list[float]) -> str:
    return f"[{r[0]:.2f}, {r[1]:.2f}]"


def _gain_text(g: Mapping[str, Any] | None) -> str:
    if g is None or g["mean_diff"] is None:
        return "n/a"
    return (f"{g['mean_diff']:+.2f}" + (f" ± {g['std']:.2f}" if _is_number(g["std"]) else "")
            + (f" (n={g['n']})" if _is_number(g.get("n")) else ""))


def _psi_text(side: Mapping[str, Any]) -> str:
    """psi and its range; an arm not confirmed (search stage) says so, with its seeds."""
    text = f"{side['psi']:.3f} {_range(side['psi_range'])}"
    if side.get("stage") == "search":
        text += f" (search stage, {side.get('n_seeds', '?')} seed(s), not confirmed)"
    return text


def _yes(v: bool) -> str:
    return "yes" if v else "no"


def brief(result: Mapping[str, Any]) -> str:
    """A few lines for the terminal."""
    s = result["summary"]
    lines = [f"{s['n_common']} setting(s) in both runs; near-best regions overlap in "
             f"{_num(s['region_overlap_fraction'], '.0%')} (psi {_num(s['psi_overlap_fraction'], '.0%')}, "
             f"rho {_num(s['rho_overlap_fraction'], '.0%')}); median |d psi| {_num(s['median_d_psi'])}, "
             f"|d rho| {_num(s['median_d_rho'])}, |d log rho| {_num(s['median_d_log_rho'])}"]
    for key, run in (("only_in_a", "A"), ("only_in_b", "B")):
        if result[key]:
            lines.append(f"only in {run}: {', '.join(result[key])}")
    if result.get("identical"):  # (the same file twice: 100% overlap that says nothing)
        lines.append("warning: A and B are the same guidelines, one run compared with itself: not a test of "
                     "stability (give the guidelines.json of two runs of one campaign)")
    elif not s["n_common"]:
        lines.append("warning: the two runs share no setting: no setting compared (two runs of one campaign "
                     "measure the same settings)")
    if result.get("different_training"):
        lines.append("warning: trained differently, so not a test of stability: "
                     + "; ".join(result["different_training"]))
    if result.get("different_schema"):
        lines.append(f"warning: {_schema_text(result['schema_versions'])}")
    elif result.get("different_analysis"):
        lines.append(f"warning: {_analysis_text(result['analysis_versions'])}")
    surfaces = result.get("surfaces")
    if surfaces:
        t = surfaces["summary"]
        lines.append(f"response surfaces: regions within 1 point overlap in {_num(t['region_overlap_fraction'], '.0%')} "
                     f"of {t['n_common']} settings (plausible regions {_num(t['plausible_overlap_fraction'], '.0%')}); "
                     f"median |d psi| {_num(t['median_d_psi'])}, |d log rho| {_num(t['median_d_log_rho'], '.2f')}")
    lines.append(f"rules claimed (supported in both, same sign): {s['rules_claimed']} of {s['rules_total']}")
    lines += [f"- {r['rule']}: {r['verdict']}" for r in result["rules"] if r["verdict"] != "in neither"]
    return "\n".join(lines)


def _schema_text(versions: list[Any]) -> str:
    a, b = (v if v is not None else "unrecorded" for v in versions)
    return (f"the two files are of guidelines schema versions {a} and {b}, written by reports that analyse "
            "differently: their differences are not only the search's instability (regenerate the older one "
            "with 'dm-tune report')")


def _analysis_text(versions: list[Any]) -> str:
    return (f"the two files were written by reports that analyse differently (analysis versions {versions[0]} and "
            f"{versions[1]}: rules and refutations by other criteria), so their rules' differences are not only the "
            "search's instability (regenerate the older one with 'dm-tune report')")


def to_markdown(result: Mapping[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    s = result["summary"]
    head = ["setting", "psi A", "psi B", "Δ psi", "rho A", "rho B", "Δ rho", "Δ log rho",
            "psi ranges overlap", "rho ranges overlap", "gain vs CCE A", "gain vs CCE B"]
    lines = ["## Stability between two runs", "", f"A: {md_text(name_a)}  ", f"B: {md_text(name_b)}", "",
             "Δ: absolute differences between the two runs.", "",
             f"{s['n_common']} setting(s) measured in both; near-best regions (psi and rho ranges) overlap in "
             f"{_num(s['region_overlap_fraction'], '.0%')}; median |d psi| {_num(s['median_d_psi'])}, median "
             f"|d rho| {_num(s['median_d_rho'])}, median |d log rho| {_num(s['median_d_log_rho'])}. "
             "Gains are final test accuracy points over CCE, mean ± std of paired differences over n seeds.", "",
             *md_table(head, [[c["setting"], _psi_text(c["a"]), _psi_text(c["b"]), f"{c['d_psi']:.3f}",
                               f"{c['a']['rho']:.2f} {_range(c['a']['rho_range'])}",
                               f"{c['b']['rho']:.2f} {_range(c['b']['rho_range'])}", f"{c['d_rho']:.2f}",
                               _num(c["d_log_rho"], ".2f"), _yes(c["psi_overlap"]), _yes(c["rho_overlap"]),
                               _gain_text(c["a"]["gain_vs_cce"]), _gain_text(c["b"]["gain_vs_cce"])]
                              for c in result["settings"]])]
    for key, run in (("only_in_a", "A"), ("only_in_b", "B")):
        if result[key]:
            lines += ["", f"Only in {run}: {md_text(', '.join(result[key]))}."]
    if result.get("identical"):  # (said on the terminal only: the files read as a perfect stability)
        lines += ["", "**A and B are the same guidelines, one run compared with itself: not a test of stability** "
                      "(give the guidelines.json of two runs of one campaign)."]
    elif not s["n_common"]:
        lines += ["", "**The two runs share no setting: no setting compared** (two runs of one campaign measure "
                      "the same settings)."]
    if result.get("different_training"):
        lines += ["", "**Trained differently in the two runs** (their differences are not the search's instability): "
                  + md_text("; ".join(result["different_training"])) + "."]
    if result.get("different_schema"):
        lines += ["", f"**{_schema_text(result['schema_versions'])}.**"]
    elif result.get("different_analysis"):
        lines += ["", f"**{_analysis_text(result['analysis_versions'])}.**"]
    lines += _surfaces_markdown(result.get("surfaces"))
    lines += ["", "### Rules", "", "A rule is claimed only when it is supported in both runs with the same sign "
              f"of slope: {s['rules_claimed']} of {s['rules_total']}.", "",
              *md_table(["rule", "A", "B", "verdict"],
                        [[r["rule"], r["a"], r["b"], r["verdict"]] for r in result["rules"]])]
    return "\n".join(lines) + "\n"


def _surfaces_markdown(surfaces: Mapping[str, Any] | None) -> list[str]:
    if not surfaces:
        return []
    s = surfaces["summary"]
    lines = ["", "### The response surfaces' recommendations", "",
             f"Each run's surface asked for each of the {s['n_common']} settings both measured: the regions within "
             f"1 point overlap in {_num(s['region_overlap_fraction'], '.0%')}, the plausible regions in "
             f"{_num(s['plausible_overlap_fraction'], '.0%')}, the class weighting agrees in "
             f"{_num(s['same_class_weighting_fraction'], '.0%')}; median |d psi| {_num(s['median_d_psi'])}, median "
             f"|d log rho| {_num(s['median_d_log_rho'], '.2f')}. Predicted gains are validation points over CCE.", ""]

    def region(x: Mapping[str, Any]) -> str:
        return f"psi {_range(x['region']['psi'])}, rho {_range(x['region']['rho'])}"

    def gain(x: Mapping[str, Any]) -> str:
        g = x["predicted_gain"]
        return f"{g['mean']:+.1f} [{g['low']:+.1f}, {g['high']:+.1f}]"

    rows = [[r["setting"], f"{r['a']['psi']:.2f}, {r['a']['rho']:.2f}", f"{r['b']['psi']:.2f}, {r['b']['rho']:.2f}",
             region(r["a"]), region(r["b"]), _yes(r["region_overlap"]),
             f"{r['a']['class_weighting']} / {r['b']['class_weighting']}", gain(r["a"]), gain(r["b"])]
            for r in surfaces["settings"]]
    return lines + md_table(["setting", "psi, rho A", "psi, rho B", "region A", "region B", "overlap",
                             "class weighting A / B", "predicted gain A", "predicted gain B"], rows)


# --- command line ------------------------------------------------------------------------------


def add_stability_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``stability``: compare the guidelines of two runs of one campaign."""
    p = subparsers.add_parser(
        "stability", help="compare the guidelines.json of two runs of one campaign",
        description="Per setting: distance between the two best (psi, rho) points and whether the near-best "
                    "regions overlap; per rule: whether it holds in both runs with the same sign of slope.")
    p.add_argument("a", metavar="A.json", type=path_argument, help="guidelines.json of the first run")
    p.add_argument("b", metavar="B.json", type=path_argument, help="guidelines.json of the second run")
    p.add_argument("--out", type=path_argument, help="write stability.json and stability.md into this directory")
    p.set_defaults(func=stability_command)
    return p


def stability_command(args: argparse.Namespace) -> int:
    if args.out:  # checked before anything is printed; made only when there is something to write
        where = output_path("--out", args.out, directory=True)
        taken = next((name for name in ("stability.json", "stability.md")
                      if (where / name).exists() and not (where / name).is_file()), None)
        if taken is not None:  # (it printed everything and wrote stability.json, then failed)
            raise UserError(f"--out {args.out}: {where / taken} is not a file (stability writes it); use another --out")
        # Never one of its own inputs (links followed): stability.json (or .md) as A or B was replaced
        # by the comparison, the guidelines it was read from lost, as train refuses its --out.
        for flag, value in (("A.json", args.a), ("B.json", args.b)):
            src = resolve_path(value, flag)
            hit = next((name for name in ("stability.json", "stability.md")
                        if resolve_path(where / name, "--out") == src), None)
            if hit is not None:
                raise UserError(f"--out {args.out}: its {hit} is the input {value} ({flag}); write the result "
                                "elsewhere")
    result = compare(load_doc(args.a), load_doc(args.b), (str(args.a), str(args.b)))
    print(brief(result))
    if args.out:
        from dm_tune._locks import held

        out = output_dir("--out", args.out)
        doc = {"a": str(args.a), "b": str(args.b), **result}  # as given: the names the Markdown shows
        try:
            with held(out / ".stability.lock", f"--out {args.out}: another dm-tune stability is writing there "
                                               "({holder}); wait for it to end or use another --out", wait_s=30.0):
                write_output(out / "stability.json", json_text(doc))  # (the pair one comparison's, not two's)
                write_output(out / "stability.md", to_markdown(result, args.a, args.b))
        except OSError as e:  # the lock file (a folder in its place, say)
            raise UserError(f"--out {args.out}: cannot write there ({e.strerror or e})") from None
        print(f"stability.json: {out / 'stability.json'}\nstability.md: {out / 'stability.md'}")
    return 0
