"""A population's optimiser step: one fused call on the stacked tensors against one per member's
slices, side by side in one run.

    python benchmarks/population_optimizer.py [--k 16] [--threads 1,2] [--repeats 6] [--json out.json]

``PopulationOptimizer`` updates members that share their knobs (and Adam step count) with one
fused call on the stacked tensors; the per-member slices are the reference path (tested equal,
tests/test_population.py). Timed: a whole digits-MLP population of K members (10 epochs, Adam,
DM lam 1 / beta 8, 40% symmetric noise, seeds 0..K-1), the two arms alternating order between
repeats, seconds per configuration, median over repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dm_tune import _popoptim  # noqa: E402
from dm_tune.data import prepare  # noqa: E402
from dm_tune.population import train_population  # noqa: E402

import _args  # noqa: E402
import _cases  # noqa: E402
import _machine  # noqa: E402
import _timing  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=_args.positive_int, default=16)
    p.add_argument("--threads", type=_args.positive_ints, default="1,2")
    p.add_argument("--repeats", type=_args.positive_int, default=6)
    p.add_argument("--epochs", type=_args.positive_int, default=10)
    p.add_argument("--json")
    args = p.parse_args()
    source, shared = _cases.case("digits-mlp")
    configs = _cases.configs({**shared, "epochs": args.epochs}, args.k, arms=[_cases.ARMS[0]])
    datas = [prepare(c, source) for c in configs]
    stacked = _popoptim.PopulationOptimizer._step_stacked

    def with_step(step):
        def arm() -> None:
            _popoptim.PopulationOptimizer._step_stacked = step  # type: ignore[method-assign]
            train_population(configs, datas)
        return arm

    arms = {"stacked": with_step(stacked), "slices": with_step(lambda self, *a: False)}
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        train_population(configs[:2], datas[:2])  # warm-up
        try:
            times = _timing.alternating(arms, args.repeats, torch.device("cpu"))
        finally:
            _popoptim.PopulationOptimizer._step_stacked = stacked  # type: ignore[method-assign]
        row = {"threads": threads, "k": args.k,
               **{f"{n}_s_per_config": statistics.median(w for w, _ in v) / args.k for n, v in times.items()}}
        row["speedup"] = row["slices_s_per_config"] / row["stacked_s_per_config"]
        rows.append(row)
        print(f"K {args.k} threads {threads}: stacked {row['stacked_s_per_config']:.4f} s/config, "
              f"slices {row['slices_s_per_config']:.4f} s/config, {row['speedup']:.2f}x", flush=True)
    if args.json:
        out = {"machine": _machine.machine(),
               "torch": torch.__version__, "repeats": args.repeats, "epochs": args.epochs, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
