"""The fused CPU kernel (dm_tune/_dmfused.c) against the torch implementation and a float64
reference: the same gradient, shares and display loss on every shape, dtype and extreme."""

from __future__ import annotations

import pytest
import torch

from dm_tune import DMLoss, dm_logit_grad
from dm_tune import _native
from dm_tune import _weighting as W
from dm_tune.models import ModelSpec, mlp

EPS = 1e-6


def _batch(n: int, c: int, scale: float = 3.0, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale).to(dtype)
    return logits, torch.randint(0, c, (n,), generator=g)


def _reference(logits: torch.Tensor, targets: torch.Tensor, lam: float, beta: float):
    """DM's gradient (README, "The method in one screen") term by term in float64: gradient, shares, display loss."""
    z = logits.double()
    logprobs = z - torch.logsumexp(z, dim=1, keepdim=True)
    probs = logprobs.exp()
    rows = torch.arange(len(targets))
    p, logp = probs[rows, targets], logprobs[rows, targets]
    q = probs.scatter(1, targets.view(-1, 1), 0.0).sum(1)  # 1 - p, right to rounding near p = 1
    logw = beta * p**lam * q
    share = torch.softmax(logw, dim=0)
    direction = probs.clone()
    direction[rows, targets] = -q  # probs - onehot
    grad = (share / (2 * q + EPS)).unsqueeze(1) * direction
    return grad, share, -(share * logp).sum()


def test_native_kernel_is_built():
    # setup.py builds it with the package; without a C compiler dm-tune still works (torch path),
    # but the supported install (scripts/setup.sh) has one, so a missing kernel is a build bug.
    assert _native.available(), "dm_tune._dmfused was not built: reinstall with `pip install -e .`"


CASES = [  # n, c, lam, beta, scale
    (64, 10, 1.0, 8.0, 3.0),
    (1, 2, 2.0, 24.0, 3.0),
    (7, 3, 0.0, 2.0, 3.0),
    (128, 100, 0.5, 6.0, 5.0),
    (33, 10, 2.5, -4.0, 3.0),
    (16, 10, 3.7, 60.0, 20.0),
    (600, 3, 1.0, 8.0, 3.0),     # more rows than the kernel's stack buffer (heap path)
    (64, 10, 1.0, 500.0, 3.0),   # shares concentrated on one example
    (64, 10, 0.0, -500.0, 3.0),
]


@pytest.mark.parametrize("n,c,lam,beta,scale", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_equals_torch_and_reference(n, c, lam, beta, scale, dtype):
    logits, targets = _batch(n, c, scale, seed=n + c, dtype=dtype)
    want = _reference(logits, targets, lam, beta)
    # Every path takes 1 - p as the other classes' probabilities sum to, right to rounding
    # however close p is to 1 (float32 rows as well: DM divides by 2 (1 - p) + 1e-6).
    f64 = (1e-10, 1e-15)
    tolerances = {  # kernel -> rtol, atol
        # The native kernel computes in double whatever the input dtype.
        "native": f64 if dtype == torch.float64 else (2e-6, 1e-9),
        # torch computes float32 logits in float32: a weight is exp(beta x a float32 function of p),
        # whose relative error grows as |beta| x float32's epsilon (3.4e-5 at beta 500 with the
        # AVX-512 exp of an Intel Xeon VM; 2e-5 had held on AVX2 VMs).
        "torch": f64 if dtype == torch.float64 else (2e-5 + abs(beta) * torch.finfo(torch.float32).eps, 1e-7),
    }
    outputs = {}
    for kernel, (rtol, atol) in tolerances.items():
        outputs[kernel] = got = W._dm_parts(logits, targets, lam, beta, kernel=kernel)
        for name, g, w in zip(("grad", "share", "display"), got, want):
            assert g.dtype == dtype, (kernel, name)
            assert g.shape == w.shape, (kernel, name)
            torch.testing.assert_close(g.double(), w, rtol=rtol, atol=atol,
                                       msg=lambda m: f"{kernel} {name}: {m}")
    if dtype == torch.float64:
        (grad_n, share_n, display_n), (grad_t, share_t, display_t) = outputs["native"], outputs["torch"]
        torch.testing.assert_close(share_n, share_t, rtol=1e-12, atol=1e-16)
        torch.testing.assert_close(display_n, display_t, rtol=1e-12, atol=1e-16)
        # A row's gradient depends on its 1 - p: where p is within 1e-9 of 1, the two kernels' p
        # (each correct to an ulp or two: libm's exp against torch's vectorised one, whose code
        # path depends on the CPU) give 1 - p a relative error of up to a few eps / (1 - p), and
        # the row that much error. Elsewhere the two agree to rounding.
        eps = torch.finfo(torch.float64).eps
        one_minus_p = (1 - logits.softmax(1).gather(1, targets.unsqueeze(1))).clamp_min(eps)
        slack = (1e-12 + 4 * eps / one_minus_p) * grad_t.abs() + 1e-16
        worst = ((grad_n - grad_t).abs() / slack).max().item()
        assert worst <= 1.0, f"native grad differs from torch's by {worst:.3g}x the allowed rounding"


def test_native_extreme_logits_match_torch():
    # |z| up to 1e4: p == 1 exactly (zero gradient, not NaN), p == 0, ties.
    z = torch.zeros(6, 5)
    z[0, 0] = 1e4
    z[1, 1] = 1e4
    z[2] = -1e4
    z[3, 0], z[3, 1] = -1e4, 1e4
    z[4, :], z[4, 0] = 1e4, -1e4
    z[5, 0] = 5.0
    targets = torch.zeros(6, dtype=torch.long)
    for lam, beta in [(1.0, 8.0), (0.0, -500.0), (2.0, 500.0)]:
        native = W._dm_parts(z, targets, lam, beta, kernel="native")
        torch_ = W._dm_parts(z, targets, lam, beta, kernel="torch")
        for a, b in zip(native, torch_):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
        assert native[0][0].abs().max() == 0


@pytest.mark.parametrize("lam", [1e-3, 0.05, 0.5])
def test_native_small_powers_of_a_vanishing_p_match_torch(lam):
    """log p below about -708 made p 0 in double and pow(p, lam) 0 in the kernel, while p^lam =
    exp(lam log p) is 0.45 at log p -800, lam 0.001: a strongly contradicted example's DM weight
    (and GCE's p^q) differed from the torch path's, by up to 4x in the gradient."""
    from dm_tune._poplosses import PopulationLoss, member_loss
    from dm_tune.config import TrainConfig

    z = torch.tensor([[0.0, 800.0, 0.0], [0.0, 0.0, 0.0], [3.0, -1.0, 0.0], [0.0, 0.0, 1500.0]], dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    native = W._dm_parts(z, y, lam, 4.0, kernel="native")
    torch_ = W._dm_parts(z, y, lam, 4.0, kernel="torch")
    for a, b in zip(native, torch_):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)
    assert native[1][0] > 0.2 or lam > 1e-3  # its share: exp(beta p^lam (1-p)) with p^lam far from 0
    knobs = [{"method": "dm", "lam": lam, "beta": 4.0}, {"method": "gce", "gce_q": lam},
             {"method": "gce-dn", "gce_q": lam}]
    members = [member_loss(TrainConfig.from_dict(k)) for k in knobs]
    zk, yk = z.expand(3, -1, -1).contiguous(), y.expand(3, -1).contiguous()
    got = PopulationLoss(members, None, kernel="native")._grad_share_display(zk, yk)
    want = PopulationLoss(members, None, kernel="torch")._grad_share_display(zk, yk)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)


def test_native_half_precision_is_computed_in_float32():
    logits, targets = _batch(32, 10, seed=3, dtype=torch.bfloat16)
    got = W._dm_parts(logits, targets, 1.0, 8.0, kernel="native")
    want = W._dm_parts(logits.float(), targets, 1.0, 8.0, kernel="native")
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_native_accepts_non_contiguous_logits_and_int32_targets():
    logits, targets = _batch(10, 64, seed=4)
    logits_t = logits.t().contiguous().t()  # same values, column-major
    assert not logits_t.is_contiguous()
    got = W._dm_parts(logits_t, targets.int(), 0.5, 6.0, kernel="native")
    want = W._dm_parts(logits, targets, 0.5, 6.0, kernel="native")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_native_nan_logits_give_nan_loss_like_torch():
    logits, targets = _batch(8, 4, seed=5)
    logits[3, 1] = float("nan")
    for kernel in ("native", "torch"):
        assert torch.isnan(W._dm_parts(logits, targets, 1.0, 8.0, kernel=kernel)[2])


@pytest.mark.parametrize("bad", [4, -1])
def test_native_rejects_out_of_range_targets(bad):
    logits, targets = _batch(8, 4, seed=6)
    targets[5] = bad
    with pytest.raises(IndexError, match=f"target {bad} of example 5 is out of range for 4 classes"):
        W._dm_parts(logits, targets, 1.0, 8.0, kernel="native")


def test_shapes_are_checked_before_either_kernel():
    logits, targets = _batch(8, 4, seed=7)
    for kernel in ("native", "torch"):
        with pytest.raises(ValueError, match=r"targets must have shape \[8\], got \(7,\)"):
            W._dm_parts(logits, targets[:7], 1.0, 8.0, kernel=kernel)
        with pytest.raises(ValueError, match="logits must have shape"):
            W._dm_parts(logits[:, :1], targets, 1.0, 8.0, kernel=kernel)


def test_auto_uses_native_for_small_cpu_batches_and_torch_above_the_limit():
    for n, c, expect in [(64, 10, "native"), (_native.MAX_ELEMENTS // 100 + 1, 100, "torch")]:
        logits, targets = _batch(n, c, seed=8)
        native, torch_ = (dm_logit_grad(logits, targets, 1.0, 8.0, kernel=k) for k in ("native", "torch"))
        assert not torch.equal(native, torch_)  # the two kernels round differently: tellable apart
        auto = dm_logit_grad(logits, targets, 1.0, 8.0)
        assert torch.equal(auto, native if expect == "native" else torch_), (n, c)


def test_kernel_argument_is_validated():
    logits, targets = _batch(4, 3)
    with pytest.raises(ValueError, match="kernel must be one of auto, native, torch, got 'cuda'"):
        DMLoss(1.0, 8.0, kernel="cuda")
    with pytest.raises(ValueError, match="kernel must be one of"):
        dm_logit_grad(logits, targets, 1.0, 8.0, kernel="fast")
    # The meta device stands in for a GPU: auto falls back to torch, native refuses.
    meta = logits.to("meta")
    assert dm_logit_grad(meta, targets.to("meta"), 1.0, 8.0).device.type == "meta"
    with pytest.raises(ValueError, match="runs on CPU tensors only"):
        dm_logit_grad(meta, targets.to("meta"), 1.0, 8.0, kernel="native")


def test_training_with_either_kernel_follows_the_same_trajectory():
    """Ten SGD steps of a digits-sized MLP: the kernels' rounding differences stay small."""
    x, y = _batch(64, 64, 1.0, seed=9)
    y = y % 10
    finals = {}
    for kernel in ("native", "torch"):
        torch.manual_seed(0)
        model = mlp(ModelSpec((64,), "vector", 10, 64))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss_fn = DMLoss(1.0, 8.0, kernel=kernel)
        losses = []
        for _ in range(10):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]  # it learns
        finals[kernel] = (losses, torch.nn.utils.parameters_to_vector(model.parameters()))
    torch.testing.assert_close(finals["native"][0], finals["torch"][0], rtol=1e-5, atol=0)
    torch.testing.assert_close(finals["native"][1], finals["torch"][1], rtol=1e-4, atol=1e-6)


def test_dm_loss_dispatch():
    """DMLoss sends float CPU training batches to the fused kernel, everything else to torch."""
    def backward_node(loss_fn, logits):
        leaf = logits.detach().clone().requires_grad_(True)
        return type(loss_fn(leaf, torch.zeros(len(leaf), dtype=torch.long)).grad_fn).__name__

    z32, z64 = torch.randn(8, 4), torch.randn(8, 4, dtype=torch.float64)
    assert backward_node(DMLoss(1.0, 8.0), z32) == "_FusedDMBackward"
    assert backward_node(DMLoss(1.0, 8.0), z64) == "_FusedDMBackward"
    assert backward_node(DMLoss(1.0, 8.0, kernel="native"), z32) == "_FusedDMBackward"
    # Half precision (cast back in backward), the torch kernel and large batches: general path.
    assert backward_node(DMLoss(1.0, 8.0), torch.randn(8, 4).bfloat16()) == "_InjectGradBackward"
    assert backward_node(DMLoss(1.0, 8.0, kernel="torch"), z32) == "_InjectGradBackward"
    big = torch.randn(_native.MAX_ELEMENTS // 4 + 1, 4)
    assert backward_node(DMLoss(1.0, 8.0), big) == "_InjectGradBackward"
    # Bad shapes are never handed to the kernel: they get the general path's clear error.
    with pytest.raises(ValueError, match=r"targets must have shape \[8\]"):
        DMLoss(1.0, 8.0)(z32.detach().requires_grad_(True), torch.zeros(9, dtype=torch.long))
    # Both paths inject the same gradient and keep the shares for the weight metrics.
    grads, shares = [], []
    for kernel in ("auto", "torch"):
        loss_fn, logits = DMLoss(2.0, 12.0, kernel=kernel), z64.detach().clone().requires_grad_(True)
        y = torch.arange(8) % 4
        loss_fn(logits, y).backward()
        assert logits.grad is not None and logits.grad.abs().sum() > 0
        grads.append(logits.grad)
        shares.append(loss_fn.last_shares)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-16)
    torch.testing.assert_close(shares[0], shares[1], rtol=1e-12, atol=1e-16)


# --- a population's losses (_native.population_parts against _poplosses.population_loss_parts) --


def _population(kernel: str, class_weights: torch.Tensor | None = None):
    from dm_tune._poplosses import PopulationLoss, member_loss
    from dm_tune.config import TrainConfig

    knobs = [{"method": "dm", "lam": 1.0, "beta": 8.0}, {"method": "dm", "lam": 0.0, "beta": 0.0},
             {"method": "dm", "lam": 2.5, "beta": -40.0}, {"method": "cce"}, {"method": "cce-dn"},
             {"method": "gce", "gce_q": 0.3}, {"method": "mae"}, {"method": "mae-dn"}, {"method": "mse"},
             {"method": "sl", "sl_mu": 0.5, "sl_nu": 2.0}]
    members = [member_loss(TrainConfig.from_dict(k)) for k in knobs]
    return PopulationLoss(members, class_weights, kernel=kernel)


@pytest.mark.parametrize("n,c,scale", [(37, 10, 4.0), (600, 3, 2.0), (5, 100, 20.0)])  # 600: rows off the stack
def test_native_population_losses_are_the_float64_reference(n, c, scale):
    g = torch.Generator().manual_seed(n)
    logits = torch.randn(10, n, c, generator=g, dtype=torch.float64) * scale
    targets = torch.randint(0, c, (10, n), generator=g)
    want = _population("torch")._grad_share_display(logits, targets)
    got64 = _population("native")._grad_share_display(logits, targets)
    for a, b in zip(got64, want):  # (at p within 1e-11 of 1, both sums of exponentials round
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-11)  # 1 - p differently: ~1e-4 relative)
    got32 = _population("native")._grad_share_display(logits.float(), targets)
    for a, b in zip(got32, want):  # computed in double, rounded once
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-9)


def test_native_population_extremes_class_weights_and_half_precision():
    z = torch.zeros(10, 6, 5)
    z[:, 0, 0] = 1e4   # p == 1 exactly
    z[:, 1] = -1e4     # a tie
    z[:, 2, 0], z[:, 2, 1] = -1e4, 1e4  # p == 0
    z[:, 3, 0] = 5.0
    targets = torch.zeros(10, 6, dtype=torch.long)
    weights = torch.rand(10, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    for cw in (None, weights):
        got = _population("native", cw)._grad_share_display(z, targets)
        want = _population("torch", cw)._grad_share_display(z, targets)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
    half = _population("native")._grad_share_display(z.bfloat16(), targets)
    for a, b in zip(half, _population("native")._grad_share_display(z.bfloat16().float(), targets)):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_native_population_nan_member_is_nan_alone_and_bad_targets_are_named():
    g = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(10, 8, 4, generator=g), torch.randint(0, 4, (10, 8), generator=g)
    logits[3, 5, 1] = float("nan")
    display = _population("native")._grad_share_display(logits, targets)[2]
    assert torch.isnan(display[3]) and torch.isfinite(display[torch.arange(10) != 3]).all()
    targets[7, 2] = 4
    with pytest.raises(IndexError, match="target 4 of member 7, example 2 is out of range for 4 classes"):
        _population("native")._grad_share_display(logits, targets)


@pytest.mark.parametrize("shape,eligible", [
    ((2, 4, 10), True), ((64, 64, 10), True), ((64, 4096, 10), False),
    ((16, 64, 16), True), ((64, 64, 16), False), ((16, 64, 100), False), ((64, 128, 2), True), ((64, 129, 2), False),
])
def test_the_population_kernel_is_chosen_by_size_and_classes(shape, eligible):
    targets = torch.zeros(shape[:2], dtype=torch.long)
    assert _native.population_eligible(torch.zeros(shape), targets) is eligible
