"""Class weighting: a weight per class, multiplied into every example's logit gradient.

DM weights *examples* by how well the model fits their label (p); class weighting weights
*classes* by how often they occur. They answer different questions and compose by
multiplication: example i's gradient becomes ``w[y_i] * g_i`` whatever the method (DM, CCE, a
baseline), so DM's emphasis within a class is kept and rare classes get their share back.

Schemes (``n_c``: the number of training examples labelled c, i.e. the *noisy* labels, the
only ones a user has):

- ``none``: every weight 1;
- ``inverse``: w_c proportional to 1 / n_c;
- ``sqrt-inverse``: w_c proportional to 1 / sqrt(n_c);
- ``effective-number`` (Cui et al., "Class-Balanced Loss Based on Effective Number of
  Samples", CVPR 2019): w_c proportional to (1 - b) / (1 - b^n_c), with their beta ``b`` in
  [0, 1) (b = 0: no weighting; b -> 1: inverse frequency).

Normalisation: the weights are scaled so that the average weight over the training examples
is 1 (sum_c n_c w_c = N). On balanced data every scheme is then exactly ``none``, and the
expected gradient mass of a batch (hence what a learning rate means) is unchanged wherever an
example's mass does not depend on its class (under DM, whose shares follow p and so correlate
with the class, only roughly: the weighted mass is sum_i share_i w_{y_i}). Cui et al.
normalise to sum_c w_c = C instead, which on imbalanced data shrinks the average weight and so
the effective learning rate; multiplying all weights by a constant is the only difference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dm_tune._names import CLASS_WEIGHTING_NAMES

if TYPE_CHECKING:  # torch is imported where weights are computed: config validation stays light
    import torch

SCHEMES = CLASS_WEIGHTING_NAMES
DEFAULT_EFFECTIVE_BETA = 0.999


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Examples per class label, float64 ``[num_classes]``."""
    import torch

    return torch.bincount(labels.long().reshape(-1).cpu(), minlength=num_classes).to(torch.float64)


def class_weights(labels: torch.Tensor, num_classes: int, scheme: str,
                  beta: float = DEFAULT_EFFECTIVE_BETA) -> torch.Tensor:
    """The weight of each class under ``scheme`` for training labels ``labels``, float64 ``[num_classes]``,
    normalised to an average of 1 over the examples (see the module docstring). A class with no
    example gets the weight of a class with one (it never enters a gradient)."""
    import torch

    if scheme not in SCHEMES:
        raise ValueError(f"class weighting {scheme!r} is not known; expected one of {', '.join(SCHEMES)}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"the effective-number beta must be in [0, 1), got {beta!r}")
    counts = class_counts(labels, num_classes)
    n = counts.clamp_min(1.0)
    if scheme == "none":
        raw = torch.ones_like(n)
    elif scheme == "inverse":
        raw = 1.0 / n
    elif scheme == "sqrt-inverse":
        raw = n.rsqrt()
    else:
        # (1 - b) / (1 - b^n): 1 for b = 0, -> 1 / n as b -> 1.
        raw = (1.0 - beta) / -torch.expm1(n * torch.log(torch.tensor(beta, dtype=torch.float64)))
    total = float(counts.sum())
    if total == 0:
        return torch.ones_like(n)
    return raw * (total / float((counts * raw).sum()))


def member_class_weights(config, labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """``config``'s class weights for its training labels, or None when it uses none."""
    scheme = getattr(config, "class_weighting", "none")
    if scheme == "none":
        return None
    return class_weights(labels, num_classes, scheme, float(config.class_weighting_beta))
