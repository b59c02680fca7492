"""When to stop a trial early: a scheduler for the search stage only.

A scheduler acts on whole Ray trials, so with one the search trials train one per Ray trial
(a population of one): ASHA then acts per DM configuration, as without populations.

``SearchOnly`` wraps a Tune scheduler (ASHA) and forwards it the events of search trials only,
through the public ``TrialScheduler`` hooks: a baseline or a confirmed arm always trains for its
full budget, so the comparisons never mix truncated and full results.

An arm searched on several seeds trains as one Ray trial per seed; once a rung stops it on one
seed the arm is pruned (its Optuna trial ends PRUNED, so it is never confirmed), and its other
seeds are stopped too when they reach that epoch, rather than trained for nothing. Each search
seed has rungs of its own (one ASHA per replica: the arms' first seeds against each other, their
second seeds against each other): in one set of rungs an arm's seed was compared with its own
other seed, and the first arm to reach a rung on two seeds was stopped for the better of them.

A resumed search rebuilds the rungs first (``replay``): the search trials that ended before the
interruption are told to the scheduler again, epoch by epoch, from their histories in the ledger,
and the arms a rung stopped stay pruned. Without it the first trials to reach each rung after a
resume were compared with nobody, so arms an uninterrupted search would have stopped trained
their whole budget and could be confirmed. A trial that was running when the search was
interrupted resumes from its checkpoint under a new Ray trial; its first report carries its
epochs before the checkpoint (``RESTORED_KEY``), told to the rungs before its new epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from dm_tune.search._trial import RESTORED_KEY


def _is_search(trial: Any) -> bool:
    return trial.config["specs"][0]["stage"] == "search"


def _arm(trial: Any) -> int:
    """The search arm (Optuna trial number) a search trial trains, on one of its seeds."""
    return int(trial.config["specs"][0]["number"])


def _replica(trial: Any) -> int:
    """Which of its arm's search seeds a search trial trains (0: the first)."""
    return int(trial.config["specs"][0].get("replica", 0) or 0)


class SearchOnly(FIFOScheduler):
    def __init__(self, inner: TrialScheduler, max_t: int | None = None,
                 make: Callable[[], TrialScheduler] | None = None) -> None:
        super().__init__()
        self._make = make                   # another seed's rungs (None: every seed shares ``inner``'s)
        self._inners: dict[int, TrialScheduler] = {0: inner}  # search seed (replica) -> its rungs
        self._properties: tuple[Any, ...] | None = None
        self.max_t = max_t                  # the full budget: a STOP there is the end, not a prune
        self._pruned: dict[int, int] = {}   # arm -> the epoch a rung stopped it at, on one seed

    @property
    def inner(self) -> TrialScheduler:
        """The first search seed's rungs."""
        return self._inners[0]

    @property
    def metric(self):
        return self.inner.metric

    def rungs(self, trial: Any) -> TrialScheduler:
        """The scheduler of ``trial``'s search seed."""
        replica = _replica(trial) if self._make is not None else 0
        if replica not in self._inners:
            inner = self._inners[replica] = self._make()
            if self._properties is not None:
                metric, mode, spec = self._properties
                inner.set_search_properties(metric, mode, **spec)
        return self._inners[replica]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._properties = (metric, mode, spec)
        return all([inner.set_search_properties(metric, mode, **spec) for inner in self._inners.values()])

    def on_trial_add(self, tune_controller, trial) -> None:
        if _is_search(trial):
            self.rungs(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        if _is_search(trial):
            self.rungs(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not _is_search(trial):
            return TrialScheduler.CONTINUE
        arm, epoch = _arm(trial), int(result.get("epoch", 0) or 0)
        if arm in self._pruned and epoch >= self._pruned[arm]:
            return TrialScheduler.STOP  # another seed of this arm was pruned at this epoch
        inner = self.rungs(trial)
        member = (result.get("members") or [None])[0] or {}
        for row in member.get(RESTORED_KEY) or ():  # resumed from a checkpoint: the rungs it passed before
            if "epoch" in row and inner.metric in row:
                inner.on_trial_result(tune_controller, trial, {"epoch": int(row["epoch"]),
                                                               inner.metric: row[inner.metric]})
        decision = inner.on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and (self.max_t is None or epoch < self.max_t):
            self._pruned.setdefault(arm, epoch)
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if _is_search(trial):
            # A population of one's final report holds its every epoch: those the rungs did not hear
            # of (resumed from a checkpoint in its last epoch, its restored ones never rode in a
            # report) are told now; a rung already holding the trial's value ignores them.
            inner = self.rungs(trial)
            metric = inner.metric
            for row in (result or {}).get("history") or ():
                if "epoch" in row and metric in row and (self.max_t is None or int(row["epoch"]) < self.max_t):
                    inner.on_trial_result(tune_controller, trial, {"epoch": int(row["epoch"]), metric: row[metric]})
            inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if _is_search(trial):
            self.rungs(trial).on_trial_remove(tune_controller, trial)

    def replay(self, ended: Iterable[tuple[Any, Any]]) -> int:
        """Tell the scheduler what the ended search trials of this setting reported, in the order
        they ended: ``(TrialSpec, TrialOutcome)`` pairs from the ledger. Each is told through the
        scheduler's public hooks as a trial of its own (added, its per-epoch results, removed), as
        Tune told it the first time; the decisions it makes now are moot (the trials ended). An arm
        the scheduler stopped on any seed before the budget (``TrialOutcome.stopped``, or
        early-stopped) is pruned from that epoch on.
        Returns the number of trials replayed."""
        metric, told = self.inner.metric, 0
        for spec, outcome in ended:
            if spec.stage != "search":
                continue
            arm = int(spec.number)
            results = [{"epoch": int(h["epoch"]), metric: h[metric]} for h in outcome.history
                       if "epoch" in h and metric in h]
            decision = TrialScheduler.CONTINUE
            if results:
                # Every row, the one a stop came at included: live, Tune tells the scheduler that
                # result again as the trial completes, and the rung records it then.
                stand_in = SimpleNamespace(trial_id=f"ledger:{spec.key}", config={"specs": [
                    {"stage": "search", "number": spec.number, "replica": spec.replica}]})
                inner = self.rungs(stand_in)
                inner.on_trial_add(None, stand_in)
                for result in results:
                    decision = inner.on_trial_result(None, stand_in, result)
                inner.on_trial_remove(None, stand_in)
                told += 1
            # Pruned: stopped by the scheduler before the budget, as the ledger records it; a ledger of
            # an earlier dm-tune lacks ``stopped`` (None): its early-stopped trials were, and a seed
            # that diverged is judged by the rebuilt rungs.
            stopped = outcome.stopped or outcome.status == "early-stopped" or (
                outcome.stopped is None and outcome.status == "diverged" and decision == TrialScheduler.STOP)
            if stopped and (self.max_t is None or outcome.epochs_reached < self.max_t):
                self._pruned[arm] = min(self._pruned.get(arm, outcome.epochs_reached), outcome.epochs_reached)
        return told

    def debug_string(self) -> str:
        return "search trials: " + "; ".join(f"seed {r + 1}: {inner.debug_string()}"
                                             for r, inner in sorted(self._inners.items()))


def asha(metric: str, max_t: int, grace_period: int, reduction_factor: float) -> SearchOnly:
    """ASHA over the search trials, on the per-epoch ``metric`` with the epoch as time; one set of
    rungs per search seed."""
    def make() -> ASHAScheduler:
        return ASHAScheduler(time_attr="epoch", metric=metric, mode="max", max_t=max_t,
                             grace_period=min(grace_period, max_t), reduction_factor=reduction_factor)

    return SearchOnly(make(), max_t=max_t, make=make)
