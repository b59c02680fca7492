"""What to try next in one setting: a Ray Tune ``Searcher`` that drives Optuna's ask/tell itself.

Each Ray trial it hands out is a *population*: up to ``population_size`` trials (each its own
``TrialSpec``) that one trainable trains together (``dm_tune.population``). It hands out, in order:
1. **search** trials: DM arms asked from the setting's Optuna study (``study.ask()``, a batch
   per population), trained on the first seed, until ``num_samples`` have started;
2. the **baselines** on every seed (fixed arms that depend on nothing, so they fill the slots
   that the last search trials leave idle);
3. once every search trial has ended, the **confirm** trials: the best ``top_k`` DM arms (by
   final clean-validation accuracy, finished trials only) on every seed.

Everything it knows is in the ledger (``_ledger``), so a searcher built over the ledger of an
interrupted search continues it: populations with trials that never ended are handed out again
with the same members and their newest checkpoint; ended trials never are. Optuna is told each search trial's
outcome once (``skip_if_finished``): COMPLETE with its final validation accuracy, PRUNED when a
scheduler stopped it early (with the accuracy it reached as an intermediate value), FAIL when
it crashed or diverged without a usable accuracy. Only public Optuna and Ray APIs are used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ray.tune.search import Searcher

from dm_tune.search._ledger import Ledger
from dm_tune.search._trial import OBJECTIVES, TrialOutcome, TrialSpec, member_outcomes
from dm_tune.search_spaces import suggest, to_lam_beta

if TYPE_CHECKING:
    import optuna

OBJECTIVE = OBJECTIVES["classification"].final  # final clean-validation accuracy, as the paper selects hyper-parameters


def dm_overrides(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """TrainConfig fields of a DM arm from a sampled point (any space, plus extra knobs)."""
    lam_beta = to_lam_beta(knobs)
    extra = {k: float(v) for k, v in knobs.items() if k not in ("psi", "rho", "lam", "beta")}
    return {"method": "dm", "lam": lam_beta["lam"], "beta": lam_beta["beta"], **extra}


def top_arms(ended: Sequence[tuple[TrialSpec, TrialOutcome]], k: int,
             objective: str = OBJECTIVE) -> list[tuple[str, dict[str, Any]]]:
    """The ``k`` distinct DM arms with the best ``objective`` (final validation accuracy, or
    mAP for retrieval) among finished search trials, as (name, overrides); ties keep the earlier trial."""
    ranked = sorted((p for p in ended if p[1].usable_for(objective)),
                    key=lambda p: (-p[1].value(objective), p[0].number or 0))
    arms: list[tuple[str, dict[str, Any]]] = []
    seen: set[tuple[Any, ...]] = set()
    for spec, _ in ranked:
        overrides = dict(spec.overrides)
        ident = tuple(sorted((k_, round(v, 9) if isinstance(v, float) else v) for k_, v in overrides.items()))
        if ident in seen:
            continue
        seen.add(ident)
        arms.append((f"dm-{len(arms) + 1}", overrides))
        if len(arms) == k:
            break
    return arms


class StagedSearcher(Searcher):
    def __init__(self, *, setting: str, ledger: Ledger, optuna_storage: "optuna.storages.BaseStorage",
                 optuna_study: str,
                 space: Mapping[str, Any], sampler: Any, num_samples: int,
                 baselines: Mapping[str, Mapping[str, Any]], seeds: Sequence[int], top_k: int,
                 warm_points: Sequence[Mapping[str, float]] = (), study_name: str = "",
                 population_size: int = 1, search_population_size: int | None = None,
                 objective: str = OBJECTIVE) -> None:
        super().__init__(metric=objective, mode="max")
        self.objective = objective
        self.setting, self.ledger = setting, ledger
        self.space, self.num_samples, self.top_k = dict(space), num_samples, top_k
        self.seeds = list(seeds)
        self.study_name = study_name
        self.baselines = {name: dict(o) for name, o in baselines.items()}
        self._storage, self._study_name, self._sampler = optuna_storage, optuna_study, sampler
        self._warm_points = [dict(p) for p in warm_points]
        self._study: Any = None
        self.population_size = population_size
        # A scheduler that stops trials early acts on whole Ray trials: search trials then train alone.
        self.search_population_size = search_population_size or population_size
        self._live: dict[str, list[TrialSpec]] = {}  # Ray trial id -> its members, this process only
        self._again = ledger.unfinished_populations()  # started before an interruption, never ended

    # --- Optuna ---------------------------------------------------------------------------

    def optuna_study(self):
        if self._study is None:
            import optuna

            self._study = optuna.create_study(study_name=self._study_name, storage=self._storage,
                                              sampler=self._sampler, direction="maximize",
                                              load_if_exists=True)
            if not self._study.trials:  # a new study starts at the paper's suggested settings
                for point in self._warm_points:
                    self._study.enqueue_trial(point)
            self._fail_orphans()
        return self._study

    def _fail_orphans(self) -> None:
        """Trials this study asked Optuna for but never handed out (the driver died in between)
        would stay RUNNING for ever: mark them FAIL. A trial with no study tag yet died before it
        was tagged, a moment after it was asked."""
        import optuna

        handed_out = {s.number for s in self.ledger.started.values() if s.stage == "search"}
        for t in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.number not in handed_out and t.user_attrs.get("dmtune.study", self.study_name) == self.study_name:
                self._study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

    def _ask(self) -> TrialSpec:
        trial = self.optuna_study().ask()
        suggest(self.space, trial)
        trial.set_user_attr("dmtune.study", self.study_name)
        trial.set_user_attr("dmtune.setting", self.setting)
        knobs = dict(trial.params)
        return TrialSpec(self.setting, "search", self.seeds[0], dm_overrides(knobs),
                         number=trial.number, knobs=knobs)

    def tell(self, spec: TrialSpec, outcome: TrialOutcome) -> None:
        """Tell Optuna how a search trial ended (once: a second tell is skipped)."""
        import optuna

        study, storage = self.optuna_study(), self._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(self._study_name), spec.number)
        if storage.get_trial(trial_id).state.is_finished():
            return
        storage.set_trial_user_attr(trial_id, "status", outcome.status)
        storage.set_trial_user_attr(trial_id, "epochs_reached", int(outcome.epochs_reached))
        value = outcome.value(self.objective)
        state = optuna.trial.TrialState
        if outcome.status == "early-stopped" and math.isfinite(value):
            storage.set_trial_intermediate_value(trial_id, int(outcome.epochs_reached), float(value))
            study.tell(spec.number, state=state.PRUNED, skip_if_finished=True)
        elif outcome.status in ("finished", "diverged") and math.isfinite(value):
            study.tell(spec.number, float(value), skip_if_finished=True)
        else:
            study.tell(spec.number, state=state.FAIL, skip_if_finished=True)

    # --- the stages -----------------------------------------------------------------------

    def _fixed(self, arms: Sequence[tuple[str, Mapping[str, Any], str]]) -> list[TrialSpec]:
        """Up to a population of the (arm, seed) pairs of ``arms`` that have not started yet."""
        todo = [TrialSpec(self.setting, "confirm", seed, dict(overrides), arm=name, baseline=baseline)
                for name, overrides, baseline in arms for seed in self.seeds]
        return [s for s in todo if s.key not in self.ledger.started][:self.population_size]

    def _confirmed(self) -> list[tuple[str, Mapping[str, Any], str]]:
        return [(name, o, "") for name, o in top_arms(self.ledger.ended_specs("search"), self.top_k, self.objective)]

    def _next(self) -> list[TrialSpec] | str | None:
        self.optuna_study()  # loaded (and orphans failed) before anything is handed out
        if self._again:
            return self._again.pop(0)
        searched = [s for s in self.ledger.started.values() if s.stage == "search"]
        if len(searched) < self.num_samples:
            return [self._ask() for _ in range(min(self.search_population_size, self.num_samples - len(searched)))]
        population = self._fixed([(b, o, b) for b, o in self.baselines.items()])
        if population:
            return population
        if any(s.key not in self.ledger.ended for s in searched):
            return None  # the confirmed arms depend on the search trials still running
        return self._fixed(self._confirmed()) or Searcher.FINISHED

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        population = self._next()
        if not isinstance(population, list):
            return population
        group = self.ledger.start(population)
        self._live[trial_id] = population
        return {"specs": [spec.to_dict() for spec in population], "group": group,
                "resume_from": self.ledger.checkpoints.get(group)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        population = self._live.pop(trial_id, None)
        if population is None:
            return
        for spec, outcome in zip(population, member_outcomes(result, len(population), error)):
            if self.ledger.end(spec, outcome) and spec.stage == "search":
                self.tell(spec, outcome)

    def done(self) -> bool:
        """Every trial of the setting has ended."""
        searched = [s for s in self.ledger.started.values() if s.stage == "search"]
        if len(searched) < self.num_samples or self.ledger.unfinished():
            return False
        fixed = [(b, o, b) for b, o in self.baselines.items()] + self._confirmed()
        return not self._fixed(fixed)

    # The ledger is the searcher's state: Tune's periodic searcher checkpoint holds nothing else.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            f.write(f'{{"ledger": "{self.ledger.path}"}}\n')

    def restore(self, checkpoint_path: str) -> None:
        return None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its search algorithm into tuner.pkl
        return {**self.__dict__, "_study": None, "_live": {}}
