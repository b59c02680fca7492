"""Datasets by name: each a small module with ``load(root, options, download) -> Source``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dm_tune._names import TASKS, task_of
from dm_tune.datasets import cifar, clothing1m, digits, features, imagefolder, imdb, mars, mnist1d, reid_synth
from dm_tune.datasets._base import DataError, Gallery, Source, Split

Loader = Callable[[Path | None, Mapping[str, Any], bool], Source]

# name -> (loader, needs a data root on disk); the names and flags are dm_tune._names.DATASET_ROOTS
DATASETS: dict[str, tuple[Loader, bool]] = {
    "digits": (digits.load, False),
    "mnist1d": (mnist1d.load, False),
    "cifar10": (cifar.load_cifar10, True),
    "cifar100": (cifar.load_cifar100, True),
    "clothing1m": (clothing1m.load, True),
    "imagefolder": (imagefolder.load, True),
    "imdb": (imdb.load, True),
    "features": (features.load, True),
    "reid-synth": (reid_synth.load, False),
    "mars": (mars.load_images, True),
    "mars-features": (mars.load_features, True),
}

EMBEDDED = tuple(name for name, (_, on_disk) in DATASETS.items() if not on_disk)


__all__ = ["DATASETS", "EMBEDDED", "TASKS", "DataError", "Gallery", "Source", "Split", "task_of"]
