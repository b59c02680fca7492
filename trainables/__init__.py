"""Where trials run: Ray Tune function trainables wrapping ``dm_tune.train``."""

from __future__ import annotations

from trainables._dm import dm_trainable, trial_values

__all__ = ["dm_trainable", "trial_values"]
