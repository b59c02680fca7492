"""Both stages of a setting in one Tune experiment: search, then confirm, in one trial stream.

``StagedSearcher`` hands out, in order: the Optuna searcher's DM suggestions (the *search*
stage, first seed), then the fixed baseline arms on every seed (they depend on nothing, so they
fill the slots the last search trials leave idle), then, once every search trial has ended, the
best ``top_k`` DM arms on every seed (the *confirm* stage). One experiment per setting means one
set of trial actors reused from the first trial to the last, instead of a start-up per stage.

A trial's stage is visible in its config: confirm trials carry an ``arm``, search trials do not.
``SearchOnlyASHA`` applies early stopping to search trials only: a baseline or a confirmed arm
always trains for its full budget.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

from dm_tune.search._summary import trial_status
from dm_tune.search_spaces import to_lam_beta


def is_confirm(config: dict[str, Any]) -> bool:
    return "arm" in config


def top_dm_arms(finished: list[tuple[dict[str, Any], dict[str, Any]]], k: int) -> list[dict[str, Any]]:
    """The ``k`` distinct DM arms with the best final validation accuracy among finished search
    trials, given as (config, final result) pairs, as fixed arms for the confirm stage."""
    ranked = sorted((p for p in finished if p[1].get("status") == "finished"),
                    key=lambda p: -float(p[1]["final_val_acc"]))
    arms: list[dict[str, Any]] = []
    seen: set[tuple[float, ...]] = set()
    for config, _ in ranked:
        knobs = to_lam_beta(config)
        overrides = {"method": "dm", "lam": knobs["lam"], "beta": knobs["beta"],
                     **{x: config[x] for x in ("lr", "weight_decay") if x in config}}
        key = tuple(round(float(v), 6) for k_, v in overrides.items() if k_ != "method")
        if key in seen:
            continue
        seen.add(key)
        arms.append({"name": f"dm-{len(arms) + 1}", "baseline": "", "overrides": overrides})
        if len(arms) == k:
            break
    return arms


class StagedSearcher(Searcher):
    def __init__(self, inner: Searcher, num_samples: int, baseline_arms: list[dict[str, Any]],
                 seeds: list[int], top_k: int, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.inner = inner
        self.num_samples, self.seeds, self.top_k = num_samples, list(seeds), top_k
        self._fixed = [{"arm": arm, "seed": s} for arm in baseline_arms for s in self.seeds]
        self._confirm: list[dict[str, Any]] | None = None  # built when the search has ended
        self._search_ids: set[str] = set()
        self._search_ended: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._configs: dict[str, dict[str, Any]] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self.inner.set_search_properties(metric, mode, config, **spec)
        return True

    def suggest(self, trial_id: str):
        if len(self._search_ids) < self.num_samples:
            config = self.inner.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            self._search_ids.add(trial_id)
            self._configs[trial_id] = config
            return config
        if self._fixed:
            return self._fixed.pop(0)
        if len(self._search_ended) < self.num_samples:
            return None  # the confirm arms depend on the search trials still running
        if self._confirm is None:
            arms = top_dm_arms(list(self._search_ended.values()), self.top_k)
            self._confirm = [{"arm": arm, "seed": s} for arm in arms for s in self.seeds]
        if self._confirm:
            return self._confirm.pop(0)
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        return None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._search_ids or trial_id in self._search_ended:
            return
        self.inner.on_trial_complete(trial_id, result=result, error=error)
        final = {**(result or {}), "status": trial_status(result or {}, error)}
        self._search_ended[trial_id] = (self._configs[trial_id], final)

    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k != "inner"}
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"state": state, "inner": self.inner.__dict__.copy()}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        self.__dict__.update(saved["state"])
        self.inner.__dict__.update(saved["inner"])


class SearchOnlyASHA(ASHAScheduler):
    """ASHA over the search trials; confirm trials (baselines, confirmed arms) run to the end."""

    def on_trial_add(self, tune_controller, trial) -> None:
        if not is_confirm(trial.config):
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if is_confirm(trial.config):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if not is_confirm(trial.config) and trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)
