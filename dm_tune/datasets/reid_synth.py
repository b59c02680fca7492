"""reid-synth: a SYNTHETIC stand-in for video person re-identification, generated offline from a
fixed seed (no download, identical on every machine).

Each identity has an appearance (a random vector) and is seen by a few of the cameras, in
several tracks. A track's frames are the identity's appearance, plus the camera's shift (shared
by everyone that camera sees: lighting and viewpoint), plus a per-identity-per-camera shift,
plus a per-track offset, plus per-frame noise, seen through a fixed random non-linear mixing;
a track is the mean of its frames, as MARS tracks are pooled. The camera shifts make
same-camera non-matches look alike, which is what re-ID metrics penalise. Training and test
identities are disjoint; the test set is a gallery of all test tracks with one query per
identity and camera. Small enough that a training run takes seconds on a CPU.

It is not MARS and its numbers say nothing about MARS; it exists to exercise the retrieval
pipeline and to see how label noise and DM behave on a retrieval task. Its info carries
``raw_test_map``, the test mAP of the raw track vectors: a trained model is only worth its
training above that.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dm_tune._validate import ConfigError
from dm_tune.datasets._base import Source, Split
from dm_tune.datasets._reid import gallery, one_query_per_camera

SEED = 20190527
DIM = 64                 # feature dimension
TRAIN_IDS, TEST_IDS = 150, 100
CAMERAS = 6              # each identity is seen by CAMS_PER_ID of them
CAMS_PER_ID = 3
TRACKS_PER_CAM = 2       # tracks per identity and camera: 6 tracks per identity
FRAMES = 8               # frames averaged per track
# Scales (standard deviations per dimension) of the parts of a frame, before the mixing. The
# camera shift is large enough that the raw track vectors retrieve poorly (same-camera strangers
# look alike): a model has to learn what a person looks like across cameras.
IDENTITY, CAMERA, ID_CAMERA, TRACK, FRAME = 1.0, 1.0, 0.5, 0.5, 1.0

DEFAULTS = {"epochs": 60, "optimizer": "adam", "lr": 1e-3, "batch_size": 64,
            "weight_decay": 0.0, "schedule": "none"}


def _tracks(rng: np.random.Generator, appearance: np.ndarray, camera: np.ndarray,
            mixing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pooled track vectors, identity per track, camera per track) for identities 0..len(appearance)-1."""
    xs, ids, cams = [], [], []
    for ident, look in enumerate(appearance):
        for cam in rng.choice(CAMERAS, size=CAMS_PER_ID, replace=False):
            id_cam = look + camera[cam] + rng.normal(0, ID_CAMERA, DIM)
            for _ in range(TRACKS_PER_CAM):
                track = id_cam + rng.normal(0, TRACK, DIM)
                frames = track + rng.normal(0, FRAME, (FRAMES, DIM))
                xs.append(np.tanh(frames @ mixing).mean(axis=0))
                ids.append(ident)
                cams.append(int(cam))
    return np.asarray(xs, np.float32), np.asarray(ids, np.int64), np.asarray(cams, np.int64)


def generate(seed: int = SEED) -> dict[str, np.ndarray]:
    """The data set as arrays (train: x, y, cams; test: x, ids, cams, query)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(0, 1 / np.sqrt(DIM), (DIM, DIM))
    camera = rng.normal(0, CAMERA, (CAMERAS, DIM))
    looks = rng.normal(0, IDENTITY, (TRAIN_IDS + TEST_IDS, DIM))
    x_tr, y_tr, c_tr = _tracks(rng, looks[:TRAIN_IDS], camera, mixing)
    x_te, y_te, c_te = _tracks(rng, looks[TRAIN_IDS:], camera, mixing)
    y_te = y_te + TRAIN_IDS  # test identities are other people
    return {"x_train": x_tr, "y_train": y_tr, "cams_train": c_tr, "x_test": x_te, "ids_test": y_te,
            "cams_test": c_te, "query": one_query_per_camera(y_te, c_te, rng)}


def raw_test_map(a: Mapping[str, np.ndarray]) -> float:
    """Test mAP of the raw track vectors (cosine, no model): the floor a trained embedding must beat."""
    from dm_tune.retrieval import cosine_scores, retrieval_metrics

    x, ids, cams, q = a["x_test"], a["ids_test"], a["cams_test"], a["query"]
    return retrieval_metrics(cosine_scores(x[q], x), ids[q], cams[q], ids, cams)["map"]


def load(root: Path | None, options: Mapping[str, Any], download: bool = False) -> Source:
    if options:
        name = sorted(options)[0]
        raise ConfigError(f"dataset_options.{name}", options[name], "reid-synth takes no options")
    a = generate()
    test = gallery(torch.from_numpy(a["x_test"]), a["ids_test"], a["cams_test"], a["query"])
    return Source(
        name="reid-synth",
        train=Split(torch.from_numpy(a["x_train"]), torch.from_numpy(a["y_train"])),
        test=Split(test.inputs, test.ids),
        num_classes=TRAIN_IDS,
        input_kind="vector",
        default_model="mlp",
        defaults=dict(DEFAULTS),
        gallery=test,
        train_cams=torch.from_numpy(a["cams_train"]),
        info={"synthetic": True, "seed": SEED, "train_tracks": len(a["y_train"]),
              "test_tracks": len(a["ids_test"]), "queries": len(a["query"]),
              "raw_test_map": raw_test_map(a)},
    )
