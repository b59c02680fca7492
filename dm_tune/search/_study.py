"""The study: which settings to search, how, and with what resources. Validated once.

A setting is one dataset x noise type x noise rate x imbalance x model; the study's matrix is
expanded into settings, each searched by its own Optuna study (DM knobs, first seed, clean
validation accuracy as the objective) and then confirmed: the best ``top_k`` DM arms and every
baseline re-run on every seed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import field
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic.dataclasses import dataclass

from dm_tune._names import DATASET_NAMES, DATASET_ROOTS, MODEL_NAMES, NOISE_NAMES, STREAMED, task_of
from dm_tune._validate import CONFIG, ConfigError, Float, Int, Seed, in_range, one_of, parse, rule, violation
from dm_tune.class_weighting import SCHEMES as CLASS_WEIGHTINGS
from dm_tune.config import STREAMED_WHERE, TrainConfig
from dm_tune.errors import read_number
from dm_tune.search_spaces import BASELINES, DEFAULT_BASELINES, EXTRA_KNOBS, SAMPLERS, SPACES, is_grid

SCHEDULERS = ("none", "asha")
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _warm_start(v: Any) -> Any:
    if isinstance(v, bool) or (isinstance(v, str) and v.strip()):
        return v
    raise violation("expected true, false or a guidelines.json path")


def imbalance_parts(v: str) -> tuple[str, float]:
    """A settings.imbalance value (``none``, ``KIND:RATIO``) as (kind, ratio)."""
    kind, _, ratio = v.partition(":")
    return kind, float(ratio or 1.0)


def _imbalance_ok(v: str) -> bool:
    """'none' or KIND:RATIO, the RATIO a number as a flag takes it (1e1 as dm-tune train and recommend
    take it: this was digits, then an optional fraction, only)."""
    kind, colon, ratio = v.partition(":")
    if v == "none" or kind not in ("longtail", "step") or not colon or ratio != ratio.strip():
        return v == "none"
    try:
        return 1.0 < read_number(ratio, float) < math.inf
    except ValueError:
        return False


def _population_size_ok(v: Any) -> bool:
    return v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1024)


# Each is one entry of a matrix axis; an axis is a non-empty list of them.
DatasetName = Annotated[str, one_of(DATASET_NAMES)]
NoiseName = Annotated[str, one_of(NOISE_NAMES)]
NoiseRate = Annotated[Float, in_range(0.0, 1.0, hi_open=True)]
Imbalance = Annotated[str, rule(_imbalance_ok, "expected 'none', 'longtail:RATIO' or 'step:RATIO' with RATIO > 1")]
ModelName = Annotated[str, one_of(("default", *MODEL_NAMES))]
NonEmpty = rule(bool, "expected a non-empty list")


@dataclass(frozen=True, config=CONFIG)
class Settings:
    """The matrix of settings: every combination is searched."""

    dataset: Annotated[tuple[DatasetName, ...], NonEmpty] = ("digits",)
    noise: Annotated[tuple[NoiseName, ...], NonEmpty] = ("symmetric",)
    noise_rate: Annotated[tuple[NoiseRate, ...], NonEmpty] = (0.4,)
    imbalance: Annotated[tuple[Imbalance, ...], NonEmpty] = ("none",)
    model: Annotated[tuple[ModelName, ...], NonEmpty] = ("default",)


@dataclass(frozen=True, config=CONFIG)
class Search:
    space: Annotated[str, one_of(SPACES)] = "decoupled"
    sampler: Annotated[str, one_of(SAMPLERS)] = "tpe"
    num_samples: Annotated[Int, in_range(1, 100_000)] = 30   # DM trials per setting
    extra_knobs: tuple[Annotated[str, one_of(EXTRA_KNOBS)], ...] = ()
    top_k: Annotated[Int, in_range(0, 100)] = 3              # DM arms confirmed over all seeds
    sampler_seed: Seed = 0
    # true: enqueue the paper's suggestions first; a guidelines.json path ('dm-tune report'):
    # search inside the region it recommends for each setting, starting at its point.
    # (one rule for the whole union: pydantic named its members, "search.warm_start.bool: expected true or false")
    warm_start: Annotated[bool | str, BeforeValidator(_warm_start)] = True
    # Class weighting schemes searched beside psi and rho (a categorical dimension of DM arms);
    # ("none",): no class weighting, the dimension is left out.
    class_weighting: Annotated[tuple[Annotated[str, one_of(CLASS_WEIGHTINGS)], ...], NonEmpty] = ("none",)


@dataclass(frozen=True, config=CONFIG)
class Resources:
    cpus_per_trial: Annotated[Float, in_range(0.0, 1024, lo_open=True)] = 1.0
    gpus_per_trial: Annotated[Float, in_range(0.0, 64)] = 0.0  # fractions share a GPU
    max_concurrent: Annotated[Int, in_range(1, 10_000)] = 2


@dataclass(frozen=True, config=CONFIG)
class Scheduler:
    kind: Annotated[str, one_of(SCHEDULERS)] = "none"
    grace_period: Annotated[Int, in_range(1, 100_000)] = 10   # epochs before ASHA may stop a trial
    reduction_factor: Annotated[Float, in_range(1.0, 100, lo_open=True)] = 3.0


@dataclass(frozen=True, config=CONFIG)
class Study:
    name: Annotated[str, rule(lambda v: bool(STUDY_NAME.match(v)),
                              "expected letters, digits, '.', '_' or '-' (at most 64)")] = "default"
    settings: Settings = field(default_factory=Settings)
    seeds: Annotated[tuple[Seed, ...], rule(lambda v: bool(v) and len(set(v)) == len(v),
                                           "expected a non-empty list of distinct integers")] = (0, 1, 2)
    search: Search = field(default_factory=Search)
    baselines: tuple[Annotated[str, one_of(BASELINES)], ...] = DEFAULT_BASELINES
    training: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for every trial
    resources: Resources = field(default_factory=Resources)
    scheduler: Scheduler = field(default_factory=Scheduler)
    max_failures: Annotated[Int, in_range(0, 100)] = 2       # retries of a crashed trial
    # Epochs between checkpoints; 0: every quarter of the budget, at most one per 30 s.
    checkpoint_every: Annotated[Int, in_range(0, 100_000)] = 0
    # DM configurations trained together in one trial (a population; 1: one per trial);
    # "auto": the size the population benchmark chose for the model and device (BENCHMARKS.md).
    population_size: Annotated[Any, rule(_population_size_ok, "expected 'auto' or an integer in [1, 1024]")] = "auto"
    # Seeds each search arm trains on (the first ``search_seeds`` of ``seeds``): the searcher
    # maximises the arm's mean final validation score over them, not one noise draw's luck.
    # None: two (one where the study has one seed).
    search_seeds: Annotated[Int, in_range(1, 64)] | None = None
    # classification: the objective is final clean-validation accuracy; retrieval (re-ID
    # datasets): final validation mAP. Every dataset of the study must be of this task.
    task: Annotated[str, one_of(("classification", "retrieval"))] = "classification"

    @property
    def search_seed_count(self) -> int:
        """How many seeds each search arm trains on (the first ones of ``seeds``)."""
        return self.search_seeds if self.search_seeds is not None else min(2, len(self.seeds))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], stored: bool = False) -> Study:
        """``stored``: a study a workspace stored when its search began (``--resume``): training
        fields that its trials ignore (``ignored_training``) are kept, as they were, not refused."""
        datasets = (values.get("settings") or {}).get("dataset") if isinstance(values.get("settings"), Mapping) else None
        if "task" not in values and isinstance(datasets, (list, tuple)) and datasets and isinstance(datasets[0], str):
            values = {**values, "task": task_of(datasets[0])}  # unless given: the first dataset's task
        settings = values.get("settings")
        noise = settings.get("noise") if isinstance(settings, Mapping) else None
        if (isinstance(noise, (list, tuple)) and noise and all(n in ("none", "file") for n in noise)
                and "noise_rate" not in settings):  # the default rate, 0.4, is refused beside them
            values = {**values, "settings": {**settings, "noise_rate": [0.0]}}
        training = values.get("training")
        if stored and isinstance(training, Mapping):  # as the dm-tune that stored it took them
            values = {**values, "training": {k: _EARLIER_BOOLEANS.get(_key(v), v) if k in BOOLEAN_FIELDS else v
                                             for k, v in training.items()}}
        study = parse(cls, values)
        study.validate_settings(refuse_ignored=not stored)
        return study

    def unused_training(self) -> list[tuple[str, str]]:
        """(field, what it applies to) for each training field that no trial of the study uses."""
        on_disk = any(DATASET_ROOTS[d] for d in self.settings.dataset)
        weightings = {str(self.training.get("class_weighting", "none")), *self.search.class_weighting,
                      *(BASELINES[b].get("class_weighting", "none") for b in self.baselines)}
        applies = {"gce_q": ("gce" in self.baselines, "the gce baseline"),
                   **{k: ("sl" in self.baselines, "the sl baseline") for k in ("sl_mu", "sl_nu", "sl_log_clip")},
                   "class_weighting_beta": ("effective-number" in weightings, "class weighting effective-number"),
                   "data_root": (on_disk, "the datasets read from disk"),
                   "num_workers": (any(d in STREAMED for d in self.settings.dataset), STREAMED_WHERE)}
        # (noise_file: TrainConfig's own check)
        return [(key, where) for key, (used, where) in applies.items() if key in self.training and not used]

    def ignored_training(self) -> list[tuple[str, str]]:
        """(field, what sets it instead) for each training field that every trial overrides."""
        out = [(key, where) for key, where in TRAINING_SET_ELSEWHERE.items() if key in self.training]
        if "model" in self.training and "default" not in self.settings.model:
            out.append(("model", "settings.model"))
        if "class_weighting" in self.training and self.search.class_weighting != ("none",):
            out.append(("class_weighting", "search.class_weighting for the DM arms; the baselines train with "
                                           "their own, cce-cb effective-number and the others none"))
        return out

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return plain(dataclasses.asdict(self))

    def expand(self) -> list[Setting]:
        s = self.settings
        out = []
        used_noise, used_rates = set(), set()
        _, kept = self.clean_twins()  # the noise type whose rate-0 setting is the clean one ("": no twins)
        for ds, noise, rate, imb, model in itertools.product(s.dataset, s.noise, s.noise_rate,
                                                            s.imbalance, s.model):
            if noise == "none" and rate != 0.0:
                continue  # 'none' only pairs with rate 0
            used_noise.add(noise)
            if noise == "file":
                rate = 0.0  # the file's labels set the rate (each result records it as noise_rate_realised)
            else:
                used_rates.add(rate)
                if rate == 0.0 and kept and noise != kept:  # no label flipped: the clean setting, trained once
                    continue
            setting = Setting(ds, noise, rate, *imbalance_parts(imb), None if model == "default" else model)
            if setting not in out:
                out.append(setting)
        if not out:
            raise ConfigError("settings.noise_rate", list(s.noise_rate), "the matrix has no valid combination: "
                              "noise 'none' pairs only with noise_rate 0")
        # (a value that makes no setting was dropped without a word)
        for noise in s.noise:
            if noise not in used_noise:
                raise ConfigError("settings.noise", noise, f"pairs only with noise_rate 0, which settings.noise_rate "
                                  f"{list(s.noise_rate)} lacks: add 0, or leave {noise!r} out")
        for rate in s.noise_rate if len(s.noise_rate) > 1 else ():  # (a lone rate, the default 0.4 too, is
            if rate not in used_rates:                               # a label-file matrix's placeholder)
                raise ConfigError("settings.noise_rate", rate, "a rate no noise type of settings.noise "
                                  f"{list(s.noise)} uses ('none' takes only 0, 'file' the rate its labels have): "
                                  "leave it out")
        return out

    def clean_twins(self) -> tuple[list[str], str]:
        """The noise types of ``settings.noise`` whose rate-0 setting ``expand`` leaves out (none
        flips a label at rate 0), and the one whose name the clean setting keeps."""
        s = self.settings
        flipping = [n for n in s.noise if n != "file"]
        if 0.0 not in s.noise_rate or len(flipping) < 2:
            return [], ""
        kept = "none" if "none" in flipping else flipping[0]
        return [n for n in flipping if n != kept], kept

    def validate_settings(self, refuse_ignored: bool = True) -> None:
        """Every setting must make a valid TrainConfig (caught here, before anything runs)."""
        if self.search_seeds is not None and self.search_seeds > len(self.seeds):
            raise ConfigError("search_seeds", self.search_seeds,
                              f"expected at most the number of seeds ({len(self.seeds)}): the search trains "
                              "each arm on the first search_seeds of seeds")
        for key, where in self.ignored_training() if refuse_ignored else ():  # the trials' own value would win
            raise ConfigError(f"training.{key}", self.training[key], f"set by {where} (under training: it would "
                              "be ignored)")
        for axis in dataclasses.fields(Settings) if refuse_ignored else ():
            values = getattr(self.settings, axis.name)  # (a repeated value was dropped without a word,
            same = ([imbalance_parts(v) for v in values]  # (longtail:10 and longtail:10.0 are one)
                    if axis.name == "imbalance" else values)
            if len(set(same)) < len(same):             # where a repeated seed or baseline is refused)
                raise ConfigError(f"settings.{axis.name}", list(values), "expected distinct values")
        for key, where in self.unused_training() if refuse_ignored else ():
            raise ConfigError(f"training.{key}", self.training[key], f"only applies to {where}; no trial of this "
                              "study would use it")
        for key in ("grace_period", "reduction_factor") if refuse_ignored and self.scheduler.kind == "none" else ():
            if getattr(self.scheduler, key) != getattr(Scheduler(), key):  # (set, and no scheduler to use it)
                raise ConfigError(f"scheduler.{key}", getattr(self.scheduler, key), "only applies to scheduler.kind "
                                  "asha; this study's kind is none (set kind: asha, or leave it out)")
        for ds in self.settings.dataset:
            if task_of(ds) != self.task:
                raise ConfigError("settings.dataset", ds, f"a {task_of(ds)} dataset; this study's task is "
                                  f"{self.task!r} (set task: {task_of(ds)} and keep datasets of one task)")
        for setting in self.expand():
            try:
                self.train_config(setting)
            except ConfigError as e:
                axes = {f.name for f in dataclasses.fields(Settings)}
                if e.field == "imbalance_ratio":  # the RATIO of settings.imbalance's 'KIND:RATIO'
                    raise ConfigError("settings.imbalance", f"{setting.imbalance}:{setting.imbalance_ratio:g}",
                                      e.allowed.replace("expected a number", "expected a ratio", 1)) from None
                part = "settings" if e.field.split(".")[0] in axes else "training"
                raise ConfigError(f"{part}.{e.field}", e.value, e.allowed) from None
        if self.search.sampler == "cmaes" and is_grid(SPACES[self.search.space]):  # (its DM knobs were drawn at
            # random, with Optuna's warning on every trial)
            raise ConfigError("search.sampler", "cmaes", f"CMA-ES models continuous knobs only, and space "
                              f"{self.search.space} is all categorical: expected tpe, gp, random or grid with it")
        if self.search.sampler == "grid":
            if not is_grid(SPACES[self.search.space]):
                raise ConfigError("search.sampler", "grid", "needs an all-categorical space (paper-grid)")
            if self.search.extra_knobs:
                raise ConfigError("search.extra_knobs", list(self.search.extra_knobs),
                                  "the grid sampler takes no continuous extra knobs")
        if isinstance(self.search.warm_start, str) and self.search.space != "decoupled":
            raise ConfigError("search.space", self.search.space, "warm-starting from guidelines searches their "
                              "(psi, rho) region: expected space decoupled")
        if len(set(self.search.class_weighting)) != len(self.search.class_weighting):
            raise ConfigError("search.class_weighting", list(self.search.class_weighting),
                              "expected distinct schemes")
        if self.search.top_k > self.search.num_samples:
            raise ConfigError("search.top_k", self.search.top_k, f"expected at most search.num_samples "
                              f"({self.search.num_samples}): the confirm stage takes the best searched arms")
        if len(set(self.baselines)) != len(self.baselines):
            raise ConfigError("baselines", list(self.baselines), "expected distinct baselines")
        if str(self.training.get("device", "")).split(":")[0] == "cuda" and self.resources.gpus_per_trial == 0:
            raise ConfigError("resources.gpus_per_trial", 0.0, "expected > 0 with training.device cuda: "
                              "a trial that asks Ray for no GPU gets none")

    def train_config(self, setting: Setting, **overrides: Any) -> TrainConfig:
        values = {**self.training, **setting.train_fields(), "seed": self.seeds[0], **overrides}
        return TrainConfig.from_dict(values)


# A boolean training field, and the other spellings an earlier dm-tune took for one (pydantic's,
# refused now): a search stored with `val_noisy: on` trained with True, and resumes so.
BOOLEAN_FIELDS = ("download", "val_noisy", "augment")
_EARLIER_BOOLEANS = {**dict.fromkeys(("on", "yes", "y", "t", "1", 1), True),
                     **dict.fromkeys(("off", "no", "n", "f", "0", 0), False)}


def _key(value: Any) -> Any:
    """``value`` as _EARLIER_BOOLEANS looks it up: text in lower case, a number as it is, else None."""
    if isinstance(value, str):
        return value.lower()
    return value if type(value) in (int, float) else None


# Training fields a study sets elsewhere, for every trial: a value under training: would be ignored.
TRAINING_SET_ELSEWHERE = {
    "dataset": "settings.dataset", "noise": "settings.noise", "noise_rate": "settings.noise_rate",
    "imbalance": "settings.imbalance", "imbalance_ratio": "settings.imbalance_ratio", "seed": "seeds",
    "method": "the search's arms and baselines", "lam": "the search's arms and baselines",
    "beta": "the search's arms and baselines",
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One cell of the matrix (derived from a validated Study, so not validated again)."""

    dataset: str
    noise: str
    noise_rate: float
    imbalance: str
    imbalance_ratio: float
    model: str | None

    @property
    def key(self) -> str:
        imb = "" if self.imbalance == "none" else f"-{self.imbalance}{self.imbalance_ratio:g}"
        return f"{self.dataset}-{self.noise}{self.noise_rate:g}{imb}-{self.model or 'default'}"

    def train_fields(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dataset": self.dataset, "noise": self.noise, "noise_rate": self.noise_rate,
                             "imbalance": self.imbalance, "imbalance_ratio": self.imbalance_ratio}
        if self.model:
            d["model"] = self.model
        return d
