"""The one configuration object of a training run, validated once at the edge.

``TrainConfig.from_dict`` is the single constructor used by the CLI, YAML files and Ray trial
configs. Fields left as ``None`` take the dataset's default (``resolve``); the resolved config
is what every result records.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Annotated, Any

from pydantic import model_validator
from pydantic.dataclasses import dataclass

from dm_tune._names import (DATASET_NAMES, DATASET_ROOTS, DOWNLOADABLE, IMAGE_DATASETS, IMBALANCE_KINDS,
                            IMBALANCE_RATIO_MAX, METHOD_NAMES, MODEL_NAMES, NOISE_NAMES, PRETRAINABLE, STREAMED)
from dm_tune._validate import CONFIG, Bool, Float, Int, Seed, config_errors, in_range, one_of, parse, rule, violation
from dm_tune.class_weighting import DEFAULT_EFFECTIVE_BETA
from dm_tune.class_weighting import SCHEMES as CLASS_WEIGHTINGS

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "step", "cosine")
AMP_MODES = ("auto", "off", "bf16", "fp16")
LAM_MAX = 1e3                           # DM knobs a run takes: lambda in [0, LAM_MAX], |beta| <= BETA_MAX
BETA_MAX = 1e3


def _device_ok(v: str) -> bool:
    return v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isascii() and v[5:].isdigit())


def _milestones_ok(v: tuple[float, ...]) -> bool:
    return all(0.0 < m < 1.0 for m in v) and list(v) == sorted(v)


Device = Annotated[str, rule(_device_ok, "expected auto, cpu, cuda, cuda:N or mps")]
Milestones = Annotated[tuple[Float, ...],
                       rule(_milestones_ok, "expected increasing fractions of the training budget in (0, 1)")]


@config_errors
@dataclass(frozen=True, config=CONFIG)
class TrainConfig:
    # --- data ---------------------------------------------------------------------------
    dataset: Annotated[str, one_of(DATASET_NAMES)] = "digits"
    data_root: str | None = None           # absolute or relative path; required by on-disk datasets
    download: Bool = False                 # CIFAR only: fetch into data_root (needs the internet)
    dataset_options: dict[str, Any] = field(default_factory=dict)  # checked by the dataset module
    noise: Annotated[str, one_of(NOISE_NAMES)] = "symmetric"
    noise_rate: Annotated[Float, in_range(0.0, 1.0, hi_open=True)] = 0.0  # fraction of training labels corrupted
    noise_file: str | None = None          # for noise "file"
    noise_key: str | None = None           # key inside a CIFAR-N .pt file, e.g. "worse_label"
    imbalance: Annotated[str, one_of(IMBALANCE_KINDS)] = "none"
    imbalance_ratio: Annotated[Float, in_range(1.0, IMBALANCE_RATIO_MAX)] = 1.0  # largest / smallest class size
    val_fraction: Annotated[Float, in_range(0.0, 0.9)] = 0.2    # carved from training data (seeded by data_seed)
    val_noisy: Bool = False                # validation labels noisy too (the paper keeps them clean)
    # --- model ----------------------------------------------------------------------------
    model: Annotated[str, one_of(MODEL_NAMES)] | None = None  # None: the dataset's default
    hidden_dim: Annotated[Int, in_range(1, 1_000_000)] = 256  # MLP width
    pretrained: str | None = None          # local weights file for resnet18/resnet50
    # --- method ---------------------------------------------------------------------------
    method: Annotated[str, one_of(METHOD_NAMES)] = "dm"
    lam: Annotated[Float, in_range(0.0, LAM_MAX)] = 1.0   # DM: emphasis mode psi = lam / (1 + lam)
    beta: Annotated[Float, in_range(-BETA_MAX, BETA_MAX)] = 8.0  # DM: emphasis variance (spread)
    gce_q: Annotated[Float, in_range(0.0, 1.0, lo_open=True)] = 0.7
    sl_mu: Annotated[Float, in_range(0.0, 1e3)] = 0.1     # SL = mu * CCE + nu * RCE
    sl_nu: Annotated[Float, in_range(0.0, 1e3)] = 1.0
    sl_log_clip: Annotated[Float, in_range(-100.0, 0.0, hi_open=True)] = math.log(1e-4)
    # Class weighting, for every method: multiplies example i's gradient by its label's class
    # weight (dm_tune.class_weighting); effective-number uses Cui et al.'s beta.
    class_weighting: Annotated[str, one_of(CLASS_WEIGHTINGS)] = "none"
    class_weighting_beta: Annotated[Float, in_range(0.0, 1.0, hi_open=True)] = DEFAULT_EFFECTIVE_BETA
    # --- optimisation (None: the dataset's default) ---------------------------------------
    optimizer: Annotated[str, one_of(OPTIMIZERS)] | None = None
    lr: Annotated[Float, in_range(0.0, 10.0, lo_open=True)] | None = None
    momentum: Annotated[Float, in_range(0.0, 1.0, hi_open=True)] = 0.9
    weight_decay: Annotated[Float, in_range(0.0, 1.0)] | None = None
    schedule: Annotated[str, one_of(SCHEDULES)] | None = None
    lr_milestones: Milestones = (0.5, 0.75)  # "step": fractions of the training steps
    lr_gamma: Annotated[Float, in_range(0.0, 1.0, lo_open=True)] = 0.1
    epochs: Annotated[Int, in_range(1, 100_000)] | None = None
    batch_size: Annotated[Int, in_range(1, 1_000_000)] | None = None
    augment: Bool | None = None            # random crop + flip for images (None: on for images)
    # --- run ------------------------------------------------------------------------------
    seed: Seed = 0                         # model init, batch order, augmentation
    data_seed: Seed | None = None          # noise draw, validation carve, imbalance (None: seed)
    device: Device = "auto"
    amp: Annotated[str, one_of(AMP_MODES)] = "auto"  # mixed precision: CUDA; bf16 also on the CPU
    num_workers: Annotated[Int, in_range(0, 256)] = 2  # DataLoader workers for _names.STREAMED

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "") -> TrainConfig:
        return parse(cls, values, where)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.noise == "none" and self.noise_rate != 0.0:
            raise violation("must be 0 with noise 'none'", "noise_rate", self.noise_rate)
        if self.noise == "file" and not self.noise_file:
            raise violation("a label file is required with noise 'file'", "noise_file", self.noise_file)
        if self.noise == "file" and self.noise_rate != 0.0:  # it was kept, and reported as the rate
            raise violation("must be 0 with noise 'file': the file's labels set the rate (each result records "
                            "it as noise_rate_realised)", "noise_rate", self.noise_rate)
        if self.noise_file and self.noise != "file":
            raise violation("must be 'file' when noise_file is given", "noise", self.noise)
        if self.schedule == "step" and not self.lr_milestones:  # (a constant rate, lr_gamma ignored)
            raise violation("a step schedule needs at least one milestone (increasing fractions of the training "
                            "budget in (0, 1))", "lr_milestones", [])
        if self.imbalance == "none" and self.imbalance_ratio != 1.0:
            raise violation("must be 1 with imbalance 'none' (choose longtail or step)",
                            "imbalance_ratio", self.imbalance_ratio)
        if self.imbalance != "none" and self.imbalance_ratio == 1.0:
            raise violation(f"imbalance {self.imbalance!r} needs a ratio > 1 (largest / smallest class)",
                            "imbalance_ratio", self.imbalance_ratio)
        return self

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    def resolve(self, defaults: Mapping[str, Any], default_model: str, input_kind: str) -> TrainConfig:
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


STREAMED_WHERE = ("the datasets read from disk a batch at a time (" + ", ".join(STREAMED)
                  + "; the others are held in memory)")

# Fields a run uses only in some configurations: field -> (does it apply to this config, to what, the
# field that decides it). `dm-tune train` refuses a field that no member uses, a study one that no
# trial uses (the CLI and dm_tune.search._preflight).
APPLIES: dict[str, tuple[Callable[[TrainConfig], bool], str, str]] = {
    "lam": (lambda c: c.method == "dm", "method dm", "method"),
    "beta": (lambda c: c.method == "dm", "method dm", "method"),
    "gce_q": (lambda c: c.method in ("gce", "gce-dn"), "methods gce and gce-dn", "method"),
    "sl_mu": (lambda c: c.method == "sl", "method sl", "method"),
    "sl_nu": (lambda c: c.method == "sl", "method sl", "method"),
    "sl_log_clip": (lambda c: c.method == "sl", "method sl", "method"),
    "class_weighting_beta": (lambda c: c.class_weighting == "effective-number",
                             "class_weighting effective-number", "class_weighting"),
    "noise_file": (lambda c: c.noise == "file", "noise file", "noise"),
    # (a .npy, .csv or .txt label file is one list: only a CIFAR-N .pt file has keys)
    "noise_key": (lambda c: c.noise == "file" and str(c.noise_file or "").lower().endswith((".pt", ".pth")),
                  "noise file, with a CIFAR-N .pt noise_file", "noise_file"),
    "data_root": (lambda c: DATASET_ROOTS[c.dataset], "the datasets read from disk", "dataset"),
    "download": (lambda c: c.dataset in DOWNLOADABLE, "datasets " + ", ".join(DOWNLOADABLE), "dataset"),
    "num_workers": (lambda c: c.dataset in STREAMED, STREAMED_WHERE, "dataset"),
    "augment": (lambda c: c.dataset in IMAGE_DATASETS, "the image datasets " + ", ".join(IMAGE_DATASETS), "dataset"),
    # None (the dataset's default) passes until the data is loaded, then the default decides.
    "pretrained": (lambda c: c.model in (None, *PRETRAINABLE), "models " + ", ".join(PRETRAINABLE), "model"),
    "hidden_dim": (lambda c: c.model in (None, "mlp", "text"), "models mlp and text", "model"),
    "momentum": (lambda c: c.optimizer in (None, "sgd"), "optimizer sgd", "optimizer"),
    "lr_milestones": (lambda c: c.schedule in (None, "step"), "schedule step", "schedule"),
    "lr_gamma": (lambda c: c.schedule in (None, "step"), "schedule step", "schedule"),
}
