"""The maths of example weighting: weight functions of p and the logit gradients they imply.

Every function here is pure (tensors in, tensor out) and computes in at least float32 (fp16/bf16
logits are promoted, so that they get the same weights as fp32 training; float64 stays float64).

Notation (README, "The method in one screen"): ``p`` is the probability of the *labelled* class; every
loss below pushes the logits along ``probs - onehot(y)`` and differs only in the scalar that
multiplies that direction. An example's *weight* is the L1 norm of its logit gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dm_tune import _native

# The released DM code adds this to CCE's weight 2(1-p) before dividing it out (Eq. 7), so that
# examples with p == 1 get a zero (not NaN) gradient.
CCE_WEIGHT_EPS = 1e-6

WeightFn = Callable[[torch.Tensor], torch.Tensor]


def check_batch(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Logits [N >= 1, C >= 2] and targets [N] of class indices (ValueError or TypeError
    otherwise: float or bool targets were truncated to indices without a word)."""
    if logits.dim() != 2 or logits.shape[1] < 2 or logits.shape[0] < 1:
        raise ValueError(f"logits must have shape [batch>=1, classes>=2], got {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must have shape [{logits.shape[0]}], got {tuple(targets.shape)}")
    _native.check_class_indices(targets)


def _labelled(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and the probability of each example's labelled class.

    Computed in at least float32 (fp16/bf16 logits are promoted; float64 stays float64); the
    batch checked by the caller (``check_batch``).
    """
    probs = torch.softmax(logits.to(_compute_dtype(logits)), dim=1)
    p = probs.gather(1, targets.long().view(-1, 1)).squeeze(1)
    return probs, p


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def class_weighted(grad: torch.Tensor, share: torch.Tensor,
                   weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A scheme's logit gradient and example shares with each example's class weight ``weights``
    (one per example, shaped like ``share``: [B], or [K, B] for a population) multiplied in: the
    gradient rows scaled, the shares reweighted and renormalised over the batch."""
    weighted = share * weights
    share = weighted / weighted.sum(-1, keepdim=True).clamp_min(torch.finfo(weighted.dtype).tiny)
    return grad * weights.unsqueeze(-1), share


def _direction(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CCE's logit gradient ``probs - onehot(y)``, the direction every scheme shares."""
    return probs - F.one_hot(targets.long(), probs.shape[1]).to(probs.dtype)


def dm_weight(p: torch.Tensor, lam: float, beta: float) -> torch.Tensor:
    """DM's weighting function (paper Eq. 12): ``exp(beta * p**lam * (1 - p))``.

    ``lam >= 0`` sets the emphasis mode (the weight peaks at p = lam / (1 + lam) for beta > 0)
    and ``beta`` the emphasis variance. Overflows where beta p^lam (1 - p) passes the dtype's exp
    range (about 88.7 in float32, 709 in float64; the exponent is at most beta / 4 at lam = 1),
    and underflows to 0 for strongly negative beta; the gradient below never forms this value
    and is safe for any beta.
    """
    check_knobs(lam, beta)
    return torch.exp(_dm_log_weight(p, lam, beta))


def check_knobs(lam: float, beta: float) -> None:
    """DM's knobs: a finite ``lam >= 0`` and a finite ``beta`` (ValueError otherwise)."""
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number, got {beta!r}")


def _dm_log_weight(p: torch.Tensor, lam: float, beta: float) -> torch.Tensor:
    p = p.to(_compute_dtype(p)).clamp(0.0, 1.0)
    return _dm_log_weight_of(p, p - 1.0, lam, beta)


def _dm_log_weight_of(p: torch.Tensor, p_minus_1: torch.Tensor, lam: float, beta: float,
                      logp: torch.Tensor | None = None) -> torch.Tensor:
    """The exponent beta p^lam (1-p), for p in [0, 1] and p_minus_1 = p - 1 computed by the caller.

    Written as (-beta p^lam)(p - 1): the same products (negation is exact), reusing p - 1. With
    ``logp`` (log p, from a log-softmax) p^lam is exp(lam log p): p itself underflows to 0 in
    float32 below log p of about -103, where p^lam of a small lam is far from 0 (0.33 at log p
    -110, lam 0.01): an example the labels contradict that strongly got weight exp(0) = 1.
    """
    if lam == 0.0:  # p^0 == 1, also at p == 0: the weight becomes exp(beta (1-p))
        return p_minus_1 * -beta
    if lam == 1.0:  # (p^1: where p underflows, so does the exponent's true value)
        return (p * -beta).mul_(p_minus_1)
    powered = torch.pow(p, lam) if logp is None else torch.exp(logp * lam)
    return (powered * -beta).mul_(p_minus_1)


def manipulated_logit_grad(
    logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """DM's manipulated derivative for per-example weights ``weight`` (shape [N], >= 0).

    Paper Eq. 7 as the released code computes it: the weights are normalised over the
    mini-batch, and CCE's own weight 2(1-p) is divided out of CCE's gradient, so that
    ``||grad_i||_1 == weight_i / sum_j weight_j`` and the batch's gradient mass is 1.
    The weights are treated as constants (no gradient flows through them).
    """
    check_batch(logits, targets)
    probs, p = _labelled(logits, targets)
    w = weight.detach().to(p.dtype)
    share = w / w.sum().clamp_min(torch.finfo(p.dtype).tiny)
    return _share_times_direction(share, probs, targets)


def _share_times_direction(share: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``share / (2(1-p) + eps) * (probs - onehot(y))``: Eq. 7 given each example's share."""
    index = targets.long().view(-1, 1)
    q = _minus_others(probs, index).neg_()
    scale = share.unsqueeze(1) / (2.0 * q + CCE_WEIGHT_EPS)
    return _scaled_direction(scale, probs, q, index)


def _minus_others(probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``p - 1`` as minus the other classes' probabilities (``index``: the labels, shaped like
    ``probs`` with a last dimension of 1; so is the result). The labelled entries of ``probs`` are
    zeroed in place: every caller overwrites them with p - 1 next.

    DM divides by 2 (1 - p) + 1e-6, so a fitted example's 1 - p (1e-6, say) must be right to
    rounding. Taken from p (1 - p, or expm1 of the log-softmax's log p) it is not in float32: log p
    near 0 is off by up to ~6e-8 absolute, tens of percent of that 1 - p, and its row would then no
    longer sum to 0. Each other probability is right to rounding, and so is their sum.
    """
    return probs.scatter_(-1, index, 0.0).sum(-1, keepdim=True).neg_()


def _scaled_direction(
    scale: torch.Tensor, probs: torch.Tensor, q: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """``scale * (probs - onehot)`` for column vectors ``scale`` and ``q = 1 - p`` ([N, 1]).

    Written as ``scale * probs`` with the labelled entry overwritten by ``-(q * scale)``, which
    is bitwise ``scale * (p - 1)``: no one-hot matrix, and no cancellation in ``p * scale - scale``
    when p is close to 1.
    """
    return (probs * scale).scatter_(1, index, (q * scale).neg_())


KERNELS = ("auto", "native", "torch")


def check_kernel(kernel: str) -> str:
    """``kernel`` if it names an implementation of _dm_parts, else a ValueError saying which do."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    return kernel


def _dm_parts(
    logits: torch.Tensor, targets: torch.Tensor, lam: float, beta: float, kernel: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DM in one pass (the single entry point behind dm_logit_grad, dm_shares and DMLoss).

    Returns the logit gradient of Eq. 7 with w = exp(beta p^lam (1-p)) ([N, C], computed in at
    least float32), each example's share w_i / sum_j w_j ([N]) and the display loss
    -sum_i share_i log p_i (0-d). ``kernel``: "torch" (the reference implementation below, any
    device), "native" (the fused CPU kernel of _native.py, the same function in one C call) or
    "auto" (native for CPU batches it is faster on, when it was built; torch otherwise).
    """
    check_batch(logits, targets)
    check_knobs(lam, beta)
    if kernel == "torch" or (kernel == "auto" and not _native.eligible(logits, targets)):
        return _dm_parts_torch(logits, targets, lam, beta)
    check_kernel(kernel)
    if logits.device.type != "cpu" or targets.device.type != "cpu":
        raise ValueError(f"the native DM kernel runs on CPU tensors only, got {logits.device}")
    return _native.dm_parts(logits, targets, lam, beta)


def _dm_parts_torch(
    logits: torch.Tensor, targets: torch.Tensor, lam: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference implementation of _dm_parts in tensor operations (any device and dtype).

    The probabilities come from one log-softmax; the batch normalisation is a softmax over the
    log-weights, so it cannot overflow for any beta.
    """
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.to(_compute_dtype(logits))
    logprobs = torch.log_softmax(logits, dim=1)
    index = (targets if targets.dtype == torch.long else targets.long()).view(-1, 1)
    logp = logprobs.gather(1, index)  # [N, 1]
    probs = logprobs.exp_()  # in place: the log-probabilities are not needed any more
    p = probs.gather(1, index)  # exp(log_softmax) is in [0, 1], so no clamp is needed
    p_minus_1 = _minus_others(probs, index)  # p - 1, right to rounding near p = 1
    share = torch.softmax(_dm_log_weight_of(p, p_minus_1, lam, beta, logp), dim=0)  # [N, 1]
    scale = share / torch.rsub(p_minus_1, CCE_WEIGHT_EPS, alpha=2.0)  # share / (2 (1-p) + eps)
    # probs - onehot is probs with the labelled entry replaced by p - 1; then times scale.
    grad = probs.scatter_(1, index, p_minus_1).mul_(scale)
    share = share.view(-1)
    return grad, share, torch.dot(share, logp.view(-1)).neg()


def dm_logit_grad(
    logits: torch.Tensor, targets: torch.Tensor, lam: float, beta: float, kernel: str = "auto"
) -> torch.Tensor:
    """The DM derivative wrt the logits (at least float32, shape of ``logits``).

    Equal to ``manipulated_logit_grad(logits, targets, dm_weight(p, lam, beta))``, but the
    batch normalisation is a softmax over the log-weights, so it cannot overflow for any beta.
    ``kernel`` picks the implementation (see _dm_parts); all give the same values to rounding.
    """
    return _dm_parts(logits.detach(), targets, lam, beta, kernel)[0]


def dm_shares(
    logits: torch.Tensor, targets: torch.Tensor, lam: float, beta: float, kernel: str = "auto"
) -> torch.Tensor:
    """Each example's share of the batch's gradient mass under DM (sums to 1)."""
    return _dm_parts(logits.detach(), targets, lam, beta, kernel)[1]


# --- The paper's other schemes, as multipliers of the shared direction ---
# A multiplier m(p) gives the gradient m(p) * (probs - onehot); its weight is 2 (1 - p) m(p).


def cce_multiplier(p: torch.Tensor) -> torch.Tensor:
    """CCE, L = -log p."""
    return torch.ones_like(p)


def mae_multiplier(p: torch.Tensor) -> torch.Tensor:
    """MAE in the paper's form, L = 1 - p."""
    return p


def mse_multiplier(p: torch.Tensor) -> torch.Tensor:
    """MSE in the paper's form, L = (1 - p)^2."""
    return 2.0 * p * (1.0 - p)


def power_of_p(p: torch.Tensor, logp: torch.Tensor, q: float | torch.Tensor) -> torch.Tensor:
    """p^q, as exp(q log p) where p is below the dtype's normal range: p underflows to 0 in float32
    below log p of about -103, where p^q of a small q does not (0.33 at log p -110, q 0.01). Above
    it pow(p, q), the more accurate of the two in float32. q 0 gives 1, as p^0 does."""
    below = torch.exp(torch.where(torch.as_tensor(q) == 0, 0.0, q * logp))
    return torch.where(p >= torch.finfo(p.dtype).tiny, torch.pow(p, q), below)


def gce_multiplier(q: float) -> WeightFn:
    """GCE, L = (1 - p^q) / q, q in (0, 1]."""

    def multiplier(p: torch.Tensor) -> torch.Tensor:
        return torch.pow(p, q)

    return multiplier


def sl_multiplier(mu: float, nu: float, log_clip: float) -> WeightFn:
    """Symmetric loss mu * CCE + nu * RCE, with log(0) in the reverse CE clipped to ``log_clip``.

    RCE = -log_clip * (1 - p), whose logit gradient is -log_clip * p * (probs - onehot).
    """

    def multiplier(p: torch.Tensor) -> torch.Tensor:
        return mu - nu * log_clip * p

    return multiplier


def weight_from_multiplier(multiplier: WeightFn) -> WeightFn:
    """The weight (L1 norm of the logit gradient) of a multiplier scheme: 2 (1 - p) m(p)."""

    def weight(p: torch.Tensor) -> torch.Tensor:
        return 2.0 * (1.0 - p) * multiplier(p)

    return weight


def multiplier_logit_grad(
    logits: torch.Tensor, targets: torch.Tensor, multiplier: WeightFn
) -> torch.Tensor:
    """The logit gradient of a batch-mean loss whose per-example gradient is m(p)(probs - onehot).

    For CCE/MAE/MSE/GCE/SL this equals autograd's gradient of the loss formula's batch mean.
    """
    check_batch(logits, targets)
    probs, p = _labelled(logits.detach(), targets)
    m = multiplier(p)
    return (m / p.shape[0]).unsqueeze(1) * _direction(probs, targets)


def relative_weights(share: torch.Tensor) -> torch.Tensor:
    """Per-example weights rescaled to batch mean 1 (the scale-free form used in metrics)."""
    total = share.sum().clamp_min(torch.finfo(torch.float32).tiny)
    return share * (share.shape[0] / total)
