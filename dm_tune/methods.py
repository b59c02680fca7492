"""The training methods by name: DM and the paper's baselines, each one line in ``METHODS``.

A builder takes the method's hyper-parameters (any object with the config's attribute names)
and returns the loss module. "-dn" is the paper's mini-batch-normalised form of a loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from dm_tune._losses import (ClassWeighted, DMLoss, SchemeLoss, cce_scheme, gce_scheme, mae_scheme,
                             mse_scheme, sl_scheme)
from dm_tune.class_weighting import member_class_weights

MethodBuilder = Callable[[Any], nn.Module]

METHODS: dict[str, MethodBuilder] = {
    "dm": lambda c: DMLoss(lam=c.lam, beta=c.beta),
    "cce": lambda c: SchemeLoss(cce_scheme()),
    "cce-dn": lambda c: SchemeLoss(cce_scheme(), normalised=True),
    "gce": lambda c: SchemeLoss(gce_scheme(c.gce_q)),
    "gce-dn": lambda c: SchemeLoss(gce_scheme(c.gce_q), normalised=True),
    "mae": lambda c: SchemeLoss(mae_scheme()),
    "mae-dn": lambda c: SchemeLoss(mae_scheme(), normalised=True),
    "mse": lambda c: SchemeLoss(mse_scheme()),
    "mse-dn": lambda c: SchemeLoss(mse_scheme(), normalised=True),
    "sl": lambda c: SchemeLoss(sl_scheme(c.sl_mu, c.sl_nu, c.sl_log_clip)),
}

# Each method's own hyper-parameters (TrainConfig fields); every other method ignores them.
METHOD_KNOBS: dict[str, tuple[str, ...]] = {
    "dm": ("lam", "beta"),
    "gce": ("gce_q",), "gce-dn": ("gce_q",),
    "sl": ("sl_mu", "sl_nu", "sl_log_clip"),
}
ALL_KNOBS: tuple[str, ...] = tuple(dict.fromkeys(k for knobs in METHOD_KNOBS.values() for k in knobs))


def build_loss(config: Any, train_labels: Any = None, num_classes: int = 0) -> nn.Module:
    """``config.method``'s loss; with ``config.class_weighting`` (not "none") and the training
    labels (of ``num_classes`` classes), wrapped to weight each class (dm_tune.class_weighting)."""
    loss = METHODS[config.method](config)
    if train_labels is None:
        return loss
    weights = member_class_weights(config, train_labels, num_classes)
    return loss if weights is None else ClassWeighted(loss, weights)
