"""MNIST-1D (Greydanus 2020): 1-D signals of length 40, 10 classes, generated offline."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dm_tune.datasets._base import Source, Split
from dm_tune._validate import ConfigError

# The mnist1d package's defaults (4,000 train / 1,000 test, seed 42); the count is tunable, up to
# a million (its generator makes about 7,000 a second here: 10**12 ran on without a word).
OPTIONS = ("num_samples",)
MAX_SAMPLES = 1_000_000


def load(root: Path | None, options: Mapping[str, Any], download: bool = False) -> Source:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for key, value in options.items():
        if key not in OPTIONS:
            raise ConfigError(f"dataset_options.{key}", value, "mnist1d takes: " + ", ".join(OPTIONS))
        if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= MAX_SAMPLES:
            raise ConfigError(f"dataset_options.{key}", value, f"expected an integer in [100, {MAX_SAMPLES}]")
        setattr(args, key, value)
    d = make_dataset(args)  # deterministic: seeded by args.seed, no download
    return Source(
        name="mnist1d",
        train=Split(torch.from_numpy(np.asarray(d["x"], np.float32)), torch.from_numpy(np.asarray(d["y"])).long()),
        test=Split(torch.from_numpy(np.asarray(d["x_test"], np.float32)), torch.from_numpy(np.asarray(d["y_test"])).long()),
        num_classes=10,
        input_kind="signal",
        default_model="cnn",
        class_names=tuple(str(i) for i in range(10)),
        defaults={"epochs": 30, "optimizer": "adam", "lr": 2e-3, "batch_size": 256,
                  "weight_decay": 0.0, "schedule": "none"},
        info={"num_samples": args.num_samples, "generator_seed": args.seed},
    )
