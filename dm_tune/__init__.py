"""dm-tune: Derivative Manipulation (Wang et al., arXiv:1905.11233) and the tools to tune it.

The public names below are imported on first use (PEP 562), so that light entry points
(``dm-tune --help``, ``dm-tune recommend``, the reports) never pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dm_tune._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "DMLoss": "dm_tune._losses", "SchemeLoss": "dm_tune._losses", "WeightFnLoss": "dm_tune._losses",
    "beta_from_rho": "dm_tune._param", "lambda_from_mode": "dm_tune._param",
    "mode_from_lambda": "dm_tune._param", "rho_from_beta": "dm_tune._param",
    "ConfigError": "dm_tune._validate",
    "dm_logit_grad": "dm_tune._weighting", "dm_weight": "dm_tune._weighting",
    "manipulated_logit_grad": "dm_tune._weighting", "multiplier_logit_grad": "dm_tune._weighting",
    "TrainConfig": "dm_tune.config", "Data": "dm_tune.data", "prepare": "dm_tune.data",
    "DataError": "dm_tune.datasets", "METHODS": "dm_tune.methods",
    "TrainResult": "dm_tune.train", "train": "dm_tune.train",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from dm_tune._losses import DMLoss, SchemeLoss, WeightFnLoss
    from dm_tune._param import beta_from_rho, lambda_from_mode, mode_from_lambda, rho_from_beta
    from dm_tune._validate import ConfigError
    from dm_tune._weighting import (dm_logit_grad, dm_weight, manipulated_logit_grad,
                                    multiplier_logit_grad)
    from dm_tune.config import TrainConfig
    from dm_tune.data import Data, prepare
    from dm_tune.datasets import DataError
    from dm_tune.methods import METHODS
    from dm_tune.train import TrainResult, train
