"""What to try next in one setting: a Ray Tune ``Searcher`` that drives Optuna's ask/tell itself.

Each Ray trial it hands out is a *population*: up to ``population_size`` trials (each its own
``TrialSpec``) that one trainable trains together (``dm_tune.population``). It hands out, in order:
1. **search** trials: DM arms asked from the setting's Optuna study (``study.ask()``, a batch
   per population), each trained on the first ``search_seeds`` seeds (one trial per seed),
   until ``num_samples`` arms have started; an arm's score is its mean over those seeds;
2. the **baselines** on every seed (fixed arms that depend on nothing, so they fill the slots
   that the last search trials leave idle);
3. once every search trial has ended, the **confirm** trials: the best ``top_k`` DM arms (by
   final clean-validation accuracy, finished trials only) on every seed. On its search seeds an
   arm's confirm trial is its finished search trial there (the same configuration): recorded with
   that trial's outcome (``reused_from``), not trained again.

Everything it knows is in the ledger (``_ledger``), so a searcher built over the ledger of an
interrupted search continues it: populations with trials that never ended are handed out again
with the same members and their newest checkpoint; ended trials never are. Optuna is told each search trial's
outcome once, when all its seeds have ended (``skip_if_finished``): COMPLETE with the mean final
validation accuracy over its seeds (a seed that diverged counts with the accuracy its model had
when it diverged, 0 if its weights became NaN, so an arm unstable on some seeds scores low),
PRUNED when a scheduler stopped it early on a seed (with its seeds' accuracy at that epoch as an
intermediate value), FAIL when it crashed or diverged without a usable accuracy. The trial's
user attributes say how it ended: ``status`` (the worst of its seeds': errored, early-stopped,
diverged, finished), and with several search seeds each seed's ``seed_statuses`` and
``seed_values``. Only public Optuna and Ray APIs are used.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ray.tune.search import Searcher

from dm_tune.errors import UserError, first_line
from dm_tune.search._ledger import Ledger
from dm_tune.search._trial import OBJECTIVES, RESTORED_KEY, TrialOutcome, TrialSpec, member_outcomes
from dm_tune.search_spaces import suggest, to_lam_beta

if TYPE_CHECKING:
    import optuna

OBJECTIVE = OBJECTIVES["classification"].final  # final clean-validation accuracy, as the paper selects hyper-parameters


def dm_overrides(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """TrainConfig fields of a DM arm from a sampled point (any space, plus extra knobs; a
    categorical knob such as class_weighting keeps its value)."""
    lam_beta = to_lam_beta(knobs)
    extra = {k: v if isinstance(v, str) else float(v) for k, v in knobs.items()
             if k not in ("psi", "rho", "lam", "beta")}
    return {"method": "dm", "lam": lam_beta["lam"], "beta": lam_beta["beta"], **extra}


def arm_scores(ended: Sequence[tuple[TrialSpec, TrialOutcome]],
               objective: str = OBJECTIVE) -> list[tuple[TrialSpec, float]]:
    """Each search arm (Optuna trial number) with the mean ``objective`` over its search seeds,
    for arms whose every ended seed finished with a finite value; as (first seed's spec, mean)."""
    by_number: dict[int, list[tuple[TrialSpec, TrialOutcome]]] = {}
    for spec, outcome in ended:
        by_number.setdefault(spec.number or 0, []).append((spec, outcome))
    scores = []
    for pairs in by_number.values():
        if all(o.usable_for(objective) for _, o in pairs):
            first = min(pairs, key=lambda p: p[0].replica)[0]
            scores.append((first, sum(o.value(objective) for _, o in pairs) / len(pairs)))
    return scores


def top_arms(ended: Sequence[tuple[TrialSpec, TrialOutcome]], k: int,
             objective: str = OBJECTIVE) -> list[tuple[str, dict[str, Any]]]:
    """The ``k`` distinct DM arms with the best mean ``objective`` over their search seeds (final
    validation accuracy, or mAP for retrieval) among finished search trials, as (name, overrides);
    ties keep the earlier trial."""
    ranked = sorted(arm_scores(ended, objective), key=lambda p: (-p[1], p[0].number or 0))
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
                 objective: str = OBJECTIVE, search_seeds: int = 1, slots: int = 1,
                 startup_arms: int = 0, startup_population_size: int | None = None,
                 resume_sampler: Callable[[int], Any] | None = None) -> None:
        """``sampler`` searches a new Optuna study; ``resume_sampler(n)`` one that already holds
        ``n`` trials (None: ``sampler`` for both)."""
        super().__init__(metric=objective, mode="max")
        self.objective = objective
        self.setting, self.ledger = setting, ledger
        self.space, self.num_samples, self.top_k = dict(space), num_samples, top_k
        self.seeds = list(seeds)
        self.study_name = study_name
        self.baselines = {name: dict(o) for name, o in baselines.items()}
        self._storage, self._study_name, self._sampler = optuna_storage, optuna_study, sampler
        self._resume_sampler = resume_sampler
        self._warm_points = [dict(p) for p in warm_points]
        self._study: Any = None
        self.population_size = population_size
        self.slots = max(1, slots)  # Ray trials that run at once
        # A scheduler that stops trials early acts on whole Ray trials: search trials then train alone.
        self.search_population_size = search_population_size or population_size
        # The sampler's start-up arms (drawn independently of any result) are asked together and
        # trained in populations of their own size; the arms after them are asked only once all of
        # them have finished (the sampler counts finished trials: asked earlier, they would be
        # drawn at random as well, and a batched search would stretch the start-up).
        self.startup_arms = min(startup_arms, num_samples)
        self.startup_population_size = startup_population_size or self.search_population_size
        self._live: dict[str, list[TrialSpec]] = {}  # Ray trial id -> its members, this process only
        self._last: dict[str, dict] = {}  # Ray trial id -> its latest result
        # Ray trial id -> each member's per-epoch reports by epoch (a retried trial reports an epoch again)
        self._reported: dict[str, list[dict[int, dict]]] = {}
        # Ray trial id -> the final reports of its members that ended (trained one at a time), each sent once
        self._ended_members: dict[str, dict[int, dict]] = {}
        self._untold: list[TrialSpec] = []  # ended search trials Optuna could not be told of yet
        self._again = ledger.unfinished_populations()  # started before an interruption, never ended
        # Each search arm trains on the first ``search_seeds`` seeds; replicas of an arm that were
        # asked but not handed out yet wait here (rebuilt from the ledger after an interruption).
        self.search_seeds = self.seeds[:max(1, search_seeds)]
        self._pending: list[TrialSpec] = self._unstarted_replicas()

    # --- Optuna ---------------------------------------------------------------------------

    def optuna_study(self):
        if self._study is None:
            import optuna

            study = optuna.create_study(study_name=self._study_name, storage=self._storage,
                                        sampler=self._sampler, direction="maximize", load_if_exists=True)
            held = study.get_trials(deepcopy=False)  # (study.trials copies every trial)
            if held and self._resume_sampler is not None:
                # A resumed search: the sampler it began with, seeded alike, would draw again the
                # points it drew before (every random draw: a duplicate arm, trained twice).
                study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                          sampler=self._resume_sampler(len(held)))
            asked = {s.number for s in self.ledger.started.values() if s.stage == "search"}
            missing = sorted(asked - {t.number for t in held})
            if missing:  # the store was replaced or emptied since: new trials would reuse the ledger's numbers
                raise UserError(f"Optuna study {self._study_name!r} lacks {len(missing)} search trial(s) that the "
                                f"ledger {self.ledger.path} started (number {missing[0]} first): its store was "
                                "replaced or emptied since; restore it, or run the study in another --workspace")
            self._study = study
            if not held:  # a new study starts at the paper's suggested settings, as many as it asks for
                # (more stayed WAITING in Optuna's store for ever)
                for point in self._warm_points[:self.num_samples]:  # (once, should two searches start it at once)
                    self._study.enqueue_trial(point, skip_if_exists=True)
            self._adopt_orphans()
            # Search trials the ledger has ended but Optuna was never told of (the driver died
            # between the two): told before anything is asked, or the sampler would count them as
            # running (still in its random start-up, say) while the searcher does not.
            self._untold += [spec for spec, _ in self.ledger.ended_specs("search")]
            self.tell_ended()
        return self._study

    def _adopt_orphans(self) -> None:
        """Trials this study asked Optuna for but never handed out (the driver died in between)
        would stay RUNNING for ever. One whose whole point was drawn is handed out now, as it was
        asked, so the interruption costs the sampler nothing. One that died before that (untagged:
        a moment after it was asked; or tagged with its point half drawn) never ran: it is marked
        FAIL, with the status "interrupted"."""
        import optuna

        handed_out = {s.number for s in self.ledger.started.values() if s.stage == "search"}
        handed_out |= {s.number for s in self._pending}
        adopted = []
        for t in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            owner = t.user_attrs.get("dmtune.study")
            if t.number in handed_out or owner not in (None, self.study_name):
                continue
            if owner is not None and set(self.space) <= set(t.params):
                adopted += self._replicas(self._spec(t.number, dict(t.params)))
                continue
            self._storage.set_trial_user_attr(self._trial_id(t.number), "status", "interrupted")
            self._study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        self._pending += adopted

    def _trial_id(self, number: int) -> int:
        storage = self._storage
        return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(self._study_name), number)

    def _replicas(self, first: TrialSpec) -> list[TrialSpec]:
        """The trials of ``first``'s arm: one per search seed."""
        return [dataclasses.replace(first, seed=seed, replica=i) for i, seed in enumerate(self.search_seeds)]

    def _unstarted_replicas(self) -> list[TrialSpec]:
        firsts = {s.number: s for s in self.ledger.started.values() if s.stage == "search" and s.replica == 0}
        return [r for first in firsts.values() for r in self._replicas(first) if r.key not in self.ledger.started]

    def _spec(self, number: int, knobs: dict[str, Any]) -> TrialSpec:
        return TrialSpec(self.setting, "search", self.search_seeds[0], dm_overrides(knobs), number=number, knobs=knobs)

    def _ask(self, attempts: int = 5) -> list[TrialSpec]:
        for _ in range(attempts):
            trial = self.optuna_study().ask()
            try:
                trial.set_user_attr("dmtune.study", self.study_name)  # first: whose trial it is, if the driver dies now
                suggest(self.space, trial)
                trial.set_user_attr("dmtune.setting", self.setting)
                trial.set_user_attr("dmtune.search_seeds", list(self.search_seeds))
            except RuntimeError:  # Optuna's "already finished" (UpdateFinishedTrialError in newer versions)
                if not self._storage.get_trial(self._trial_id(trial.number)).state.is_finished():
                    raise
                # Another study's driver, starting on this shared Optuna study in the instant before
                # the tag, took the untagged trial for its own dead driver's and ended it: ask again.
                continue
            return self._replicas(self._spec(trial.number, dict(trial.params)))
        raise RuntimeError(f"Optuna study {self._study_name!r}: {attempts} trials in a row were ended by "
                           "another process as soon as they were asked")

    def tell(self, spec: TrialSpec, outcome: TrialOutcome) -> None:
        """Tell Optuna how a search arm ended, once all its seeds have (``outcome`` is ``spec``'s;
        the other seeds' come from the ledger). A second tell is skipped."""
        outcomes = [outcome if r.key == spec.key else self.ledger.ended.get(r.key) for r in self._replicas(spec)]
        if any(o is None for o in outcomes):
            return  # other seeds of this arm are still to come
        study, storage = self.optuna_study(), self._storage
        trial_id = self._trial_id(spec.number)
        if storage.get_trial(trial_id).state.is_finished():
            return
        statuses = [o.status for o in outcomes]
        status = next((s for s in ("errored", "early-stopped", "diverged") if s in statuses), "finished")
        storage.set_trial_user_attr(trial_id, "status", status)
        epochs = min(int(o.epochs_reached) for o in outcomes)
        storage.set_trial_user_attr(trial_id, "epochs_reached", epochs)
        # A seed whose weights became NaN counts 0: a classifier's NaN logits predict nothing (accuracy
        # 0), a retrieval model's NaN embeddings rank nothing (its mAP is NaN: unscored, not a number).
        values = [0.0 if o.status == "diverged" and math.isnan(v) else v
                  for o, v in ((o, o.value(self.objective)) for o in outcomes)]
        if len(outcomes) > 1:  # each seed's own: the arm's one status names the worst of them
            storage.set_trial_user_attr(trial_id, "seed_values", values)
            storage.set_trial_user_attr(trial_id, "seed_statuses", statuses)
        value = sum(values) / len(values)
        try:
            self._tell(study, spec.number, trial_id, status, value, epochs, outcomes)
        except RuntimeError:
            # The grid sampler stops its study once the grid is told in full (Study.stop, which
            # raises outside study.optimize): the trial was told all the same.
            if not storage.get_trial(trial_id).state.is_finished():
                raise

    def _tell(self, study: Any, number: int, trial_id: int, status: str, value: float, epochs: int,
              outcomes: list[TrialOutcome]) -> None:
        import optuna

        storage, state = self._storage, optuna.trial.TrialState
        if status == "early-stopped" and math.isfinite(value):
            # Pruned at ``epochs``: every seed's value at that epoch (a seed that went further has it
            # in its history), not the mean of values from different epochs.
            at = [self._value_at(o, epochs) for o in outcomes]
            if all(math.isfinite(v) for v in at):
                value = sum(at) / len(at)
            storage.set_trial_intermediate_value(trial_id, epochs, float(value))
            study.tell(number, state=state.PRUNED, skip_if_finished=True)
        elif status in ("finished", "diverged") and math.isfinite(value):
            study.tell(number, float(value), skip_if_finished=True)
        else:
            study.tell(number, state=state.FAIL, skip_if_finished=True)

    def _value_at(self, outcome: TrialOutcome, epoch: int) -> float:
        """The objective of ``outcome`` at ``epoch``: its final value there, else its history's."""
        if int(outcome.epochs_reached) == epoch:
            return outcome.value(self.objective)
        key = next(o.epoch for o in OBJECTIVES.values() if o.final == self.objective)
        row = next((h for h in outcome.history if int(h.get("epoch", 0)) == epoch), None)
        return float(row.get(key, math.nan)) if row is not None else math.nan

    # --- the stages -----------------------------------------------------------------------

    def _finished_arms(self) -> int:
        """Search arms whose every seed has ended."""
        ended = Counter(spec.number for spec, _ in self.ledger.ended_specs("search"))
        return sum(count == len(self.search_seeds) for count in ended.values())

    def _fixed(self, arms: Sequence[tuple[str, Mapping[str, Any], str]]) -> list[TrialSpec]:
        """The next population of the (arm, seed) pairs of ``arms`` that have not started yet.
        A stage (less its reused trials) is split into at least as many populations as Ray trials
        run at once (and populations of at most ``population_size``), of equal sizes, so that one
        large last population does not train alone while the other slots idle."""
        arms = [(name, self._as_started(name, overrides), baseline) for name, overrides, baseline in arms]
        todo = [TrialSpec(self.setting, "confirm", seed, dict(overrides), arm=name, baseline=baseline)
                for name, overrides, baseline in arms for seed in self.seeds]
        todo = [s for s in todo if s.key not in self.ledger.ended or not self.ledger.ended[s.key].reused_from]
        count = max(-(-len(todo) // self.population_size), min(self.slots, len(todo)))
        size = -(-len(todo) // count) if todo else 1
        return [s for s in todo if s.key not in self.ledger.started][:size]

    def _as_started(self, arm: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """An arm's overrides as its first started seed had them: an arm is one configuration over
        its seeds, also where a resume's dm-tune would give it other ones (a baseline that trained
        with the study's class weighting, before baselines kept their own)."""
        first = next((spec for spec in self.ledger.started.values()
                      if spec.stage == "confirm" and spec.arm == arm), None)
        return dict(first.overrides if first is not None else overrides)

    def _confirmed(self) -> list[tuple[str, Mapping[str, Any], str]]:
        return [(name, o, "") for name, o in top_arms(self.ledger.ended_specs("search"), self.top_k, self.objective)]

    def _reuse_search_trials(self, arms: Sequence[tuple[str, Mapping[str, Any], str]]) -> None:
        """A confirmed arm on one of its search seeds is the configuration its search trial on
        that seed trained (same knobs, same seed, same budget): that trial's outcome is recorded
        as the confirm trial's instead of training it again, when it finished."""
        def ident(overrides: Mapping[str, Any], seed: int) -> str:
            return json.dumps([sorted(overrides.items()), seed], default=str)

        finished = {ident(spec.overrides, spec.seed): spec for spec, outcome in self.ledger.ended_specs("search")
                    if outcome.usable_for(self.objective)}
        for name, overrides, baseline in arms:
            for seed in self.search_seeds:
                spec = TrialSpec(self.setting, "confirm", seed, dict(overrides), arm=name, baseline=baseline)
                source = finished.get(ident(spec.overrides, seed))
                if source is not None and spec.key not in self.ledger.started:
                    self.ledger.reuse(spec, source)

    def _next(self) -> list[TrialSpec] | str | None:
        self.optuna_study()  # loaded (and orphans adopted) before anything is handed out
        if self._again:
            return self._again.pop(0)
        searched = [s for s in self.ledger.started.values() if s.stage == "search"]
        arms = {s.number for s in searched} | {s.number for s in self._pending}
        startup = len(arms) < self.startup_arms or (bool(self._pending) and len(arms) <= self.startup_arms)
        size = self.startup_population_size if startup else self.search_population_size
        limit = self.startup_arms if len(arms) < self.startup_arms else self.num_samples
        if len(arms) == self.startup_arms and self._finished_arms() < self.startup_arms:
            limit = len(arms)  # the sampler would still draw at random: wait for the start-up arms
        if len(arms) < limit and len(self._pending) < size:
            wanted = -(-(size - len(self._pending)) // len(self.search_seeds))
            for _ in range(min(wanted, limit - len(arms))):
                self._pending += self._ask()
        if self._pending:
            population = self._pending[:size]
            del self._pending[:size]
            return population
        population = self._fixed([(b, o, b) for b, o in self.baselines.items()])
        if population:
            return population
        if any(s.key not in self.ledger.ended for s in searched):
            return None  # the confirmed arms depend on the search trials still running
        confirmed = self._confirmed()
        self._reuse_search_trials(confirmed)
        return self._fixed(confirmed) or Searcher.FINISHED

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        population = self._next()
        if not isinstance(population, list):
            return population
        group = self.ledger.start(population)
        self._live[trial_id] = population
        return {"specs": [spec.to_dict() for spec in population], "group": group,
                "resume_from": self.ledger.checkpoint_path(group)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._live:  # what a trial that then crashes had reached (Tune passes no result)
            self._last[trial_id] = result
            reported = self._reported.setdefault(trial_id, [{} for _ in self._live[trial_id]])
            members = [] if result.get("final") else result.get("members") or []
            for k, (rows, member) in enumerate(zip(reported, members)):
                if member and member.get("final"):  # a member that has ended: its result, in the ledger at once
                    ended = self._ended_members.setdefault(trial_id, {})
                    if k not in ended:  # (a driver killed before its population ended trained it again)
                        ended[k] = dict(member)
                        self._end_member(self._live[trial_id][k], member, [rows[e] for e in sorted(rows)])
                elif member:
                    # A trial resumed from a checkpoint sends the epochs before it once, in its first report.
                    for row in member.get(RESTORED_KEY) or ():
                        rows.setdefault(int(row.get("epoch", 0) or 0), dict(row))
                    rows[int(member.get("epoch", 0) or 0)] = {n: v for n, v in member.items() if n != RESTORED_KEY}

    def _end_member(self, spec: TrialSpec, member: dict, history: list[dict]) -> None:
        """A member that ended while its population goes on (diverged, or trained one at a time):
        its end recorded now, and Optuna told, as at its population's end (which keeps it)."""
        if self.ledger.end(spec, TrialOutcome.from_report(member, False, history)) and spec.stage == "search":
            self._untold.append(spec)
            self.tell_ended()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and not result.get("final") and trial_id in self._live:
            # Stopped by the scheduler: Tune hands the epoch it stopped at to on_trial_complete only,
            # never to on_trial_result; without it that epoch was missing from the trial's history.
            self.on_trial_result(trial_id, result)
        population = self._live.pop(trial_id, None)
        last = self._last.pop(trial_id, None)
        reported = [[rows[e] for e in sorted(rows)] for rows in self._reported.pop(trial_id, [])]
        ended = self._ended_members.pop(trial_id, {})
        if population is None:
            return
        if not (result or {}).get("final") and ended:  # cut short: members that had ended keep their results
            base = result or last or {}
            members = list(base.get("members") or []) + [None] * len(population)
            last = {**base, "members": [ended.get(k, members[k]) for k in range(len(population))]}
            result = None
        # A crashed or stopped trial's members are recorded with the epochs they had reached and
        # reported, as MLflow has them. Every member's end first: Optuna is told after, and a tell
        # that fails (its store busy past the wait) is retried at the next completion and at the
        # end of the setting, never losing an end or stopping the search.
        outcomes = member_outcomes(result or last, len(population), error, reported)
        self._untold += [spec for spec, outcome in zip(population, outcomes)
                         if self.ledger.end(spec, outcome) and spec.stage == "search"]
        self.tell_ended()

    def tell_ended(self) -> None:
        """Tell Optuna the ended search trials it has not heard of yet (``tell`` skips the rest)."""
        untold, self._untold = self._untold, []
        for i, spec in enumerate(untold):
            try:
                self.tell(spec, self.ledger.ended[spec.key])
            except Exception as e:  # noqa: BLE001 - Optuna's storage errors: kept, told again later
                self._untold += untold[i:]
                print(f"dm-tune: Optuna could not be told how {spec.key} ended ({type(e).__name__}: "
                      f"{first_line(e)[:200]}); "
                      "it is told again later", file=sys.stderr, flush=True)
                return

    def done(self) -> bool:
        """Every trial of the setting has ended."""
        arms = {s.number for s in self.ledger.started.values() if s.stage == "search"}
        if len(arms) < self.num_samples or self._pending or self.ledger.unfinished():
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
        return {**self.__dict__, "_study": None, "_live": {}, "_last": {}, "_reported": {}, "_untold": [],
                "_ended_members": {}}
