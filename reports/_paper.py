"""The DM paper's own hyper-parameter guidance (arXiv:1905.11233, its experiments), and how a measurement compares.

The guidance is encoded once here as data; ``compare_with_paper`` turns one setting's measured
optimum into a verdict: "agree", "refine" (same direction, the optimum sits elsewhere or the
paper's mode was not tested) or "refute" (the paper's mode was tested and worse in final test
accuracy by more than a point and beyond seed noise; both arms chosen on validation), with
the reason in words; "none" for a retrieval setting, which the paper's guidance does not cover.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Best psi over {0, 1/3, 1/2, 2/3} on CIFAR-10 (ResNet-56) for symmetric noise rate r.
CIFAR10_SCHEDULE = ((0.0, 0.0), (0.2, 1 / 3), (0.4, 1 / 2), (0.6, 2 / 3), (0.8, 2 / 3))
# The beta ranges the authors searched for each lambda.
BETA_GRIDS = {0.0: (0.5, 4.0), 0.5: (4.0, 16.0), 1.0: (8.0, 20.0), 2.0: (12.0, 24.0)}
ASYMMETRIC_NOISE = ("pair", "cifar100-superclass")
MANY_CLASSES = 50            # "with 100 classes the best values move much less with noise"
AGREE_PSI = 0.10             # |measured - paper| within this (or the paper's psi inside the 1-point region)
REFUTE_PSI = 0.20            # farther than this, and the paper's mode measured > 1 point worse: refute
REFUTE_POINTS = 1.0
NO_RETRIEVAL_GUIDANCE = "the paper gives no lambda or beta for video retrieval (its MARS row)"


def paper_guidance(noise: str, noise_rate: float, num_classes: int | None, pretrained: bool) -> dict[str, Any]:
    """What the paper would choose for this setting: psi (None: no advice on the mode), a beta range, the source."""
    rate = float(noise_rate or 0.0)
    if noise == "none" or rate == 0.0:
        return _guide(0.0, BETA_GRIDS[0.0], "clean data: lambda 0, emphasise hard examples")
    if num_classes is not None and num_classes <= 2:
        return _guide(None, (-4.0, 4.0), "2 classes (IMDB): small beta of either sign")
    if pretrained and noise == "file":
        return _guide(0.5, (2.0, 2.0), "pre-trained net with real noise (Clothing1M): lambda 1, beta 2")
    if num_classes is not None and num_classes >= MANY_CLASSES:
        if noise in ASYMMETRIC_NOISE:
            return _guide(0.5, (6.0, 8.0), "100 classes, asymmetric noise (CIFAR-100): lambda 1, beta 6-8")
        return _guide(1 / 3, (6.0, 8.0), "100 classes (CIFAR-100): lambda 0.5 at every symmetric rate, beta 6-8")
    rates, psis = zip(*CIFAR10_SCHEDULE)
    psi = float(np.interp(min(rate, rates[-1]), rates, psis))
    lam = psi / (1 - psi)
    grid_lam = min(BETA_GRIDS, key=lambda g: abs(g - lam))
    note = "" if noise == "symmetric" else f" (measured for symmetric noise; this is {noise})"
    return _guide(psi, BETA_GRIDS[grid_lam], f"CIFAR-10 schedule: best psi 0, 1/3, 1/2, 2/3, 2/3 for "
                                              f"r = 0, 0.2, 0.4, 0.6, 0.8, interpolated at r = {rate:g}{note}")


def compare_with_paper(setting: dict[str, Any], paper_psi_gap: float | None,
                       gap_clear: bool | None = None, unfinished: dict[str, int] | None = None) -> dict[str, Any]:
    """Verdict on the paper's guidance for one analysed setting.

    ``paper_psi_gap``: points of final test accuracy by which the best arm beat the arm near the
    paper's mode that came closest to it on validation (None when no trial came near it; both arms
    chosen on validation, measured on test); ``gap_clear``: whether that gap is beyond seed
    noise (True: paired over seeds, its 95% t interval excludes 0; False: it does not; None: not
    tested, fewer than 2 paired seeds). Only a gap beyond seed noise refutes; the others refine.
    ``unfinished``: where no gap was measured, the runs near the paper's mode that did not finish,
    by how they ended (early-stopped, diverged, ...): tried, not untested.
    """
    if setting.get("task") == "retrieval":  # its classification guidance does not carry over
        return {"paper_psi": None, "paper_lam": None, "paper_beta_range": None, "source": NO_RETRIEVAL_GUIDANCE,
                "beta_in_paper_range": None, "paper_psi_gap_points": None, "verdict": "none",
                "reason": f"{NO_RETRIEVAL_GUIDANCE} (measured psi {setting['psi']:.2f}, beta {setting['beta']:.3g})"}
    guide = paper_guidance(setting["noise"], setting["noise_rate"], setting["num_classes"], setting["pretrained"])
    psi, beta, lam = setting["psi"], setting["beta"], setting["lam"]
    lo_b, hi_b = guide["beta_range"]
    in_grid = lo_b <= beta <= hi_b
    beta_note = (f"beta {beta:.3g} is {'inside' if in_grid else 'outside'} the paper's range "
                 f"[{lo_b:g}, {hi_b:g}]")
    out: dict[str, Any] = {"paper_psi": guide["psi"], "paper_lam": guide["lam"],
                           "paper_beta_range": [lo_b, hi_b], "source": guide["source"],
                           "beta_in_paper_range": in_grid, "paper_psi_gap_points": paper_psi_gap}
    if guide["psi"] is None:
        verdict = "agree" if in_grid else "refine"
        out.update(verdict=verdict, reason=f"{beta_note}; the paper gives no mode for this case "
                                           f"(measured psi {psi:.2f}, lambda {lam:.2g})")
        return out
    paper = guide["psi"]
    lo, hi = setting["psi_range"]
    cw = setting.get("class_weighting") or "none"  # (the gap is measured among arms of the best one's)
    weighted = "" if cw == "none" else f" with class weighting {cw}"
    delta = psi - paper
    where = (f"measured best psi {psi:.2f} (configurations within {1:g} point: psi {lo:.2f}-{hi:.2f}) vs the "
             f"paper's {paper:.2f}")
    if lo - 1e-9 <= paper <= hi + 1e-9 or abs(delta) <= AGREE_PSI:
        verdict, why = "agree", "the paper's mode is within the measured near-best region"
        if abs(delta) <= AGREE_PSI and not lo - 1e-9 <= paper <= hi + 1e-9:
            why = f"the measured mode is within {AGREE_PSI:g} of the paper's"
    elif paper_psi_gap is None and unfinished:
        ended = ", ".join(f"{n} {status}" for status, n in sorted(unfinished.items()))
        verdict, why = "refine", (f"the optimum sits elsewhere; trials near the paper's mode{weighted} ran but none "
                                  f"finished ({ended}), so the gap there is not measured")
    elif paper_psi_gap is None:
        verdict, why = "refine", f"the optimum sits elsewhere, but no trial tested the paper's mode{weighted}"
    elif abs(delta) > REFUTE_PSI and paper_psi_gap > REFUTE_POINTS and gap_clear:
        verdict, why = "refute", (f"trials at the paper's mode{weighted} were {paper_psi_gap:.1f} points worse on "
                                  "test, beyond seed noise (paired 95% t interval)")
    else:
        direction = "higher" if delta > 0 else "lower"
        noise = ("" if gap_clear or paper_psi_gap <= 0 else ", within seed noise" if gap_clear is False
                 else ", not tested against seed noise: fewer than 2 seeds paired with the best arm")
        worse = (f"{paper_psi_gap:.1f} points worse" if paper_psi_gap >= 0.05 else
                 f"{-paper_psi_gap:.1f} points better" if paper_psi_gap <= -0.05 else "as good")
        verdict, why = "refine", (f"the best mode is {direction} than the paper's (trials at the paper's "
                                  f"mode{weighted} were {worse} on test{noise})")
    out.update(verdict=verdict, reason=f"{where}: {why}; {beta_note}")
    return out


def _guide(psi: float | None, beta_range: tuple[float, float], source: str) -> dict[str, Any]:
    lam = None if psi is None else psi / (1 - psi)
    return {"psi": psi, "lam": lam, "beta_range": beta_range, "source": source}
