"""A population's CPU fast paths against their references, side by side in one run.

    python benchmarks/population_kernels.py [--threads 1] [--blocks 9] [--sections ...] [--json out.json]

- **convolutions**: one Conv1d layer of the MNIST-1D CNN for K members in the population's
  [K, C, L, B] layout (batch 256), forward + backward: ``shifted_conv1d`` (one batched product per
  kernel tap on shifted views, what a population uses from 16 input channels) against
  ``im2col_conv1d`` under autograd (the reference), for the CNN's three layer shapes.
- **per-position products** (a candidate layout, not what a population runs): the same Conv1d
  layers (those with 16 or more input channels) if the activations lived as [K, L, C, B], each
  position a plane of C x B, padded with P zero planes at both ends. A window of T positions is
  then one [T * C, B] matrix (rows B elements apart), so each output position is one product
  with a contraction of T * C (shifted_conv1d's are C long): forward, weight gradient (a product
  per position, summed) and input gradient (the same products on the padded gradient, the taps
  flipped), against ``shifted_conv1d`` forward + backward. Both arms start from their own
  layout: the cost of moving the rest of the CNN (the fused blocks) to the candidate layout is
  not in it.
- **ReLU and pooling**: the CNN's ReLU then MaxPool1d(2) against MaxPool1d(2) then ReLU (what a
  population runs: max and ReLU commute, values and gradients), forward + backward on a fresh
  [K, C, L, 256] activation (a product with 1, standing for the BatchNorm's output, in both arms).
- **BatchNorm, pooling and ReLU**: a CNN block's BatchNorm1d (training mode), MaxPool1d(2) and
  ReLU on [K, C, L, 256], forward + backward: the fused C loops (``_popmodels._block`` with
  ``FUSED_BLOCKS`` on, what a population runs on a CPU) against the three torch steps (off: the
  reference); and whole MNIST-1D CNN populations (``--cnn-k`` members, one epoch) either way.
- **losses**: every member's loss of ``PopulationLoss`` (forward: gradient, shares, display
  losses) on [K, B, C] logits, members cycling through DM (1, 8), DM (2, 24), CCE and GCE: the C
  kernel (``kernel="native"``) against the torch operations (``kernel="torch"``, the reference),
  at the shapes that decide ``dm_tune._native.population_eligible``; and whole digits-MLP
  populations (``--population-k`` members, the configurations of population.py) with either
  kernel (the torch arm sets the C kernel's size limits to 0, as the tests do).

Arms alternate in blocks (A B, B A, ...; benchmarks/_timing.py); the table shows medians. The
kernel pairs are checked equal before they are timed, except the ReLU/pooling order pair (ReLU
and max commute) and the whole populations (tests/test_population.py compares them).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from dm_tune import _native, _popmodels
from dm_tune._poplosses import PopulationLoss, member_loss
from dm_tune._popmodels import PopulationModel, im2col_conv1d, shifted_conv1d
from dm_tune.config import TrainConfig
from dm_tune.models import pair_max

import _args
import _machine
from _timing import interleave

CONV_LAYERS = ((32, 64, 20), (64, 128, 10), (1, 32, 40))  # (in channels, out channels, length)
POOLED = ((32, 40), (64, 20), (128, 10))  # the CNN's activations before each pooling (channels, length)
LOSS_SHAPES = ((6, 64, 10), (16, 64, 10), (64, 64, 10), (128, 128, 10), (16, 64, 14), (64, 64, 14),
               (16, 64, 16), (64, 64, 16), (16, 64, 100), (16, 64, 2), (64, 128, 2))
ARMS = ({"method": "dm", "lam": 1.0, "beta": 8.0}, {"method": "dm", "lam": 2.0, "beta": 24.0},
        {"method": "cce"}, {"method": "gce"})


def median_ms(arms: dict[str, Callable[[], object]], blocks: int, block_ms: float) -> dict[str, float]:
    times, _ = interleave(arms, blocks, block_ms, torch.device("cpu"))
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def conv_rows(k: int, blocks: int, block_ms: float) -> list[dict]:
    rows = []
    for cin, cout, length in CONV_LAYERS:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(k, cin, length, 256, generator=gen, requires_grad=True)
        w = torch.randn(k, cout, cin, 3, generator=gen, requires_grad=True)
        b = torch.randn(k, cout, generator=gen, requires_grad=True)
        grad = torch.randn(k, cout, length, 256, generator=gen)

        def arm(conv: Callable) -> Callable[[], None]:
            def run() -> None:
                x.grad = w.grad = b.grad = None
                conv(x, w, b, 1).backward(grad)
            return run

        ref = im2col_conv1d(x, w, b, 1)
        torch.testing.assert_close(shifted_conv1d(x, w, b, 1), ref, rtol=1e-4, atol=1e-3)
        ms = median_ms({"shifted": arm(shifted_conv1d), "im2col": arm(im2col_conv1d)}, blocks, block_ms)
        rows.append({"k": k, "layer": [cin, cout, length], "shifted_ms": ms["shifted"], "im2col_ms": ms["im2col"],
                     "speedup": ms["im2col"] / ms["shifted"]})
        print(f"conv K={k:<3} {cin:>3}->{cout:<3} L={length:<3} shifted {ms['shifted']:8.2f} ms   "
              f"im2col {ms['im2col']:8.2f} ms   {rows[-1]['speedup']:.2f}x")
    return rows


def positions_forward(xp: torch.Tensor, w: torch.Tensor, out_len: int) -> torch.Tensor:
    """Conv1d in the per-position layout: ``xp`` [K, L + 2P, C, B] (padded), ``w`` [K, O, C, T]
    -> [K, out_len, O, B]; output position l is w_k (as [O, T * C]) @ the window xp[k, l:l + T]."""
    k, _, cin, batch = xp.shape
    cout, kernel = w.shape[1], w.shape[3]
    taps = w.permute(0, 1, 3, 2).reshape(k, cout, kernel * cin)
    out = xp.new_empty(k, out_len, cout, batch)
    for m in range(k):
        windows = xp[m].as_strided((out_len, kernel * cin, batch), (cin * batch, batch, 1))
        torch.bmm(taps[m].expand(out_len, cout, kernel * cin), windows, out=out[m])
    return out


def positions_backward(grad_pad: torch.Tensor, xp: torch.Tensor, w: torch.Tensor, padding: int,
                       length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of ``positions_forward`` from ``grad_pad`` [K, out_len + 2(T - 1), O, B] (the
    output's gradient with T - 1 zero planes at both ends): (input [K, L, C, B], weight [K, O, C, T])."""
    k, _, cin, batch = xp.shape
    cout, kernel = w.shape[1], w.shape[3]
    out_len = grad_pad.shape[1] - 2 * (kernel - 1)
    grad = grad_pad[:, kernel - 1:kernel - 1 + out_len]
    grad_taps = xp.new_empty(k, cout, kernel * cin)
    flipped = w.flip(3).permute(0, 2, 3, 1).reshape(k, cin, kernel * cout)
    grad_x = xp.new_empty(k, length, cin, batch)
    for m in range(k):
        windows = xp[m].as_strided((out_len, kernel * cin, batch), (cin * batch, batch, 1))
        torch.sum(torch.bmm(grad[m], windows.transpose(1, 2)), 0, out=grad_taps[m])
        # input position j (padded j + P) takes output positions j + P - t, t = 0..T-1
        rows = grad_pad[m, padding:].as_strided((length, kernel * cout, batch), (cout * batch, batch, 1))
        torch.bmm(flipped[m].expand(length, cin, kernel * cout), rows, out=grad_x[m])
    return grad_x, grad_taps.view(k, cout, kernel, cin).permute(0, 1, 3, 2)


def positions_rows(k: int, blocks: int, block_ms: float) -> list[dict]:
    rows = []
    for cin, cout, length in CONV_LAYERS:
        if cin < _popmodels.SHIFTED_MIN_CHANNELS:
            continue
        gen = torch.Generator().manual_seed(cin)
        x = torch.randn(k, cin, length, 256, generator=gen, requires_grad=True)
        w = torch.randn(k, cout, cin, 3, generator=gen, requires_grad=True)
        grad = torch.randn(k, cout, length, 256, generator=gen)
        # the candidate's own layout: the input padded by one plane, the gradient by two
        xp = torch.nn.functional.pad(x.detach().permute(0, 2, 1, 3), (0, 0, 0, 0, 1, 1)).contiguous()
        grad_pad = torch.nn.functional.pad(grad.permute(0, 2, 1, 3), (0, 0, 0, 0, 2, 2)).contiguous()
        wd = w.detach()

        def shifted() -> None:
            x.grad = w.grad = None
            shifted_conv1d(x, w, None, 1).backward(grad)

        def positions() -> None:
            positions_forward(xp, wd, length)
            positions_backward(grad_pad, xp, wd, 1, length)

        ref = im2col_conv1d(x, w, None, 1)
        ref.backward(grad)
        torch.testing.assert_close(positions_forward(xp, wd, length).permute(0, 2, 1, 3), ref, rtol=1e-4, atol=1e-3)
        grad_x, grad_w = positions_backward(grad_pad, xp, wd, 1, length)
        torch.testing.assert_close(grad_x.permute(0, 2, 1, 3), x.grad, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(grad_w, w.grad, rtol=1e-4, atol=1e-2)
        ms = median_ms({"positions": positions, "shifted": shifted}, blocks, block_ms)
        rows.append({"k": k, "layer": [cin, cout, length], "positions_ms": ms["positions"],
                     "shifted_ms": ms["shifted"], "speedup": ms["shifted"] / ms["positions"]})
        print(f"per-position K={k:<3} {cin:>3}->{cout:<3} L={length:<3} positions {ms['positions']:8.2f} ms   "
              f"shifted {ms['shifted']:8.2f} ms   {rows[-1]['speedup']:.2f}x")
    return rows


def pool_rows(k: int, blocks: int, block_ms: float) -> list[dict]:
    rows = []
    for channels, length in POOLED:
        x = torch.randn(k, channels, length, 256, requires_grad=True)
        grad = torch.randn(k, channels, length // 2, 256)

        def relu_pool() -> None:
            pair_max(torch.relu_(x * 1.0), 2).backward(grad)

        def pool_relu() -> None:
            torch.relu_(pair_max(x * 1.0, 2)).backward(grad)

        ms = median_ms({"pool_relu": pool_relu, "relu_pool": relu_pool}, blocks, block_ms)
        rows.append({"k": k, "shape": [k, channels, length, 256], "pool_relu_ms": ms["pool_relu"],
                     "relu_pool_ms": ms["relu_pool"], "speedup": ms["relu_pool"] / ms["pool_relu"]})
        print(f"relu/pool K={k:<3} [{channels}, {length}] pool then ReLU {ms['pool_relu']:7.2f} ms   "
              f"ReLU then pool {ms['relu_pool']:7.2f} ms   {rows[-1]['speedup']:.2f}x")
    return rows


def fused(on: bool, run: Callable[[], object]) -> Callable[[], None]:
    """``run`` with the population's fused CNN blocks on or off."""
    def arm() -> None:
        before = _popmodels.FUSED_BLOCKS
        _popmodels.FUSED_BLOCKS = on
        try:
            run()
        finally:
            _popmodels.FUSED_BLOCKS = before
    return arm


def block_rows(k: int, blocks: int, block_ms: float) -> list[dict]:
    rows = []
    for channels, length in POOLED:
        pop = PopulationModel([torch.nn.Sequential(torch.nn.BatchNorm1d(channels)) for _ in range(k)])
        step = _popmodels._block("0.", 0.1, 1e-5, True, True)
        gen = torch.Generator().manual_seed(channels)
        x = torch.randn(k, channels, length, 256, generator=gen, requires_grad=True)
        grad = torch.randn(k, channels, length // 2, 256, generator=gen)

        def run() -> None:
            x.grad = None
            pop.zero_grad(set_to_none=True)
            step(pop, x).backward(grad)

        outs = []
        for on in (True, False):
            fused(on, run)()
            outs.append(x.grad.clone())
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-3, atol=1e-4)
        ms = median_ms({"fused": fused(True, run), "torch": fused(False, run)}, blocks, block_ms)
        rows.append({"k": k, "shape": [k, channels, length, 256], "fused_ms": ms["fused"], "torch_ms": ms["torch"],
                     "speedup": ms["torch"] / ms["fused"]})
        print(f"block K={k:<3} [{channels}, {length}] fused {ms['fused']:7.2f} ms   torch {ms['torch']:7.2f} ms   "
              f"{rows[-1]['speedup']:.2f}x")
    return rows


def loss_rows(blocks: int, block_ms: float) -> list[dict]:
    rows = []
    for k, batch, classes in LOSS_SHAPES:
        members = [member_loss(TrainConfig.from_dict(ARMS[i % len(ARMS)])) for i in range(k)]
        losses = {kernel: PopulationLoss(members, kernel=kernel) for kernel in ("native", "torch")}
        gen = torch.Generator().manual_seed(k)
        z = torch.randn(k, batch, classes, generator=gen)
        y = torch.randint(0, classes, (k, batch), generator=gen)
        for a, r in zip(losses["native"]._grad_share_display(z, y), losses["torch"]._grad_share_display(z, y)):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)
        ms = median_ms({kernel: (lambda f=loss._grad_share_display: f(z, y)) for kernel, loss in losses.items()},
                       blocks, block_ms)
        rows.append({"shape": [k, batch, classes], "logits": k * batch * classes, "native_ms": ms["native"],
                     "torch_ms": ms["torch"], "speedup": ms["torch"] / ms["native"]})
        print(f"loss [{k}, {batch}, {classes}] ({k * batch * classes} logits) native {ms['native'] * 1e3:8.1f} us   "
              f"torch {ms['torch'] * 1e3:8.1f} us   {rows[-1]['speedup']:.2f}x")
    return rows


def population_run(case: str, k: int, quick: bool) -> Callable[[], object]:
    """Training one population of ``case``: the K configurations of population.py."""
    import _cases
    from dm_tune.data import prepare
    from dm_tune.population import train_population

    source, shared = _cases.case(case, quick)
    cfgs = _cases.configs(shared, k)
    datas = [prepare(c, source) for c in cfgs]
    return lambda: train_population(cfgs, datas)


def population_rows(k: int, blocks: int, quick: bool) -> list[dict]:
    train = population_run("digits-mlp", k, quick)
    limits = (_native.POPULATION_MAX_ELEMENTS, _native.POPULATION_MAX_ELEMENTS_FEW)

    def arm(native: bool) -> Callable[[], None]:
        def run() -> None:
            _native.POPULATION_MAX_ELEMENTS, _native.POPULATION_MAX_ELEMENTS_FEW = limits if native else (0, 0)
            try:
                train()
            finally:
                _native.POPULATION_MAX_ELEMENTS, _native.POPULATION_MAX_ELEMENTS_FEW = limits
        return run

    ms = median_ms({"native": arm(True), "torch": arm(False)}, blocks, 1.0)  # one whole run per block
    row = {"k": k, "case": "digits-mlp", "native_s": ms["native"] / 1e3, "torch_s": ms["torch"] / 1e3,
           "speedup": ms["torch"] / ms["native"]}
    print(f"population digits-mlp K={k}: losses in C {row['native_s']:.3f} s   in torch {row['torch_s']:.3f} s   "
          f"{row['speedup']:.2f}x")
    return [row]


def cnn_population_rows(k: int, blocks: int, quick: bool) -> list[dict]:
    run = population_run("mnist1d-cnn", k, quick)
    ms = median_ms({"fused": fused(True, run), "torch": fused(False, run)}, blocks, 1.0)  # one run per block
    row = {"k": k, "case": "mnist1d-cnn", "fused_s": ms["fused"] / 1e3, "torch_s": ms["torch"] / 1e3,
           "speedup": ms["torch"] / ms["fused"]}
    print(f"population mnist1d-cnn K={k}: fused blocks {row['fused_s']:.3f} s   torch blocks {row['torch_s']:.3f} s   "
          f"{row['speedup']:.2f}x")
    return [row]


SECTIONS = ("conv", "positions", "relu_pool", "block", "loss", "population")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=_args.positive_int, default=1)
    p.add_argument("--blocks", type=_args.positive_int, default=9, help="timed blocks per arm (median reported)")
    p.add_argument("--block-ms", type=_args.positive_float, default=200.0)
    p.add_argument("--sizes", type=_args.positive_ints, default="4,16",
                   help="population sizes K of the convolution rows")
    p.add_argument("--population-k", type=_args.count, default=6, help="members of the whole-population rows (0: none)")
    p.add_argument("--cnn-k", type=_args.count, default=4, help="members of the whole CNN population rows (0: none)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="a smoke test: 2-epoch populations")
    p.add_argument("--json")
    args = p.parse_args()
    sections = args.sections.split(",")
    if unknown := set(sections) - set(SECTIONS):
        p.error(f"--sections: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(args.threads)
    sizes = args.sizes
    out: dict = {"threads": args.threads, "blocks": args.blocks, "torch": torch.__version__,
                 "machine": _machine.machine()}
    if "conv" in sections:
        out["conv"] = [row for k in sizes for row in conv_rows(k, args.blocks, args.block_ms)]
    if "positions" in sections:
        out["positions"] = [row for k in sizes for row in positions_rows(k, args.blocks, args.block_ms)]
    if "relu_pool" in sections:
        out["relu_pool"] = [row for k in sizes for row in pool_rows(k, args.blocks, args.block_ms)]
    if "block" in sections:
        out["block"] = [row for k in sizes for row in block_rows(k, args.blocks, args.block_ms)]
    if "loss" in sections:
        out["loss"] = loss_rows(args.blocks, args.block_ms)
    if "population" in sections:
        out["population"] = ((population_rows(args.population_k, args.blocks, args.quick) if args.population_k else [])
                             + (cnn_population_rows(args.cnn_k, args.blocks, args.quick) if args.cnn_k else []))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
