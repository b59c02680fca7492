"""What the bounded first load of a torch-saved file costs (dm_tune/datasets/_bounded.py): reading
pretrained weights and a CIFAR-N label file with it (a child process loads the bytes first; a
file's second read in a process only hashes it) against torch's weights-only loader alone, side
by side in one run.

    python benchmarks/bounded_load.py [--model resnet50] [--cifar-images 60000] [--repeats 3]
                                      [--json out.json]

Timed, median over repeats, the arms alternating: ``load_pretrained`` of a torchvision model's
randomly initialised state dict (no download: the file's size and layout are ImageNet weights'),
first read in the process (its verdict forgotten and the helper that forks the loading children
started again), first read (its verdict forgotten, the helper running) and read again; a
CIFAR-N-shaped file (six sets of 50 000 labels) through ``read_label_file``; a CIFAR-10 release
of random images in the release's format (``--cifar-images`` in all, five sixths of them in the
five training batches) through ``load_cifar10``, each read the same three ways; and, for the
floor, the same readers in this process alone (``read_state_dict`` + ``load_state_dict``,
``read_label_arrays``, the CIFAR reader without its child).
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dm_tune.datasets._bounded as bounded  # noqa: E402
import dm_tune.datasets.cifar as cifar  # noqa: E402
from dm_tune.models import load_pretrained, read_state_dict  # noqa: E402
from dm_tune.noise import read_label_arrays, read_label_file  # noqa: E402

import _args  # noqa: E402
import _machine  # noqa: E402


def _seconds(call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", help="a torchvision model name (default resnet50)")
    p.add_argument("--cifar-images", type=_args.positive_int, default=60_000,
                   help="images in the CIFAR-10 release (60 000)")
    p.add_argument("--repeats", type=_args.positive_int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    build = getattr(torchvision.models, args.model)
    with tempfile.TemporaryDirectory() as tmp:
        weights, labels = Path(tmp) / "weights.pth", Path(tmp) / "labels.pt"
        torch.save(build().state_dict(), weights)
        rng = np.random.default_rng(0)
        torch.save({k: rng.integers(0, 10, 50_000) for k in ("clean_label", "worse_label", "aggre_label",
                                                              "random_label1", "random_label2", "random_label3")},
                   labels)
        model = build()
        cifar_root = Path(tmp) / "cifar"
        base = cifar_root / "cifar-10-batches-py"
        base.mkdir(parents=True)
        per_batch = max(args.cifar_images // 6, 10)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            blob = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                    "labels": [i % 10 for i in range(per_batch)]}
            (base / name).write_bytes(pickle.dumps(blob, protocol=2))
        (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))

        def plain_weights() -> None:
            with weights.open("rb") as f:
                model.load_state_dict(read_state_dict(f), strict=False)

        def plain_labels() -> None:
            with labels.open("rb") as f:
                np.asarray(read_label_arrays(f)["worse_label"])

        def first(call) -> float:
            bounded._PASSED.clear()
            return _seconds(call)

        def first_in_process(call) -> float:  # (the helper that forks the children started too)
            bounded.stop_helper()
            return first(call)

        arms = {
            "weights: the reader alone + load_state_dict": lambda: _seconds(plain_weights),
            "weights: load_pretrained, first in the process": lambda: first_in_process(
                lambda: load_pretrained(model, weights)),
            "weights: load_pretrained, first read": lambda: first(lambda: load_pretrained(model, weights)),
            "weights: load_pretrained, read again": lambda: _seconds(lambda: load_pretrained(model, weights)),
            "labels: the reader alone": lambda: _seconds(plain_labels),
            "labels: read_label_file, first in the process": lambda: first_in_process(
                lambda: read_label_file(labels, "worse_label")),
            "labels: read_label_file, first read": lambda: first(lambda: read_label_file(labels, "worse_label")),
            "labels: read_label_file, read again": lambda: _seconds(lambda: read_label_file(labels, "worse_label")),
            "cifar10: the reader alone": lambda: _seconds(lambda: cifar._cifar10_source(base)),
            "cifar10: load_cifar10, first in the process": lambda: first_in_process(
                lambda: cifar.load_cifar10(cifar_root, {}, False)),
            "cifar10: load_cifar10, first read": lambda: first(lambda: cifar.load_cifar10(cifar_root, {}, False)),
            "cifar10: load_cifar10, read again": lambda: _seconds(lambda: cifar.load_cifar10(cifar_root, {}, False)),
        }
        times: dict[str, list[float]] = {name: [] for name in arms}
        for r in range(args.repeats):
            for name in (list(arms) if r % 2 == 0 else list(reversed(arms))):
                if name.endswith("read again"):  # (after its first read, whatever the order)
                    arms[name.replace("read again", "first read")]()
                times[name].append(arms[name]())
        sizes = {"weights": weights.stat().st_size, "labels": labels.stat().st_size,
                 "cifar10": sum(f.stat().st_size for f in base.iterdir())}
    result = {"machine": _machine.machine(), "model": args.model, "repeats": args.repeats, "file_bytes": sizes,
              "median_s": {name: statistics.median(t) for name, t in times.items()}, "times_s": times}
    for name, t in result["median_s"].items():
        print(f"{name:45s} {t:7.3f} s")
    print(f"(files: weights {sizes['weights'] / 2**20:.1f} MB, labels {sizes['labels'] / 2**20:.1f} MB, "
          f"cifar10 {sizes['cifar10'] / 2**20:.1f} MB)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
