"""Running a study: pre-flight checks, then per setting a search stage and a confirm stage.

Stages read top to bottom:
1. pre-flight (``_preflight``): the tracking server answers, the data loads, Ray is reachable,
   GPUs exist if asked for; nothing is written before these pass.
2. per setting, one Tune experiment (``_staged``): **search**, Optuna over DM's knobs on the
   first seed, objective = final clean-validation accuracy, the Optuna study in
   WORKSPACE/optuna.db; the baselines on every seed; then **confirm**, the best ``top_k`` DM
   arms on every seed.
3. a summary per setting: the best DM arm against each baseline, final test accuracy over seeds.

Each setting's experiment lives under STORAGE/<study>/<setting>; a re-run or ``--resume``
restores unfinished experiments and skips finished ones.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dm_tune.search._preflight import load_sources
from dm_tune.search._summary import ArmResult, SettingSummary, trial_status
from dm_tune.search._study import Setting, Study

OBJECTIVE = "val_acc"
# With automatic checkpointing (checkpoint_every: 0), at most one checkpoint per this many seconds.
AUTO_CHECKPOINT_MIN_S = 30.0  # final clean-validation accuracy, as the paper selects hyper-parameters


class Interrupted(Exception):
    """The search stopped before all its trials finished (Ctrl-C, a killed trial runner)."""


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


# --- one stage ---------------------------------------------------------------------------------


def _fit(trainable, path: Path, make_tuner, callbacks: list) -> Any:
    """Restore the experiment at ``path`` if there is one, else start it; run it to the end."""
    from ray import tune

    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
        # Tune pickles callbacks with the experiment; use this run's (fresh tracking config).
        tuner._local_tuner.get_run_config().callbacks = callbacks
    else:
        tuner = make_tuner()
    return tuner.fit()


def _run_config(name: str, storage: str, study: Study, callbacks: list):
    from ray import tune

    return tune.RunConfig(
        name=name, storage_path=storage, callbacks=callbacks, verbose=0,
        failure_config=tune.FailureConfig(max_failures=study.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )


def _scheduler(study: Study, budget: int):
    if study.scheduler.kind != "asha":
        return None
    from dm_tune.search._staged import SearchOnlyASHA

    return SearchOnlyASHA(time_attr="epoch", metric=OBJECTIVE, mode="max", max_t=budget,
                         grace_period=min(study.scheduler.grace_period, budget),
                         reduction_factor=study.scheduler.reduction_factor)


def _require_complete(results, study: Study) -> tuple[list, list]:
    """(search results, confirm results), or Interrupted if the experiment stopped early."""
    from dm_tune.search._staged import is_confirm, top_dm_arms

    search = [r for r in results if not is_confirm(r.config)]
    confirm = [r for r in results if is_confirm(r.config)]
    ended = [(r.config, {**(r.metrics or {}), "status": trial_status(r.metrics or {}, r.error is not None)})
             for r in search if r.error is not None or (r.metrics or {}).get("final")]
    arms = top_dm_arms(ended, study.search.top_k)
    expected = study.search.num_samples + (len(arms) + len(study.baselines)) * len(study.seeds)
    done = results.num_terminated + results.num_errors
    if len(search) < study.search.num_samples or done < expected:
        raise Interrupted(f"{done} of {expected} trials finished")
    return search, confirm


def _warm_points(space: dict[str, Any]) -> list[dict[str, float]]:
    """The paper's suggested DM settings in this space's coordinates, clipped to its bounds."""
    from dm_tune.search_spaces import to_lam_beta

    points = []
    for lam, beta in ((0.5, 8.0), (1.0, 16.0), (2.0, 24.0)):
        p = to_lam_beta({"lam": lam, "beta": beta})
        point = {}
        for name, spec in space.items():
            if spec["type"] != "float" or name not in p:
                return []
            point[name] = min(max(p[name], spec["low"]), spec["high"])
        points.append(point)
    return points


def _optuna_study_name(study: Study, setting: Setting) -> str:
    """One Optuna study per setting and objective: shared by later studies on the same setting
    with the same training budget and space, so they warm-start from it."""
    fingerprint = json.dumps({"training": study.training, "seed": study.seeds[0],
                              "space": study.search.space, "extra": list(study.search.extra_knobs)},
                             sort_keys=True)
    return f"{setting.key}/{study.search.space}/{hashlib.sha1(fingerprint.encode()).hexdigest()[:8]}"


@dataclass
class _Context:
    """What every stage of one setting needs."""

    study: Study
    setting: Setting
    opts: RunOptions
    exp_id: str
    parent_id: str
    base: dict[str, Any]
    source: Any
    budget: int
    num_classes: int
    resolved: dict[str, Any]

    def trainable(self):
        from ray import tune

        from dm_tune.trainables import dm_trainable

        res = {"cpu": self.study.resources.cpus_per_trial, "gpu": self.study.resources.gpus_per_trial}
        return tune.with_resources(tune.with_parameters(dm_trainable, base=self.base, source=self.source), res)

    def describe(self, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """MLflow params and baseline name of a trial config."""
        from dm_tune.search_spaces import to_lam_beta
        from dm_tune.trainables import trial_values

        arm = config.get("arm") or {}
        values = trial_values(config, self.base)
        method = values.get("method", "dm")
        params: dict[str, Any] = {
            "method": method, "seed": values.get("seed"), "epochs": self.budget,
            "num_classes": self.num_classes, "pretrained": str(bool(values.get("pretrained"))).lower(),
            **{k: self.resolved.get(k) for k in ("dataset", "noise", "noise_rate", "imbalance",
                                                  "imbalance_ratio", "model", "batch_size")},
            "lr": values.get("lr", self.resolved.get("lr")),
            "weight_decay": values.get("weight_decay", self.resolved.get("weight_decay")),
        }
        if method == "dm":
            params.update(to_lam_beta({"lam": values.get("lam", 1.0), "beta": values.get("beta", 8.0)}))
        elif method in ("gce", "gce-dn"):
            params["gce_q"] = values.get("gce_q", 0.7)
        return params, arm.get("baseline", "")


def _tracker(ctx: _Context):
    from dm_tune.search._tracking import MLflowTracker

    return MLflowTracker(ctx.opts.tracking, ctx.exp_id, ctx.parent_id, ctx.setting.key,
                         ctx.describe, echo=ctx.opts.echo)


def run_setting(ctx: _Context) -> tuple[list, list]:
    """Search and confirm one setting in one Tune experiment (see _staged); resumes if it can."""
    import optuna
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from dm_tune.search._searcher import DMOptunaSearch
    from dm_tune.search._staged import StagedSearcher
    from dm_tune.search_spaces import BASELINES, define_by_run, get_space, make_sampler

    study = ctx.study
    path = Path(ctx.opts.storage) / study.name / ctx.setting.key
    callbacks = [_tracker(ctx)]

    def make_tuner():
        space = get_space(study.search.space, study.search.extra_knobs)
        name = _optuna_study_name(study, ctx.setting)
        storage = optuna.storages.RDBStorage(ctx.opts.optuna_url)
        fresh = name not in {s.study_name for s in optuna.get_all_study_summaries(storage)}
        optuna_search = DMOptunaSearch(
            space=define_by_run(space), metric=OBJECTIVE, mode="max", study_name=name, storage=storage,
            sampler=make_sampler(study.search.sampler, space, study.search.sampler_seed, study.search.num_samples),
            points_to_evaluate=_warm_points(space) if (fresh and study.search.warm_start) else None)
        baselines = [{"name": b, "baseline": b, "overrides": dict(BASELINES[b])} for b in study.baselines]
        staged = StagedSearcher(optuna_search, study.search.num_samples, baselines, list(study.seeds),
                                study.search.top_k, metric=OBJECTIVE, mode="max")
        return tune.Tuner(
            ctx.trainable(),
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(staged, max_concurrent=study.resources.max_concurrent),
                scheduler=_scheduler(study, ctx.budget), num_samples=-1,  # until the searcher is done
                trial_dirname_creator=lambda t: t.trial_id, reuse_actors=True),
            run_config=_run_config(path.name, str(path.parent), study, callbacks))

    try:
        results = _fit(ctx.trainable(), path, make_tuner, callbacks)
    finally:
        callbacks[0].drain()
    search, confirm = _require_complete(results, study)
    callbacks[0].reconcile(results)
    return search, confirm


def _summarise(ctx: _Context, search_results, confirm_results) -> SettingSummary:
    arms: dict[str, ArmResult] = {}
    train_time = 0.0
    for r in confirm_results:
        arm = r.config["arm"]
        params, baseline = ctx.describe(r.config)
        a = arms.setdefault(arm["name"], ArmResult(arm["name"], baseline, params))
        m = r.metrics or {}
        a.test_acc.append(float(m.get("final_test_acc", m.get("test_acc", float("nan")))))
        a.val_acc.append(float(m.get("final_val_acc", m.get("val_acc", float("nan")))))
        a.statuses.append(trial_status(m, r.error is not None))
        train_time += float(m.get("train_time_s", 0.0))
    statuses: dict[str, int] = {}
    for r in search_results:
        m = r.metrics or {}
        st = trial_status(m, r.error is not None)
        statuses[st] = statuses.get(st, 0) + 1
        train_time += float(m.get("train_time_s", 0.0))
    return SettingSummary(ctx.setting.key, list(arms.values()), len(search_results), statuses, train_time)


def _context(study: Study, setting: Setting, opts: RunOptions, exp_id: str, source: Any) -> _Context:
    from dm_tune.datasets import DATASETS
    from dm_tune.search._tracking import setting_run

    cfg = study.train_config(setting)
    resolved = cfg.resolve(source.defaults, source.default_model, source.input_kind)
    base = {**study.training, **setting.train_fields(), "seed": study.seeds[0]}
    for key in ("data_root", "noise_file", "pretrained"):  # trials chdir: paths must be absolute
        if base.get(key):
            base[key] = str(Path(base[key]).expanduser().resolve())
    every = study.checkpoint_every or max(1, resolved.epochs // 4)
    report_every = 1 if study.scheduler.kind != "none" else every  # ASHA decides on every epoch
    base.update(checkpoint_every=every, report_every=report_every,
                checkpoint_min_s=0.0 if study.checkpoint_every else AUTO_CHECKPOINT_MIN_S,
                cpus_per_trial=max(1, int(study.resources.cpus_per_trial)))
    in_memory = not DATASETS[setting.dataset][1]
    setting_params = {**setting.train_fields(), "model": resolved.model, "num_classes": source.num_classes,
                      "epochs": resolved.epochs, "pretrained": str(bool(resolved.pretrained)).lower()}
    parent = setting_run(opts.tracking, exp_id, setting.key, setting_params)
    return _Context(study, setting, opts, exp_id, parent, base, source if in_memory else None,
                    resolved.epochs, source.num_classes, resolved.to_dict())


def run_study(study: Study, opts: RunOptions, sources: dict[str, Any] | None = None) -> list[SettingSummary]:
    """Run (or resume) every setting of ``study``; returns one summary per setting."""
    from dm_tune.search._tracking import experiment_id

    sources = sources if sources is not None else load_sources(study)
    exp_id = experiment_id(opts.tracking, study.name, opts.artifact_root)
    summaries = []
    for setting in study.expand():
        t0 = time.perf_counter()
        if opts.echo:
            print(f"setting {setting.key}: {study.search.num_samples} DM trials ({study.search.space} space, "
                  f"{study.search.sampler}), then the top {study.search.top_k} DM arms and "
                  f"{len(study.baselines)} baselines on seeds {list(study.seeds)}", file=sys.stderr, flush=True)
        ctx = _context(study, setting, opts, exp_id, sources[setting.dataset])
        search_results, confirm_results = run_setting(ctx)
        summary = _summarise(ctx, search_results, confirm_results)
        summary.wall_time_s = time.perf_counter() - t0  # type: ignore[attr-defined]
        summaries.append(summary)
    return summaries
