"""Loss modules: the gradient each one injects, its display value, and numerical safety."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dm_tune import METHODS, DMLoss, SchemeLoss, WeightFnLoss, dm_logit_grad, dm_weight
from dm_tune._losses import cce_scheme, gce_scheme, mae_scheme, mse_scheme, sl_scheme

LOG_CLIP = math.log(1e-4)


def _batch(n: int = 16, c: int = 5, scale: float = 3.0, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale).to(dtype)
    targets = torch.randint(0, c, (n,), generator=g)
    return logits.requires_grad_(True), targets


def _grad_of(loss_fn: nn.Module, logits: torch.Tensor, targets: torch.Tensor, upstream: float = 1.0):
    logits = logits.detach().clone().requires_grad_(True)
    loss = loss_fn(logits, targets)
    (loss * upstream).backward()
    return loss.detach(), logits.grad


def _log_p(logits, targets):
    return torch.log_softmax(logits.double(), dim=1).gather(1, targets.view(-1, 1)).squeeze(1)


# --- DMLoss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lam,beta", [(0.0, 2.0), (0.5, 8.0), (1.0, 8.0), (2.0, -3.0), (1.0, 0.0)])
def test_dm_loss_injects_dm_logit_grad_and_displays_weighted_cce(lam, beta):
    logits, targets = _batch(n=24, c=6, seed=1)
    loss, grad = _grad_of(DMLoss(lam, beta), logits, targets)
    torch.testing.assert_close(grad, dm_logit_grad(logits, targets, lam, beta), rtol=0, atol=0)
    logp = _log_p(logits, targets)
    w = dm_weight(logp.exp(), lam, beta)
    torch.testing.assert_close(loss, (w * -logp).sum() / w.sum(), rtol=1e-12, atol=0)


def test_dm_loss_scales_with_upstream_gradient():
    logits, targets = _batch(seed=2)
    loss_fn = DMLoss(1.0, 8.0)
    _, g1 = _grad_of(loss_fn, logits, targets)
    _, g3 = _grad_of(loss_fn, logits, targets, upstream=3.0)
    _, gneg = _grad_of(loss_fn, logits, targets, upstream=-0.5)
    torch.testing.assert_close(g3, 3.0 * g1, rtol=1e-14, atol=0)
    torch.testing.assert_close(gneg, -0.5 * g1, rtol=1e-14, atol=0)


def test_dm_weights_are_constants_chain_rule_to_parameters():
    torch.manual_seed(0)  # only the model init below; the data uses an explicit generator
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (32,), generator=g)

    model.zero_grad()
    logits = model(x)
    DMLoss(1.0, 8.0)(logits, y).backward()
    got = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    logits = model(x)
    const = dm_logit_grad(logits, y, 1.0, 8.0).detach()
    (logits * const).sum().backward()  # surrogate: d/dz = const, nothing flows through weights
    want = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)

    # Had the weights been differentiated through, the gradient would differ.
    model.zero_grad()
    logits = model(x)
    logp = torch.log_softmax(logits, dim=1).gather(1, y.view(-1, 1)).squeeze(1)
    w = dm_weight(logp.exp(), 1.0, 8.0)
    ((w * -logp).sum() / w.sum()).backward()
    assert not torch.allclose(model[0].weight.grad, got[0])


def test_dm_loss_without_grad_returns_display_and_shares():
    logits, targets = _batch(seed=4)
    loss_fn = DMLoss(0.5, 6.0)
    with torch.no_grad():
        value = loss_fn(logits, targets)
    assert not value.requires_grad and value.dim() == 0
    value2 = loss_fn(logits.detach(), targets)
    torch.testing.assert_close(value, value2)
    shares = loss_fn.last_shares
    assert shares.shape == (16,) and abs(shares.sum().item() - 1.0) < 1e-12
    w = dm_weight(_log_p(logits, targets).exp(), 0.5, 6.0)
    torch.testing.assert_close(shares, w / w.sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kwargs", [{"lam": -0.1}, {"lam": math.nan}, {"lam": math.inf},
                                    {"beta": math.nan}, {"beta": -math.inf}])
def test_dm_loss_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        DMLoss(**kwargs)


@pytest.mark.parametrize("shape", [(5,), (4, 1), (2, 3, 4)])
def test_losses_reject_bad_logit_shapes(shape):
    with pytest.raises(ValueError):
        DMLoss()(torch.zeros(shape), torch.zeros(shape[0], dtype=torch.long))


# --- SchemeLoss vs autograd of the real loss ---------------------------------------------------

SCHEMES = {
    "cce": (cce_scheme(), lambda p, logp: -logp),
    "mae": (mae_scheme(), lambda p, logp: 1 - p),
    "mse": (mse_scheme(), lambda p, logp: (1 - p) ** 2),
    "gce0.7": (gce_scheme(0.7), lambda p, logp: (1 - p**0.7) / 0.7),
    "gce0.3": (gce_scheme(0.3), lambda p, logp: (1 - p**0.3) / 0.3),
    "gce1": (gce_scheme(1.0), lambda p, logp: (1 - p) / 1.0),
    "sl": (sl_scheme(0.1, 1.0, LOG_CLIP), lambda p, logp: 0.1 * -logp + 1.0 * (-LOG_CLIP * (1 - p))),
    "sl2": (sl_scheme(1.0, 0.5, math.log(1e-2)),
            lambda p, logp: -logp + 0.5 * (-math.log(1e-2) * (1 - p))),
}


def _autograd_reference(formula, logits, targets):
    z = logits.detach().clone().requires_grad_(True)
    probs = torch.softmax(z, dim=1)
    p = probs.gather(1, targets.view(-1, 1)).squeeze(1)
    loss = formula(p, torch.log(p)).mean()
    loss.backward()
    return loss.detach(), z.grad


@pytest.mark.parametrize("name", list(SCHEMES))
def test_scheme_loss_equals_autograd_of_real_loss(name):
    scheme, formula = SCHEMES[name]
    logits, targets = _batch(n=30, c=7, seed=5)
    want_value, want_grad = _autograd_reference(formula, logits, targets)
    value, grad = _grad_of(SchemeLoss(scheme), logits, targets)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(value, want_value, rtol=1e-10, atol=1e-14)


def test_cce_scheme_equals_torch_cross_entropy():
    logits, targets = _batch(n=30, c=7, seed=6)
    z = logits.detach().clone().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(z, targets)
    ce.backward()
    value, grad = _grad_of(SchemeLoss(cce_scheme()), logits, targets)
    torch.testing.assert_close(value, ce.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, z.grad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("fitted", [False, True], ids=["unfitted", "fitted"])
@pytest.mark.parametrize("name", list(SCHEMES))
def test_dn_variant_norms_follow_the_loss_own_weights(name, fitted):
    """-DN is the loss's own gradient over the batch's total L1 norm, exactly: also on a batch whose
    examples are fitted (1 - p down to 1e-9), where DM's divide-out of CCE's weight (its 1e-6)
    would shrink it (to about 0.002 of its mass there)."""
    scheme, formula = SCHEMES[name]
    logits, targets = _batch(n=30, c=7, seed=7)
    if fitted:  # the labelled logit far above the rest: 1 - p from 1e-3 to 1e-9
        logits = logits.scatter_add(1, targets.view(-1, 1), torch.linspace(8.0, 22.0, 30, dtype=logits.dtype)[:, None])
    _, own = _autograd_reference(formula, logits, targets)
    own_norms = own.abs().sum(dim=1)  # the loss's own weights 2(1-p)m(p), over N
    loss_fn = SchemeLoss(scheme, normalised=True)
    _, grad = _grad_of(loss_fn, logits, targets)
    torch.testing.assert_close(grad, own / own_norms.sum(), rtol=1e-9, atol=1e-15)
    norms = grad.abs().sum(dim=1)
    assert abs(norms.sum().item() - 1.0) < 1e-9
    torch.testing.assert_close(loss_fn.last_shares, own_norms / own_norms.sum(), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5])
def test_gce_rejects_bad_q(q):
    with pytest.raises(ValueError):
        gce_scheme(q)


def test_sl_rejects_nonnegative_clip():
    with pytest.raises(ValueError):
        sl_scheme(0.1, 1.0, 0.0)


# --- METHODS -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_builds_and_trains(name):
    hp = SimpleNamespace(method=name, lam=1.0, beta=8.0, gce_q=0.7, sl_mu=0.1, sl_nu=1.0,
                         sl_log_clip=LOG_CLIP)
    loss_fn = METHODS[name](hp)
    assert isinstance(loss_fn, nn.Module)
    logits, targets = _batch(n=12, c=4, seed=8, dtype=torch.float32)
    loss = loss_fn(logits, targets)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


# --- WeightFnLoss ----------------------------------------------------------------------------


def test_weight_fn_ones_equals_dm_beta_zero():
    logits, targets = _batch(seed=9)
    v1, g1 = _grad_of(WeightFnLoss(lambda p: torch.ones_like(p)), logits, targets)
    v2, g2 = _grad_of(DMLoss(1.0, 0.0), logits, targets)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=0)


@pytest.mark.parametrize("lam,beta", [(0.0, 2.0), (0.5, 6.0), (2.0, 12.0)])
def test_weight_fn_dm_formula_equals_dm_loss(lam, beta):
    logits, targets = _batch(seed=10)
    fn = WeightFnLoss(lambda p: torch.exp(beta * p**lam * (1 - p)))
    v1, g1 = _grad_of(fn, logits, targets)
    v2, g2 = _grad_of(DMLoss(lam, beta), logits, targets)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(v1, v2, rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    "fn",
    [lambda p: -torch.ones_like(p), lambda p: p - 0.5, lambda p: torch.full_like(p, math.nan),
     lambda p: torch.full_like(p, math.inf), lambda p: torch.ones(3, dtype=p.dtype)],
)
def test_weight_fn_rejects_bad_weights(fn):
    logits, targets = _batch(seed=11)
    with pytest.raises(ValueError):
        WeightFnLoss(fn)(logits, targets)


# --- numerical safety ----------------------------------------------------------------------

ALL_LOSSES = {
    "dm": DMLoss(1.0, 8.0),
    "dm-torch": DMLoss(1.0, 8.0, kernel="torch"),
    "dm-lam0": DMLoss(0.0, 2.0),
    "dm-lam0-torch": DMLoss(0.0, 2.0, kernel="torch"),
    "dm-lam2.5": DMLoss(2.5, 12.0),
    "dm-beta500": DMLoss(1.0, 500.0),
    "dm-beta-500": DMLoss(0.0, -500.0),
    "dm-beta-500-torch": DMLoss(0.0, -500.0, kernel="torch"),
    "cce": SchemeLoss(cce_scheme()),
    "mae": SchemeLoss(mae_scheme()),
    "gce": SchemeLoss(gce_scheme(0.7)),
    "gce-dn": SchemeLoss(gce_scheme(0.7), normalised=True),
    "sl": SchemeLoss(sl_scheme(0.1, 1.0, LOG_CLIP)),
    "mse-dn": SchemeLoss(mse_scheme(), normalised=True),
    "weightfn": WeightFnLoss(lambda p: 1 + p),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["dm", "dm-lam0", "cce-dn"])
def test_half_precision_logits(dtype, name):
    loss_fn = {"cce-dn": SchemeLoss(cce_scheme(), normalised=True)}.get(name) or ALL_LOSSES[name]
    logits32, targets = _batch(n=32, c=10, seed=12, dtype=torch.float32)
    logits = logits32.detach().to(dtype).requires_grad_(True)
    loss = loss_fn(logits, targets)
    assert loss.dtype == torch.float32  # computed in float32
    loss.backward()
    assert logits.grad.dtype == dtype
    assert torch.isfinite(logits.grad).all()
    # The float32 gradient of the same (rounded) logits, rounded once to the half dtype.
    want = _grad_of(loss_fn, logits.detach().float(), targets)[1]
    torch.testing.assert_close(logits.grad, want.to(dtype), rtol=0, atol=0)


def test_dm_logit_grad_of_half_logits_is_float32():
    logits, targets = _batch(n=8, c=4, seed=13, dtype=torch.float16)
    g = dm_logit_grad(logits.detach(), targets, 1.0, 8.0)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, dm_logit_grad(logits.detach().float(), targets, 1.0, 8.0))


def _extreme_batch(c: int, dtype: torch.dtype):
    """Logits up to |z| = 1e4: p == 1 exactly, p == 0 exactly, ties, and ordinary rows."""
    n = 6
    z = torch.zeros(n, c, dtype=torch.float32)
    z[0, 0] = 1e4                       # target 0: p == 1 exactly
    z[1, 1] = 1e4                       # target 0: p == 0 exactly
    z[2] = -1e4                         # all equal: p == 1/c
    z[3, 0], z[3, 1] = -1e4, 1e4        # target 0 at -1e4, another at +1e4: p == 0
    z[4, :] = 1e4
    z[4, 0] = -1e4                      # target 0 at -1e4, the rest tie at +1e4
    z[5, 0] = 5.0                       # an ordinary row
    targets = torch.zeros(n, dtype=torch.long)
    return z.to(dtype).requires_grad_(True), targets


@pytest.mark.parametrize("c", [2, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_extreme_logits_stay_finite(name, dtype, c):
    logits, targets = _extreme_batch(c, dtype)
    p = torch.softmax(logits.detach().float(), dim=1)[:, 0]
    assert p[0] == 1.0 and p[1] == 0.0 and p[3] == 0.0  # the rows really are extreme
    loss = ALL_LOSSES[name](logits, targets)
    assert torch.isfinite(loss)
    loss.backward()
    assert logits.grad.dtype == dtype
    assert torch.isfinite(logits.grad).all()
    if not name.startswith("dm-beta-500"):  # that one puts (almost) all mass on the p == 1 row, whose grad is 0
        assert logits.grad.abs().sum() > 0
    # p == 1 exactly: nothing left to learn, the row's gradient is zero (not NaN).
    assert logits.grad[0].abs().max() == 0


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_batch_of_one(name):
    logits, targets = _batch(n=1, c=3, seed=14, dtype=torch.float32)
    loss = ALL_LOSSES[name](logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    if not name.startswith("dm") and name != "weightfn" and not name.endswith("-dn"):
        return
    # A single example carries the whole gradient mass (up to the 1e-6 epsilon).
    assert abs(logits.grad.abs().sum().item() - 1.0) < 1e-4


@pytest.mark.parametrize("beta", [500.0, -500.0, 1e4])
def test_dm_large_beta_finite_and_concentrated(beta):
    logits, targets = _batch(n=64, c=10, seed=15, dtype=torch.float32)
    loss_fn = DMLoss(1.0, beta)
    loss = loss_fn(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert torch.isfinite(loss_fn.last_shares).all()
    assert abs(loss_fn.last_shares.sum().item() - 1.0) < 1e-5
    assert abs(logits.grad.abs().sum().item() - 1.0) < 1e-3
    if beta > 0:  # nearly all mass on the example(s) nearest the mode p = 1/2
        p = torch.softmax(logits.detach(), dim=1).gather(1, targets.view(-1, 1)).squeeze(1)
        assert loss_fn.last_shares.argmax() == (p * (1 - p)).argmax()
        assert loss_fn.last_shares.max() > 0.5


def test_dm_lam_zero_is_cce_weight_reshaped():
    # lam = 0: w = exp(beta (1 - p)); with small beta the shares approach CCE-DN's (1-p) shares
    # only to first order, so check the exact formula instead, with p == 0 and p == 1 included.
    logits = torch.tensor([[0.0, 1e4], [1e4, 0.0], [0.0, 0.0]], requires_grad=True)
    targets = torch.zeros(3, dtype=torch.long)
    loss_fn = DMLoss(0.0, 2.0)
    loss_fn(logits, targets).backward()
    w = torch.tensor([math.exp(2.0), 1.0, math.exp(1.0)])
    torch.testing.assert_close(loss_fn.last_shares, w / w.sum())
    norms = logits.grad.abs().sum(dim=1)
    torch.testing.assert_close(norms, torch.stack([w[0] / w.sum(), torch.tensor(0.0), w[2] / w.sum()]),
                               rtol=1e-5, atol=1e-7)


def test_dm_loss_backward_twice_with_retained_graph():
    logits, targets = _batch(seed=16)
    loss_fn = DMLoss(1.0, 8.0)
    loss = loss_fn(logits, targets)
    torch.testing.assert_close(loss_fn.last_shares.sum(), torch.tensor(1.0, dtype=torch.float64))
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(logits.grad, 2 * dm_logit_grad(logits, targets, 1.0, 8.0),
                               rtol=1e-14, atol=0)


def test_dm_loss_under_no_grad_with_grad_requiring_logits():
    logits, targets = _batch(seed=17)
    with torch.no_grad():
        value = DMLoss(1.0, 8.0)(logits, targets)
    assert not value.requires_grad
    torch.testing.assert_close(value, DMLoss(1.0, 8.0)(logits, targets).detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["cce", "gce0.7", "mae", "mse"])
def test_dn_on_a_batch_fitted_past_the_working_precision_keeps_its_mass(name, dtype):
    """Every example fitted so far that 1 - p rounds to 0 while the other classes' probabilities do
    not: the -DN gradient is still the loss's own direction with a total L1 norm of 1 (it was
    m / tiny times those probabilities, 1e32), and 0 once those underflow too."""
    scheme, _ = SCHEMES[name]
    targets = torch.arange(64) % 10
    for margin, mass in ((20.0, 1.0), (40.0, 1.0), (800.0, 0.0)):
        logits = torch.zeros(64, 10, dtype=dtype).scatter_(1, targets.view(-1, 1), margin)
        _, grad = _grad_of(SchemeLoss(scheme, normalised=True), logits, targets)
        assert torch.isfinite(grad).all()
        assert grad.abs().sum().item() == pytest.approx(mass, abs=1e-5), (margin, grad.abs().sum().item())
        assert torch.allclose(grad.sum(1), torch.zeros(64, dtype=dtype), atol=1e-6)  # a direction: rows sum to 0


@pytest.mark.parametrize("kernel, batch", [("torch", 1024), ("auto", 1024), ("auto", 64)])  # 64: the C kernel's
def test_a_compiled_training_step_with_dm_loss_keeps_dms_gradient(kernel, batch):
    """torch.compile of a step with the loss in it failed on the torch path (GPUs, large batches):
    dynamo could not trace the gradient built in the loss's forward."""
    from torch import nn

    from dm_tune import DMLoss, dm_logit_grad

    torch.manual_seed(0)
    model, loss_fn = nn.Linear(20, 10), DMLoss(1.0, 8.0, kernel=kernel)

    @torch.compile(backend="aot_eager")
    def step(x, y):
        z = model(x)
        return loss_fn(z, y), z

    x, y = torch.randn(batch, 20), torch.randint(0, 10, (batch,))
    with warnings.catch_warnings(record=True) as said:  # (the C call: "Dynamo does not know how to trace")
        warnings.simplefilter("always")
        loss, z = step(x, y)
    assert not [w for w in said if "Dynamo" in str(w.message)]
    loss.backward()
    compiled = model.weight.grad.clone()
    model.zero_grad()
    (model(x) * dm_logit_grad(z.detach(), y, 1.0, 8.0)).sum().backward()
    torch.testing.assert_close(compiled, model.weight.grad)


def test_importing_the_training_code_does_not_import_torchs_compiler():
    """The losses' torch.compile guard was a decorator that imported torch._dynamo (and sympy) with
    dm_tune._losses: about 1 s in every process that imports it, a search's driver among them."""
    import subprocess
    import sys

    code = ("import sys, dm_tune.train, dm_tune.population, dm_tune.search._trial; "
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kernel", ["torch", "auto"])
def test_float_or_bool_targets_and_empty_batches_are_refused_by_both_kernels(kernel):
    """Float targets (1.7) were truncated to class 1 without a word; an empty batch raised the C
    kernel's message on one path and gave a loss of -0 on the other."""
    from dm_tune import DMLoss, dm_logit_grad, multiplier_logit_grad
    from dm_tune._weighting import cce_multiplier

    z = torch.randn(4, 3, requires_grad=True)
    for bad in (torch.tensor([0.0, 1.7, 2.0, 0.0]), torch.tensor([True, False, True, False])):
        with pytest.raises(TypeError, match=f"targets must be class indices of an integer dtype, got {bad.dtype}"):
            DMLoss(kernel=kernel)(z, bad)
        with pytest.raises(TypeError, match="class indices"):
            dm_logit_grad(z, bad, 1.0, 8.0, kernel=kernel)
        with pytest.raises(TypeError, match="class indices"):
            multiplier_logit_grad(z, bad, cce_multiplier)
    for targets in (torch.tensor([0, 1, 2, 0], dtype=torch.int32), torch.tensor([0, 1, 2, 0], dtype=torch.uint8)):
        torch.testing.assert_close(dm_logit_grad(z, targets, 1.0, 8.0, kernel=kernel),
                                   dm_logit_grad(z, targets.long(), 1.0, 8.0, kernel=kernel))
    with pytest.raises(ValueError):
        DMLoss(kernel=kernel)(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, dtype=torch.long))


def test_dm_loss_knobs_set_after_construction_are_checked_and_take_effect():
    """lam = -1 set on a built loss gave a loss (the fused path checks nothing per call), and a
    kernel set later was ignored (the choice was made once, in __init__)."""
    from dm_tune import DMLoss

    loss = DMLoss(1.0, 8.0)
    for name, bad in (("lam", -1.0), ("lam", float("nan")), ("beta", float("inf")), ("kernel", "cuda")):
        with pytest.raises(ValueError):
            setattr(loss, name, bad)
    assert (loss.lam, loss.beta, loss.kernel) == (1.0, 8.0, "auto")
    loss.lam, loss.beta, loss.kernel = 0.5, 4.0, "torch"
    z, y = torch.randn(6, 3, requires_grad=True), torch.tensor([0, 1, 2, 0, 1, 2])
    loss(z, y).backward()
    assert z.grad.dtype == torch.float32 and not loss._fused and "kernel='torch'" in repr(loss)
    torch.testing.assert_close(z.grad, DMLoss(0.5, 4.0, kernel="torch")._grad_share_display(z.detach(), y)[0])


def test_a_dm_loss_pickled_before_its_knobs_were_checked_loads():
    """lam, beta and kernel became checked properties (stored as _lam, ...): a loss pickled before
    had them in its __dict__, and reading lam raised AttributeError."""
    import pickle

    from dm_tune import DMLoss

    loss = DMLoss(0.5, 4.0, kernel="torch")
    old = loss.__dict__.copy()
    for name in ("lam", "beta", "kernel"):
        old[name] = old.pop(f"_{name}")
    was = object.__new__(DMLoss)
    was.__setstate__(old)
    assert (was.lam, was.beta, was.kernel) == (0.5, 4.0, "torch") and not was._fused
    again = pickle.loads(pickle.dumps(loss))
    assert (again.lam, again.beta, again.kernel) == (0.5, 4.0, "torch")
