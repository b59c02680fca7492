"""Where trials run: Ray Tune function trainables wrapping ``dm_tune.train``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dm_tune._lazy import lazy_exports

_EXPORTS = {
    "TrialRuntime": "dm_tune.trainables._dm",
    "dm_trainable": "dm_tune.trainables._dm",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
    from dm_tune.trainables._dm import TrialRuntime, dm_trainable
