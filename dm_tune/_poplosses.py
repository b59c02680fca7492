"""Every training method of ``METHODS`` on a population's logits ``[K, B, C]`` in one call.

Member k's gradient is what its own loss module (dm_tune.methods) would inject for logits[k]:
all methods push the logits along ``probs - onehot(y)`` and differ only in the per-example
scalar in front of it (README, "The method in one screen"), so one set of tensor operations with per-member
knobs ([K, 1] tensors) covers them all:

- ``dm``: share = softmax over the batch of beta p^lam (1-p); scale = share / (2(1-p) + eps);
- ``-dn`` forms: share = w / sum(w) with the loss's own weight w = 2(1-p) m(p); scale = m / sum(w);
- plain losses: scale = m(p) / B (autograd's gradient of the batch-mean loss);

with every multiplier written as m(p) = a + b p^q (1-p)^r and every loss value as
alpha (-log p) + gamma (1 - p^q) / q + delta (1-p)^2. The single-run modules stay the
reference; tests/test_population.py checks every method against them. On a CPU the same function
runs as one C call (dm_tune._native.population_parts) where it was built and the batch is small
enough; ``population_loss_parts`` is its reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dm_tune import _native
from dm_tune._losses import _InjectGrad
from dm_tune._weighting import (CCE_WEIGHT_EPS, _compute_dtype, _minus_others, check_kernel, class_weighted,
                                power_of_p)

DM, PLAIN, NORMALISED = 0, 1, 2


@dataclass(frozen=True)
class MemberLoss:
    """One member's method as numbers: its kind and the coefficients described above."""

    kind: int                 # DM, PLAIN or NORMALISED
    lam: float = 0.0          # DM
    beta: float = 0.0
    a: float = 0.0            # multiplier m(p) = a + b p^q (1-p)^r
    b: float = 0.0
    q: float = 1.0
    r: float = 0.0
    alpha: float = 0.0        # value alpha (-log p) + gamma (1 - p^q) / q + delta (1-p)^2
    gamma: float = 0.0
    delta: float = 0.0


def _scheme(kind: int, **coefficients: float) -> MemberLoss:
    return MemberLoss(kind, **coefficients)


def _pair(name: str, coefficients: Any) -> dict[str, Any]:
    """A loss and its "-dn" form (same coefficients, normalised)."""
    return {name: lambda c: _scheme(PLAIN, **coefficients(c)),
            f"{name}-dn": lambda c: _scheme(NORMALISED, **coefficients(c))}


# method name -> member loss, one line per method of dm_tune.methods.METHODS (a test checks that
# the two tables name the same methods). The coefficients mirror _weighting's multipliers.
MEMBER_LOSSES: dict[str, Any] = {
    "dm": lambda c: MemberLoss(DM, lam=float(c.lam), beta=float(c.beta)),
    **_pair("cce", coefficients=lambda c: {"a": 1.0, "alpha": 1.0}),
    **_pair("gce", coefficients=lambda c: {"b": 1.0, "q": float(c.gce_q), "gamma": 1.0}),
    **_pair("mae", coefficients=lambda c: {"b": 1.0, "gamma": 1.0}),
    **_pair("mse", coefficients=lambda c: {"b": 2.0, "r": 1.0, "delta": 1.0}),
    "sl": lambda c: _scheme(PLAIN, a=float(c.sl_mu), b=-float(c.sl_nu) * float(c.sl_log_clip),
                            alpha=float(c.sl_mu), gamma=-float(c.sl_nu) * float(c.sl_log_clip)),
}


def member_loss(config: Any) -> MemberLoss:
    """The member loss of ``config.method`` (KeyError for a method without a population form)."""
    return MEMBER_LOSSES[config.method](config)


def population_loss_parts(
    logits: torch.Tensor, targets: torch.Tensor, knobs: dict[str, torch.Tensor], exact_q: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logit gradient [K, B, C], shares [K, B], display losses [K]) for every member at once.

    ``knobs`` holds one [K, 1] tensor per MemberLoss field, in the dtype the logits are computed
    in: at least float32, like the single-run losses (see PopulationLoss.knobs). ``exact_q``:
    whether any member is DM or a "-DN" form (False: every member is plain, and every labelled
    entry of the direction is p - 1).
    """
    logits = logits.to(_compute_dtype(logits))
    batch = logits.shape[1]
    logprobs = torch.log_softmax(logits, dim=2)
    index = targets.long().unsqueeze(2)
    logp = logprobs.gather(2, index).squeeze(2)       # [K, B]
    probs = logprobs.exp_()
    p = probs.gather(2, index).squeeze(2)
    p_minus_1 = torch.expm1(logp)  # plain members: p - 1 as the single run's probs - onehot has it
    one_minus_p = -p_minus_1
    is_dm, plain = knobs["kind"] == DM, knobs["kind"] == PLAIN
    # The labelled entry of the direction, p - 1; for DM and "-DN" members minus the other classes'
    # probabilities, right to rounding where p is close to 1 (see _minus_others) and
    # exact where p rounds to 1 (see SchemeLoss): "-DN" rows' L1 norms are then 2 q exactly and a
    # batch fitted past the working precision gets no gradient. Their multipliers' 1 - p is that too.
    # Plain members' weights (their shares: the weight metrics) take it so too: from p it is 0
    # wherever p rounds to 1, and a batch fitted that far had shares of 0 (as SchemeLoss).
    minus_others = _minus_others(probs, index).squeeze(2)
    target_entry = torch.where(plain, p_minus_1, minus_others) if exact_q else p_minus_1
    multiplier_1mp = -target_entry
    # DM members: a softmax over the batch of the log-weights (cannot overflow for any beta), p^lam
    # as exp(lam log p): p underflows to 0 in float32 below log p of about -103, where p^lam of a
    # small lam does not (see _dm_log_weight_of); lam 0 gives 1, as p^0 does.
    p_to_lam = torch.exp(torch.where(knobs["lam"] == 0, 0.0, knobs["lam"] * logp))
    share_dm = torch.softmax(p_to_lam.mul_(-knobs["beta"]).mul_(target_entry), dim=1)
    # The other members: their multiplier m(p) and weight 2 (1-p) m(p).
    # p^q from log p where p underflows (GCE's with a small q: see power_of_p)
    p_to_q = knobs["b"] * power_of_p(p, logp, knobs["q"])
    m = torch.pow(multiplier_1mp, knobs["r"]).mul_(p_to_q).add_(knobs["a"])
    # Their weights with that 1 - p in the multiplier too (MSE's holds 1 - p; for DM and "-DN"
    # members it is m itself).
    weight = torch.pow(-minus_others, knobs["r"]).mul_(p_to_q).add_(knobs["a"]).mul_(-2.0 * minus_others)
    total = weight.sum(1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    share = torch.where(is_dm, share_dm, weight / total)
    # DM: its share over CCE's divided-out weight; "-DN": m over the batch's gradient mass; plain: m / B.
    dm_scale = share / torch.rsub(target_entry, CCE_WEIGHT_EPS, alpha=2.0)
    scale = torch.where(plain, m / batch, torch.where(is_dm, dm_scale, m / total))
    grad = probs.scatter_(2, index, target_entry.unsqueeze(2)).mul_(scale.unsqueeze(2))
    # (a term whose coefficient is 0 counts nothing, not 0 * inf where p is 0: MAE, MSE and GCE
    # have no -log p term)
    value = (torch.where(knobs["alpha"] == 0, 0.0, knobs["alpha"] * -logp)
             + knobs["gamma"] * -torch.expm1(knobs["q"] * logp) / knobs["q"]
             + knobs["delta"] * one_minus_p.square())
    display = torch.where(plain.squeeze(1), value.mean(1), torch.where(share == 0, 0.0, share * -logp).sum(1))
    return grad, share, display


class PopulationLoss(nn.Module):
    """The members' losses: forward returns the display losses [K]; ``.sum().backward()`` puts
    each member's own logit gradient into its slice of the logits' gradient."""

    last_shares: torch.Tensor | None

    def __init__(self, members: list[MemberLoss], class_weights: torch.Tensor | None = None,
                 kernel: str = "auto") -> None:
        """``kernel``: "auto" (the fused C kernel for the CPU batches where it was measured faster,
        ``_native.population_eligible``, if it was built; torch otherwise), "torch" or "native"
        (the C kernel for any CPU batch)."""
        super().__init__()
        check_kernel(kernel)
        if kernel == "native" and not _native.available():
            raise ValueError("kernel='native': the fused DM kernel was not built (no C compiler)")
        self.kernel = kernel
        self.exact_q = any(int(m.kind) in (DM, NORMALISED) for m in members)
        for name in MemberLoss.__dataclass_fields__:
            values = [float(getattr(m, name)) for m in members]
            self.register_buffer(name, torch.tensor(values, dtype=torch.float64).view(-1, 1), persistent=False)
        # The same knobs as one float64 [K, fields] table, for the C kernel.
        self._packed = torch.cat([getattr(self, name) for name in MemberLoss.__dataclass_fields__], 1)
        # Member k's class weights in row k ([K, C], dm_tune.class_weighting), or None for none.
        if class_weights is not None and (class_weights.dim() != 2 or class_weights.shape[0] != len(members)):
            raise ValueError(f"class weights must have shape [{len(members)}, classes]")
        self.register_buffer("class_weights", None if class_weights is None else class_weights.to(torch.float64),
                             persistent=False)
        self.last_shares = None
        self._cast: dict[tuple[torch.dtype, torch.device], dict[str, torch.Tensor]] = {}

    def knobs(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The knobs in the dtype the logits are computed in (kept in float64, cast once)."""
        key = (dtype, self.kind.device)
        if key not in self._cast:
            self._cast[key] = {name: getattr(self, name).to(dtype) for name in MemberLoss.__dataclass_fields__}
            if self.class_weights is not None:
                self._cast[key]["class_weights"] = self.class_weights.to(dtype)
        return self._cast[key]

    def _grad_share_display(self, logits: torch.Tensor, targets: torch.Tensor):
        """For _InjectGrad: each member's logit gradient, example shares and display loss [K]."""
        knobs = self.knobs(_compute_dtype(logits))
        if self.kernel == "native" and not (logits.is_cpu and targets.is_cpu):
            raise ValueError("kernel='native' computes CPU tensors only")
        if self.kernel == "native" or (self.kernel == "auto" and _native.population_eligible(logits, targets)):
            grad, share, display = _native.population_parts(logits, targets, self._packed)
        else:
            grad, share, display = population_loss_parts(logits, targets, knobs, self.exact_q)
        if "class_weights" not in knobs:
            return grad, share, display
        # As ClassWeighted: row i of member k times w_k[y_ki]; shares reweighted, display unweighted.
        grad, share = class_weighted(grad, share, knobs["class_weights"].gather(1, targets.long()))
        return grad, share, display

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 3 or logits.shape[0] != self.kind.shape[0] or logits.shape[2] < 2:
            raise ValueError(f"logits must have shape [{self.kind.shape[0]}, batch, classes>=2], "
                             f"got {tuple(logits.shape)}")
        if logits.requires_grad and torch.is_grad_enabled():
            return _InjectGrad.apply(logits, targets, self)
        with torch.no_grad():
            _, share, display = self._grad_share_display(logits, targets)
        self.last_shares = share
        return display
