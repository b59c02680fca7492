"""Per-setting analysis: pure functions of the tidy runs DataFrame (see ``load_runs``).

Every accuracy these functions return is in percentage points (the DataFrame holds fractions).
A *setting* is one (dataset, noise type, noise rate, imbalance, model) combination; an *arm* is
one configuration (a baseline, or one DM (lam, beta)) across seeds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from dm_tune.reports._load import IN_PROGRESS
from dm_tune.reports._paper import compare_with_paper, paper_guidance

SETTING_KEYS = ("dataset", "noise", "noise_rate", "imbalance", "imbalance_ratio", "model", "num_classes",
                "pretrained", "task")  # task: classification, or retrieval (scores are then mAP, see _load)
POINTS = 100.0               # fractions -> percentage points
REGION_POINTS = 1.0          # configurations this close to the best (validation, points) form its region
MIN_IMPORTANCE_CONFIGS = 8   # fANOVA on fewer searched configurations is noise (seeds of one are not more)
NEAR_PAPER_PSI = 0.05        # a trial "tested the paper's mode" when its psi is this close
STATUS_KEYS = {"finished": "finished", "": "finished", "diverged": "diverged",
               "early-stopped": "early_stopped", "errored": "errored",
               **{status: "in_progress" for status in IN_PROGRESS}}


def usable(df: pd.DataFrame) -> pd.DataFrame:
    """Finished runs with both final accuracies (early-stopped, diverged, errored are kept apart)."""
    ok = df["status"].isin(["finished", ""]) & df["final_val_acc"].notna() & df["final_test_acc"].notna()
    return df[ok]


def dm_configs(df: pd.DataFrame) -> pd.DataFrame:
    """Runs of searched/confirmed DM configurations (not the DM-family baselines dm-beta0, imae)."""
    return df[(df["method"] == "dm") & (df["baseline"] == "")]


def status_counts(df: pd.DataFrame) -> dict[str, int]:
    """How the trainings of ``df`` ended; ``reused``: confirm-stage records of a search trial's run
    (same configuration and seed, not trained again), counted apart from them."""
    reused = df["reused_from"] != "" if "reused_from" in df else pd.Series(False, index=df.index)
    counts = {"finished": 0, "diverged": 0, "early_stopped": 0, "errored": 0, "in_progress": 0,
              "reused": int(reused.sum())}
    for status, n in df.loc[~reused, "status"].value_counts().items():
        key = STATUS_KEYS.get(str(status), "errored")
        counts[key] += int(n)
    return counts


def summarize_arms(df: pd.DataFrame) -> pd.DataFrame:
    """Usable runs grouped by (setting, stage, arm): means and sample stds over seeds, in points.

    ``n`` counts the distinct seeds that finished, ``n_attempted`` those the arm was run on (any
    status): an arm with ``n < n_attempted`` diverged, errored, was stopped or is still running on
    some seed.
    """
    runs = usable(df)
    cols = ["setting", "stage", "arm", "baseline", "method", "lam", "beta", "psi", "rho", "class_weighting", "n",
            "n_attempted", "val_mean", "val_std", "test_mean", "test_std", "best_test_mean"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    keys = ["setting", "stage", "arm"]
    grouped = runs.groupby(keys, sort=True, dropna=False)
    out = grouped.agg(baseline=("baseline", "first"), method=("method", "first"), lam=("lam", "first"),
                      beta=("beta", "first"), psi=("psi", "first"), rho=("rho", "first"),
                      class_weighting=("class_weighting", "first"), n=("seed", _seeds),
                      val_mean=("final_val_acc", "mean"),
                      val_std=("final_val_acc", "std"), test_mean=("final_test_acc", "mean"),
                      test_std=("final_test_acc", "std"), best_test_mean=("best_test_acc", "mean"))
    out["n_attempted"] = df.groupby(keys, sort=True, dropna=False)["seed"].agg(_seeds).reindex(out.index)
    for col in ("val_mean", "val_std", "test_mean", "test_std", "best_test_mean"):
        out[col] = out[col] * POINTS
    return out.reset_index()[cols]


def _seeds(seeds: pd.Series) -> int:
    """Distinct seeds (a run without a logged seed counts as one of its own)."""
    return int(seeds.nunique() + seeds.isna().sum())


def confirmed_arms(df: pd.DataFrame) -> set[str]:
    """The DM configurations run in the confirm stage, whatever became of them."""
    dm = dm_configs(df)
    return set(dm.loc[dm["stage"] == "confirm", "arm"])


def best_dm_arm(arms: pd.DataFrame, confirmed: set[str] | frozenset[str] = frozenset()) -> tuple[pd.Series | None, str]:
    """The DM arm with the highest mean final validation accuracy among those that finished on every
    seed they were run on: confirm stage, else search stage. Arms that diverged, errored or were
    stopped on some seed are chosen from only when no arm of the stage finished everywhere (said in
    the note): one lucky seed of an unstable configuration is not a recommendation. ``confirmed``
    (``confirmed_arms``): configurations confirmed whatever became of them; one that finished no
    confirm seed has no confirm arm, and its search trials do not speak for it."""
    dm = arms[(arms["method"] == "dm") & (arms["baseline"] == "")]
    dm = dm[(dm["stage"] == "confirm") | ~dm["arm"].isin(list(confirmed))]
    fallback = ("the confirmed arms finished no seed: chosen from search trials not confirmed (fewer seeds, less "
                "reliable)" if confirmed else "no confirm-stage runs: chosen from search trials (fewer seeds, less "
                "reliable)")
    for stage, note in (("confirm", ""), ("search", fallback)):
        candidates = dm[dm["stage"] == stage]
        if candidates.empty:
            continue
        complete = candidates[candidates["n"] >= candidates["n_attempted"]]
        if complete.empty:
            incomplete = (f"no {stage}-stage DM arm finished on every seed: chosen among arms that "
                          "diverged, errored, were stopped or are still running on some")
            note = f"{note}; {incomplete}" if note else incomplete
        else:
            candidates = complete
        # Ties (validation accuracy moves in steps of 1/n_val) go to more seeds, then the smaller std over
        # seeds, then the smaller lambda, beta, class weighting: the search's summary breaks them so too.
        keys = {"val_key": False, "n": False, "val_std": True, "lam": True, "beta": True, "class_weighting": True}
        ranked = candidates.assign(val_key=candidates["val_mean"].round(6)).sort_values(
            list(keys), ascending=list(keys.values()), na_position="last", kind="stable")
        return ranked.iloc[0].drop("val_key"), note
    return None, "no finished DM runs"


def region(arms: pd.DataFrame, runs: pd.DataFrame, best: pd.Series, within: float = REGION_POINTS,
           confirmed: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Ranges of psi and rho over the DM configurations within ``within`` points of the best arm's
    validation accuracy, each compared with the best on the same seeds (a configuration searched on
    seeds 0 and 1 against the best's mean over 0 and 1, not over all its confirm seeds).

    ``runs``: the usable runs of DM configurations. A configuration measured in both stages counts
    once (its confirm-stage arm); one that did not finish on every seed it was run on is left out,
    as it is from the choice of the best (``best_dm_arm``); ``confirmed``: the configurations run
    in the confirm stage whatever became of them (one that diverged on every confirm seed has no
    confirm arm, and its search arm does not speak for it)."""
    dm = arms[(arms["method"] == "dm") & (arms["baseline"] == "") & arms["psi"].notna() & arms["rho"].notna()]
    dm = dm.sort_values("stage", kind="stable").drop_duplicates("arm")  # "confirm" sorts before "search"
    is_best = (dm["stage"] == best["stage"]) & (dm["arm"] == best["arm"])
    judged_elsewhere = (dm["stage"] == "search") & dm["arm"].isin(list(confirmed))
    dm = dm[((dm["n"] >= dm["n_attempted"]) & ~judged_elsewhere) | is_best]  # its confirm arm decides
    best_by_seed = _arm_by_seed(runs, best)
    near = [i for i, a in dm.iterrows()
            if a["val_mean"] >= _on_seeds(best_by_seed, _arm_by_seed(runs, a).index, best["val_mean"]) - within - 1e-9]
    near_arms = dm.loc[near]
    return {"psi_range": [float(near_arms["psi"].min()), float(near_arms["psi"].max())],
            "rho_range": [float(near_arms["rho"].min()), float(near_arms["rho"].max())],
            "n_configs": int(len(near_arms))}


def _arm_by_seed(runs: pd.DataFrame, arm: pd.Series, column: str = "final_val_acc") -> pd.Series:
    """An arm's ``column`` (final validation accuracy by default) per seed, in points (usable runs of its stage)."""
    own = runs[(runs["stage"] == arm["stage"]) & (runs["arm"] == arm["arm"])]
    return own.groupby("seed")[column].mean() * POINTS


def _on_seeds(by_seed: pd.Series, seeds: pd.Index, otherwise: float) -> float:
    """The mean of ``by_seed`` over ``seeds`` (paired with an arm run on them), or ``otherwise``
    when it lacks one of them."""
    if len(seeds) and seeds.isin(by_seed.index).all():
        return float(by_seed[seeds].mean())
    return otherwise


def example_step(runs: pd.DataFrame) -> float:
    """One test example's worth of accuracy, in points, for ``runs`` of one setting (the least spread
    a verdict takes, as ``dm-tune validate`` takes it: identical per-seed differences of one example
    are no certainty); 0 for retrieval (mAP moves in no such steps) or runs that did not record the
    test set's size (``test_examples``: runs of an earlier dm-tune)."""
    if "test_examples" not in runs or (runs["task"] == "retrieval").any():
        return 0.0
    sizes = runs["test_examples"].dropna()
    sizes = sizes[sizes >= 1]
    return POINTS / float(sizes.min()) if len(sizes) else 0.0


def compare_baselines(dm_runs: pd.DataFrame, baseline_runs: pd.DataFrame,
                      step: float = 0.0) -> dict[str, dict[str, Any]]:
    """DM's final test accuracy against each baseline's, in points; runs of any status (a diverged
    run is a seed that did not finish; errored and early-stopped ones are left out).

    Over the seeds both finished the difference is paired by seed (std: the sample std of the
    per-seed differences, none for one seed) and judged as ``dm-tune validate`` judges it
    (``verdict``: wins / loses when the paired 95% t interval of the mean difference excludes 0,
    else within noise; undetermined with one seed; an arm that did not finish on a seed where the
    other did loses; the spread taken at least ``step``, one test example's worth: ``example_step``).
    With no such seed (the two arms ran on other seeds) it is unpaired (std =
    sqrt(s_dm^2 + s_base^2), the spread of one draw's difference; verdict "unpaired" unless a
    failure decides).
    """
    from dm_tune.validate import paired_comparison

    dm = _by_seed(dm_runs)
    dm_ok = pd.Series({s: v for s, v in dm.items() if math.isfinite(v)}, dtype=float)
    out: dict[str, dict[str, Any]] = {}
    for name, runs in baseline_runs.groupby("baseline", sort=True):
        by_seed = _by_seed(runs)
        base = pd.Series({s: v for s, v in by_seed.items() if math.isfinite(v)}, dtype=float)
        c = paired_comparison(dm, by_seed, step)
        paired = c["n"] >= 1
        if paired:
            mean_diff, std, n = c["mean_diff"], c["std"], c["n"]
        else:
            mean_diff = float(dm_ok.mean() - base.mean())
            std = math.sqrt(_var(dm_ok) + _var(base)) if len(dm_ok) > 1 and len(base) > 1 else math.nan
            n = min(len(dm_ok), len(base))
        decided = c["verdict"] if paired or c["a_failed"] or c["b_failed"] else "unpaired"
        out[str(name)] = {"baseline_mean": _nan_to_none(float(base.mean())) if len(base) else None,
                          "baseline_std": _std(base), "baseline_n": len(base),
                          "mean_diff": mean_diff, "std": std, "n": int(n), "paired": paired, "verdict": decided,
                          "did_not_finish": {"dm": c["a_failed"], str(name): c["b_failed"]}}
    return out


def _by_seed(runs: pd.DataFrame) -> dict[Any, float]:
    """Final test accuracy per seed in points; NaN for a seed whose run diverged (the method's
    failure; an errored run, a crash of the machinery, is a seed with no result)."""
    ok = runs["status"].isin(["finished", ""]) & runs["final_test_acc"].notna()
    values = (runs[ok].groupby("seed")["final_test_acc"].mean() * POINTS).to_dict()
    failed = runs.loc[runs["status"] == "diverged", "seed"].dropna()
    out = {**{s: math.nan for s in failed if s not in values}, **values}
    return {int(s) if float(s).is_integer() else s: v for s, v in out.items()}


def trained_weightings(trials: pd.DataFrame) -> pd.Series:
    """Each run's class weighting as it trained (``effective_weighting``: on balanced data every
    scheme weighs each class 1, so "none" whatever the arm was labelled)."""
    from dm_tune.reports._surface import effective_weighting

    rows = trials[[c for c in ("imbalance", "class_weighting") if c in trials]].to_dict("records")
    return pd.Series([effective_weighting(r) for r in rows], index=trials.index, dtype=object)


def _points(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with psi and rho rounded (one value read back from (lam, beta) as two one ulp apart
    is one) and ``cw``, the class weighting each trained with."""
    return trials.assign(psi=trials["psi"].round(9), rho=trials["rho"].round(9), cw=trained_weightings(trials))


def _configurations(trials: pd.DataFrame) -> int:
    """Distinct (psi, rho, class weighting) among ``trials`` (a configuration's seeds are one point
    of the space)."""
    return int(len(_points(trials)[["psi", "rho", "cw"]].drop_duplicates()))


def _configuration_means(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (psi, rho, cw, as in ``_configurations``) with the mean final
    validation accuracy of its seeds: a configuration is one point of the space, however many seeds
    it ran on."""
    return _points(trials).groupby(["psi", "rho", "cw"], as_index=False)["final_val_acc"].mean()


def param_importance(trials: pd.DataFrame) -> dict[str, Any]:
    """fANOVA importance of psi vs rho (and the class weighting, where the search varied it: else
    ``class_weighting`` is None) for final validation accuracy over search-stage DM trials, each
    configuration one point (its seeds' mean); ``n`` counts the trials, ``n_configs`` the
    configurations (what the minimum is about)."""
    trials = trials[trials["psi"].notna() & trials["rho"].notna()]
    n, configs = int(len(trials)), _configurations(trials)
    if configs < MIN_IMPORTANCE_CONFIGS:
        return {"status": "insufficient", "n": n, "n_configs": configs,
                "reason": f"{configs} searched configurations < {MIN_IMPORTANCE_CONFIGS} needed"}
    trials = _configuration_means(trials)
    for col, what in (("psi", "psi"), ("rho", "rho"), ("final_val_acc", "validation accuracy")):
        if trials[col].nunique() < 2:
            return {"status": "insufficient", "n": n, "n_configs": configs, "reason": f"{what} did not vary"}
    import optuna  # heavy import, only where it is used
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.importance import FanovaImportanceEvaluator

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists: dict[str, Any] = {k: FloatDistribution(float(trials[k].min()), float(trials[k].max()))
                             for k in ("psi", "rho")}
    schemes = sorted(trials["cw"].unique())
    if len(schemes) > 1:
        dists["class_weighting"] = CategoricalDistribution(schemes)
    study = optuna.create_study(direction="maximize")
    for psi, rho, cw, val in zip(trials["psi"], trials["rho"], trials["cw"], trials["final_val_acc"]):
        params = {"psi": float(psi), "rho": float(rho), "class_weighting": str(cw)}
        study.add_trial(optuna.trial.create_trial(params={k: params[k] for k in dists}, distributions=dists,
                                                  value=float(val)))
    scores = optuna.importance.get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                                     params=list(dists))
    return {"status": "ok", "n": n, "n_configs": configs, "psi": float(scores.get("psi", 0.0)),
            "rho": float(scores.get("rho", 0.0)),
            "class_weighting": float(scores.get("class_weighting", 0.0)) if len(schemes) > 1 else None}


def sensitivity(trials: pd.DataFrame, max_bins: int = 4, weighting: str | None = None) -> dict[str, Any]:
    """Per knob, the range (max - min) over quantile bins of the configurations' mean final
    validation accuracy, in points: each configuration (its seeds averaged) one point, at least two
    a bin (with one, both knobs' ranges were that of the configurations themselves, the same
    number), none below four configurations. (Binned by trials, a configuration run on more seeds
    moved the edges and weighed more: it could fill a bin alone.) Where the search varied the class
    weighting, psi's and rho's ranges are over the configurations of ``weighting`` alone (the best
    arm's: else a weighting's gain read as the knobs'), and ``class_weighting`` is the range of the
    weightings' mean over their configurations (None where one weighting was searched)."""
    trials = trials[trials["psi"].notna() & trials["rho"].notna()]
    n, configs = int(len(trials)), _configurations(trials)
    out: dict[str, Any] = {"n": n, "n_configs": configs, "metric": "final validation accuracy", "psi": None,
                           "rho": None, "class_weighting": None, "within_class_weighting": None}
    if configs < 4:
        return out
    # (rounded: one value read back from (lam, beta) as two one ulp apart is one configuration and
    # shares a bin, whichever side of a quantile edge each falls; pandas 2 and 3 put the edges differently)
    points = _configuration_means(trials)
    if points["cw"].nunique() > 1:
        means = points.groupby("cw")["final_val_acc"].mean() * POINTS
        out["class_weighting"] = float(means.max() - means.min())
        if weighting is None or weighting not in set(points["cw"]):
            return out
        points = points[points["cw"] == weighting]
        out["within_class_weighting"] = weighting
        if len(points) < 4:
            return out
    for knob in ("psi", "rho"):
        bins = pd.qcut(points[knob], q=min(max_bins, len(points) // 2), duplicates="drop")
        means = points.groupby(bins, observed=True)["final_val_acc"].mean() * POINTS
        out[knob] = float(means.max() - means.min()) if len(means) > 1 else 0.0
    return out


def analyse_setting(df: pd.DataFrame) -> dict[str, Any]:
    """Everything the report says about one setting (``df``: that setting's runs, all stages/statuses)."""
    first = df.iloc[0]
    out: dict[str, Any] = {"setting": str(first["setting"])}
    out.update({k: _plain(first[k]) for k in SETTING_KEYS})
    out["num_classes"] = None if out["num_classes"] is None else int(out["num_classes"])
    # The training budget of the setting's runs (what a comparison of two runs of a campaign must share).
    epochs = sorted({int(e) for e in df["epochs"].dropna()})
    out["epochs"] = epochs[0] if len(epochs) == 1 else (epochs or None)
    out["counts"] = status_counts(df)
    out["counts_by_stage"] = {str(s): status_counts(g) for s, g in df.groupby("stage", sort=True)}
    arms = summarize_arms(df)
    confirmed = confirmed_arms(df)
    best, note = best_dm_arm(arms, confirmed)
    if best is None:
        out.update(status="no-dm-results", note=note)
        return out
    chosen = usable(dm_configs(df))
    best_runs = chosen[(chosen["stage"] == best["stage"]) & (chosen["arm"] == best["arm"])]
    ended = df[~df["status"].isin(("early-stopped", *IN_PROGRESS))]  # failures count (compare_baselines)
    baselines = ended[ended["baseline"] != ""]
    if (baselines["stage"] == "confirm").any():
        baselines = baselines[baselines["stage"] == "confirm"]
    search = chosen[chosen["stage"] == "search"]
    out.update(status="ok", stage=str(best["stage"]), stage_note=note, arm=str(best["arm"]),
               lam=float(best["lam"]), beta=float(best["beta"]), psi=float(best["psi"]), rho=float(best["rho"]),
               class_weighting=str(best["class_weighting"]),
               val_acc_mean=float(best["val_mean"]), test_acc_mean=float(best["test_mean"]),
               test_acc_std=_nan_to_none(best["test_std"]), n_seeds=int(best["n"]),
               best_test_acc_mean=_nan_to_none(best["best_test_mean"]),
               run_ids=[str(r) for r in best_runs["run_id"]])
    if out["task"] == "retrieval":  # CMC of the recommended arm, beside its mAP
        out.update({f"test_{k}_mean": _nan_to_none(best_runs[f"final_test_{k}"].mean() * POINTS)
                    for k in ("rank1", "rank5", "rank10")})
    every = dm_configs(ended)
    out.update(region(arms, chosen, best, confirmed=confirmed))
    best_every = every[(every["stage"] == best["stage"]) & (every["arm"] == best["arm"])]  # its failures count too
    step = example_step(df)
    out["vs_baselines"] = compare_baselines(best_every, baselines, step)
    out["importance"] = param_importance(search)
    weighting = str(trained_weightings(best_runs.head(1)).iloc[0]) if len(best_runs) else None
    out["sensitivity"] = sensitivity(search, weighting=weighting)
    if out["task"] == "retrieval":
        out["sensitivity"]["metric"] = "final validation mAP"
    gap, clear = _paper_psi_gap(out, chosen, best, confirmed, step)
    out["paper_comparison"] = compare_with_paper(out, gap, clear, None if gap is not None else
                                                 _near_paper_unfinished(out, dm_configs(df), best))
    return out


def analyse_settings(df: pd.DataFrame) -> list[dict[str, Any]]:
    """``analyse_setting`` for every setting, ordered by dataset, noise, noise rate, imbalance, model."""
    results = [analyse_setting(g) for _, g in df.groupby("setting", sort=True)]
    return sorted(results, key=lambda r: (str(r["dataset"]), str(r["noise"]), r["noise_rate"] or 0.0,
                                          str(r["imbalance"]), r["imbalance_ratio"] or 1.0, str(r["model"])))


def _near_paper_unfinished(setting: dict[str, Any], runs: pd.DataFrame, best: pd.Series) -> dict[str, int]:
    """The runs near the paper's mode (with the best arm's class weighting, as ``_paper_psi_gap``
    pairs them) that did not finish, counted by status: early-stopped by ASHA, diverged, ..."""
    guide = paper_guidance(setting["noise"], setting["noise_rate"], setting["num_classes"], setting["pretrained"])
    if guide["psi"] is None or setting.get("task") == "retrieval":
        return {}
    near = runs[runs["psi"].notna() & ((runs["psi"] - guide["psi"]).abs() <= NEAR_PAPER_PSI)
                & (runs["class_weighting"] == best["class_weighting"]) & ~runs["status"].isin(["finished", ""])]
    return {str(k): int(v) for k, v in near["status"].value_counts().items()}


def _paper_psi_gap(setting: dict[str, Any], chosen: pd.DataFrame, best: pd.Series,
                   confirmed: set[str] | frozenset[str] = frozenset(), step: float = 0.0
                   ) -> tuple[float | None, bool | None]:
    """How many points of final *test* accuracy the best arm beats the trials near the paper's mode
    by (None: none tried), and whether that gap is beyond seed noise, as ``dm-tune validate`` judges
    one: True (its paired 95% t interval excludes 0), False (it does not), None (not tested: fewer
    than 2 seeds shared with the best arm).

    Both sides are chosen on validation (the best arm, and among the arms near the paper's mode
    with the best arm's class weighting the one closest to it, paired over the seeds both ran, as
    in ``region``) and measured on test: the best of many arms on validation leads any other there
    by more than it truly does (the winner's curse), and the test set chose nothing. A configuration
    run in the confirm stage is judged by its confirm arm, not by its search trials (fewer seeds:
    their gap could never be beyond noise)."""
    from dm_tune.validate import paired_comparison

    guide = paper_guidance(setting["noise"], setting["noise_rate"], setting["num_classes"], setting["pretrained"])
    if guide["psi"] is None or setting.get("task") == "retrieval":
        return None, None
    near = chosen[((chosen["psi"] - guide["psi"]).abs() <= NEAR_PAPER_PSI)
                  & (chosen["class_weighting"] == best["class_weighting"])]  # (else the gap is the weighting's)
    best_val = _arm_by_seed(chosen, best).to_dict()
    best_test = _arm_by_seed(chosen, best, "final_test_acc").to_dict()
    gaps: list[tuple[float, float, bool | None]] = []  # (validation gap: chooses; test gap, beyond noise: report)
    for (stage, name), arm in near.groupby(["stage", "arm"]):
        if stage == "search" and name in confirmed and not (stage == best["stage"] and name == best["arm"]):
            continue  # its confirm arm decides
        val = (arm.groupby("seed")["final_val_acc"].mean() * POINTS).to_dict()
        test = (arm.groupby("seed")["final_test_acc"].mean() * POINTS).to_dict()
        on_val, on_test = paired_comparison(best_val, val), paired_comparison(best_test, test, step)
        if on_test["n"]:
            clear = on_test["verdict"] == "wins" if on_test["n"] >= 2 else None
            gaps.append((float(on_val["mean_diff"]), float(on_test["mean_diff"]), clear))
        else:  # no seed in common: against the best arm's means, untested
            gaps.append((float(setting["val_acc_mean"]) - sum(val.values()) / len(val),
                         float(setting["test_acc_mean"]) - sum(test.values()) / len(test), None))
    if not gaps:
        return None, None
    _, gap, clear = min(gaps, key=lambda g: g[0])
    return gap, clear


def _var(s: pd.Series) -> float:
    return float(s.var(ddof=1))


def _std(s: pd.Series) -> float | None:
    return float(s.std(ddof=1)) if len(s) > 1 else None


def _nan_to_none(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _plain(x: Any) -> Any:
    """numpy scalars -> Python scalars (numbers as float, NaN as None), for JSON."""
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, np.floating, float, int)):
        x = float(x)
        return None if math.isnan(x) else x
    return x


def recommended_run_ids(df: pd.DataFrame) -> list[str]:
    """Run ids of each setting's recommended DM arm (cheap: no importance fit), e.g. to fetch their histories."""
    arms = summarize_arms(df)
    chosen = usable(dm_configs(df))
    ids: list[str] = []
    for setting, setting_arms in arms.groupby("setting", sort=True):
        best, _ = best_dm_arm(setting_arms, confirmed_arms(df[df["setting"] == setting]))
        if best is not None:
            runs = chosen[(chosen["setting"] == setting) & (chosen["stage"] == best["stage"])
                          & (chosen["arm"] == best["arm"])]
            ids.extend(str(r) for r in runs["run_id"])
    return ids
