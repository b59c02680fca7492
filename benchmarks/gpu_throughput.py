"""Training throughput (images/s) of a CIFAR ResNet with DM against cross-entropy, mixed precision.

    python benchmarks/gpu_throughput.py [--device cuda] [--depth 20] [--batch 256] [--steps 50]

Synthetic CIFAR-shaped data (3x32x32, 10 classes) already on the device, so the figure is the
model + loss + optimizer step, not data loading. DM and CCE are timed in alternating blocks in
the same run; on CUDA under autocast (bf16 where supported, else fp16 with a grad scaler).
Runs on the CPU too (no autocast), for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from dm_tune import DMLoss
from dm_tune.models import cifar_resnet, ModelSpec

import _args
import _machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--depth", type=_args.positive_int, default=20)
    p.add_argument("--batch", type=_args.positive_int, default=256)
    p.add_argument("--steps", type=_args.positive_int, default=50, help="steps per timed block")
    p.add_argument("--blocks", type=_args.positive_int, default=6, help="timed blocks per arm (alternating)")
    p.add_argument("--json")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():  # (a traceback further on)
        p.error(f"--device {args.device}: CUDA is not available on this machine")

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
    torch.manual_seed(0)
    model = cifar_resnet(args.depth)(ModelSpec((3, 32, 32), "image", 10)).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    x = torch.randn(args.batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=device)
    dm = DMLoss(lam=1.0, beta=8.0)
    losses = {"dm": lambda z: dm(z, y), "cce": lambda z: F.cross_entropy(z.float(), y)}

    def block(name: str, steps: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(x)
            loss = losses[name](logits)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        if cuda:
            torch.cuda.synchronize()
        return args.batch * steps / (time.perf_counter() - t0)

    for name in losses:  # warm-up (cuDNN autotuning, allocator)
        block(name, max(5, args.steps // 5))
    rates: dict[str, list[float]] = {name: [] for name in losses}
    names = list(losses)
    for r in range(args.blocks):  # the order reversed every round: neither arm always goes first
        for name in names if r % 2 == 0 else reversed(names):
            rates[name].append(block(name, args.steps))
    med = {name: statistics.median(v) for name, v in rates.items()}
    out = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "amp": str(amp).replace("torch.", "") if amp else "off", "model": f"resnet{args.depth}",
        "batch": args.batch, "images_per_s": {k: round(v, 1) for k, v in med.items()},
        "dm_over_cce_time_ratio": round(med["cce"] / med["dm"], 4), "torch": torch.__version__,
        "steps": args.steps, "blocks": args.blocks, "machine": _machine.machine(),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
