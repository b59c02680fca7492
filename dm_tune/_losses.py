"""Loss modules that inject a chosen logit gradient: DM, the paper's baselines and their -DN forms.

Each module's forward returns a *display* loss (a number to print and log) and, on
``.backward()``, puts the scheme's logit gradient into the logits' ``.grad``. The gradient is
computed once, eagerly, in the forward pass from the same probabilities (so weights are
constants), and cast to the logits' dtype on the way back (AMP-safe). ``last_shares`` keeps
each example's share of the batch's gradient mass for the weight metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dm_tune import _native
from dm_tune import _weighting as W


class _InjectGrad(torch.autograd.Function):
    """value = ``loss``'s display value (one per member for a PopulationLoss); d value / d logits =
    its gradient.

    The gradient is a constant computed here, in forward, where autograd records nothing (so
    the weights are constants), and saved for backward. Doing the work inside forward (rather
    than under ``no_grad`` before ``apply``) saves a detach, a context switch and a clone per step.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, loss: nn.Module):  # type: ignore[override]
        grad, share, display = loss._grad_share_display(logits, targets)
        loss.last_shares = share
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return display

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        # One display loss (a scalar), or one per population member ([K] for [K, B, C] logits).
        scale = grad_output.reshape(grad_output.shape + (1,) * (grad.dim() - grad_output.dim()))
        return (grad * scale).to(ctx.logits_dtype), None, None


class _FusedDM(torch.autograd.Function):
    """_InjectGrad specialised to DM's fused CPU kernel (float32/float64 logits, no cast back)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, loss: "DMLoss"):  # type: ignore[override]
        grad, share, display = _native.dm_parts(logits, targets, loss.lam, loss.beta)
        object.__setattr__(loss, "last_shares", share)  # a plain attribute: skip Module's checks
        ctx.save_for_backward(grad)
        return display

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None


def _weighted_cce(logits: torch.Tensor, targets: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """The released code's display loss: sum_i share_i * (-log p_i), an example with no share
    counting nothing (not 0 * inf where its p is 0)."""
    logp = F.log_softmax(logits.to(share.dtype), dim=1).gather(1, targets.long().view(-1, 1)).squeeze(1)
    return torch.where(share == 0, 0.0, share * -logp).sum()


class _GradLoss(nn.Module):
    """Shared plumbing; subclasses implement ``_grad_share_display``."""

    last_shares: torch.Tensor | None

    def __init__(self) -> None:
        super().__init__()
        self.last_shares = None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Under torch.compile the loss runs eagerly: dynamo cannot trace the gradient built in
        # _InjectGrad's forward and saved for backward ("an intermediate tensor ... aliases an input
        # or output"); the model around the loss still compiles. Disabled here, while compiling, not
        # by a decorator: that imported torch._dynamo (and sympy) with the module, about 1 s in every
        # process that imports it, a search's driver among them (one that builds an optimiser imports
        # torch._dynamo anyway, with torch.optim).
        if torch.compiler.is_compiling():
            return torch.compiler.disable(self._forward)(logits, targets)
        return self._forward(logits, targets)

    def _forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        W.check_batch(logits, targets)
        if logits.requires_grad and torch.is_grad_enabled():
            return _InjectGrad.apply(logits, targets, self)
        with torch.no_grad():
            _, share, display = self._grad_share_display(logits.detach(), targets)
        self.last_shares = share
        return display

    def _grad_share_display(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class DMLoss(_GradLoss):
    """Derivative Manipulation with w(p) = exp(beta p^lam (1-p)) (README, "The method in one screen").

    ``kernel``: "auto" (the fused C kernel for small CPU batches where it was built, torch
    operations otherwise), "native" or "torch" to force one; they agree to rounding.
    """

    def __init__(self, lam: float = 1.0, beta: float = 8.0, kernel: str = "auto") -> None:
        super().__init__()
        W.check_knobs(lam, beta)
        self._lam, self._beta = float(lam), float(beta)
        self.kernel = kernel

    def __setstate__(self, state: dict) -> None:  # a loss pickled before lam, beta and kernel were checked
        for name in ("lam", "beta", "kernel"):
            if name in state:
                state[f"_{name}"] = state.pop(name)
        super().__setstate__(state)

    # Checked when set after construction too (the fused path checks nothing per call: lam -1 gave
    # a loss, and a kernel set later was ignored).
    @property
    def lam(self) -> float:
        return self._lam

    @lam.setter
    def lam(self, value: float) -> None:
        W.check_knobs(value, self._beta)
        self._lam = float(value)

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        W.check_knobs(self._lam, value)
        self._beta = float(value)

    @property
    def kernel(self) -> str:
        return self._kernel

    @kernel.setter
    def kernel(self, value: str) -> None:
        W.check_kernel(value)
        if value == "native" and not _native.available():
            raise ValueError("kernel='native': the fused DM kernel was not built (no C compiler)")
        self._kernel = value
        self._fused = value != "torch" and _native.available()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # A CPU training batch goes straight to the fused kernel: in a step of a small model each
        # Python call on the way costs microseconds (BENCHMARKS.md). Everything else (half
        # precision, GPUs, large batches, no grad, bad shapes) takes the general path.
        # (under torch.compile the general path, which runs eagerly: dynamo cannot trace the C call)
        if (self._fused and logits.requires_grad and logits.dtype in _native.FLOATS
                and not torch.compiler.is_compiling()
                and logits.dim() == 2 and logits.shape[1] > 1 and targets.shape == logits.shape[:1]
                and _native.eligible(logits, targets) and torch.is_grad_enabled()):
            return _FusedDM.apply(logits, targets, self)
        return super().forward(logits, targets)

    def _grad_share_display(self, logits, targets):
        # One pass gives the gradient, the shares and the display loss.
        return W._dm_parts(logits, targets, self.lam, self.beta, self.kernel)

    def extra_repr(self) -> str:
        kernel = "" if self.kernel == "auto" else f", kernel={self.kernel!r}"
        return f"lam={self.lam}, beta={self.beta}{kernel}"


class WeightFnLoss(_GradLoss):
    """DM's mechanism with any user-supplied weight function of p (tensor in, tensor >= 0 out)."""

    def __init__(self, weight_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.weight_fn = weight_fn

    def _grad_share_display(self, logits, targets):
        probs, p = W._labelled(logits, targets)
        w = self.weight_fn(p).to(p.dtype)
        if w.shape != p.shape or not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError("the weight function must return finite weights >= 0, one per example")
        share = w / w.sum().clamp_min(torch.finfo(p.dtype).tiny)
        grad = W._share_times_direction(share, probs, targets)
        return grad, share, _weighted_cce(logits, targets, share)


@dataclass(frozen=True)
class Scheme:
    """A loss whose logit gradient is m(p) (probs - onehot): its multiplier and its value."""

    multiplier: Callable[[torch.Tensor], torch.Tensor]
    # Per-example loss value from log p (log-space keeps -log p finite for extreme logits).
    value: Callable[[torch.Tensor], torch.Tensor]
    # The multiplier from p and 1 - p given apart, for a multiplier that uses 1 - p: the -DN form
    # passes the other classes' probabilities' sum, exact where 1 - p rounds to 0.
    multiplier_pq: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # The multiplier from p and log p, for one that p's underflow would zero: p is 0 in float32
    # below log p of about -103, where GCE's p^q of a small q is not (0.33 at log p -110, q 0.01).
    multiplier_logp: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


class SchemeLoss(_GradLoss):
    """A classical loss (CCE, MAE, MSE, GCE, SL) through the shared mechanism.

    ``normalised=False`` reproduces autograd's gradient of the batch-mean loss exactly;
    ``normalised=True`` is the paper's "-DN" form: the same per-example gradients divided by the
    sum of their L1 norms over the mini-batch, m(p_i) (probs - onehot) / sum_j 2 (1 - p_j) m(p_j),
    as the authors' -DN layers compute it. (Not DM's divide-out of CCE's weight, whose 1e-6 would
    shrink the gradients of fitted examples: the batch's gradient mass stays 1.)
    """

    def __init__(self, scheme: Scheme, normalised: bool = False) -> None:
        super().__init__()
        self.scheme, self.normalised = scheme, normalised

    def _grad_share_display(self, logits, targets):
        probs, p = W._labelled(logits, targets)
        # 1 - p as the other classes' probabilities sum to: exact where p rounds to 1 (their
        # probabilities do not vanish with it). The shares (what the weight metrics report) take it,
        # in the multiplier too (MSE's holds 1 - p): taken from p it is 0 wherever p rounds to 1,
        # and a plain loss's batch fitted that far had shares of 0, where every example has a weight.
        index = targets.long().view(-1, 1)
        q = probs.scatter(1, index, 0.0).sum(1)
        pq, from_logp = self.scheme.multiplier_pq, self.scheme.multiplier_logp
        # log p: for the loss value (plain form) and a multiplier taken from it (GCE's p^q); a -DN
        # form of another loss needs neither
        logp = (F.log_softmax(logits.to(p.dtype), dim=1).gather(1, index).squeeze(1)
                if from_logp is not None or not self.normalised else None)
        if pq is not None:
            m_q = pq(p, q)
        else:
            m_q = self.scheme.multiplier(p) if from_logp is None else from_logp(p, logp)
        weight = 2.0 * q * m_q
        total = weight.sum().clamp_min(torch.finfo(p.dtype).tiny)
        share = weight / total
        if self.normalised:
            # -DN: each row's L1 norm is 2 q exactly, the batch's mass is 1, and a batch fitted past
            # the working precision gets no gradient, not m / tiny.
            grad = W._scaled_direction((m_q / total).unsqueeze(1), probs, q.unsqueeze(1), index)
            return grad, share, _weighted_cce(logits, targets, share)
        m = m_q if pq is None else self.scheme.multiplier(p)  # (the gradient keeps autograd's p - 1)
        grad = (m / p.shape[0]).unsqueeze(1) * W._direction(probs, targets)
        return grad, share, self.scheme.value(logp).mean()


def cce_scheme() -> Scheme:
    return Scheme(W.cce_multiplier, lambda logp: -logp)


def mae_scheme() -> Scheme:
    return Scheme(W.mae_multiplier, lambda logp: 1.0 - logp.exp())


def mse_scheme() -> Scheme:
    return Scheme(W.mse_multiplier, lambda logp: (1.0 - logp.exp()) ** 2, lambda p, q: 2.0 * p * q)


def gce_scheme(q: float) -> Scheme:
    if not (0.0 < q <= 1.0):
        raise ValueError(f"GCE's q must be in (0, 1], got {q!r}")
    return Scheme(W.gce_multiplier(q), lambda logp: (1.0 - torch.exp(q * logp)) / q,
                  multiplier_logp=lambda p, logp: W.power_of_p(p, logp, q))


def sl_scheme(mu: float, nu: float, log_clip: float) -> Scheme:
    """Symmetric loss mu CCE + nu RCE; RCE = -log_clip (1 - p) with log(0) clipped to log_clip."""
    if log_clip >= 0:
        raise ValueError(f"SL's log_clip (A) must be negative, got {log_clip!r}")
    return Scheme(
        W.sl_multiplier(mu, nu, log_clip),
        lambda logp: -mu * logp - nu * log_clip * (1.0 - logp.exp()),
    )


class ClassWeighted(_GradLoss):
    """``inner``'s logit gradient with example i's row multiplied by ``weights[y_i]``
    (dm_tune.class_weighting). Shares are the weighted shares renormalised over the batch;
    the display loss is ``inner``'s, unweighted (it is what divergence checks compare)."""

    def __init__(self, inner: _GradLoss, weights: torch.Tensor) -> None:
        super().__init__()
        if weights.dim() != 1 or not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("class weights must be a 1-D tensor of finite numbers >= 0")
        self.inner = inner
        self.register_buffer("weights", weights.to(torch.float64), persistent=False)

    def _grad_share_display(self, logits, targets):
        grad, share, display = self.inner._grad_share_display(logits, targets)
        w = self.weights.to(device=grad.device, dtype=grad.dtype)[targets.long()]
        grad, share = W.class_weighted(grad, share, w)
        return grad, share, display

    def extra_repr(self) -> str:
        return f"classes={self.weights.numel()}"
