"""The paper's baselines as fixed TrainConfig overrides, measured beside DM on every setting."""

from __future__ import annotations

from typing import Any

BASELINES: dict[str, dict[str, Any]] = {
    "cce": {"method": "cce"},
    "cce-dn": {"method": "cce-dn"},
    "gce": {"method": "gce", "gce_q": 0.7},       # the authors' q
    "mae": {"method": "mae"},
    "mse": {"method": "mse"},
    "sl": {"method": "sl"},                       # sl_mu, sl_nu from the study: see SL_OFFICIAL
    "dm-beta0": {"method": "dm", "lam": 0.0, "beta": 0.0},  # equal weights (not CCE)
    "imae": {"method": "dm", "lam": 1.0, "beta": 8.0},      # IMAE = DM with lambda 1
    # Class-balanced CCE (Cui et al. 2019: effective-number weights), for imbalanced settings.
    "cce-cb": {"method": "cce", "class_weighting": "effective-number"},
}

# The paper's baselines: measured on every setting unless a study lists its own.
DEFAULT_BASELINES: tuple[str, ...] = ("cce", "cce-dn", "gce", "mae", "mse", "sl", "dm-beta0", "imae")

# SL (mu * CCE + nu * RCE, A = log 1e-4) with the authors' (alpha, beta) per dataset, as
# TrainConfig's (sl_mu, sl_nu) (Wang et al. 2019, their train_models.py; MNIST: 0.01, 1.0).
# TrainConfig's defaults are the CIFAR-10 pair; a study on another dataset sets its pair in
# ``training`` (studies/cifar100-resnet44.yaml), which the baseline keeps.
SL_OFFICIAL: dict[str, dict[str, float]] = {
    "cifar10": {"sl_mu": 0.1, "sl_nu": 1.0},
    "cifar100": {"sl_mu": 6.0, "sl_nu": 0.1},
}
