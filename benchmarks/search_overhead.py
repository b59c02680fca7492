"""Orchestration overhead of `dm-tune search`: wall time against the trials' own training time.

    python benchmarks/search_overhead.py [--config studies/default.yaml] [--json out.json]

Runs `dm-tune search` as a user does (a subprocess, fresh temporary workspace, its own local Ray
instance), then reads every trained trial's training time (the sum of its epoch times, evaluation
included) from MLflow; a confirm trial recorded with its search trial's run (tag
``dmtune.reused_from``) was trained once and is counted once. With C trials at once, a perfect orchestrator would finish in
sum(train) / C; the overhead is how much longer the search took than that:

    overhead = wall / (sum(train) / C) - 1

reported for the whole command (Python start-up, data loading, Ray start, MLflow store
creation included) and for the search itself (the "Wall time" the command prints, from the
first trial submitted to the last result; read from the summary JSON, which keeps it unrounded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _args
import _machine

ROOT = Path(__file__).resolve().parents[1]
DM_TUNE = str(Path(sys.executable).parent / "dm-tune")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "studies" / "default.yaml"))
    p.add_argument("--repeats", type=_args.positive_int, default=3, help="runs of the whole search; medians reported")
    p.add_argument("--population-size", default="1",
                   help="DM configurations per Ray trial (default 1: the orchestration of one trial each)")
    p.add_argument("--json", help="write the figures as JSON here")
    args = p.parse_args()

    import yaml

    config = Path(args.config).resolve()  # (the search runs in a temporary folder: a relative path named nothing there)
    if not config.is_file():
        sys.exit(f"--config {args.config}: no such file")
    args.config = str(config)
    study = yaml.safe_load(config.read_text())
    load_start = _machine.load_average()
    runs = [measure(args.config, study, args.population_size) for _ in range(args.repeats)]
    figures = {k: (statistics.median(r[k] for r in runs) if isinstance(runs[0][k], float) else runs[0][k])
               for k in runs[0]}
    figures["repeats"] = args.repeats
    figures["overhead_search_all"] = [r["overhead_search"] for r in runs]
    figures["overhead_command_all"] = [r["overhead_command"] for r in runs]
    figures["machine"] = _machine.machine()
    figures["load_average_start"], figures["load_average_end"] = load_start, _machine.load_average()
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


def measure(config: str, study: dict, population_size: str) -> dict:
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        t0 = time.perf_counter()
        proc = subprocess.run([DM_TUNE, "search", "--config", config, "--workspace", str(ws), "--quiet",
                               "--population-size", population_size],
                              capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        # (the summary's own figure: the printed "Wall time N s" is rounded to the second)
        summary = json.loads((ws / "summaries" / f"{study.get('name', 'default')}.json").read_text())
        search_wall = float(summary["wall_time_s"])
        client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
        exp = client.get_experiment_by_name(study.get("name", "default"))
        runs = [r for r in client.search_runs([exp.experiment_id], max_results=10000)
                if r.data.tags.get("dmtune.role") == "trial"]

    # A confirm run tagged dmtune.reused_from repeats a search run (trained once): counted once.
    trained = [r for r in runs if not r.data.tags.get("dmtune.reused_from")]
    train = sum(r.data.metrics.get("train_time_s", 0.0) for r in trained)
    c = int(study.get("resources", {}).get("max_concurrent", 2))
    ideal = train / c
    return {
        "study": study.get("name", "default"), "trials": len(runs), "trained": len(trained), "max_concurrent": c,
        "population_size": population_size,
        "sum_train_s": round(train, 1), "ideal_wall_s": round(ideal, 1),
        "command_wall_s": round(wall, 1), "search_wall_s": round(search_wall, 2),
        "overhead_command": round(wall / ideal - 1, 3), "overhead_search": round(search_wall / ideal - 1, 3),
    }


if __name__ == "__main__":
    main()
