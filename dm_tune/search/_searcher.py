"""Ray Tune's OptunaSearch, with two corrections for honest search histories."""

from __future__ import annotations

import optuna
from ray.tune.search.optuna import OptunaSearch

from dm_tune.search._summary import trial_status


class DMOptunaSearch(OptunaSearch):
    """Marks crashed trials FAIL (OptunaSearch tells Optuna COMPLETE with the last partial value
    when a crashed trial had reported), and stores on every Optuna trial how many epochs it
    reached and how it ended, so that truncated (early-stopped) trials can be told apart in
    optuna-dashboard and in the reports.

    Per-epoch values are not sent to Optuna: they only feed Optuna's pruners, which are never
    used under Tune (early stopping is the Tune scheduler's), and each one is an sqlite write
    in the driver, the main orchestration cost of a search with short trials."""

    def on_trial_result(self, trial_id, result):
        return None

    def on_trial_complete(self, trial_id, result=None, error=False):
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and result and trial_id not in self._completed_trials:
            epochs = result.get("epochs_reached", result.get("epoch", 0))
            ot_trial.set_user_attr("epochs_reached", int(epochs or 0))
            ot_trial.set_user_attr("status", trial_status(result, error))
        if error and ot_trial is not None and trial_id not in self._completed_trials:
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)
