"""Datasets by name: each a small module with ``load(root, options, download) -> Source``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dm_tune.datasets import cifar, clothing1m, digits, features, imagefolder, imdb, mars, mnist1d, reid_synth
from dm_tune.datasets._base import DataError, Gallery, Source, Split

Loader = Callable[[Path | None, Mapping[str, Any], bool], Source]

# name -> (loader, needs a data root on disk)
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

# Datasets whose task is not classification: retrieval trains an identity classifier and ranks
# a gallery by its embeddings (dm_tune.data_reid, dm_tune.retrieval).
TASKS: dict[str, str] = {"reid-synth": "retrieval", "mars": "retrieval", "mars-features": "retrieval"}


def task_of(dataset: str) -> str:
    return TASKS.get(dataset, "classification")


__all__ = ["DATASETS", "EMBEDDED", "TASKS", "DataError", "Gallery", "Source", "Split", "task_of"]
