"""Pieces shared by the re-identification datasets (reid-synth, mars, mars-features): tracks
pooled to one vector, identities renumbered for the classifier, queries chosen, disjointness checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dm_tune.datasets._base import DataError, Gallery, Inputs

# MARS' own conventions: identity -1 marks junk detections (ignored in every ranking) and
# identity 0 distractors (kept in the gallery as non-matches of every query).
JUNK_ID, DISTRACTOR_ID = -1, 0


def pool_tracks(frames: np.ndarray, track: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(one mean vector per track, the track ids in that order), from per-frame vectors."""
    tracks, inverse = np.unique(track, return_inverse=True)
    sums = np.zeros((len(tracks), frames.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, frames)
    counts = np.bincount(inverse, minlength=len(tracks))[:, None]
    return (sums / counts).astype(np.float32), tracks


def renumber(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels 0..C-1, the identity of each label): the classifier's classes are the sorted ids."""
    classes, labels = np.unique(ids, return_inverse=True)
    return labels.astype(np.int64), classes


def one_query_per_camera(ids: np.ndarray, cams: np.ndarray, rng: np.random.Generator,
                         never: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of one entry (drawn by ``rng``) per identity and camera, for identities seen
    by at least two cameras (a query needs a match from another camera); entries marked
    ``never`` (junk, distractors) are never queries."""
    usable = np.ones(len(ids), bool) if never is None else ~never
    chosen = []
    for ident in np.unique(ids[usable]):
        mine = np.flatnonzero(usable & (ids == ident))
        if len(np.unique(cams[mine])) < 2:
            continue
        for cam in np.unique(cams[mine]):
            chosen.append(rng.choice(mine[cams[mine] == cam]))
    return np.sort(np.asarray(chosen, dtype=np.int64))


def gallery(inputs: Inputs, ids: np.ndarray, cams: np.ndarray, query: np.ndarray,
            junk: np.ndarray | None = None) -> Gallery:
    junk = np.zeros(len(ids), bool) if junk is None else junk
    return Gallery(inputs, torch.from_numpy(np.asarray(ids, np.int64)), torch.from_numpy(np.asarray(cams, np.int64)),
                   torch.from_numpy(np.asarray(query, np.int64)), torch.from_numpy(np.asarray(junk, bool)))


def check_disjoint(path: Path, train_ids: np.ndarray, test_ids: np.ndarray, layout: str) -> None:
    """Train and test identities must not overlap (junk and distractor ids aside)."""
    special = (JUNK_ID, DISTRACTOR_ID)
    shared = np.setdiff1d(np.intersect1d(train_ids, test_ids), special)
    if len(shared):
        raise DataError(path, f"{len(shared)} identities are in both the training and the test set "
                        f"(first: {int(shared[0])}); re-identification needs disjoint identities", layout)
