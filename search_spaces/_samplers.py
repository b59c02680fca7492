"""Optuna samplers by name, always seeded."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dm_tune.search_spaces._spaces import grid_values, is_grid


def startup_trials(name: str, num_samples: int) -> int:
    """How many trials sampler ``name`` draws independently of any result before it models the
    space (Optuna counts finished trials: the searcher asks no more arms until this many have
    finished, so a population's batch does not stretch the start-up; 0: the sampler has none)."""
    if name in ("tpe", "gp"):
        # Few random start-up trials on short studies, so that the model gets to see the space.
        return max(4, min(10, num_samples // 3))
    if name == "cmaes":
        return max(2, min(5, num_samples // 4))
    return 0


def _tpe(space: Mapping[str, Any], seed: int, num_samples: int):
    import optuna

    # A population's arms are asked together, before any of them is told: with the constant liar
    # each arm asked and not yet told counts as a poor result, so the arms of one batch spread
    # out instead of crowding the same optimum (the default from Optuna 5; off before).
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials("tpe", num_samples),
                                      multivariate=True, constant_liar=True)


def _gp(space: Mapping[str, Any], seed: int, num_samples: int):
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials("gp", num_samples))


def _cmaes(space: Mapping[str, Any], seed: int, num_samples: int):
    import optuna

    # A categorical knob (a searched class_weighting) is drawn at random, as CMA-ES models continuous
    # ones only (said in the README): Optuna's warning of it came on every trial.
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup_trials("cmaes", num_samples),
                                        warn_independent_sampling=False)


def _random(space: Mapping[str, Any], seed: int, num_samples: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _grid(space: Mapping[str, Any], seed: int, num_samples: int):
    import optuna

    if not is_grid(space):
        raise ValueError("sampler 'grid' needs an all-categorical space such as 'paper-grid'")
    return optuna.samplers.GridSampler(grid_values(space), seed=seed)


SAMPLERS: dict[str, Callable[[Mapping[str, Any], int, int], Any]] = {
    "tpe": _tpe,
    "gp": _gp,
    "cmaes": _cmaes,
    "random": _random,
    "grid": _grid,
}


def make_sampler(name: str, space: Mapping[str, Any], seed: int, num_samples: int):
    import warnings

    import optuna

    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    with warnings.catch_warnings():
        # Optuna 3.6-4.x call the TPE's multivariate and constant-liar arguments and the GP sampler
        # experimental, in four lines on every search's stderr; the samplers are used as they are.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[name](space, seed, num_samples)


def resumed_sampler(name: str, space: Mapping[str, Any], seed: int, num_samples: int, trials: int):
    """The sampler that goes on with a study already holding ``trials`` trials (a resume, or a new
    search joining a shared Optuna study). Seeded with ``seed`` again it would draw again the points
    it drew before the interruption wherever it draws at random (start-up arms, the random sampler);
    seeded from ``seed`` and ``trials`` it draws new ones, the same ones for a resume at the same
    point. The grid sampler keeps ``seed``: its trials' stored grid ids index the grid as that seed
    shuffled it (reshuffled, they would point at other points: some trained twice, some never)."""
    import numpy as np

    resumed = int(np.random.SeedSequence([seed, trials]).generate_state(1)[0]) if trials and name != "grid" else seed
    return make_sampler(name, space, resumed, num_samples)
