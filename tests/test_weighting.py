"""The weighting maths (README, "The method in one screen") against independent re-implementations."""

from __future__ import annotations

import math

import pytest
import torch

from dm_tune import dm_logit_grad, dm_weight, manipulated_logit_grad, multiplier_logit_grad
from dm_tune import _weighting as W

EPS = 1e-6  # the released code's constant in 2(1 - p) + eps


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n: int = 16, c: int = 5, scale: float = 3.0, seed: int = 0, dtype=torch.float64):
    g = _gen(seed)
    logits = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale).to(dtype)
    targets = torch.randint(0, c, (n,), generator=g)
    return logits, targets


def _ref_probs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax written out by hand in float64 (not torch.softmax)."""
    z = logits.double()
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    probs = e / e.sum(dim=1, keepdim=True)
    return probs, probs[torch.arange(len(targets)), targets]


def _ref_dm_grad(logits, targets, lam, beta):
    """DM's gradient (README, "The method in one screen"), term by term, in float64."""
    probs, p = _ref_probs(logits, targets)
    w = torch.exp(beta * p**lam * (1 - p))
    onehot = torch.zeros_like(probs)
    onehot[torch.arange(len(targets)), targets] = 1.0
    return (w / w.sum()).unsqueeze(1) * (probs - onehot) / (2 * (1 - p) + EPS).unsqueeze(1), w, p


# --- dm_weight ------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.0, 7.5])
@pytest.mark.parametrize("beta", [-4.0, 0.0, 2.0, 12.0])
def test_dm_weight_formula(lam, beta):
    p = torch.tensor([0.0, 1e-9, 0.1, 0.25, 0.5, 0.9, 1 - 1e-9, 1.0], dtype=torch.float64)
    want = torch.tensor([math.exp(beta * (x**lam) * (1 - x)) for x in p.tolist()], dtype=torch.float64)
    torch.testing.assert_close(dm_weight(p, lam, beta), want, rtol=1e-12, atol=0)


def test_dm_weight_endpoints():
    p = torch.tensor([0.0, 1.0])
    # lam = 0: 0^0 = 1, so w(0) = exp(beta) (the hardest example gets the peak weight).
    torch.testing.assert_close(dm_weight(p, 0.0, 3.0), torch.tensor([math.exp(3.0), 1.0]))
    # lam > 0: both ends weigh exp(0) = 1.
    torch.testing.assert_close(dm_weight(p, 1.0, 3.0), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(dm_weight(p, 2.0, -3.0), torch.tensor([1.0, 1.0]))
    # beta = 0: every weight is 1.
    assert torch.equal(dm_weight(torch.rand(50, generator=_gen()), 1.0, 0.0), torch.ones(50))


def test_dm_weight_negative_beta_flips_emphasis():
    p = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64)
    w = dm_weight(p, 1.0, -8.0)
    assert w[0] < w[1] == w[2] == 1.0
    torch.testing.assert_close(w[0], torch.tensor(math.exp(-2.0), dtype=torch.float64))


def test_dm_weight_computes_in_float32_for_half_inputs():
    p = torch.tensor([0.25, 0.5], dtype=torch.float16)
    assert dm_weight(p, 1.0, 8.0).dtype == torch.float32


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.0, 4.0, 50.0])
@pytest.mark.parametrize("beta", [0.5, 8.0])
def test_dm_weight_peaks_at_mode(lam, beta):
    grid = torch.linspace(0.0, 1.0, 200_001, dtype=torch.float64)
    peak = grid[dm_weight(grid, lam, beta).argmax()].item()
    assert abs(peak - lam / (1 + lam)) <= 1e-4


# --- dm_logit_grad --------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["native", "torch"])
@pytest.mark.parametrize("lam,beta", [(0.0, 2.0), (0.5, 6.0), (1.0, 8.0), (2.0, 12.0), (1.0, -3.0)])
def test_dm_logit_grad_matches_reference(lam, beta, kernel):
    logits, targets = _batch(n=32, c=7, seed=1)
    want, _, _ = _ref_dm_grad(logits, targets, lam, beta)
    got = dm_logit_grad(logits, targets, lam, beta, kernel=kernel)
    assert got.dtype == torch.float64 and got.shape == logits.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kernel", ["native", "torch"])
def test_dm_logit_grad_float32_matches_reference(kernel):
    logits, targets = _batch(n=64, c=10, seed=2, dtype=torch.float32)
    want, _, _ = _ref_dm_grad(logits, targets, 1.0, 8.0)
    got = dm_logit_grad(logits, targets, 1.0, 8.0, kernel=kernel)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("path", ["native", "torch", "population-torch", "population-native"])
@pytest.mark.parametrize("lam", [0.01, 0.3, 2.5])
def test_a_probability_below_float32s_range_keeps_its_weight(path, lam):
    """p underflows to 0 in float32 below log p of about -103, where p^lam of a small lam does not
    (0.33 at log p -110, lam 0.01): the torch paths gave such an example weight exp(0) = 1, its
    share 0.25 where it is 0.95, while the C kernel (in double) followed the formula."""
    from dm_tune._poplosses import DM, MemberLoss, PopulationLoss

    logits = torch.tensor([[0.0, 110.0, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 0.5], [-20.0, 80.0, 0.0]])
    targets = torch.tensor([0, 0, 2, 0])
    beta = 12.0
    logp = torch.log_softmax(logits.double(), dim=1)[torch.arange(4), targets]
    want = torch.softmax(beta * torch.exp(lam * logp) * -torch.expm1(logp), dim=0)
    if path.startswith("population"):
        loss = PopulationLoss([MemberLoss(DM, lam=lam, beta=beta)], kernel=path.split("-")[1])
        stacked = logits.unsqueeze(0).requires_grad_(True)
        loss(stacked, targets.unsqueeze(0)).sum().backward()
        got_grad, got = stacked.grad[0], loss.last_shares[0]
    else:
        got_grad, got = W._dm_parts(logits, targets, lam, beta, path)[:2]
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    want_grad, _, _ = _ref_dm_grad(logits, targets, lam, beta)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("lam,beta", [(0.0, 2.0), (1.0, 8.0), (2.0, 24.0)])
def test_dm_row_norms_are_normalised_weights(lam, beta):
    logits, targets = _batch(n=40, c=6, seed=3)
    _, w, p = _ref_dm_grad(logits, targets, lam, beta)
    norms = dm_logit_grad(logits, targets, lam, beta).abs().sum(dim=1)
    share = w / w.sum()
    # ||grad_i||_1 = share_i * 2(1-p_i) / (2(1-p_i) + eps): the eps makes it a hair below share_i.
    torch.testing.assert_close(norms, share * 2 * (1 - p) / (2 * (1 - p) + EPS), rtol=1e-10, atol=0)
    torch.testing.assert_close(norms, share, rtol=1e-4, atol=0)
    assert abs(norms.sum().item() - 1.0) < 1e-4
    assert norms.sum().item() <= 1.0


def test_dm_beta_zero_gives_equal_mass_not_cce():
    logits, targets = _batch(n=25, c=4, seed=4)
    norms = dm_logit_grad(logits, targets, 1.0, 0.0).abs().sum(dim=1)
    torch.testing.assert_close(norms, torch.full((25,), 1 / 25, dtype=torch.float64), rtol=1e-4, atol=0)
    # CCE's per-example mass is 2(1-p_i)/N, which is not equal across examples.
    cce_norms = multiplier_logit_grad(logits, targets, W.cce_multiplier).abs().sum(dim=1)
    assert (cce_norms.max() - cce_norms.min()) > 1e-3
    assert not torch.allclose(norms, cce_norms, rtol=1e-2)


def test_dm_logit_grad_equals_manipulated_grad_with_dm_weights():
    logits, targets = _batch(n=20, c=5, seed=5)
    _, p = _ref_probs(logits, targets)
    torch.testing.assert_close(
        dm_logit_grad(logits, targets, 0.5, 6.0),
        manipulated_logit_grad(logits, targets, dm_weight(p, 0.5, 6.0)),
        rtol=1e-10, atol=1e-14,
    )


def test_dm_logit_grad_is_scale_free_in_weights():
    logits, targets = _batch(n=10, c=3, seed=6)
    w = torch.rand(10, generator=_gen(6), dtype=torch.float64)
    torch.testing.assert_close(manipulated_logit_grad(logits, targets, w),
                               manipulated_logit_grad(logits, targets, 1e3 * w))


def test_dm_logit_grad_builds_no_graph():
    logits, targets = _batch(n=8, c=4, seed=7)
    logits.requires_grad_(True)
    assert not dm_logit_grad(logits, targets, 1.0, 8.0).requires_grad
    w = torch.rand(8, dtype=torch.float64, requires_grad=True)
    assert not manipulated_logit_grad(logits.detach(), targets, w).requires_grad


def test_dm_logit_grad_survives_huge_beta():
    logits, targets = _batch(n=32, c=10, seed=8, dtype=torch.float32)
    _, p = _ref_probs(logits, targets)
    assert not torch.isfinite(dm_weight(p.float(), 0.0, 500.0)).all()  # the weight itself overflows
    for beta in (500.0, -500.0, 5000.0):
        g = dm_logit_grad(logits, targets, 0.0, beta)
        assert torch.isfinite(g).all()
        assert abs(g.abs().sum().item() - 1.0) < 1e-3
    # In float64 the reference does not overflow at beta=500: the two agree.
    want, _, _ = _ref_dm_grad(logits.double(), targets, 0.0, 500.0)
    torch.testing.assert_close(dm_logit_grad(logits.double(), targets, 0.0, 500.0), want,
                               rtol=1e-8, atol=1e-14)


def test_lam_zero_emphasises_hard_examples():
    # Three examples: hard (p small), medium, easy (p near 1).
    logits = torch.tensor([[-3.0, 3.0], [0.0, 0.0], [3.0, -3.0]], dtype=torch.float64)
    targets = torch.zeros(3, dtype=torch.long)
    norms = dm_logit_grad(logits, targets, 0.0, 4.0).abs().sum(dim=1)
    assert norms[0] > norms[1] > norms[2]


# --- multiplier schemes ----------------------------------------------------------------------


def test_weight_from_multiplier():
    p = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    torch.testing.assert_close(W.weight_from_multiplier(W.mse_multiplier)(p), 4 * p * (1 - p) ** 2)
    torch.testing.assert_close(W.weight_from_multiplier(W.cce_multiplier)(p), 2 * (1 - p))


@pytest.mark.parametrize(
    "multiplier,mode",
    [(W.cce_multiplier, 0.0), (W.mae_multiplier, 0.5), (W.mse_multiplier, 1 / 3),
     (W.gce_multiplier(0.7), 0.7 / 1.7), (W.sl_multiplier(0.1, 1.0, math.log(1e-4)), None)],
)
def test_scheme_emphasis_modes(multiplier, mode):
    grid = torch.linspace(0.0, 1.0, 100_001, dtype=torch.float64)
    peak = grid[W.weight_from_multiplier(multiplier)(grid).argmax()].item()
    if mode is None:  # SL: max(0, (c-1)/(2c)) with c = -A nu / mu
        c = -math.log(1e-4) * 1.0 / 0.1
        mode = max(0.0, (c - 1) / (2 * c))
    assert abs(peak - mode) <= 1e-4


def test_relative_weights_mean_one():
    share = torch.softmax(torch.randn(30, generator=_gen(9)), dim=0)
    rel = W.relative_weights(share)
    assert abs(rel.mean().item() - 1.0) < 1e-6
    torch.testing.assert_close(rel / rel.sum(), share)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.0])
def test_dm_weight_is_differentiable_in_p(lam):
    p = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: dm_weight(x, lam, 3.0), (p,))


@pytest.mark.parametrize("lam,beta", [(-1.0, 1.0), (math.nan, 1.0), (math.inf, 1.0), (1.0, math.nan), (1.0, -math.inf)])
def test_the_public_functions_refuse_knobs_dm_does_not_define(lam, beta):
    """DMLoss refused them; dm_weight, dm_logit_grad and dm_shares computed with them (p^-1 at
    p = 0 is inf, and the batch's weights then NaN)."""
    logits, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    for call in (lambda: dm_weight(torch.rand(4), lam, beta), lambda: dm_logit_grad(logits, targets, lam, beta),
                 lambda: W.dm_shares(logits, targets, lam, beta)):
        with pytest.raises(ValueError, match="lam must be a finite number >= 0" if lam != 1.0 else "beta must be"):
            call()
