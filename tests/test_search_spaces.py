"""Contract tests every search space and sampler must pass."""

from __future__ import annotations

import json
import math
import re

import optuna
import pytest

from dm_tune import beta_from_rho, lambda_from_mode, mode_from_lambda, rho_from_beta
from dm_tune.search_spaces import (BASELINES, DEFAULT_BASELINES, SAMPLERS, SPACES, define_by_run, get_space, grid_size,
                           is_grid, make_sampler, suggest, to_lam_beta)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_space_is_plain_data_and_samples_within_bounds(name):
    space = get_space(name)
    assert json.loads(json.dumps(space)) == space  # JSON-serialisable data
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        suggest(space, trial)
        for param, spec in space.items():
            v = trial.params[param]
            if spec["type"] == "float":
                assert spec["low"] <= v <= spec["high"]
            else:
                assert v in spec["choices"]
        knobs = to_lam_beta(trial.params)
        assert knobs["lam"] >= 0 and math.isfinite(knobs["beta"])
        assert knobs["psi"] == pytest.approx(mode_from_lambda(knobs["lam"]))
        assert knobs["rho"] == pytest.approx(rho_from_beta(knobs["beta"], knobs["lam"]))
        study.tell(trial, 0.0)


def test_decoupled_knobs_map_to_the_paper_parametrisation():
    knobs = to_lam_beta({"psi": 0.5, "rho": 4.0})
    assert knobs["lam"] == pytest.approx(1.0) and knobs["beta"] == pytest.approx(16.0)
    knobs = to_lam_beta({"lam": 2.0, "beta": 24.0})
    assert knobs["psi"] == pytest.approx(2 / 3) and knobs["rho"] == pytest.approx(24 * 4 / 27)
    assert lambda_from_mode(knobs["psi"]) == pytest.approx(2.0)
    assert beta_from_rho(knobs["rho"], 2.0) == pytest.approx(24.0)


def test_paper_space_allows_negative_beta_and_grid_is_a_grid():
    assert SPACES["paper"]["beta"]["low"] < 0
    assert is_grid(SPACES["paper-grid"]) and not is_grid(SPACES["decoupled"])
    assert grid_size(SPACES["paper-grid"]) == 4 * 9


def test_extra_knobs_are_off_by_default():
    assert set(get_space("decoupled")) == {"psi", "rho"}
    assert set(get_space("decoupled", ("lr", "weight_decay"))) == {"psi", "rho", "lr", "weight_decay"}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_a_sampler_prints_no_experimental_warning(sampler):
    """Optuna 4.0 warned, on every search's stderr, that the TPE's multivariate and constant-liar
    arguments were experimental (3.6: the GP sampler too)."""
    import warnings

    space = get_space("paper-grid" if sampler == "grid" else "decoupled")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, space, 0, 12))
    assert [str(w.message) for w in seen if issubclass(w.category, optuna.exceptions.ExperimentalWarning)] == []
    study.optimize(lambda t: (suggest(space, t), 0.0)[1], n_trials=2)  # and it samples


@pytest.mark.parametrize("sampler", sorted(set(SAMPLERS) - {"grid"}))
def test_samplers_are_seeded(sampler):
    space = get_space("decoupled")

    def first_points(seed):
        study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, space, seed, 12))
        points = []
        for i in range(6):
            trial = study.ask()
            suggest(space, trial)
            points.append(tuple(trial.params.values()))
            study.tell(trial, float(i % 3))
        return points

    assert first_points(0) == first_points(0)
    assert first_points(0) != first_points(1)


def test_tpe_spreads_the_arms_of_one_batch():
    """A population's arms are asked together: TPE counts the ones asked and not yet told as poor
    results (the constant liar), whichever Optuna version's default."""
    space = get_space("decoupled")

    def batch(sampler):
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for i in range(8):  # past the 4 start-up trials of a 12-trial study
            trial = study.ask()
            suggest(space, trial)
            study.tell(trial, float(i % 3))
        trials = [study.ask() for _ in range(3)]
        for trial in trials:
            suggest(space, trial)
        return [tuple(t.params.values()) for t in trials]

    def tpe(liar):
        return optuna.samplers.TPESampler(seed=0, n_startup_trials=4, multivariate=True, constant_liar=liar)

    assert batch(make_sampler("tpe", space, 0, 12)) == batch(tpe(True))
    assert batch(tpe(True)) != batch(tpe(False))


def test_grid_sampler_covers_the_grid_and_needs_a_grid_space():
    space = get_space("paper-grid")
    study = optuna.create_study(direction="maximize", sampler=make_sampler("grid", space, 0, 32))
    study.optimize(lambda t: (suggest(space, t), 0.0)[1], n_trials=grid_size(space))
    assert len({(t.params["lam"], t.params["beta"]) for t in study.trials}) == grid_size(space)
    with pytest.raises(ValueError, match="paper-grid"):
        make_sampler("grid", get_space("decoupled"), 0, 10)


def test_define_by_run_pickles():
    import pickle

    fn = pickle.loads(pickle.dumps(define_by_run(get_space("decoupled"))))
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    fn(trial)
    assert set(trial.params) == {"psi", "rho"}


def test_baselines_are_the_papers():
    assert set(BASELINES) == {"cce", "cce-dn", "gce", "mae", "mse", "sl", "dm-beta0", "imae", "cce-cb"}
    assert set(DEFAULT_BASELINES) == set(BASELINES) - {"cce-cb"}  # the paper's
    assert BASELINES["imae"] == {"method": "dm", "lam": 1.0, "beta": 8.0}
    assert BASELINES["gce"]["gce_q"] == 0.7


def test_shipped_studies_run_sl_with_the_authors_values_for_their_dataset():
    """A trial's values are the setting's base (study training + setting), then the baseline's."""
    from pathlib import Path

    import yaml

    from dm_tune.config import TrainConfig
    from dm_tune.search._study import Study
    from dm_tune.search._trial import TrialSpec
    from dm_tune.search_spaces import SL_OFFICIAL

    checked = []
    for path in sorted((Path(__file__).parents[1] / "studies").glob("*.yaml")):
        study = Study.from_dict(yaml.safe_load(path.read_text()))
        if "sl" not in study.baselines:
            continue
        for setting in study.expand():
            if setting.dataset not in SL_OFFICIAL:
                continue
            spec = TrialSpec(setting.key, "confirm", study.seeds[0], BASELINES["sl"], arm="sl", baseline="sl")
            cfg = TrainConfig.from_dict(spec.train_values({**study.training, **setting.train_fields()}))
            used = {k: getattr(cfg, k) for k in SL_OFFICIAL[setting.dataset]}
            assert used == SL_OFFICIAL[setting.dataset], (path.name, setting.key, used)
            checked.append(setting.dataset)
    assert {"cifar10", "cifar100"} <= set(checked)
    assert SL_OFFICIAL["cifar10"] == {"sl_mu": TrainConfig().sl_mu, "sl_nu": TrainConfig().sl_nu}


def test_the_public_helpers_refuse_unknown_names_in_one_clear_line():
    """get_space('decoupled', extra_knobs='lr') iterated over 'l' and 'r' (KeyError: 'l'); unknown
    names and a half point were bare KeyErrors."""
    from dm_tune.search_spaces import make_sampler, to_lam_beta

    assert set(get_space("decoupled", "lr")) == {"psi", "rho", "lr"}
    for call, words in [(lambda: get_space("spherical"), "space 'spherical': expected one of decoupled"),
                        (lambda: get_space("decoupled", ("momentum",)), "extra knob 'momentum': expected one of lr"),
                        (lambda: make_sampler("annealing", get_space("decoupled"), 0, 4),
                         "sampler 'annealing': expected one of tpe"),
                        (lambda: to_lam_beta({"psi": 0.5}), "a DM point has psi and rho (or the other pair); rho "
                                                            "missing")]:
        with pytest.raises(ValueError, match=re.escape(words)):
            call()
