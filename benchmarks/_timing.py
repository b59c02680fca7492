"""Side-by-side timing shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so
this folder is on ``sys.path``): the arms alternate in blocks of equal size, the order reversed
every round (A B C, C B A, ...), so that none always runs first or last under the same machine
conditions. ``population_and_separate`` does the same for whole training runs."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

Arm = Callable[[], object]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Arm, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call of ``fn`` (the device synchronised)."""
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t, time.process_time() - c


def population_and_separate(cfgs: list, datas: list, repeats: int, device: torch.device,
                            separate_runs: int | None = None,
                            variants: dict[str, list] | None = None) -> dict[str, list[tuple[float, float]]]:
    """The same configurations trained as one population (``"pop"``) and as separate ``train()``
    runs, the first ``separate_runs`` of them (``"sep"``), after an untimed warm-up; the two arms
    alternate their order between repeats. With ``variants`` (name -> the same configurations
    changed, e.g. in another precision), each variant's two arms instead, ``"pop_NAME"`` and
    ``"sep_NAME"``, all alternating in one block. Each arm's (wall, CPU) seconds per repeat."""
    from dm_tune.population import train_population
    from dm_tune.train import train

    separate_runs = len(cfgs) if separate_runs is None else separate_runs
    arms: dict[str, Arm] = {}
    for name, variant in (variants or {"": cfgs}).items():
        # Warm-up: first calls of every kernel; on CUDA also the context, cuDNN, the allocator.
        train(variant[0], datas[0])
        if len(variant) > 1:
            warm = len(variant) if device.type == "cuda" else 2
            train_population(variant[:warm], datas[:warm])
        suffix = f"_{name}" if name else ""
        arms["pop" + suffix] = lambda v=variant: train_population(v, datas)
        arms["sep" + suffix] = lambda v=variant: [train(c, d) for c, d in zip(v[:separate_runs], datas[:separate_runs])]
    return alternating(arms, repeats, device)


def alternating(arms: dict[str, Arm], repeats: int, device: torch.device) -> dict[str, list[tuple[float, float]]]:
    """Each arm called once per repeat, the order reversed every repeat (A B, B A, ...): each
    arm's (wall, CPU) seconds per call."""
    names = list(arms)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(arms[name], device))
    return times


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

