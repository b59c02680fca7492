"""Running a study: per setting, one Tune experiment that searches and confirms; then a summary.

Reads top to bottom:
1. ``run_study``: the study's MLflow experiment, then each setting in turn.
2. ``run_setting``: the setting's ledger (what has started and ended, ``_ledger``), its searcher
   (Optuna ask/tell over DM's knobs on the first seed, then the baselines and the best
   ``top_k`` DM arms on every seed, ``_searcher``), its MLflow tracker (``_tracking``) and,
   unless the ledger says the setting is done, one Tune experiment that runs what is left. Each
   Ray trial trains a population of trials together (``population_size``; ``dm_tune.population``).
   An interrupted search resumes by running this again: a new experiment continues from the
   ledger (trials that never ended are re-run from their newest checkpoint; ended ones never).
3. ``summarise``: per setting, the confirmed DM arms and the baselines over seeds.

The pieces meet only through the trial contract (``_trial``): a ``TrialSpec`` in each trial's
config, a ``TrialOutcome`` in its final report. Ray, Optuna and MLflow are used through their
public APIs only; Ray's own tools read each experiment (``tune.ExperimentAnalysis(path)``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

from dm_tune.config import TrainConfig
from dm_tune.errors import UserError, absolute_paths, first_line
from dm_tune.search._ledger import Ledger
from dm_tune.search._study import Setting, Study
from dm_tune.search._summary import ArmResult, SettingSummary
from dm_tune.search._trial import OBJECTIVES, TrialSpec

# With automatic checkpointing (checkpoint_every: 0), at most one checkpoint per this many seconds.
AUTO_CHECKPOINT_MIN_S = 30.0


class Interrupted(Exception):
    """The search stopped before all its trials ended (Ctrl-C, a killed trial runner)."""


@dataclass(frozen=True)
class RunOptions:
    workspace: Path
    address: str | None = None
    storage_path: str | None = None
    tracking_uri: str | None = None
    echo: bool = True

    @property
    def tracking(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.workspace / 'mlflow.db'}"

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{self.workspace / 'optuna.db'}"

    @property
    def artifact_root(self) -> Path | None:
        """Where a local (sqlite) store keeps artifacts; a server decides for itself."""
        return self.workspace / "artifacts" if self.tracking.startswith("sqlite:") else None

    @property
    def storage(self) -> str:
        return self.storage_path or str(self.workspace / "ray")

    def ledger_dir(self, study: str) -> Path:
        return self.workspace / "ledger" / study

    def ledger(self, study: str, setting: str) -> Path:
        return self.ledger_dir(study) / f"{setting}.jsonl"

    def warm_start_copy(self, study: str) -> Path:
        """The guidelines file a study warm-starts from, as it was when the study began."""
        return self.workspace / "warm_starts" / f"{study}.json"

    def moved_artifacts(self, study: str) -> Path | None:
        """Where MLflow keeps the artifacts of ``study`` when that is not in this workspace (the
        experiment keeps the location it was created with: a workspace moved since leaves it behind)."""
        from dm_tune.search._stores import stored_artifact_location

        if self.artifact_root is None:
            return None
        stored = stored_artifact_location(self.tracking, study, self.workspace)
        return stored if stored is not None and not stored.is_relative_to(self.artifact_root) else None

    def written_folders(self, study: str) -> list[tuple[Path, str]]:
        """The folders a search of ``study`` writes in (each made when first needed), outer first,
        each with the option that put it there."""
        from dm_tune.search._stores import LOCKS_DIR, stored_artifact_location

        ws = self.workspace
        folders = [(f, "--workspace") for f in (ws / LOCKS_DIR, ws / "ledger", self.ledger_dir(study),
                                                ws / "studies", ws / "summaries", self.warm_start_copy(study).parent)]
        if "://" not in self.storage:  # Ray's results, local (remote storage is Ray's to check)
            flag = "--storage-path" if self.storage_path else "--workspace"
            folders += [(Path(self.storage), flag), (Path(self.storage) / study, flag)]
        if self.artifact_root is not None:  # MLflow's artifacts (a server keeps its own)
            # An experiment keeps the location it was created with (the workspace where it was then)
            stored = stored_artifact_location(self.tracking, study, self.workspace)
            folders += [(self.artifact_root, "--workspace"),
                        (stored, "the artifact location MLflow keeps for the study") if stored is not None
                        else (self.artifact_root / study, "--workspace")]
        return folders


# --- what every trial of a setting shares ------------------------------------------------------


@dataclass(frozen=True)
class SettingContext:
    study: Study
    setting: Setting
    opts: RunOptions
    exp_id: str
    base: dict[str, Any]          # TrainConfig values shared by the setting's trials
    source: Any                   # the loaded dataset (defaults, classes); shipped to in-memory trials
    in_memory: bool
    guidelines: dict[str, Any] | None = None  # search.warm_start's file, read once for the whole study

    @functools.cached_property
    def setting_config(self) -> TrainConfig:
        """The setting's resolved training config (first seed, no arm): its model and budget."""
        return self.resolved(TrialSpec(self.setting.key, "confirm", self.study.seeds[0], {}))

    def resolved(self, spec: TrialSpec) -> TrainConfig:
        s = self.source
        return TrainConfig.from_dict(spec.train_values(self.base)).resolve(s.defaults, s.default_model, s.input_kind)

    def params(self, spec: TrialSpec) -> dict[str, Any]:
        """MLflow params of a trial: its resolved training config (the method's own knobs only),
        DM's (psi, rho) beside (lam, beta), and the number of classes."""
        from dm_tune.methods import ALL_KNOBS, METHOD_KNOBS
        from dm_tune.search_spaces import to_lam_beta

        config = self.resolved(spec).to_dict()
        own = METHOD_KNOBS.get(config["method"], ())
        params = {k: v for k, v in config.items()
                  if v is not None and (k not in ALL_KNOBS or k in own) and not isinstance(v, dict)}
        params["pretrained"] = str(bool(config.get("pretrained"))).lower()
        if config.get("pretrained"):
            params["pretrained_file"] = config["pretrained"]
        if config["method"] == "dm":
            params.update(to_lam_beta(config))
        params["num_classes"] = self.source.num_classes
        return params

    def space_and_warm_points(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The setting's DM space and the points its search starts from: the paper's suggestions,
        none, or, warm-starting from a guidelines file, its recommended region and point."""
        study = self.study
        space = search_space(study)
        if self.recommendation is None:
            return space, _warm_points(space, self.setting) if study.search.warm_start else []
        return guided_space(space, self.recommendation)

    @functools.cached_property
    def recommendation(self) -> Any:
        """What the guidelines file of ``search.warm_start`` recommends for the setting; None
        without one."""
        study = self.study
        if not isinstance(study.search.warm_start, str):
            return None
        from dm_tune.reports._recommend import recommend

        if self.guidelines is None:
            raise ValueError("a study warm-started from a guidelines file needs the file loaded (run_study does)")
        s = self.setting
        rate = s.noise_rate
        if s.noise == "file":  # its labels set the rate: the one the first seed's data has
            from dm_tune.data import prepare

            rate = float(prepare(self.setting_config, self.source).noise_rate)
        return recommend(self.guidelines,
                         num_classes=int(self.source.num_classes), noise_type=s.noise, noise_rate=rate,
                         imbalance=s.imbalance, imbalance_ratio=s.imbalance_ratio, task=study.task, dataset=s.dataset)

    def warm_start_note(self) -> str | None:
        """A warm start whose region was measured with another class weighting than the DM arms
        train with (none is searched): said, since the region may not carry over."""
        rec = self.recommendation
        if rec is None or "class_weighting" in search_space(self.study):
            return None
        arms = self.setting_config.class_weighting
        if rec.class_weighting == arms:
            return None
        return (f"setting {self.setting.key}: the guidelines recommend class weighting {rec.class_weighting} with "
                f"the region searched; the DM arms train with {arms} (search.class_weighting: [{arms}, "
                f"{rec.class_weighting}] searches both, training.class_weighting sets the arms')")

    def population_size(self) -> int:
        """DM configurations per Ray trial; "auto": chosen from the measurements for the model and device."""
        from dm_tune.population import suggested_population_size

        size = self.study.population_size
        if size == "auto":
            model = self.setting_config.model
            size = suggested_population_size(str(model), "cuda" if self.study.resources.gpus_per_trial > 0 else "cpu")
        return int(size)

    def runtime(self):
        from dm_tune.trainables import TrialRuntime

        budget = self.setting_config.epochs
        every = self.study.checkpoint_every or max(1, budget // 4)
        return TrialRuntime(
            checkpoint_every=every,
            checkpoint_min_s=0.0 if self.study.checkpoint_every else AUTO_CHECKPOINT_MIN_S,
            report_every=1 if self.study.scheduler.kind != "none" else every,  # ASHA decides every epoch
            cpus=max(1, int(self.study.resources.cpus_per_trial)))

    def trainable(self):
        from ray import tune

        from dm_tune.trainables import dm_trainable

        res = {"cpu": self.study.resources.cpus_per_trial, "gpu": self.study.resources.gpus_per_trial}
        bound = tune.with_parameters(dm_trainable, base=self.base, runtime=self.runtime(),
                                     source=self.source if self.in_memory else None)
        return tune.with_resources(bound, res)


PAPER_SUGGESTED = ((0.5, 8.0), (1.0, 16.0), (2.0, 24.0))  # (lam, beta) the paper suggests in general

# (lam, beta) the paper reports as its best on a dataset at a noise rate, where it names one
# (DM_METHOD.md sections 4-5): searched first, so that a study of the paper's setting measures the
# paper's own choice. "clean": any noise type at rate 0 (the setting is named after one of them);
# Clothing1M's labels are its real noise (noise 'none' to dm-tune).
PAPER_BEST: dict[tuple[str, str, float], tuple[float, float]] = {
    ("clothing1m", "clean", 0.0): (1.0, 2.0),
    ("cifar100", "clean", 0.0): (0.0, 2.0), ("cifar100", "symmetric", 0.2): (0.5, 6.0),
    ("cifar10", "symmetric", 0.4): (0.5, 12.0), ("cifar10", "symmetric", 0.6): (2.0, 12.0),
}


def _warm_points(space: dict[str, Any], setting: Setting | None = None) -> list[dict[str, float]]:
    """The paper's suggested DM settings in this space's coordinates, clipped to its bounds,
    its own best for ``setting`` first where it names one (without class weighting where that is
    searched; the study's extra knobs, lr say, left to the sampler: the paper's points do not set
    them)."""
    from dm_tune.search_spaces import EXTRA_KNOBS, to_lam_beta

    best = PAPER_BEST.get((setting.dataset, setting.noise if setting.noise_rate else "clean",
                           setting.noise_rate)) if setting else None
    points = []
    for lam, beta in ((best,) if best and best not in PAPER_SUGGESTED else ()) + PAPER_SUGGESTED:
        p = to_lam_beta({"lam": lam, "beta": beta})
        point = {}
        for name, spec in space.items():
            if name == "class_weighting":  # the paper weights no classes
                point[name] = "none" if "none" in spec["choices"] else spec["choices"][0]
                continue
            if name in EXTRA_KNOBS:
                continue
            if spec["type"] != "float" or name not in p:
                return []
            point[name] = min(max(p[name], spec["low"]), spec["high"])
        points.append(point)
    return points


def search_space(study: Study) -> dict[str, Any]:
    """The study's DM space: its named space, extra knobs and the class weighting dimension."""
    from dm_tune.search_spaces import get_space

    space = get_space(study.search.space, study.search.extra_knobs)
    if study.search.class_weighting != ("none",):
        space["class_weighting"] = {"type": "categorical", "choices": list(study.search.class_weighting)}
    return space


def guided_space(space: dict[str, Any], rec: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``space`` narrowed to a recommendation's plausible (psi, rho) region (within the space's
    bounds, never narrower than a tenth of them), and its point as the first trial."""
    region = (rec.region or {}).get("plausible") or rec.region or {}
    out = {k: dict(v) for k, v in space.items()}
    point: dict[str, Any] = {}
    for knob in ("psi", "rho"):
        spec = out[knob]
        lo, hi = region.get(knob, (spec["low"], spec["high"]))
        lo, hi = max(float(lo), spec["low"]), min(float(hi), spec["high"])
        value = min(max(float(getattr(rec, knob)), spec["low"]), spec["high"])
        width = (spec["high"] / spec["low"]) ** 0.1 if spec.get("log") else (spec["high"] - spec["low"]) * 0.1
        if (hi / lo if spec.get("log") and lo > 0 else hi - lo) < width or lo > value or hi < value:
            lo, hi = min(lo, value), max(hi, value)
            lo, hi = ((max(spec["low"], lo / width ** 0.5), min(spec["high"], hi * width ** 0.5)) if spec.get("log")
                      else (max(spec["low"], lo - width / 2), min(spec["high"], hi + width / 2)))
        spec.update(low=lo, high=hi)
        point[knob] = value
    if "class_weighting" in out:
        choices = out["class_weighting"]["choices"]
        point["class_weighting"] = rec.class_weighting if rec.class_weighting in choices else choices[0]
    return out, [point]


def _optuna_study_name(study: Study, setting: Setting, space: dict[str, Any] | None = None) -> str:
    """One Optuna study per setting and objective: shared by later studies on the same setting
    with the same training budget and space, so they warm-start from it."""
    parts: dict[str, Any] = {"training": study.training, "seed": study.seeds[0],
                             "space": study.search.space, "extra": list(study.search.extra_knobs)}
    if study.search_seed_count > 1:  # the objective is a mean over these seeds
        parts["search_seeds"] = list(study.seeds[:study.search_seed_count])
    if study.search.class_weighting != ("none",):
        parts["class_weighting"] = list(study.search.class_weighting)
    if space is not None and space != search_space(study):  # narrowed by guidelines
        parts["bounds"] = space
    fingerprint = json.dumps(parts, sort_keys=True)
    return f"{setting.key}/{study.search.space}/{hashlib.sha1(fingerprint.encode()).hexdigest()[:8]}"


def _own_grid(storage: Any, shared: str, study_name: str) -> str:
    """A grid search's Optuna study is its own (``shared``/``study_name``): Optuna's GridSampler
    takes the points another study ran in a shared one as done, and two grid searches of one
    setting split the grid between them, then trained points again. A grid search that began in
    the shared study (its trials there carry its name) goes on in it."""
    import optuna

    try:
        trials = optuna.load_study(study_name=shared, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # (no such study yet)
        trials = []
    if any(t.user_attrs.get("dmtune.study") == study_name for t in trials):
        return shared
    return f"{shared}/{study_name}"


def _baselines(study: Study, setting: Setting) -> dict[str, dict[str, Any]]:
    """The study's baselines as TrainConfig overrides; SL takes the authors' pair for the dataset
    (``SL_OFFICIAL``) unless the study's training fields set its knobs, GCE the paper's q unless
    they set ``gce_q``. Each trains with its own class weighting (cce-cb effective-number, the
    others none), whatever training.class_weighting gives the DM arms: a report's CCE is plain CCE
    (a study's inverse weighting made it weighted CCE, reported as "cce")."""
    from dm_tune.search_spaces import BASELINES, SL_OFFICIAL

    out = {b: {"class_weighting": "none", **BASELINES[b]} for b in study.baselines}
    if "sl" in out and not {"sl_mu", "sl_nu"} & set(study.training):
        out["sl"].update(SL_OFFICIAL.get(setting.dataset, {}))
    if "gce" in out and "gce_q" in study.training:  # (the baseline's q 0.7 overrode it, silently)
        del out["gce"]["gce_q"]
    return out


def _search_population_size(study: Study, size: int) -> int:
    """Search trials per population after the sampler's start-up arms: whole arms (each on the
    study's search seeds), at most a quarter of the study's arms per round of concurrent
    populations, so that the sampler learns from several rounds of results (the default study:
    three rounds and a bit after its start-up round)."""
    return _arms_per_population(study, size, max(1, study.search.num_samples // (4 * study.resources.max_concurrent)))


def _startup_population_size(study: Study, size: int, startup: int) -> int:
    """Start-up trials per population: the sampler's ``startup`` arms split over the Ray trials
    that run at once."""
    return _arms_per_population(study, size, -(-startup // study.resources.max_concurrent))


def _arms_per_population(study: Study, size: int, arms: int) -> int:
    """Trials in a population of ``arms`` search arms, each on every search seed, at most ``size``
    (whole arms: a size that is no multiple of the search seeds is rounded down to one, unless it
    is below one arm's seeds); one with a scheduler, which stops whole Ray trials (ASHA then acts
    per DM configuration)."""
    if study.scheduler.kind != "none":
        return 1
    seeds = study.search_seed_count
    return max(1, min(size if size < seeds else size - size % seeds, arms * seeds))


def _searcher(ctx: SettingContext, ledger: Ledger):
    from dm_tune.search._searcher import StagedSearcher
    from dm_tune.search._stores import optuna_storage
    from dm_tune.search_spaces import make_sampler, resumed_sampler, startup_trials

    study = ctx.study
    space, warm = ctx.space_and_warm_points()
    startup = startup_trials(study.search.sampler, study.search.num_samples)
    storage = optuna_storage(ctx.opts.optuna_url)
    optuna_study = _optuna_study_name(study, ctx.setting, space)
    if study.search.sampler == "grid":
        optuna_study = _own_grid(storage, optuna_study, study.name)
    return StagedSearcher(
        setting=ctx.setting.key, ledger=ledger, study_name=study.name,
        optuna_storage=storage,
        optuna_study=optuna_study, space=space,
        sampler=make_sampler(study.search.sampler, space, study.search.sampler_seed, study.search.num_samples),
        resume_sampler=functools.partial(resumed_sampler, study.search.sampler, space, study.search.sampler_seed,
                                         study.search.num_samples),
        num_samples=study.search.num_samples, top_k=study.search.top_k, seeds=study.seeds,
        baselines=_baselines(study, ctx.setting),
        warm_points=warm,
        population_size=ctx.population_size(),
        search_population_size=_search_population_size(study, ctx.population_size()),
        startup_arms=startup, startup_population_size=_startup_population_size(study, ctx.population_size(), startup),
        objective=OBJECTIVES[study.task].final, search_seeds=study.search_seed_count,
        slots=study.resources.max_concurrent)


def _scheduler(study: Study, budget: int, ledger: Ledger):
    """ASHA over the search trials, on the task's per-epoch validation metric (OBJECTIVES[task].epoch:
    clean-validation accuracy, or validation mAP for retrieval), its rungs rebuilt from the search
    trials the ledger holds as ended (a resumed search)."""
    if study.scheduler.kind != "asha":
        return None
    from dm_tune.search._scheduler import asha

    scheduler = asha(OBJECTIVES[study.task].epoch, budget, study.scheduler.grace_period,
                     study.scheduler.reduction_factor)
    scheduler.replay(ledger.ended_specs("search"))
    return scheduler


# --- one setting ---------------------------------------------------------------------------------


def check_ledger(ledger: Ledger, tracking: str, exp_id: str, key: str, study_name: str) -> None:
    """Refuse a ledger that lacks trials MLflow has runs of: the ledger is what a resume goes on
    from, and a trial it lacks would train (and be recorded, a second run of its key) again. Every
    trial's start line is written, fsync'd, before its run is made, so a run the ledger does not
    know means lines were lost (the file cut short, or restored from an older copy); a torn last
    line was being written when the process died, before its trial's run could be made."""
    from dm_tune.search._tracking import trial_keys

    unknown = sorted(trial_keys(tracking, exp_id, key) - set(ledger.started))
    if unknown and not ledger.started:
        raise UserError(f"{ledger.path}: missing or empty, but MLflow has trial runs of setting {key} in "
                        f"experiment {study_name!r}: the ledger was lost since; restore it, or run the study "
                        "in another --workspace")
    if unknown:
        raise UserError(f"{ledger.path}: lacks {len(unknown)} trial(s) that MLflow has runs of in experiment "
                        f"{study_name!r} (first {unknown[0]}): the ledger lost lines since (cut short, or restored "
                        "from an older copy); restore the whole ledger, or run the study in another --workspace")


def run_setting(ctx: SettingContext, announce: Callable[[], None] | None = None) -> Ledger:
    """Run what is left of one setting (all of it, the first time); returns its ledger. ``announce``
    is called once the setting's stores have been checked, before any trial is handed out."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter

    from dm_tune.search._preflight import setting_data
    from dm_tune.search._tracking import MLflowTracker, find_runs, setting_run

    study, key = ctx.study, ctx.setting.key
    ledger = Ledger(ctx.opts.ledger(study.name, key), ctx.opts.workspace)
    check_ledger(ledger, ctx.opts.tracking, ctx.exp_id, key, study.name)
    if ledger.started and not find_runs(ctx.opts.tracking, ctx.exp_id, {"dmtune.role": "setting",
                                                                      "dmtune.setting": key}, 1):
        # Its run is made before any trial is handed out: this store never had the setting (a resume
        # given another --tracking-uri than the study began with), or lost it. Recording the ledger's
        # trials here would split the study between two stores.
        raise UserError(f"MLflow store {ctx.opts.tracking} has no run of setting {key} of study {study.name!r}, "
                        f"but its ledger ({ledger.path}) has {len(ledger.started)} trials: give the --tracking-uri "
                        "the study began with, or run the study in another --workspace")
    searcher = _searcher(ctx, ledger)
    searcher.optuna_study()  # checked against the ledger (one line if its store was lost) before any write
    if announce is not None:  # after the refusals above: a refused setting prints its one error line alone
        announce()
        if ctx.opts.echo and (note := ctx.warm_start_note()):
            print(f"dm-tune: note: {note}", file=sys.stderr)
    parent = setting_run(ctx.opts.tracking, ctx.exp_id, key, {
        **ctx.setting.train_fields(), "num_classes": ctx.source.num_classes,
        **{k: v for k, v in ctx.setting_config.to_dict().items()
           if k in ("model", "epochs", "batch_size", "optimizer", "lr")}})
    tracker = MLflowTracker(ctx.opts.tracking, ctx.exp_id, parent, key, ledger, ctx.params, echo=ctx.opts.echo,
                            data=setting_data(study, ctx.setting, ctx.source))
    try:
        if not searcher.done():
            name = ledger.new_experiment()
            budget = ctx.setting_config.epochs
            tuner = tune.Tuner(
                ctx.trainable(),
                tune_config=tune.TuneConfig(
                    search_alg=ConcurrencyLimiter(searcher, max_concurrent=study.resources.max_concurrent),
                    scheduler=_scheduler(study, budget, ledger), num_samples=-1,  # until the searcher is done
                    trial_dirname_creator=lambda t: t.trial_id, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=name, storage_path=f"{ctx.opts.storage}/{study.name}/{key}",
                    # Ray's result files (ExperimentAnalysis reads them); the CLI leaves out
                    # TensorBoard event files (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS), a cost per report.
                    callbacks=[tracker, JsonLoggerCallback(), CSVLoggerCallback()], verbose=0,
                    failure_config=tune.FailureConfig(max_failures=study.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
            _fit(tuner)
        # MLflow and Optuna agree with the ledger (they lag it when the driver was killed).
        tracker.reconcile()
        for spec, outcome in ledger.ended_specs("search"):
            searcher.tell(spec, outcome)
    except BaseException:
        try:
            tracker.close_open(finished=False)
        except Exception as e:  # noqa: BLE001 - the store may be what failed (a disk full): the first error is told
            print(f"dm-tune: warning: the setting's open MLflow runs could not be closed ({first_line(e)}); "
                  "the resume closes them", file=sys.stderr, flush=True)
        raise
    finished = searcher.done()
    tracker.close_open(finished)
    if not finished:
        raise Interrupted(f"{len(ledger.ended)} of the setting's trials ended, "
                          f"{len(ledger.unfinished())} were still running")
    return ledger


def _fit(tuner) -> None:
    """``tuner.fit()``, then the SIGINT handler as it was: Tune installs its own (a first Ctrl-C
    stops its run gracefully) and leaves it behind, so that a Ctrl-C between two settings only set
    a flag of a run already over, and the search went on."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        tuner.fit()
    finally:
        if before is not None:
            signal.signal(signal.SIGINT, before)


def summarise(ctx: SettingContext, ledger: Ledger) -> SettingSummary:
    """The confirmed arms over seeds, and how the search trials ended."""
    arms: dict[str, ArmResult] = {}
    statuses: dict[str, int] = {}
    train_time = 0.0
    for spec, outcome in ledger.ended_specs():
        train_time += 0.0 if outcome.reused_from else outcome.train_time_s  # trained once, counted once
        if spec.stage == "search":
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
            continue
        a = arms.setdefault(spec.arm, ArmResult(spec.arm, spec.baseline, ctx.params(spec)))
        objective = OBJECTIVES[ctx.study.task]  # test_acc/val_acc hold mAP for retrieval
        # Only a finished seed has a result: a diverged, stopped or crashed one is counted, not averaged.
        done = outcome.status == "finished"
        a.test_acc.append(outcome.value(objective.test) if done else math.nan)
        a.val_acc.append(outcome.value(objective.final) if done else math.nan)
        a.statuses.append(outcome.status)
        a.seeds.append(spec.seed)
    return SettingSummary(ctx.setting.key, list(arms.values()), sum(statuses.values()), statuses, train_time)


def _context(study: Study, setting: Setting, opts: RunOptions, exp_id: str, source: Any,
             guidelines: dict[str, Any] | None) -> SettingContext:
    from dm_tune.datasets import DATASETS

    base = absolute_paths({**study.training, **setting.train_fields()})  # trials chdir: paths must be absolute
    return SettingContext(study, setting, opts, exp_id, base, source, in_memory=not DATASETS[setting.dataset][1],
                          guidelines=guidelines)


def _warm_start_guidelines(study: Study, opts: RunOptions) -> dict[str, Any]:
    """The guidelines file a study warm-starts from, as it was when the study began: a copy is kept
    in the workspace (``warm_starts/NAME.json``), so that a resume searches the same region (and the
    same Optuna study) even after ``dm-tune report`` has rewritten the file. A bad file stops the
    study before it starts."""
    import os

    from dm_tune.reports._schema import load_guidelines

    path = Path(str(study.search.warm_start)).expanduser()
    kept = opts.warm_start_copy(study.name)
    if kept.is_file():
        doc = load_guidelines(kept)
        try:
            changed = json.loads(path.read_text(encoding="utf-8")) != doc
        except (OSError, ValueError):
            changed = True
        if changed and opts.echo:
            print(f"dm-tune: note: {path} has changed or gone since study {study.name!r} began; it goes on "
                  f"searching the region of the copy taken then ({kept})", file=sys.stderr, flush=True)
        return doc
    doc = load_guidelines(path)
    kept.parent.mkdir(parents=True, exist_ok=True)
    tmp = kept.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, kept)
    return doc


def run_study(study: Study, opts: RunOptions, sources: dict[str, Any] | None = None,
              resuming: bool = False) -> list[SettingSummary]:
    """Run (or resume) every setting of ``study``; returns one summary per setting. With
    ``opts.echo`` each setting is announced on stderr once its stores pass their checks (a refusal
    is then the only line printed); when ``resuming``, a "resuming" line comes first (echo or not)."""
    from dm_tune.search._preflight import load_sources
    from dm_tune.search._tracking import experiment_id

    guidelines = _warm_start_guidelines(study, opts) if isinstance(study.search.warm_start, str) else None
    sources = sources if sources is not None else load_sources(study)
    exp_id = experiment_id(opts.tracking, study.name, opts.artifact_root, opts.workspace)
    summaries: list[SettingSummary] = []

    def announce(key: str) -> None:
        if resuming and not summaries:  # (with --quiet too, as before)
            print(f"resuming study {study.name!r} in {opts.workspace}", file=sys.stderr)
        if not opts.echo:
            return
        seeds = list(study.seeds[:study.search_seed_count])
        n, k, b = study.search.num_samples, study.search.top_k, len(study.baselines)
        print(f"setting {key}: {n} DM arm{'s' * (n != 1)} on seeds {seeds} ({study.search.space} space, "
              f"{study.search.sampler}), then the top {k} DM arm{'s' * (k != 1)} and {b} "
              f"baseline{'s' * (b != 1)} on seeds {list(study.seeds)}", file=sys.stderr, flush=True)

    for setting in study.expand():
        t0 = time.perf_counter()
        ctx = _context(study, setting, opts, exp_id, sources[setting.dataset], guidelines)
        summary = summarise(ctx, run_setting(ctx, functools.partial(announce, setting.key)))
        summary.wall_time_s = time.perf_counter() - t0  # type: ignore[attr-defined]
        summaries.append(summary)
    return summaries
