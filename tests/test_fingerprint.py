"""The data's fingerprint: the same for the same content wherever it lies, another for one changed value."""

from __future__ import annotations

import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_datasets_disk import make_cifar10, make_clothing1m, make_features, make_imagefolder

from dm_tune.config import TrainConfig
from dm_tune.data import load_source, prepare
from dm_tune.datasets._fingerprint import SHOWN, file_fingerprint, source_fingerprint


def _print(dataset: str, root: Path | None = None, **kw) -> str:
    config = TrainConfig(dataset=dataset, data_root=str(root) if root else None, **kw)
    return load_source(config).info["fingerprint"]


def _moved(root: Path, to: Path) -> Path:
    shutil.copytree(root, to, symlinks=True)
    return to


def test_an_embedded_dataset_has_one_fingerprint_and_prepare_records_it():
    first = _print("digits")
    assert len(first) == SHOWN and int(first, 16) >= 0
    assert _print("digits") == first != _print("mnist1d")
    data = prepare(TrainConfig(dataset="digits", noise="symmetric", noise_rate=0.4, seed=3))
    assert data.info["fingerprint"] == first  # (the dataset's, before this run's own noise draw and split)
    assert "noise_file_fingerprint" not in data.info


def test_a_feature_file_changed_in_one_label_or_one_value_has_another_fingerprint(tmp_path):
    root = make_features(tmp_path / "a")
    first = _print("features", root)
    assert _print("features", _moved(root, tmp_path / "b")) == first  # content, not place
    arrays = dict(np.load(root / "features.npz"))
    for change in ("y_train", "x_test"):
        edited = {**arrays, change: arrays[change].copy()}
        edited[change][4] = edited[change][4] + 1 if change == "y_train" else edited[change][4] * 0.5
        np.savez(tmp_path / "c.npz", **edited)
        assert _print("features", tmp_path / "c.npz") != first, change
    # a float64 value that float32 (as trained) cannot tell apart is the same data
    np.savez(tmp_path / "d.npz", **{**arrays, "x_train": arrays["x_train"] + 1e-12})
    assert _print("features", tmp_path / "d.npz") == first


def test_cifar_changed_in_one_pixel_has_another_fingerprint(tmp_path):
    root = make_cifar10(tmp_path / "a")
    first = _print("cifar10", root)
    assert _print("cifar10", _moved(root, tmp_path / "b")) == first
    batch = tmp_path / "b" / "cifar-10-batches-py" / "data_batch_3"
    d = pickle.loads(batch.read_bytes())
    d["data"][7, 100] ^= 1
    batch.write_bytes(pickle.dumps(d))
    assert _print("cifar10", tmp_path / "b") != first


def test_streamed_images_are_fingerprinted_by_their_names_and_labels(tmp_path):
    root = make_imagefolder(tmp_path / "a")
    first = _print("imagefolder", root)
    assert _print("imagefolder", _moved(root, tmp_path / "b")) == first
    (tmp_path / "b" / "train" / "bee" / "1.jpg").rename(tmp_path / "b" / "train" / "bee" / "9.jpg")
    renamed = _print("imagefolder", tmp_path / "b")
    assert renamed != first
    (tmp_path / "b" / "train" / "bee" / "9.jpg").rename(tmp_path / "b" / "train" / "cat" / "9.jpg")  # relabelled
    assert _print("imagefolder", tmp_path / "b") not in (first, renamed)
    # Clothing1M: its label lists decide the labels, as given and verified
    clothing = make_clothing1m(tmp_path / "c")
    first = _print("clothing1m", clothing)
    kv = clothing / "noisy_label_kv.txt"
    lines = kv.read_text().splitlines()
    key, label = lines[5].split()
    lines[5] = f"{key} {(int(label) + 1) % 14}"
    kv.write_text("\n".join(lines) + "\n")
    assert _print("clothing1m", clothing) != first


def test_a_label_file_is_fingerprinted_beside_the_dataset(tmp_path):
    labels = tmp_path / "labels.npy"
    source = load_source(TrainConfig(dataset="digits"))
    given = source.train.labels.numpy().copy()
    np.save(labels, given)
    config = TrainConfig(dataset="digits", noise="file", noise_file=str(labels))
    data = prepare(config, source)
    assert data.info["fingerprint"] == source.info["fingerprint"]
    assert data.info["noise_file_fingerprint"] == file_fingerprint(labels)
    given[11] = (given[11] + 1) % 10
    np.save(labels, given)
    assert prepare(config, source).info["noise_file_fingerprint"] != data.info["noise_file_fingerprint"]


def test_a_source_built_by_hand_is_fingerprinted_by_prepare(tmp_path):
    import torch

    from dm_tune.datasets import Source, Split

    x, y = torch.randn(40, 3), torch.arange(40) % 2
    source = Source(name="features", train=Split(x, y), test=Split(x[:10], y[:10]), num_classes=2,
                    input_kind="vector", default_model="mlp")
    data = prepare(TrainConfig(dataset="features", data_root=str(tmp_path)), source)
    assert data.info["fingerprint"] == source_fingerprint(source)
    y2 = y.clone()
    y2[0] = 1
    assert source_fingerprint(replace(source, train=Split(x, y2))) != source_fingerprint(source)


def test_a_streamed_dataset_that_says_nothing_of_its_content_is_refused():
    import torch

    from dm_tune.datasets import Source, Split

    class Opaque(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(3)

    y = torch.tensor([0, 1, 0, 1])
    source = Source(name="x", train=Split(Opaque(), y), test=Split(Opaque(), y), num_classes=2,
                    input_kind="vector", default_model="mlp")
    with pytest.raises(TypeError, match="Opaque says nothing of its content"):
        source_fingerprint(source)
