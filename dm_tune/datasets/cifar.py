"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format (the "python version" pickles).

The pickles are read directly (a second or two, their opcodes scanned first; torchvision is only
imported to download, and only when ``download`` is asked for). Images stay in memory as uint8
(N, 3, 32, 32); the device normalises them with ``Source.normalise`` and applies the crop/flip
augmentation.

CIFAR-100 carries its 20 superclasses as ``Source.class_groups`` (for the paper's asymmetric
``cifar100-superclass`` noise), derived from the ``coarse_labels`` stored in the train pickle.
"""

from __future__ import annotations

import itertools
import pickle
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dm_tune._validate import ConfigError
from dm_tune.errors import first_line
from dm_tune.datasets._base import DataError, Source, Split, nested_values
from dm_tune.datasets._pickles import unsafe_pickle, unsafe_pickle_refusal

# Per-channel statistics of the training images, on the [0, 1] scale.
CIFAR10_NORMALISE = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_NORMALISE = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

# Paper-like protocol: SGD (momentum 0.9, the config's default), lr 0.1 divided by 10 at 50%
# and 75% of the budget (the config's lr_milestones; the paper used 15k and 22k of 30k
# iterations), weight decay 5e-4 (the released solver files). 120 epochs of 40k images at batch
# 128 is 37.5k iterations, a little more than the paper's 30k at batch 256, and long enough for
# CCE to memorise noisy labels.
DEFAULTS = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4,
            "schedule": "step", "batch_size": 128, "epochs": 120}

CIFAR10_LAYOUT = ("<data_root>/cifar-10-batches-py/ with data_batch_1 ... data_batch_5, test_batch "
                  "and batches.meta (torchvision's CIFAR10 format)")
CIFAR100_LAYOUT = ("<data_root>/cifar-100-python/ with train, test and meta "
                   "(torchvision's CIFAR100 format)")

# The standard fine -> coarse table of CIFAR-100 (fine class i belongs to superclass
# FINE_TO_COARSE[i]); used only for fine classes the train pickle's coarse_labels do not cover.
FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


def _check_options(name: str, options: Mapping[str, Any]) -> None:
    if options:
        key = sorted(options)[0]
        raise ConfigError(f"dataset_options.{key}", options[key], f"{name} takes no options")


def _require_root(name: str, root: Path | None) -> Path:
    if root is None:
        raise ConfigError("data_root", None, f"{name} is read from disk; give --data-root")
    return root


class _Refused(pickle.UnpicklingError):
    """A pickle naming a global outside ``_ArraysOnly.allowed``, or an array of a kind it refuses."""


# Array kinds a pickle may build: booleans, numbers and fixed-size strings, whose bytes are values.
# An object dtype's bytes are pointers: numpy builds objects from them, so a crafted pickle that
# reached numpy's own dtype (flags set by its state, fields added) could crash or run code.
_PLAIN_KINDS = "biufcSU"


class _Dtype:
    """What a pickle's ``numpy.dtype(...)`` builds: a plain dtype, and from its pickled state only
    the byte order (never fields, names, a sub-array or flags)."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, (str, bytes)):
            raise _Refused(f"numpy.dtype({type(spec).__name__})")
        dtype = np.dtype(spec.decode("latin1") if isinstance(spec, bytes) else spec)
        if (dtype.kind not in _PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None
                or dtype.itemsize == 0):  # (items of no size: any number of them from no bytes)
            raise _Refused(f"numpy.dtype({spec!r})")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or any(x is not None for x in state[2:5]):
            raise _Refused("numpy.dtype with fields or a sub-array")
        if state[1] in ("<", ">") and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


def _plain(dtype: Any) -> np.dtype:
    if not isinstance(dtype, _Dtype):
        raise _Refused(f"an array of {type(dtype).__name__}")
    return dtype.dtype


def _raw(data: Any) -> bytes:
    if isinstance(data, str):
        return data.encode("latin1")  # (Python 2 pickles: str)
    if isinstance(data, (bytes, bytearray, pickle.PickleBuffer)):
        return bytes(data)
    raise _Refused(f"array data of {type(data).__name__}")


class _Array(np.ndarray):
    """What a pickle's ``_reconstruct`` builds: an array whose pickled state must be a plain dtype
    and raw bytes (an object array pickles its items: refused), set once (numpy frees the buffer
    it replaces, under any view a pickle took of it)."""

    def __setstate__(self, state: Any) -> None:
        if self.__dict__.get("_built"):
            raise _Refused("an array whose state is set twice")
        self.__dict__["_built"] = True
        if not isinstance(state, tuple) or len(state) != 5:
            raise _Refused("array state")
        version, shape, dtype, fortran, data = state
        super().__setstate__((version, shape, _plain(dtype), bool(fortran), _raw(data)))


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _Array:
    if subtype is not _NDARRAY:
        raise _Refused("an array of another type")
    return _Array((0,), np.uint8)


def _scalar(dtype: Any, data: Any = b"") -> Any:
    plain = _plain(dtype)
    return np.frombuffer(_raw(data), dtype=plain, count=1)[0]


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    return np.frombuffer(_raw(buffer), dtype=_plain(dtype)).reshape(shape, order="F" if order == "F" else "C")


_NDARRAY = object()  # the pickles' numpy.ndarray: only _reconstruct's first argument, never called


class _Fixed:
    """A stand-in function as a pickle sees it: callable, and refusing the state a BUILD would set
    on it (on a plain function, its attributes, for the rest of the process)."""

    __slots__ = ("_call",)

    def __init__(self, call: Any) -> None:
        self._call = call

    def __call__(self, *args: Any) -> Any:
        return self._call(*args)

    def __setstate__(self, state: Any) -> None:
        raise _Refused("state for a function")


def _latin1(text: Any, encoding: Any = "latin1", errors: Any = "strict") -> bytes:
    """What protocol 2-4 pickles call ``_codecs.encode`` for: bytes, as latin1 text. Any other codec
    is refused (chained, 'hex' doubled a string at each call: a small file filled the memory)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):  # (the repr of a str only)
        shown = repr(encoding[:40]) if isinstance(encoding, str) else type(encoding).__name__
        raise _Refused(f"_codecs.encode({type(text).__name__}, {shown})")
    return text.encode("latin1")


def _array_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name, each a checked stand-in for numpy's own: the
    array, dtype and scalar reconstruction under numpy 1's module names (the releases) and numpy
    2's (files pickled again since), and ``_codecs.encode`` (bytes in pickle protocols 2-4)."""
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _Dtype,
                                           ("_codecs", "encode"): _Fixed(_latin1)}
    for core in ("numpy.core", "numpy._core"):
        allowed |= {(f"{core}.multiarray", "_reconstruct"): _Fixed(_reconstruct),
                    (f"{core}.multiarray", "scalar"): _Fixed(_scalar),
                    (f"{core}.numeric", "_frombuffer"): _Fixed(_frombuffer)}
    return allowed


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds dicts, lists, strings, numbers and numpy arrays of plain values,
    and nothing that could run code while loading."""

    allowed = _array_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


def _unpickle(path: Path, keys: tuple[str, ...], layout: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(path, "file not found", layout)
    try:
        with path.open("rb") as f:
            unsafe = unsafe_pickle(f)  # (before anything is built: see there)
            f.seek(0)
            blob = None if unsafe else _ArraysOnly(f, encoding="latin1").load()  # the releases are Python 2 cPickles
    except _Refused as e:
        raise DataError(path, f"refused: holds Python objects other than arrays ({e}); loading it could run code",
                        layout) from None
    except MemoryError:  # (not a damaged file: in a bounded load, the bound)
        raise
    except Exception as e:  # any unpickling failure means a damaged or foreign file
        raise DataError(path, f"could not be read as a CIFAR pickle ({type(e).__name__}: {first_line(e)})",
                        layout) from None
    if unsafe is not None:
        raise DataError(path, unsafe_pickle_refusal(unsafe, "CIFAR pickle"), layout)
    if not isinstance(blob, dict) or any(k not in blob for k in keys):
        present = _some_keys(blob) if isinstance(blob, dict) else type(blob).__name__
        raise DataError(path, f"lacks the keys {', '.join(keys)} (present: {present})", layout)
    return blob


def _some_keys(blob: dict[Any, Any], shown: int = 20) -> str:
    """The first ``shown`` of a dict's keys, each cut at 40 characters (a key's text can be any
    size), and how many more."""
    texts = [reprlib.repr(k) if not isinstance(k, str) else k[:40] for k in itertools.islice(blob, shown)]
    more = len(blob) - len(texts)
    return ", ".join(sorted(texts)) + (f" and {more} more" if more > 0 else "")


def _class_ids(path: Path, blob: dict[str, Any], key: str, n: int, num_classes: int, layout: str) -> np.ndarray:
    """``blob[key]`` as one class id in 0..num_classes-1 for each of the ``n`` images."""
    given = blob[key]
    # (a ragged list or a column of ids gets its own message below; lists nested deeper, or holding
    # far more values than images, or text numpy would widen, are refused before numpy reads them:
    # see nested_values)
    if isinstance(given, (list, tuple)) and nested_values(given, 4 * max(n, len(given))) is None:
        raise DataError(path, f"{key!r} holds more than one class id per image (lists nested deeper, or long "
                        "text)", layout)
    try:
        ids = np.asarray(given)
    except ValueError:  # a ragged list: numpy's "inhomogeneous shape"
        raise DataError(path, f"{key!r} is a ragged list, not one class id per image", layout) from None
    if not np.issubdtype(ids.dtype, np.integer):  # floats were truncated, strings a numpy traceback
        raise DataError(path, f"{key!r} holds {ids.dtype} values, not integer class ids", layout)
    if ids.ndim != 1:
        raise DataError(path, f"{key!r} has shape {ids.shape}, not ({n},): one class id per image", layout)
    if len(ids) != n:
        raise DataError(path, f"has {n} images but {len(ids)} labels in {key!r}", layout)
    if n and (ids.min() < 0 or ids.max() >= num_classes):
        raise DataError(path, f"has labels outside [0, {num_classes - 1}] in {key!r}", layout)
    return ids.astype(np.int64)


def _images(path: Path, blob: dict[str, Any], label_key: str, num_classes: int,
            layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = blob["data"]
    if not isinstance(data, np.ndarray):  # (the releases' is; a pickled list of rows repeated by reference is any size)
        raise DataError(path, f"'data' is {type(data).__name__}, not a uint8 array (N, 3072)", layout)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(path, f"'data' is {data.dtype} {data.shape}, not uint8 (N, 3072)", layout)
    if len(data) == 0:  # (also: an empty label list reads as floats)
        raise DataError(path, "holds no images", layout)
    labels = _class_ids(path, blob, label_key, len(data), num_classes, layout)
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels)


def _names(path: Path, meta: dict[str, Any], key: str, num_classes: int, layout: str) -> tuple[str, ...]:
    given = meta[key]
    if not isinstance(given, (list, tuple)) and not (isinstance(given, np.ndarray) and given.ndim == 1):
        raise DataError(path, f"{key!r} is {type(given).__name__}, not a list of {num_classes} class names", layout)
    if len(given) != num_classes:  # a report would name classes wrongly, or not at all
        raise DataError(path, f"{key!r} has {len(given)} names, not {num_classes}", layout)
    try:  # (numpy's text of code points past U+10FFFF: a SystemError, as its items are read)
        odd = sorted({type(n).__name__ for n in given if not isinstance(n, (str, bytes, np.str_, np.bytes_))})
        # (names pickled as bytes, as Python 2 wrote str: "b'airplane'" named the class)
        names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in given) if not odd else ()
    except (ValueError, SystemError) as e:
        raise DataError(path, f"{key!r} holds names that are no text ({type(e).__name__})", layout) from None
    if odd:  # (str() of a list repeated by reference within itself is text of any size)
        raise DataError(path, f"{key!r} holds {', '.join(odd)} where class names should be", layout)
    return names


def _download(root: Path, cifar100: bool) -> None:
    import torchvision

    cls = torchvision.datasets.CIFAR100 if cifar100 else torchvision.datasets.CIFAR10
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except (OSError, RuntimeError) as e:  # urllib's URLError is an OSError; a bad checksum a RuntimeError
        raise DataError(root, f"could not download {cls.__name__} there ({type(e).__name__}: {e}); download "
                              "needs the internet: else put the extracted python version under data_root",
                        "the python version of the dataset, extracted under <data_root>") from None


def _other_release(root: Path, base: Path, other: str, dataset: str) -> None:
    """The other CIFAR's folder where this one's is missing: the dataset named is the wrong one."""
    if not base.is_dir() and (root / other).is_dir():
        raise DataError(base, f"not found, but {root} holds {other}/: that is dataset {dataset!r} "
                              f"(--dataset {dataset})",
                        "the python version of the dataset, extracted under <data_root>")


def load_cifar10(root: Path | None, options: Mapping[str, Any], download: bool = False) -> Source:
    _check_options("cifar10", options)
    root = _require_root("cifar10", root)
    base = root / "cifar-10-batches-py"
    if download and not (base / "test_batch").is_file():
        _download(root, cifar100=False)
    _other_release(root, base, "cifar-100-python", "cifar100")
    checked = _bounded(base, "cifar10", CIFAR10_LAYOUT)
    source = _cifar10_source(base)
    _unchanged(base, checked, CIFAR10_LAYOUT)
    return source


def _cifar10_source(base: Path) -> Source:
    parts = [_images(p, _unpickle(p, ("data", "labels"), CIFAR10_LAYOUT), "labels", 10, CIFAR10_LAYOUT)
             for p in (base / f"data_batch_{i}" for i in range(1, 6))]
    x_tr, y_tr = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test_path = base / "test_batch"
    x_te, y_te = _images(test_path, _unpickle(test_path, ("data", "labels"), CIFAR10_LAYOUT),
                         "labels", 10, CIFAR10_LAYOUT)
    meta = _unpickle(base / "batches.meta", ("label_names",), CIFAR10_LAYOUT)
    return Source(
        name="cifar10",
        train=Split(x_tr, y_tr),
        test=Split(x_te, y_te),
        num_classes=10,
        input_kind="image",
        default_model="resnet20",
        class_names=_names(base / "batches.meta", meta, "label_names", 10, CIFAR10_LAYOUT),
        normalise=CIFAR10_NORMALISE,
        defaults=dict(DEFAULTS),
        info={"data_dir": str(base)},
    )


def _bounded(base: Path, release: str, layout: str) -> tuple[tuple[Any, ...], ...]:
    """Read the release in a child process first, bounded in time and memory (``_bounded``): the
    scan and the checked unpickler stop what is known to make a small pickle take minutes or
    gigabytes; the child stops what is not yet known, before this process reads it. Returns the
    files as checked (for ``_unchanged``)."""
    from dm_tune.datasets._bounded import FOLDER_READERS, Unreadable, check_folder_load

    try:
        return check_folder_load(FOLDER_READERS[release], base)
    except Unreadable as e:
        raise DataError(base, str(e), layout) from None


def _unchanged(base: Path, checked: tuple[tuple[Any, ...], ...], layout: str) -> None:
    """The release's files, as this process read them, are those the child read."""
    from dm_tune.datasets._bounded import Unreadable, check_unchanged

    try:
        check_unchanged(base, checked)
    except Unreadable as e:
        raise DataError(base, str(e), layout) from None


def superclass_groups(fine: np.ndarray, coarse: np.ndarray | None) -> tuple[tuple[int, ...], ...]:
    """The 20 groups of fine classes, from per-example (fine, coarse) labels where given."""
    table = list(FINE_TO_COARSE)
    if coarse is not None:
        for f in np.unique(fine):
            seen = np.unique(coarse[fine == f])
            if len(seen) != 1:
                raise ValueError(f"fine class {f} appears with coarse labels {seen.tolist()}")
            table[int(f)] = int(seen[0])
    return tuple(tuple(f for f in range(100) if table[f] == g) for g in range(20))


def load_cifar100(root: Path | None, options: Mapping[str, Any], download: bool = False) -> Source:
    _check_options("cifar100", options)
    root = _require_root("cifar100", root)
    base = root / "cifar-100-python"
    if download and not (base / "test").is_file():
        _download(root, cifar100=True)
    _other_release(root, base, "cifar-10-batches-py", "cifar10")
    checked = _bounded(base, "cifar100", CIFAR100_LAYOUT)
    source = _cifar100_source(base)
    _unchanged(base, checked, CIFAR100_LAYOUT)
    return source


def _cifar100_source(base: Path) -> Source:
    train_path, test_path = base / "train", base / "test"
    train_blob = _unpickle(train_path, ("data", "fine_labels"), CIFAR100_LAYOUT)
    x_tr, y_tr = _images(train_path, train_blob, "fine_labels", 100, CIFAR100_LAYOUT)
    x_te, y_te = _images(test_path, _unpickle(test_path, ("data", "fine_labels"), CIFAR100_LAYOUT),
                         "fine_labels", 100, CIFAR100_LAYOUT)
    meta = _unpickle(base / "meta", ("fine_label_names",), CIFAR100_LAYOUT)
    coarse_arr = None
    if train_blob.get("coarse_labels") is not None:
        coarse_arr = _class_ids(train_path, train_blob, "coarse_labels", len(y_tr), 20, CIFAR100_LAYOUT)
    try:
        groups = superclass_groups(y_tr.numpy(), coarse_arr)
    except ValueError as e:
        raise DataError(train_path, f"inconsistent 'coarse_labels': {e}", CIFAR100_LAYOUT) from None
    return Source(
        name="cifar100",
        train=Split(x_tr, y_tr),
        test=Split(x_te, y_te),
        num_classes=100,
        input_kind="image",
        default_model="resnet44",
        class_groups=groups,
        class_names=_names(base / "meta", meta, "fine_label_names", 100, CIFAR100_LAYOUT),
        normalise=CIFAR100_NORMALISE,
        defaults=dict(DEFAULTS),
        info={"data_dir": str(base),
              "superclasses_from": "coarse_labels" if coarse_arr is not None else "standard table"},
    )
