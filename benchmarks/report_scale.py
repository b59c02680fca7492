"""The report's Gaussian processes at thousands of arms, on one store: the two shortcuts against the full work.

    python benchmarks/report_scale.py --tracking-uri sqlite:////path/to/ws/mlflow.db [--surface subset,all]
        [--ways refit,kept] [--json out.json]

Loads a search's MLflow runs as `dm-tune report` does, then:
- fits the response surface with its kernel's hyper-parameters optimised on a seeded subset of
  ``_surface.HYPERPARAMETER_ROWS`` rows (``subset``: what the report does above that size) and on
  every row (``all``: what it did before), timed, with the process's peak memory after each (subset
  first), and compares the two surfaces' recommendations for every measured setting;
- runs leave-one-setting-out from the report's surface each way (``_loso.leave_one_setting_out``'s
  ``hyperparameters``): ``refit`` re-optimises each held-out refit's kernel hyper-parameters from the
  full fit's (what the report did at every size before KEPT_ROWS), ``kept`` keeps the full fit's
  (one factorisation per setting); wall and CPU seconds of each and, setting by setting, whether the
  two recommended the same (psi, rho, class weighting) and how far apart their estimated regrets are.
``--surface subset --ways kept`` times a store too large for the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import _machine

WAYS = ("refit", "kept")
SURFACES = ("subset", "all")


def _timed(what: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = what(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _agreement(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Setting by setting, ``a`` refitted and ``b`` kept: the same recommendation (psi and rho within
    1e-6, the same weighting), and the difference of the estimated regrets."""
    pairs = [(x, y) for x, y in zip(a["rows"], b["rows"]) if x["setting"] == y["setting"]]
    same = [abs(x["surface"]["psi"] - y["surface"]["psi"]) < 1e-6 and abs(x["surface"]["rho"] - y["surface"]["rho"])
            < 1e-6 and x["surface"]["class_weighting"] == y["surface"]["class_weighting"] for x, y in pairs]
    diffs = [abs(x["surface"]["regret"] - y["surface"]["regret"]) for x, y in pairs]
    return {"settings": len(pairs), "same_recommendation": sum(same),
            "regret_abs_diff_median": statistics.median(diffs) if diffs else None,
            "regret_abs_diff_max": max(diffs) if diffs else None,
            "differing": [{"setting": x["setting"], "refit": x["surface"], "kept": y["surface"]}
                          for (x, y), s in zip(pairs, same) if not s]}


def _recommendations(surface: dict[str, Any]) -> list[dict[str, Any]]:
    from dm_tune.reports._surface import recommend_from_surface

    return [recommend_from_surface(surface, int(m["num_classes"]), m["noise"], float(m["noise_rate"]), m["imbalance"],
                                   float(m["imbalance_ratio"]), m["dataset"]) for m in surface["settings"]]


def _surfaces_agree(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """For each measured setting, the subset surface's recommendation (``a``) against the full fit's:
    the same point, and each point within the other's region (within 1 point of its best)."""
    same = [x["class_weighting"] == y["class_weighting"] and abs(x["psi"] - y["psi"]) < 1e-6
            and abs(x["rho"] - y["rho"]) < 1e-6 for x, y in zip(a, b)]
    psi = [abs(x["psi"] - y["psi"]) for x, y in zip(a, b)]
    log_rho = [abs(math.log(x["rho"] / y["rho"])) for x, y in zip(a, b)]
    gain = [abs(x["predicted_gain"]["mean"] - y["predicted_gain"]["mean"]) for x, y in zip(a, b)]

    def inside(x: dict[str, Any], y: dict[str, Any]) -> bool:  # x's point within y's region (1 point of its best)
        return (x["class_weighting"] == y["class_weighting"]
                and all(lo - 1e-9 <= x[k] <= hi + 1e-9 for k in ("psi", "rho") for lo, hi in [y["region"][k]]))
    return {"settings": len(a), "same_recommendation": sum(same),
            "within_the_others_region": sum(inside(x, y) and inside(y, x) for x, y in zip(a, b)),
            "same_class_weighting": sum(x["class_weighting"] == y["class_weighting"] for x, y in zip(a, b)),
            "psi_abs_diff_median": statistics.median(psi), "psi_abs_diff_max": max(psi),
            "log_rho_abs_diff_median": statistics.median(log_rho), "log_rho_abs_diff_max": max(log_rho),
            "predicted_gain_abs_diff_median": statistics.median(gain), "predicted_gain_abs_diff_max": max(gain)}


def _choice(p: argparse.ArgumentParser, flag: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    chosen = [w.strip() for w in value.split(",") if w.strip()]
    if not chosen or any(w not in allowed for w in chosen):
        p.error(f"{flag}: {value!r}: give {' or '.join(allowed)}, comma-separated")
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", required=True, help="the search's MLflow store (sqlite:///ABSOLUTE/PATH)")
    p.add_argument("--surface", default=",".join(SURFACES), help="subset, all or both (default subset,all)")
    p.add_argument("--ways", default=",".join(WAYS), help="refit, kept or both (default refit,kept); none: no "
                   "leave-one-setting-out")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args()
    surfaces = _choice(p, "--surface", args.surface, SURFACES)
    ways = [] if args.ways == "none" else _choice(p, "--ways", args.ways, WAYS)

    from dm_tune.reports import _surface
    from dm_tune.reports._load import load_runs
    from dm_tune.reports._loso import leave_one_setting_out

    df = load_runs(args.tracking_uri)
    rows, _ = _surface.training_rows(df)
    result: dict[str, Any] = {"machine": _machine.machine(), "load_average_start": _machine.load_average(),
                              "runs": len(df), "settings": int(df["setting"].nunique()), "surface_rows": len(rows),
                              "hyperparameter_rows": _surface.HYPERPARAMETER_ROWS, "surface": {}, "ways": {}}
    print(f"{len(df)} runs, {result['settings']} settings, {len(rows)} surface rows", flush=True)
    fitted = {}
    kept = _surface.HYPERPARAMETER_ROWS
    for name in surfaces:  # (subset first: the peak memory is the process's so far)
        _surface.HYPERPARAMETER_ROWS = kept if name == "subset" else len(rows)
        try:
            fitted[name], wall, cpu = _timed(_surface.fit_surface, df)
        finally:
            _surface.HYPERPARAMETER_ROWS = kept
        if fitted[name] is None:
            p.error("the store's arms fit no surface: nothing to hold out")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["surface"][name] = {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak,
                                   "rows_optimised_on": fitted[name]["fitted"]["hyperparameter_rows"],
                                   "theta": fitted[name]["model"]["theta"]}
        print(f"  surface, hyper-parameters on {name} rows ({result['surface'][name]['rows_optimised_on']}): "
              f"wall {wall:.1f} s, CPU {cpu:.1f} s, "
              f"peak memory {peak:.0f} MB", flush=True)
    if len(fitted) == 2:
        ag = result["surface_agreement"] = _surfaces_agree(_recommendations(fitted["subset"]),
                                                           _recommendations(fitted["all"]))
        print(f"  the two surfaces recommend the same point for {ag['same_recommendation']} of {ag['settings']} "
              f"measured settings, each within the other's region for {ag['within_the_others_region']}, "
              f"the same weighting for {ag['same_class_weighting']}; psi apart by "
              f"{ag['psi_abs_diff_median']:.3f} (median) / {ag['psi_abs_diff_max']:.3f}, predicted gains by "
              f"{ag['predicted_gain_abs_diff_median']:.2f} / {ag['predicted_gain_abs_diff_max']:.2f} points",
              flush=True)
    surface = fitted.get("subset") or fitted["all"]  # the report's own
    answers = {}
    for way in ways:
        answers[way], wall, cpu = _timed(leave_one_setting_out, df, start=surface, hyperparameters=way)
        n = len(answers[way]["rows"]) if answers[way] else 0
        summary = answers[way]["summary"]["surface"] if answers[way] else {}
        result["ways"][way] = {"wall_s": wall, "cpu_s": cpu, "held_out": n,
                               "mean_regret": summary.get("mean_regret"),
                               "mean_gain_over_cce": summary.get("mean_gain_over_cce")}
        print(f"  leave-one-setting-out, {way}: {n} settings held out, wall {wall:.1f} s, CPU {cpu:.1f} s, "
              f"mean regret {summary.get('mean_regret', float('nan')):.3f} points", flush=True)
    if len(answers) == 2 and all(answers.values()):
        ag = result["agreement"] = _agreement(answers["refit"], answers["kept"])
        result["ratio_wall"] = result["ways"]["refit"]["wall_s"] / result["ways"]["kept"]["wall_s"]
        print(f"  kept {result['ratio_wall']:.1f}x faster (wall); the same recommendation in "
              f"{ag['same_recommendation']} of {ag['settings']} settings; estimated regrets apart by "
              f"{ag['regret_abs_diff_median']:.3f} points (median), {ag['regret_abs_diff_max']:.3f} at most")
    result["load_average_end"] = _machine.load_average()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
