"""Image models' memory layout: channels-last (NHWC, what ``train()`` uses) against contiguous
(NCHW), side by side in one run.

    python benchmarks/layout.py [--device cpu|cuda] [--threads 1] [--batch 32] [--json out.json]

For each model (the CIFAR ResNet-20 and the 3-block image CNN, 10 classes, 3 x 32 x 32 inputs),
two copies with the same weights, one converted to channels-last with its inputs; timed,
alternating in blocks (A B B A ...; median block): one training step (zero_grad, forward, DM
loss, backward, SGD step with learning rate 0, so the two stay on the same weights) and one
evaluation forward. On CUDA under bf16 autocast, as training runs there by default. The two
layouts' outputs are checked to agree to float tolerance first.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from dm_tune import DMLoss
from dm_tune.models import ModelSpec, build_model

import _args
import _machine
from _timing import interleave

CLASSES = 10


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=_args.positive_int, default=1)
    p.add_argument("--batch", type=_args.positive_int, help="default: 32 on cpu, 128 on cuda")
    p.add_argument("--models", default="resnet20,cnn")
    p.add_argument("--blocks", type=_args.positive_int, default=6, help="timed blocks per arm (median reported)")
    p.add_argument("--block-ms", type=_args.positive_float, default=400.0)
    p.add_argument("--json")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():  # (a traceback further on)
        p.error(f"--device {args.device}: CUDA is not available on this machine")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (128 if device.type == "cuda" else 32)
    autocast = (lambda: torch.autocast("cuda", torch.bfloat16)) if device.type == "cuda" else nullcontext
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        nchw = build_model(name, ModelSpec((3, 32, 32), "image", CLASSES)).to(device)
        nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(0, CLASSES, (batch,), device=device)
        arms = {"nhwc": (nhwc, x.contiguous(memory_format=torch.channels_last)), "nchw": (nchw, x)}
        with torch.no_grad(), autocast():
            a, b = (m.eval()(inp).float() for m, inp in arms.values())
        error = float((a - b).norm() / b.norm())  # relative: bf16 outputs differ by ~1e-3 to 1e-2 of their norm
        assert error < 2e-2, f"{name}: the layouts disagree (relative error {error:.2e})"

        def step(model: nn.Module, inp: torch.Tensor) -> Callable[[], None]:
            opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
            loss = DMLoss(lam=1.0, beta=8.0)

            def run() -> None:
                model.train()
                opt.zero_grad()
                with autocast():
                    out = model(inp)
                loss(out.float(), y).backward()
                opt.step()

            return run

        def evaluate(model: nn.Module, inp: torch.Tensor) -> Callable[[], None]:
            def run() -> None:
                model.eval()
                with torch.no_grad(), autocast():
                    model(inp)

            return run

        for what, make in (("training step", step), ("evaluation forward", evaluate)):
            times, _ = interleave({"nhwc": make(*arms["nhwc"]), "nchw": make(*arms["nchw"])}, args.blocks,
                                  args.block_ms, device)
            fast, ref = (statistics.median(times[layout]) * 1e3 for layout in ("nhwc", "nchw"))
            rows.append({"model": name, "what": what, "batch": batch, "nhwc_ms": fast, "nchw_ms": ref,
                         "speedup": ref / fast})
            print(f"{name:<9} {what:<19} batch {batch}: channels-last {fast:8.2f} ms   contiguous {ref:8.2f} ms"
                  f"   {ref / fast:.2f}x", flush=True)
    if args.json:
        out = {"device": device.type, "machine": _machine.machine(), "threads": args.threads,
               "torch": torch.__version__,
               "python": platform.python_version(), "blocks": args.blocks, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
