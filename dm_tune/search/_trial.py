"""The trial contract: what a trial is (``TrialSpec``) and what it returns (``TrialOutcome``).

These two frozen dataclasses are the only things that cross between the searcher, the Ray
trainable, the tracking and the summary. A population of specs travels in a Tune trial config as
``{"specs": [spec.to_dict(), ...]}``; an outcome travels back as the trial's final ``tune.report``
(``outcome.to_report()``: flat scalars, which Ray's own loggers and ``ExperimentAnalysis`` show,
plus the per-epoch ``history`` as a list).

A trial's ``key`` names it across restarts: ``<setting>/search/<optuna trial number>`` for a
search trial (on the first search seed; ``.../<number>/seed<seed>`` on each further one, see
``replica``), ``<setting>/<arm>/seed<seed>`` for a confirmed arm or a baseline. The ledger, the
MLflow run and the Optuna trial of one trial are found by this key, never by Ray's trial id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from dm_tune._history import best_over_training

Stage = Literal["search", "confirm"]
STATUSES = ("finished", "diverged", "early-stopped", "errored")


@dataclass(frozen=True)
class TrialSpec:
    """One training run of a setting: which arm, on which seed, at which stage."""

    setting: str
    stage: Stage
    seed: int
    overrides: Mapping[str, Any]         # TrainConfig fields of this arm (method and its knobs)
    arm: str = ""                        # "" for a search trial; "dm-1", "dm-2", ... or a baseline
    baseline: str = ""                   # the baseline's name, "" for DM arms
    number: int | None = None            # the Optuna trial number of a search trial
    knobs: Mapping[str, Any] = field(default_factory=dict)  # sampled point (psi/rho or lam/beta, ...)
    replica: int = 0                     # a search trial's index among its configuration's search seeds

    @property
    def key(self) -> str:
        if self.stage == "search":
            return f"{self.setting}/search/{self.number}" + (f"/seed{self.seed}" if self.replica else "")
        return f"{self.setting}/{self.arm}/seed{self.seed}"

    def train_values(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """TrainConfig values of this trial: the setting's base, then the arm, then the seed."""
        return {**base, **self.overrides, "seed": self.seed}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["overrides"], d["knobs"] = dict(self.overrides), dict(self.knobs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialSpec":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended and what it measured (accuracies are fractions in [0, 1])."""

    status: str                          # one of STATUSES
    epochs_reached: int
    final_val_acc: float = math.nan      # the objective: final clean-validation accuracy
    final_test_acc: float = math.nan
    best_val_acc: float = math.nan
    best_test_acc: float = math.nan      # best over training: optimistic, labelled as such
    val_selected_test_acc: float = math.nan
    best_epoch: int = 0
    train_time_s: float = 0.0
    noise_rate_realised: float = math.nan
    imbalance_ratio_realised: float = math.nan  # largest over smallest class kept for training (clean labels)
    test_examples: float = math.nan      # the test set's size: one example's worth of accuracy (the report's floor)
    node_id: str = ""
    history: tuple[Mapping[str, float], ...] = ()   # one dict of metrics per epoch
    # Final metrics of tasks other than classification (retrieval: final_val_map, final_test_map,
    # final_test_rank1/5/10, final_val_rank1, best_test_map, val_selected_test_map).
    task_metrics: Mapping[str, float] = field(default_factory=dict)
    # A confirm trial on a search seed is the search trial of the same configuration: its key
    # here, and that trial's outcome (nothing was trained again; see Ledger.reuse).
    reused_from: str = ""
    # Cut short by a scheduler (its rung, or its arm's pruning), whatever its status: a seed that
    # diverged in the epoch a rung stopped it at is "diverged" and stopped (a resumed ASHA keeps
    # its arm pruned); one that diverged and ended by itself is not. None: not recorded (read from
    # a ledger of an earlier dm-tune).
    stopped: bool | None = False
    # What trained it, as the worker recorded it: git commit, package versions, platform, CPU, torch's
    # threads, the fused kernel (TrainResult.provenance). Empty when the trial did not end with its
    # result (cut short, errored) or the ledger is an earlier dm-tune's: the driver's then stands.
    provenance: Mapping[str, Any] = field(default_factory=dict)

    SCALARS = ("final_val_acc", "final_test_acc", "best_val_acc", "best_test_acc",
               "val_selected_test_acc", "best_epoch", "epochs_reached", "train_time_s",
               "noise_rate_realised", "imbalance_ratio_realised", "test_examples")

    @property
    def usable(self) -> bool:
        """A full-budget result that may enter comparisons."""
        return self.usable_for(OBJECTIVES["classification"].final)

    def usable_for(self, objective: str) -> bool:
        return self.status == "finished" and math.isfinite(self.value(objective))

    def value(self, name: str) -> float:
        """A final metric by name: a field (``final_val_acc``) or a task metric (``final_val_map``)."""
        return float(getattr(self, name)) if name in self.SCALARS else float(self.task_metrics.get(name, math.nan))

    def to_report(self) -> dict[str, Any]:
        """The trial's final ``tune.report``: ``final`` marks it, the history rides along."""
        out: dict[str, Any] = {k: getattr(self, k) for k in self.SCALARS}
        out.update(self.task_metrics)
        out.update(final=1.0, status=self.status, node_id=self.node_id,
                   history=[dict(h) for h in self.history], task_metrics=dict(self.task_metrics),
                   provenance=dict(self.provenance))
        return out

    @classmethod
    def from_report(cls, report: Mapping[str, Any] | None, errored: bool,
                    history: Sequence[Mapping[str, Any]] = ()) -> "TrialOutcome":
        """The outcome of a trial from its last Tune result. Without the final report the trial
        was cut short: by an error, or by a scheduler (early-stopped, from its last epoch), and
        ``history`` holds the epochs it reported."""
        report = report or {}
        if report.get("final"):  # it ended with its result (a member trained before its population failed)
            status = str(report.get("status", "finished"))
            kwargs = {k: report[k] for k in cls.SCALARS if k in report}
            return cls(status=status, node_id=str(report.get("node_id", "")),
                       history=tuple(report.get("history", ())),
                       task_metrics=dict(report.get("task_metrics") or {}),
                       provenance=dict(report.get("provenance") or {}), **kwargs)
        epoch = int(report.get("epoch", 0) or 0)
        # An epoch reported with its divergence, then cut off (a scheduler's rung stopped the poor
        # run before its final report): diverged, not early-stopped.
        cut = "diverged" if report.get("diverged") else "early-stopped"
        kept = tuple(dict(h) for h in history if int(h.get("epoch", 0) or 0) <= epoch)
        # What a finished run's result says from its history, said here from the epochs it reached.
        best = best_over_training(kept, retrieval=any("test_map" in h for h in kept))
        task_metrics = {f"final_{k}": float(report[k]) for k in TASK_EPOCH_METRICS if k in report}
        task_metrics.update({k: best.pop(k) for k in ("best_test_map", "val_selected_test_map") if k in best})
        return cls(status="errored" if errored else cut, epochs_reached=epoch, history=kept, stopped=not errored,
                   final_val_acc=float(report.get("val_acc", math.nan)),
                   final_test_acc=float(report.get("test_acc", math.nan)),
                   train_time_s=sum(float(h.get("epoch_time_s", 0.0)) for h in kept),
                   task_metrics=task_metrics, **best)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["history"] = [dict(h) for h in self.history]
        d["task_metrics"] = dict(self.task_metrics)
        d["provenance"] = dict(self.provenance)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialOutcome":
        kwargs = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kwargs.setdefault("stopped", None)  # (a ledger of an earlier dm-tune did not record it)
        kwargs["history"] = tuple(kwargs.get("history", ()))
        kwargs["task_metrics"] = dict(kwargs.get("task_metrics", {}))
        kwargs["provenance"] = dict(kwargs.get("provenance", {}))
        return cls(**kwargs)


@dataclass(frozen=True)
class Objective:
    """What a study of one task optimises and reports."""

    final: str   # the TrialOutcome value the searcher maximises and ranks DM arms by (validation)
    epoch: str   # the per-epoch metric a scheduler (ASHA) compares
    test: str    # the final test value the summary reports
    label: str   # its name in summaries


OBJECTIVES = {
    # final clean-validation accuracy, as the paper selects hyper-parameters
    "classification": Objective("final_val_acc", "val_acc", "final_test_acc", "accuracy"),
    # final mAP on the validation gallery (held-out training identities)
    "retrieval": Objective("final_val_map", "val_map", "final_test_map", "mAP"),
}
# Per-epoch task metrics that a trial cut short by a scheduler reports as its final_* values.
TASK_EPOCH_METRICS = ("val_map", "val_rank1", "test_map", "test_rank1", "test_rank5", "test_rank10")


# In the first per-epoch report of a trial resumed from a checkpoint, each member's epochs before it
# (a list of per-epoch dicts): the searcher's history of a trial then cut short holds them too.
RESTORED_KEY = "restored_history"

# --- a population: one Ray trial that trains several trials together ------------------------------


def population_report(outcomes: list[TrialOutcome]) -> dict[str, Any]:
    """The final ``tune.report`` of a population: each member's outcome in ``members``; a
    population of one also reports at the top level its outcome's scalars and its last epoch's
    metrics (the epoch's own report is this one), so that a Tune searcher or scheduler given a
    per-epoch metric (``val_acc``, with ``epoch`` as time) finds it in every result."""
    report: dict[str, Any] = {"final": 1.0, "population_size": len(outcomes),
                              "members": [o.to_report() for o in outcomes]}
    if len(outcomes) == 1:
        last = outcomes[0].history[-1] if outcomes[0].history else {}
        report.update({k: v for k, v in last.items() if k != RESTORED_KEY})
        report.update(outcomes[0].to_report())
    return report


def member_outcomes(report: Mapping[str, Any] | None, size: int, errored: bool,
                    histories: Sequence[Sequence[Mapping[str, Any]]] = ()) -> list[TrialOutcome]:
    """Each member's outcome from a population's last Tune result (its final report, or the
    last per-epoch report of a population that was cut short, with ``histories``: each member's
    per-epoch reports)."""
    members = list((report or {}).get("members") or [])
    members += [None] * (size - len(members))
    histories = list(histories) + [()] * (size - len(histories))
    return [TrialOutcome.from_report(m, errored, h) for m, h in zip(members[:size], histories)]
