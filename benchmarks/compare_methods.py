"""DM against the baselines on one setting over several seeds: final (and best) test accuracy.

    python benchmarks/compare_methods.py --dataset digits --noise-rate 0.4 --seeds 5
    python benchmarks/compare_methods.py --arms cce dm:2:24 --amp bf16   # the same in bf16 mixed precision

Arms: a baseline name (cce, gce, mae, ...) or dm:LAM:BETA. Prints a Markdown table of the mean
and standard deviation over seeds of the final-epoch test accuracy (the number we claim) and,
labelled separately, of the best test accuracy over training.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import _args

from dm_tune import TrainConfig, prepare
from dm_tune.train import train
from dm_tune.data import load_source
from dm_tune.errors import UserError

DEFAULT_ARMS = ["cce", "gce", "mae", "sl", "dm:0:0", "dm:1:8", "dm:2:24"]


def arm_values(arm: str) -> dict:
    """``cce`` -> the method; ``dm:LAM:BETA`` -> DM with those knobs."""
    if arm.startswith("dm:"):
        try:
            _, lam, beta = arm.split(":")
            return {"method": "dm", "lam": float(lam), "beta": float(beta)}
        except ValueError:
            raise ValueError(f"--arms {arm}: expected a method name or dm:LAM:BETA, e.g. dm:1:8") from None
    return {"method": arm}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", help="the dataset's folder (on-disk datasets)")
    p.add_argument("--noise", default="symmetric")
    p.add_argument("--noise-rate", type=float, default=0.4)
    p.add_argument("--seeds", type=_args.positive_int, default=5)
    p.add_argument("--epochs", type=_args.positive_int)
    p.add_argument("--threads", type=_args.positive_int, default=1)
    p.add_argument("--arms", nargs="+", default=DEFAULT_ARMS)
    p.add_argument("--amp", choices=["auto", "off", "bf16"], default="auto",
                   help="mixed precision (auto: bf16 on CUDA, float32 on the CPU; bf16 on the CPU too)")
    args = p.parse_args()
    if len(set(args.arms)) < len(args.arms):
        p.error(f"--arms {' '.join(args.arms)}: expected distinct arms")
    if args.seeds < 2:  # a spread needs two
        p.error(f"--seeds {args.seeds}: expected at least 2 (the table gives the std over seeds)")
    torch.set_num_threads(args.threads)

    base = {"dataset": args.dataset, "noise": args.noise, "noise_rate": args.noise_rate, "amp": args.amp}
    if args.epochs:
        base["epochs"] = args.epochs
    if args.data_root:
        base["data_root"] = args.data_root
    try:  # every arm's configuration checked before any trains: a bad one is refused in a line
        arms = {arm: [TrainConfig.from_dict({**base, **arm_values(arm), "seed": seed})
                      for seed in range(args.seeds)] for arm in args.arms}
        source = load_source(TrainConfig.from_dict(base))
    except (ValueError, UserError) as e:  # ConfigError, DataError and a malformed arm are ValueErrors
        p.error(str(e))
    warm = TrainConfig.from_dict({**base, "epochs": 1})  # once, untimed: imports and first-call costs
    train(warm, prepare(warm, source))
    rows = []
    for arm, cfgs in arms.items():
        finals, bests, secs = [], [], []
        for cfg in cfgs:
            t0 = time.perf_counter()
            r = train(cfg, prepare(cfg, source))
            secs.append(time.perf_counter() - t0)
            finals.append(100 * r.test_accuracy)
            bests.append(100 * r.best_test_accuracy)
        rows.append((arm, finals, bests, statistics.mean(secs)))
        print(f"{arm}: final {statistics.mean(finals):.1f}", file=sys.stderr)

    cce = next((statistics.mean(f) for a, f, _, _ in rows if a == "cce"), None)
    print(f"{args.dataset}, {args.noise} noise {args.noise_rate:g}, {args.seeds} seeds (0..{args.seeds - 1}), "
          f"torch {torch.__version__}, {args.threads} thread(s), amp {args.amp}\n")
    print("| method | final test acc % (mean ± std) | vs CCE (points) | best-over-training test acc % | s/run |")
    print("|---|---|---|---|---|")
    for arm, finals, bests, sec in rows:
        label = arm if not arm.startswith("dm:") else "DM (lam={}, beta={})".format(*arm.split(":")[1:])
        diff = "" if cce is None or arm == "cce" else f"{statistics.mean(finals) - cce:+.1f}"
        print(f"| {label} | {statistics.mean(finals):.1f} ± {statistics.stdev(finals):.1f} | {diff} | "
              f"{statistics.mean(bests):.1f} ± {statistics.stdev(bests):.1f} | {sec:.1f} |")


if __name__ == "__main__":
    main()
