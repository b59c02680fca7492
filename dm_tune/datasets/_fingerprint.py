"""What a dataset holds, as one short hash: two loads with the same fingerprint are the same data.

A run records the fingerprint of the dataset it trained on (and of the label file its noise read),
so that a search resumed on data that changed meanwhile is refused, and a report whose runs trained
on different data says so. The fingerprint is of the content, not of where it lies: a copy of a
dataset in another folder has the same one.

What is hashed:
- inputs held in memory (digits, MNIST-1D, CIFAR, IMDB, feature files): every value, with its
  dtype and shape (SHA-256 reads CIFAR-10's 150 MB in about 0.2 s);
- inputs streamed from image files (ImageFolder, Clothing1M, MARS): the files' names and the
  frames each track spans, not their bytes (reading a million images would take longer than an
  epoch); an image edited in place keeps its name, and the fingerprint;
- every label: as given, the verified clean ones and which are known to be noisy (Clothing1M),
  superclass groups (CIFAR-100), identities and cameras (re-identification).
"""

from __future__ import annotations

import hashlib
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dm_tune.datasets._base import Gallery, Source, Split

SHOWN = 16  # hex digits kept (64 bits: a changed dataset shares its fingerprint once in 2**64)


def _array(h: Any, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))


def _inputs(h: Any, inputs: Any) -> None:
    if isinstance(inputs, torch.Tensor):
        _array(h, inputs.detach().cpu().numpy())
        return
    if isinstance(inputs, torch.utils.data.Subset):
        h.update(b"subset")
        _array(h, np.asarray(inputs.indices, dtype=np.int64))
        _inputs(h, inputs.dataset)
        return
    content = getattr(inputs, "content", None)
    if content is None:
        raise TypeError(f"{type(inputs).__name__} says nothing of its content (a streamed dataset's "
                        "content() names the files it reads)")
    h.update(type(inputs).__name__.encode())
    for part in content():
        _array(h, np.asarray(part))


def _split(h: Any, split: Split | None) -> None:
    h.update(b"split" if split is not None else b"none")
    if split is not None:
        _inputs(h, split.inputs)
        _array(h, split.labels.numpy())


def _gallery(h: Any, gallery: Gallery | None) -> None:
    h.update(b"gallery" if gallery is not None else b"none")
    if gallery is not None:
        _inputs(h, gallery.inputs)
        for f in fields(Gallery)[1:]:
            _array(h, getattr(gallery, f.name).numpy())


def source_fingerprint(source: Source) -> str:
    """The fingerprint of what ``source`` holds (the one its loader recorded in ``info``, if any)."""
    known = source.info.get("fingerprint")
    if isinstance(known, str):
        return known
    h = hashlib.sha256(f"{source.name}:{source.num_classes}:{source.input_kind}".encode())
    for split in (source.train, source.test, source.val):
        _split(h, split)
    for labels in (source.given_noisy, source.noise_known, source.clean_labels, source.train_cams):
        h.update(b"labels" if labels is not None else b"none")
        if labels is not None:
            _array(h, labels.numpy())
    h.update(repr(source.class_groups).encode())
    _gallery(h, source.gallery)
    return h.hexdigest()[:SHOWN]


def file_fingerprint(path: Path) -> str:
    """The fingerprint of a file's bytes (a label file the noise model reads)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:SHOWN]
