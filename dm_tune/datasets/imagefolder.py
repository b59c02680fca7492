"""Any torchvision ImageFolder tree, read lazily from disk (also the image reader Clothing1M uses).

Layout: ``root/train/<class>/*.jpg`` and ``root/test/<class>/*.jpg``, optionally
``root/val/<class>/*.jpg`` (or ``valid/``, ``validation/``: then it is the validation set;
otherwise one is carved from train).
Classes are the sorted folder names of ``train/``. Each image is resized (shorter side to
image_size * 256/224) and centre-cropped to ``image_size`` (dataset_options, default 224), and
returned as a float tensor normalised with the ImageNet statistics, so ``Source.normalise`` is
None. A training split keeps a margin: the centre square of the resized image (256 for 224),
from which the training loop takes a random ``image_size`` crop and flip on the device (the
ImageNet-style protocol), or the centre crop (evaluation, or no augmentation), which is then the
evaluation image exactly.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dm_tune._validate import ConfigError
from dm_tune.datasets._base import DataError, Source, Split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
OPTIONS = ("image_size",)
# The validation split's folder, by the names image sets ship it under (torchvision's and Keras'
# trees use val/, Kaggle's and Roboflow's valid/ or validation/).
VAL_FOLDERS = ("val", "valid", "validation")

LAYOUT = ("<data_root>/train/<class>/<image> and <data_root>/test/<class>/<image> with the same "
          "class folders (optionally <data_root>/val/<class>/<image>, or valid/ or validation/); images "
          + ", ".join(IMAGE_EXTENSIONS))

# A generic from-scratch protocol for a ResNet-18 on a small image set.
DEFAULTS = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4,
            "schedule": "cosine", "batch_size": 64, "epochs": 60}


def image_size_option(name: str, options: Mapping[str, Any]) -> int:
    """The validated ``image_size`` option (the only option image datasets take)."""
    for key, value in options.items():
        if key not in OPTIONS:
            raise ConfigError(f"dataset_options.{key}", value, f"{name} takes: " + ", ".join(OPTIONS))
        if not isinstance(value, int) or isinstance(value, bool) or not 8 <= value <= 2048:
            raise ConfigError(f"dataset_options.{key}", value, "expected an integer in [8, 2048] (pixels)")
    return int(options.get("image_size", 224))


# Pillow's modes of more than 8 bits per channel.
WIDE_MODES = {"I": "32-bit integer", "I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I;16N": "16-bit",
              "F": "32-bit floating point"}


class ImageFiles(Dataset):
    """Images at ``root/<key>``, each read, resized, centre-cropped and normalised on access.

    Keys are kept as one fixed-width bytes array rather than a list of strings, so that a
    million of them cost tens of MB and DataLoader workers do not copy them through refcounts.
    """

    def __init__(self, root: Path, keys: list[str], image_size: int, margin: bool = False) -> None:
        self.root = root
        # (as the file system's bytes: a name that is not UTF-8 comes back as it was)
        self.keys = np.array([os.fsencode(k) for k in keys], dtype=np.bytes_)
        self.image_size = image_size
        self.resize = round(image_size * 256 / 224)
        # With a margin, the centre square of side crop: image_size plus an even margin, so that its
        # centre image_size crop is the evaluation crop pixel for pixel.
        self.crop = image_size + 2 * ((self.resize - image_size) // 2) if margin else image_size
        self.example_shape = (3, image_size, image_size)  # what the model sees (data.input_shape)
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.keys)

    def content(self) -> tuple[np.ndarray, ...]:
        """What the data's fingerprint takes of it: the files' names (``_fingerprint``)."""
        return (self.keys,)

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.keys[i])

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        path, size = self.path(i), self.crop
        try:
            with Image.open(path) as img:
                if img.mode in WIDE_MODES:  # (convert("RGB") clips them to 0..255: a white or black image)
                    raise DataError(path, f"has {img.mode} pixels ({WIDE_MODES[img.mode]}), which dm-tune does not "
                                    "rescale; convert the images to 8-bit", "an 8-bit image file at <data_root>/<key>")
                img.draft("RGB", (self.resize, self.resize))  # JPEG: decode at reduced scale, much faster
                img = img.convert("RGB")
        except (OSError, Image.DecompressionBombError) as e:  # the bomb error is not an OSError
            raise DataError(path, f"could not be read as an image ({e})",
                            "an image file at <data_root>/<key>") from None
        w, h = img.size
        scale = self.resize / min(w, h)
        w, h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((w, h), Image.BILINEAR)
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std


def _hidden(path: Path, under: Path) -> bool:
    """A name starting with a dot below ``under``: a tool's, not the data (.ipynb_checkpoints/,
    macOS's ._x.jpg), as the shell and file browsers hide them."""
    return any(part.startswith(".") for part in path.relative_to(under).parts)


def _images_in(folder: Path) -> list[tuple[Path, int, int]]:
    """The image files under ``folder``, each with its device and inode, through linked
    sub-folders too (as torchvision's ImageFolder walks them: Path.rglob did not, and their images
    were left out without a word), each real folder once. Refused: a link to an image that is not
    there, a sub-folder that cannot be read (os.walk would skip it silently), and a link to a
    folder above the class folder (walked, it would bring other classes' and splits' images into
    this class; a link to the class folder itself adds nothing and is passed over)."""
    own = os.path.realpath(folder)

    def unreadable(e: OSError) -> None:
        if isinstance(e, PermissionError):
            raise e  # told with the data's other unreadable files (data.load_source)
        raise DataError(Path(e.filename or folder), f"cannot be read ({e.strerror or e})", LAYOUT)

    found, seen = [], set()
    for top, dirs, files in os.walk(folder, followlinks=True, onerror=unreadable):
        real = os.path.realpath(top)
        if real != own and os.path.commonpath([real, own]) == real:
            raise DataError(Path(top), f"is a link to {real}, a folder that holds it (a loop)", LAYOUT)
        if real in seen:  # (one folder through two links)
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # (their images are left out: not walked)
        for name in files:
            p = Path(top) / name
            if p.suffix.lower() not in IMAGE_EXTENSIONS or _hidden(p, folder):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                raise DataError(p, "is a link to an image that is not there", LAYOUT) from None
            except PermissionError:
                raise
            except OSError as e:
                raise DataError(p, f"cannot be read ({e.strerror or e})", LAYOUT) from None
            if not stat.S_ISREG(st.st_mode):
                raise DataError(p, "is not a file", LAYOUT)
            found.append((p, st.st_dev, st.st_ino))
    return sorted(found)


def _scan(root: Path, split: str, classes: list[str] | None) -> tuple[list[str], list[str], list[int], np.ndarray]:
    """(classes, keys relative to root, labels, each file's (device, inode)) of ``root/split``;
    checks its class folders."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(folder, "directory not found", LAYOUT)
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not _hidden(p, folder))
    if not found:
        raise DataError(folder, "has no class folders", LAYOUT)
    if classes is not None and found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise DataError(folder, f"class folders differ from train/ (missing: {missing}, extra: {extra})", LAYOUT)
    keys, labels, files = [], [], []
    for label, name in enumerate(found):
        images = _images_in(folder / name)
        if not images:  # in test/ or val/ too: a class its evaluation would silently lack
            raise DataError(folder / name, "has no image files", LAYOUT)
        keys += [p.relative_to(root).as_posix() for p, _, _ in images]
        labels += [label] * len(images)
        files += [(dev, ino) for _, dev, ino in images]
    if not keys:
        raise DataError(folder, "has no image files", LAYOUT)
    return found, keys, labels, np.array(files, dtype=np.uint64).reshape(-1, 2)


def _each_image_once(root: Path, splits: list[tuple[str, list[str], list[int], np.ndarray]]) -> None:
    """Refuse one image file (through links, or hard links) in two splits, or under two classes:
    test images trained on, or an image taught with two labels. In one class of one split, a
    repeat is kept (as torchvision keeps it): the user's own oversampling."""
    files = np.concatenate([f for *_, f in splits])
    split_of = np.repeat(np.arange(len(splits)), [len(f) for *_, f in splits])
    label = np.concatenate([np.asarray(labels, dtype=np.int64) for _, _, labels, _ in splits])
    order = np.lexsort((label, split_of, files[:, 1], files[:, 0]))
    a_, b_ = order[:-1], order[1:]
    same = (files[b_] == files[a_]).all(axis=1) & ((split_of[b_] != split_of[a_]) | (label[b_] != label[a_]))
    if not same.any():
        return
    keys = [k for _, split_keys, _, _ in splits for k in split_keys]
    a, b = sorted((int(a_[np.argmax(same)]), int(b_[np.argmax(same)])))
    what = ("an image in two splits (the evaluation would score images the model trained on)"
            if split_of[a] != split_of[b] else "an image under two classes")
    raise DataError(root / keys[b], f"is the same file as {root / keys[a]} (through a link): {what}", LAYOUT)


def _folder(root: Path, names: tuple[str, ...], what: str) -> str | None:
    """The one folder under root named one of ``names`` in any case (Val/, TRAIN/: a tree from a
    case-insensitive disk, where val/ finds Val/, was read without its validation images here), as
    the file system spells it, or None; two of them refused (which one holds the split is the
    user's to say). ``names`` themselves where root cannot be listed (its error comes later)."""
    try:
        found = sorted(p.name for p in root.iterdir() if p.name.lower() in names and p.is_dir())
    except OSError:
        found = [name for name in names if (root / name).is_dir()]
    if len(found) > 1:
        raise DataError(root, f"has {' and '.join(name + '/' for name in found)}: one {what} folder, "
                        "not several (rename or move the others)", LAYOUT)
    return found[0] if found else None


def _split(root: Path, keys: list[str], labels: list[int], image_size: int, margin: bool = False) -> Split:
    return Split(ImageFiles(root, keys, image_size, margin), torch.tensor(labels, dtype=torch.int64))


def load(root: Path | None, options: Mapping[str, Any], download: bool = False) -> Source:
    image_size = image_size_option("imagefolder", options)
    if root is None:
        raise ConfigError("data_root", None, "imagefolder is read from disk; give --data-root")
    if download:
        raise ConfigError("download", download, "imagefolder cannot be downloaded; put the tree under data_root")
    classes, tr_keys, tr_labels, tr_files = _scan(root, _folder(root, ("train",), "train") or "train", None)
    _, te_keys, te_labels, te_files = _scan(root, _folder(root, ("test",), "test") or "test", classes)
    splits = [("train", tr_keys, tr_labels, tr_files), ("test", te_keys, te_labels, te_files)]
    val, val_folder = None, _folder(root, VAL_FOLDERS, "validation")
    if val_folder is not None:
        _, va_keys, va_labels, va_files = _scan(root, val_folder, classes)
        splits.append(("val", va_keys, va_labels, va_files))
        val = _split(root, va_keys, va_labels, image_size)
    _each_image_once(root, splits)
    return Source(
        name="imagefolder",
        train=_split(root, tr_keys, tr_labels, image_size, margin=True),
        test=_split(root, te_keys, te_labels, image_size),
        val=val,
        num_classes=len(classes),
        input_kind="image",
        default_model="resnet18",
        class_names=tuple(classes),
        defaults=dict(DEFAULTS),
        info={"data_dir": str(root), "image_size": image_size, "official_val": val is not None,
              "val_folder": val_folder},
    )
