"""The workloads the population benchmarks share (run as ``python benchmarks/NAME.py``, so this
folder is on ``sys.path``): each case's data source and shared config fields, and the members'
configurations."""

from __future__ import annotations

from typing import Any

import torch

from dm_tune.config import TrainConfig
from dm_tune.datasets import DATASETS, Source, Split

CASES = ("digits-mlp", "mnist1d-cnn", "resnet20")

# The members' knobs, cycled (K > 8 repeats them with the next seed).
ARMS = [{"method": "dm", "lam": 1.0, "beta": 8.0}, {"method": "dm", "lam": 2.0, "beta": 24.0},
        {"method": "dm", "lam": 0.5, "beta": 6.0}, {"method": "dm", "lam": 0.0, "beta": 0.0},
        {"method": "cce"}, {"method": "gce"}, {"method": "mae-dn"}, {"method": "sl"}]


def cifar_like(n_train: int, n_test: int) -> Source:
    """CIFAR-shaped random uint8 images (the ResNet case needs no dataset on disk)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (n_train + n_test,), generator=gen)
    return Source(name="cifar10", train=Split(x[:n_train], y[:n_train]), test=Split(x[n_train:], y[n_train:]),
                  num_classes=10, input_kind="image", default_model="resnet20",
                  defaults={"epochs": 1, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4,
                            "schedule": "cosine"},
                  normalise=((0.49, 0.48, 0.45), (0.25, 0.24, 0.26)))


def case(name: str, quick: bool = False, device: str = "cpu",
         images: int | None = None) -> tuple[Source, dict[str, Any]]:
    """(source, shared config fields) of a case: ``digits-mlp`` (the embedded default, 10 epochs),
    ``mnist1d-cnn`` (the 1-D CNN, 1 epoch at its default batch 256), ``resnet20`` (random
    CIFAR-shaped images, augmentation on: 4 steps at batch 32 on the CPU, 40 at 128 on CUDA; or,
    with ``images``, one epoch of that many training images before the 20% validation carve, e.g.
    CIFAR-10's 50 000)."""
    if name == "digits-mlp":
        return DATASETS["digits"][0](None, {}, False), {"dataset": "digits", "epochs": 2 if quick else 10}
    if name == "mnist1d-cnn":
        opts = {"num_samples": 1000} if quick else {}
        return (DATASETS["mnist1d"][0](None, opts, False),
                {"dataset": "mnist1d", "dataset_options": opts, "epochs": 1})
    if name == "resnet20":
        batch = 8 if quick else (128 if device == "cuda" else 32)
        steps = 2 if quick else (40 if device == "cuda" else 4)
        n_train = images or int(batch * steps / 0.8)  # 20% is carved off as validation
        return cifar_like(n_train, batch), {"dataset": "cifar10", "model": "resnet20", "batch_size": batch,
                                            "epochs": 1}
    raise SystemExit(f"unknown case {name!r}: {', '.join(CASES)}")


def configs(shared: dict[str, Any], k: int, device: str = "cpu",
            arms: list[dict[str, Any]] = ARMS) -> list[TrainConfig]:
    """K members at 40% symmetric noise: the arms cycled, each with its own seed (so its own noise
    draw, validation split and initialisation)."""
    return [TrainConfig.from_dict({"noise": "symmetric", "noise_rate": 0.4, "device": device, **shared,
                                   **arms[i % len(arms)], "seed": i // len(arms) + 100 * (i % len(arms))})
            for i in range(k)]
