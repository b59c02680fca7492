"""Clothing1M (Xiao et al., 2015): 14 clothing classes, about 1M web images with real label noise.

The official release's folder layout under ``data_root``::

    noisy_label_kv.txt        "images/0/00/xxx.jpg LABEL" per line (the noisy web labels)
    clean_label_kv.txt        the same format, for the human-verified subset
    noisy_train_key_list.txt  one key per line: the training set (trained on with its noisy labels)
    clean_train_key_list.txt  (not used: the paper trains on the noisy set)
    clean_val_key_list.txt    the official clean validation set
    clean_test_key_list.txt   the clean test set
    images/...                the image files, at <data_root>/<key>

``Source.given_noisy`` marks training images whose noisy label differs from their clean label,
and ``Source.noise_known`` says for which images the clean label is known at all (the ones in
clean_label_kv.txt). Images are read lazily by ``imagefolder.ImageFiles`` (resize and centre
crop to ``image_size``, ImageNet normalisation), so ``Source.normalise`` is None.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dm_tune._validate import ConfigError
from dm_tune.datasets._base import DataError, Source, Split
from dm_tune.datasets.imagefolder import ImageFiles, image_size_option

NUM_CLASSES = 14
CLASS_NAMES = ("T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
               "Jacket", "Down Coat", "Suit", "Shawl", "Dress", "Vest", "Underwear")

LAYOUT = ("<data_root>/ with noisy_label_kv.txt and clean_label_kv.txt ('KEY LABEL' lines, "
          "labels 0..13), noisy_train_key_list.txt, clean_val_key_list.txt and "
          "clean_test_key_list.txt (one KEY per line), and each image at <data_root>/<KEY> "
          "(the official Clothing1M release)")

# The paper: ImageNet-pretrained ResNet-50 (give its weights file as `pretrained`), SGD
# (momentum 0.9, the config's default), lr 0.01 divided by 10 at 10k and 15k of 20k iterations
# (50% and 75%: the config's lr_milestones), weight decay 2e-5. The batch size is not stated;
# one epoch of the 1.04M noisy images at batch 64 is 16k iterations, close to the paper's 20k.
DEFAULTS = {"optimizer": "sgd", "lr": 0.01, "weight_decay": 2e-5,
            "schedule": "step", "batch_size": 64, "epochs": 1}


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(path, "file not found", LAYOUT)
    try:
        text = path.read_text(encoding="utf-8-sig")  # (a byte-order mark, as Windows editors write, is no key)
    except UnicodeDecodeError as e:
        raise DataError(path, f"is not UTF-8 text (byte {e.start}: {e.reason})", LAYOUT) from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def read_label_kv(path: Path) -> dict[str, int]:
    """``{key: label}`` from a "KEY LABEL" file, checking every line."""
    out: dict[str, int] = {}
    for n, line in enumerate(_read_lines(path), 1):
        parts = line.split()
        # (ASCII digits only: str.isdigit() also takes characters such as '\u00b2' that int() refuses)
        if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()) or int(parts[1]) >= NUM_CLASSES:
            raise DataError(path, f"line {n} is not 'KEY LABEL' with LABEL in 0..{NUM_CLASSES - 1}: {line!r}", LAYOUT)
        if out.setdefault(parts[0], int(parts[1])) != int(parts[1]):  # the last had silently won
            raise DataError(path, f"line {n} labels {parts[0]!r} {parts[1]}, an earlier line {out[parts[0]]}", LAYOUT)
    return out


def _labelled(path: Path, labels: dict[str, int], labels_file: Path) -> tuple[list[str], torch.Tensor]:
    keys = _read_lines(path)
    unlabelled = [k for k in keys if k not in labels]
    if unlabelled:
        raise DataError(path, f"{len(unlabelled)} keys have no label in {labels_file.name} "
                        f"(first: {unlabelled[0]!r})", LAYOUT)
    if not keys:
        raise DataError(path, "lists no keys", LAYOUT)
    return keys, torch.tensor([labels[k] for k in keys], dtype=torch.int64)


def _check_distinct(root: Path, lists: dict[str, list[str]]) -> None:
    """Refuse a key listed twice in one key list (its image trained or scored twice), or listed in
    two of them (e.g. test images trained on)."""
    seen: dict[str, set[str]] = {}
    for name, keys in lists.items():
        unique = set(keys)
        if len(unique) != len(keys):
            counts = Counter(keys)
            first = next(k for k in keys if counts[k] > 1)
            raise DataError(root / name, f"repeats {len(keys) - len(unique)} keys (first: {first!r}); each key "
                            "belongs on one line", LAYOUT)
        for other, other_keys in seen.items():
            shared = unique & other_keys
            if shared:
                first = next(k for k in keys if k in shared)
                raise DataError(root / name, f"shares {len(shared)} keys with {other} (first: {first!r}); the "
                                "train, val and test key lists must be disjoint", LAYOUT)
        seen[name] = unique


def load(root: Path | None, options: Mapping[str, Any], download: bool = False) -> Source:
    image_size = image_size_option("clothing1m", options)
    if root is None:
        raise ConfigError("data_root", None, "clothing1m is read from disk; give --data-root")
    if download:
        raise ConfigError("download", download, "clothing1m cannot be downloaded; unpack the release under data_root")
    noisy_kv, clean_kv = root / "noisy_label_kv.txt", root / "clean_label_kv.txt"
    noisy_labels, clean_labels = read_label_kv(noisy_kv), read_label_kv(clean_kv)
    tr_keys, tr_y = _labelled(root / "noisy_train_key_list.txt", noisy_labels, noisy_kv)
    va_keys, va_y = _labelled(root / "clean_val_key_list.txt", clean_labels, clean_kv)
    te_keys, te_y = _labelled(root / "clean_test_key_list.txt", clean_labels, clean_kv)
    _check_distinct(root, {"noisy_train_key_list.txt": tr_keys, "clean_val_key_list.txt": va_keys,
                           "clean_test_key_list.txt": te_keys})
    # A cheap check that data_root is the image root: the first image of every split exists
    # (checking all million would take minutes on a network file system).
    for keys in (tr_keys, va_keys, te_keys):
        if not (root / keys[0]).is_file():
            raise DataError(root / keys[0], "image file not found", LAYOUT)

    absent = [c for c, n in enumerate(np.bincount(tr_y.numpy(), minlength=NUM_CLASSES)) if n == 0]
    if absent:  # (a class nothing trains on, which noise would move labels into)
        raise DataError(root / "noisy_train_key_list.txt", f"has no training image of class "
                        f"{', '.join(map(str, absent))} of 0..{NUM_CLASSES - 1} (by {noisy_kv.name}); every class "
                        "needs one", LAYOUT)
    clean = np.array([clean_labels.get(k, -1) for k in tr_keys], dtype=np.int64)
    known = clean >= 0
    given_noisy = known & (clean != tr_y.numpy())
    return Source(
        name="clothing1m",
        train=Split(ImageFiles(root, tr_keys, image_size, margin=True), tr_y),
        test=Split(ImageFiles(root, te_keys, image_size), te_y),
        val=Split(ImageFiles(root, va_keys, image_size), va_y),
        num_classes=NUM_CLASSES,
        input_kind="image",
        default_model="resnet50",
        given_noisy=torch.from_numpy(given_noisy),
        noise_known=torch.from_numpy(known),
        clean_labels=torch.from_numpy(np.where(known, clean, tr_y.numpy())),
        class_names=CLASS_NAMES,
        defaults=dict(DEFAULTS),
        info={"data_dir": str(root), "image_size": image_size,
              "train_with_clean_label": int(known.sum()),
              "train_noise_rate_where_known": float(given_noisy[known].mean()) if known.any() else float("nan")},
    )
