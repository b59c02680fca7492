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
from typing import Any

import torch
from torch.utils.data import Dataset

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


# Hashing a tuple hashes its items, every time (a tuple's hash is not cached): a pickle nesting
# one tuple in itself by reference n times, (t, t), then ((t, t), (t, t)), ..., takes n small
# steps of a file, and its hash 2^n (a loader hung on one). An unpickler hashes dict keys and set
# items as it builds them, and the globals torch's weights-only loader allows include set(),
# Counter() and OrderedDict(), which hash what they are given.
_CAP = 2**62


class _Value:
    """A value on the scanned pickle's stack: its kind (pickletools' name), how many steps hashing
    it takes (``cost``; 1 for what cannot be hashed, which fails at once), for a tuple its items,
    and for a list, dict or set the largest cost among what iterating it hashes (``inner``: its
    items, a dict's keys). Shared by reference as the pickle's values are: a list appended to
    after it was memoised changes where it is used."""

    __slots__ = ("kind", "cost", "items", "inner")

    def __init__(self, kind: str, cost: int = 1, items: list[_Value] | None = None) -> None:
        self.kind, self.cost, self.items, self.inner = kind, cost, items or [], 0

    def hashes(self) -> int:
        """The steps of hashing what a call given this value as an argument could hash: the value,
        or what iterating it does (for a tuple, also what iterating each of its first 16 items
        does: no global a loader allows takes more arguments, and a pickle can repeat a long tuple
        by reference at no cost)."""
        if self.kind != "tuple":
            return max(self.cost, self.inner)
        return max([self.cost] + [v.inner for v in self.items[:16]])


def _tuple(items: list[_Value]) -> _Value:
    return _Value("tuple", min(_CAP, 1 + sum(v.cost for v in items)), items)


def costly_key(f: Any) -> str | None:
    """What in the pickle in file ``f`` would take over a million steps (and over four per opcode
    read) to hash: ``"a dict key"``, ``"a set item"`` or ``"a call's argument"`` with its kind,
    or None. Reads the opcodes (pickletools; nothing is built), keeping each value's kind and
    hashing cost on the stack and in the memo; stops at the pickle's end, so ``f`` is left there."""
    import pickletools

    stack: list[_Value] = []
    marks: list[int] = []  # where each open MARK is on the stack (as the unpickler keeps them)
    memo: dict[int, _Value] = {}
    ops = 0

    def costly(values: list[_Value], what: str, measure: Any = lambda v: v.cost) -> str | None:
        for v in values:
            if measure(v) > 1_000_000 + 4 * ops:
                return f"{what} of kind {v.kind}"
        return None

    for op, arg, _ in pickletools.genops(f):
        ops += 1
        name = op.name
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1] if stack else _Value("any")
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg, _Value("any")))
            continue
        if name == "DUP":
            stack.append(stack[-1] if stack else _Value("any"))
            continue
        if name == "MARK":
            marks.append(len(stack))
            continue
        before = [s.name for s in op.stack_before]
        sliced: list[_Value] = []
        if "mark" in before:
            at = marks.pop() if marks else 0
            sliced = stack[at:]
            del stack[at:]
            before = before[:before.index("mark")]
        popped = stack[len(stack) - min(len(before), len(stack)):]
        del stack[len(stack) - len(popped):]
        found = None
        if name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"):
            stack.append(_tuple(sliced or popped))
            continue
        if name in ("SETITEM", "SETITEMS", "DICT"):
            keys = popped[1:2] if name == "SETITEM" else sliced[0::2]
            found = costly(keys, "a dict key")
            target = popped[0] if name != "DICT" and popped else _Value("dict")
        elif name in ("APPEND", "APPENDS", "LIST", "ADDITEMS", "FROZENSET"):
            keys = popped[1:2] if name == "APPEND" else sliced
            if name in ("ADDITEMS", "FROZENSET"):
                found = costly(keys, "a set item")
            target = (popped[0] if name in ("APPEND", "APPENDS", "ADDITEMS") and popped
                      else _Value("frozenset", 1 + len(keys)) if name == "FROZENSET" else _Value("list"))
        elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"):
            args = sliced[1:] if name == "OBJ" else sliced if name == "INST" else popped[1:]
            found = costly(args, "a call's argument", _Value.hashes)
            stack.append(_Value("any"))
        elif name == "BUILD":
            stack.append(popped[0] if popped else _Value("any"))
        else:
            stack.extend(_Value(s.name) for s in op.stack_after)
        if found is not None:
            return found
        if name in ("SETITEM", "SETITEMS", "DICT", "APPEND", "APPENDS", "LIST", "ADDITEMS", "FROZENSET"):
            if target.kind != "frozenset":
                target.inner = min(_CAP, max([target.inner] + [k.cost for k in keys]))
            stack.append(target)
    return None


def costly_key_refusal(found: str, what: str) -> str:
    return (f"refused: {found} whose hash takes over a million steps (parts nested in it by reference), "
            f"which no {what} has")


def torch_file_costly_key(path: Any) -> str | None:
    """``costly_key`` over the pickles of a torch.save file before torch's own loader reads it:
    each data.pkl of its zip archive, or the pickles at the start of the legacy format (magic
    number, protocol, system, the object, its storages' keys); None for a file that is neither
    (torch's reader then says why)."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if name.rsplit("/", 1)[-1] == "data.pkl":
                        with archive.open(name) as f:
                            if (kind := costly_key(f)) is not None:
                                return kind
            return None
        with open(path, "rb") as f:
            for _ in range(5):
                if (kind := costly_key(f)) is not None:
                    return kind
    except Exception:  # noqa: BLE001 - a damaged or foreign file: torch's reader says how
        return None
    return None


def nested_values(given: Any, limit: int) -> int | None:
    """How many values a list (or tuple) of labels holds, its items scalars or flat lists or arrays
    of them; None when an item nests deeper or the count passes ``limit``. Counted before numpy
    reads it: a pickle repeats one list by reference at no cost, so a small file can describe
    lists of any size; the count stops at ``limit`` and never looks inside a nested item whose
    length alone passes it."""
    import numpy as np

    total = 0
    for item in given:
        if isinstance(item, (list, tuple)):
            if total + len(item) > limit or any(isinstance(x, (list, tuple, dict, set, np.ndarray)) for x in item):
                return None
            total += len(item)
        elif isinstance(item, np.ndarray):
            total += int(item.size)
        elif isinstance(item, (dict, set)):
            return None
        else:
            total += 1
        if total > limit:
            return None
    return total

