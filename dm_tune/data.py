"""From a config to the data a run trains on: load, add label noise, carve validation, imbalance.

Order (every step seeded from ``data_seed``):
1. load the dataset's full training set, labels as given;
2. apply the noise model to the whole training set (so file-based noise such as CIFAR-N lines
   up with the dataset's original order);
3. carve the validation split with a fixed, seeded, stratified draw; its labels are the clean
   ones unless ``val_noisy``;
4. subsample the remaining training data to the requested class imbalance (by clean labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dm_tune._validate import ConfigError
from dm_tune.config import TrainConfig
from dm_tune.datasets import DATASETS, Gallery, Source, Split
from dm_tune.datasets._fingerprint import file_fingerprint, source_fingerprint
from dm_tune.errors import DataError, resolve_path
from dm_tune.noise import NoiseContext, apply_noise, check_imbalance, check_noise, imbalance_index, indices_by_class


@dataclass(frozen=True)
class Data:
    train: Split                 # inputs with the (noisy) labels trained on
    clean_train_labels: torch.Tensor  # the true labels (the given ones where not known, see noise_known)
    is_noisy: torch.Tensor       # bool per training example
    noise_known: torch.Tensor    # bool: whether is_noisy is known (False for unverified real noise)
    val: Split
    test: Split
    num_classes: int
    input_kind: str
    input_shape: tuple[int, ...]
    default_model: str
    defaults: dict[str, Any]
    normalise: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    vocab_size: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    # Retrieval (re-identification, see dm_tune.data_reid): validation and test galleries.
    val_gallery: Gallery | None = None
    test_gallery: Gallery | None = None
    # The config fields it was prepared for (``data_identity``); a run checks its own against them.
    prepared_for: dict[str, Any] | None = None

    @property
    def task(self) -> str:
        return "classification" if self.test_gallery is None else "retrieval"

    @property
    def noise_rate(self) -> float:
        known = self.noise_known
        return float(self.is_noisy[known].float().mean()) if known.any() else float("nan")


# The TrainConfig fields that decide what ``prepare`` makes, beside the data's seed (data_seed, else seed).
DATA_FIELDS = ("dataset", "data_root", "download", "dataset_options", "noise", "noise_rate", "noise_file",
               "noise_key", "val_fraction", "val_noisy", "imbalance", "imbalance_ratio")


def data_identity(config: TrainConfig) -> dict[str, Any]:
    """What of ``config`` decides its data: two configs with the same identity train on the same data."""
    return {**{k: getattr(config, k) for k in DATA_FIELDS},
            "data_seed": config.data_seed if config.data_seed is not None else config.seed}


def check_prepared_for(config: TrainConfig, data: Data) -> None:
    """Refuse to train ``config`` on data ``prepare`` made for another config (other noise, another
    seed's draw: the result would record the config's setting, not the one it trained on)."""
    if data.prepared_for is None:  # (a Data built by hand)
        return
    want = data_identity(config)
    field = next((k for k in want if want[k] != data.prepared_for.get(k)), None)
    if field is not None:
        raise ConfigError(field, want[field], f"the data was prepared with {field} {data.prepared_for.get(field)!r}; "
                          "train a config on the data prepare(config) made for it")


def load_source(config: TrainConfig) -> Source:
    """The dataset ``config`` names, loaded; an error in the data on disk names the data_root it is in
    ("data_root /data: cifar-100-python/train: file not found. Expected layout: ...")."""
    try:
        return _load_source(config)
    except DataError as e:
        if not (DATASETS[config.dataset][1] and config.data_root):
            raise
        try:
            root = Path(config.data_root).expanduser().resolve()
        except (OSError, RuntimeError):
            raise e from None
        raise e.under("data_root", config.data_root, root) from None


def _load_source(config: TrainConfig) -> Source:
    loader, on_disk = DATASETS[config.dataset]
    root = None
    if on_disk:
        if not config.data_root:
            raise ConfigError("data_root", config.data_root,
                              f"dataset {config.dataset!r} is read from disk; give --data-root (data_root in a "
                              "--config file, training.data_root in a study)")
        try:
            root = Path(config.data_root).expanduser().resolve()
        except (OSError, RuntimeError):  # a link round a loop (RuntimeError before Python 3.13)
            raise ConfigError("data_root", config.data_root, "it is a symbolic link in a loop; expected a folder (or "
                              "for features a .npz file)") from None
        try:
            exists, folder = root.exists(), root.is_dir()
        except PermissionError:  # (a parent this user may not enter)
            raise _unreadable(config, root) from None
        except OSError as e:  # (a name longer than the system takes)
            raise DataError(root, f"cannot be examined ({e.strerror or e})",
                            "a folder (or for features a .npz file)") from None
        if not exists and not config.download:
            raise ConfigError("data_root", config.data_root, "it does not exist (a folder, or for features a "
                              ".npz file)" if config.dataset == "features" else "the directory does not exist")
        if exists and not folder and config.dataset != "features":  # (each file it reads was "not found" in it)
            raise ConfigError("data_root", config.data_root, f"it is a file; dataset {config.dataset!r} is read "
                              "from a folder")
    try:
        source = loader(root, config.dataset_options, config.download)
    except PermissionError as e:  # a folder (or file) of the data this user may not read (or write, to download)
        raise _unreadable(config, Path(e.filename) if e.filename else root) from None
    if source.task == "classification" and source.num_classes < 2:
        raise DataError(root or config.dataset, f"holds a single class ({source.num_classes})",
                        "training data of at least two classes")
    if source.gallery is not None and matched_queries(source.gallery) == 0:  # every test metric would be NaN
        raise DataError(root or config.dataset, f"none of the test gallery's {len(source.gallery.query)} queries "
                        "has a match (an entry of its identity, not junk, seen by another camera)",
                        "a test gallery where each query's identity is also seen by another camera")
    return with_fingerprint(source)


def with_fingerprint(source: Source) -> Source:
    """``source`` with the fingerprint of what it holds in its info (once: every run prepared from
    it records it, and a population prepares one per member)."""
    return replace(source, info={**source.info, "fingerprint": source_fingerprint(source)})


def _unreadable(config: TrainConfig, path: Path) -> DataError:
    if config.download:
        return DataError(path, "cannot be read or written (permission denied)",
                         f"a data_root this user can write the downloaded {config.dataset} into")
    return DataError(path, "cannot be read (permission denied)",
                     f"the {config.dataset} data under {config.data_root}, readable by this user")


def input_shape(inputs: Any) -> tuple[int, ...]:
    """The shape of one example of ``inputs`` as the model sees it (a tensor, or a Dataset whose
    items may be tuples; one that stores them larger, to be cropped, says so in ``example_shape``)."""
    base = inputs.dataset if isinstance(inputs, torch.utils.data.Subset) else inputs
    if getattr(base, "example_shape", None) is not None:
        return tuple(base.example_shape)
    sample = inputs[0]
    if not isinstance(sample, torch.Tensor):
        sample = sample[0] if isinstance(sample, tuple) else sample
    return tuple(torch.as_tensor(sample).shape)


def matched_queries(g: Gallery) -> int:
    """The queries of ``g`` that retrieval can score: their identity has an entry that is not junk
    in another camera (as ``dm_tune.retrieval.retrieval_metrics`` counts them)."""
    ids, cams, junk = g.ids.tolist(), g.cams.tolist(), g.junk.tolist()
    seen: dict[int, set[int]] = {}
    for i, c, j in zip(ids, cams, junk):
        if not j:
            seen.setdefault(i, set()).add(c)
    return sum(bool(seen.get(ids[q], set()) - {cams[q]}) for q in g.query.tolist())


def _held_out(fraction: float, n: int) -> int:
    """How many of a class's ``n`` examples the validation split takes: ``fraction`` of them, but
    never the last one (a class of one example at val_fraction 0.7 had none left to train on, and
    noise moved labels into it)."""
    return max(0, min(int(round(fraction * n)), n - 1))


def _stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held_out) index arrays; held_out holds ``fraction`` of every class."""
    held = [rng.choice(idx, size=_held_out(fraction, len(idx)), replace=False)
            for idx in indices_by_class(labels, np.unique(labels))]
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held_out)
    return keep, held_out


def training_class_counts(source: Source, val_fraction: float) -> np.ndarray:
    """Per class, the training examples ``prepare`` keeps before any imbalance: the dataset's
    training set less the validation split it carves."""
    counts = np.bincount(source.train.labels.numpy().astype(np.int64), minlength=source.num_classes)
    if source.val is not None:
        return counts
    return counts - np.array([_held_out(val_fraction, n) for n in counts])


def check_own_validation(source: Source, val_noisy: bool, val_fraction: float | None = None,
                         prefix: str = "") -> None:
    """``val_noisy`` and ``val_fraction`` shape a validation split carved from the training data;
    a dataset with a validation set of its own refuses them (they were silently ignored), all but
    the default fraction, which every config has, and 0 (none carved). ``prefix``: where the
    fields are ("training." in a study)."""
    if source.val is None:
        return
    if val_noisy:
        raise ConfigError(f"{prefix}val_noisy", True, f"{source.name} has its own validation set, with its own "
                                                      "labels; val_noisy applies to a validation split carved from "
                                                      "training data")
    default = TrainConfig.__dataclass_fields__["val_fraction"].default
    if val_fraction is not None and val_fraction not in (0.0, default):
        raise ConfigError(f"{prefix}val_fraction", val_fraction,
                          f"{source.name} has its own validation set; val_fraction applies to a validation split "
                          "carved from training data (leave it out, or 0: none carved)")


def prepare(config: TrainConfig, source: Source | None = None, strict_imbalance: bool = False) -> Data:
    """``strict_imbalance``: refuse an imbalance ratio the classes cannot take (``check_imbalance``;
    otherwise it is trained as the smaller one they can, recorded as imbalance_ratio_realised)."""
    # A source given by the caller may serve several configurations (a population's members share
    # one device copy of it through their splits' origins); one loaded here serves this one alone,
    # and a record of it would keep the whole dataset in memory next to the splits taken from it.
    shared_source = source is not None
    source = source if source is not None else load_source(config)
    if "fingerprint" not in source.info:  # (a source built by hand)
        source = with_fingerprint(source)
    if source.task == "retrieval":
        from dm_tune.data_reid import prepare_retrieval

        return prepare_retrieval(config, source)
    seed = config.data_seed if config.data_seed is not None else config.seed
    # Separate streams, so that e.g. changing the noise rate does not move the validation split.
    noise_rng, val_rng, imb_rng = (np.random.default_rng([seed, k]) for k in (1, 2, 3))

    clean = source.train.labels.numpy().astype(np.int64)
    check_noise(config.noise, config.noise_rate, source.num_classes, source.class_groups)
    ctx = NoiseContext(
        num_classes=source.num_classes, rate=config.noise_rate, rng=noise_rng,
        class_groups=source.class_groups,
        file=resolve_path(config.noise_file, "noise_file:") if config.noise_file else None,
        key=config.noise_key,
    )
    try:
        noisy = apply_noise(config.noise, clean, ctx)  # (check_noise and TrainConfig refused what would not fit)
    except DataError as e:
        raise (e.under("noise_file", config.noise_file, ctx.file) if ctx.file is not None else e) from None
    is_noisy = noisy.is_noisy
    known = np.ones(len(clean), bool)
    true_clean = clean
    if source.given_noisy is not None:  # real noise: the labels as given are already noisy
        is_noisy = is_noisy | source.given_noisy.numpy()
        if source.noise_known is not None:
            known = source.noise_known.numpy().copy()
        if source.clean_labels is not None:
            true_clean = source.clean_labels.numpy().astype(np.int64)

    if source.val is not None:
        check_own_validation(source, config.val_noisy, config.val_fraction)
        keep, val = np.arange(len(clean)), None
        val_split = source.val
    else:
        keep, val = _stratified_split(clean, config.val_fraction, val_rng)
        val_idx = torch.from_numpy(val)
        val_labels = noisy.labels[val] if config.val_noisy else clean[val]
        val_split = source.train.subset(val_idx, torch.from_numpy(val_labels))

    imbalance: dict[str, float] = {}
    if config.imbalance != "none":
        if strict_imbalance:
            check_imbalance(np.bincount(clean[keep], minlength=source.num_classes), config.imbalance,
                            config.imbalance_ratio)
        sub = imbalance_index(clean[keep], source.num_classes, config.imbalance,
                              config.imbalance_ratio, imb_rng)
        keep = keep[sub]
        kept = np.bincount(clean[keep], minlength=source.num_classes)
        present = kept[kept > 0]
        imbalance = {"imbalance_ratio_realised": float(present.max() / present.min())}
    keep_t = torch.from_numpy(keep)
    train = source.train.subset(keep_t, torch.from_numpy(noisy.labels[keep]))
    if not shared_source:
        train, val_split = (replace(s, origin=None) for s in (train, val_split))

    return Data(
        train=train,
        clean_train_labels=torch.from_numpy(true_clean[keep]),
        is_noisy=torch.from_numpy(is_noisy[keep]),
        noise_known=torch.from_numpy(known[keep]),
        val=val_split,
        test=source.test,
        num_classes=source.num_classes,
        input_kind=source.input_kind,
        input_shape=input_shape(train.inputs),
        default_model=source.default_model,
        defaults=dict(source.defaults),
        normalise=source.normalise,
        vocab_size=int(source.info.get("vocab_size", 0)),
        info={**source.info, "dataset": source.name, "num_classes": source.num_classes,
              "class_names": list(source.class_names or []), "num_train": len(train), "num_val": len(val_split),
              "num_test": len(source.test), **imbalance,
              **({"noise_file_fingerprint": file_fingerprint(ctx.file)} if ctx.file is not None else {})},
        prepared_for=data_identity(config),
    )
