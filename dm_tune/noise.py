"""Label-noise models and class imbalance, reproducible by seed.

A noise model is a function ``(clean_labels, ctx) -> noisy_labels`` (numpy int64 arrays of the
same length); ``apply_noise`` wraps it to return the noisy labels, the is-noisy mask and the
realised noise rate. The known models sit in ``NOISE_MODELS``. Synthetic models corrupt an
exact number of examples (round(rate * n), per class where the protocol is per class; fewer than
half of a class for the pairwise models), so the realised rate over the labels they are given is
the requested one up to rounding. ``data.prepare`` gives them the whole training set, before the
validation split is carved out and imbalance subsamples it (the same draw whatever the imbalance;
CIFAR-N files line up with the whole set), so the examples a run trains on carry the requested
rate only on average: their rate is measured and recorded (``noise_rate_realised``; e.g. 0.29-0.32
on digits at 0.3, 0.25-0.34 once longtail imbalance 50 keeps 277 of its examples).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dm_tune._names import IMBALANCE_KINDS as IMBALANCE_KINDS  # re-exported: the imbalance profiles below
from dm_tune._names import rate_limit as rate_limit  # re-exported: check_noise's limit (light, for recommend)
from dm_tune.datasets._base import DataError
from dm_tune.errors import first_line, unexaminable


@dataclass(frozen=True)
class NoiseContext:
    num_classes: int
    rate: float
    rng: np.random.Generator
    class_groups: tuple[tuple[int, ...], ...] | None = None
    file: Path | None = None
    key: str | None = None


@dataclass(frozen=True)
class NoisyLabels:
    labels: np.ndarray
    is_noisy: np.ndarray
    realised_rate: float


NoiseModel = Callable[[np.ndarray, NoiseContext], np.ndarray]


def none(labels: np.ndarray, ctx: NoiseContext) -> np.ndarray:
    """Labels as given (clean data, or a dataset whose own labels are noisy such as Clothing1M)."""
    return labels.copy()


def symmetric(labels: np.ndarray, ctx: NoiseContext) -> np.ndarray:
    """A fraction ``rate`` of labels replaced by one of the *other* classes, uniformly."""
    out = labels.copy()
    n = len(labels)
    flip = ctx.rng.choice(n, size=int(round(ctx.rate * n)), replace=False)
    shift = ctx.rng.integers(1, ctx.num_classes, size=len(flip))  # never 0: always another class
    out[flip] = (labels[flip] + shift) % ctx.num_classes
    return out


def indices_by_class(labels: np.ndarray, classes: Iterable[int]) -> list[np.ndarray]:
    """``np.flatnonzero(labels == c)`` for each of ``classes``, from one stable sort of the labels
    rather than one pass over them per class (with a class per example, a million examples took
    hours)."""
    order = np.argsort(labels, kind="stable")  # (ties in index order: each class's indices ascending)
    ordered = labels[order]
    wanted = np.fromiter(classes, dtype=np.int64)
    starts, ends = np.searchsorted(ordered, wanted, "left"), np.searchsorted(ordered, wanted, "right")
    return [order[a:b] for a, b in zip(starts.tolist(), ends.tolist())]


def _fewer_than_half(rate: float, n: int) -> int:
    """How many of a class's ``n`` examples a pairwise model relabels: round(rate * n), but fewer
    than half (rates of 0.5 and up are refused: a class's label and its partner's then name its
    examples equally often). Rounding alone reached half: 0.42 of a class of 6 is 3 of 6."""
    return max(0, min(int(round(rate * n)), (n - 1) // 2))  # (a class with no example: none)


def pair(labels: np.ndarray, ctx: NoiseContext) -> np.ndarray:
    """In every class c, a fraction ``rate`` relabelled as class (c + 1) mod C."""
    out = labels.copy()
    for c, idx in enumerate(indices_by_class(labels, range(ctx.num_classes))):
        flip = ctx.rng.choice(idx, size=_fewer_than_half(ctx.rate, len(idx)), replace=False)
        out[flip] = (c + 1) % ctx.num_classes
    return out


def cifar100_superclass(labels: np.ndarray, ctx: NoiseContext) -> np.ndarray:
    """The paper's asymmetric CIFAR-100 protocol: in each superclass two of its subclasses
    (chosen by the seed) are paired and a fraction ``rate`` of each is relabelled as the other."""
    if not ctx.class_groups:
        raise ValueError("noise 'cifar100-superclass' needs a dataset with class groups (cifar100)")
    out = labels.copy()
    by_class = indices_by_class(labels, range(ctx.num_classes))
    for group in ctx.class_groups:
        a, b = ctx.rng.choice(np.asarray(group), size=2, replace=False)
        for src, dst in ((a, b), (b, a)):
            idx = by_class[src]
            flip = ctx.rng.choice(idx, size=_fewer_than_half(ctx.rate, len(idx)), replace=False)
            out[flip] = dst
    return out


def from_file(labels: np.ndarray, ctx: NoiseContext) -> np.ndarray:
    """Noisy labels read from a file, one per training example in the dataset's original order."""
    if ctx.file is None:
        raise ValueError("noise 'file' needs noise_file (a .npy/.csv/.txt label list or a CIFAR-N .pt file)")
    out, blob = _read_labels(ctx.file, ctx.key)
    cifar_n = blob is not None
    if cifar_n and "coarse" in str(ctx.key):  # CIFAR-100N's superclasses: in range for 100 classes
        raise DataError(ctx.file, f"its {ctx.key} is a 20-superclass label set, but the dataset trains its "
                        f"{ctx.num_classes} fine classes; choose a fine label set such as noisy_label",
                        "one label per training example, in the dataset's original order")
    if len(out) != len(labels):
        raise DataError(ctx.file, f"has {len(out)} labels but the training set has {len(labels)}",
                        "one label per training example, in the dataset's original order")
    if out.min() < 0 or out.max() >= ctx.num_classes:
        raise DataError(ctx.file, f"has labels outside [0, {ctx.num_classes - 1}]",
                        f"integer class ids 0..{ctx.num_classes - 1}")
    if cifar_n:
        _check_clean_labels(ctx.file, labels, blob)
    # As a synthetic rate is refused there: labels that differ from the dataset's as often as random
    # ones no longer identify the classes (a file of another dataset, or in another order, of the
    # right length and range, trained on at a realised rate of 0.9-1.0 without a word).
    differ, limit = float((out != labels).mean()), rate_limit("file", ctx.num_classes)
    if len(out) and differ >= limit:
        raise DataError(ctx.file, f"its labels differ from the dataset's at {differ:.1%} of the training examples, "
                        f"as often as random labels would ({limit:.1%}): labels of another dataset, or in another "
                        "order?", LABELS_LAYOUT)
    return out


LABELS_LAYOUT = "one label per training example, in the dataset's original order"


def _flat_enough(path: Path, given: object, key: str, layout: str) -> object:
    """``given`` unless it is a list nested past one label per example (see ``nested_values``)."""
    from dm_tune.datasets._base import nested_values

    if isinstance(given, (list, tuple)) and nested_values(given, 4 * max(len(given), 1)) is None:
        raise DataError(path, f"its {key} holds more than one label per example (lists nested deeper, or long "
                        "text)", layout)
    return given


def _check_clean_labels(path: Path, labels: np.ndarray, blob: dict) -> None:
    """Refuse a CIFAR-N file (``blob``, as loaded) whose own clean_label is not the dataset's labels,
    whichever key was chosen (clean_label itself included): another dataset's file, or one in
    another order, would otherwise pass as labels of the right length and range."""
    if "clean_label" not in blob:
        return
    try:
        clean = np.asarray(_flat_enough(path, blob["clean_label"], "clean_label", LABELS_LAYOUT)).reshape(-1)
    except (ValueError, TypeError, RuntimeError) as e:  # a ragged list, a tensor numpy cannot take
        raise DataError(path, f"its clean_label is not an array of labels ({first_line(e)})",
                        LABELS_LAYOUT) from None
    wrong = np.flatnonzero(clean != labels) if clean.shape == labels.shape else np.arange(len(labels))
    if wrong.size:
        raise DataError(path, f"its clean_label disagrees with the dataset's labels at {wrong.size} of "
                        f"{len(labels)} training examples (the first: example {wrong[0]}): it belongs to "
                        "another dataset, or lists its examples in another order",
                        "one label per training example, in the dataset's original order")


# The label arrays of the CIFAR-10N / CIFAR-100N releases (torch-saved dicts of numpy arrays).
CIFAR_N_KEYS = ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3",
                "noisy_label", "clean_label")


def read_label_file(path: Path, key: str | None = None) -> np.ndarray:
    """Integer labels from .npy, .csv/.txt (one per line, or a last column), or a CIFAR-N .pt dict."""
    return _read_labels(path, key)[0]


def _read_labels(path: Path, key: str | None) -> tuple[np.ndarray, dict | None]:
    """``read_label_file``'s labels, and the whole dict a CIFAR-N .pt file held (None for the others)."""
    blob = None
    layout = (".npy array of ints; .csv/.txt with one integer per line (or per row, last column); "
              "or a CIFAR-10N/100N .pt dict with keys such as " + ", ".join(CIFAR_N_KEYS))
    why = unexaminable(path)
    if why:
        raise DataError(path, f"cannot be examined ({why})", layout)
    if path.is_dir():
        raise DataError(path, "is a directory; expected a label file", layout)
    if not path.is_file():
        raise DataError(path, "label file not found", layout)
    if path.stat().st_size == 0:
        raise DataError(path, "is empty", layout)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            # (mapped, not read: numpy allocated the shape a header states before reading, 16 GiB
            # for a 136-byte file; a map longer than the file is a ValueError)
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix in (".csv", ".txt"):
            # (utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte order mark, which made the
            # first label a header)
            text = path.read_text(encoding="utf-8-sig")
            rows = [(n, ln.replace(",", " ").split()[-1]) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
            if rows and not _is_int(rows[0][1]):
                rows = rows[1:]  # a header line
            arr = np.asarray([_csv_label(path, n, value, layout) for n, value in rows], dtype=np.int64)
        elif suffix in (".pt", ".pth"):
            blob = _load_cifar_n(path, layout)
            if not isinstance(blob, dict):
                raise DataError(path, "is not a dict of label arrays", layout)
            if key is None:
                raise DataError(path, "a .pt file's label set is never guessed; name it with noise_key "
                                f"(present: {', '.join(sorted(map(str, blob)))})", layout)
            if key not in blob:
                raise DataError(path, f"has no key {key!r} (present: {', '.join(sorted(map(str, blob)))})", layout)
            arr = np.asarray(_flat_enough(path, blob[key], key, layout))
        else:
            raise DataError(path, f"unsupported label file type {suffix!r}", layout)
    except (ValueError, TypeError, OSError, IndexError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(path, f"could not be read as labels ({first_line(e)})", layout) from None
    arr = np.asarray(arr).reshape(-1)
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        # (inf equals its own round: cast, it printed numpy's "invalid value" warning before the error)
        if arr.size and np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr) & (arr == np.round(arr))):
            arr = arr.astype(np.int64)
        else:
            raise DataError(path, "holds no integer labels", layout)
    return arr.astype(np.int64), blob


def _load_cifar_n(path: Path, layout: str) -> object:
    """A CIFAR-N .pt file, read by ``read_label_arrays`` once a child process has read the same
    bytes so in bounded time and memory (``_bounded``)."""
    from dm_tune.datasets._bounded import Unreadable, read_checked

    try:
        return read_checked(path.read_bytes(), "label-arrays")
    except Unreadable as e:
        raise DataError(path, str(e), layout) from None


def read_label_arrays(f) -> object:
    """A torch-saved file of label arrays (a binary file object), once the pickle scan has passed
    it, unpickled with torch's weights-only loader: tensors, containers and the numpy arrays those
    files hold, nothing that could run code while loading. Its tensors and arrays are copied whole
    and may hold no more data than the file (``_whole``: a view can be any size over a small
    storage). Raises ``Unreadable`` where it cannot be read so."""
    import warnings

    import torch

    from dm_tune.datasets._bounded import Unreadable
    from dm_tune.datasets._pickles import torch_file_refusal, weights_only_refusal

    if (why := torch_file_refusal(f, "file of label arrays", "label file")) is not None:
        raise Unreadable(why)
    f.seek(0)

    rebuild = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array-unpickling function
    allowed = [np.ndarray, np.dtype, rebuild, (rebuild, "numpy.core.multiarray._reconstruct"),  # numpy 1 name
               *(type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                            "uint32", "uint64", "float16", "float32", "float64"))]
    try:
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            # (torch's warning on a pickle protocol above 2, before it refuses a plain pickle)
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            blob = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as refused:
        try:
            f.seek(0)
            found = torch.serialization.get_unsafe_globals_in_checkpoint(f)
        except Exception:  # noqa: BLE001 - only used to name the culprit
            found = []
        names = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in allowed}
        extra = sorted(g for g in found if g not in names)
        if not extra:
            import zipfile

            f.seek(0)
            why = (weights_only_refusal(refused) if zipfile.is_zipfile(f) else
                   "not in torch.save's format; a plain pickle is not read")
            raise Unreadable(f"could not be read as a torch-saved file of label arrays ({why})") from None
        raise Unreadable(f"refused: holds Python objects other than label arrays ({', '.join(extra[:3])}); "
                         "loading it could run code") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - torch's reader on a damaged file (RuntimeError, struct.error, ...)
        raise Unreadable(f"could not be read as a torch-saved file of label arrays ({first_line(e)})") from None
    size = f.seek(0, 2)
    try:
        return _whole(blob, [size + _WHOLE_SLACK])
    except RecursionError:
        raise Unreadable("refused: holds containers nested thousands deep, which no label file has") from None


# What a label file's arrays may hold beyond its own size, in bytes (headers, alignment).
_WHOLE_SLACK = 1 << 16


def _whole(value: object, left: list[int]) -> object:
    """``value`` with every tensor and array in it (through dicts, lists and tuples) checked and
    copied whole, their bytes counted against ``left[0]`` (a file's own size: an array's data is in
    the file, so a view wider than its storage, or one array listed many times, which the caller
    would turn into as many labels, runs out); raises ``Unreadable`` for anything else than those,
    numbers, strings and None (a storage, which numpy would read item by item), and for a dict key
    that is not a string (a key's text is printed)."""
    import torch

    from dm_tune.datasets._bounded import Unreadable

    if isinstance(value, np.ndarray) and (value.dtype.fields is not None or value.dtype.hasobject):
        # A numpy dtype's pickled state can give it fields of objects, whose bytes numpy reads as
        # pointers: no label array has fields or objects, so none is touched (not even copied).
        raise Unreadable("refused: holds an array of structured or object values, not labels; reading it "
                         "could crash")
    if isinstance(value, (torch.Tensor, np.ndarray)):
        nbytes = value.numel() * value.element_size() if isinstance(value, torch.Tensor) else value.nbytes
        left[0] -= nbytes
        if left[0] < 0:
            raise Unreadable("refused: its arrays hold more data than the file does (an array viewed wider than "
                             "its data, or listed many times)")
        return (value.detach().clone(memory_format=torch.contiguous_format) if isinstance(value, torch.Tensor) else
                np.array(value, order="C"))  # (detached: a tensor saved with requires_grad has no numpy())
    if isinstance(value, dict):
        odd = next((k for k in value if not isinstance(k, str)), None)
        if odd is not None:
            raise Unreadable(f"refused: holds a {type(odd).__name__} key, where label sets are named by strings")
        return {k: _whole(v, left) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_whole(v, left) for v in value] if isinstance(value, list) else tuple(_whole(v, left) for v in value)
    if value is None or isinstance(value, (int, float, str, bytes, np.generic)):
        return value
    raise Unreadable(f"refused: holds a {type(value).__name__}, where a label file holds arrays, lists and numbers")


def _is_int(s: str) -> bool:
    from dm_tune.errors import read_number

    try:
        read_number(s, int)
        return True
    except ValueError:
        return False


def _csv_label(path: Path, line: int, text: str, layout: str) -> int:
    """The label ``text`` on line ``line`` of a .csv/.txt label file (one line named: "8.0", "1_0" or
    a number past any class id was "could not be read as labels" or "holds no integer labels")."""
    from dm_tune.errors import read_number

    try:
        label = read_number(text, int)
    except ValueError:
        label = None
    if label is None or abs(label) > 2**62:
        raise DataError(path, f"line {line}: {text[:40]!r} is not an integer class id", layout)
    return label


NOISE_MODELS: dict[str, NoiseModel] = {
    "none": none,
    "symmetric": symmetric,
    "pair": pair,
    "cifar100-superclass": cifar100_superclass,
    "file": from_file,
}


def check_noise(name: str, rate: float, num_classes: int, class_groups: object = None, prefix: str = "") -> None:
    """Refuse a noise model the dataset cannot take, or a rate at which the labels no longer
    identify the classes (``rate_limit``), as one ConfigError naming ``{prefix}noise(_rate)``."""
    from dm_tune._validate import ConfigError

    if name == "cifar100-superclass" and not class_groups:
        raise ConfigError(f"{prefix}noise", name, "needs a dataset whose classes come in groups (cifar100's "
                          "superclasses); choose symmetric, pair or file noise for this one")
    limit = rate_limit(name, num_classes)
    if limit is not None and rate >= limit:
        raise ConfigError(f"{prefix}noise_rate", rate, f"expected below {limit:.4g} for {name} noise on "
                          f"{num_classes} classes: from {limit:.4g} up a wrong label is at least as common as "
                          "the true one, so the labels no longer identify the classes")


def apply_noise(name: str, clean: np.ndarray, ctx: NoiseContext) -> NoisyLabels:
    noisy = NOISE_MODELS[name](np.asarray(clean, dtype=np.int64), ctx)
    mask = noisy != clean
    return NoisyLabels(noisy, mask, float(mask.mean()) if len(mask) else 0.0)


# --- class imbalance ------------------------------------------------------------------------


def class_counts(available: np.ndarray, kind: str, ratio: float) -> np.ndarray:
    """How many examples to keep per class for an imbalance profile with max/min ``ratio``.

    ``longtail``: counts decay geometrically from class 0 to class C-1.
    ``step``: the last floor(C/2) classes (class 1 of 2) are the minority, 1/ratio of the rest.
    The profile is scaled to the largest size every class can fill, so the kept counts have the
    profile's shape and ratio whatever the classes held (a class that holds fewer than its share
    lowers them all, rather than flattening the profile). A class with no examples stays empty.
    """
    num_classes = len(available)
    if kind == "none" or ratio == 1.0:
        return available.copy()
    if kind == "longtail":
        profile = ratio ** (-np.arange(num_classes) / max(num_classes - 1, 1))
    elif kind == "step":
        minority = np.arange(num_classes) >= num_classes - num_classes // 2
        profile = np.where(minority, 1.0 / ratio, 1.0)
    else:
        raise ValueError(f"unknown imbalance {kind!r}")
    present = available > 0
    if not present.any():
        return available.copy()
    scale = float(np.min(available[present] / profile[present]))
    counts = np.maximum(1, np.round(scale * profile)).astype(np.int64)
    return np.where(present, np.minimum(available, counts), 0).astype(np.int64)


def check_imbalance(available: np.ndarray, kind: str, ratio: float, field: str = "imbalance_ratio") -> None:
    """Refuse a ratio the classes cannot take: where the smallest class would keep under one
    example, it keeps one and the kept ratio is the largest class's size, below the one asked for
    (refused once 1.5 times below, past the counts' rounding; a ConfigError naming ``field``)."""
    from dm_tune._validate import ConfigError

    if kind == "none" or ratio == 1.0:
        return
    kept = class_counts(np.asarray(available), kind, ratio)
    present = kept[kept > 0]
    if present.size and present.max() / present.min() < ratio / 1.5:
        raise ConfigError(field, ratio, f"expected at most about {int(present.max())} for {kind} imbalance on this "
                          f"data: its largest class keeps {int(present.max())} examples, the smallest at least one")


def imbalance_index(labels: np.ndarray, num_classes: int, kind: str, ratio: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of a class-imbalanced subset of ``labels`` (by the clean labels)."""
    available = np.bincount(labels, minlength=num_classes)
    keep = class_counts(available, kind, ratio)
    chosen = [rng.choice(idx, size=int(keep[c]), replace=False)
              for c, idx in enumerate(indices_by_class(labels, range(num_classes)))]
    return np.sort(np.concatenate(chosen))

