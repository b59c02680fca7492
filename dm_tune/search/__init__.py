"""Orchestration of DM searches: studies, Ray Tune + Optuna runs, MLflow tracking."""

from __future__ import annotations

from dm_tune.search._study import Setting, Study

__all__ = ["Setting", "Study"]
