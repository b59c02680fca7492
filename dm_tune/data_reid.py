"""From a config to the data a retrieval (re-identification) run trains on.

Training is identity classification; evaluation ranks a gallery. Order (seeded from ``data_seed``):
1. hold out a fraction ``val_fraction`` of the training *identities* (among those seen by at
   least two cameras) as the validation gallery: all their tracks, one query per identity and
   camera, clean identities;
2. renumber the remaining identities 0..K-1 (the classifier's classes);
3. apply the noise model to them, per track: a whole tracklet gets another identity
   (``symmetric``: any other of the K; ``pair``: identity k -> k+1).
The test gallery is the dataset's own (identities disjoint from training).
"""

from __future__ import annotations

import numpy as np
import torch

from dm_tune._validate import ConfigError
from dm_tune.config import TrainConfig
from dm_tune.data import Data, data_identity, input_shape
from dm_tune.datasets import Source, Split
from dm_tune.datasets._reid import gallery, one_query_per_camera, renumber
from dm_tune.noise import NoiseContext, apply_noise, check_noise

# Noise models that mean something for identities (the others need classes or files that re-ID data lacks).
RETRIEVAL_NOISE = ("none", "symmetric", "pair")


def _check(config: TrainConfig) -> None:
    if config.noise not in RETRIEVAL_NOISE:
        raise ConfigError("noise", config.noise, "retrieval datasets take " + ", ".join(RETRIEVAL_NOISE))
    if config.imbalance != "none":
        raise ConfigError("imbalance", config.imbalance, "retrieval datasets take no class imbalance ('none')")
    if config.val_noisy:
        raise ConfigError("val_noisy", config.val_noisy, "retrieval validation holds out identities, whose labels are clean")


def _held_out(ids: np.ndarray, cams: np.ndarray, val_fraction: float) -> tuple[list[int], int]:
    """The identities seen by two cameras (validation's candidates) and how many validation holds out."""
    multi_cam = [i for i in np.unique(ids) if len(np.unique(cams[ids == i])) >= 2]
    # (at least one where any is asked for: 0.2 of 2 identities rounded to none, a run without validation)
    n_val = max(int(round(val_fraction * len(np.unique(ids)))), 1 if val_fraction > 0 else 0)
    if n_val > len(multi_cam) or len(np.unique(ids)) - n_val < 2:
        raise ConfigError("val_fraction", val_fraction,
                          f"cannot hold out {n_val} of {len(np.unique(ids))} training identities "
                          f"({len(multi_cam)} are seen by two cameras, and at least 2 must remain for training)")
    return multi_cam, n_val


def training_identities(source: Source, val_fraction: float) -> int:
    """How many identities a run on ``source`` trains its classifier on (its classes: what the noise
    models draw from) once validation holds out its share; ConfigError where it cannot."""
    if source.train_cams is None:
        raise ValueError(f"dataset {source.name!r}: a retrieval source needs train_cams")
    ids = source.train.labels.numpy().astype(np.int64)
    _, n_val = _held_out(ids, source.train_cams.numpy().astype(np.int64), val_fraction)
    return len(np.unique(ids)) - n_val


def prepare_retrieval(config: TrainConfig, source: Source) -> Data:
    _check(config)
    if source.gallery is None or source.train_cams is None:
        raise ValueError(f"dataset {source.name!r}: a retrieval source needs a gallery and train_cams")
    seed = config.data_seed if config.data_seed is not None else config.seed
    noise_rng, val_rng = (np.random.default_rng([seed, k]) for k in (1, 2))

    ids = source.train.labels.numpy().astype(np.int64)
    cams = source.train_cams.numpy().astype(np.int64)
    multi_cam, n_val = _held_out(ids, cams, config.val_fraction)
    val_ids = np.sort(val_rng.choice(np.asarray(multi_cam, np.int64), size=n_val, replace=False))
    is_val = np.isin(ids, val_ids)
    val_idx, keep = np.flatnonzero(is_val), np.flatnonzero(~is_val)

    clean, _ = renumber(ids[keep])
    num_classes = int(clean.max()) + 1
    check_noise(config.noise, config.noise_rate, num_classes)
    ctx = NoiseContext(num_classes=num_classes, rate=config.noise_rate, rng=noise_rng)
    noisy = apply_noise(config.noise, clean, ctx)

    train = source.train.subset(torch.from_numpy(keep), torch.from_numpy(noisy.labels))
    val_inputs = source.train.subset(torch.from_numpy(val_idx)).inputs
    val_query = one_query_per_camera(ids[val_idx], cams[val_idx], val_rng)
    val_gallery = gallery(val_inputs, ids[val_idx], cams[val_idx], val_query)
    test = source.gallery
    return Data(
        train=train,
        clean_train_labels=torch.from_numpy(clean),
        is_noisy=torch.from_numpy(noisy.is_noisy),
        noise_known=torch.ones(len(keep), dtype=torch.bool),
        val=Split(val_inputs, torch.from_numpy(ids[val_idx])),
        test=Split(test.inputs, test.ids),
        num_classes=num_classes,
        input_kind=source.input_kind,
        input_shape=input_shape(train.inputs),
        default_model=source.default_model,
        defaults=dict(source.defaults),
        normalise=source.normalise,
        info={**source.info, "dataset": source.name, "task": "retrieval", "num_train": len(train),
              "train_identities": num_classes, "val_identities": n_val, "num_val": len(val_idx),
              "val_queries": len(val_query), "num_test": len(test), "test_queries": len(test.query)},
        val_gallery=val_gallery,
        test_gallery=test,
        prepared_for=data_identity(config),
    )
