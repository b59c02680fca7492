"""How much a population *could* gain on this CPU: the arithmetic ceiling of a case.

A population trains K models with the same floating-point work as K separate runs; it can only
save the per-step overheads (Python, small kernels, launches, memory traffic). So the best
possible ratio is the separate run's time per configuration over its *compute-bound* time: the
run's floating-point operations at this CPU's peak matrix-multiply rate.

Measured here, side by side, at the given thread count:
- ``peak``: GFLOP/s of a 1024 x 1024 float32 matrix product (the best case for the cores);
- the model's multiply-adds per example, counted from its Linear and convolution layers (the
  shapes seen by forward hooks): a training step computes the forward, every layer's weight
  gradient and the input gradient of every layer but the first (the data needs none); an
  evaluation pass (validation and test, after every epoch) the forward only. BatchNorm, ReLU,
  pooling, the loss and the optimiser are not counted, so the ceiling is an upper bound;
- the case's K configurations (those of ``population.py``) as separate ``train()`` runs and as
  one population (``train_population``), timed as ``population.py`` times them (``_timing``):
  median wall time per configuration, and the achieved GFLOP/s of each;
- ``ceiling``: separate seconds per configuration / (FLOPs per configuration / peak);
- ``products_bound``: the same over the time the population spends in its matrix products alone
  (``bmm``, ``baddbmm``, ``mm``, ``addmm`` and their in-place forms, convolutions: their self time
  in one profiled run), the ratio it would reach if everything else it does took no time.

    python benchmarks/roofline.py [--case digits-mlp|mnist1d-cnn] [--k 16] [--threads 1] --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dm_tune.data import prepare  # noqa: E402
from dm_tune.models import ModelSpec, build_model  # noqa: E402
from dm_tune.population import train_population  # noqa: E402

import _args  # noqa: E402
import _cases  # noqa: E402
import _machine  # noqa: E402
import _timing  # noqa: E402

COMPUTE = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
PRODUCTS = {"aten::bmm", "aten::baddbmm", "aten::baddbmm_", "aten::mm", "aten::addmm", "aten::addmm_",
            "aten::mkldnn_convolution",
            "aten::convolution_backward", "aten::_convolution"}


def peak_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def layer_macs(model: torch.nn.Module, example: torch.Tensor) -> list[int]:
    """Multiply-adds of one example through each Linear and convolution layer, in call order:
    every output element costs (input features or channels per group x kernel size) of them."""
    macs: list[int] = []

    def hook(module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        per_output = (module.in_features if isinstance(module, torch.nn.Linear)
                      else module.in_channels // module.groups * math.prod(module.kernel_size))
        macs.append(output[0].numel() * per_output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, COMPUTE)]
    model.eval()
    with torch.no_grad():
        model(example.unsqueeze(0))
    for h in handles:
        h.remove()
    return macs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="digits-mlp", choices=["digits-mlp", "mnist1d-cnn"])
    p.add_argument("--k", type=_args.positive_int, default=16,
                   help="population size (default 16, what auto picks for the MLP)")
    p.add_argument("--epochs", type=_args.positive_int, help="default: the case's (MLP 10, CNN 1, as population.py)")
    p.add_argument("--threads", type=_args.positive_int, default=1)
    p.add_argument("--repeats", type=_args.positive_int, default=3,
                   help="timed runs of each arm, alternating (median used)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    source, shared = _cases.case(args.case)
    if args.epochs:
        shared["epochs"] = args.epochs
    configs = _cases.configs(shared, args.k)
    datas = [prepare(c, source) for c in configs]
    d = datas[0]
    resolved = configs[0].resolve(d.defaults, d.default_model, d.input_kind)
    model = build_model(resolved.model, ModelSpec(d.input_shape, d.input_kind, d.num_classes, resolved.hidden_dim))
    macs = layer_macs(model, torch.zeros(d.input_shape))
    forward_macs, train_macs = sum(macs), 3 * sum(macs) - macs[0]
    n_train, n_eval, epochs = len(d.train), len(d.val) + len(d.test), int(shared["epochs"])
    flops = epochs * 2 * (train_macs * n_train + forward_macs * n_eval)  # per config

    load_start = _machine.load_average()
    peak = peak_gflops()
    times = _timing.population_and_separate(configs, datas, args.repeats, torch.device("cpu"))
    singles = [wall / args.k for wall, _ in times["sep"]]
    populations = [wall / args.k for wall, _ in times["pop"]]
    single, population = statistics.median(singles), statistics.median(populations)
    bound = flops / (peak * 1e9)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_population(configs, datas)
    products = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in PRODUCTS) / 1e6 / args.k
    out = {"case": args.case, "model": str(resolved.model), "k": args.k, "epochs": epochs, "threads": args.threads, "repeats": args.repeats,
           "n_train": n_train, "n_eval": n_eval, "layer_macs": macs,
           "peak_gflops": peak, "gflop_per_config": flops / 1e9,
           "single_s_per_config": single, "population_s_per_config": population,
           "single_s_all": singles, "population_s_per_config_all": populations,
           "single_gflops": flops / single / 1e9, "population_gflops": flops / population / 1e9,
           "compute_bound_s_per_config": bound, "measured_ratio": single / population,
           "ceiling_ratio": single / bound,
           "products_s_per_config": products, "products_bound_ratio": single / products,
           "machine": _machine.machine(), "load_average_start": load_start, "load_average_end": _machine.load_average()}
    for key, value in out.items():
        print(f"{key:>28}: {value:.4g}" if isinstance(value, float) and math.isfinite(value) else f"{key:>28}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
