"""Retrieval: the metrics against hand-checked cases and scikit-learn's per-query AP, the embedded
stand-in (reid-synth), identity noise per track, and a retrieval training run's result."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from dm_tune._reid_eval import classifier_layer, embed
from dm_tune._validate import ConfigError
from dm_tune.cli import main
from dm_tune.config import TrainConfig
from dm_tune.data import prepare
from dm_tune.datasets import reid_synth
from dm_tune.models import ModelSpec, build_model
from dm_tune.retrieval import cosine_scores, retrieval_metrics

# --- the metrics ---------------------------------------------------------------------------------


def test_hand_checked_case():
    # Query 0: identity 1, camera 0. Gallery (id, cam): the query's own entry (1, 0) and another
    # same-camera match (1, 0) are ignored; the junk entry (-1) is ignored although it scores
    # highest. What remains, by score: (2, 1) 0.9 no, (1, 1) 0.8 YES, (3, 2) 0.7 no, (1, 2) 0.5 YES.
    # AP = (1/2 + 2/4) / 2 = 0.5; the first match is at rank 2: rank-1 0, rank-5 1.
    # Query 1: identity 3, camera 0: its only match (3, 2) ranks first among the valid entries
    # ((1, 0) entries are not ignored for it: another identity). AP = 1, rank-1 1.
    g_ids = np.array([1, 1, -1, 2, 1, 3, 1])
    g_cams = np.array([0, 0, 1, 1, 1, 2, 2])
    junk = g_ids == -1
    scores = np.array([[1.0, 0.95, 0.99, 0.9, 0.8, 0.7, 0.5],
                       [0.1, 0.1, 0.99, 0.6, 0.2, 0.9, 0.3]])
    m = retrieval_metrics(scores, np.array([1, 3]), np.array([0, 0]), g_ids, g_cams, junk)
    assert m["map"] == pytest.approx(0.75)
    assert m["rank1"] == pytest.approx(0.5)
    assert m["rank5"] == m["rank10"] == pytest.approx(1.0)
    assert m["queries"] == 2
    # Without the junk flag the junk entry counts as a non-match ranked first: query 0's AP
    # becomes (1/3 + 2/5) / 2 and query 1's 1/2.
    m = retrieval_metrics(scores, np.array([1, 3]), np.array([0, 0]), g_ids, g_cams)
    assert m["map"] == pytest.approx(((1 / 3 + 2 / 5) / 2 + 1 / 2) / 2)
    assert m["rank1"] == 0.0
    # The ranking, not the scale: an ignored entry (same identity, same camera) sinks below the
    # lowest score at any magnitude; at 1e17 the floor min - 1 tied with it, a match, whose
    # precision ties then halved.
    for scale in (1.0, 1e17):
        m = retrieval_metrics(np.array([[3.0, 1.0, 2.0]]) * scale, np.array([1]), np.array([0]),
                              np.array([2, 1, 1]), np.array([1, 1, 0]))
        assert m["map"] == pytest.approx(0.5) and m["rank1"] == 0.0


def test_queries_without_a_match_are_skipped():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    # query 0 (id 5, cam 0) has only a same-camera entry of its identity: skipped.
    m = retrieval_metrics(scores, np.array([5, 6]), np.array([0, 0]), np.array([5, 6]), np.array([0, 1]))
    assert m["queries"] == 1 and m["map"] == 1.0 and m["rank1"] == 1.0
    none = retrieval_metrics(scores[:1], np.array([5]), np.array([0]), np.array([5, 6]), np.array([0, 1]))
    assert none["queries"] == 0 and np.isnan(none["map"])


def test_map_equals_sklearn_average_precision_per_query():
    rng = np.random.default_rng(0)
    g_ids, g_cams = rng.integers(0, 6, 80), rng.integers(0, 3, 80)
    q_ids, q_cams = rng.integers(0, 6, 20), rng.integers(0, 3, 20)
    scores = rng.normal(size=(20, 80))
    junk = rng.random(80) < 0.1
    aps, first = [], []
    for i in range(20):
        keep = ~((g_ids == q_ids[i]) & (g_cams == q_cams[i])) & ~junk
        rel = g_ids[keep] == q_ids[i]
        if rel.any():
            aps.append(average_precision_score(rel, scores[i, keep]))
            first.append(int(np.flatnonzero(rel[np.argsort(-scores[i, keep])])[0]))
    m = retrieval_metrics(scores, q_ids, q_cams, g_ids, g_cams, junk)
    assert m["queries"] == len(aps)
    assert m["map"] == pytest.approx(np.mean(aps))
    for k in (1, 5, 10):
        assert m[f"rank{k}"] == pytest.approx(np.mean(np.array(first) < k))


def test_ties_count_pessimistically_in_cmc_as_in_ap():
    """A collapsed model scores everything alike: its first match ranks after every tied non-match,
    whatever the gallery order (a match listed first must not make rank-1 1)."""
    g_ids, g_cams = np.array([1, 2, 3, 1]), np.array([1, 1, 1, 2])
    for order in ([0, 1, 2, 3], [3, 2, 1, 0]):
        m = retrieval_metrics(np.zeros((1, 4)), np.array([1]), np.array([0]), g_ids[order], g_cams[order])
        assert m["rank1"] == 0.0 and m["rank5"] == 1.0  # the first match after the 2 tied non-matches
        assert m["map"] == pytest.approx(2 / 4)  # each match at rank 4 with 2 matches up to there
    # A tie with an ignored entry (same identity and camera) is no tie: it sinks below.
    m = retrieval_metrics(np.array([[0.5, 0.5, 0.1]]), np.array([1]), np.array([0]), np.array([1, 1, 2]),
                          np.array([0, 1, 1]))
    assert m["rank1"] == 1.0 and m["map"] == 1.0


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        retrieval_metrics(np.zeros((2, 3)), np.array([1]), np.array([0]), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan]]), np.array([1]), np.array([0]), np.array([1]), np.array([1]))


def test_cosine_scores():
    s = cosine_scores(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[3.0, 0.0], [1.0, 1.0]]))
    assert s == pytest.approx(np.array([[1.0, 2 ** -0.5], [0.0, 2 ** -0.5]]))


def test_embeddings_are_the_classifier_input():
    model = build_model("mlp", ModelSpec((5,), "vector", 3, hidden_dim=7))
    x = torch.randn(4, 5)
    emb = embed(model, [x[:2], x[2:]])
    assert emb.shape == (4, 7)
    layer = classifier_layer(model)
    assert torch.allclose(layer(torch.from_numpy(emb)), model(x), atol=1e-6)


# --- reid-synth and track-level identity noise ---------------------------------------------------


def test_reid_synth_is_fixed_and_identities_disjoint():
    a, b = reid_synth.generate(), reid_synth.generate()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not set(a["y_train"]) & set(a["ids_test"])
    assert len(a["y_train"]) == reid_synth.TRAIN_IDS * reid_synth.CAMS_PER_ID * reid_synth.TRACKS_PER_CAM


def _cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict({"dataset": "reid-synth", "device": "cpu", **kw})


@pytest.mark.parametrize("noise", ["symmetric", "pair"])
def test_identity_noise_per_track_and_held_out_identities(noise):
    data = prepare(_cfg(noise=noise, noise_rate=0.3, seed=1))
    # one example per track: the noisy label is the track's label
    assert len(data.train) + len(data.val_gallery) == len(reid_synth.generate()["y_train"])
    assert data.noise_rate == pytest.approx(0.3, abs=0.04)  # pair: round(0.3 x 6) of 6 tracks per identity
    flipped = data.train.labels != data.clean_train_labels
    assert torch.equal(flipped, data.is_noisy)
    if noise == "pair":
        assert torch.equal(data.train.labels[flipped], (data.clean_train_labels[flipped] + 1) % data.num_classes)
    # validation identities are held out of training, and the test identities are others again
    val_ids = set(data.val_gallery.ids.tolist())
    train_ids = set(reid_synth.generate()["y_train"].tolist()) - val_ids
    assert len(val_ids) == 30 and data.num_classes == len(train_ids) == 120
    assert not val_ids & set(data.test_gallery.ids.tolist())
    q = data.val_gallery.query
    assert len(q) > len(val_ids)  # one query per identity and camera
    # same seed, same draw; another seed, another one
    assert torch.equal(prepare(_cfg(noise=noise, noise_rate=0.3, seed=1)).train.labels, data.train.labels)
    assert not torch.equal(prepare(_cfg(noise=noise, noise_rate=0.3, seed=2)).is_noisy, data.is_noisy)


def test_retrieval_refuses_noise_and_imbalance_it_cannot_apply():
    with pytest.raises(ConfigError, match="imbalance"):
        prepare(_cfg(imbalance="longtail", imbalance_ratio=10.0))
    with pytest.raises(ConfigError, match="val_noisy"):
        prepare(_cfg(val_noisy=True))


def test_retrieval_run_result_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["train", "--dataset", "reid-synth", "--noise", "symmetric", "--noise-rate", "0.3",
                 "--epochs", "2", "--method", "dm", "--quiet", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    for key in ("test_map", "test_rank1", "test_rank5", "test_rank10", "val_map"):
        assert 0.0 <= d[key] <= 1.0
    last = d["history"][-1]
    assert d["test_map"] == last["test_map"] and d["val_map"] == last["val_map"]  # final epoch
    assert d["test_rank1"] <= d["test_rank5"] <= d["test_rank10"]
    assert "final test mAP" in capsys.readouterr().out


def test_reid_synth_needs_a_trained_model():
    """The raw track vectors retrieve poorly (the camera shifts); identity classification on clean
    labels, with the default training, learns an embedding well above them, so a method's mAP on
    reid-synth measures what it learned, not what the generator gave away."""
    from dm_tune.train import train

    data = prepare(_cfg(noise="none", method="cce"))
    raw = data.info["raw_test_map"]
    assert 0.0 < raw < 0.2
    result = train(_cfg(noise="none", method="cce"), data)
    assert result.retrieval["test_map"] > raw + 0.05, (result.retrieval["test_map"], raw)


def test_a_retrieval_run_that_diverges_ends_as_diverged():
    """NaN embeddings have no ranking: the epoch's mAP is NaN and the run is diverged (it was a
    ValueError traceback from the metric)."""
    from dm_tune.train import train

    # lr 9.9 with weight decay 1 multiplies the weights by about -9 every step: NaN within the first epoch
    cfg = _cfg(epochs=3, optimizer="sgd", lr=9.9, momentum=0.0, weight_decay=1.0, method="cce", noise="symmetric",
               noise_rate=0.2)
    result = train(cfg, prepare(cfg))
    assert result.status == "diverged" and result.epochs_completed < 3
    assert math.isnan(result.history[-1]["test_map"]) and result.history[-1]["diverged"] == 1.0


def test_best_test_map_does_not_need_a_validation_split():
    """Without validation identities (val_fraction 0) val mAP is NaN every epoch; the best test mAP
    over training is still the best test mAP (as best_test_accuracy is)."""
    from dm_tune.train import train

    cfg = _cfg(epochs=2, val_fraction=0.0)
    result = train(cfg, prepare(cfg))
    maps = [h["test_map"] for h in result.history]
    assert all(math.isnan(h["val_map"]) for h in result.history)
    assert result.retrieval["best_test_map"] == max(maps) and math.isnan(result.retrieval["val_selected_test_map"])


def test_a_retrieval_runs_best_epoch_is_that_of_its_best_test_map():
    """Its accuracies are NaN by design: best_epoch was always 0 (not an epoch)."""
    from dm_tune.train import train

    cfg = _cfg(epochs=3, noise="symmetric", noise_rate=0.3, method="cce")
    result = train(cfg, prepare(cfg))
    maps = [h["test_map"] for h in result.history]
    assert result.best_epoch == 1 + maps.index(max(maps)) and result.retrieval["best_test_map"] == max(maps)
