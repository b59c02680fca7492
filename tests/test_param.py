"""The decoupled (psi, rho) parametrisation of DM's (lambda, beta)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from dm_tune import beta_from_rho, dm_weight, lambda_from_mode, mode_from_lambda, rho_from_beta

LAMS = [0.0, 1e-3, 0.5, 1.0, 2.0, 7.0, 50.0]


@pytest.mark.parametrize("lam", LAMS)
def test_lambda_mode_round_trip(lam):
    psi = mode_from_lambda(lam)
    assert 0.0 <= psi < 1.0
    assert psi == pytest.approx(lam / (1 + lam), rel=1e-15, abs=0)
    assert lambda_from_mode(psi) == pytest.approx(lam, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("psi", [0.0, 1 / 3, 0.5, 2 / 3, 0.9, 0.999])
def test_mode_lambda_round_trip(psi):
    assert mode_from_lambda(lambda_from_mode(psi)) == pytest.approx(psi, rel=1e-12, abs=0)


def test_paper_modes():
    assert [mode_from_lambda(x) for x in (0.0, 0.5, 1.0, 2.0)] == pytest.approx([0, 1 / 3, 1 / 2, 2 / 3])


@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("beta", [-8.0, 0.0, 0.5, 8.0, 24.0])
def test_beta_rho_round_trip(lam, beta):
    rho = rho_from_beta(beta, lam)
    assert beta_from_rho(rho, lam) == pytest.approx(beta, rel=1e-12, abs=1e-15)
    assert rho_from_beta(beta_from_rho(beta, lam), lam) == pytest.approx(beta, rel=1e-12, abs=1e-15)


def test_rho_equals_beta_at_lambda_zero():
    assert rho_from_beta(3.5, 0.0) == 3.5
    assert beta_from_rho(3.5, 0.0) == 3.5


@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("beta", [0.5, 8.0, 20.0])
def test_rho_is_log_peak_to_end_ratio(lam, beta):
    # Numerically: log(max_p w(p) / w(p=1)) on a fine grid (float64).
    grid = torch.linspace(0.0, 1.0, 400_001, dtype=torch.float64)
    w = dm_weight(grid, lam, beta)
    numeric = math.log(w.max().item() / w[-1].item())
    assert rho_from_beta(beta, lam) == pytest.approx(numeric, rel=1e-6, abs=1e-12)
    # For lam > 0 the weight at p = 0 equals that at p = 1 too.
    if lam > 0:
        assert w[0].item() == w[-1].item() == 1.0


def test_large_lambda_does_not_overflow():
    rho = rho_from_beta(1.0, 1e6)
    assert math.isfinite(rho) and 0 < rho
    # max_p p^lam (1-p) ~ 1 / (e (1 + lam)) for large lam
    assert rho == pytest.approx(1 / (math.e * (1 + 1e6)), rel=1e-5)
    assert beta_from_rho(rho, 1e6) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("lam", [1e3, 1e8, 1e12, 1e15, 1e300])
def test_the_peak_stays_accurate_for_any_lambda(lam):
    """lam^lam / (1+lam)^(1+lam) as a difference of two large logs lost its precision (37% at
    1e15, 1.0 instead of 3.7e-301 at 1e300), and lambda_from_mode reaches 9e15."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 700  # 1 + 1/lam exactly, up to lam = 1e300
        big = Decimal(lam)
        # the same quantity as exp(-lam log(1 + 1/lam)) / (1 + lam)
        want = float((-(big * (1 + 1 / big).ln())).exp() / (1 + big))
    assert rho_from_beta(1.0, lam) == pytest.approx(want, rel=1e-13, abs=0)
    assert beta_from_rho(rho_from_beta(2.5, lam), lam) == pytest.approx(2.5, rel=1e-13, abs=0)


def test_larger_lambda_needs_larger_beta_for_same_spread():
    betas = [beta_from_rho(2.0, lam) for lam in (0.0, 0.5, 1.0, 2.0, 50.0)]
    assert betas == sorted(betas) and betas[0] == 2.0
    assert beta_from_rho(2.0, 1.0) == pytest.approx(8.0)  # lam = 1: max p(1-p) = 1/4


@pytest.mark.parametrize("lam", [-1e-9, -1.0, math.inf, math.nan])
def test_invalid_lambda(lam):
    with pytest.raises(ValueError):
        mode_from_lambda(lam)
    with pytest.raises(ValueError):
        rho_from_beta(1.0, lam)
    with pytest.raises(ValueError):
        beta_from_rho(1.0, lam)


@pytest.mark.parametrize("psi", [1.0, 1.5, -1e-9, -0.5, math.nan, math.inf])
def test_invalid_mode(psi):
    with pytest.raises(ValueError):
        lambda_from_mode(psi)


def test_the_conversions_refuse_what_is_not_a_finite_point():
    """rho or beta nan/inf passed through, beta_from_rho(4, 1e308) returned inf, and
    mode_from_lambda(1e300) returned 1.0, a mode lambda_from_mode then refused."""
    from dm_tune import beta_from_rho, mode_from_lambda, rho_from_beta

    for f, args, words in [(beta_from_rho, (float("nan"), 1.0), "rho must be a finite number, got nan"),
                           (beta_from_rho, (float("inf"), 1.0), "rho must be a finite number, got inf"),
                           (rho_from_beta, (float("nan"), 1.0), "beta must be a finite number, got nan"),
                           (beta_from_rho, (4.0, 1e308), "overflows for rho 4.0, lam 1e+308"),
                           (mode_from_lambda, (1e300,), "lam 1e+300 is too large")]:
        with pytest.raises(ValueError, match=re.escape(words)):
            f(*args)
    assert beta_from_rho(4.0, 1.0) == 16.0 and rho_from_beta(16.0, 1.0) == 4.0 and rho_from_beta(0.0, 2.0) == 0.0
