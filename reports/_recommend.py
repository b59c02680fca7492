"""recommend(): DM hyper-parameters for a new setting, from a guidelines document.

Classification: the response surface fitted across the measured settings (``surface``, see
_surface.py) gives the best predicted (psi, rho, class weighting), the region within 1 point, the
predicted gain over CCE with a 95% interval and the settings it leans on.

Retrieval, or a document without a surface: narrow the measured settings step by step (noise type, then the nearest class count, then the
imbalance), then interpolate psi and rho linearly in noise rate between the two nearest measured
rates; outside the measured range use the nearest one and warn. Clean settings (rate 0) count
as the rate-0 end of every noise type.
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from dm_tune._names import (DATASET_NAMES, FIXED_CLASSES, IMBALANCE_KINDS, IMBALANCE_RATIO_MAX, rate_limit, task_of,
                            wrong_label_fraction)
from dm_tune._param import beta_from_rho, lambda_from_mode
from dm_tune.errors import UserError
from dm_tune.reports._text import (FILE_RATE_TOLERANCE, analysis_note, fmt_diff, fraction_warning, num_text,
                                   setting_label, settings_text)

NO_SURFACE = ("no response surface for this task in the guidelines: (psi, rho) interpolated between the measured "
              "settings' best arms, without a predicted gain or region")

# dm_tune.noise.NOISE_MODELS by name (that module imports numpy; recommend stays light).
NOISE_TYPES = ("none", "symmetric", "pair", "cifar100-superclass", "file")
# A setting's task (settings written before retrieval existed have none: classification).
# Retrieval settings are never mixed with classification ones.
TASKS = ("classification", "retrieval")
MAX_CLASSES = 10**9  # classes (or identities) of one dataset: far beyond any real one


@dataclass(frozen=True)
class Recommendation:
    """DM hyper-parameters in both parametrisations, the settings they rest on and any warnings."""

    lam: float
    beta: float
    psi: float
    rho: float
    evidence: str
    settings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    class_weighting: str = "none"
    # From the surface: each class weighting's best cautious gain minus none's, in points.
    class_weighting_gain: dict[str, float] | None = None
    # From the surface (None when interpolated): {"psi": [lo, hi], "rho": [lo, hi], "plausible":
    # {"psi": .., "rho": ..}, "within_points": 1.0}; {"mean", "low", "high", "level", "metric"} in points
    # of final validation accuracy over CCE (as leans_on's best_gain: the surface is fitted on validation).
    region: dict[str, Any] | None = None
    predicted_gain: dict[str, Any] | None = None
    predicted_std: float | None = None
    surface_std: float | None = None     # the surface's own std at the point (run-to-run noise left out)
    leans_on: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recommend(guidelines: dict[str, Any], num_classes: int, noise_type: str, noise_rate: float,
              imbalance: str = "none", imbalance_ratio: float = 1.0,
              task: str = "classification", dataset: str | None = None) -> Recommendation:
    """DM (lam, beta), (psi, rho) and class weighting for the given data: from the response surface
    for classification, else interpolated from measured settings of the same task (for retrieval,
    ``num_classes`` counts the identities of the training split). ``dataset``: the name of a
    measured dataset, when the data is one (interpolation then draws on its settings alone)."""
    _check_inputs(num_classes, noise_type, noise_rate, imbalance, imbalance_ratio, task=task, dataset=dataset)
    num_classes, noise_rate, imbalance_ratio = int(num_classes), float(noise_rate), float(imbalance_ratio)  # (numpy's)
    if not isinstance(guidelines, Mapping):
        raise UserError(f"guidelines must be a guidelines document (a mapping, as load_guidelines reads one), "
                        f"got {type(guidelines).__name__}")
    from dm_tune.reports._schema import validate_guidelines
    from dm_tune.reports._stability import check_doc

    problem = validate_guidelines(guidelines)
    if problem:
        raise UserError(f"the guidelines: {problem}")
    check_doc(guidelines, "the guidelines")  # (as stability and load_guidelines check it)
    rec = _recommend(guidelines, num_classes, noise_type, noise_rate, imbalance, imbalance_ratio, task, dataset)
    note = analysis_note(guidelines.get("analysis_version", 1))
    if note:
        rec.warnings.insert(0, note)
    return rec


def _recommend(guidelines: Mapping[str, Any], num_classes: int, noise_type: str, noise_rate: float, imbalance: str,
               imbalance_ratio: float, task: str, dataset: str | None) -> Recommendation:
    surface = guidelines.get("surface")
    _check_dataset_case(dataset, {s.get("dataset") for s in guidelines.get("settings") or []}
                        | set((surface or {}).get("encoding", {}).get("datasets") or []))
    if surface and surface.get("task") == task:
        return _from_surface(surface, num_classes, noise_type, noise_rate, imbalance, imbalance_ratio, dataset)
    settings = guidelines.get("settings") or []
    if not settings:
        raise UserError("the guidelines contain no measured settings to recommend from")
    others = sorted({str(s.get("task", "classification")) for s in settings} - {task})
    settings = [s for s in settings if s.get("task", "classification") == task]
    if not settings:
        raise UserError(f"the guidelines contain no {task} settings; run a {task} study, then "
                        "'dm-tune report', and pass its guidelines.json with --guidelines"
                        + (f" (they hold {' and '.join(others)} settings only: for {others[0]} data, ask with "
                           f"--task {others[0]})" if others else ""))
    warnings: list[str] = [NO_SURFACE]
    if dataset is not None:  # (was ignored here: the surface's alone)
        mine = [s for s in settings if s.get("dataset") == dataset]
        if not mine:
            measured = sorted({str(s.get("dataset")) for s in settings})
            warnings.append(f"dataset {dataset!r} was not measured (measured: {', '.join(measured)}); recommending "
                            "from the others")
        settings = mine or settings
    if noise_rate and not any(s["noise"] == noise_type for s in settings):
        # a type not measured: read against the others at its fraction of wrong labels (cifar100-superclass
        # at dm-tune train's rate 0.4 makes 16% wrong); the try: line keeps the rate as asked
        said = fraction_warning(noise_type, noise_rate)
        if said:
            warnings.append(said)
        noise_rate = wrong_label_fraction(noise_type, noise_rate)
    pool = _by_noise_type(settings, noise_type, noise_rate, warnings)
    pool = _nearest(pool, "num_classes", num_classes, "number of classes", warnings)
    same = [s for s in pool if s["imbalance"] == imbalance]
    if not same:
        measured = sorted({s["imbalance"] for s in pool})
        warnings.append(f"imbalance {imbalance!r} was not measured here (measured: {', '.join(measured)}); "
                        "ignoring imbalance")
    elif noise_rate and all(_is_clean(s) for s in same) and not all(_is_clean(s) for s in pool):
        # (else noisy data got the clean arm, the noisy settings measured dropped, "outside [0, 0]")
        warnings.append(f"imbalance {imbalance!r} was measured here on clean labels only; ignoring imbalance, "
                        "so that the noise rate is read from the noisy settings measured")
        same = []
    pool = same or pool
    if same:
        pool = _nearest(pool, "imbalance_ratio", imbalance_ratio, "imbalance ratio", warnings)
    psi, rho, used, how = _interpolate(pool, noise_rate, warnings)
    lam = lambda_from_mode(min(max(psi, 0.0), 0.999))
    beta = beta_from_rho(rho, lam)
    evidence = how + "; " + "; ".join(_evidence_line(s) for s in used)
    return Recommendation(lam=lam, beta=beta, psi=psi, rho=rho, evidence=evidence,
                          settings=[str(s.get("setting", setting_label(s))) for s in used], warnings=warnings,
                          class_weighting=_measured_weighting(used, noise_rate, warnings))


def _measured_weighting(used: list[dict[str, Any]], rate: float, warnings: list[str]) -> str:
    """The class weighting of the measured best arms the recommendation rests on; where they differ,
    that of the setting nearest in noise rate (said in a warning)."""
    # On balanced data every scheme weights every class alike: "none", whatever the arm was labelled.
    weightings = [str(s.get("class_weighting", "none")) if s.get("imbalance", "none") != "none" else "none"
                  for s in used]
    if len(set(weightings)) <= 1:
        return weightings[0] if weightings else "none"
    nearest = min(range(len(used)), key=lambda i: abs(float(used[i]["noise_rate"]) - rate))
    chosen = weightings[nearest]
    warnings.append(f"the settings this rests on chose different class weightings ({', '.join(sorted(set(weightings)))}); "
                    f"using {chosen!r}, that of the nearest in noise rate")
    return chosen


def _from_surface(surface: dict[str, Any], num_classes: int, noise_type: str, noise_rate: float, imbalance: str,
                  imbalance_ratio: float, dataset: str | None) -> Recommendation:
    from dm_tune.reports._surface import (arms_phrase, best_weighting,  # numpy inside: recommend stays light
                                          recommend_from_surface)

    try:
        r = recommend_from_surface(surface, num_classes, noise_type, noise_rate, imbalance, imbalance_ratio, dataset)
    except (ArithmeticError, IndexError, KeyError, TypeError, ValueError) as e:  # numpy's LinAlgError is a ValueError
        raise UserError(f"the guidelines' surface block cannot be used ({type(e).__name__}: {e}); write it again "
                        "with 'dm-tune report'") from None
    gain = r["predicted_gain"]
    lines = [f"{setting_label(s)}: correlation {s['correlation']:.2f}, measured best "
             f"{s['best_gain']:+.1f} points over CCE (validation), class weighting {best_weighting(s)}"
             for s in r["leans_on"]]
    evidence = (f"response surface over {settings_text(len(surface['settings']), 'measured')}, "
                f"{arms_phrase(surface)}: predicted {gain['mean']:+.1f} "
                f"validation points over CCE (95%: {gain['low']:+.1f} to "
                f"{gain['high']:+.1f}); "
                "leans on " + "; ".join(lines))
    return Recommendation(lam=r["lam"], beta=r["beta"], psi=r["psi"], rho=r["rho"], evidence=evidence,
                          settings=[s["setting"] for s in r["leans_on"]], warnings=r["warnings"],
                          class_weighting=r["class_weighting"], class_weighting_gain=r["class_weighting_gain"],
                          region=r["region"], predicted_gain=gain,
                          predicted_std=r["predicted_std"], surface_std=r["surface_std"], leans_on=r["leans_on"])


# How each input is named in the messages (the command line names them by their flags).
INPUT_NAMES = {"num_classes": "number of classes", "noise_rate": "noise rate", "noise_type": "noise type",
               "imbalance": "imbalance", "imbalance_ratio": "imbalance ratio", "task": "task", "dataset": "dataset"}


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)  # (numpy's numbers too; True is no rate)


def _check_inputs(num_classes: int, noise_type: str, noise_rate: float, imbalance: str,
                  imbalance_ratio: float, names: dict[str, str] = INPUT_NAMES, task: str = "classification",
                  dataset: str | None = None) -> None:
    if task not in TASKS:
        raise UserError(f"{names['task']} {task!r} is not known; expected one of {', '.join(TASKS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise UserError(f"{names['num_classes']} must be an integer >= 2, got {num_classes!r}")
    if num_classes > MAX_CLASSES:  # (10**400 classes was blamed on the guidelines: a float overflow in the surface)
        digits = len(str(num_classes))
        raise UserError(f"{names['num_classes']} must be at most {MAX_CLASSES}, got "
                        + (str(num_classes) if digits <= 24 else f"a number of {digits} digits"))
    if not (_is_number(noise_rate) and 0.0 <= noise_rate < 1.0):
        raise UserError(f"{names['noise_rate']} must be in [0, 1), got {noise_rate!r}")
    if noise_type not in NOISE_TYPES:
        raise UserError(f"{names['noise_type']} {noise_type!r} is not known; expected one of {', '.join(NOISE_TYPES)}")
    if noise_type == "none" and noise_rate != 0.0:
        raise UserError(f"{names['noise_type']} 'none' needs {names['noise_rate']} 0, got {noise_rate!r}")
    if noise_type == "cifar100-superclass" and num_classes != 100:  # (as dm-tune train refuses it)
        raise UserError(f"{names['noise_type']} 'cifar100-superclass' needs {names['num_classes']} 100 (CIFAR-100's "
                        f"classes, in their 20 superclasses), got {num_classes}; choose symmetric or pair")
    limit = rate_limit(noise_type, num_classes)  # as dm-tune train refuses it: data no method can learn
    if limit is not None and noise_rate >= limit:
        raise UserError(f"{names['noise_rate']} must be below {limit:.4g} for {noise_type} noise on {num_classes} "
                        f"classes, got {noise_rate!r}: from {limit:.4g} up a wrong label is at least as common as the "
                        "true one")
    if not (_is_number(imbalance_ratio) and 1.0 <= imbalance_ratio <= IMBALANCE_RATIO_MAX):
        raise UserError(f"{names['imbalance_ratio']} must be in [1, {IMBALANCE_RATIO_MAX:g}] (largest / smallest "
                        f"class, as dm-tune train takes it), got {imbalance_ratio!r}")
    if imbalance not in IMBALANCE_KINDS:  # as dm-tune train checks them
        raise UserError(f"{names['imbalance']} {imbalance!r} is not known; expected one of "
                        f"{', '.join(IMBALANCE_KINDS)}")
    if imbalance == "none" and imbalance_ratio != 1.0:
        raise UserError(f"{names['imbalance_ratio']} must be 1 with {names['imbalance']} 'none', got "
                        f"{imbalance_ratio!r} (choose longtail or step)")
    if imbalance != "none" and imbalance_ratio == 1.0:
        raise UserError(f"{names['imbalance']} {imbalance!r} needs an {names['imbalance_ratio']} > 1 "
                        f"(largest / smallest class), got {imbalance_ratio!r}")
    _check_dataset_case(dataset, DATASET_NAMES, names)
    if dataset in DATASET_NAMES:  # one dm-tune reads: what the query says must fit it (a guidelines' own name: any)
        if task_of(dataset) != task:
            raise UserError(f"{names['dataset']} {dataset!r} is a {task_of(dataset)} dataset, not {task} (set "
                            f"{names['task']} {task_of(dataset)}, or leave {names['dataset']} out)")
        fixed = FIXED_CLASSES.get(dataset)
        if fixed is not None and num_classes != fixed:
            raise UserError(f"{names['num_classes']} {num_classes} does not fit {names['dataset']} {dataset!r}, which "
                            f"has {fixed} classes (leave {names['dataset']} out for data that is not {dataset})")


def _check_dataset_case(dataset: str | None, known: Any, names: dict[str, str] = INPUT_NAMES) -> None:
    """Refuse a dataset name that is a known one (dm-tune's, or one the guidelines measured) in
    another case: 'Digits' was taken as a dataset never measured and answered differently."""
    if dataset is None or dataset in known:
        return
    same = sorted({str(k) for k in known if str(k).lower() == dataset.lower()})
    if same:
        raise UserError(f"{names['dataset']} {dataset!r} is not known; did you mean {' or '.join(map(repr, same))}? "
                        "(dataset names are case-sensitive)")


def _is_clean(s: dict[str, Any]) -> bool:
    return s["noise"] == "none" or s["noise_rate"] == 0


def _by_noise_type(settings: list[dict[str, Any]], noise_type: str, noise_rate: float,
                   warnings: list[str]) -> list[dict[str, Any]]:
    clean = [s for s in settings if _is_clean(s)]
    if noise_type == "none" or noise_rate == 0:
        if clean:
            return clean
        warnings.append("no clean setting was measured: extrapolating from noisy settings")
        return settings
    same = [s for s in settings if s["noise"] == noise_type]
    if same:
        # (a setting of this type at rate 0 is clean too: listed once, or it was counted twice in its
        # rate's average and named twice in the evidence)
        return same + [s for s in clean if not any(s is t for t in same)]
    measured = sorted({s["noise"] for s in settings if not _is_clean(s)})
    # (at their fractions of wrong labels, as the query's rate is read: cifar100-superclass's rate is
    # per paired subclass)
    fractions = [{**s, "noise_rate": wrong_label_fraction(s["noise"], s["noise_rate"])} for s in settings]
    warnings.append(f"extrapolation: noise type {noise_type!r} was not measured (measured: "
                    f"{', '.join(measured) or 'none'}); using all noise types"
                    + (", each at its fraction of wrong labels" if fractions != settings else ""))
    return fractions


def _nearest(pool: list[dict[str, Any]], key: str, target: float, what: str,
             warnings: list[str]) -> list[dict[str, Any]]:
    """Keep the settings whose ``key`` is nearest ``target`` on a log scale (class counts and ratios)."""
    best = min({float(s[key]) for s in pool}, key=lambda v: abs(math.log(v) - math.log(target)))
    if best != float(target):
        warnings.append(f"extrapolation: {what} {num_text(target)} was not measured; using the nearest measured, "
                        f"{best:g}")
    return [s for s in pool if float(s[key]) == best]


def _interpolate(pool: list[dict[str, Any]], rate: float,
                 warnings: list[str]) -> tuple[float, float, list[dict[str, Any]], str]:
    by_rate: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for s in pool:
        by_rate[float(s["noise_rate"])].append(s)
    rates = sorted(by_rate)

    def knobs(r: float) -> tuple[float, float]:
        group = by_rate[r]  # several settings at one rate (e.g. two models): average them
        return (sum(s["psi"] for s in group) / len(group), sum(s["rho"] for s in group) / len(group))

    near = [r for r in rates if abs(r - rate) <= FILE_RATE_TOLERANCE and all(s["noise"] == "file" for s in by_rate[r])]
    if rate not in by_rate and near:  # a label file's overall rate beside the rate a setting of it measured
        rate = min(near, key=lambda r: abs(r - rate))
    if rate in by_rate:
        psi, rho = knobs(rate)
        return psi, rho, by_rate[rate], f"measured at noise rate {rate:g}"
    lower = [r for r in rates if r < rate]
    upper = [r for r in rates if r > rate]
    if lower and upper:
        lo, hi = lower[-1], upper[0]
        t = (rate - lo) / (hi - lo)
        (p0, r0), (p1, r1) = knobs(lo), knobs(hi)
        return (p0 + t * (p1 - p0), r0 + t * (r1 - r0), by_rate[lo] + by_rate[hi],
                f"interpolated linearly in noise rate between {lo:g} and {hi:g}")
    nearest = lower[-1] if lower else upper[0]
    warnings.append(f"extrapolation: noise rate {num_text(rate)} is outside the measured range "
                    f"[{rates[0]:g}, {rates[-1]:g}]; using the nearest measured rate, {nearest:g}")
    psi, rho = knobs(nearest)
    return psi, rho, by_rate[nearest], f"nearest measured noise rate {nearest:g}"


def _evidence_line(s: dict[str, Any]) -> str:
    line = f"{setting_label(s)}: psi {s['psi']:.2f}, rho {s['rho']:.2f}"
    base = s["vs_baselines"].get("cce")
    if isinstance(base, dict) and base.get("mean_diff") is not None:
        metric = "mAP" if s.get("task") == "retrieval" else "accuracy"  # (retrieval's said "accuracy")
        line += (f", {fmt_diff(base['mean_diff'], base.get('std'))} points of final test {metric} over CCE over "
                 f"{base.get('n', '?')} seeds")
    return line + f" (the arm measured on {s['n_seeds']} seeds)"
