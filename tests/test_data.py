"""prepare() on the embedded datasets: validation carving, label noise, imbalance, determinism.

To follow individual examples through prepare(), ``tagged`` swaps a dataset's training inputs
for their own row numbers (labels, class sizes and test set untouched): then a split's inputs
say exactly which training examples it holds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dm_tune.config import TrainConfig
from dm_tune.data import prepare
from dm_tune.datasets import DATASETS, EMBEDDED, Source, Split, task_of

_SOURCES: dict[str, Source] = {}


def source(name: str) -> Source:
    if name not in _SOURCES:  # loading digits/mnist1d takes ~1 s: once per module
        _SOURCES[name] = DATASETS[name][0](None, {}, False)
    return _SOURCES[name]


def tagged(name: str) -> Source:
    s = source(name)
    rows = torch.arange(len(s.train), dtype=torch.float32).unsqueeze(1)
    return dataclasses.replace(s, train=Split(rows, s.train.labels))


def ids(split: Split) -> np.ndarray:
    return split.inputs[:, 0].long().numpy()


def config(name: str, **kw) -> TrainConfig:
    return TrainConfig.from_dict({"dataset": name, "device": "cpu", **kw})


@pytest.fixture(params=[n for n in EMBEDDED if task_of(n) == "classification"])  # reid-synth: test_retrieval.py
def name(request) -> str:
    return request.param


def test_embedded_datasets_are_the_in_memory_ones():
    assert set(EMBEDDED) == {"digits", "mnist1d", "reid-synth"}


@pytest.mark.parametrize("fraction", [0.2, 0.35])
def test_validation_holds_a_fraction_of_every_class_disjoint_from_train(name, fraction):
    s = tagged(name)
    data = prepare(config(name, val_fraction=fraction), s)
    train_ids, val_ids = ids(data.train), ids(data.val)
    assert len(np.unique(train_ids)) == len(train_ids) and len(np.unique(val_ids)) == len(val_ids)
    assert not set(train_ids) & set(val_ids)
    np.testing.assert_array_equal(np.sort(np.concatenate([train_ids, val_ids])), np.arange(len(s.train)))
    clean = s.train.labels.numpy()
    sizes = np.bincount(clean, minlength=data.num_classes)
    held = np.bincount(clean[val_ids], minlength=data.num_classes)
    np.testing.assert_array_equal(held, np.round(fraction * sizes))
    assert data.info["num_train"] == len(train_ids) and data.info["num_val"] == len(val_ids)


def test_the_validation_split_never_takes_a_class_last_training_example():
    """A class of one training example at val_fraction 0.7 (round(0.7) = 1) went wholly to
    validation: a class with nothing to train on, which noise then moved labels into. It keeps
    its last example; every other class holds its fraction."""
    from dm_tune.data import _stratified_split

    labels = np.array([0] * 15 + [1] * 14 + [2] + [3] * 2)
    keep, held = _stratified_split(labels, 0.7, np.random.default_rng(0))
    assert np.array_equal(np.bincount(labels[keep], minlength=4), [5, 4, 1, 1])
    assert np.array_equal(np.bincount(labels[held], minlength=4), [10, 10, 0, 1])
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(len(labels)))


def test_real_inputs_follow_their_labels(name):
    """Without tagging: every train/val row is a row of the source with the same clean label."""
    s = source(name)
    data = prepare(config(name, noise_rate=0.4), s)
    lookup = {row.tobytes(): i for i, row in enumerate(s.train.inputs.numpy())}
    assert len(lookup) == len(s.train)  # no duplicate inputs, so rows identify examples
    train_rows = [lookup[r.tobytes()] for r in data.train.inputs.numpy()]
    val_rows = [lookup[r.tobytes()] for r in data.val.inputs.numpy()]
    np.testing.assert_array_equal(data.clean_train_labels.numpy(), s.train.labels.numpy()[train_rows])
    np.testing.assert_array_equal(data.val.labels.numpy(), s.train.labels.numpy()[val_rows])
    assert not set(train_rows) & set(val_rows)


def test_test_split_is_untouched(name):
    s = source(name)
    data = prepare(config(name, noise_rate=0.4, imbalance="step", imbalance_ratio=5), s)
    assert torch.equal(data.test.inputs, s.test.inputs) and torch.equal(data.test.labels, s.test.labels)
    assert data.info["num_test"] == len(s.test)


def test_validation_labels_are_clean_by_default(name):
    s = tagged(name)
    data = prepare(config(name, noise_rate=0.4), s)
    np.testing.assert_array_equal(data.val.labels.numpy(), s.train.labels.numpy()[ids(data.val)])


def test_validation_labels_are_noisy_with_val_noisy(name):
    s = tagged(name)
    clean = s.train.labels.numpy()
    data = prepare(config(name, noise_rate=0.4, val_noisy=True), s)
    val_wrong = data.val.labels.numpy() != clean[ids(data.val)]
    assert 0.3 < val_wrong.mean() < 0.5
    # the noise draw covers the whole training set: train + val hold exactly round(0.4 * n) flips
    assert val_wrong.sum() + int(data.is_noisy.sum()) == round(0.4 * len(clean))
    # and the validation set is the same one as with clean validation labels
    np.testing.assert_array_equal(ids(data.val), ids(prepare(config(name, noise_rate=0.4), s).val))


@pytest.mark.parametrize("noise, rate", [("symmetric", 0.4), ("pair", 0.3), ("none", 0.0)])
def test_train_noise_and_realised_rate(name, noise, rate):
    s = tagged(name)
    data = prepare(config(name, noise=noise, noise_rate=rate), s)
    noisy, clean = data.train.labels, data.clean_train_labels
    np.testing.assert_array_equal(clean.numpy(), s.train.labels.numpy()[ids(data.train)])
    assert torch.equal(data.is_noisy, noisy != clean)
    assert bool(data.noise_known.all())
    assert data.noise_rate == pytest.approx(float(data.is_noisy.float().mean()), abs=0)
    assert data.noise_rate == pytest.approx(rate, abs=0.03)
    if noise == "pair":
        np.testing.assert_array_equal(noisy[data.is_noisy].numpy(),
                                      (clean[data.is_noisy].numpy() + 1) % data.num_classes)


def test_same_data_seed_same_data_other_seed_other_data(name):
    s = tagged(name)
    a = prepare(config(name, noise_rate=0.4, seed=1, data_seed=5), s)
    b = prepare(config(name, noise_rate=0.4, seed=2, data_seed=5), s)  # seed is for training only
    c = prepare(config(name, noise_rate=0.4, seed=1, data_seed=6), s)
    for split in ("train", "val"):
        assert torch.equal(getattr(a, split).inputs, getattr(b, split).inputs)
        assert torch.equal(getattr(a, split).labels, getattr(b, split).labels)
    assert not np.array_equal(ids(a.val), ids(c.val))
    label_a, label_c = (_train_labels_by_id(d, len(s.train)) for d in (a, c))
    both = (label_a >= 0) & (label_c >= 0)
    assert (label_a[both] != label_c[both]).mean() > 0.2  # another noise draw too


def _train_labels_by_id(data, n: int) -> np.ndarray:
    out = np.full(n, -1)
    out[ids(data.train)] = data.train.labels.numpy()
    return out


def test_data_seed_defaults_to_seed(name):
    s = tagged(name)
    a = prepare(config(name, noise_rate=0.4, seed=5), s)
    b = prepare(config(name, noise_rate=0.4, seed=1, data_seed=5), s)
    assert np.array_equal(ids(a.val), ids(b.val)) and torch.equal(a.train.labels, b.train.labels)


def test_noise_and_imbalance_do_not_move_the_validation_split(name):
    s = tagged(name)
    base = ids(prepare(config(name, noise="none"), s).val)
    for kw in ({"noise_rate": 0.2}, {"noise_rate": 0.6}, {"noise": "pair", "noise_rate": 0.3},
               {"noise_rate": 0.4, "imbalance": "longtail", "imbalance_ratio": 10}):
        np.testing.assert_array_equal(ids(prepare(config(name, **kw), s).val), base)


@pytest.mark.parametrize("kind", ["longtail", "step"])
def test_imbalance_applies_to_train_only(name, kind):
    s = tagged(name)
    balanced = prepare(config(name, noise_rate=0.4), s)
    data = prepare(config(name, noise_rate=0.4, imbalance=kind, imbalance_ratio=10), s)
    np.testing.assert_array_equal(ids(data.val), ids(balanced.val))
    assert torch.equal(data.val.labels, balanced.val.labels)
    assert set(ids(data.train)) < set(ids(balanced.train))
    counts = np.bincount(data.clean_train_labels.numpy(), minlength=data.num_classes)
    assert counts.max() / counts.min() == pytest.approx(10, rel=0.1)
    assert data.info["imbalance_ratio_realised"] == counts.max() / counts.min()  # recorded with the result
    assert "imbalance_ratio_realised" not in balanced.info
    if kind == "step":
        assert np.all(counts[5:] == counts.min()) and np.all(counts[:5] > counts.min())
    # noisy labels stay attached to their examples through the subsampling
    keep = np.searchsorted(ids(balanced.train), ids(data.train))
    assert torch.equal(data.train.labels, balanced.train.labels[keep])
    assert torch.equal(data.is_noisy, balanced.is_noisy[keep])


def test_data_describes_itself(name):
    data = prepare(config(name), source(name))
    s = source(name)
    assert data.num_classes == s.num_classes == 10
    assert data.input_kind == s.input_kind and data.default_model == s.default_model
    assert data.input_shape == tuple(s.train.inputs.shape[1:])
    assert data.defaults == s.defaults and data.info["dataset"] == name


def test_the_training_class_counts_are_what_prepare_keeps():
    """The search's pre-flight check of an imbalance ratio counts the classes as prepare() keeps
    them (it floored the validation split's complement: one fewer, and refused ratios trials took)."""
    from dm_tune.data import load_source, training_class_counts

    for fraction in (0.1, 0.2, 0.25):
        config = TrainConfig(dataset="digits", val_fraction=fraction, noise_rate=0.0)
        source = load_source(config)
        kept = np.bincount(prepare(config, source).clean_train_labels.numpy(), minlength=10)
        assert np.array_equal(training_class_counts(source, fraction), kept), fraction


def test_an_unreachable_imbalance_is_refused_only_where_asked():
    """A trial (and a resumed study's trials) train what the classes can take, as before; dm-tune
    train and a new search refuse it."""
    from dm_tune._validate import ConfigError

    config = TrainConfig(dataset="digits", imbalance="longtail", imbalance_ratio=5000.0)
    assert prepare(config).info["imbalance_ratio_realised"] < 200
    with pytest.raises(ConfigError, match="imbalance_ratio: 5000.0 is not allowed; expected at most about"):
        prepare(config, strict_imbalance=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("count", [99, 10**12, True])
def test_mnist1d_sample_counts_are_bounded(count):
    """num_samples had no upper bound: 10**12 generated on (about 7,000 a second) without a word."""
    from dm_tune._validate import ConfigError

    with pytest.raises(ConfigError, match=r"dataset_options.num_samples: .* is not allowed; expected an integer in "
                                          r"\[100, 1000000\]"):
        prepare(TrainConfig(dataset="mnist1d", dataset_options={"num_samples": count}))
