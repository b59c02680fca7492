"""Label-noise models and class imbalance: one contract every synthetic noise model must pass,
plus each model's own protocol, and the imbalance profiles."""

from __future__ import annotations

import numpy as np
import pytest

from dm_tune.datasets.cifar import FINE_TO_COARSE
from dm_tune.noise import (IMBALANCE_KINDS, NOISE_MODELS, NoiseContext, apply_noise, check_noise, class_counts,
                           imbalance_index, rate_limit)

# Models that do not draw noise themselves: "none" keeps the labels, "file" reads them (tested
# with the on-disk datasets). Every other model in NOISE_MODELS must appear in WORLDS below.
NOT_SYNTHETIC = {"none", "file"}

CIFAR100_GROUPS = tuple(tuple(c for c in range(100) if FINE_TO_COARSE[c] == g) for g in range(20))


def _labels(num_classes: int, base: int) -> np.ndarray:
    """Unequal class sizes (base + c % 7), shuffled, so per-class rounding matters."""
    sizes = [base + c % 7 for c in range(num_classes)]
    labels = np.repeat(np.arange(num_classes), sizes)
    return np.random.default_rng(123).permutation(labels).astype(np.int64)


# name -> (labels, num_classes, class groups)
WORLDS = {
    "symmetric": (_labels(10, 53), 10, None),
    "pair": (_labels(10, 53), 10, None),
    "cifar100-superclass": (_labels(100, 21), 100, CIFAR100_GROUPS),
}
SYNTHETIC = [name for name in NOISE_MODELS if name not in NOT_SYNTHETIC]
RATES = [0.2, 0.45]


def run(name: str, rate: float, seed: int = 0):
    labels, num_classes, groups = WORLDS[name]
    ctx = NoiseContext(num_classes=num_classes, rate=rate, rng=np.random.default_rng(seed),
                       class_groups=groups)
    return labels, num_classes, apply_noise(name, labels, ctx)


def test_every_synthetic_model_is_covered_by_the_contract():
    assert sorted(SYNTHETIC) == sorted(WORLDS)


# --- the shared contract ---------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", SYNTHETIC)
def test_labels_keep_length_and_range(name, rate):
    labels, num_classes, out = run(name, rate)
    assert out.labels.shape == labels.shape == out.is_noisy.shape
    assert out.labels.dtype == np.int64
    assert out.labels.min() >= 0 and out.labels.max() < num_classes


@pytest.mark.parametrize("name", SYNTHETIC)
def test_inputs_are_not_modified(name):
    labels, _, _ = run(name, 0.45)
    before = labels.copy()
    run(name, 0.45)
    np.testing.assert_array_equal(labels, before)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_reproducible_by_seed(name):
    _, _, a = run(name, 0.45, seed=7)
    _, _, b = run(name, 0.45, seed=7)
    _, _, c = run(name, 0.45, seed=8)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_noisy_labels_differ_exactly_where_marked(name):
    labels, _, out = run(name, 0.45)
    assert out.is_noisy.any()
    assert np.all(out.labels[out.is_noisy] != labels[out.is_noisy])
    np.testing.assert_array_equal(out.labels[~out.is_noisy], labels[~out.is_noisy])
    assert out.realised_rate == out.is_noisy.mean()


@pytest.mark.parametrize("name", SYNTHETIC)
def test_rate_zero_gives_no_noise(name):
    labels, _, out = run(name, 0.0)
    np.testing.assert_array_equal(out.labels, labels)
    assert not out.is_noisy.any() and out.realised_rate == 0.0


def _expected_noisy_per_class(name: str, labels: np.ndarray, num_classes: int, rate: float,
                              out) -> np.ndarray:
    sizes = np.bincount(labels, minlength=num_classes)
    per_class = np.round(rate * sizes).astype(int)  # numpy and Python both round half to even
    if name == "symmetric":
        return None  # counted over the whole set, not per class
    if name == "cifar100-superclass":  # only the two paired classes of each group are corrupted
        touched = np.zeros(num_classes, bool)
        touched[np.unique(labels[out.is_noisy])] = True
        return np.where(touched, per_class, 0)
    return per_class


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", SYNTHETIC)
def test_realised_rate_is_requested_rate_up_to_rounding(name, rate):
    labels, num_classes, out = run(name, rate)
    expected = _expected_noisy_per_class(name, labels, num_classes, rate, out)
    if expected is None:
        assert out.is_noisy.sum() == round(rate * len(labels))
    else:
        got = np.bincount(labels[out.is_noisy], minlength=num_classes)
        np.testing.assert_array_equal(got, expected)
    assert out.realised_rate == pytest.approx(out.is_noisy.sum() / len(labels), abs=0)


# --- each model's protocol -------------------------------------------------------------------


def test_symmetric_uses_every_other_class_about_uniformly():
    labels, num_classes, out = run("symmetric", 0.45)
    shift = (out.labels[out.is_noisy] - labels[out.is_noisy]) % num_classes
    counts = np.bincount(shift, minlength=num_classes)
    assert counts[0] == 0  # never the same class
    expected = out.is_noisy.sum() / (num_classes - 1)
    assert np.all(np.abs(counts[1:] - expected) < 0.5 * expected), counts


def test_pair_maps_each_class_to_the_next_only():
    labels, num_classes, out = run("pair", 0.45)
    noisy = out.is_noisy
    np.testing.assert_array_equal(out.labels[noisy], (labels[noisy] + 1) % num_classes)
    assert set(labels[noisy]) == set(range(num_classes))  # every class, including C-1 -> 0


def test_superclass_swaps_one_pair_inside_every_group():
    labels, _, out = run("cifar100-superclass", 0.45)
    group_of = np.asarray(FINE_TO_COARSE)
    src, dst = labels[out.is_noisy], out.labels[out.is_noisy]
    np.testing.assert_array_equal(group_of[src], group_of[dst])
    pairs = {(int(a), int(b)) for a, b in zip(src, dst)}
    assert all((b, a) in pairs for a, b in pairs)  # a -> b and b -> a
    touched = np.unique(src)
    assert len(touched) == 2 * len(CIFAR100_GROUPS)
    assert np.all(np.bincount(group_of[touched], minlength=20) == 2)
    for a in touched:  # each corrupted class goes to exactly one partner
        assert len(set(dst[src == a])) == 1


@pytest.mark.parametrize("name", ["pair", "cifar100-superclass"])
@pytest.mark.parametrize("rate, per_class", [(0.42, 6), (0.45, 6), (0.4, 4), (0.49, 100)])
def test_a_pairwise_model_relabels_fewer_than_half_of_any_class(name, rate, per_class):
    """Rates of 0.5 and up are refused (a class's label and its partner's would name its examples
    equally often), but rounding per class reached half below them: 0.42 of the 6 tracks of each
    reid-synth identity relabelled 3 of every 6."""
    check_noise(name, rate, 100, CIFAR100_GROUPS)  # (accepted)
    num_classes = 100
    labels = np.repeat(np.arange(num_classes), per_class)
    ctx = NoiseContext(num_classes=num_classes, rate=rate, rng=np.random.default_rng(0),
                       class_groups=CIFAR100_GROUPS)
    out = apply_noise(name, labels, ctx)
    flipped = np.bincount(labels[out.is_noisy], minlength=num_classes)
    assert flipped.max() < per_class / 2 and flipped.max() == min(round(rate * per_class), (per_class - 1) // 2)
    # a class with no example (the last ten here: asked for -1 examples, an error) relabels none
    kept = labels[labels < 90]
    sparse = apply_noise(name, kept, NoiseContext(num_classes=num_classes, rate=rate, rng=np.random.default_rng(0),
                                                  class_groups=CIFAR100_GROUPS))
    assert np.bincount(kept[sparse.is_noisy], minlength=num_classes).max() == flipped.max()


def test_superclass_needs_class_groups():
    labels, num_classes, _ = WORLDS["cifar100-superclass"]
    ctx = NoiseContext(num_classes=num_classes, rate=0.3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="class groups"):
        apply_noise("cifar100-superclass", labels, ctx)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_the_rate_limit_is_where_a_wrong_label_becomes_as_common_as_the_true_one(name):
    """Below ``rate_limit`` every class's true label stays its most common one; at the limit some
    wrong label is as common (``check_noise`` refuses it: the labels no longer identify the classes)."""
    from dm_tune._validate import ConfigError

    labels, num_classes, groups = WORLDS[name]
    limit = rate_limit(name, num_classes)
    for rate, identifiable in ((limit - 0.05, True), (limit, False)):
        ctx = NoiseContext(num_classes=num_classes, rate=rate, rng=np.random.default_rng(0), class_groups=groups)
        out = apply_noise(name, labels, ctx).labels
        counts = np.stack([np.bincount(out[labels == c], minlength=num_classes) for c in range(num_classes)])
        own = counts[np.arange(num_classes), np.arange(num_classes)]
        if name == "symmetric":  # wrong labels spread at random: a wrong label's share on average
            ratio = (counts.sum() - own.sum()) / (num_classes - 1) / own.sum()
        else:  # each corrupted class has one partner label
            ratio = (np.where(np.eye(num_classes, dtype=bool), -1, counts).max(axis=1) / own).max()
        assert (ratio < 1) if identifiable else (ratio >= 0.9), (rate, ratio)
        if identifiable:
            check_noise(name, rate, num_classes, groups)
        else:
            with pytest.raises(ConfigError, match=f"noise_rate: {rate!r} is not allowed; expected below"):
                check_noise(name, rate, num_classes, groups)
    with pytest.raises(ConfigError, match="settings.noise: 'cifar100-superclass'.*groups"):
        check_noise("cifar100-superclass", 0.2, 10, None, prefix="settings.")
    # a label file is held to random labels' rate (noise.from_file refuses one that differs that often)
    assert rate_limit("none", 10) is None and rate_limit("file", 10) == pytest.approx(0.9)


def test_none_leaves_labels_unchanged_whatever_the_rate():
    labels, num_classes, _ = WORLDS["symmetric"]
    ctx = NoiseContext(num_classes=num_classes, rate=0.4, rng=np.random.default_rng(0))
    out = apply_noise("none", labels, ctx)
    np.testing.assert_array_equal(out.labels, labels)
    assert out.labels is not labels
    assert not out.is_noisy.any() and out.realised_rate == 0.0


# --- class imbalance -------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [2.0, 10.0, 50.0, 100.0])
@pytest.mark.parametrize("num_classes", [2, 7, 10])
@pytest.mark.parametrize("kind", ["longtail", "step"])
def test_class_counts_respect_the_ratio(kind, num_classes, ratio):
    available = np.full(num_classes, 500)
    counts = class_counts(available, kind, ratio)
    assert counts.dtype == np.int64 and len(counts) == num_classes
    assert counts.max() == 500 and np.all(counts <= available) and np.all(counts >= 1)
    assert counts.min() == int(500 / ratio)  # max / min is the ratio up to flooring the smallest
    if kind == "longtail":
        assert np.all(np.diff(counts) <= 0) and counts[0] == 500
        if num_classes > 2:  # geometric in between, not a step
            assert len(np.unique(counts)) == num_classes
    else:
        minority = np.arange(num_classes) >= num_classes - num_classes // 2
        assert np.all(counts[~minority] == 500)
        assert np.all(counts[minority] == counts.min()) and counts.min() < 500


def test_step_minority_is_the_last_half_rounded_down():
    counts = class_counts(np.full(7, 100), "step", 10.0)
    np.testing.assert_array_equal(counts, [100, 100, 100, 100, 10, 10, 10])


def test_binary_ten_to_one():
    for kind in ("longtail", "step"):
        np.testing.assert_array_equal(class_counts(np.array([1000, 1000]), kind, 10.0), [1000, 100])


def test_no_imbalance_keeps_everything():
    available = np.array([30, 50, 40])
    np.testing.assert_array_equal(class_counts(available, "none", 1.0), available)
    np.testing.assert_array_equal(class_counts(available, "longtail", 1.0), available)


def test_counts_never_exceed_what_is_available_and_keep_the_ratio():
    """The profile is scaled to what every class can fill: a class short of its share lowers them
    all (capping that class alone, [100, 5, 100, 100] gave a ratio of 20, not 4)."""
    counts = class_counts(np.array([100, 5, 100, 100]), "longtail", 4.0)
    assert counts.tolist() == [8, 5, 3, 2] and counts[0] / counts[-1] == 4.0
    # a majority class smaller than a minority one: step 10 on [50, 200] kept [50, 20] (ratio 2.5)
    assert class_counts(np.array([50, 200]), "step", 10.0).tolist() == [50, 5]
    assert class_counts(np.array([30, 0, 300]), "step", 3.0).tolist() == [30, 0, 10]  # an empty class stays so


def test_unknown_imbalance_is_rejected():
    assert "zipf" not in IMBALANCE_KINDS
    with pytest.raises(ValueError, match="zipf"):
        class_counts(np.full(3, 10), "zipf", 2.0)


@pytest.mark.parametrize("kind", ["longtail", "step"])
def test_imbalance_index_draws_the_counts(kind):
    labels = _labels(10, 200)
    idx = imbalance_index(labels, 10, kind, 10.0, np.random.default_rng(0))
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    assert idx.min() >= 0 and idx.max() < len(labels)
    expected = class_counts(np.bincount(labels, minlength=10), kind, 10.0)
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=10), expected)
    again = imbalance_index(labels, 10, kind, 10.0, np.random.default_rng(0))
    other = imbalance_index(labels, 10, kind, 10.0, np.random.default_rng(1))
    np.testing.assert_array_equal(idx, again)
    assert not np.array_equal(idx, other)


# --- noise "file": a CIFAR-N .pt file checked against the dataset --------------------------


def _from_cifar_n(tmp_path, blob: dict, key: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
    import torch

    from dm_tune.noise import from_file

    path = tmp_path / "CIFAR-100_human.pt"
    torch.save(blob, path)
    ctx = NoiseContext(num_classes, 0.0, np.random.default_rng(0), file=path, key=key)
    return from_file(labels, ctx)


@pytest.mark.parametrize("key", ["clean_coarse_label", "noisy_coarse_label"])
def test_a_coarse_cifar_100n_set_is_refused_for_the_fine_classes(tmp_path, key):
    """clean_coarse_label was taken as labels (its own clean key went unchecked); noisy_coarse_label was
    refused as "another dataset, or another order"."""
    from dm_tune.datasets import DataError

    fine = np.arange(200) % 100
    coarse = np.asarray(FINE_TO_COARSE)[fine]
    blob = {"clean_label": fine, "noisy_label": fine, "clean_coarse_label": coarse, "noisy_coarse_label": coarse}
    with pytest.raises(DataError, match=f"its {key} is a 20-superclass label set, but the dataset trains its "
                       "100 fine classes; choose a fine label set such as noisy_label"):
        _from_cifar_n(tmp_path, blob, key, fine, 100)
    np.testing.assert_array_equal(_from_cifar_n(tmp_path, blob, "noisy_label", fine, 100), fine)


def test_the_clean_labels_of_a_cifar_n_file_are_checked_whatever_the_key(tmp_path):
    """Chosen by its clean key, another dataset's file of the right length and range was taken."""
    from dm_tune.datasets import DataError

    labels = np.arange(300) % 100
    other = np.random.default_rng(0).integers(0, 10, 300)  # a CIFAR-10N-like file of the same length
    for key in ("aggre_label", "clean_label"):
        with pytest.raises(DataError, match=r"its clean_label disagrees with the dataset's labels at \d+ of 300"):
            _from_cifar_n(tmp_path, {"clean_label": other, "aggre_label": other}, key, labels, 100)
    np.testing.assert_array_equal(_from_cifar_n(tmp_path, {"clean_label": labels}, "clean_label", labels, 100), labels)


def test_an_imbalance_the_classes_cannot_take_is_refused():
    from dm_tune._validate import ConfigError
    from dm_tune.noise import check_imbalance

    available = np.full(10, 100)
    check_imbalance(available, "longtail", 100.0)  # the smallest class keeps one: ratio 100
    check_imbalance(available, "step", 140.0)  # rounded to one example: 100, within the counts' rounding
    with pytest.raises(ConfigError, match="imbalance_ratio: 160.0 is not allowed; expected at most about 100"):
        check_imbalance(available, "longtail", 160.0)
    check_imbalance(available, "none", 1e9)


def test_indices_by_class_are_each_class_positions_in_order():
    """One stable sort gives what one pass per class gave (the noise draws depend on their order)."""
    from dm_tune.noise import indices_by_class

    rng = np.random.default_rng(0)
    for labels in (rng.integers(0, 7, 500), rng.integers(0, 3, 40).astype(np.int32), np.zeros(0, np.int64)):
        classes = range(9)  # (7 and 8 absent: empty)
        got = indices_by_class(labels, classes)
        assert len(got) == 9
        for c, idx in zip(classes, got):
            assert idx.tolist() == np.flatnonzero(labels == c).tolist()
