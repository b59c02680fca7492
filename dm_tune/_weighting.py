"""The maths of example weighting: weight functions of p and the logit gradients they imply.

Every function here is pure (tensors in, tensor out) and computes in float32 whatever the
dtype of the logits, so that fp16/bf16 training gets the same weights as fp32 training.

Notation (DM_METHOD.md section 1): ``p`` is the probability of the *labelled* class; every
loss below pushes the logits along ``probs - onehot(y)`` and differs only in the scalar that
multiplies that direction. An example's *weight* is the L1 norm of its logit gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# The released DM code adds this to CCE's weight 2(1-p) before dividing it out (Eq. 7), so that
# examples with p == 1 get a zero (not NaN) gradient.
CCE_WEIGHT_EPS = 1e-6

WeightFn = Callable[[torch.Tensor], torch.Tensor]


def _labelled(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and the probability of each example's labelled class.

    Computed in at least float32 (fp16/bf16 logits are promoted; float64 stays float64).
    """
    probs = torch.softmax(logits.to(_compute_dtype(logits)), dim=1)
    p = probs.gather(1, targets.long().view(-1, 1)).squeeze(1)
    return probs, p


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _direction(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CCE's logit gradient ``probs - onehot(y)``, the direction every scheme shares."""
    return probs - F.one_hot(targets.long(), probs.shape[1]).to(probs.dtype)


def dm_weight(p: torch.Tensor, lam: float, beta: float) -> torch.Tensor:
    """DM's weighting function (paper Eq. 12): ``exp(beta * p**lam * (1 - p))``.

    ``lam >= 0`` sets the emphasis mode (the weight peaks at p = lam / (1 + lam) for beta > 0)
    and ``beta`` the emphasis variance. Overflows only for beta beyond float32's exp range
    (|beta| > ~88); the gradient below never forms this value and is safe for any beta.
    """
    return torch.exp(_dm_log_weight(p, lam, beta))


def _dm_log_weight(p: torch.Tensor, lam: float, beta: float) -> torch.Tensor:
    p = p.to(_compute_dtype(p)).clamp(0.0, 1.0)
    # torch.pow(0, 0) == 1, which is the right limit for lam == 0 (the weight becomes exp(beta(1-p))).
    return beta * torch.pow(p, lam) * (1.0 - p)


def manipulated_logit_grad(
    logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """DM's manipulated derivative for per-example weights ``weight`` (shape [N], >= 0).

    Paper Eq. 7 as the released code computes it: the weights are normalised over the
    mini-batch, and CCE's own weight 2(1-p) is divided out of CCE's gradient, so that
    ``||grad_i||_1 == weight_i / sum_j weight_j`` and the batch's gradient mass is 1.
    The weights are treated as constants (no gradient flows through them).
    """
    probs, p = _labelled(logits, targets)
    w = weight.detach().to(p.dtype)
    share = w / w.sum().clamp_min(torch.finfo(p.dtype).tiny)
    return _share_times_direction(share, probs, p, targets)


def _share_times_direction(
    share: torch.Tensor, probs: torch.Tensor, p: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    scale = share / (2.0 * (1.0 - p) + CCE_WEIGHT_EPS)
    return scale.unsqueeze(1) * _direction(probs, targets)


def dm_logit_grad(
    logits: torch.Tensor, targets: torch.Tensor, lam: float, beta: float
) -> torch.Tensor:
    """The DM derivative wrt the logits (float32, shape of ``logits``).

    Equal to ``manipulated_logit_grad(logits, targets, dm_weight(p, lam, beta))``, but the
    batch normalisation is a softmax over the log-weights, so it cannot overflow for any beta.
    """
    probs, p = _labelled(logits.detach(), targets)
    share = torch.softmax(_dm_log_weight(p, lam, beta), dim=0)
    return _share_times_direction(share, probs, p, targets)


def dm_shares(logits: torch.Tensor, targets: torch.Tensor, lam: float, beta: float) -> torch.Tensor:
    """Each example's share of the batch's gradient mass under DM (sums to 1)."""
    _, p = _labelled(logits.detach(), targets)
    return torch.softmax(_dm_log_weight(p, lam, beta), dim=0)


# --- The paper's other schemes, as multipliers of the shared direction (DM_METHOD.md s. 2) ---
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
    probs, p = _labelled(logits.detach(), targets)
    m = multiplier(p)
    return (m / p.shape[0]).unsqueeze(1) * _direction(probs, targets)


def relative_weights(share: torch.Tensor) -> torch.Tensor:
    """Per-example weights rescaled to batch mean 1 (the scale-free form used in metrics)."""
    total = share.sum().clamp_min(torch.finfo(torch.float32).tiny)
    return share * (share.shape[0] / total)
