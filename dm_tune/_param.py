"""The decoupled (mode, spread) parametrisation of DM's (lambda, beta).

DM's lambda sets where the weight curve w(p) = exp(beta p^lam (1-p)) peaks, and beta how
unequal the weights are; but the two are coupled: the exponent's maximum over p is
beta * lam^lam / (1+lam)^(1+lam), which shrinks as lam grows, so a larger lambda needs a larger
beta for the same spread. This module is the one place that converts between the paper's
(lambda, beta) and the decoupled pair:

* psi = lam / (1 + lam) in [0, 1): the emphasis mode, the p at which w peaks (beta > 0);
* rho = beta * lam^lam / (1 + lam)^(1 + lam): the natural log of the ratio between the peak
  weight and the weight at p = 1 (or p = 0), i.e. the spread. For lam = 0, rho = beta.
"""

from __future__ import annotations

import math


def _peak_exponent(lam: float) -> float:
    """max over p in [0, 1] of p^lam (1 - p); equals 1 at lam = 0 (0^0 = 1)."""
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if lam == 0:
        return 1.0
    # lam^lam / (1+lam)^(1+lam), in logs so that very large lam does not overflow; from lam = 1 up
    # as -lam log(1 + 1/lam) - log(1 + lam), not a difference of two large logs (which lost all
    # precision by lam ~ 1e15).
    if lam < 1.0:
        return math.exp(lam * math.log(lam) - (1.0 + lam) * math.log1p(lam))
    return math.exp(-lam * math.log1p(1.0 / lam) - math.log1p(lam))


def mode_from_lambda(lam: float) -> float:
    """Emphasis mode psi = lam / (1 + lam), in [0, 1) (a lam so large that psi rounds to 1 is refused)."""
    _peak_exponent(lam)  # validates lam
    psi = lam / (1.0 + lam)
    if psi >= 1.0:
        raise ValueError(f"lam {lam!r} is too large: its mode lam / (1 + lam) rounds to 1")
    return psi


def lambda_from_mode(psi: float) -> float:
    """lam = psi / (1 - psi), for psi in [0, 1)."""
    if not (0.0 <= psi < 1.0):
        raise ValueError(f"psi (emphasis mode) must be in [0, 1), got {psi!r}")
    return psi / (1.0 - psi)


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def rho_from_beta(beta: float, lam: float) -> float:
    """Log-spread rho = beta * lam^lam / (1 + lam)^(1 + lam)."""
    return _finite("beta", beta) * _peak_exponent(lam)  # (at most beta: the exponent is at most 1)


def beta_from_rho(rho: float, lam: float) -> float:
    """beta = rho * (1 + lam)^(1 + lam) / lam^lam (a rho and lam whose beta overflows are refused)."""
    beta = _finite("rho", rho) / _peak_exponent(lam)
    if not math.isfinite(beta):
        raise ValueError(f"beta = rho (1 + lam)^(1 + lam) / lam^lam overflows for rho {rho!r}, lam {lam!r}")
    return beta
