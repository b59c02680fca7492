"""A single run's Adam on the CPU: torch's fused update (what ``train()`` uses there) against its
default one (a loop of elementwise operations per tensor), side by side in one run.

    python benchmarks/optimizer.py [--cases digits-mlp,mnist1d-cnn] [--threads 1,2]
                                   [--repeats 5] [--json out.json]

Timed: whole ``train()`` runs of a case's first configurations (``_cases.configs``: DM, CCE, GCE,
... at 40% symmetric noise), the two arms alternating order between repeats, seconds per
configuration, median over repeats; the arm is switched by replacing
``dm_tune.train._make_optimizer``. Also timed, because it is why the default update can be much
slower on some CPUs: ``torch.sqrt`` of a 256 x 256 tensor of zeros against one of ordinary
numbers (Adam takes the square root of its second moment, which is exactly zero for a weight that
never gets a gradient, e.g. the digits pixels that are blank in every image).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dm_tune.data import prepare  # noqa: E402

import _args  # noqa: E402
import _cases  # noqa: E402
import _timing  # noqa: E402
import _machine  # noqa: E402

train_mod = importlib.import_module("dm_tune.train")  # the module (``dm_tune.train`` is also the function)


_fused = train_mod._make_optimizer


def _default(config, model, device):
    """Adam as torch builds it by default (``train()``'s before it used the fused update); other
    optimisers as ``train()`` builds them."""
    if config.optimizer != "adam":
        return _fused(config, model, device)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def runs(case: str, k: int, repeats: int, quick: bool) -> dict[str, float]:
    source, shared = _cases.case(case, quick)
    configs = _cases.configs(shared, k)
    datas = [prepare(c, source) for c in configs]

    def with_optimizer(make):
        def arm() -> None:
            train_mod._make_optimizer = make
            for c, d in zip(configs, datas):
                train_mod.train(c, d)
        return arm

    arms = {"fused": with_optimizer(_fused), "default": with_optimizer(_default)}
    try:
        for make in (_fused, _default):  # warm-up
            train_mod._make_optimizer = make
            train_mod.train(configs[0], datas[0])
        times = _timing.alternating(arms, repeats, torch.device("cpu"))
    finally:
        train_mod._make_optimizer = _fused
    row = {f"{n}_s_per_config": statistics.median(w for w, _ in v) / k for n, v in times.items()}
    row["speedup"] = row["default_s_per_config"] / row["fused_s_per_config"]
    return row


def sqrt_of_zeros() -> dict[str, float]:
    zeros, ordinary = torch.zeros(256, 256), torch.rand(256, 256) + 0.5
    t, n = _timing.interleave({"zeros": lambda: torch.sqrt(zeros), "ordinary": lambda: torch.sqrt(ordinary)},
                              repeats=6, block_ms=50, device=torch.device("cpu"))
    row = {f"sqrt_{k}_us": statistics.median(v) * 1e6 for k, v in t.items()}
    row["sqrt_zeros_slowdown"] = row["sqrt_zeros_us"] / row["sqrt_ordinary_us"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="digits-mlp,mnist1d-cnn")
    p.add_argument("--threads", type=_args.positive_ints, default="1,2")
    p.add_argument("--k", type=_args.positive_int, default=4, help="configurations per arm and repeat")
    p.add_argument("--repeats", type=_args.positive_int, default=5)
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test of the script)")
    p.add_argument("--json")
    args = p.parse_args()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        sq = sqrt_of_zeros()
        print(f"threads {threads}: sqrt of 256x256 zeros {sq['sqrt_zeros_us']:.1f} us, of ordinary numbers "
              f"{sq['sqrt_ordinary_us']:.1f} us ({sq['sqrt_zeros_slowdown']:.1f}x)", flush=True)
        for case in args.cases.split(","):
            row = {"case": case, "threads": threads, "k": args.k, **runs(case, args.k, args.repeats, args.quick), **sq}
            rows.append(row)
            print(f"{case:12s} threads {threads}: fused {row['fused_s_per_config']:.4f} s/config, default "
                  f"{row['default_s_per_config']:.4f} s/config, {row['speedup']:.2f}x", flush=True)
    if args.json:
        out = {"machine": _machine.machine(), "load_average": _machine.load_average(), "repeats": args.repeats, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
