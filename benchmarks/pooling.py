"""The 1-D CNN's pooling: ``PairMaxPool1d`` against ``nn.MaxPool1d(2)``, side by side in one run.

    python benchmarks/pooling.py [--threads 1] [--blocks 8] [--json out.json]

Two arms, the same MNIST-1D CNN (``dm_tune.models.cnn`` on signals of length 40, 10 classes,
batch 256, as MNIST-1D trains) except for its three pooling layers: ``PairMaxPool1d`` (what the
model uses) and ``nn.MaxPool1d(2)`` (torch's own, the reference). Both start from the same
weights. Timed, alternating arms in blocks (A B, B A, ...; the median block): one training step
(zero_grad, forward, DM loss, backward, Adam step), and each pooling layer's forward + backward
alone on its own input shape. Outputs and gradients of the two are checked equal first.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dm_tune import DMLoss
from dm_tune.models import ModelSpec, PairMaxPool1d, cnn

import _args
import _machine
from _timing import interleave

BATCH, LENGTH, CLASSES = 256, 40, 10


def side_by_side(ours: Callable[[], None], ref: Callable[[], None], blocks: int, block_ms: float) -> tuple[float, float]:
    """Median ms per call of each arm, the arms alternating in blocks (benchmarks/_timing.py)."""
    times, _ = interleave({"ours": ours, "ref": ref}, blocks, block_ms, torch.device("cpu"))
    return statistics.median(times["ours"]) * 1e3, statistics.median(times["ref"]) * 1e3


def with_torch_pooling(model: nn.Module) -> nn.Module:
    plain = copy.deepcopy(model)
    for i, layer in enumerate(plain):
        if isinstance(layer, PairMaxPool1d):
            plain[i] = nn.MaxPool1d(2)
    return plain


def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=0.0)  # lr 0: the arms stay on the same weights
    loss = DMLoss(lam=1.0, beta=8.0)

    def run() -> None:
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()

    return run


def pool(layer: nn.Module, shape: tuple[int, ...]) -> Callable[[], None]:
    x = torch.randn(*shape).relu().requires_grad_()

    def run() -> None:
        out = layer(x)
        out.backward(torch.ones_like(out))

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=_args.positive_int, default=1)
    p.add_argument("--blocks", type=_args.positive_int, default=8, help="timed blocks per arm (median reported)")
    p.add_argument("--block-ms", type=_args.positive_float, default=300.0)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = cnn(ModelSpec((LENGTH,), "signal", CLASSES))
    plain = with_torch_pooling(model)
    x, y = torch.randn(BATCH, LENGTH), torch.randint(0, CLASSES, (BATCH,))

    for m in (model, plain):  # equal outputs and gradients before anything is timed
        m.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
    for (name, a), b in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(a.grad, b.grad), f"{name}: gradients differ"  # type: ignore[arg-type]

    rows = []
    ours, ref = side_by_side(step(model, x, y), step(plain, x, y), args.blocks, args.block_ms)
    rows.append({"what": "training step (batch 256)", "pair_ms": ours, "maxpool1d_ms": ref})
    for channels, length in ((32, 40), (64, 20), (128, 10)):
        shape = (BATCH, channels, length)
        ours, ref = side_by_side(pool(PairMaxPool1d(), shape), pool(nn.MaxPool1d(2), shape), args.blocks,
                                 args.block_ms)
        rows.append({"what": f"pooling fwd+bwd {list(shape)}", "pair_ms": ours, "maxpool1d_ms": ref})
    for r in rows:
        r["speedup"] = r["maxpool1d_ms"] / r["pair_ms"]
        print(f"{r['what']:<34} PairMaxPool1d {r['pair_ms']:7.3f} ms   MaxPool1d {r['maxpool1d_ms']:7.3f} ms"
              f"   {r['speedup']:.2f}x")
    if args.json:
        out = {"threads": args.threads, "blocks": args.blocks, "torch": torch.__version__,
               "machine": _machine.machine(),
               "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
