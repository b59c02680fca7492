"""The paper's baselines as fixed TrainConfig overrides, measured beside DM on every setting."""

from __future__ import annotations

from typing import Any

BASELINES: dict[str, dict[str, Any]] = {
    "cce": {"method": "cce"},
    "cce-dn": {"method": "cce-dn"},
    "gce": {"method": "gce", "gce_q": 0.7},       # the authors' q
    "mae": {"method": "mae"},
    "mse": {"method": "mse"},
    "sl": {"method": "sl"},                       # mu 0.1, nu 1, A = log 1e-4
    "dm-beta0": {"method": "dm", "lam": 0.0, "beta": 0.0},  # equal weights (not CCE)
    "imae": {"method": "dm", "lam": 1.0, "beta": 8.0},      # IMAE = DM with lambda 1
}

DEFAULT_BASELINES: tuple[str, ...] = tuple(BASELINES)
