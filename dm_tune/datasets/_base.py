"""The data contract shared by every dataset module.

A dataset module exposes ``load(root, options) -> Source``: the full training set with its
labels as given (clean for most datasets, the released noisy labels for Clothing1M), the test
set, an optional official validation set, and a few defaults. ``dm_tune.data.prepare`` then
applies the label-noise model, carves the validation split and applies class imbalance, so that
no dataset module repeats that logic.

Inputs come in two forms: a tensor (in memory; batches are sliced on the device, the fast
path) or a ``torch.utils.data.Dataset`` of inputs only (read from disk through a DataLoader).
Labels are always a separate int64 tensor, so noise only ever replaces a label tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dm_tune._memory import physical_memory
from dm_tune.errors import DataError  # noqa: F401 - defined with the other user errors; datasets raise it


Inputs = torch.Tensor | Dataset


@dataclass(frozen=True)
class Split:
    """Inputs and their (possibly noisy) labels. ``inputs[i]`` belongs to ``labels[i]``."""

    inputs: Inputs
    labels: torch.Tensor
    # In-memory inputs taken from a larger tensor by ``subset``: (that tensor, the rows taken), so
    # that the K splits of one dataset in a population can share one copy of it on the device.
    origin: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):  # type: ignore[arg-type]
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.labels)} labels")  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.inputs, torch.Tensor)

    def subset(self, index: torch.Tensor, labels: torch.Tensor | None = None) -> "Split":
        """The examples at ``index`` (optionally with replacement labels)."""
        lab = self.labels[index] if labels is None else labels
        if isinstance(self.inputs, torch.Tensor):
            rows = index.nonzero().flatten() if index.dtype == torch.bool else index.long()
            origin = (self.inputs, rows) if self.origin is None else (self.origin[0], self.origin[1][rows])
            return Split(self.inputs[index], lab, origin)
        return Split(torch.utils.data.Subset(self.inputs, index.tolist()), lab)


@dataclass(frozen=True)
class Gallery:
    """A retrieval evaluation set (re-identification): every entry is in the gallery and
    ``query`` indexes the entries that are also queries. Identities are the dataset's own ids
    (any integers); ``junk`` marks entries the dataset excludes from every ranking (MARS: -1)."""

    inputs: Inputs
    ids: torch.Tensor      # int64 identity per entry
    cams: torch.Tensor     # int64 camera per entry
    query: torch.Tensor    # int64 indices of the query entries
    junk: torch.Tensor     # bool per entry

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Source:
    """What a dataset module loads, before noise, validation carving and imbalance."""

    name: str
    train: Split
    test: Split
    num_classes: int
    # "vector" (flat features), "signal" (1-D sequence), "image" (C,H,W uint8 or float), "tokens".
    input_kind: str
    default_model: str
    # An official clean validation set (Clothing1M); otherwise carved from the training data.
    val: Split | None = None
    # Per training example: True where the label as given is known to be wrong (real noise),
    # with ``noise_known`` saying for which examples that is known at all (None: all known).
    given_noisy: torch.Tensor | None = None
    noise_known: torch.Tensor | None = None
    # The verified clean label of each training example where ``noise_known`` (elsewhere: the
    # label as given); None when the labels as given are the clean ones.
    clean_labels: torch.Tensor | None = None
    # Groups of fine classes (CIFAR-100's 20 superclasses), for the superclass noise model.
    class_groups: tuple[tuple[int, ...], ...] | None = None
    class_names: tuple[str, ...] | None = None
    # Per-channel mean/std for image inputs stored as uint8 (applied on the device).
    normalise: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # Training defaults that suit this dataset (epochs, lr, optimizer, batch_size, ...).
    defaults: dict[str, Any] = field(default_factory=dict)
    # Extra facts for provenance (file paths, feature settings, ...).
    info: dict[str, Any] = field(default_factory=dict)
    # Retrieval datasets (re-identification): training labels are identities 0..C-1, each
    # training example one track; ``gallery`` is the test set (identities disjoint from
    # training) and ``train_cams`` the camera of each training track.
    gallery: Gallery | None = None
    train_cams: torch.Tensor | None = None

    @property
    def task(self) -> str:
        return "classification" if self.gallery is None else "retrieval"


def npz_error(e: BaseException) -> str:
    """Why numpy could not read a file as .npz, in the user's terms: a file that is no archive (a
    CSV, text) reads to numpy as a pickle, and its advice (allow_pickle=True, which runs the file's
    code) is not one to follow."""
    if "allow_pickle" in str(e):
        return "it is not a .npz archive of arrays (a text or CSV file?); dm-tune never loads pickles"
    return str(e)


def nested_values(given: Any, limit: int) -> int | None:
    """How many values a list (or tuple) of labels holds, its items scalars or flat lists or arrays
    of them; None when an item nests deeper or the count passes ``limit``. Counted before numpy
    reads it: a pickle repeats one list by reference at no cost, so a small file can describe
    lists of any size; the count stops at ``limit`` and never looks inside a nested item whose
    length alone passes it. Where the values hold text, numpy gives every one the widest text's
    width, so the count is of values times that width (twenty thousand ints and one string of
    fifty thousand characters made a 4 GB array)."""
    import numpy as np

    def width(x: Any) -> int:
        if isinstance(x, (str, bytes)):
            return max(len(x), 1)
        if isinstance(x, np.ndarray) and x.dtype.kind in "SU":
            return max(x.dtype.itemsize // (4 if x.dtype.kind == "U" else 1), 1)
        return 1

    total, widest = 0, 1
    for item in given:
        if isinstance(item, (list, tuple)):
            if total + len(item) > limit or any(isinstance(x, (list, tuple, dict, set, np.ndarray)) for x in item):
                return None
            total += len(item)
            widest = max([widest, *map(width, item)])
        elif isinstance(item, np.ndarray):
            total += int(item.size)
            widest = max(widest, width(item))
        elif callable(getattr(item, "numel", None)):  # a tensor
            total += int(item.numel())
        elif isinstance(item, (dict, set)):
            return None
        else:
            total += 1
            widest = max(widest, width(item))
        if total * widest > limit:
            return None
    return total


def read_npz(path: Path, layout: str) -> dict[str, Any]:
    """The named arrays of a .npz archive, never a pickle; each array's header is checked against
    the bytes its member holds before numpy reads it (numpy allocates the shape a header states
    first: a 1 KB archive stating 2^33 labels was a MemoryError, 64 GiB, out of the loader), and
    the members' unpacked bytes together against the machine's memory (deflate packs zeros 1032 to
    1: a 25 MB archive can unpack to 24 GB, and the kernel's OOM killer, not an error, would end
    the process that tried)."""
    import zipfile

    import numpy as np

    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(path, "is a single array, not a .npz archive of named arrays", layout)
        with npz:
            members = npz.zip.infolist()
            for info in members:
                _member_fits(path, npz.zip, info, layout)
            unpacked, memory = sum(info.file_size for info in members), physical_memory()
            if memory is not None and unpacked > memory:
                raise DataError(path, f"unpacks to {unpacked:,} bytes, more than this machine's memory "
                                      f"({memory:,} bytes)", layout)
            arrays = {}
            for k in npz.files:
                try:
                    arrays[k] = npz[k]
                except ValueError as e:  # (the archive is one: not "a text or CSV file?")
                    if "allow_pickle" not in str(e):
                        raise
                    raise DataError(path, f"its array {k!r} holds Python objects (dtype object), which dm-tune "
                                          "never loads (unpickling them could run code); save numbers or text",
                                    layout) from None
            return arrays
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, AttributeError, MemoryError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(path, f"could not be read as a .npz file ({npz_error(e)})", layout) from None


# Deflate's largest ratio of unpacked to packed bytes (a member stating more is no deflate stream).
DEFLATE_RATIO = 1032


def _member_fits(path: Path, archive: Any, info: Any, layout: str) -> None:
    """Refuse a .npz member packed otherwise than numpy packs (stored, or deflate: bzip2 and LZMA
    made 2.4 GB of 2.6 KB), stating more unpacked bytes than its packed ones can hold, or whose
    .npy header states more bytes than the member holds (headers in format 1.0 or 2.0, which
    numpy writes; others, and members that are no array, are left to numpy)."""
    import math
    import zipfile

    from numpy.lib import format as npy

    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(path, f"its member {info.filename!r} is packed with method {info.compress_type}; numpy "
                              "writes stored or deflated members only", layout)
    if info.file_size > DEFLATE_RATIO * info.compress_size + 1024:
        raise DataError(path, f"its member {info.filename!r} states {info.file_size:,} bytes unpacked from "
                              f"{info.compress_size:,}, more than deflate can", layout)
    with archive.open(info) as f:
        try:
            version = npy.read_magic(f)
        except ValueError:  # (not an array: numpy gives its bytes)
            return
        read_header = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
        if read_header is None:
            return
        shape, _, dtype = read_header(f)
    needed = math.prod(shape) * dtype.itemsize
    if needed > info.file_size:
        name = info.filename.removesuffix(".npy")
        raise DataError(path, f"its array {name!r} states shape {shape} of {dtype}, {needed:,} bytes, more than the "
                              f"{info.file_size:,} its member holds", layout)
