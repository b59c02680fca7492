"""``dm-tune validate``: train the guidelines' recommendation on settings it was not fitted on.

For every setting of a study-style YAML (its ``settings:`` matrix, ``training:`` block and
``seeds:``), ask ``recommend()`` for DM's knobs and train three arms on every seed:

* ``dm-recommended``: DM with the recommended (lambda, beta) and class weighting;
* ``cce``: plain cross-entropy;
* ``imae``: DM with lambda 1, beta 8 (the paper's IMAE-like default);

and, where the recommendation weights classes (class weighting not none), two more (``WEIGHTED_ARMS``):

* ``cce-weighted`` and ``imae-weighted``: cce and imae with the recommended class weighting (and the
  training's class_weighting_beta): rec - cce is what DM and the weighting add together, rec -
  cce-weighted what DM adds beyond the weighting (which alone is worth many points on imbalanced data).

A setting finished before validate trained the weighted arms (a progress line or validation.json of an
older dm-tune) keeps its arms; the weighted ones it lacks are trained on resuming, on its seeds and data.

The arms of one setting train together as populations (dm_tune.population), each on the same
per-seed data (noise draw, validation split, imbalance), so differences are paired by seed.
Each finished setting is kept in ``--out``/validation.progress.jsonl as it ends (``Progress``):
started again with the same inputs, a stopped validation trains only what it had not finished. An
--out holds one validation (validation.json records what it validated, ``identities``): another's
results or unfinished progress there are refused, the same one finished is not trained again.
Each setting names the dm-tune that trained it (``trained_by``); validation.md says which trained
each setting when they differ (a progress file resumed after an upgrade).

Verdict rule (``verdict``): with d_i = recommended - baseline final test accuracy on seed i
(percentage points), n seeds, mean d and sample std s: the paired two-sided 95% t interval
mean d +- t(0.975, n - 1) * s / sqrt(n) (scipy). "wins" when it lies above 0, "loses" when it
lies below 0, otherwise "within noise"; with fewer than two paired seeds there is no spread to
judge by: "undetermined". (With 3 seeds t is 4.3: only clear differences count.) An accuracy
moves in steps of one test example, so s is taken as at least one step (100 / test examples,
points): the same difference on every seed (two models a step apart on each, e.g. both at chance)
is a spread below what the test set can measure, not a certain one. A run that
did not finish (diverged) has no final accuracy, and its failure decides: an arm that did not
finish on a seed where the other did loses the comparison ("undetermined" if each failed where
the other finished).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dm_tune._validate import SEED_MAX
from dm_tune.errors import (UserError, int_argument, json_text, load_yaml, output_dir, path_argument,
                            read_number, remove_write_leftovers, text_argument, write_output)

ARMS = ("dm-recommended", "cce", "imae")
PROGRESS_FILE = "validation.progress.jsonl"  # in --out while a validation runs
LOCK_FILE = ".validate.lock"  # in --out: one validation writes there at a time
BASELINE_ARMS = ("cce", "imae")
# Trained where the recommendation weights classes: each baseline with the recommended class weighting.
WEIGHTED_ARMS = {"cce-weighted": "cce", "imae-weighted": "imae"}
IMAE_KNOBS = {"method": "dm", "lam": 1.0, "beta": 8.0}
CONFIDENCE = 0.95  # of the paired t interval that decides "wins" / "loses" / "within noise"


# --- the statistics (pure) ---------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN with fewer than two values)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def verdict(mean_diff: float, std: float, n: int, step: float = 0.0) -> str:
    """"wins" / "loses" / "within noise" / "undetermined" by the module docstring's rule (``step``:
    one test example's worth of accuracy, points; the least spread taken)."""
    if n < 2 or not (math.isfinite(mean_diff) and math.isfinite(std)):
        return "undetermined"
    from scipy.stats import t

    bound = float(t.ppf(1 - (1 - CONFIDENCE) / 2, n - 1)) * max(std, step) / math.sqrt(n)
    if mean_diff > bound:
        return "wins"
    if mean_diff < -bound:
        return "loses"
    return "within noise"


def final_accuracies(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[int, float]]:
    """Each arm's final test accuracy per seed. A run that did not finish (diverged: its accuracy
    is that of the epoch it diverged in) has none: NaN, left out of the means and the pairs."""
    return {arm: {run["seed"]: run["test_acc"] if run["status"] == "finished" else math.nan for run in a["runs"]}
            for arm, a in runs.items()}


def summarise(accuracies: Mapping[str, Mapping[int, float]], step: float = 0.0) -> dict[str, Any]:
    """Per arm: mean +- sample std of final test accuracy (points) over its finite seeds (NaN: a
    run that did not finish); per baseline: the paired difference dm-recommended - baseline over
    the seeds both have (``step``: one test example's worth of accuracy, points; see ``verdict``)."""
    arms = {}
    for arm, by_seed in accuracies.items():
        finite = [v for v in by_seed.values() if math.isfinite(v)]
        mean, std = mean_std(finite)
        arms[arm] = {"mean": mean, "std": std, "n": len(finite)}
    rec = accuracies.get("dm-recommended", {})
    comparisons = {}
    for base in (*BASELINE_ARMS, *(w for w in WEIGHTED_ARMS if w in accuracies)):  # (weighted: where trained)
        c = paired_comparison(rec, accuracies.get(base, {}), step)
        c["did_not_finish"] = {"dm-recommended": c.pop("a_failed"), base: c.pop("b_failed")}
        comparisons[base] = c
    return {"arms": arms, "vs": comparisons}


def paired_comparison(a: Mapping[Any, float], b: Mapping[Any, float], step: float = 0.0) -> dict[str, Any]:
    """Arm a against arm b, per seed (NaN: the run did not finish): the mean +- sample std of a - b
    over the seeds both finished, and the verdict of the module docstring's rule (a seed where one
    finished and the other did not decides against the one that did not)."""
    shared = [s for s in a if s in b]
    seeds = sorted(s for s in shared if math.isfinite(a[s]) and math.isfinite(b[s]))
    diffs = [a[s] - b[s] for s in seeds]
    mean, std = mean_std(diffs)
    a_failed = sorted(s for s in shared if not math.isfinite(a[s]) and math.isfinite(b[s]))
    b_failed = sorted(s for s in shared if math.isfinite(a[s]) and not math.isfinite(b[s]))
    if a_failed or b_failed:
        decided = "undetermined" if a_failed and b_failed else "loses" if a_failed else "wins"
    else:
        decided = verdict(mean, std, len(diffs), step)
    return {"mean_diff": mean, "std": std, "n": len(diffs), "seeds": seeds, "a_failed": a_failed,
            "b_failed": b_failed, "verdict": decided}


# --- training ----------------------------------------------------------------------------------


def arm_overrides(rec: Any) -> dict[str, dict[str, Any]]:
    """TrainConfig fields of each arm for one recommendation."""
    # The recommended class weighting, "none" included, over whatever the config's training holds;
    # the baselines unweighted, as the guidelines measured them, and weighted as recommended.
    weighting = str(getattr(rec, "class_weighting", "none"))
    recommended: dict[str, Any] = {"method": "dm", "lam": float(rec.lam), "beta": float(rec.beta),
                                   "class_weighting": weighting}
    return {"dm-recommended": recommended, "cce": {"method": "cce", "class_weighting": "none"},
            "imae": {**IMAE_KNOBS, "class_weighting": "none"}, **weighted_overrides(weighting)}


def weighted_overrides(weighting: str) -> dict[str, dict[str, Any]]:
    """TrainConfig fields of the weighted baselines for a recommended class weighting (none: no arm)."""
    if weighting in ("none", "None"):
        return {}
    return {"cce-weighted": {"method": "cce", "class_weighting": weighting},
            "imae-weighted": {**IMAE_KNOBS, "class_weighting": weighting}}


def missing_arms(entry: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The weighted baselines a finished setting lacks (kept before validate trained them), by the
    class weighting its dm-recommended arm trained with."""
    arms = entry.get("arms")
    knobs = arms.get("dm-recommended", {}).get("config") if isinstance(arms, Mapping) else None
    if not isinstance(knobs, Mapping):
        return {}
    return {arm: o for arm, o in weighted_overrides(str(knobs.get("class_weighting", "none"))).items()
            if arm not in arms}


def asked(setting: Any, first: Any) -> dict[str, Any]:
    """What the guidelines are asked for one setting: its data as prepared on its first seed
    (``first``) gives the number of classes and, for a label file, the noise rate it measured."""
    return {"num_classes": int(first.num_classes), "noise_type": setting.noise,
            "noise_rate": float(first.noise_rate if setting.noise == "file" else setting.noise_rate),
            "imbalance": setting.imbalance, "imbalance_ratio": float(setting.imbalance_ratio),
            "dataset": setting.dataset}


def _recommendation(study: Any, setting: Any, seeds: Sequence[int], overrides: dict[str, Any],
                    guidelines: dict[str, Any], named: str, first: Any = None, source: Any = None) -> Any:
    """The guidelines' recommendation for one setting, and every arm's TrainConfig built from it
    (refused here, not at training time); ``named``: how the guidelines are named in an error
    (their flag and file). ``first``: the setting's data on its first seed, if prepared already;
    else prepared from ``source``, the setting's dataset loaded already (None: loaded here)."""
    from dm_tune._validate import ConfigError
    from dm_tune.data import prepare
    from dm_tune.reports._recommend import recommend

    if first is None:
        first = prepare(study.train_config(setting, **{**overrides, "seed": seeds[0]}), source)
    try:
        rec = recommend(guidelines, **asked(setting, first))
        for knobs in arm_overrides(rec).values():
            study.train_config(setting, **{**overrides, **knobs, "seed": seeds[0]})
    except (UserError, ConfigError) as e:
        raise UserError(f"{named}: setting {setting.key}: {e}") from None
    return rec


def validate_study(values: Any) -> Any:
    """A study YAML's values as validate trains them: its settings, training and seeds, with the
    baselines cce and imae (not the search's), and any class weighting the guidelines may
    recommend; so that a training field is checked against what validate trains (a gce_q was
    taken, though no gce arm trains; an effective-number beta refused, though the recommendation
    may weight by it: ``_recommend_all`` checks that one against the recommendations)."""
    from dm_tune.class_weighting import SCHEMES

    if not isinstance(values, Mapping):
        return values  # (Study.from_dict says what it expected)
    search = values.get("search") if isinstance(values.get("search"), Mapping) else {}
    training = values.get("training")
    if isinstance(training, Mapping) and "class_weighting" in training:  # (ignored without a word)
        print(f"dm-tune: warning: training.class_weighting {training['class_weighting']!r} is ignored: validate "
              "trains each arm with its own class weighting (dm-recommended, cce-weighted and imae-weighted the "
              "recommended one, cce and imae none)", file=sys.stderr)
        # (kept, so that a validation begun with it resumes: its settings' identities hold the training fields)
        return {**values, "baselines": list(BASELINE_ARMS), "search": {**search, "class_weighting": ["none"]}}
    return {**values, "baselines": list(BASELINE_ARMS), "search": {**search, "class_weighting": list(SCHEMES)}}


def _recommend_all(plan: list[tuple[Any, Any, list[int], str]], overrides: dict[str, Any],
                   guidelines: dict[str, Any], named: str, done: set[str],
                   sources: dict[int, dict[str, Any]] | None = None) -> None:
    """Every planned setting's recommendation (``_recommendation``) but those ``done``; a study's
    training.class_weighting_beta that no recommendation of its settings uses is refused.
    ``sources``: each study's datasets as ``_preflight`` loaded them (by ``id`` of the study, then
    dataset); None: each setting's is loaded as it is prepared."""
    from dm_tune._validate import ConfigError

    weighted: dict[int, bool] = {}
    for one, setting, seeds, identity in plan:
        if identity not in done:
            source = sources[id(one)][setting.dataset] if sources is not None else None
            rec = _recommendation(one, setting, seeds, overrides, guidelines, named, source=source)
            weighted[id(one)] = weighted.get(id(one), False) or rec.class_weighting == "effective-number"
    for one, *_ in plan:
        if "class_weighting_beta" in one.training and weighted.get(id(one)) is False:
            raise ConfigError("training.class_weighting_beta", one.training["class_weighting_beta"],
                              "only applies to class weighting effective-number, which the guidelines recommend "
                              f"for none of study {one.name!r}'s settings")


PROGRESS_EVERY_S = 15.0  # validate's epoch lines: the first, the last, and one at most this often between


def _now_and_then(report: Any, epochs: int, every_s: float = PROGRESS_EVERY_S) -> Any:
    """``report`` (a population's, per epoch of ``epochs``) called for a population's first epoch, its
    last, and otherwise at most once every ``every_s`` seconds: validate trains many settings, and
    said nothing for minutes between a group's start and its end."""
    import time

    last = [-math.inf]

    def now_and_then(metrics: dict[int, dict[str, float]], snapshot: Any) -> None:
        now = time.monotonic()
        ended = bool(metrics) and all(m.get("diverged") or int(m["epoch"]) >= epochs for m in metrics.values())
        if ended or now - last[0] >= every_s:
            last[0] = now
            report(metrics, snapshot)

    return now_and_then


def _train_setting(study: Any, setting: Any, seeds: Sequence[int], overrides: dict[str, Any],
                   guidelines: dict[str, Any], quiet: bool, named: str = "the guidelines",
                   earlier: Mapping[str, Any] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Recommend, then train every arm on every seed of one setting; the setting's JSON entry.
    ``earlier``: the setting's entry, finished without some weighted arms (``missing_arms``): only
    those train, on the same seeds and data, each recording the dm-tune that trained it.
    ``threads``: torch's CPU threads (None: as ``dm-tune train`` chooses them for the data)."""
    import torch

    from dm_tune.cli import population_progress
    from dm_tune.data import load_source, prepare
    from dm_tune.population import plan_populations, suggested_population_size, train_population
    from dm_tune.train import select_device, torch_threads

    base = study.train_config(setting, **overrides)
    try:
        device = select_device(base.device)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    source = load_source(base)
    datas = {s: prepare(base.replace(seed=s), source) for s in seeds}  # shared by the arms: paired
    first = datas[seeds[0]]
    rec = None if earlier is not None else _recommendation(study, setting, seeds, overrides, guidelines, named, first)
    arms = arm_overrides(rec) if earlier is None else missing_arms(earlier)
    members = [(arm, s, study.train_config(setting, **{**overrides, **knobs, "seed": s}))
               for arm, knobs in arms.items() for s in seeds]
    configs = [c for _, _, c in members]
    member_datas = [datas[s] for _, s, _ in members]
    resolved = base.resolve(first.defaults, first.default_model, first.input_kind)
    size = suggested_population_size(str(resolved.model), device.type)
    results: list[Any] = [None] * len(members)
    epochs = int(resolved.epochs)
    kept = torch.get_num_threads()  # (put back after: validate() may be called from a program of its own)
    torch_threads(threads, first)
    try:
        for group in plan_populations(configs, member_datas, size):
            labels = [f"{members[i][0]} seed {members[i][1]}" for i in group]
            if not quiet:
                print(f"  training {len(group)} member(s): " + ", ".join(labels), file=sys.stderr, flush=True)
            report = None if quiet else _now_and_then(population_progress(False, epochs, labels, "    "), epochs)
            for i, r in zip(group, train_population([configs[i] for i in group],
                                                    [member_datas[i] for i in group], report)):
                results[i] = r
    finally:
        torch.set_num_threads(kept)
    runs: dict[str, dict[str, Any]] = {arm: {"config": knobs, "runs": []} for arm, knobs in arms.items()}
    for (arm, s, _), r in zip(members, results):
        if not runs[arm]["runs"]:  # what the arm trained with (its first seed's resolved config)
            runs[arm]["train_config"] = {k: v for k, v in r.config.items() if k not in ("seed", "data_seed")}
        runs[arm]["runs"].append({"seed": s, "test_acc": 100.0 * r.test_accuracy, "status": r.status,
                                  "val_acc": 100.0 * r.val_accuracy})
    if earlier is not None:  # its arms kept as they were, the new ones beside them
        runs = {**earlier["arms"], **{arm: {**a, "trained_by": _code()} for arm, a in runs.items()}}
        examples = earlier.get("test_examples") or len(first.test)
        return {**earlier, "arms": runs, "summary": summarise(final_accuracies(runs), 100.0 / examples)}
    return {"setting": setting.key, "seeds": list(seeds), "fields": setting.train_fields(),
            "trained_by": _code(), "num_classes": int(first.num_classes),
            "model": str(resolved.model), "asked": asked(setting, first), "recommendation": rec.to_dict(), "arms": runs,
            "test_examples": len(first.test), "summary": summarise(final_accuracies(runs), 100.0 / len(first.test))}


class Progress:
    """The settings a validation has finished, one JSON line each in ``path`` (flushed and
    fsync'd as each setting ends), so that a run stopped in any way, ``kill -9`` included, goes on
    from the next setting when it is started again with the same inputs. A line is used again only
    for the same setting, study, seeds, epochs and guidelines (its ``identity``); a torn last line
    (the process died while writing it) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        self._torn = False
        try:  # readable and writable now: a setting trained for hours must not be lost at its end
            with open(path, "a", encoding="utf-8"):
                pass
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise UserError(f"{path}: cannot be read and written ({e.strerror or e}); validate keeps each "
                            "finished setting there, so that a stopped validation goes on") from None
        if text:
            self._torn = not text.endswith("\n")
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                    if well_formed(entry["setting"]):  # (else damaged, as a torn line: trained again)
                        self.done[entry["identity"]] = entry["setting"]
                except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
                    continue

    @staticmethod
    def identity(study: Any, setting: Any, seeds: Sequence[int], overrides: Mapping[str, Any],
                 guidelines: Mapping[str, Any]) -> str:
        what = {"setting": setting.key, "fields": setting.train_fields(), "training": study.training,
                "seeds": list(seeds), "overrides": dict(overrides), "guidelines": guidelines}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()

    def add(self, identity: str, entry: Mapping[str, Any]) -> None:
        """Keep ``entry``; if the file cannot take it (a disk full since the start), say so and keep
        it in memory: validation.json still gets it, a stop before that trains it again."""
        line = json.dumps({"identity": identity, "setting": entry}, allow_nan=True, default=_plain)
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(("\n" if self._torn else "") + line + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._torn = False
        except OSError as e:  # part of the line may be in the file: the next one starts anew
            self._torn = True
            print(f"dm-tune: warning: {self.path}: this setting could not be kept there ({e.strerror or e}); "
                  "it is kept in memory for validation.json, but a stop before the end trains it again",
                  file=sys.stderr, flush=True)
        self.done[identity] = json.loads(line)["setting"]

    def release(self) -> None:
        """Forget this validation's settings: they are in validation.json now (an --out holds one
        validation: ``validate_command`` refuses another's). A file that cannot be removed (its
        folder made read-only since) is only a warning: a rerun finds validation.json and removes it."""
        _remove_progress(self.path)


def _remove_progress(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        print(f"dm-tune: warning: {path}: could not be removed ({e.strerror or e}); the results are in "
              "validation.json, and a rerun removes it", file=sys.stderr, flush=True)


def _plan(studies: list[Any], seeds: Sequence[int] | None, overrides: Mapping[str, Any],
          guidelines: Mapping[str, Any]) -> tuple[list[tuple[Any, Any, list[int], str]], list[int]]:
    """(study, setting, seeds, identity) for every setting to validate, and every seed used; a
    setting listed twice with the same training (it would be trained once, reported and counted
    twice) is refused."""
    used: list[int] = []
    plan = []
    seen: dict[str, Any] = {}
    for one in studies:
        # (in order: seeds 1,0 are the validation of seeds 0,1, trained, reported and resumed alike)
        own = sorted(seeds if seeds is not None else one.seeds)
        used += [s for s in own if s not in used]
        for setting in one.expand():
            identity = Progress.identity(one, setting, own, overrides, guidelines)
            if identity in seen:
                raise UserError(f"setting {setting.key} is listed twice with the same training (studies "
                                f"{seen[identity].name!r} and {one.name!r}): validate each setting once")
            seen[identity] = one
            plan.append((one, setting, own, identity))
    return plan, used


def validate(study: Any, guidelines: dict[str, Any], seeds: Sequence[int] | None, epochs: int | None = None,
             quiet: bool = False, progress: Progress | None = None,
             guidelines_name: str = "the guidelines", recommended: bool = False,
             threads: int | None = None) -> dict[str, Any]:
    """Every setting of ``study`` (a Study, or a list of them): recommendation, per-seed accuracies
    of each arm, summary; on ``seeds``, or (None) each study's own. With ``progress``, settings it
    holds are not trained again and each newly finished one is added to it. Every setting's
    recommendation is asked for before any trains: guidelines that cannot answer one (a damaged or
    hand-edited file) are refused before hours of training, naming ``guidelines_name`` and the setting
    (``recommended``: the caller has asked already, ``_recommend_all``); ``threads``: torch's CPU
    threads (None: as ``dm-tune train`` chooses them for each setting's data)."""
    overrides = {"epochs": epochs} if epochs is not None else {}
    settings = []
    studies = list(study) if isinstance(study, (list, tuple)) else [study]
    plan, used = _plan(studies, seeds, overrides, guidelines)
    # The same setting trained two ways (e.g. two data roots): its rows named apart, by their study
    # (and the --config's place where the studies share a name).
    keys = [setting.key for _, setting, _, _ in plan]
    named = [f"{setting.key} ({one.name})" for one, setting, _, _ in plan]
    label = {identity: key if keys.count(key) == 1 else name if named.count(name) == 1
             else f"{setting.key} (config {1 + next(i for i, x in enumerate(studies) if x is one)}: {one.name})"
             for (one, setting, _, identity), key, name in zip(plan, keys, named)}
    if progress is not None:
        others = len(set(progress.done) - {identity for *_, identity in plan})
        if others:  # (validate_command refuses such an --out before this)
            raise UserError(f"{progress.path}: holds {others} finished setting(s) of another validation (other "
                            "inputs); finish that one with its own command, or use another --out")
        if progress.done and not quiet:
            print(f"{progress.path}: {len(progress.done)} setting(s) of this validation finished in an earlier run "
                  "(not trained again)", file=sys.stderr, flush=True)
    if not recommended:
        _recommend_all(plan, overrides, guidelines, guidelines_name,
                       set(progress.done) if progress is not None else set())
    for one, setting, seeds_here, identity in plan:
        if progress is not None and identity in progress.done:
            earlier = progress.done[identity]
            missing = missing_arms(earlier)
            if not quiet:
                other = _other_code(earlier)
                print(f"{setting.key}: finished earlier ({progress.path.name}"
                      + (f"; trained by {other}, not by this dm-tune" if other else "") + ")"
                      + (f"; training the arms it lacks: {', '.join(missing)}" if missing else ""),
                      file=sys.stderr, flush=True)
            if missing:  # kept before validate trained the weighted baselines
                earlier = _train_setting(one, setting, seeds_here, overrides, guidelines, quiet, guidelines_name,
                                         earlier, threads)
                progress.add(identity, earlier)
            settings.append({**earlier, "setting": label[identity]})  # named as in this run
            continue
        if not quiet:
            print(f"{setting.key}:", file=sys.stderr, flush=True)
        entry = _train_setting(one, setting, seeds_here, overrides, guidelines, quiet, guidelines_name,
                               threads=threads)
        entry["setting"] = label[identity]
        if progress is not None:
            progress.add(identity, entry)
        settings.append(entry)
    tally = {base: {v: sum(1 for s in settings if s["summary"]["vs"][base]["verdict"] == v)
                    for v in ("wins", "within noise", "loses", "undetermined")} for base in BASELINE_ARMS}
    weighted = _compared_weighted(settings)
    for base in weighted:  # over the settings whose recommendation weights classes
        tally[base] = {v: sum(1 for s in settings if s["summary"]["vs"].get(base, {}).get("verdict") == v)
                       for v in ("wins", "within noise", "loses", "undetermined")}
        tally[base]["not compared"] = sum(1 for s in settings if base not in s["summary"]["vs"])
    return {"identities": [identity for *_, identity in plan],  # what it validated: the same inputs give the same
            "accuracy_unit": "percentage points (final-epoch test accuracy)",
            "verdict_rule": f"wins/loses when the paired {CONFIDENCE:.0%} t interval of the mean difference "
                            "excludes 0 (its std taken as at least one test example's worth), else within noise; "
                            "undetermined with fewer than 2 paired seeds; an arm that did not finish (diverged) "
                            "on a seed where the other did loses",
            "arms": [*ARMS, *weighted], "seeds": used, "settings": settings, "summary": tally}


# --- output ------------------------------------------------------------------------------------


def _acc(a: Mapping[str, Any], runs: int) -> str:
    """mean ± std of the finished seeds; "(n of N finished)" when some did not finish."""
    short = f" ({a['n']} of {runs} finished)" if a["n"] < runs else ""
    mean, std = _number(a["mean"]), _number(a["std"])
    if not math.isfinite(mean):
        return "n/a" + short
    return (f"{mean:.2f} ± {std:.2f}" if math.isfinite(std) else f"{mean:.2f}") + short


def _diff(c: Mapping[str, Any]) -> str:
    """mean ± std (verdict); a verdict that runs which did not finish decided says so (its mean,
    over the seeds both finished, may point the other way)."""
    mean, std = _number(c["mean_diff"]), _number(c["std"])
    failed = {arm: seeds for arm, seeds in (c.get("did_not_finish") or {}).items() if seeds}
    why = "; ".join(f"{arm} did not finish on seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
                    for arm, seeds in failed.items())
    said = f"{c.get('verdict')}: {why}" if why else str(c.get("verdict"))
    if not math.isfinite(mean):  # no seed both finished
        return f"n/a ({said})"
    spread = f" ± {std:.2f}" if math.isfinite(std) else ""
    return f"{mean:+.2f}{spread} ({said})"


def _knobs(s: Mapping[str, Any]) -> str:
    rec = s["recommendation"]
    weighting = rec.get("class_weighting", "none")
    query = s.get("asked") if isinstance(s.get("asked"), Mapping) else {}  # (not in a validation before it)
    rate = (f" (for the label file's measured noise rate {_number(query['noise_rate']):.3g})"
            if query.get("noise_type") == "file" and "noise_rate" in query else "")
    return (f"λ {rec['lam']:.3g}, β {rec['beta']:.3g}" + ("" if weighting in (None, "none") else f", {weighting}")
            + rate)


def _compared_weighted(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """The weighted baselines some setting's recommendation was compared with."""
    return [w for w in WEIGHTED_ARMS if any(w in s["summary"]["vs"] for s in settings)]


def _weights(s: Mapping[str, Any]) -> bool:
    """Whether a setting's recommendation weights classes (its weighted baselines are due)."""
    return s["recommendation"].get("class_weighting", "none") not in (None, "none") or any(
        w in s["arms"] for w in WEIGHTED_ARMS)


def table_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    """The table's rows; the weighted baselines' columns where a setting's recommendation weights
    classes ("—" in a setting whose does not; "not trained" in one kept before validate trained them)."""
    weighted = list(WEIGHTED_ARMS) if any(_weights(s) for s in doc["settings"]) else []
    rows = [["setting", "recommended", *ARMS, *weighted, *(f"rec − {b}" for b in (*BASELINE_ARMS, *weighted))]]
    for s in doc["settings"]:
        summ = s["summary"]
        absent = "not trained" if _weights(s) else "—"
        rows.append([s["setting"], _knobs(s), *(_acc(summ["arms"][a], len(s["arms"][a]["runs"])) for a in ARMS),
                     *(_acc(summ["arms"][a], len(s["arms"][a]["runs"])) if a in s["arms"] else absent
                       for a in weighted),
                     *(_diff(summ["vs"][b]) if b in summ["vs"] else absent for b in (*BASELINE_ARMS, *weighted))])
    return rows


def tally_text(doc: Mapping[str, Any]) -> str:
    """How many settings the recommendation wins, is within noise of, loses to, per comparison; ""
    where no setting has the weighted baselines (the table says all)."""
    settings = doc["settings"]
    weighted = _compared_weighted(settings)
    if not weighted:
        return ""

    def count(base: str) -> str:
        verdicts = [s["summary"]["vs"][base].get("verdict") for s in settings if base in s["summary"]["vs"]]
        said = ", ".join(f"{v} {verdicts.count(v)}" for v in ("wins", "within noise", "loses", "undetermined")
                         if verdicts.count(v) or v != "undetermined")
        what = (f"{base} (the recommended class weighting; the {len(verdicts)} setting(s) that weight classes)"
                if base in WEIGHTED_ARMS else f"{base} (unweighted; all {len(verdicts)} setting(s))")
        return f"rec − {what}: {said}"

    return "Settings per comparison: " + "; ".join(count(b) for b in (*BASELINE_ARMS, *weighted)) + "."


def to_markdown(doc: Mapping[str, Any]) -> str:
    from dm_tune.reports._text import md_table, md_text

    rows = table_rows(doc)
    said = doc.get("guidelines")
    whose = (f"The recommendations of the guidelines file {md_text(said)} (this section says nothing of other "
             "guidelines'). " if isinstance(said, str) and said else "")
    lines = ["## Validation of the recommendations", "",
             f"{whose}Final-epoch test accuracy in percentage points, mean ± sample std over {_seeds_text(doc)}; "
             f"differences paired by seed. Verdict: {doc['verdict_rule']}. {md_text(_budget_text(doc))}", "",
             *md_table(rows[0], rows[1:])]
    if any(_weights(s) for s in doc["settings"]):
        lines += ["", "cce-weighted and imae-weighted: cce and imae trained with the recommendation's class "
                      "weighting, where it weights classes (— where it does not). rec − cce is what the "
                      "recommendation (DM and its class weighting) adds over plain CCE; rec − cce-weighted and "
                      "rec − imae-weighted what DM adds beyond the class weighting."]
        if tally := tally_text(doc):
            lines += ["", md_text(tally)]
    warnings = [f"- {md_text(s['setting'])}: {md_text(w)}" for s in doc["settings"]
                for w in s["recommendation"].get("warnings", [])]
    if warnings:
        lines += ["", "Warnings of the recommendations:", "", *warnings]
    if len({json.dumps(code, sort_keys=True) for s in doc["settings"] for code in _codes(s).values()}) > 1:
        lines += ["", "The settings were trained by more than one dm-tune (an earlier run's progress, resumed "
                      "after dm-tune changed):", "",
                  *(f"- {md_text(s['setting'])}: {md_text(_code_text(s.get('trained_by')))}"
                    + "".join(f"; its {arm} by {md_text(_code_text(code))}" for arm, code in _codes(s).items() if arm)
                    for s in doc["settings"])]
    return "\n".join(lines) + "\n"


def _codes(s: Mapping[str, Any]) -> dict[str, Any]:
    """Which dm-tune trained a setting (key ""), and each arm trained later by another (resumed)."""
    arms = s.get("arms") if isinstance(s.get("arms"), Mapping) else {}
    return {"": s.get("trained_by"), **{arm: a["trained_by"] for arm, a in arms.items()
                                        if isinstance(a, Mapping) and "trained_by" in a
                                        and a["trained_by"] != s.get("trained_by")}}


def _code_text(was: Any) -> str:
    if not isinstance(was, Mapping):
        return "an unrecorded version"
    return f"dm-tune {was.get('dm_tune')} at commit {was.get('git_commit')}"


def _code() -> dict[str, str]:
    """Which dm-tune trained a setting: its version and git commit."""
    from dm_tune.provenance import git_commit, package_versions

    return {"dm_tune": package_versions().get("dm-tune", "unknown"), "git_commit": git_commit()}


def _other_code(entry: Mapping[str, Any]) -> str:
    """"" when ``entry`` was trained by this dm-tune; else which one trained it ("an unrecorded
    version" for an entry written before settings recorded it)."""
    was = entry.get("trained_by")
    return "" if was == _code() else _code_text(was)


def _budget_text(doc: Mapping[str, Any]) -> str:
    """What the arms trained: model and epochs, for all settings or per setting."""
    def budget(s: Mapping[str, Any]) -> str:
        train = next((a.get("train_config") for a in s["arms"].values() if a.get("train_config")), None) or {}
        model = s.get("model") or train.get("model") or "?"
        return f"model {model}, {train['epochs']} epochs" if "epochs" in train else f"model {model}"

    each = {s["setting"]: budget(s) for s in doc["settings"]}
    if len(set(each.values())) == 1:
        return f"Trained: {next(iter(each.values()))}."
    return "Trained: " + "; ".join(f"{k}: {v}" for k, v in each.items()) + "."


def _seeds_text(doc: Mapping[str, Any]) -> str:
    def seeds_of(s: Mapping[str, Any]) -> list[int]:  # an entry of an older progress file: its runs' seeds
        return list(s.get("seeds") or sorted({r["seed"] for a in s["arms"].values() for r in a["runs"]}))

    per = {s["setting"]: seeds_of(s) for s in doc["settings"]}
    if len({tuple(v) for v in per.values()}) > 1:
        return "each setting's seeds (" + "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in per.items()) + ")"
    return "seeds " + ", ".join(map(str, next(iter(per.values()), doc["seeds"])))


def _terminal_table(doc: Mapping[str, Any]) -> str:
    """The table, and the tally per comparison where there are weighted baselines."""
    tally = tally_text(doc)
    return _plain_table(table_rows(doc)) + (f"\n{tally}" if tally else "")


def _plain_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# --- command line ------------------------------------------------------------------------------


def add_validate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``validate``: train the recommendation against CCE and IMAE on new settings."""
    p = subparsers.add_parser(
        "validate", help="train the guidelines' recommendations against CCE and IMAE on a study's settings",
        description="For each setting of a study YAML, recommend DM's knobs from a guidelines file, train "
                    "dm-recommended, cce and imae on every seed (and, where the recommendation weights classes, "
                    "cce-weighted and imae-weighted: cce and imae with that weighting) and compare final test "
                    "accuracies paired by seed.")
    p.add_argument("--config", required=True, action="append", type=path_argument,
                   help="study YAML: settings:, training: and seeds: are used; repeatable (settings of each file)")
    p.add_argument("--guidelines", metavar="FILE", type=path_argument,
                   help="guidelines.json written by 'dm-tune report' (default: the file shipped with dm-tune)")
    p.add_argument("--seeds", type=text_argument("comma-separated seeds"),
                   help="comma-separated seeds (default: the config's seeds)")
    p.add_argument("--epochs", type=int_argument, help="training epochs (overrides training.epochs)")
    p.add_argument("--out", type=path_argument, default="validation", help="output directory (default ./validation)")
    p.add_argument("--threads", type=int_argument, help="CPU threads for torch (default: as dm-tune train, 1 for "
                   "in-memory vector and signal data, else torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=validate_command)
    return p


def _seeds(text: str) -> list[int]:
    try:
        seeds = [read_number(x.strip(), int) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected a comma-separated list of integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: a seed is given twice")
    bad = next((s for s in seeds if not 0 <= s <= SEED_MAX), None)
    if bad is not None:
        raise UserError(f"--seeds {text!r}: seed {bad} is not allowed; expected integers in [0, {SEED_MAX}]")
    return seeds


def validate_command(args: argparse.Namespace) -> int:
    from dm_tune._validate import ConfigError
    from dm_tune.reports._schema import default_guidelines_path, load_guidelines
    from dm_tune.search._study import Study

    studies = []
    for config in args.config:
        try:
            study = Study.from_dict(validate_study(load_yaml(config, "--config")))
        except ConfigError as e:  # which of several files (YAML syntax errors name theirs already)
            if len(args.config) == 1:
                raise
            raise UserError(f"--config {config}: {e}") from None
        if study.task != "classification":
            raise UserError(f"--config {config}: validate compares classification accuracy; "
                            f"this study's task is {study.task!r}")
        studies.append(study)
    from dm_tune.cli import check_threads

    check_threads(args.threads)
    seeds = _seeds(args.seeds) if args.seeds else None  # None: each --config file's own seeds
    if args.epochs is not None:  # the training budget's own range, checked before anything is made
        from dm_tune.config import TrainConfig

        try:
            TrainConfig.from_dict({"epochs": args.epochs})
        except ConfigError as e:
            raise UserError(f"--epochs {args.epochs}: {e.allowed}") from None
    from dm_tune._locks import held, refuse_if_held

    busy = (f"--out {args.out}: another dm-tune validate is writing there ({{holder}}); "
            "wait for it to end or use another --out")
    refuse_if_held(Path(args.out).expanduser() / LOCK_FILE, busy)  # (before the checks' seconds; held decides)
    path = Path(args.guidelines) if args.guidelines else default_guidelines_path()
    guidelines = load_guidelines(path)
    overrides = {"epochs": args.epochs} if args.epochs is not None else {}
    plan, _ = _plan(studies, seeds, overrides, guidelines)
    sources = _preflight(studies, plan, overrides)  # every setting trainable, and once, before any trains
    _recommend_all(plan, overrides, guidelines, f"--guidelines {path}", set(), sources)  # each answered
    out = output_dir("--out", args.out)  # checked before hours of training, not after
    taken = next((n for n in (LOCK_FILE, PROGRESS_FILE, "validation.json", "validation.md")
                  if (out / n).exists() and not (out / n).is_file()), None)
    if taken is not None:
        raise UserError(f"--out {args.out}: {out / taken} is not a file (validate writes it); use another --out")
    with held(out / LOCK_FILE, busy):
        remove_write_leftovers(out, ("validation.json", "validation.md"))
        if (done := _finished_here(args, out, [identity for *_, identity in plan])) is not None:
            print(_terminal_table(done))
            print(f"validation.json: {out / 'validation.json'} (this validation, finished earlier: nothing trained)\n"
                  f"validation.md: {out / 'validation.md'}")
            return 0
        return _validate_into(args, studies, seeds, path, guidelines, out)


def _preflight(studies: list[Any], plan: list[tuple[Any, Any, list[int], str]],
               overrides: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """What dm-tune search checks of a new study (data roots, noise rates and imbalances the data can
    take, fields no trial uses), for every setting at once: a setting refused at its turn came
    after the settings before it had trained (before --out is made). Then: no two planned settings
    train the same thing. Returns the datasets it loaded, by ``id`` of each study, then dataset."""
    from dm_tune.search._preflight import load_sources

    sources = {id(study): load_sources(study, data_root_hint="training.data_root in its --config")
               for study in studies}
    seen: dict[str, Any] = {}
    for one, setting, seeds, _ in plan:
        src = sources[id(one)][setting.dataset]
        config = one.train_config(setting, **overrides).resolve(src.defaults, src.default_model, src.input_kind)
        what = config.to_dict()
        what.pop("seed", None)
        if what.get("noise") not in ("none", "file") and not what.get("noise_rate"):  # (no label flipped)
            what["noise"] = "none"
        text = json.dumps({"config": what, "seeds": list(seeds)}, sort_keys=True, default=str)
        if text in seen:
            first, other = seen[text]
            where = f"studies {other.name!r} and {one.name!r}" if other is not one else f"study {one.name!r}"
            raise UserError(f"settings {first.key} and {setting.key} ({where}) train the same configuration on the "
                            "same seeds (the defaults they leave out, or no label flipped, are the same): they would "
                            "be trained twice and counted twice; validate each once")
        seen[text] = (setting, one)
    return sources


def _finished_here(args: argparse.Namespace, out: Path, identities: list[str]) -> dict[str, Any] | None:
    """The finished validation.json in ``out`` when it is this validation's (the same inputs); None
    when ``out`` holds none. Another validation's results or unfinished progress are refused: a
    second validation into one --out replaced the first one's validation.json."""
    doc_path, progress = out / "validation.json", out / PROGRESS_FILE
    if doc_path.is_file():
        try:
            doc = json.loads(doc_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            doc = None
        if not (isinstance(doc, dict) and doc.get("identities") == identities):
            raise UserError(f"--out {args.out}: holds the results of another validation (validation.json, of other "
                            "inputs or unreadable); use another --out, or move them away to run this one there")
        damage = _damage(doc, identities)
        if damage:  # (a traceback on every rerun, or settings dropped without a word)
            raise UserError(f"--out {args.out}: validation.json is this validation's but damaged ({damage}); move "
                            "it away to train it again there, or restore it")
        lacking = _lacking(doc)
        if lacking:
            # Finished before validate trained the weighted baselines: its settings (well formed, as
            # _damage found them) are kept as progress (those not there already), and the arms they lack train.
            kept = Progress(progress)
            for identity, entry in zip(identities, doc["settings"]):
                if identity not in kept.done:
                    kept.add(identity, entry)
            if not args.quiet:
                print(f"{doc_path}: this validation, finished before validate trained cce and imae with the "
                      f"recommended class weighting: {lacking} setting(s) lack them; they train now, the rest "
                      "is kept", file=sys.stderr, flush=True)
            return None
        # A stop between writing validation.json and the end left validation.md unwritten, or the
        # progress file in place.
        if not (out / "validation.md").exists():
            write_output(out / "validation.md", to_markdown(doc))
        _remove_progress(progress)
        return doc
    ours = set(identities)
    others = len(set(Progress(progress).done) - ours) if progress.is_file() else 0
    if others:
        raise UserError(f"--out {args.out}: holds {others} finished setting(s) of another validation that has not "
                        f"ended ({PROGRESS_FILE}, other inputs); finish it with its own command, or use another --out")
    return None


def well_formed(entry: Any) -> bool:
    """Whether a setting's entry (a progress line's, validation.json's) has what validate reads of
    it: a name, its recommendation, each arm's runs and the summary."""
    arms = entry.get("arms") if isinstance(entry, Mapping) else None
    summary = entry.get("summary") if isinstance(entry, Mapping) else None
    return (isinstance(entry, Mapping) and isinstance(entry.get("setting"), str)
            and isinstance(entry.get("recommendation"), Mapping) and isinstance(arms, Mapping)
            and all(isinstance(a, Mapping) and isinstance(a.get("runs"), list) for a in arms.values())
            and isinstance(summary, Mapping) and isinstance(summary.get("arms"), Mapping)
            and isinstance(summary.get("vs"), Mapping))


def _damage(doc: Mapping[str, Any], identities: list[str]) -> str | None:
    """What is wrong with a validation.json whose identities are this validation's, or None."""
    settings = doc.get("settings")
    if not isinstance(settings, list) or len(settings) != len(identities):
        return (f"it names {len(identities)} settings but holds "
                + (f"{len(settings)}" if isinstance(settings, list) else "no list of them"))
    bad = next((i for i, entry in enumerate(settings) if not well_formed(entry)), None)
    return None if bad is None else f"settings[{bad}] lacks what validate writes (its arms, runs or summary)"


def _lacking(doc: Mapping[str, Any]) -> int:
    """How many settings of a validation document lack weighted baselines they are due."""
    settings = doc.get("settings")
    return sum(1 for s in settings if isinstance(s, Mapping) and missing_arms(s)) if isinstance(settings, list) else 0


def _validate_into(args: argparse.Namespace, studies: list[Any], seeds: list[int] | None, path: Path,
                   guidelines: dict[str, Any], out: Path) -> int:
    """The validation proper, run while this process holds ``out``."""
    progress = Progress(out / PROGRESS_FILE)
    doc = validate(studies, guidelines, seeds, args.epochs, args.quiet, progress, f"--guidelines {path}",
                   recommended=True, threads=args.threads)
    doc = {**doc, "config": [str(Path(c).resolve()) for c in args.config], "guidelines": str(path.resolve()),
           "study": [s.to_dict() for s in studies], "provenance": _provenance()}
    write_output(out / "validation.json", json_text(doc))
    write_output(out / "validation.md", to_markdown(doc))
    progress.release()  # this validation's settings are all in validation.json now
    print(_terminal_table(doc))
    print(f"validation.json: {out / 'validation.json'}\nvalidation.md: {out / 'validation.md'}")
    return 0


def _plain(value: Any) -> Any:
    """JSON for what json does not know (numpy scalars and arrays in a recommendation's fields)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _number(value: Any) -> float:
    """A number of a validation document: null (validation.json's NaN, as standard JSON) is NaN."""
    return math.nan if value is None else float(value)


def _provenance() -> dict[str, Any]:
    from dm_tune.provenance import provenance

    return provenance()
