"""The on-disk datasets on tiny fake trees: loading through prepare(), errors, file noise, 1-epoch runs."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch

from dm_tune._validate import ConfigError
from dm_tune.config import TrainConfig
from dm_tune.data import prepare
from dm_tune.datasets import DataError
from dm_tune.datasets.cifar import FINE_TO_COARSE
from dm_tune.noise import read_label_file
from dm_tune.train import train


def config(dataset: str, root: Path, **kw) -> TrainConfig:
    return TrainConfig.from_dict({"dataset": dataset, "data_root": str(root), "device": "cpu",
                                  "num_workers": 0, **kw})


def run_one_epoch(dataset: str, root: Path, **kw) -> None:
    cfg = config(dataset, root, epochs=1, batch_size=4, **kw)
    result = train(cfg, prepare(cfg))
    assert result.status == "finished" and result.epochs_completed == 1
    assert np.isfinite(result.history[0]["train_loss"])
    assert 0.0 <= result.test_accuracy <= 1.0


def expect_data_error(cfg: TrainConfig, path: Path) -> DataError:
    with pytest.raises(DataError) as info:
        prepare(cfg)
    msg, err = str(info.value), info.value
    assert err.path == str(path.resolve()) and "Expected layout" in msg
    # the field the path came from, and the path within it ("data_root /data: train.txt: ...")
    name, value, base = err.field
    inside = path.resolve().relative_to(base).as_posix()
    assert value == str(getattr(cfg, name)) and str(base) == str(Path(value).expanduser().resolve())
    assert msg.startswith(f"{name} {value}" + ("" if inside == "." else f": {inside}") + ": "), msg
    return err


# --- fake trees ------------------------------------------------------------------------------


def _dump(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj))


def _images(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def make_cifar10(root: Path) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):  # 10 images per batch, one per class: 50 training images
        _dump(base / f"data_batch_{i}", {"data": _images(10, rng), "labels": list(range(10))})
    _dump(base / "test_batch", {"data": _images(20, rng), "labels": [i % 10 for i in range(20)]})
    _dump(base / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return root


def make_cifar100(root: Path, coarse: bool = True, per_class: int = 2) -> Path:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    fine = [i % 100 for i in range(100 * per_class)]  # per_class images per fine class
    train = {"data": _images(100 * per_class, rng), "fine_labels": fine}
    if coarse:  # a deliberately non-standard grouping, to see it is read from the pickle
        train["coarse_labels"] = [f // 5 for f in fine]
    _dump(base / "train", train)
    _dump(base / "test", {"data": _images(100, rng), "fine_labels": list(range(100))})
    _dump(base / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                          "coarse_label_names": [f"g{i}" for i in range(20)]})
    return root


def _write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (40, 30)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


CLOTHING_TRAIN = 28  # two per class
CLOTHING_CLEAN_KNOWN = 10  # of the training images, the first 10 have a clean label


def make_clothing1m(root: Path) -> Path:
    rng = np.random.default_rng(2)
    def key(split: str, i: int) -> str:
        return f"images/{i % 3}/{i:02d}/{split}{i}.{'jpg' if i % 2 else 'png'}"

    train = [key("tr", i) for i in range(CLOTHING_TRAIN)]
    val = [key("va", i) for i in range(14)]
    test = [key("te", i) for i in range(14)]
    for k in train + val + test:
        _write_image(root / k, rng)
    noisy = [f"{k} {i % 14}" for i, k in enumerate(train)]
    # Clean labels for the first 10 training images: the even ones agree with the noisy label.
    clean = [f"{k} {i % 14 if i % 2 == 0 else (i + 1) % 14}" for i, k in enumerate(train[:CLOTHING_CLEAN_KNOWN])]
    clean += [f"{k} {i}" for i, k in enumerate(val)] + [f"{k} {13 - i}" for i, k in enumerate(test)]
    (root / "noisy_label_kv.txt").write_text("\n".join(noisy) + "\n")
    (root / "clean_label_kv.txt").write_text("\n".join(clean) + "\n")
    (root / "noisy_train_key_list.txt").write_text("\n".join(train) + "\n")
    (root / "clean_train_key_list.txt").write_text("\n".join(train[:CLOTHING_CLEAN_KNOWN]) + "\n")
    (root / "clean_val_key_list.txt").write_text("\n".join(val) + "\n")
    (root / "clean_test_key_list.txt").write_text("\n".join(test) + "\n")
    return root


def make_imagefolder(root: Path, with_val: bool = False) -> Path:
    rng = np.random.default_rng(3)
    for split, n in (("train", 3), ("test", 2)) + ((("val", 1),) if with_val else ()):
        for cls in ("ant", "bee", "cat"):
            for i in range(n):
                _write_image(root / split / cls / f"{i}.{'jpg' if i % 2 else 'png'}", rng, (24, 20))
    return root


POSITIVE = ("a great film, wonderful acting", "loved it, brilliant and moving", "superb, great fun")
NEGATIVE = ("a terrible film, awful acting", "hated it, boring and dull", "awful, waste of time<br />bad")


def make_imdb(parent: Path) -> Path:
    root = parent / "aclImdb"
    for split, n in (("train", 10), ("test", 5)):
        for name, texts in (("pos", POSITIVE), ("neg", NEGATIVE)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}_{7 if name == 'pos' else 2}.txt").write_text(f"{texts[i % 3]} review {i}")
    (root / "train" / "unsup").mkdir()  # present in the release, ignored
    return parent


def make_features(root: Path, with_val: bool = False) -> Path:
    rng = np.random.default_rng(4)
    arrays = {"x_train": rng.normal(size=(30, 5)), "y_train": np.arange(30) % 3,
              "x_test": rng.normal(size=(9, 5)).astype(np.float32), "y_test": np.arange(9) % 3,
              "class_names": np.array(["r", "g", "b"])}
    if with_val:
        arrays |= {"x_val": rng.normal(size=(6, 5)), "y_val": np.arange(6) % 3}
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "features.npz", **arrays)
    return root


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory) -> Path:
    return make_cifar10(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="module")
def clothing_root(tmp_path_factory) -> Path:
    return make_clothing1m(tmp_path_factory.mktemp("clothing1m"))


@pytest.fixture(scope="module")
def imdb_root(tmp_path_factory) -> Path:
    return make_imdb(tmp_path_factory.mktemp("imdb"))


@pytest.mark.parametrize(("name", "make"), [("cifar10", make_cifar10), ("cifar100", make_cifar100),
                                            ("clothing1m", make_clothing1m), ("imagefolder", make_imagefolder),
                                            ("imdb", make_imdb), ("features", make_features)])
def test_the_datasets_that_num_workers_applies_to_are_the_ones_read_a_batch_at_a_time(tmp_path, name, make):
    """``num_workers`` is refused before loading for the datasets outside _names.STREAMED (it was
    accepted for CIFAR, IMDB and features files, held in memory, where it changes nothing)."""
    from dm_tune._names import STREAMED

    (tmp_path / name).mkdir()
    options = {"dims": 4} if name == "imdb" else {}  # (20 texts)
    data = prepare(config(name, make(tmp_path / name), dataset_options=options))
    streamed = [not split.in_memory for split in (data.train, data.val, data.test)]
    assert streamed == [name in STREAMED] * 3


def test_the_class_counts_recommend_holds_are_the_loaders(tmp_path):
    """``_names.FIXED_CLASSES`` (recommend refuses a query whose class count contradicts its
    dataset) is a light copy of the loaders' class counts: each is what its loader gives, and
    every classification dataset not in it takes its classes from its files (two trees of the
    same layout with other class counts load with those counts)."""
    from dm_tune._names import DATASET_NAMES, FIXED_CLASSES, task_of
    from dm_tune.data import load_source

    makers = {"cifar10": make_cifar10, "cifar100": make_cifar100, "clothing1m": make_clothing1m, "imdb": make_imdb}
    for name, classes in FIXED_CLASSES.items():
        root = makers[name](tmp_path / name) if name in makers else None
        options = {"dataset_options": {"dims": 4}} if name == "imdb" else {}  # (20 texts)
        source = load_source(config(name, root, **options) if root else TrainConfig.from_dict({"dataset": name}))
        assert source.num_classes == classes, name
    from_files = {"imagefolder": make_imagefolder, "features": make_features}
    assert sorted(set(FIXED_CLASSES) | set(from_files)) == sorted(d for d in DATASET_NAMES
                                                                  if task_of(d) == "classification")
    for name, make in from_files.items():
        assert load_source(config(name, make(tmp_path / name))).num_classes == 3, name


# --- CIFAR ------------------------------------------------------------------------------------


def test_cifar_class_names_stored_as_bytes_are_text(tmp_path):
    root = make_cifar10(tmp_path)
    _dump(root / "cifar-10-batches-py" / "batches.meta", {"label_names": [f"c{i}".encode() for i in range(10)]})
    assert prepare(config("cifar10", root)).info["class_names"] == [f"c{i}" for i in range(10)]  # not "b'c0'"


def test_cifar10_loads_as_uint8_images(cifar10_root):
    data = prepare(config("cifar10", cifar10_root))
    assert data.num_classes == 10 and data.input_kind == "image" and data.default_model == "resnet20"
    assert data.train.inputs.dtype == torch.uint8 and data.input_shape == (3, 32, 32)
    assert len(data.train) == 40 and len(data.val) == 10 and len(data.test) == 20
    assert data.normalise is not None and len(data.normalise[0]) == 3
    assert data.defaults["optimizer"] == "sgd" and data.defaults["schedule"] == "step"
    labels = torch.cat([data.train.labels, data.val.labels])
    assert sorted(labels.tolist()) == sorted(list(range(10)) * 5)


def test_cifar10_missing_or_damaged_batch(tmp_path):
    root = make_cifar10(tmp_path)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(b"not a pickle")
    expect_data_error(config("cifar10", root), batch)
    # text whose "h" reads as a reference to a stored object: was refused as "a object used twice by
    # reference", as if the file were crafted
    batch.write_bytes(b"hello world\n")
    assert "could not be read as a CIFAR pickle" in str(expect_data_error(config("cifar10", root), batch))
    batch.unlink()
    expect_data_error(config("cifar10", root), batch)
    with pytest.raises(ConfigError, match="dataset_options.size"):
        prepare(config("cifar10", root, dataset_options={"size": 1}))


def _shared_tree(depth: int) -> list:
    """A list of 2**depth leaves that pickles in a few bytes a level: each level is one list
    repeated by reference."""
    tree: list = [0]
    for _ in range(depth):
        tree = [tree, tree]
    return tree


@pytest.mark.parametrize(("name", "blob", "words"), [
    # float labels were truncated to classes; string labels a numpy traceback; an empty batch was taken
    ("data_batch_2", {"data": "images", "labels": [i + 0.5 for i in range(10)]}, "'labels' holds float64 values"),
    ("data_batch_2", {"data": "images", "labels": [str(i) for i in range(10)]}, "'labels' holds <U1 values"),
    ("data_batch_2", {"data": np.zeros((0, 3072), np.uint8), "labels": []}, "holds no images"),
    ("batches.meta", {"label_names": [f"c{i}" for i in range(5)]}, "'label_names' has 5 names, not 10"),
    # each of these was a traceback (ragged: numpy's inhomogeneous shape; names: a TypeError), or
    # (one label per row) "has 10 images but 10 labels"
    ("data_batch_2", {"data": "images", "labels": [[1], [1, 2]] + list(range(2, 10))}, "'labels' is a ragged list"),
    ("data_batch_2", {"data": "images", "labels": [[i] for i in range(10)]}, "'labels' has shape (10, 1), not (10,)"),
    ("batches.meta", {"label_names": None}, "'label_names' is NoneType, not a list of 10 class names"),
    ("batches.meta", {"label_names": 10}, "'label_names' is int, not a list of 10 class names"),
    # rows or ids as lists of one pickled list repeated by reference: any size from a small file
    ("data_batch_2", {"data": [bytes(3072)] * 10, "labels": list(range(10))},
     "refused: a long text used twice by reference, which no CIFAR pickle has"),
    ("data_batch_2", {"data": [bytes(3072) + bytes([i]) for i in range(10)], "labels": list(range(10))},
     "'data' is list, not a uint8 array"),
    ("data_batch_2", {"data": "images", "labels": list(range(9)) + ["a" * 1000]},  # (widened: 10 x 1000 values)
     "'labels' holds more than one class id per image (lists nested deeper, or long text)"),
    ("data_batch_2", {"data": "images", "labels": [np.asarray("a" * 1000)] * 10},  # (one 0-d array, shared)
     "'labels' holds more than one class id per image (lists nested deeper, or long text)"),
    ("data_batch_2", {"data": "images", "labels": [list(range(100)) for _ in range(10)]},
     "'labels' holds more than one class id per image (lists nested deeper"),
    ("data_batch_2", {"data": "images", "labels": [_shared_tree(20)] * 10},
     "refused: a list used twice by reference, which no CIFAR pickle has"),
    ("batches.meta", {"label_names": [_shared_tree(20)] * 10},
     "refused: a list used twice by reference, which no CIFAR pickle has"),
    ("batches.meta", {"label_names": [[str(i)] for i in range(10)]},
     "'label_names' holds list where class names should be"),
])
def test_cifar10_labels_and_names_are_checked(tmp_path, name, blob, words):
    root = make_cifar10(tmp_path)
    path = root / "cifar-10-batches-py" / name
    if isinstance(blob.get("data"), str):
        blob = {**blob, "data": _images(10, np.random.default_rng(1))}
    _dump(path, blob)
    assert words in str(expect_data_error(config("cifar10", root), path))


def test_a_cifar_download_without_the_internet_is_one_line(tmp_path, monkeypatch):
    """torchvision's download raised urllib's URLError through the CLI: a traceback. (The download
    is mocked to fail as it does offline: this machine has no internet to fail against.)"""
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "__init__", offline)
    err = expect_data_error(config("cifar10", tmp_path / "new", download=True), tmp_path / "new")
    assert "could not download CIFAR10 there (URLError" in str(err) and "needs the internet" in str(err)


def test_cifar100_groups_from_coarse_labels_and_superclass_noise(tmp_path):
    root = make_cifar100(tmp_path)
    data = prepare(config("cifar100", root, val_fraction=0.0))
    assert data.num_classes == 100 and data.default_model == "resnet44"
    assert len(data.train) == 200 and len(data.test) == 100 and len(data.val) == 0

    # (fewer than half of a class is relabelled: none of these two images a class, at any rate)
    assert not prepare(config("cifar100", root, val_fraction=0.0, noise="cifar100-superclass",
                              noise_rate=0.45)).is_noisy.any()
    root = make_cifar100(tmp_path / "three", per_class=3)
    noisy = prepare(config("cifar100", root, val_fraction=0.0, noise="cifar100-superclass", noise_rate=0.45))
    clean, labels = noisy.clean_train_labels, noisy.train.labels
    flipped = labels != clean
    assert int(flipped.sum()) == 40  # 20 superclasses x 2 paired classes x round(0.45 * 3)
    assert torch.equal(labels[flipped] // 5, clean[flipped] // 5)  # only within the pickle's groups
    assert torch.equal(noisy.is_noisy, flipped)


def test_cifar100_superclass_table_fallback(tmp_path):
    from dm_tune.data import load_source

    source = load_source(config("cifar100", make_cifar100(tmp_path, coarse=False)))
    assert source.class_groups is not None and len(source.class_groups) == 20
    assert all(len(g) == 5 for g in source.class_groups)
    assert all(FINE_TO_COARSE[f] == g for g, group in enumerate(source.class_groups) for f in group)


@pytest.mark.parametrize(("coarse", "words"), [
    (["x"] * 200, "'coarse_labels' holds <U1 values, not integer class ids"),  # was numpy's ValueError
    ([f // 5 + 0.7 for f in range(200)], "'coarse_labels' holds float64 values"),  # was truncated silently
    (list(range(20)), "has 200 images but 20 labels in 'coarse_labels'"),
])
def test_cifar100_coarse_labels_are_checked(tmp_path, coarse, words):
    root = make_cifar100(tmp_path)
    path = root / "cifar-100-python" / "train"
    blob = pickle.loads(path.read_bytes())
    _dump(path, {**blob, "coarse_labels": coarse})
    assert words in str(expect_data_error(config("cifar100", root), path))


def test_cifar_pickle_with_a_planted_object_is_refused(tmp_path):
    """The batches were read with pickle.load: a planted object ran code while loading."""
    root = make_cifar10(tmp_path)
    marker = tmp_path / "ran"
    path = root / "cifar-10-batches-py" / "data_batch_1"
    _dump(path, {"data": _Planted(marker), "labels": list(range(10))})
    message = str(expect_data_error(config("cifar10", root), path))
    assert not marker.exists()
    assert "\n" not in message and "refused: holds Python objects other than arrays (pathlib.Path.touch)" in message


class _Py2Array:
    """Pickles as numpy arrays did in the Python 2 cPickles of the releases: numpy 1's
    _reconstruct, the typecode and the raw bytes as str (latin1), pickle protocol 2."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __reduce__(self):
        rebuild = np.ndarray.__reduce__(np.zeros(1))[0]
        raw = self.array.tobytes().decode("latin1")
        return rebuild, (np.ndarray, (0,), "b"), (1, self.array.shape, self.array.dtype, False, raw)


def test_cifar_pickles_in_the_releases_format_load(tmp_path):
    """The restricted unpickler takes what the real files name (numpy.core.multiarray._reconstruct,
    numpy.ndarray, numpy.dtype) and the str data of a Python 2 pickle."""
    root = make_cifar10(tmp_path)
    base = root / "cifar-10-batches-py"
    images = _images(10, np.random.default_rng(9))
    blob = {"batch_label": "training batch 1 of 5", "data": _Py2Array(images), "labels": list(range(10)),
            "filenames": [f"f{i}.png" for i in range(10)]}
    text = pickle.dumps(blob, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in text and b"_codecs" not in text
    (base / "data_batch_1").write_bytes(text)
    data = prepare(config("cifar10", root, val_fraction=0.0))
    assert torch.equal(data.train.inputs[:10], torch.from_numpy(images.reshape(-1, 3, 32, 32)))


def test_cifar100_missing_meta(tmp_path):
    root = make_cifar100(tmp_path)
    (root / "cifar-100-python" / "meta").unlink()
    expect_data_error(config("cifar100", root), root / "cifar-100-python" / "meta")


# --- label files (CIFAR-N and plain lists) ---------------------------------------------------


def test_file_noise_from_cifar_n_dict_npy_and_csv(cifar10_root, tmp_path):
    clean = prepare(config("cifar10", cifar10_root, val_fraction=0.0)).train.labels.numpy()
    rng = np.random.default_rng(5)
    worse = np.where(rng.random(50) < 0.4, (clean + 1) % 10, clean)
    pt = tmp_path / "CIFAR-10_human.pt"
    torch.save({"worse_label": worse, "aggre_label": clean.copy(), "clean_label": clean.copy()}, pt)
    np.save(tmp_path / "worse.npy", worse)
    (tmp_path / "worse.csv").write_text("index,label\n" + "".join(f"{i},{y}\n" for i, y in enumerate(worse)))
    (tmp_path / "worse.txt").write_text("".join(f"{y}\n" for y in worse))
    # a spreadsheet's "CSV UTF-8", no header: its byte order mark made the first label a header
    (tmp_path / "bom.csv").write_text("".join(f"{y}\n" for y in worse), encoding="utf-8-sig")

    for path, key in ((pt, "worse_label"), (tmp_path / "worse.npy", None), (tmp_path / "worse.csv", None),
                      (tmp_path / "worse.txt", None), (tmp_path / "bom.csv", None)):
        assert np.array_equal(read_label_file(path, key), worse)
        data = prepare(config("cifar10", cifar10_root, val_fraction=0.0, noise="file",
                              noise_file=str(path), noise_key=key))
        assert np.array_equal(data.train.labels.numpy(), worse)
        assert np.array_equal(data.is_noisy.numpy(), worse != clean)
    assert np.array_equal(read_label_file(pt, "clean_label"), clean)
    # a plain list in another order (here: every label moved to the next class) trained at a realised
    # rate of 1.0 without a word, where a synthetic rate of 0.9 is refused
    np.save(tmp_path / "shifted.npy", (clean + 1) % 10)
    with pytest.raises(DataError, match=r"its labels differ from the dataset's at 100.0% of the training examples, "
                                        r"as often as random labels would \(90.0%\): labels of another dataset, "
                                        r"or in another order\? Expected layout: one label"):
        prepare(config("cifar10", cifar10_root, val_fraction=0.0, noise="file",
                       noise_file=str(tmp_path / "shifted.npy")))
    # a file whose own clean labels are not the dataset's (another dataset's, or shuffled): refused
    shuffled = tmp_path / "shuffled.pt"
    torch.save({"worse_label": worse, "clean_label": np.roll(clean, 1)}, shuffled)
    with pytest.raises(DataError, match=r"its clean_label disagrees with the dataset's labels at \d+ of 50"):
        prepare(config("cifar10", cifar10_root, val_fraction=0.0, noise="file", noise_file=str(shuffled),
                       noise_key="worse_label"))
    # a coarse (superclass) label set given to the fine classes, noisy or clean: in range, but the superclasses
    coarse = tmp_path / "CIFAR-100_human.pt"
    torch.save({"noisy_coarse_label": clean // 2, "clean_coarse_label": clean // 2, "clean_label": clean}, coarse)
    for key in ("noisy_coarse_label", "clean_coarse_label"):
        with pytest.raises(DataError, match=f"its {key} is a 20-superclass label set, but the dataset trains its "
                           "10 fine classes; choose a fine label set such as noisy_label"):
            prepare(config("cifar10", cifar10_root, val_fraction=0.0, noise="file", noise_file=str(coarse),
                           noise_key=key))
    # another dataset's file, chosen by its clean key: the clean labels are compared whatever the key
    with pytest.raises(DataError, match=r"its clean_label disagrees with the dataset's labels at \d+ of 50"):
        prepare(config("cifar10", cifar10_root, val_fraction=0.0, noise="file", noise_file=str(shuffled),
                       noise_key="clean_label"))


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_label_file_pickled_without_torch_is_one_line(tmp_path, protocol):
    """A .pt dict written with pickle.dump, not torch.save: torch's loader cannot read it; one line
    that says so, without torch's warning on the pickle protocol, and nothing planted runs."""
    path = tmp_path / "labels.pt"
    marker = tmp_path / "ran"
    for blob in ({"worse_label": np.arange(12) % 10}, {"worse_label": _Planted(marker)}):
        with path.open("wb") as f:
            pickle.dump(blob, f, protocol=protocol)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(DataError, match=r"could not be read as a torch-saved file of label arrays|refused"):
                read_label_file(path, "worse_label")
    assert not marker.exists()


# Pickles that reach numpy's own dtype: an object dtype whose flags its pickled state clears turns
# 8 bytes into a pointer (numpy's scalar(), or an array's data), and an int dtype takes object
# fields from its state. Each crashed the process or ran code through the CIFAR batches' unpickler.
_CRAFTED = """
import pickle, struct, sys
import numpy as np
rebuild = np.ndarray.__reduce__(np.zeros(1))[0]
scalar = np.float64(1).__reduce__()[0]
kind = sys.argv[2]
class DT:
    def __init__(self, spec, state): self.spec, self.state = spec, state
    def __reduce__(self): return (np.dtype, (self.spec, False, True), self.state)
pointer = struct.pack("<Q", 0x4141414141414141)
cleared = DT("O8", (3, "|", None, None, None, -1, -1, 0))
fields = DT("i8", (3, "<", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 63))
class Made:
    def __reduce__(self):
        if kind == "scalar":
            return (scalar, (cleared, pointer))
        dtype = cleared if kind == "array" else fields
        return (rebuild, (np.ndarray, (0,), b"b"), (1, (1,), dtype, False, pointer))
with open(sys.argv[1], "wb") as f:
    pickle.dump({"data": Made(), "labels": [0]}, f, protocol=2)
"""


def test_an_array_whose_pickled_state_is_set_twice_is_refused(tmp_path):
    """numpy frees an array's buffer when its state is set again, under any view a pickle took of
    it (read through an allowed function, that was a read of freed memory: a crash). A pickle that
    BUILDs one array twice is refused; so is a dtype whose items have no size (any count of them
    from no bytes: a names list that filled the memory)."""
    from dm_tune.datasets.cifar import _Dtype, _Refused, _unpickle

    def array(state: bytes) -> bytes:  # (protocol 2 opcodes by hand: pickle.dumps never builds twice)
        dtype = b"cnumpy\ndtype\nU\x02u1\x89\x88\x87R"
        return b"(K\x01K\x01\x85" + dtype + b"\x89U\x01" + state + b"tb"
    stream = (b"\x80\x02}U\x04data" + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
              + b"q\x00" + array(b"x") + b"h\x00" + array(b"y") + b"0s.")
    once = tmp_path / "once"
    once.write_bytes(stream.replace(b"h\x00" + array(b"y") + b"0", b""))
    assert np.asarray(_unpickle(once, ("data",), "batch")["data"]).tolist() == [ord("x")]
    twice = tmp_path / "twice"
    twice.write_bytes(stream)
    with pytest.raises(DataError, match=r"refused: .*\(an array whose state is set twice\)"):
        _unpickle(twice, ("data",), "batch")
    for spec in ("S", "S0", "U", "V8", "O", "(2,)i8", "i8,i8"):
        with pytest.raises(_Refused):
            _Dtype(spec)


@pytest.mark.parametrize("kind", ["scalar", "array", "fields"])
def test_a_crafted_numpy_dtype_in_a_cifar_pickle_is_refused_not_run(tmp_path, kind):
    """Read in a child process: a crash must fail the test, not end the test run."""
    import subprocess
    import sys

    path = tmp_path / "data_batch_1"
    subprocess.run([sys.executable, "-c", _CRAFTED, str(path), kind], check=True)
    reader = ("import sys; from pathlib import Path; from dm_tune.datasets.cifar import _unpickle; "
              "_unpickle(Path(sys.argv[1]), ('data', 'labels'), 'batch')")
    proc = subprocess.run([sys.executable, "-c", reader, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-500:])  # an exception, not a signal
    assert "DataError" in proc.stderr and "refused: holds Python objects other than arrays (numpy.dtype" in proc.stderr


def test_a_cifar_pickle_of_plain_arrays_loads_in_every_protocol(tmp_path):
    """The checked stand-ins for numpy's dtype, array and scalar rebuild what numpy pickles as
    numpy's own unpickling does: arrays of every plain kind, in both byte orders (numpy makes them
    native), Fortran order, and numpy scalars."""
    from dm_tune.datasets.cifar import _unpickle

    arrays = {"u8": np.arange(6, dtype=np.uint8).reshape(2, 3), "i8be": np.arange(4, dtype=">i8"),
              "f4": np.linspace(0, 1, 5, dtype=np.float32), "b": np.array([True, False]),
              "s": np.array(["ab", "c"]), "fortran": np.asfortranarray(np.arange(6).reshape(2, 3)),
              "scalars": [np.int64(3), np.float32(0.5)]}
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"p{protocol}"
        with path.open("wb") as f:
            pickle.dump(arrays, f, protocol=protocol)
        blob = _unpickle(path, tuple(arrays), "batch")
        reference = pickle.loads(path.read_bytes())
        for key, value in arrays.items():
            assert np.array_equal(np.asarray(blob[key]), np.asarray(value)), (protocol, key)
            assert np.asarray(blob[key]).dtype == np.asarray(reference[key]).dtype, (protocol, key)
    object_array = tmp_path / "objects"
    with object_array.open("wb") as f:
        pickle.dump({"data": np.array([1, "x"], dtype=object)}, f, protocol=2)
    with pytest.raises(DataError, match=r"refused: holds Python objects other than arrays \(numpy.dtype\('O8'\)\)"):
        _unpickle(object_array, ("data",), "batch")


_FIELDS = """
import struct, sys
import numpy as np, torch
rebuild = np.ndarray.__reduce__(np.zeros(1))[0]
class Objects:
    def __reduce__(self): return (np.dtype, ("O8", False, True))
class Fielded:  # an int dtype given a field of objects by its pickled state
    def __reduce__(self): return (np.dtype, ("i8", False, True), (3, "<", None, ("a",), {"a": (Objects(), 0)}, 8, 1, 0))
class Labels:
    def __reduce__(self):
        return (rebuild, (np.ndarray, (0,), b"b"), (1, (4,), Fielded(), False, struct.pack("<Q", 0x41414141) * 4))
torch.save({"worse_label": Labels(), "clean_label": np.arange(4) % 3}, sys.argv[1])
"""


def test_a_label_file_array_with_fields_is_refused(tmp_path):
    """torch's loader takes numpy's dtype, whose pickled state may give it fields of objects, whose
    bytes numpy reads as pointers; no label array has fields, so such a file is refused whole
    (read in a child process: a crash must fail the test, not end the run)."""
    import subprocess
    import sys

    path = tmp_path / "labels.pt"
    subprocess.run([sys.executable, "-c", _FIELDS, str(path)], check=True)
    reader = ("import sys; from pathlib import Path; from dm_tune.noise import read_label_file; "
              "read_label_file(Path(sys.argv[1]), sys.argv[2])")
    for key in ("worse_label", "clean_label"):
        proc = subprocess.run([sys.executable, "-c", reader, str(path), key], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 1 and "refused: holds an array of structured or object values" in proc.stderr, \
            (proc.returncode, proc.stderr[-300:])
    plain = tmp_path / "plain.pt"
    torch.save({"worse_label": np.zeros(3, dtype=[("a", "<i8")])}, plain)  # (refused by torch's loader itself)
    with pytest.raises(DataError, match=r"could not be read as a torch-saved file of label arrays \(torch's "
                                        r"weights-only loader refused it: Can only build Tensor, .*VoidDType"):
        read_label_file(plain, "worse_label")


def test_labels_pickled_as_numpy_scalars_or_zero_d_arrays_load(tmp_path):
    root = make_cifar10(tmp_path)
    path = root / "cifar-10-batches-py" / "data_batch_2"
    rng = np.random.default_rng(1)
    for labels in ([np.array(i) for i in range(10)], [np.int64(i) for i in range(10)]):
        _dump(path, {"data": _images(10, rng), "labels": labels})
        assert len(prepare(config("cifar10", root)).train) > 0


def test_a_pickle_calling_codecs_for_anything_but_latin1_bytes_is_refused(tmp_path):
    """Protocol 2 pickles bytes as _codecs.encode(text, 'latin1'); with any codec allowed, 'hex'
    chained doubled a string at each call (a small file filled the memory)."""
    from dm_tune.datasets.cifar import _unpickle

    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02}U\x04datac_codecs\nencode\nU\x01aU\x03hex\x86Rs.")
    with pytest.raises(DataError, match=r"refused: a call of _codecs.encode with a codec other than latin1"):
        _unpickle(path, ("data",), "batch")
    path.write_bytes(b"\x80\x02}U\x04datac_codecs\nencode\nU\x01aU\x06latin1\x86Rs.")
    assert _unpickle(path, ("data",), "batch")["data"] == b"a"
    # BUILD on a stand-in function set its attributes for the rest of the process: refused
    path.write_bytes(b"\x80\x02}U\x04datac_codecs\nencode\n}U\x01xK\x01sbs.")
    with pytest.raises(DataError, match=r"refused: .*\(state for a function\)"):
        _unpickle(path, ("data",), "batch")


def _doubled_tuple(depth: int) -> bytes:
    """Opcodes of t = (), then t = (t, t) ``depth`` times through the memo: a few bytes a level,
    and a tuple whose hash (not cached) and repr take 2^depth steps."""
    return b")q\x010" + b"h\x01h\x01\x86q\x010" * depth + b"h\x01"  # (each level's tuple popped, then got)


# Each: a protocol 2 CIFAR-like dict that hashes or prints such a tuple while it loads.
_DOUBLED = {
    "dict key": b"\x80\x02}" + _doubled_tuple(64) + b"K\x01s.",
    "dict built at once": b"\x80\x02(U\x04dataK\x01" + _doubled_tuple(64) + b"K\x02d.",
    "set item": b"\x80\x04\x8f(" + _doubled_tuple(64) + b"\x90.",
    "frozenset item": b"\x80\x04}U\x04data(" + _doubled_tuple(64) + b"\x91s.",
    "codec name": b"\x80\x02}U\x04datac_codecs\nencode\nU\x01a" + _doubled_tuple(64) + b"\x86Rs.",
}


def _refusal_in_child(call: str, path: Path) -> str:
    """What ``call`` (a statement on ``path``, in a child process) printed of the DataError or
    ValueError it raised: a hang fails the test after 60 s instead of stopping the suite."""
    import subprocess
    import sys

    code = ("import sys\nfrom pathlib import Path\nfrom dm_tune.datasets import DataError\n"
            "from dm_tune.datasets.cifar import _unpickle\nfrom dm_tune.noise import read_label_file\n"
            "from dm_tune.models import load_pretrained\npath = Path(sys.argv[1])\n"
            f"try:\n    {call}\nexcept (DataError, ValueError) as e:\n    print(e)\n")
    try:
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{call}: still loading {path.name} after 60 s")
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("case", sorted(_DOUBLED))
def test_a_cifar_pickle_hashing_a_tuple_nested_by_reference_is_refused_at_once(tmp_path, case):
    """The unpickler hashes every dict key and set item it builds; a tuple nesting itself by
    reference 64 times would take 2^64 steps (the process hung), and so would the repr of a codec
    name in the refusal. Refused before anything is built: no container is shared by reference."""
    path = tmp_path / "batch"
    path.write_bytes(_DOUBLED[case])
    out = _refusal_in_child("_unpickle(path, ('data',), 'batch')", path)
    assert "refused: a tuple used twice by reference, which no CIFAR pickle has (loading it could take" in out, out


def test_a_refused_codec_name_is_named_by_its_type_not_printed():
    """The refusal of a codec other than latin1 showed the name's repr: of a tuple nested in itself
    by reference, text of 2^64 parts (run in a child process: a hang fails the test)."""
    import subprocess
    import sys

    code = ("from dm_tune.datasets.cifar import _latin1, _Refused\nt = ()\nfor _ in range(64):\n    t = (t, t)\n"
            "try:\n    _latin1('a', t)\nexcept _Refused as e:\n    print(e)\n")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("still printing the codec name after 60 s")
    assert out.stdout.strip() == "_codecs.encode(str, tuple)", (out.stdout, out.stderr)


def test_the_files_the_loaders_read_pass_the_scan(tmp_path):
    """What the scan lets through: CIFAR-like batches and plain numpy arrays in every pickle
    protocol, tuple keys, strings and small tuples repeated by reference, torch.save'd state
    dicts and label files in both of torch's formats."""
    import io

    from dm_tune.datasets._pickles import unsafe_pickle, unsafe_torch_file

    pair, name = (1, 2), "airplane"
    blobs = [{(1, 2): 3, "pairs": [pair] * 1000, "names": [name] * 1000, "set": {pair}},
             {"labels": list(range(50_000)), "index": {(i, i + 1): i for i in range(1000)},
              "key": {tuple(range(900)): 1}},
             {"data": np.zeros((4, 3072), np.uint8), "fortran": np.asfortranarray(np.ones((3, 2), ">i8")),
              "scalar": np.float32(3), "filenames": [b"a.png"] * 4}]
    for blob in blobs:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            assert unsafe_pickle(io.BytesIO(pickle.dumps(blob, protocol=protocol))) is None, protocol
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    for obj in (model.state_dict(), {"state_dict": model.state_dict(), "epoch": 3},
                {"worse_label": torch.zeros(5, dtype=torch.long), "clean_label": np.zeros(5, np.int64)}):
        for zipped in (True, False):
            path = tmp_path / "f.pt"
            torch.save(obj, path, _use_new_zipfile_serialization=zipped)
            assert unsafe_torch_file(path) is None, zipped


def _torch_zip(tmp_path: Path, pkl: bytes, rename: tuple[bytes, bytes] | None = None) -> Path:
    """A real torch.save archive whose data.pkl holds ``pkl`` (its name's bytes replaced by
    ``rename`` in both of the zip's headers, if given)."""
    import zipfile

    saved, path = tmp_path / "saved.pt", tmp_path / "crafted.pt"
    torch.save({"worse_label": torch.zeros(3, dtype=torch.long)}, saved)
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            dst.writestr(name, pkl if name.endswith("/data.pkl") else src.read(name))
    if rename is not None:
        path.write_bytes(path.read_bytes().replace(*rename))
    return path


def _levels(n: int, first: int = 0) -> bytes:
    """t = (), then t = (t, t) n times through memo slots first..first+n (no POP: torch's loader
    has none), leaving the last on the stack."""
    out = b")q" + bytes([first])
    for i in range(1, n + 1):
        out += b"h" + bytes([first + i - 1]) + b"\x86q" + bytes([first + i])
    return out


def _glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(s: str) -> bytes:
    return b"X" + len(s.encode()).to_bytes(4, "little") + s.encode()


# Ways a small pickle made a loader take exponential time or memory past an earlier form of the
# scan, each with what the scan now says. (A tuple used twice: the shared levels of _levels.)
_ESCAPES = {
    "the POP after a MARK pops the mark": (b"\x80\x02}" + _levels(24) + b"(0Ns.", "a tuple used twice"),
    "OrderedDict given [[key, value]] pairs": (
        b"\x80\x02" + _glob("collections", "OrderedDict") + b"]](" + _levels(24, 1) + b"Nea\x85R.",
        "a tuple used twice"),
    "a state BUILD sets from pairs": (
        b"\x80\x02" + _glob("collections", "OrderedDict") + b")R]](" + _levels(24, 1) + b"Neab.", "a tuple used twice"),
    "a persistent id torch looks up": (
        b"\x80\x02(" + _text("storage") + _glob("torch", "FloatStorage") + _levels(24, 1) + _text("cpu") + b"K\x01tQ.",
        "a tuple used twice"),
    "a list built of one list twice": (b"\x80\x02]q\x00(h\x00h\x00e.", "a list used twice"),
    "a chain of hex encodings": (
        b"\x80\x02" + _glob("_codecs", "encode") + _glob("_codecs", "encode") + _text("a") + _text("latin1") + b"\x86R"
        + _text("hex") + b"\x86R.", "a call of _codecs.encode with a codec other than latin1"),
    "a numpy dtype of fields": (
        b"\x80\x02" + _glob("numpy", "dtype") + b"](" + _text("a") + _text("f4") + b"\x86e\x85R.",
        "a numpy dtype built of something other than a string"),
    "a bytearray of a size": (b"\x80\x02" + _glob("builtins", "bytearray") + b"J\x00\x00\x00\x40\x85R.",
                              "a bytearray built of something other than bytes"),
    "a memo index far past the file": (b"\x80\x02}r\xff\xff\xff\x0f.",
                                       "a memo index (268435455) past the 3 opcodes read"),
    "items set on an array, by index arrays that broadcast": (
        b"\x80\x02" + _glob("numpy.core.multiarray", "_reconstruct") + _glob("numpy", "ndarray")
        + b"K\x00\x85C\x01b\x87R" + b"NK\x00s.", "items set on an array or tensor"),
    "a long string copied by each call given it": (
        b"\x80\x02]" + _glob("_codecs", "encode") + b"q\x00" + _text("a" * 257) + b"q\x01" + _text("latin1")
        + b"q\x02(" + (b"h\x00h\x01h\x02\x86R") * 2 + b"e.", "a long text used twice by reference"),
    "a 60 KB integer as a key, many times": (
        b"\x80\x02}\x8b" + (60_000).to_bytes(4, "little") + b"\x01" * 60_000 + b"q\x00(" + b"h\x00N" * 2000 + b"u.",
        "more hashing than its size allows"),
}


@pytest.mark.parametrize("case", sorted(_ESCAPES))
def test_the_scan_refuses_what_would_take_a_loader_exponential_time(case):
    import io

    from dm_tune.datasets._pickles import unsafe_pickle

    pkl, why = _ESCAPES[case]
    assert (unsafe_pickle(io.BytesIO(pkl)) or "").startswith(why), unsafe_pickle(io.BytesIO(pkl))


def test_the_scan_stops_at_more_opcodes_than_any_file_it_guards_has(monkeypatch):
    """Its time is linear in the opcodes, not small: a file of millions of one-byte opcodes is
    refused at MAX_OPCODES (2 million, about 4 s of reading)."""
    import io

    from dm_tune.datasets import _pickles

    monkeypatch.setattr(_pickles, "MAX_OPCODES", 1000)
    assert _pickles.unsafe_pickle(io.BytesIO(b"\x80\x02" + b"N" * 997 + b"].")) is None
    assert _pickles.unsafe_pickle(io.BytesIO(b"\x80\x02" + b"N" * 998 + b"].")) == "over 1,000 opcodes"


def test_a_torch_file_is_scanned_in_the_format_torch_reads_it_in(tmp_path):
    """torch reads a zip archive only where the file starts with its local header, and finds
    data.pkl whatever its case; a zip entry that cannot be read is not passed over unscanned."""
    import zipfile

    from dm_tune.datasets._pickles import unsafe_torch_file

    shared = b"\x80\x02}" + _levels(24) + b"Ns."
    legacy = tmp_path / "legacy.pt"  # a legacy-format file that ends like an (empty) zip archive
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1001, 2) + pickle.dumps({}, 2) + shared
                       + b"PK\x05\x06" + b"\0" * 18)
    assert zipfile.is_zipfile(legacy) and unsafe_torch_file(legacy) == "a tuple used twice by reference"
    upper = _torch_zip(tmp_path, shared, (b"/data.pkl", b"/DATA.PKL"))
    assert unsafe_torch_file(upper) == "a tuple used twice by reference"
    damaged = _torch_zip(tmp_path, shared)
    crc = zipfile.ZipFile(damaged).getinfo(next(n for n in zipfile.ZipFile(damaged).namelist()
                                                if n.endswith("data.pkl"))).CRC.to_bytes(4, "little")
    damaged.write_bytes(damaged.read_bytes().replace(crc, b"\xde\xad\xbe\xef"))
    with pytest.raises(zipfile.BadZipFile):
        unsafe_torch_file(damaged)


# torch's weights-only loader has no POP: the levels go into a list, the dict's first value; then
# the tuple as a dict key, or given to set(), a global that loader allows (and which hashes it).
_LEVELS_FOR_TORCH = b"\x80\x02}U\x04junk])q\x01a" + b"h\x01h\x01\x86q\x01a" * 64 + b"s"
_DOUBLED_FOR_TORCH = {"dict key": _LEVELS_FOR_TORCH + b"h\x01K\x01s.",
                      "set()": _LEVELS_FOR_TORCH + b"U\x0bworse_labelcbuiltins\nset\n]h\x01a\x85Rs."}


@pytest.mark.parametrize("case", sorted(_DOUBLED_FOR_TORCH))
@pytest.mark.parametrize("form", ["torch.save zip", "plain pickle"])
@pytest.mark.parametrize("reader", ["label file", "pretrained weights"])
def test_a_torch_file_hashing_a_tuple_nested_by_reference_is_refused_at_once(tmp_path, case, form, reader):
    """torch's weights-only loader hashes dict keys as it builds them too, and what it gives
    set() (a CIFAR-N label file or a pretrained state dict from the internet hung the run), and
    reads a plain pickle whole before it checks torch's magic number."""
    import zipfile

    path, pkl = tmp_path / "labels.pt", _DOUBLED_FOR_TORCH[case]
    if form == "plain pickle":
        path.write_bytes(pkl)
    else:  # a real torch.save archive with its data.pkl replaced
        saved = tmp_path / "saved.pt"
        torch.save({"worse_label": torch.zeros(3, dtype=torch.long)}, saved)
        with zipfile.ZipFile(saved) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
            for name in src.namelist():
                dst.writestr(name, pkl if name.endswith("/data.pkl") else src.read(name))
    call = ("read_label_file(path, 'worse_label')" if reader == "label file"
            else "import torch.nn as nn; load_pretrained(nn.Linear(2, 2), path)")
    what = "label file" if reader == "label file" else "state dict"
    out = _refusal_in_child(call, path)
    assert f"refused: a tuple used twice by reference, which no {what} has" in out, out


def test_class_names_numpy_cannot_make_text_are_one_line(tmp_path):
    import struct

    from dm_tune.datasets.cifar import _names

    names = np.frombuffer(struct.pack("<10I", *[0x110000] * 10), dtype="<U1")
    with pytest.raises(DataError, match=r"'label_names' holds names that are no text \(SystemError\)"):
        _names(tmp_path / "batches.meta", {"label_names": names}, "label_names", 10, "batch")


def test_a_label_file_of_lists_nested_by_reference_is_refused(tmp_path):
    path = tmp_path / "labels.pt"
    torch.save({"worse_label": [_shared_tree(20)] * 10, "clean_label": [[i] for i in range(10)]}, path)
    with pytest.raises(DataError, match="refused: a list used twice by reference, which no label file has"):
        read_label_file(path, "worse_label")
    nested = tmp_path / "nested.pt"  # nested past one label per example, nothing shared
    torch.save({"worse_label": [[[i, i]] for i in range(10)], "clean_label": [[i] for i in range(10)]}, nested)
    with pytest.raises(DataError, match=r"its worse_label holds more than one label per example \(lists nested"):
        read_label_file(nested, "worse_label")
    assert read_label_file(nested, "clean_label").tolist() == list(range(10))  # a column of labels is labels


def test_a_damaged_label_file_is_one_line(tmp_path):
    """torch's reader on a legacy file cut short raised struct.error or an empty EOFError (a
    traceback, or 'labels ()'); a ragged clean_label and a bfloat16 label tensor were tracebacks."""
    legacy = tmp_path / "legacy.pt"
    torch.save({"worse_label": torch.arange(50)}, legacy, _use_new_zipfile_serialization=False)
    whole = legacy.read_bytes()
    for cut in (4, 19, 28, len(whole) // 2):
        legacy.write_bytes(whole[:cut])
        with pytest.raises(DataError, match=r"could not be read as a torch-saved file of label arrays \(.+\)"):
            read_label_file(legacy, "worse_label")
    bf16 = tmp_path / "bf16.pt"
    torch.save({"worse_label": torch.zeros(3, dtype=torch.bfloat16)}, bf16)
    with pytest.raises(DataError, match=r"could not be read as labels \(.*BFloat16"):
        read_label_file(bf16, "worse_label")
    from dm_tune.noise import _check_clean_labels

    with pytest.raises(DataError, match=r"its clean_label is not an array of labels"):
        _check_clean_labels(bf16, np.zeros(2, np.int64), {"clean_label": [[1, 2], [3]]})


def test_a_data_error_names_the_field_its_path_came_from(tmp_path, capsys):
    """An error in the data named its path alone ("/data/cifar-100-python/train: file not found"),
    not the field (--data-root, --noise-file) the path came from. Named, it still crosses processes."""
    from dm_tune.cli import main

    err = DataError("/d/cifar/x", "file not found", "L").under("data_root", Path("/d"))
    assert str(err) == "data_root /d: cifar/x: file not found. Expected layout: L" and err.path == "/d/cifar/x"
    assert err.under("noise_file", "/n") is err and str(DataError("/d", "is empty", "L").under("data_root", "/d")) == (
        "data_root /d: is empty. Expected layout: L")
    outside = DataError("/e/x", "gone", "L").under("data_root", "/d")
    assert str(outside) == "data_root /d: /e/x: gone. Expected layout: L"
    # the value as the user gave it, the path within what it resolves to
    assert str(DataError("/home/u/d/x", "gone", "L").under("data_root", "~/d", "/home/u/d")) == (
        "data_root ~/d: x: gone. Expected layout: L")
    for e in (err, DataError("/d/x", "gone", "L")):
        again = pickle.loads(pickle.dumps(e))
        assert type(again) is DataError and str(again) == str(e) and again.path == e.path
    missing = tmp_path / "no-labels.npy"
    assert main(["train", "--noise", "file", "--noise-file", str(missing), "--epochs", "1", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(f"dm-tune: error: noise_file {missing}: label file not found. ")
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    assert main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path / "link"), "--epochs", "1"]) == 2
    assert capsys.readouterr().err.startswith(f"dm-tune: error: data_root {tmp_path / 'link'}: "
                                              "cifar-10-batches-py/data_batch_1: file not found. ")


def test_label_file_errors(tmp_path):
    pt = tmp_path / "labels.pt"
    torch.save({"worse_label": np.zeros(3, np.int64)}, pt)
    with pytest.raises(DataError, match="noise_key"):
        read_label_file(pt, None)
    with pytest.raises(DataError, match="no key 'aggre_label'"):
        read_label_file(pt, "aggre_label")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="Expected layout"):
        read_label_file(bad, "worse_label")
    # a torch.save file cut short says what torch found; an empty file says so (it read "labels ()")
    bad.write_bytes(pt.read_bytes()[:200])
    with pytest.raises(DataError, match=r"could not be read as a torch-saved file of label arrays "
                                        r"\(.*not a zip file"):
        read_label_file(bad, "worse_label")
    for suffix in (".pt", ".npy", ".csv"):
        (tmp_path / f"empty{suffix}").write_bytes(b"")
        with pytest.raises(DataError, match=rf"empty\{suffix}: is empty\. Expected layout"):
            read_label_file(tmp_path / f"empty{suffix}", "worse_label")
    with pytest.raises(DataError, match="not found"):
        read_label_file(tmp_path / "absent.npy")
    np.save(tmp_path / "real.npy", np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="no integer labels"):
        read_label_file(tmp_path / "real.npy")
    np.save(tmp_path / "inf.npy", np.array([1.0, np.inf]))  # (numpy's cast warning came before the error)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="no integer labels"):
            read_label_file(tmp_path / "inf.npy")
    # a bad value in a text list is named by its line (they were "could not be read as labels (invalid
    # literal ...)" and, past int64, "holds no integer labels"); 1_0 was read as 10
    for bad in ("8.0", "99999999999999999999999", "1_0"):
        (tmp_path / "bad.csv").write_text(f"label\n1\n\n{bad}\n")
        with pytest.raises(DataError, match=rf"bad.csv: line 4: '{bad}' is not an integer class id"):
            read_label_file(tmp_path / "bad.csv")
    # a header stating 2^31 labels over no data: numpy allocated 16 GiB before reading (a MemoryError
    # out of read_label_file where the memory was not there)
    huge = tmp_path / "huge.npy"
    np.save(huge, np.zeros(1, np.int64))
    huge.write_bytes(huge.read_bytes().replace(b"(1,)", b"(2147483648,)").replace(b" " * 9 + b"\n", b"\n", 1))
    with pytest.raises(DataError, match=r"huge.npy: could not be read as labels \(mmap length is greater than "):
        read_label_file(huge)


def test_labels_with_one_long_text_are_refused_before_numpy_widens_every_label_to_it(tmp_path):
    """20 000 ints and one string of 50 000 characters: np.asarray gave every value that width (4 GB)."""
    path = tmp_path / "labels.pt"
    torch.save({"worse_label": [1] * 20_000 + ["a" * 50_000]}, path)
    with pytest.raises(DataError, match=r"its worse_label holds more than one label per example \(lists nested "
                                        r"deeper, or long text\)"):
        read_label_file(path, "worse_label")


class _Planted:
    """Unpickling this runs code (here: creates a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_cifar_n_file_with_a_planted_object_is_refused(tmp_path):
    marker = tmp_path / "ran"
    pt = tmp_path / "CIFAR-10_human.pt"
    torch.save({"worse_label": np.zeros(3, np.int64), "payload": _Planted(marker)}, pt)
    with pytest.raises(DataError) as info:
        read_label_file(pt, "worse_label")
    assert not marker.exists()
    message = str(info.value)
    assert "\n" not in message and str(pt) in message and "refused" in message and "pathlib.Path" in message


def test_cifar_n_file_written_with_numpy_1_loads(tmp_path):
    """The released CIFAR-N files were pickled under numpy 1 (numpy.core.multiarray._reconstruct)."""
    import zipfile

    labels = np.array([3, 1, 4, 1, 5], np.int64)
    torch.save({"worse_label": labels, "clean_label": labels.astype(np.int32)}, tmp_path / "now.pt")
    old = tmp_path / "CIFAR-10_human.pt"
    with zipfile.ZipFile(tmp_path / "now.pt") as zin, zipfile.ZipFile(old, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(info, data)
    assert np.array_equal(read_label_file(old, "worse_label"), labels)
    assert np.array_equal(read_label_file(old, "clean_label"), labels)


def test_file_noise_length_mismatch(cifar10_root, tmp_path):
    np.save(tmp_path / "short.npy", np.zeros(7, np.int64))
    cfg = config("cifar10", cifar10_root, noise="file", noise_file=str(tmp_path / "short.npy"))
    expect_data_error(cfg, tmp_path / "short.npy")


# --- Clothing1M -------------------------------------------------------------------------------


def test_clothing1m_loads_noisy_train_clean_val_test(clothing_root):
    data = prepare(config("clothing1m", clothing_root, dataset_options={"image_size": 32}))
    assert data.num_classes == 14 and data.default_model == "resnet50" and data.normalise is None
    assert len(data.train) == CLOTHING_TRAIN and len(data.val) == 14 and len(data.test) == 14
    assert data.input_shape == (3, 32, 32)
    x = data.train.inputs[0]
    assert x.dtype == torch.float32 and -3.0 < float(x.min()) and float(x.max()) < 3.0
    assert data.train.labels.tolist() == [i % 14 for i in range(CLOTHING_TRAIN)]
    assert data.val.labels.tolist() == list(range(14)) and data.test.labels.tolist() == list(range(13, -1, -1))
    known = np.arange(CLOTHING_TRAIN) < CLOTHING_CLEAN_KNOWN
    assert np.array_equal(data.noise_known.numpy(), known)
    assert np.array_equal(data.is_noisy.numpy(), known & (np.arange(CLOTHING_TRAIN) % 2 == 1))
    assert data.noise_rate == pytest.approx(0.5)
    # The verified clean labels where known (odd images: the clean label is the next class).
    i = np.arange(CLOTHING_TRAIN)
    want = np.where(known & (i % 2 == 1), (i + 1) % 14, i % 14)
    assert np.array_equal(data.clean_train_labels.numpy(), want)
    assert data.defaults["lr"] == 0.01 and data.defaults["weight_decay"] == 2e-5


def test_clothing1m_missing_and_malformed(tmp_path):
    root = make_clothing1m(tmp_path)
    kv = root / "clean_label_kv.txt"
    good = kv.read_text()
    kv.write_text("images/0/00/va0.png fourteen\n")
    expect_data_error(config("clothing1m", root), kv)
    kv.write_bytes(b"\xff\xfe" + good.encode())  # not text: it was a UnicodeDecodeError traceback
    assert "is not UTF-8 text" in str(expect_data_error(config("clothing1m", root), kv))
    first = good.splitlines()[0].split()[0]  # labelled again, differently: the last line had won
    kv.write_text(good + f"{first} 13\n")
    assert f"labels '{first}' 13, an earlier line" in str(expect_data_error(config("clothing1m", root), kv))
    kv.write_text(good + good.splitlines()[0] + "\n")  # the same label twice is the same fact
    prepare(config("clothing1m", root))
    kv.write_text(good)
    (root / "images/0/00/te0.png").unlink()
    expect_data_error(config("clothing1m", root), root / "images/0/00/te0.png")
    (root / "clean_val_key_list.txt").unlink()
    expect_data_error(config("clothing1m", root), root / "clean_val_key_list.txt")
    with pytest.raises(ConfigError, match="dataset_options.image_size"):
        prepare(config("clothing1m", root, dataset_options={"image_size": 3}))


def test_clothing1m_repeated_or_shared_keys_are_refused(tmp_path):
    """The key lists were never compared: a key listed twice, or a test image also trained on, loaded silently."""
    root = make_clothing1m(tmp_path)
    lists = {name: (root / name).read_text().split() for name in
             ("noisy_train_key_list.txt", "clean_val_key_list.txt", "clean_test_key_list.txt")}
    train, val, test = lists.values()
    (root / "noisy_train_key_list.txt").write_text("\n".join(train + train[3:5]) + "\n")
    err = str(expect_data_error(config("clothing1m", root), root / "noisy_train_key_list.txt"))
    assert f"repeats 2 keys (first: {train[3]!r})" in err
    # test images trained on (with noisy labels of their own)
    (root / "noisy_label_kv.txt").write_text((root / "noisy_label_kv.txt").read_text()
                                            + "".join(f"{k} 0\n" for k in test))
    (root / "noisy_train_key_list.txt").write_text("\n".join(train + test) + "\n")
    err = str(expect_data_error(config("clothing1m", root), root / "clean_test_key_list.txt"))
    assert f"shares 14 keys with noisy_train_key_list.txt (first: {test[0]!r})" in err
    (root / "noisy_train_key_list.txt").write_text("\n".join(train) + "\n")
    (root / "clean_val_key_list.txt").write_text("\n".join(val + test[5:8]) + "\n")
    err = str(expect_data_error(config("clothing1m", root), root / "clean_test_key_list.txt"))
    assert f"shares 3 keys with clean_val_key_list.txt (first: {test[5]!r})" in err


def test_clothing1m_lists_with_a_byte_order_mark_read_and_a_class_without_training_images_is_refused(tmp_path):
    """A list saved with a byte-order mark (Windows editors) made its first key "have no label"; a
    training list whose noisy labels use 3 of the 14 classes trained 11 classes on nothing, into
    which symmetric noise moved labels."""
    root = make_clothing1m(tmp_path)
    for name in ("noisy_train_key_list.txt", "noisy_label_kv.txt"):
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    assert len(prepare(config("clothing1m", root)).train) == CLOTHING_TRAIN
    kv = root / "noisy_label_kv.txt"
    lines = kv.read_text("utf-8-sig").splitlines()
    kv.write_text("".join(f"{line.split()[0]} {i % 3}\n" for i, line in enumerate(lines)))
    err = str(expect_data_error(config("clothing1m", root), root / "noisy_train_key_list.txt"))
    assert "has no training image of class 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13 of 0..13 (by noisy_label_kv.txt)" in err


def test_clothing1m_a_non_ascii_digit_label_is_one_line(tmp_path):
    """'\u00b2'.isdigit() is True but int() refuses it: a ValueError traceback."""
    root = make_clothing1m(tmp_path)
    kv = root / "noisy_label_kv.txt"
    kv.write_text(kv.read_text() + "images/0/00/extra.jpg \u00b2\n", encoding="utf-8")
    err = str(expect_data_error(config("clothing1m", root), kv))
    assert f"line {CLOTHING_TRAIN + 1} is not 'KEY LABEL' with LABEL in 0..13" in err


# --- ImageFolder ------------------------------------------------------------------------------


def test_imagefolder_carved_and_official_val(tmp_path):
    data = prepare(config("imagefolder", make_imagefolder(tmp_path / "a"), dataset_options={"image_size": 16}))
    assert data.num_classes == 3 and data.default_model == "resnet18" and data.input_shape == (3, 16, 16)
    assert len(data.train) == 6 and len(data.val) == 3 and len(data.test) == 6
    assert sorted(data.test.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert data.train.inputs[0].dtype == torch.float32

    data = prepare(config("imagefolder", make_imagefolder(tmp_path / "b", with_val=True)))
    assert len(data.train) == 9 and len(data.val) == 3 and data.input_shape == (3, 224, 224)
    # its own validation set keeps its own labels: val_noisy is refused, not silently ignored
    with pytest.raises(ConfigError, match="val_noisy: True is not allowed; imagefolder has its own validation"):
        prepare(config("imagefolder", tmp_path / "b", val_noisy=True))
    # and so is a val_fraction other than the default every config has: none of it is carved
    with pytest.raises(ConfigError, match="val_fraction: 0.5 is not allowed; imagefolder has its own validation set"):
        prepare(config("imagefolder", tmp_path / "b", val_fraction=0.5))
    assert len(prepare(config("imagefolder", tmp_path / "b", val_fraction=0.2)).val) == 3


@pytest.mark.parametrize("name", ["valid", "validation", "Val", "VALID"])
def test_imagefolder_reads_a_validation_folder_by_its_other_names_and_refuses_two(tmp_path, name):
    """A tree shipped with valid/ or validation/ (Kaggle's, Roboflow's), or with Val/ (read as val/ on
    a case-insensitive disk), had its validation images left out without a word, and a validation
    set carved from train instead."""
    root = make_imagefolder(tmp_path / "a", with_val=True)
    (root / "val").rename(root / name)
    data = prepare(config("imagefolder", root, dataset_options={"image_size": 16}))
    assert len(data.train) == 9 and len(data.val) == 3
    assert data.info["official_val"] and data.info["val_folder"] == name
    shutil.copytree(root / name, root / "val")
    err = expect_data_error(config("imagefolder", root), root)
    assert f"has {' and '.join(sorted(['val/', name + '/']))}: one validation folder, not several" in str(err)


def test_imagefolder_reads_train_and_test_folders_in_any_case(tmp_path):
    """Train/ and TEST/ (a tree from a case-insensitive disk) were "directory not found"."""
    root = make_imagefolder(tmp_path)
    data = prepare(config("imagefolder", root, dataset_options={"image_size": 16}))
    (root / "train").rename(root / "Train")
    (root / "test").rename(root / "TEST")
    again = prepare(config("imagefolder", root, dataset_options={"image_size": 16}))
    assert torch.equal(again.test.labels, data.test.labels) and len(again.train) == len(data.train)
    assert again.test.inputs.path(0) == root / "TEST" / data.test.inputs.path(0).relative_to(root / "test")
    shutil.copytree(root / "TEST", root / "test")
    err = expect_data_error(config("imagefolder", root), root)
    assert "has TEST/ and test/: one test folder, not several" in str(err)


@pytest.mark.parametrize("image_size", [16, 224])
def test_on_disk_training_images_are_random_crops_of_a_margin_and_evaluate_on_the_centre(tmp_path, image_size):
    """ImageNet-style: the training split keeps the centre square of the resized image (256 for
    224), from which training takes a random crop and flip; its centre crop is the evaluation
    image pixel for pixel. The training images had been the evaluation crop itself, moved by
    CIFAR's 4-pixel zero padding."""
    from dm_tune.datasets.imagefolder import ImageFiles
    from dm_tune.train import _Inputs

    root = make_imagefolder(tmp_path)
    data = prepare(config("imagefolder", root, dataset_options={"image_size": image_size}))
    margin = 2 * ((round(image_size * 256 / 224) - image_size) // 2)
    assert margin == (32 if image_size == 224 else 2)
    assert data.input_shape == (3, image_size, image_size)
    big = torch.stack([data.train.inputs[i] for i in range(len(data.train))])
    assert big.shape[1:] == (3, image_size + margin, image_size + margin)
    keys = [k.decode() for k in data.train.inputs.dataset.keys[data.train.inputs.indices]]
    exact = torch.stack([ImageFiles(root, keys, image_size)[i] for i in range(len(keys))])  # evaluation's read
    gen = torch.Generator().manual_seed(0)
    prep = _Inputs(data, torch.device("cpu"), True, gen)
    assert torch.equal(prep(big, train=False), exact)  # the centre crop, as evaluated
    assert torch.equal(_Inputs(data, torch.device("cpu"), False, gen)(big, train=True), exact)  # no augmentation
    seen = set()
    for _ in range(40 if image_size == 16 else 2):  # (the search over 33 x 33 windows is slow)
        out = prep(big, train=True)
        assert out.shape == exact.shape
        for i in range(len(big)):  # each a window of its own image, flipped or not
            windows = {(dy, dx, f) for dy in range(margin + 1) for dx in range(margin + 1) for f in (0, 1)
                       if torch.equal(out[i], (lambda w: w.flip(2) if f else w)(
                           big[i, :, dy:dy + image_size, dx:dx + image_size]))}
            assert windows, i
            seen |= windows
    if image_size == 16:  # every place and both flips drawn
        assert {dy for dy, _, _ in seen} == set(range(margin + 1)) and {f for _, _, f in seen} == {0, 1}
        assert {dx for _, dx, _ in seen} == set(range(margin + 1))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels (PIL refuses past ~179 megapixels on opening)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("workers", "content"), [(0, b"not an image at all"), (1, b"not an image at all"),
                                                  (0, _png_header_only(20000, 20000))],
                         ids=["garbage", "garbage-in-a-worker", "decompression-bomb"])
def test_an_image_that_cannot_be_read_mid_training_is_one_line(tmp_path, capsys, workers, content):
    """Only found when a batch reads it: in a DataLoader worker (num_workers > 0) the error came
    back as torch's RuntimeError with the worker's traceback, exit 1. PIL's refusal of a huge
    image is no OSError: it came back as a traceback."""
    from dm_tune.cli import main

    root = make_imagefolder(tmp_path)
    bad = sorted((root / "train" / "cat").iterdir())[0]
    bad.write_bytes(content)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({"dataset": "imagefolder", "data_root": str(root), "epochs": 1,
                                           "noise": "none", "model": "cnn", "dataset_options": {"image_size": 16},
                                           "num_workers": workers, "device": "cpu"}))
    assert main(["train", "--config", str(config_file), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"dm-tune: error: {bad}: could not be read as an image")
    assert not any("Traceback" in line or "DataLoader worker" in line for line in err)


def test_imagefolder_errors(tmp_path):
    root = make_imagefolder(tmp_path)
    (root / "test" / "cat" / "0.png").rename(root / "test" / "cat" / "0.other")
    (root / "test" / "cat").rename(root / "test" / "cow")
    err = expect_data_error(config("imagefolder", root), root / "test")
    assert "differ" in str(err) and "cow" in str(err)
    for f in (root / "test" / "cow").iterdir():
        f.unlink()
    (root / "test" / "cow").rmdir()
    for d in (root / "test").iterdir():
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    err = expect_data_error(config("imagefolder", root), root / "test")
    assert "no class folders" in str(err)
    (root / "test").rmdir()
    expect_data_error(config("imagefolder", root), root / "test")


def test_imagefolder_leaves_hidden_folders_and_files_out(tmp_path):
    """A notebook's .ipynb_checkpoints/ beside the class folders was a fourth class (silently, with
    no val/), and macOS's ._0.png beside an image a damaged image."""
    root = make_imagefolder(tmp_path)
    for split in ("train", "test"):
        _write_image(root / split / ".ipynb_checkpoints" / "0-checkpoint.png", np.random.default_rng(0))
    (root / "train" / "ant" / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble, not an image
    data = prepare(config("imagefolder", root))
    assert data.num_classes == 3 and data.info["class_names"] == ["ant", "bee", "cat"]  # (in a run's result too)
    assert data.info["num_train"] + data.info["num_val"] == 9


def test_imagefolder_reads_names_that_are_not_utf8_and_refuses_wide_pixels(tmp_path):
    """A file or class folder named in Latin-1 (caf\xe9.png) was a UnicodeEncodeError traceback; a
    16-bit grayscale PNG reached the model clipped to 0..255 (mostly white) and a floating-point
    TIFF as one black image, without a word."""
    import os

    from PIL import Image

    root = make_imagefolder(tmp_path / "names")
    for split in ("train", "test"):
        classes = os.fsencode(root / split)
        os.rename(os.path.join(classes, b"cat"), os.path.join(classes, b"ch\xe8vre"))
        os.rename(os.path.join(classes, b"ch\xe8vre", b"0.png"), os.path.join(classes, b"ch\xe8vre", b"caf\xe9.png"))
    cfg = config("imagefolder", root, dataset_options={"image_size": 16}, epochs=1, batch_size=4)
    data = prepare(cfg)
    assert data.num_classes == 3
    result = train(cfg, data)
    assert result.status == "finished" and np.isfinite(result.history[0]["train_loss"])
    from dm_tune.errors import UserError

    for mode, pixels, suffix, words in (("I;16", np.full((20, 24), 3000, dtype=np.uint16), "png",
                                         "I;16 pixels (16-bit)"),
                                        ("F", np.full((20, 24), 0.5, dtype=np.float32), "tif",
                                         "F pixels (32-bit floating point)")):
        wide = make_imagefolder(tmp_path / mode.replace(";", ""))
        image = wide / "train" / "bee" / f"wide.{suffix}"
        Image.fromarray(pixels).save(image)  # (Pillow picks the mode from the dtype)
        cfg = config("imagefolder", wide, dataset_options={"image_size": 16}, epochs=1, batch_size=4, val_fraction=0.0)
        with pytest.raises(UserError, match=f"wide.{suffix}: has {re.escape(words)}, which dm-tune does not rescale"):
            train(cfg, prepare(cfg))


def test_imagefolder_walks_linked_folders_once_and_refuses_a_link_to_no_image(tmp_path):
    """A linked sub-folder's images were left out (Path.rglob does not follow links; torchvision's
    ImageFolder does), and a link to an image that is gone was dropped without a word."""
    import os

    root = make_imagefolder(tmp_path / "a")
    extra = make_imagefolder(tmp_path / "b")
    os.symlink(extra / "train" / "bee", root / "train" / "bee" / "more")  # 3 more bees
    os.symlink(root / "train" / "cat", root / "train" / "cat" / "loop")  # a link back up: walked once
    data = prepare(config("imagefolder", root, val_fraction=0.0))
    assert data.info["num_train"] == 12
    os.symlink(tmp_path / "nowhere.png", root / "train" / "ant" / "gone.png")
    with pytest.raises(DataError, match="ant/gone.png: is a link to an image that is not there"):
        prepare(config("imagefolder", root))


def test_imagefolder_refuses_one_image_in_two_splits_or_two_classes(tmp_path):
    """A link to a folder above a class folder was walked: the other classes' and test/'s images
    trained as that class, without a word; a link from test/ into train/ (or a hard link) scored
    training images as test ones. A repeat within one class is the user's own oversampling: kept."""
    import os

    root = make_imagefolder(tmp_path / "a", with_val=True)
    os.symlink(root / "train" / "ant" / "0.png", root / "train" / "ant" / "again.png")
    assert prepare(config("imagefolder", root)).info["num_train"] == 10
    cases = {
        "up": (root / "train" / "ant" / "up", root,
               re.escape(f"ant/up: is a link to {root}, a folder that holds it (a loop)")),
        "bee": (root / "train" / "ant" / "bees", root / "train" / "bee",
                "is the same file as .*/ant/bees/0.png \\(through a link\\): an image under two classes"),
        "test": (root / "test" / "cat" / "seen", root / "train" / "cat",
                 "test/cat/seen/0.png: is the same file as .*train/cat/0.png \\(through a link\\): an image in two "
                 "splits"),
    }
    for name, (link, target, words) in cases.items():
        os.symlink(target, link)
        with pytest.raises(DataError, match=words):
            prepare(config("imagefolder", root))
        link.unlink()
    os.link(root / "train" / "bee" / "1.jpg", root / "val" / "bee" / "hard.jpg")
    with pytest.raises(DataError, match="val/bee/hard.jpg: is the same file as .*train/bee/1.jpg .*two splits"):
        prepare(config("imagefolder", root))


def test_a_last_batch_of_one_image_trains(tmp_path):
    """ResNet-18 on 32-pixel images ends in 1 x 1 feature maps: a last batch of one image (n = k x
    batch + 1) made its BatchNorm raise "Expected more than 1 value per channel", a traceback. The
    image joins the batch before it."""
    root = make_imagefolder(tmp_path)
    cfg = config("imagefolder", root, dataset_options={"image_size": 32}, model="resnet18", epochs=1)
    data = prepare(cfg)
    n = len(data.train)
    result = train(cfg.replace(batch_size=n - 1), data)
    assert result.status == "finished" and np.isfinite(result.history[0]["train_loss"])


def test_imagefolder_refuses_an_empty_test_class_and_a_single_class(tmp_path):
    """An empty test/<class>/ (a copy that failed) left that class out of every evaluation; a tree of
    one class trained until the loss refused its logits, with a traceback."""
    root = make_imagefolder(tmp_path / "a")
    for f in (root / "test" / "cat").iterdir():
        f.unlink()
    err = expect_data_error(config("imagefolder", root), root / "test" / "cat")
    assert "has no image files" in str(err)
    one = make_imagefolder(tmp_path / "b")
    for split in ("train", "test"):
        for cls in ("bee", "cat"):
            for f in (one / split / cls).iterdir():
                f.unlink()
            (one / split / cls).rmdir()
    err = expect_data_error(config("imagefolder", one), one)
    assert "holds a single class (1)" in str(err)


# --- IMDB -------------------------------------------------------------------------------------


def test_imdb_features_and_step_imbalance(imdb_root):
    data = prepare(config("imdb", imdb_root, dataset_options={"dims": 4}))
    assert data.input_kind == "vector" and data.default_model == "imdb-mlp" and data.input_shape == (4,)
    assert data.train.inputs.dtype == torch.float32 and len(data.test) == 10
    assert len(data.train) == 16 and len(data.val) == 4
    assert data.test.labels.tolist() == [0] * 5 + [1] * 5  # pos first: class 0 = pos

    # positive:negative 4:1 by imbalance 'step' (the minority is the last class, "neg").
    data = prepare(config("imdb", imdb_root, dataset_options={"dims": 4}, imbalance="step", imbalance_ratio=4))
    assert torch.bincount(data.train.labels, minlength=2).tolist() == [8, 2]


def test_imdb_tokens(imdb_root):
    data = prepare(config("imdb", imdb_root / "aclImdb",
                          dataset_options={"representation": "tokens", "vocab_size": 10, "max_len": 6}))
    assert data.input_kind == "tokens" and data.default_model == "text" and data.input_shape == (6,)
    assert data.train.inputs.dtype == torch.int64 and data.vocab_size == 10
    assert int(data.train.inputs.max()) < 10 and int(data.train.inputs.min()) >= 0
    assert (data.test.inputs == 1).any()  # words outside the 8-word vocabulary are "unknown"
    short = prepare(config("imdb", imdb_root, dataset_options={"representation": "tokens", "max_len": 40}))
    assert short.input_shape == (7,)  # the longest review ("loved it, brilliant and moving review 9")
    assert (short.train.inputs[:, -1] == 0).any()  # shorter reviews are padded with 0
    # a max_len far above every review ("do not truncate") asked numpy for N x max_len ids: 8.67 PiB
    huge = prepare(config("imdb", imdb_root, dataset_options={"representation": "tokens", "max_len": 10**13}))
    assert huge.input_shape == (7,) and torch.equal(huge.test.inputs, short.test.inputs)
    assert huge.info["max_len"] == 10**13


def test_the_text_model_is_as_wide_as_hidden_dim():
    """hidden_dim 1024 was accepted and recorded, and the model trained 256 units (a silent cap)."""
    from dm_tune.models import MODELS, ModelSpec

    model = MODELS["text"](ModelSpec((6,), "tokens", 2, hidden_dim=1024, vocab_size=10))
    assert [m.out_features for m in model.head if hasattr(m, "out_features")] == [1024, 2]


def test_imdb_words_are_letters_of_any_script():
    """Only a-z and 0-9 made words: "café" was "caf", a review in Cyrillic nothing but its digits;
    combining marks split words ("nai", "ve" of a decomposed "naïve"; Hindi fell into consonants),
    and a quote's apostrophes made words of their own ("'great'", "''")."""
    import unicodedata

    from dm_tune.datasets.imdb import tokenize

    assert tokenize("Café naïve, don't<br />STOP_now 42 фильм") == ["café", "naïve", "don't", "stop", "now", "42",
                                                                 "фильм"]
    assert tokenize(unicodedata.normalize("NFD", "Café naïve")) == ["café", "naïve"]
    assert tokenize("हिन्दी फ़िल्म") == ["हिन्दी", "फ़िल्म"]
    assert tokenize("He said 'great' and '' then ' ok, rock'n'roll") == ["he", "said", "great", "and", "then", "ok",
                                                                      "rock'n'roll"]
    assert tokenize("don\u2019t<br/>stop<BR>now") == ["don't", "stop", "now"]


def test_imdb_errors(imdb_root, tmp_path):
    for bad in ({"representation": "bag"}, {"max_len": 10}, {"representation": "tokens", "dims": 4},
                {"dims": 0}, {"dims": 500}):
        with pytest.raises(ConfigError, match="dataset_options"):
            prepare(config("imdb", imdb_root, dataset_options=bad))
    root = make_imdb(tmp_path) / "aclImdb"
    for f in (root / "test" / "neg").iterdir():
        f.unlink()
    (root / "test" / "neg").rmdir()
    expect_data_error(config("imdb", root), root / "test" / "neg")
    # a link to a review that is gone was left out without a word
    root = make_imdb(tmp_path / "gone") / "aclImdb"
    (root / "train" / "pos" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    with pytest.raises(DataError, match="train/pos/gone.txt: is a link to a review that is not there"):
        prepare(config("imdb", root))
    # reviews extracted empty (scikit-learn: "empty vocabulary", a traceback); a folder named x.txt
    # (IsADirectoryError) is no review
    root = make_imdb(tmp_path / "empty") / "aclImdb"
    for f in (root / "train" / "pos").iterdir():
        f.write_text("")
    assert "its 10 reviews are all empty" in str(expect_data_error(config("imdb", root), root / "train" / "pos"))
    # reviews of no letters or digits: "empty vocabulary" from scikit-learn, a traceback
    root = make_imdb(tmp_path / "nowords") / "aclImdb"
    for f in (root / "train").glob("*/*.txt"):
        f.write_text("!!! ... ' ???")  # (a lone apostrophe is no word either)
    assert "its 20 reviews hold no words" in str(expect_data_error(config("imdb", root), root / "train"))
    for f in (root / "train").glob("*/*.txt"):  # (the b and r of <br /> passed for a word's letters)
        f.write_text("<br /><br />")
    assert "its 20 reviews hold no words" in str(expect_data_error(config("imdb", root), root / "train"))
    root = make_imdb(tmp_path / "dirs") / "aclImdb"
    (root / "train" / "neg" / "99_1.txt").mkdir()
    data = prepare(config("imdb", root, dataset_options={"dims": 4}))
    assert data.info["num_train"] + data.info["num_val"] == 20  # the 20 reviews, not the folder
    # reviews named .TXT were left out without a word; one in Latin-1 was tokenised 'caf', 'tr', 's'
    (root / "train" / "neg" / "98_1.TXT").write_text("awful, dull and slow")
    data = prepare(config("imdb", root, dataset_options={"dims": 4}))
    assert data.info["num_train"] + data.info["num_val"] == 21
    (root / "train" / "pos" / "97_9.txt").write_bytes("caf\u00e9 tr\u00e8s g\u00e9nial".encode("latin-1"))
    err = str(expect_data_error(config("imdb", root), root / "train" / "pos" / "97_9.txt"))
    assert "is not UTF-8 text (byte 3: invalid continuation byte)" in err


def test_imdb_passes_over_hidden_files(tmp_path):
    """macOS writes ._<name> beside each file on a foreign disk: one was read as a review (its binary
    header scored as a negative review), or, not UTF-8, refused the whole data set."""
    root = make_imdb(tmp_path) / "aclImdb"
    before = prepare(config("imdb", root, dataset_options={"dims": 4}))
    (root / "test" / "neg" / "._0_7.txt").write_bytes(b"\x00\x05\x16\x07\x00\x02Mac OS X  ")
    after = prepare(config("imdb", root, dataset_options={"dims": 4}))
    (root / "train" / "pos" / "._1_7.txt").write_bytes(b"\x00\x05\x16\x07\xb0\x02")
    prepare(config("imdb", root, dataset_options={"dims": 4}))
    assert len(after.test) == len(before.test) and len(after.train) == len(before.train)
    assert torch.equal(after.test.inputs, before.test.inputs)


def test_imdb_features_of_too_few_words_say_so():
    """Two distinct words give no 2-dimensional SVD: the message read "expected at most 0"."""
    from dm_tune.datasets.imdb import tfidf_svd

    with pytest.raises(ConfigError, match=r"dataset_options.dims: 300 .*this data \(3 texts, 2 words\) gives no "
                                          r"TF-IDF \+ SVD features of 2 dimensions or more"):
        tfidf_svd(["good good", "bad bad", "good bad"], ["good"], 300)


def test_imdb_refuses_one_review_in_two_splits_or_classes(tmp_path):
    """A link from train/ to a test review (or to a review of the other class) was read as another
    review: the model trained on a test review, or learnt one review with both labels. A pipe named
    x.txt was left out without a word."""
    root = make_imdb(tmp_path / "split") / "aclImdb"
    (root / "train" / "pos" / "50_9.txt").symlink_to(root / "test" / "pos" / "0_7.txt")
    err = str(expect_data_error(config("imdb", root), root / "test" / "pos" / "0_7.txt"))
    assert f"is the same file as {root / 'train' / 'pos' / '50_9.txt'} (through a link): a review in two splits" in err
    root = make_imdb(tmp_path / "class") / "aclImdb"
    os.link(root / "train" / "pos" / "1_7.txt", root / "train" / "neg" / "50_1.txt")  # a hard link too
    err = str(expect_data_error(config("imdb", root), root / "train" / "neg" / "50_1.txt"))
    assert "(through a link): a review under two classes" in err
    root = make_imdb(tmp_path / "repeat") / "aclImdb"  # a repeat in one class is the user's oversampling
    (root / "train" / "pos" / "50_9.txt").symlink_to(root / "train" / "pos" / "1_7.txt")
    data = prepare(config("imdb", root, dataset_options={"dims": 4}))
    assert data.info["num_train"] + data.info["num_val"] == 21
    os.mkfifo(root / "train" / "neg" / "51_1.txt")
    expect_data_error(config("imdb", root), root / "train" / "neg" / "51_1.txt")


# --- features (.npz) --------------------------------------------------------------------------


def test_features_npz(tmp_path):
    data = prepare(config("features", make_features(tmp_path / "a")))
    assert data.num_classes == 3 and data.input_kind == "vector" and data.default_model == "mlp"
    assert data.train.inputs.dtype == torch.float32 and data.input_shape == (5,)
    assert len(data.train) == 24 and len(data.val) == 6 and len(data.test) == 9
    root = make_features(tmp_path / "b", with_val=True)
    data = prepare(config("features", root / "features.npz"))
    assert len(data.train) == 30 and len(data.val) == 6 and data.val.labels.max() == 2
    # names as bytes (numpy's dtype S) were "b'r'"
    with np.load(root / "features.npz") as f:
        arrays = dict(f)
    np.savez(root / "features.npz", **arrays | {"class_names": np.array([b"r", b"g", b"\xff"])})
    assert prepare(config("features", root)).info["class_names"] == ["r", "g", "\\xff"]


def test_a_result_records_its_data_root_absolute(tmp_path, monkeypatch):
    """A relative data root ("a/features.npz", as typed) named another file from another folder."""
    make_features(tmp_path / "a")
    monkeypatch.chdir(tmp_path)
    cfg = config("features", Path("a/features.npz"), epochs=1, batch_size=8)
    result = train(cfg, prepare(cfg))
    assert result.config["data_root"] == str(tmp_path.resolve() / "a" / "features.npz")


def test_features_errors(tmp_path):
    path = tmp_path / "f.npz"
    good = {"x_train": np.zeros((4, 2)), "y_train": np.array([0, 1, 0, 1]),
            "x_test": np.zeros((2, 2)), "y_test": np.array([0, 1])}
    for change, words in (({"y_test": None}, "y_test"), ({"y_train": np.array([0, 1, 0])}, "3 labels"),
                          ({"y_train": np.array([0.0, 1.0, 0.5, 1.0])}, "integer"),
                          ({"x_val": np.zeros((2, 2))}, "y_val"), ({"x_test": np.zeros((2, 3))}, "features"),
                          # labels 1..2 (1-based): class 0 has no training example, it would be a dead
                          # class that noise moves labels into
                          ({"y_train": np.array([1, 2, 1, 2]), "y_test": np.array([1, 2])}, "no examples of class 0"),
                          ({"y_train": np.array([0, 10**15, 0, 1])}, "class 2, 3, 4, 5, 6 and 999999999999993 more"),
                          ({"y_test": np.array([0, 7])}, "y_test has label 7, a class y_train never has"),
                          ({"x_train": np.full((4, 2), 1e39)}, "beyond float32's range"),
                          ({"x_train": np.zeros((4, 0)), "x_test": np.zeros((2, 0))}, "x_train has no features"),
                          # a misspelt validation set was left out, and one carved from x_train instead
                          ({"x_valid": np.zeros((2, 2)), "y_valid": np.array([0, 1])},
                           "holds arrays dm-tune does not read: x_valid, y_valid (it reads x_train, y_train, x_val"),
                          ({"class_names": np.array(["cat", "cat"])}, "class_names repeats 'cat'; each class needs"),
                          ({"class_names": np.array(["cat", " "])}, "class_names has an empty name"),
                          # a -1 saved unsigned: it had wrapped back to -1 (a test label always wrong)
                          ({"y_test": np.array([0, 2**64 - 1], dtype=np.uint64)}, "beyond the int64 range")):
        arrays = {k: v for k, v in {**good, **change}.items() if v is not None}
        np.savez(path, **arrays)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the error is the one line: no numpy warning before it
            err = expect_data_error(config("features", path), path)
        assert words in str(err)
    expect_data_error(config("features", tmp_path), tmp_path / "features.npz")
    # a CSV given as the features file: numpy's advice (allow_pickle=True, which runs a file's code) was passed on
    path.write_text("x1,x2,y\n0.1,0.2,0\n")
    err = str(expect_data_error(config("features", path), path))
    assert "not a .npz archive of arrays" in err and "allow_pickle" not in err
    # an archive whose array holds objects was "not a .npz archive (a text or CSV file?)"
    np.savez(path, **{**good, "class_names": np.array(["a", None, 3], dtype=object)})
    err = str(expect_data_error(config("features", path), path))
    assert "its array 'class_names' holds Python objects (dtype object), which dm-tune never loads" in err, err
    # an array header stating 2^33 labels in a 1 KB archive: numpy allocated 64 GiB first (a MemoryError
    # traceback), or 16 GiB of address space for 2^31
    import io
    import zipfile

    np.savez(path, **good)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["y_train.npy"] = members["y_train.npy"].replace(b"(4,)", b"(8589934592,)").replace(b" " * 9 + b"\n", b"\n")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    err = str(expect_data_error(config("features", path), path))
    assert "its array 'y_train' states shape (8589934592,) of int64, 68,719,476,736 bytes, more than the 160" in err
    # bzip2 members, which numpy reads and never writes: 2.4 GB of zeros from 2.6 KB took 42 s and 5 GB
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as archive:
        for name, array in good.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(name + ".npy", buffer.getvalue())
    err = str(expect_data_error(config("features", path), path))
    assert "its member 'x_train.npy' is packed with method 12; numpy writes stored or deflated members only" in err
    # class names past the training examples (every class needs one): 50 million made 4 GB of str first
    np.savez_compressed(path, **good, class_names=np.array(["ab"] * 100_000))
    err = str(expect_data_error(config("features", path), path))
    assert "class_names has 100000 names, more than the 4 training examples (every class needs one)" in err


def test_a_features_archive_that_unpacks_past_the_machines_memory_is_refused(tmp_path, monkeypatch):
    """Deflate packs zeros 1032 to 1: a 25 MB .npz unpacks to 24 GB, which the OOM killer, not an
    error, ended. The machine's memory is what cannot exist here (24 GB of zeros to pack): 1 MiB."""
    import zipfile

    from dm_tune.datasets import _base

    path = tmp_path / "f.npz"
    np.savez_compressed(path, x_train=np.zeros((4096, 64), dtype=np.float32), y_train=np.arange(4096) % 2,
                        x_test=np.zeros((2, 64), dtype=np.float32), y_test=np.array([0, 1]))
    assert path.stat().st_size < 2**16
    assert len(prepare(config("features", path)).train) > 0  # (it loads on this machine)
    monkeypatch.setattr(_base, "physical_memory", lambda: 2**20)
    err = str(expect_data_error(config("features", path), path))
    unpacked = sum(info.file_size for info in zipfile.ZipFile(path).infolist())
    assert f"unpacks to {unpacked:,} bytes, more than this machine's memory (1,048,576 bytes)" in err


def test_a_data_root_that_is_a_file_or_the_other_cifar_is_named(tmp_path):
    """A file as data_root was "<file>/cifar-10-batches-py/data_batch_1: file not found"; CIFAR-100's
    folder given as cifar10 only "data_batch_1: file not found"."""
    (tmp_path / "f").write_text("x")
    for dataset in ("cifar10", "imagefolder", "imdb"):
        with pytest.raises(ConfigError, match=f"it is a file; dataset '{dataset}' is read from a folder"):
            prepare(config(dataset, tmp_path / "f"))
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # was a RuntimeError from Path.resolve, a traceback
    for dataset in ("cifar10", "features"):
        with pytest.raises(ConfigError, match="data_root: .*loop' is not allowed; it is a symbolic link in a loop"):
            prepare(config(dataset, tmp_path / "loop"))
    root = make_cifar100(tmp_path / "c100")
    err = expect_data_error(config("cifar10", root), root / "cifar-10-batches-py")
    assert "holds cifar-100-python/: that is dataset 'cifar100' (--dataset cifar100)" in str(err)
    root = make_cifar10(tmp_path / "c10")
    err = expect_data_error(config("cifar100", root), root / "cifar-100-python")
    assert "(--dataset cifar10)" in str(err)


@pytest.mark.parametrize("what", ["root", "parent", "split", "class", "sub-folder"])
def test_data_this_user_cannot_read_is_one_line(tmp_path, what):
    """A data root (or its parent, or a folder in it) without read permission: a PermissionError
    traceback from the loader, exit 1. A class folder was "has no image files", and a folder in a
    class was left out without a word. Run as a user to whom permissions apply."""
    import subprocess

    from tests.conftest import DM_TUNE, permissions_preexec

    preexec = permissions_preexec()
    root = make_imagefolder(tmp_path / "parent" / "data")
    (root / "train" / "bee" / "sub").mkdir()
    (root / "train" / "bee" / "0.png").rename(root / "train" / "bee" / "sub" / "0.png")
    locked = {"root": root, "parent": root.parent, "split": root / "train", "class": root / "train" / "bee",
              "sub-folder": root / "train" / "bee" / "sub"}[what]
    locked.chmod(0)
    try:
        proc = subprocess.run([DM_TUNE, "train", "--dataset", "imagefolder", "--data-root", str(root), "--epochs", "1"],
                              capture_output=True, text=True, timeout=120, preexec_fn=preexec)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    # the data_root named, and the folder in it that cannot be read (the root, its first folder read)
    assert line.startswith(f"dm-tune: error: data_root {root}") and "cannot be read (permission denied)" in line, line
    if what in ("split", "class", "sub-folder"):
        assert f"data_root {root}: {locked.relative_to(root).as_posix()}: cannot be read" in line, line


# --- the whole pipeline, one epoch each -------------------------------------------------------


def test_train_one_epoch_cifar10(cifar10_root):
    run_one_epoch("cifar10", cifar10_root, model="cnn", noise_rate=0.2)


def test_train_one_epoch_clothing1m(clothing_root):
    run_one_epoch("clothing1m", clothing_root, model="cnn", dataset_options={"image_size": 32})


def test_train_one_epoch_imdb_features(imdb_root):
    run_one_epoch("imdb", imdb_root, dataset_options={"dims": 4})


def test_train_one_epoch_imdb_tokens(imdb_root):
    run_one_epoch("imdb", imdb_root, dataset_options={"representation": "tokens", "max_len": 16})


def test_a_long_numpy_scalar_shared_by_reference_is_refused(tmp_path):
    """One 300 KB np.bytes_ scalar in 2000 keys (S, i), each copy of it printed into the "lacks the
    keys" message (55 000 such keys in 945 KB filled 9 GB): a numpy scalar or an encoding of long
    text is long text, not to be shared."""
    import io

    from dm_tune.datasets._pickles import unsafe_pickle

    scalar = np.bytes_(b"a" * 300_000)
    for blob in ({(scalar, i): i for i in range(2000)}, [scalar] * 2000, [np.str_("b" * 300)] * 2):
        assert unsafe_pickle(io.BytesIO(pickle.dumps(blob, protocol=2))) == "a long text used twice by reference"
    short = [np.bytes_(b"a" * 10)] * 2000
    assert unsafe_pickle(io.BytesIO(pickle.dumps(short, protocol=2))) is None


def test_a_cifar_pickle_lacking_its_keys_names_some_of_those_it_has(tmp_path):
    root = make_cifar10(tmp_path)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    _dump(batch, {**{f"key{i:02d}" + "x" * 100: i for i in range(30)}, "labels": list(range(10))})
    error = expect_data_error(config("cifar10", tmp_path), batch)
    assert f"lacks the keys data, labels (present: key00{'x' * 35}, " in str(error)
    assert "and 11 more)" in str(error) and "x" * 36 not in str(error)
