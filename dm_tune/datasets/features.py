"""Pre-computed feature vectors from one .npz file (e.g. embeddings exported by another model).

``data_root`` is the .npz file itself or a directory holding ``features.npz``, with arrays
``x_train`` (N, D), ``y_train`` (N,), ``x_test``, ``y_test`` and optionally ``x_val``, ``y_val``
(then the validation set; otherwise one is carved from train) and ``class_names`` (strings).
Labels are integer class ids 0..C-1; C is len(class_names) if given, else the largest training
label + 1. Every class has training examples, and test and validation labels are training classes
(a 1-based file, or a test label the training set never has, is refused, not trained on).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dm_tune._validate import ConfigError
from dm_tune.datasets._base import DataError, Source, Split, read_npz

FILE_NAME = "features.npz"
LAYOUT = (f"<data_root> = a .npz file (or a directory holding {FILE_NAME}) with float arrays "
          "x_train (N, D), x_test (M, D), integer arrays y_train (N,), y_test (M,), optionally "
          "x_val/y_val together and class_names (strings), saved with numpy.savez")

DEFAULTS = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "none",
            "batch_size": 128, "epochs": 60}


# The arrays a features file may hold.
ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "class_names")


def _split(path: Path, arrays: Mapping[str, np.ndarray], name: str, dim: int | None) -> Split:
    x, y = np.asarray(arrays[f"x_{name}"]), np.asarray(arrays[f"y_{name}"])
    if x.ndim != 2 or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(path, f"x_{name} is {x.dtype} {x.shape}, not a 2-D numeric array", LAYOUT)
    if x.shape[1] == 0:  # (trained at chance, with torch's "zero-element tensors" warning)
        raise DataError(path, f"x_{name} has no features (shape {x.shape})", LAYOUT)
    if dim is not None and x.shape[1] != dim:
        raise DataError(path, f"x_{name} has {x.shape[1]} features but x_train has {dim}", LAYOUT)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(path, f"y_{name} is {y.dtype} {y.shape}, not a 1-D array of integer labels", LAYOUT)
    if len(x) != len(y):
        raise DataError(path, f"x_{name} has {len(x)} rows but y_{name} has {len(y)} labels", LAYOUT)
    if len(y) == 0:
        raise DataError(path, f"x_{name} is empty", LAYOUT)
    if y.min() < 0:
        raise DataError(path, f"y_{name} has negative labels", LAYOUT)
    if y.max() > np.iinfo(np.int64).max:  # unsigned: would wrap to negative (a -1 saved as uint64)
        raise DataError(path, f"y_{name} has labels beyond the int64 range (up to {y.max()}: a -1 saved "
                              "as unsigned?)", LAYOUT)
    with np.errstate(over="ignore"):  # values beyond float32's range become inf: refused just below
        x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():  # after the cast: float64 values beyond float32's range become inf
        raise DataError(path, f"x_{name} holds NaN or infinite values (or values beyond float32's range, "
                              f"{np.finfo(np.float32).max:.3g})", LAYOUT)
    return Split(torch.from_numpy(x32), torch.from_numpy(y.astype(np.int64)))


def load(root: Path | None, options: Mapping[str, Any], download: bool = False) -> Source:
    if options:
        key = sorted(options)[0]
        raise ConfigError(f"dataset_options.{key}", options[key], "features takes no options")
    if root is None:
        raise ConfigError("data_root", None, "features is read from disk; give --data-root")
    if download:
        raise ConfigError("download", download, "features cannot be downloaded")
    path = root / FILE_NAME if root.is_dir() else root
    if not path.is_file():
        raise DataError(path, "file not found", LAYOUT)
    arrays = read_npz(path, LAYOUT)
    required = ["x_train", "y_train", "x_test", "y_test"]
    if ("x_val" in arrays) != ("y_val" in arrays):
        required += ["x_val", "y_val"]
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DataError(path, f"lacks the arrays {', '.join(missing)} (present: {', '.join(sorted(arrays))})", LAYOUT)
    unread = sorted(k for k in arrays if k not in ARRAYS)  # (an x_valid was left out: a split was carved instead)
    if unread:
        raise DataError(path, f"holds arrays dm-tune does not read: {', '.join(unread[:5])}"
                              f"{' and more' if len(unread) > 5 else ''} (it reads {', '.join(ARRAYS)})", LAYOUT)
    train = _split(path, arrays, "train", None)
    dim = int(train.inputs.shape[1])  # type: ignore[union-attr]
    test = _split(path, arrays, "test", dim)
    val = _split(path, arrays, "val", dim) if "x_val" in arrays else None
    top = max(int(s.labels.max()) for s in (train, test, val) if s is not None)
    names = None
    if "class_names" in arrays:
        given = np.asarray(arrays["class_names"])
        if given.size > len(train):  # (each class needs an example; 50 million names filled 4 GB as str)
            raise DataError(path, f"class_names has {given.size} names, more than the {len(train)} training "
                                  "examples (every class needs one)", LAYOUT)
        # (bytes, as numpy keeps Python 2's strings and np.array([b"cat"]): "b'cat'" as str)
        names = tuple(n.decode("utf-8", "backslashreplace") if isinstance(n, bytes) else str(n)
                      for n in given.reshape(-1).tolist())
        repeated = sorted(n for n, count in Counter(names).items() if count > 1)
        if repeated or not all(n.strip() for n in names):  # (two classes printed as one, or as nothing)
            what = f"repeats {', '.join(map(repr, repeated[:5]))}" if repeated else "has an empty name"
            raise DataError(path, f"class_names {what}; each class needs a name of its own", LAYOUT)
        if len(names) <= top:
            raise DataError(path, f"class_names has {len(names)} names but labels go up to {top}", LAYOUT)
    num_classes = len(names) if names is not None else int(train.labels.max()) + 1
    if num_classes < 2:
        raise DataError(path, "has a single class", LAYOUT)
    for split, name in ((test, "test"), (val, "val")):
        if split is not None and int(split.labels.max()) >= num_classes:
            raise DataError(path, f"y_{name} has label {int(split.labels.max())}, a class y_train never has "
                                  f"(its labels go up to {num_classes - 1})", LAYOUT)
    present = np.unique(train.labels.numpy())  # sorted (not a bincount: a label may be huge)
    if len(present) < num_classes:
        absent, seen = [], iter(present.tolist())
        nxt = next(seen, None)
        for c in range(num_classes):
            if c == nxt:
                nxt = next(seen, None)
            elif len(absent) < 5:
                absent.append(c)
            else:
                break
        more = num_classes - len(present) - len(absent)
        shown = ", ".join(map(str, absent)) + (f" and {more} more" if more else "")
        raise DataError(path, f"y_train has no examples of class {shown} of 0..{num_classes - 1} (labels are "
                              "class ids 0..C-1, every class in the training set: 1-based labels?)", LAYOUT)
    return Source(
        name="features",
        train=train,
        test=test,
        val=val,
        num_classes=num_classes,
        input_kind="vector",
        default_model="mlp",
        class_names=names,
        defaults=dict(DEFAULTS),
        info={"data_file": str(path), "feature_dim": dim},
    )
