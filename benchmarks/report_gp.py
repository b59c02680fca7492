"""The report's Gaussian processes on one store: BLAS threads as they are against one thread.

    python benchmarks/report_gp.py --tracking-uri sqlite:////path/to/ws/mlflow.db [--json out.json]

Loads a search's MLflow runs as `dm-tune report` does, then times the report's GP work (the
surface's fit, and leave-one-setting-out: a refit without each setting and a local GP of each
setting's own arms), the two ways alternating over repeats: with the library's default BLAS
threads for every GP (``--threads default``: what the report did before ONE_THREAD_ROWS) and as
the report runs it now (GPs below ``_surface.ONE_THREAD_ROWS`` rows on one BLAS thread). Wall and
CPU seconds per arm, medians over repeats, and the machine's load average (a busy machine is the
case the one thread is for: a report run beside a search). The two arms' answers are checked to
agree (the same optimiser, the same numbers up to BLAS's summation order).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import _args
import _machine


def _gp_work(df: Any) -> dict[str, Any]:
    from dm_tune.reports._loso import leave_one_setting_out
    from dm_tune.reports._surface import fit_surface

    surface = fit_surface(df)
    loso = leave_one_setting_out(df, start=surface)
    return {"theta": surface["model"]["theta"] if surface else None,
            "regrets": [r["surface"]["regret"] for r in loso["rows"]] if loso else []}


def _timed(df: Any, one_thread_rows: int) -> tuple[float, float, dict[str, Any]]:
    from dm_tune.reports import _surface

    kept = _surface.ONE_THREAD_ROWS
    _surface.ONE_THREAD_ROWS = one_thread_rows
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        answer = _gp_work(df)
        return time.perf_counter() - wall, time.process_time() - cpu, answer
    finally:
        _surface.ONE_THREAD_ROWS = kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", required=True, help="the search's MLflow store (sqlite:///ABSOLUTE/PATH)")
    p.add_argument("--repeats", type=_args.positive_int, default=2)
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args()

    from dm_tune.reports._load import load_runs
    from dm_tune.reports._surface import ONE_THREAD_ROWS, training_rows

    df = load_runs(args.tracking_uri)
    rows, _ = training_rows(df)
    load = _machine.load_average()
    arms = {"default threads": 0, "one thread below ONE_THREAD_ROWS": ONE_THREAD_ROWS}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    answers: dict[str, dict[str, Any]] = {}
    for r in range(args.repeats):
        for name in (list(arms) if r % 2 == 0 else list(reversed(arms))):
            wall, cpu, answers[name] = _timed(df, arms[name])
            times[name].append((wall, cpu))
            print(f"  {name}: wall {wall:.1f} s, CPU {cpu:.1f} s", flush=True)
    a, b = answers.values()
    agree = len(a["regrets"]) == len(b["regrets"]) and all(abs(x - y) < 0.05 for x, y in zip(a["regrets"], b["regrets"]))
    result = {"machine": _machine.machine(), "load_average_start": load, "load_average_end": _machine.load_average(),
              "runs": len(df), "settings": int(df["setting"].nunique()), "surface_rows": len(rows),
              "loso_settings": len(a["regrets"]), "answers_agree": agree, "repeats": args.repeats,
              "median": {name: {"wall_s": statistics.median(w for w, _ in t),
                                "cpu_s": statistics.median(c for _, c in t)} for name, t in times.items()}}
    m = result["median"]
    result["ratio_wall"] = m["default threads"]["wall_s"] / m["one thread below ONE_THREAD_ROWS"]["wall_s"]
    print(f"{result['runs']} runs, {result['settings']} settings, {result['surface_rows']} surface rows, "
          f"{result['loso_settings']} held out; load average {load}: one thread {result['ratio_wall']:.2f}x faster "
          f"(wall); answers agree: {agree}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
