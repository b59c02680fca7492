"""dm-tune: Derivative Manipulation (Wang et al., arXiv:1905.11233) and the tools to tune it."""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DMLoss", "Data", "DataError", "METHODS", "SchemeLoss", "TrainConfig",
    "TrainResult", "WeightFnLoss", "beta_from_rho", "dm_logit_grad", "dm_weight",
    "lambda_from_mode", "manipulated_logit_grad", "mode_from_lambda", "multiplier_logit_grad",
    "prepare", "rho_from_beta", "train",
]
