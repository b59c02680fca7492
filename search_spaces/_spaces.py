"""DM search spaces as data, and their use as Optuna define-by-run spaces.

A space is a plain JSON-serialisable dict ``{param: spec}`` with spec one of
``{"type": "float", "low": a, "high": b, "log": bool}`` or
``{"type": "categorical", "choices": [...]}``. Every space yields DM's (lam, beta) through
``to_lam_beta``; the decoupled one is searched in (psi, rho) (see dm_tune._param).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from dm_tune._param import beta_from_rho, lambda_from_mode, mode_from_lambda, rho_from_beta

Space = dict[str, dict[str, Any]]

SPACES: dict[str, Space] = {
    # Mode psi from hard-example emphasis (0) to lam = 3 (psi 0.75); log-spread rho from
    # nearly-equal weights (e^0.25 peak/end ratio) to a strong e^12 emphasis. The paper's best
    # settings sit at rho ~ 2-4 (lam 0 / beta 2: rho 2; lam 0.5 / beta 8: 3.1; lam 2 / beta 24: 3.6).
    "decoupled": {
        "psi": {"type": "float", "low": 0.0, "high": 0.75},
        "rho": {"type": "float", "low": 0.25, "high": 12.0, "log": True},
    },
    # The paper's own parametrisation over the ranges its grids span (the paper's experiments);
    # beta may be negative (flipped emphasis, used on binary IMDB).
    "paper": {
        "lam": {"type": "float", "low": 0.0, "high": 2.5},
        "beta": {"type": "float", "low": -4.0, "high": 28.0},
    },
    # The paper's lambda grid crossed with the union of its beta grids and its best betas (6: its
    # best CIFAR-100 arm at r = 0.2, inside its "beta 6-8" for 100 classes): for accuracy maps.
    "paper-grid": {
        "lam": {"type": "categorical", "choices": [0.0, 0.5, 1.0, 2.0]},
        "beta": {"type": "categorical", "choices": [0.5, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 20.0, 24.0]},
    },
}

# Optional extra knobs, off by default (a study lists the ones it wants).
EXTRA_KNOBS: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
}


def get_space(name: str, extra_knobs: str | Sequence[str] = ()) -> Space:
    """A copy of space ``name`` with the given extra knobs added (a name or a sequence of names)."""
    if name not in SPACES:
        raise ValueError(f"space {name!r}: expected one of {', '.join(SPACES)}")
    space = copy.deepcopy(SPACES[name])
    for knob in (extra_knobs,) if isinstance(extra_knobs, str) else extra_knobs:  # ("lr" was 'l', 'r')
        if knob not in EXTRA_KNOBS:
            raise ValueError(f"extra knob {knob!r}: expected one of {', '.join(EXTRA_KNOBS)}")
        space[knob] = dict(EXTRA_KNOBS[knob])
    return space


def is_grid(space: Mapping[str, Mapping[str, Any]]) -> bool:
    return all(spec["type"] == "categorical" for spec in space.values())


def grid_values(space: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Any]]:
    if not is_grid(space):
        raise ValueError("only an all-categorical space has a grid")
    return {name: list(spec["choices"]) for name, spec in space.items()}


def grid_size(space: Mapping[str, Mapping[str, Any]]) -> int:
    size = 1
    for values in grid_values(space).values():
        size *= len(values)
    return size


def suggest(space: Mapping[str, Mapping[str, Any]], trial: Any) -> None:
    """Sample every parameter of ``space`` on an Optuna trial (define-by-run)."""
    for name, spec in space.items():
        if spec["type"] == "float":
            trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
        elif spec["type"] == "categorical":
            trial.suggest_categorical(name, spec["choices"])
        else:  # spaces are checked data; an unknown type is a bug in SPACES
            raise ValueError(f"unknown parameter type {spec['type']!r} for {name}")


class define_by_run:  # noqa: N801 - used like a function; a class so that it pickles
    """The space as an Optuna define-by-run function (picklable, for searcher checkpoints)."""

    def __init__(self, space: Mapping[str, Mapping[str, Any]]) -> None:
        self.space = copy.deepcopy(dict(space))

    def __call__(self, trial: Any) -> None:
        suggest(self.space, trial)


def to_lam_beta(params: Mapping[str, Any]) -> dict[str, float]:
    """DM's (lam, beta) and (psi, rho) from a sampled point of any space."""
    pair = ("psi", "rho") if "psi" in params or "rho" in params else ("lam", "beta")
    missing = [k for k in pair if k not in params]
    if missing:
        raise ValueError(f"a DM point has {' and '.join(pair)} (or the other pair); {', '.join(missing)} missing "
                         f"in {dict(params)!r}")
    if pair[0] == "psi":
        lam = lambda_from_mode(float(params["psi"]))
        beta = beta_from_rho(float(params["rho"]), lam)
    else:
        lam, beta = float(params["lam"]), float(params["beta"])
    return {"lam": lam, "beta": beta, "psi": mode_from_lambda(lam), "rho": rho_from_beta(beta, lam)}
