"""Time one training step with DM against plain cross-entropy, side by side in one run.

    python benchmarks/step_time.py [--device cpu|cuda] [--repeats N] [--threads T] [--json out.json]

For each case the SAME model, optimiser and batch are used for both arms; the arms alternate
in blocks (DM, CE, CE, DM, DM, CE, ... so neither always goes first), each block runs enough
steps to last about ``--block-ms`` milliseconds, and the reported time per step is the median
over the blocks. The ratio DM / CE is therefore measured under the same machine conditions.

Cases:
  mlp       the embedded default: digits MLP (64 -> 256 -> 256 -> 10), batch 64
  resnet20  CIFAR-shaped ResNet-20, batch 128 of 3x32x32 random images, 10 classes
  loss      the loss alone (forward + backward on fixed [64, 10] logits)
  loss-cifar the loss alone on fixed [128, 10] logits

A "step" is zero_grad, forward, loss, backward and an SGD step (momentum 0.9, weight decay 5e-4,
as the training default; learning rate 0 so that the model does not drift, see bench_model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dm_tune import DMLoss
from dm_tune.models import ModelSpec, cifar_resnet, mlp

LAM, BETA = 1.0, 8.0  # DM arm: IMAE's mode (psi = 1/2) with a typical spread
TARGET_RATIO = 1.05


@dataclass(frozen=True)
class Result:
    case: str
    what: str            # "step" or "loss"
    batch: int
    blocks: int          # blocks per arm
    steps_per_block: int
    dm_ms: float         # median time of one step (or one loss fwd+bwd), milliseconds
    ce_ms: float
    ratio: float         # dm_ms / ce_ms
    ratio_iqr: tuple[float, float]  # quartiles of the per-block-pair ratios
    dm_min_ms: float     # fastest block: the least disturbed by other processes
    ce_min_ms: float
    ratio_min: float     # dm_min_ms / ce_min_ms


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step


def _loss_fn_only(logits: torch.Tensor, y: torch.Tensor,
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        logits.grad = None
        loss_fn(logits, y).backward()

    return step


def _time_block(fn: Callable[[], None], n: int, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / n


def _interleave(dm: Callable[[], None], ce: Callable[[], None], repeats: int, block_ms: float,
                device: torch.device) -> tuple[list[float], list[float], int]:
    """Alternate DM and CE blocks (ABBA order); returns per-block seconds per step and block size."""
    for fn in (dm, ce, dm, ce):  # warm-up: allocator, kernels, optimiser state
        _time_block(fn, 2, device)
    # Block size from the fastest of several short calibration runs (robust to a stray spike).
    per_step = min(_time_block(fn, 2, device) for fn in (dm, ce) * 3)
    n = max(1, round(block_ms / 1e3 / max(per_step, 1e-7)))
    dm_t: list[float] = []
    ce_t: list[float] = []
    for r in range(repeats):
        order = ((dm, dm_t), (ce, ce_t)) if r % 2 == 0 else ((ce, ce_t), (dm, dm_t))
        for fn, out in order:
            out.append(_time_block(fn, n, device))
    return dm_t, ce_t, n


def _summarise(case: str, what: str, batch: int, dm_t: list[float], ce_t: list[float], n: int) -> Result:
    dm_ms, ce_ms = statistics.median(dm_t) * 1e3, statistics.median(ce_t) * 1e3
    ratios = sorted(a / b for a, b in zip(dm_t, ce_t))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    dm_min, ce_min = min(dm_t) * 1e3, min(ce_t) * 1e3
    return Result(case, what, batch, len(dm_t), n, dm_ms, ce_ms, dm_ms / ce_ms, (q[0], q[2]),
                  dm_min, ce_min, dm_min / ce_min)


def bench_model(case: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int,
                block_ms: float, device: torch.device) -> Result:
    model = model.to(device)
    x, y = x.to(device), y.to(device)
    # lr = 0 keeps the model, and so the logits both arms see, fixed across thousands of steps on
    # one batch (a trained-on batch would drift towards p = 1); SGD still does all its arithmetic.
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    dm = _step_fn(model, opt, x, y, DMLoss(LAM, BETA))
    ce = _step_fn(model, opt, x, y, F.cross_entropy)
    dm_t, ce_t, n = _interleave(dm, ce, repeats, block_ms, device)
    return _summarise(case, "step", len(x), dm_t, ce_t, n)


def bench_loss(case: str, batch: int, classes: int, repeats: int, block_ms: float,
               device: torch.device, gen: torch.Generator) -> Result:
    logits = (3 * torch.randn(batch, classes, generator=gen)).to(device).requires_grad_(True)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    dm = _loss_fn_only(logits, y, DMLoss(LAM, BETA))
    ce = _loss_fn_only(logits, y, F.cross_entropy)
    dm_t, ce_t, n = _interleave(dm, ce, repeats, block_ms, device)
    return _summarise(case, "loss", batch, dm_t, ce_t, n)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=31, help="blocks per arm (mlp and loss cases)")
    ap.add_argument("--resnet-repeats", type=int, default=15,
                    help="blocks per arm for resnet20 (each step is ~1000x an MLP step on a CPU)")
    ap.add_argument("--block-ms", type=float, default=100.0, help="target duration of one block")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    ap.add_argument("--cases", default="mlp,loss,loss-cifar,resnet20",
                    help="comma-separated subset of mlp, loss, loss-cifar, resnet20")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_start = os.getloadavg()
    gen = torch.Generator().manual_seed(0)  # data; model inits use their own seed below
    results: list[Result] = []
    for case in args.cases.split(","):
        torch.manual_seed(0)  # model initialisation only (benchmark script, not library code)
        if case == "mlp":
            model = mlp(ModelSpec((64,), "vector", 10, 256))
            x, y = torch.randn(64, 64, generator=gen), torch.randint(0, 10, (64,), generator=gen)
            results.append(bench_model(case, model, x, y, args.repeats, args.block_ms, device))
        elif case == "resnet20":
            model = cifar_resnet(20)(ModelSpec((3, 32, 32), "image", 10))
            x, y = torch.randn(128, 3, 32, 32, generator=gen), torch.randint(0, 10, (128,), generator=gen)
            results.append(bench_model(case, model, x, y, args.resnet_repeats, args.block_ms, device))
        elif case == "loss":
            results.append(bench_loss(case, 64, 10, args.repeats, args.block_ms, device, gen))
        elif case == "loss-cifar":
            results.append(bench_loss(case, 128, 10, args.repeats, args.block_ms, device, gen))
        else:
            raise SystemExit(f"unknown case {case!r}")
        r = results[-1]
        print(f"  {r.case}: done ({r.blocks} blocks x {r.steps_per_block} per arm)", flush=True)

    info = machine(device)
    info["loadavg_start"], info["loadavg_end"] = load_start, os.getloadavg()
    print(f"\n{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['threads']} threads,"
          f" device {device}; DM = DMLoss(lam={LAM}, beta={BETA}); CE = F.cross_entropy")
    print("medians over blocks (IQR: quartiles of the per-block-pair ratios); min: fastest block")
    print(f"{'case':<11}{'what':<6}{'batch':>6}{'DM ms':>10}{'CE ms':>10}{'DM/CE':>8}  {'ratio IQR':<13}"
          f"{'DM min':>10}{'CE min':>10}{'min ratio':>10}")
    for r in results:
        flag = "" if r.what == "loss" or r.ratio <= TARGET_RATIO else "  > target"
        print(f"{r.case:<11}{r.what:<6}{r.batch:>6}{r.dm_ms:>10.4f}{r.ce_ms:>10.4f}{r.ratio:>8.3f}"
              f"  {r.ratio_iqr[0]:.3f}-{r.ratio_iqr[1]:.3f}{r.dm_min_ms:>10.4f}{r.ce_min_ms:>10.4f}"
              f"{r.ratio_min:>10.3f}{flag}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "dm": {"lam": LAM, "beta": BETA}, "target_ratio": TARGET_RATIO,
                       "results": [asdict(r) for r in results]}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
