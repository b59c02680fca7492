"""Time one training step with DM against plain cross-entropy, side by side in one run.

    python benchmarks/step_time.py [--device cpu|cuda] [--repeats N] [--threads T] [--json out.json]

Three arms: DM as training uses it (``DMLoss``: on a CPU the fused C kernel of
dm_tune/_dmfused.c), DM computed with torch tensor operations (``DMLoss(kernel="torch")``, the
reference implementation and the GPU path) and plain ``F.cross_entropy``. For each case the SAME
model, optimiser and batch are used for every arm; the arms alternate in blocks (DM, DM-torch,
CE, CE, DM-torch, DM, ... so none always goes first), each block runs enough steps to last about
``--block-ms`` milliseconds, and the reported time per step is the median over the blocks. The
ratios to CE are therefore measured under the same machine conditions.

Cases:
  mlp       the embedded default: digits MLP (64 -> 256 -> 256 -> 10), batch 64
  resnet20  CIFAR-shaped ResNet-20, batch 128 of 3x32x32 random images, 10 classes (contiguous
            layout; train() runs image models channels-last, a faster step, so DM's share of
            a training step is somewhat larger there than this ratio shows)
  loss      the loss alone (forward + backward on fixed [64, 10] logits)
  loss-cifar the loss alone on fixed [128, 10] logits
  loss-c100 the loss alone on fixed [128, 100] logits (CIFAR-100's shape)

A "step" is zero_grad, forward, loss, backward and an SGD step (momentum 0.9, weight decay 5e-4,
as the training default; learning rate 0 so that the model does not drift, see bench_model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dm_tune import DMLoss, _native
from dm_tune.models import ModelSpec, cifar_resnet, mlp

import _args
from _timing import interleave

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
    dm_torch_ms: float   # the same for DM in torch operations (DMLoss(kernel="torch"))
    ratio_torch: float   # dm_torch_ms / ce_ms
    ratio_torch_iqr: tuple[float, float]
    dm_kernel: str       # what the DM arm ran: "native" or "torch"


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


def _ratio_stats(num: list[float], den: list[float]) -> tuple[float, tuple[float, float]]:
    """Ratio of the medians, and the quartiles of the per-round ratios."""
    ratios = sorted(a / b for a, b in zip(num, den))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(num) / statistics.median(den), (q[0], q[2])


def _summarise(case: str, what: str, batch: int, times: dict[str, list[float]], n: int,
               dm_kernel: str) -> Result:
    dm_t, ce_t, torch_t = times["dm"], times["ce"], times["dm-torch"]
    ratio, iqr = _ratio_stats(dm_t, ce_t)
    ratio_torch, iqr_torch = _ratio_stats(torch_t, ce_t)
    dm_min, ce_min = min(dm_t) * 1e3, min(ce_t) * 1e3
    return Result(case, what, batch, len(dm_t), n, statistics.median(dm_t) * 1e3,
                  statistics.median(ce_t) * 1e3, ratio, iqr, dm_min, ce_min, dm_min / ce_min,
                  statistics.median(torch_t) * 1e3, ratio_torch, iqr_torch, dm_kernel)


def _losses() -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    return {"dm": DMLoss(LAM, BETA), "dm-torch": DMLoss(LAM, BETA, kernel="torch"),
            "ce": F.cross_entropy}


def _dm_kernel(logits: torch.Tensor, y: torch.Tensor) -> str:
    return "native" if _native.eligible(logits, y) else "torch"


def bench_model(case: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int,
                block_ms: float, device: torch.device) -> Result:
    model = model.to(device)
    x, y = x.to(device), y.to(device)
    # lr = 0 keeps the model, and so the logits all arms see, fixed across thousands of steps on
    # one batch (a trained-on batch would drift towards p = 1); SGD still does all its arithmetic.
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    arms = {name: _step_fn(model, opt, x, y, fn) for name, fn in _losses().items()}
    times, n = interleave(arms, repeats, block_ms, device)
    with torch.no_grad():
        kernel = _dm_kernel(model(x), y)
    return _summarise(case, "step", len(x), times, n, kernel)


def bench_loss(case: str, batch: int, classes: int, repeats: int, block_ms: float,
               device: torch.device, gen: torch.Generator) -> Result:
    logits = (3 * torch.randn(batch, classes, generator=gen)).to(device).requires_grad_(True)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    arms = {name: _loss_fn_only(logits, y, fn) for name, fn in _losses().items()}
    times, n = interleave(arms, repeats, block_ms, device)
    return _summarise(case, "loss", batch, times, n, _dm_kernel(logits, y))


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
    ap.add_argument("--repeats", type=_args.positive_int, default=31, help="blocks per arm (mlp and loss cases)")
    ap.add_argument("--resnet-repeats", type=_args.positive_int, default=15,
                    help="blocks per arm for resnet20 (each step is ~1000x an MLP step on a CPU)")
    ap.add_argument("--block-ms", type=_args.positive_float, default=100.0, help="target duration of one block")
    ap.add_argument("--threads", type=_args.positive_int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    ap.add_argument("--cases", default="mlp,loss,loss-cifar,loss-c100,resnet20",
                    help="comma-separated subset of mlp, loss, loss-cifar, loss-c100, resnet20")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():  # (a traceback further on)
        ap.error(f"--device {args.device}: CUDA is not available on this machine")

    known = ("mlp", "resnet20", "loss", "loss-cifar", "loss-c100")
    unknown = [c for c in args.cases.split(",") if c not in known]
    if unknown:  # (said before any case runs: a typo late in the list threw the finished cases away)
        ap.error(f"--cases {args.cases}: unknown case {unknown[0]!r}; expected some of {', '.join(known)}")
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
        elif case == "loss-c100":
            results.append(bench_loss(case, 128, 100, args.repeats, args.block_ms, device, gen))
        else:
            raise SystemExit(f"unknown case {case!r}")
        r = results[-1]
        print(f"  {r.case}: done ({r.blocks} blocks x {r.steps_per_block} per arm)", flush=True)

    info = machine(device)
    info["loadavg_start"], info["loadavg_end"] = load_start, os.getloadavg()
    print(f"\n{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['threads']} threads,"
          f" device {device}; DM = DMLoss(lam={LAM}, beta={BETA}) (kernel: native or torch);"
          f" DM-torch = DMLoss(..., kernel='torch'); CE = F.cross_entropy")
    print("medians over blocks (IQR: quartiles of the per-round ratios); min: fastest block")
    print(f"{'case':<11}{'what':<6}{'batch':>6}{'kernel':>8}{'DM ms':>10}{'CE ms':>10}{'DM/CE':>8}"
          f"  {'ratio IQR':<13}{'min ratio':>10}{'DM-torch ms':>13}{'DM-torch/CE':>13}")
    for r in results:
        flag = "" if r.what == "loss" or r.ratio <= TARGET_RATIO else "  > target"
        print(f"{r.case:<11}{r.what:<6}{r.batch:>6}{r.dm_kernel:>8}{r.dm_ms:>10.4f}{r.ce_ms:>10.4f}"
              f"{r.ratio:>8.3f}  {r.ratio_iqr[0]:.3f}-{r.ratio_iqr[1]:.3f}{r.ratio_min:>10.3f}"
              f"{r.dm_torch_ms:>13.4f}{r.ratio_torch:>13.3f}{flag}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "dm": {"lam": LAM, "beta": BETA}, "target_ratio": TARGET_RATIO,
                       "results": [asdict(r) for r in results]}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
