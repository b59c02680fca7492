"""Orchestration of DM searches: studies, Ray Tune + Optuna runs, MLflow tracking."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dm_tune._lazy import lazy_exports

_EXPORTS = {
    "Setting": "dm_tune.search._study",
    "Study": "dm_tune.search._study",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
    from dm_tune.search._study import (Setting, Study)
