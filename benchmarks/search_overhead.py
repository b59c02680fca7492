"""Orchestration overhead of `dm-tune search`: wall time against the trials' own training time.

    python benchmarks/search_overhead.py [--config studies/default.yaml] [--json out.json]

Runs the study in a fresh temporary workspace, in-process, on a local Ray instance, then reads
every trial's training time (the sum of its epoch times, evaluation included) from MLflow.
With C trials at once, a perfect orchestrator would finish in sum(train) / C; the overhead is
how much longer the search took than that:

    overhead = wall / (sum(train) / C) - 1

Reported with and without Ray's start-up, which a long search pays once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "studies" / "default.yaml"))
    p.add_argument("--json", help="write the figures as JSON here")
    args = p.parse_args()

    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import ray
    from mlflow.tracking import MlflowClient

    from dm_tune.search import Study
    from dm_tune.search._preflight import connect_ray, load_sources
    from dm_tune.search._run import RunOptions, run_study

    study = Study.from_dict(yaml.safe_load(Path(args.config).read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        t0 = time.perf_counter()
        sources = load_sources(study)
        connect_ray(None)
        t_ray = time.perf_counter()
        run_study(study, RunOptions(workspace=ws, echo=False), sources)
        t1 = time.perf_counter()
        client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
        exp = client.get_experiment_by_name(study.name)
        runs = [r for r in client.search_runs([exp.experiment_id], max_results=10000)
                if r.data.tags.get("dmtune.role") == "trial"]
        ray.shutdown()

    train = sum(r.data.metrics.get("train_time_s", 0.0) for r in runs)
    c = study.resources.max_concurrent
    ideal = train / c
    figures = {
        "study": study.name, "trials": len(runs), "max_concurrent": c,
        "sum_train_s": round(train, 1), "ideal_wall_s": round(ideal, 1),
        "wall_s": round(t1 - t0, 1), "wall_without_ray_start_s": round(t1 - t_ray, 1),
        "overhead": round((t1 - t0) / ideal - 1, 3),
        "overhead_without_ray_start": round((t1 - t_ray) / ideal - 1, 3),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}",
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
