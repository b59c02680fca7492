"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), embedded: no download."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dm_tune.datasets._base import Source, Split
from dm_tune._validate import ConfigError

# The data set has no official test split: a fixed, stratified 30% is held out.
TEST_FRACTION = 0.3
SPLIT_SEED = 20190527


def load(root: Path | None, options: Mapping[str, Any], download: bool = False) -> Source:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if options:
        name = sorted(options)[0]
        raise ConfigError(f"dataset_options.{name}", options[name], "digits takes no options")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixel intensities 0..16 -> [0, 1]
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return Source(
        name="digits",
        train=Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr).long()),
        test=Split(torch.from_numpy(x_te), torch.from_numpy(y_te).long()),
        num_classes=10,
        input_kind="vector",
        default_model="mlp",
        class_names=tuple(str(i) for i in range(10)),
        # Long enough for CCE to memorise noisy labels: the regime DM is for.
        defaults={"epochs": 60, "optimizer": "adam", "lr": 1e-3, "batch_size": 64,
                  "weight_decay": 0.0, "schedule": "none"},
        info={"test_fraction": TEST_FRACTION, "split_seed": SPLIT_SEED},
    )
