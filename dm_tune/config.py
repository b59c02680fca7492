"""The one configuration object of a training run, validated once at the edge.

``TrainConfig.from_dict`` is the single constructor used by the CLI, YAML files and Ray trial
configs. Fields left as ``None`` take the dataset's default (``resolve``); the resolved config
is what every result records.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dm_tune._validate import ConfigError, build, check, in_range, one_of
from dm_tune.datasets import DATASETS
from dm_tune.methods import METHODS
from dm_tune.models import MODELS
from dm_tune.noise import IMBALANCE_KINDS, NOISE_MODELS

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "step", "cosine")
AMP_MODES = ("auto", "off", "bf16", "fp16")


def _device_check(v: str) -> str | None:
    ok = v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit())
    return None if ok else "expected auto, cpu, cuda, cuda:N or mps"


def _milestones_check(v: tuple[float, ...]) -> str | None:
    ok = all(0.0 < m < 1.0 for m in v) and list(v) == sorted(v)
    return None if ok else "expected increasing fractions of the training budget in (0, 1)"


@dataclass(frozen=True)
class TrainConfig:
    # --- data ---------------------------------------------------------------------------
    dataset: str = check(one_of(DATASETS), "digits")
    data_root: str | None = None           # absolute or relative path; required by on-disk datasets
    download: bool = False                 # CIFAR only: fetch into data_root (needs the internet)
    dataset_options: dict[str, Any] = field(default_factory=dict)  # checked by the dataset module
    noise: str = check(one_of(NOISE_MODELS), "symmetric")
    noise_rate: float = check(in_range(0.0, 1.0, hi_open=True), 0.0)  # fraction of training labels corrupted
    noise_file: str | None = None          # for noise "file"
    noise_key: str | None = None           # key inside a CIFAR-N .pt file, e.g. "worse_label"
    imbalance: str = check(one_of(IMBALANCE_KINDS), "none")
    imbalance_ratio: float = check(in_range(1.0, 1e4), 1.0)  # largest / smallest class size
    val_fraction: float = check(in_range(0.0, 0.9), 0.2)    # carved from training data (fixed seed)
    val_noisy: bool = False                # validation labels noisy too (the paper keeps them clean)
    # --- model ----------------------------------------------------------------------------
    model: str | None = check(one_of(MODELS), None)  # None: the dataset's default
    hidden_dim: int = check(in_range(1, 1_000_000), 256)  # MLP width
    pretrained: str | None = None          # local weights file for resnet18/resnet50
    # --- method ---------------------------------------------------------------------------
    method: str = check(one_of(METHODS), "dm")
    lam: float = check(in_range(0.0, 1e3), 1.0)       # DM: emphasis mode psi = lam / (1 + lam)
    beta: float = check(in_range(-1e3, 1e3), 8.0)     # DM: emphasis variance (spread)
    gce_q: float = check(in_range(0.0, 1.0, lo_open=True), 0.7)
    sl_mu: float = check(in_range(0.0, 1e3), 0.1)     # SL = mu * CCE + nu * RCE
    sl_nu: float = check(in_range(0.0, 1e3), 1.0)
    sl_log_clip: float = check(in_range(-100.0, 0.0, hi_open=True), math.log(1e-4))
    # --- optimisation (None: the dataset's default) ---------------------------------------
    optimizer: str | None = check(one_of(OPTIMIZERS), None)
    lr: float | None = check(in_range(0.0, 10.0, lo_open=True), None)
    momentum: float = check(in_range(0.0, 1.0, hi_open=True), 0.9)
    weight_decay: float | None = check(in_range(0.0, 1.0), None)
    schedule: str | None = check(one_of(SCHEDULES), None)
    lr_milestones: tuple[float, ...] = check(_milestones_check, (0.5, 0.75))  # "step": fractions of epochs
    lr_gamma: float = check(in_range(0.0, 1.0, lo_open=True), 0.1)
    epochs: int | None = check(in_range(1, 100_000), None)
    batch_size: int | None = check(in_range(1, 1_000_000), None)
    augment: bool | None = None            # random crop + flip for images (None: on for images)
    # --- run ------------------------------------------------------------------------------
    seed: int = 0                          # model init, batch order, augmentation
    data_seed: int | None = None           # noise draw, validation carve, imbalance (None: seed)
    device: str = check(_device_check, "auto")
    amp: str = check(one_of(AMP_MODES), "auto")  # mixed precision on CUDA
    num_workers: int = check(in_range(0, 256), 2)  # DataLoader workers for on-disk images

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "") -> "TrainConfig":
        cfg = build(cls, values, where)
        cfg._check_combinations(where)
        return cfg

    def _check_combinations(self, where: str) -> None:
        prefix = f"{where}." if where else ""
        if self.noise == "none" and self.noise_rate != 0.0:
            raise ConfigError(f"{prefix}noise_rate", self.noise_rate, "must be 0 with noise 'none'")
        if self.noise == "file" and not self.noise_file:
            raise ConfigError(f"{prefix}noise_file", self.noise_file, "a label file is required with noise 'file'")
        if self.noise_file and self.noise != "file":
            raise ConfigError(f"{prefix}noise", self.noise, "must be 'file' when noise_file is given")
        if self.imbalance == "none" and self.imbalance_ratio != 1.0:
            raise ConfigError(f"{prefix}imbalance_ratio", self.imbalance_ratio,
                              "must be 1 with imbalance 'none' (choose longtail or step)")
        if self.imbalance != "none" and self.imbalance_ratio == 1.0:
            raise ConfigError(f"{prefix}imbalance_ratio", self.imbalance_ratio,
                              f"imbalance {self.imbalance!r} needs a ratio > 1 (largest / smallest class)")

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    def resolve(self, defaults: Mapping[str, Any], default_model: str, input_kind: str) -> "TrainConfig":
        """Fill every ``None`` optimisation field from the dataset's defaults."""
        base = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine",
                "epochs": 100, "batch_size": 128, **defaults}
        changes: dict[str, Any] = {k: base[k] for k in ("optimizer", "lr", "weight_decay",
                                                       "schedule", "epochs", "batch_size")
                                   if getattr(self, k) is None}
        if self.model is None:
            changes["model"] = default_model
        if self.augment is None:
            changes["augment"] = input_kind == "image"
        if self.data_seed is None:
            changes["data_seed"] = self.seed
        return dataclasses.replace(self, **changes)
