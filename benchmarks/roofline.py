"""How much a population *could* gain on this CPU: the arithmetic ceiling of the digits MLP.

A population trains K models with the same floating-point work as K separate runs; it can only
save the per-step overheads (Python, small kernels, launches). So the best possible ratio is the
separate run's time per configuration over the population's *compute-bound* time per
configuration: the run's floating-point operations at this core's peak matrix-multiply rate.

Measured here, side by side, on one thread:
- ``peak``: GFLOP/s of a 1024 x 1024 float32 matrix product (the best case for the core);
- the MLP's training FLOPs per step (forward 2 x in x out per example per Linear layer, backward
  twice that, less the first layer's input gradient) and per evaluation pass (forward only),
  counted from the model;
- one ``train()`` run and one population of K (``train_population``), 10 epochs: wall time, and
  the achieved GFLOP/s of each;
- ``ceiling``: separate seconds per configuration / (FLOPs per configuration / peak).

    python benchmarks/roofline.py --json benchmarks/results/roofline_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dm_tune.config import TrainConfig  # noqa: E402
from dm_tune.data import prepare  # noqa: E402
from dm_tune.datasets import DATASETS  # noqa: E402
from dm_tune.models import ModelSpec, build_model  # noqa: E402
from dm_tune.population import train_population  # noqa: E402
from dm_tune.train import train  # noqa: E402


def peak_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def linear_macs(model: torch.nn.Module) -> tuple[int, int]:
    """Multiply-adds of one example through the model's Linear layers: (forward pass, training
    step). Training computes the forward, every layer's weight gradient and the gradient of every
    layer's input except the first's (the data needs none): 3 passes less the first layer's one."""
    sizes = [m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return sum(sizes), 3 * sum(sizes) - sizes[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=16, help="population size (default 16, what auto picks)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    source = DATASETS["digits"][0](None, {}, False)
    configs = [TrainConfig.from_dict({"dataset": "digits", "noise": "symmetric", "noise_rate": 0.4, "device": "cpu",
                                      "epochs": args.epochs, "method": "dm", "lam": 1.0, "beta": 8.0, "seed": s})
               for s in range(args.k)]
    datas = [prepare(c, source) for c in configs]
    resolved = configs[0].resolve(datas[0].defaults, datas[0].default_model, datas[0].input_kind)
    d = datas[0]
    model = build_model(resolved.model, ModelSpec(d.input_shape, d.input_kind, d.num_classes, resolved.hidden_dim))
    forward_macs, train_macs = linear_macs(model)
    n_train, n_eval = len(d.train), len(d.val) + len(d.test)
    flops = args.epochs * 2 * (train_macs * n_train + forward_macs * n_eval)  # per config

    peak = peak_gflops()
    train(configs[0], datas[0])  # warm-up
    t = time.perf_counter()
    train(configs[0], datas[0])
    single = time.perf_counter() - t
    train_population(configs[:2], datas[:2])  # warm-up
    t = time.perf_counter()
    train_population(configs, datas)
    population = (time.perf_counter() - t) / args.k
    bound = flops / (peak * 1e9)
    out = {"model": str(resolved.model), "k": args.k, "epochs": args.epochs, "threads": 1, "n_train": n_train, "n_eval": n_eval,
           "peak_gflops": peak, "gflop_per_config": flops / 1e9,
           "single_s_per_config": single, "population_s_per_config": population,
           "single_gflops": flops / single / 1e9, "population_gflops": flops / population / 1e9,
           "compute_bound_s_per_config": bound, "measured_ratio": single / population,
           "ceiling_ratio": single / bound}
    for key, value in out.items():
        print(f"{key:>28}: {value:.4g}" if isinstance(value, float) and math.isfinite(value) else f"{key:>28}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
