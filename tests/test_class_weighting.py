"""Class weighting: the weights of each scheme, their composition with every method's gradient
(a class weight multiplies each example's row), a population member against its own run, and
the flag and config field."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from dm_tune.class_weighting import SCHEMES, class_weights
from dm_tune.config import TrainConfig
from dm_tune.data import prepare
from dm_tune.datasets import DATASETS
from dm_tune.methods import METHODS, build_loss
from dm_tune.population import train_population
from dm_tune.train import train

LABELS = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)


def test_every_scheme_averages_one_over_the_examples():
    for scheme in SCHEMES:
        w = class_weights(LABELS, 3, scheme, beta=0.9)
        assert float(w[LABELS].mean()) == pytest.approx(1.0)
        assert bool((w[:-1] <= w[1:]).all()), scheme  # rarer classes never weigh less


def test_the_schemes_have_their_published_shapes():
    counts = torch.tensor([90.0, 9.0, 1.0])
    inverse = class_weights(LABELS, 3, "inverse")
    assert (inverse / inverse[2]).tolist() == pytest.approx((1.0 / counts).tolist())
    sqrt = class_weights(LABELS, 3, "sqrt-inverse")
    assert (sqrt / sqrt[2]).tolist() == pytest.approx(counts.rsqrt().tolist())
    beta = 0.9  # Cui et al.: (1 - beta) / (1 - beta^n)
    eff = class_weights(LABELS, 3, "effective-number", beta=beta)
    expected = (1 - beta) / (1 - beta ** counts)
    assert (eff / eff[2]).tolist() == pytest.approx((expected / expected[2]).tolist())
    # beta = 0: no weighting; beta -> 1: inverse frequency.
    assert class_weights(LABELS, 3, "effective-number", beta=0.0).tolist() == [1.0, 1.0, 1.0]
    assert class_weights(LABELS, 3, "effective-number", beta=1 - 1e-9).tolist() == pytest.approx(inverse.tolist(),
                                                                                                rel=1e-4)


def test_balanced_labels_get_weight_one_in_every_scheme():
    balanced = torch.arange(10).repeat(7)
    for scheme in SCHEMES:
        assert class_weights(balanced, 10, scheme).tolist() == pytest.approx([1.0] * 10)


def test_a_class_without_examples_does_not_break_the_weights():
    w = class_weights(torch.tensor([0, 0, 1]), 4, "inverse")
    assert torch.isfinite(w).all() and float(w[torch.tensor([0, 0, 1])].mean()) == pytest.approx(1.0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_class_weight_multiplies_each_examples_gradient(method):
    torch.manual_seed(0)
    logits = torch.randn(12, 3, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 0, 0, 1, 0, 2, 0, 0, 1, 0])
    config = TrainConfig.from_dict({"method": method, "class_weighting": "inverse"})
    plain = build_loss(TrainConfig.from_dict({"method": method}))
    weighted = build_loss(config, LABELS, 3)
    w = class_weights(LABELS, 3, "inverse")
    grads = []
    for loss in (plain, weighted):
        x = logits.clone().requires_grad_(True)
        loss(x, targets).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0] * w[targets].unsqueeze(1))
    shares = weighted.last_shares
    assert float(shares.sum()) == pytest.approx(1.0)


def test_class_weighted_cce_is_autograds_weighted_mean():
    torch.manual_seed(1)
    logits = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 0, 0, 1, 0, 2])
    w = class_weights(LABELS, 3, "sqrt-inverse")
    (w[targets] * F.cross_entropy(logits, targets, reduction="none")).mean().backward()
    x = logits.detach().clone().requires_grad_(True)
    loss = build_loss(TrainConfig.from_dict({"method": "cce", "class_weighting": "sqrt-inverse"}), LABELS, 3)
    loss(x, targets).backward()
    torch.testing.assert_close(x.grad, logits.grad)


def test_a_class_weighted_member_matches_its_own_run(one_thread):
    source = DATASETS["digits"][0](None, {}, False)
    base = {"dataset": "digits", "device": "cpu", "noise": "symmetric", "noise_rate": 0.3, "imbalance": "longtail",
            "imbalance_ratio": 10.0, "epochs": 1, "batch_size": 64, "optimizer": "adam"}
    members = [{"method": "dm", "lam": 1.0, "beta": 8.0, "seed": 0, "class_weighting": "inverse"},
               {"method": "cce", "seed": 1, "class_weighting": "effective-number", "class_weighting_beta": 0.99},
               {"method": "dm", "lam": 2.0, "beta": 16.0, "seed": 2}]
    cfgs = [TrainConfig.from_dict({**base, **m}) for m in members]
    ds = [prepare(c, source) for c in cfgs]
    snaps: list = []
    results = train_population(cfgs, ds, lambda metrics, snap: snaps.append(snap()))
    for k, (c, d) in enumerate(zip(cfgs, ds)):
        single_snaps: list = []
        train(c, d, lambda metrics, snap: single_snaps.append(snap()))
        ours, ref = snaps[-1]["members"][k]["model"], single_snaps[-1]["model"]
        for key in ref:
            torch.testing.assert_close(ours[key], ref[key], rtol=1e-4, atol=2e-5, msg=f"member {k} {key}")
        assert results[k].config["class_weighting"] == members[k].get("class_weighting", "none")


def test_the_train_command_takes_class_weighting(tmp_path):
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "dm_tune.cli", "train", "--epochs", "1", "--imbalance", "step",
           "--imbalance-ratio", "5", "--class-weighting", "effective-number", "--class-weighting-beta", "0.99",
           "--quiet", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    config = json.loads(out.read_text())["config"]
    assert (config["class_weighting"], config["class_weighting_beta"]) == ("effective-number", 0.99)
    bad = subprocess.run(cmd[:-2] + ["--class-weighting", "balanced"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "class_weighting: 'balanced' is not allowed; expected one of: none, inverse" in bad.stderr
