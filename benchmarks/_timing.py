"""Side-by-side timing shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so
this folder is on ``sys.path``): the arms alternate in blocks of equal size, the order reversed
every round (A B C, C B A, ...), so that none always runs first or last under the same machine
conditions."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

Arm = Callable[[], object]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(fn: Arm, n: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``n`` calls (the device synchronised before and after)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n


def interleave(arms: dict[str, Arm], repeats: int, block_ms: float,
               device: torch.device) -> tuple[dict[str, list[float]], int]:
    """Alternate the arms' blocks ``repeats`` times; returns each arm's per-block seconds per call
    and the block size in calls (about ``block_ms`` of the fastest arm)."""
    for _ in range(2):  # warm-up: allocator, kernels, optimiser state
        for fn in arms.values():
            time_block(fn, 2, device)
    # Block size from the fastest of several short calibration runs (robust to a stray spike).
    per_call = min(time_block(fn, 2, device) for fn in list(arms.values()) * 3)
    n = max(1, round(block_ms / 1e3 / max(per_call, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(time_block(arms[name], n, device))
    return times, n
