"""Study files: validation at the edge, matrix expansion, and the shipped examples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dm_tune import ConfigError
from dm_tune.search import Study

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


def test_the_default_study_is_the_embedded_default():
    default = Study.from_dict({})
    shipped = Study.from_dict(yaml.safe_load((STUDIES[0].parent / "default.yaml").read_text()))
    assert shipped == default
    (setting,) = default.expand()
    assert setting.key == "digits-symmetric0.4-default"
    assert default.search.space == "decoupled" and default.search.sampler == "tpe"
    assert default.search.num_samples >= 24 and len(default.baselines) == 8


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    study = Study.from_dict(yaml.safe_load(path.read_text()))
    assert study.expand()


def test_matrix_expansion_and_keys():
    study = Study.from_dict({"settings": {"dataset": ["digits", "mnist1d"], "noise": ["none", "pair"],
                                          "noise_rate": [0.0, 0.3], "imbalance": ["none", "step:10"]}})
    keys = [s.key for s in study.expand()]
    # noise 'none' pairs only with rate 0, and pair at rate 0 is that clean setting: 2 datasets x
    # (none 0, pair 0.3) x 2 imbalance
    assert len(keys) == 8 and len(set(keys)) == 8
    assert "mnist1d-pair0.3-step10-default" in keys and "digits-none0-step10-default" in keys
    assert study.clean_twins() == (["pair"], "none")
    # noise from a file: its labels set the rate, so the rates of the matrix make one setting of it
    for rates in ([0.0], [0.3], None):  # (one rate, the default 0.4 too: the matrix's placeholder)
        settings = {"dataset": ["digits", "mnist1d"], "noise": ["file"]} | ({"noise_rate": rates} if rates else {})
        study = Study.from_dict({"settings": settings, "training": {"noise_file": "labels.npy"}})
        assert [s.key for s in study.expand()] == ["digits-file0-default", "mnist1d-file0-default"]


def test_clean_noise_types_alone_take_rate_0_not_the_default_rate():
    """`dm-tune search --noise none` (or a study of noise [none]) was refused: the default rate,
    0.4, which the user never gave, makes no setting with noise 'none'."""
    (setting,) = Study.from_dict({"settings": {"noise": ["none"]}}).expand()
    assert (setting.noise, setting.noise_rate) == ("none", 0.0)


@pytest.mark.parametrize("noise, kept", [
    (["symmetric", "pair"], "symmetric"), (["pair", "symmetric"], "pair"), (["pair", "symmetric", "none"], "none"),
])
def test_noise_types_at_rate_0_are_one_clean_setting(noise, kept):
    """A flipped label at rate 0 is none: each noise type's rate-0 setting trained the same clean
    data again (and a report counted it as several settings)."""
    study = Study.from_dict({"settings": {"dataset": ["digits", "mnist1d"], "noise": noise,
                                          "noise_rate": [0.0, 0.2], "imbalance": ["none", "step:10"]}})
    settings = study.expand()
    clean = [(s.dataset, s.noise, s.imbalance) for s in settings if s.noise_rate == 0.0]
    assert sorted(clean) == sorted((d, kept, i) for d in ("digits", "mnist1d") for i in ("none", "step"))
    assert len(settings) == 2 * 2 * (1 + len([n for n in noise if n != "none"]))
    assert study.clean_twins() == ([n for n in noise if n != kept], kept)
    one = Study.from_dict({"settings": {"noise": [noise[0]], "noise_rate": [0.0, 0.2]}})
    assert one.clean_twins() == ([], "") and one.expand()[0].noise == noise[0]


@pytest.mark.parametrize("noise, rates, words", [
    (["none", "symmetric"], [0.2], "settings.noise: 'none' is not allowed; pairs only with noise_rate 0, which "
                                   "settings.noise_rate [0.2] lacks: add 0, or leave 'none' out"),
    (["file"], [0.2, 0.4], "settings.noise_rate: 0.2 is not allowed; a rate no noise type of settings.noise "
                           "['file'] uses"),
    (["none"], [0.0, 0.3], "settings.noise_rate: 0.3 is not allowed"),
    (["file", "none"], [0.0, 0.3], "settings.noise_rate: 0.3 is not allowed"),
    (["none"], [0.4], "settings.noise_rate: [0.4] is not allowed; the matrix has no valid combination: noise 'none' "
                      "pairs only with noise_rate 0"),  # (was field 'settings' and a Python tuple)
])
def test_a_matrix_value_that_makes_no_setting_is_refused(noise, rates, words):
    """'none' beside a rate list without 0 was dropped without a word (the study searched the other
    noise types only), and the rates of a matrix of label files were ignored."""
    training = {"noise_file": "l.npy"} if "file" in noise else {}
    with pytest.raises(ConfigError) as info:
        Study.from_dict({"settings": {"noise": noise, "noise_rate": rates}, "training": training}).expand()
    assert words in str(info.value)


@pytest.mark.parametrize("values, field", [
    ({"nmae": "x"}, "nmae"),
    ({"name": "has space"}, "name"),
    ({"settings": {"dataset": ["imagenet"]}}, "settings.dataset[0]"),
    ({"settings": {"noise_rate": [0.2, 1.0]}}, "settings.noise_rate[1]"),
    ({"settings": {"imbalance": ["longtail"]}}, "settings.imbalance[0]"),
    ({"settings": {"imbalance": ["none", "step:1"]}}, "settings.imbalance[1]"),
    ({"settings": {"noise_rate": []}}, "settings.noise_rate"),
    ({"settings": {"nosie": ["pair"]}}, "settings.nosie"),
    ({"settings": "digits"}, "settings"),
    ({"search": {"space": "x"}}, "search.space"),
    ({"search": {"sampler": "x"}}, "search.sampler"),
    ({"search": {"num_samples": 0}}, "search.num_samples"),
    ({"search": {"extra_knobs": ["momentum"]}}, "search.extra_knobs[0]"),
    ({"search": {"sampler": "grid"}}, "search.sampler"),
    ({"baselines": ["focal"]}, "baselines[0]"),
    ({"seeds": []}, "seeds"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"seeds": [0, True]}, "seeds[1]"),
    ({"seeds": [0, -1]}, "seeds[1]"),          # numpy's and Optuna's seeding take [0, 2**32 - 1]
    ({"seeds": [2**32]}, "seeds[0]"),
    ({"search": {"sampler_seed": -1}}, "search.sampler_seed"),
    ({"training": {"lr": -1}}, "training.lr"),
    ({"training": {"no_such": 1}}, "training.no_such"),
    ({"training": {"noise_file": "labels.npy"}}, "settings.noise"),
    ({"resources": {"gpus_per_trial": -1}}, "resources.gpus_per_trial"),
    ({"scheduler": {"kind": "pbt"}}, "scheduler.kind"),
])
def test_bad_studies_name_the_field(values, field):
    with pytest.raises(ConfigError) as e:
        Study.from_dict(values)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("values, message", [
    ({"settings": {"noise_rate": [0.2, 1.0]}},
     "settings.noise_rate[1]: 1.0 is not allowed; expected a number in [0.0, 1.0)"),
    ({"settings": {"noise_rate": "0.4"}}, "settings.noise_rate: '0.4' is not allowed; expected a list"),
    ({"settings": {"imbalance": ["step:1"]}}, "settings.imbalance[0]: 'step:1' is not allowed; "
                                              "expected 'none', 'longtail:RATIO' or 'step:RATIO' with RATIO > 1"),
    ({"settings": {"nosie": ["pair"]}}, "settings.nosie: ['pair'] is not allowed; "
                                        "unknown field; known fields: dataset, imbalance, model, noise, noise_rate"),
    ({"search": {"num_samples": "many"}}, "search.num_samples: 'many' is not allowed; expected an integer"),
    ({"search": {"extra_knobs": ["momentum"]}},
     "search.extra_knobs[0]: 'momentum' is not allowed; expected one of: lr, weight_decay"),
    ({"scheduler": {"kind": "pbt"}}, "scheduler.kind: 'pbt' is not allowed; expected one of: none, asha"),
    ({"seeds": [1, 1]}, "seeds: [1, 1] is not allowed; expected a non-empty list of distinct integers"),
    ({"training": {"lr": -1}}, "training.lr: -1 is not allowed; expected a number in (0.0, 10.0]"),
    ({"resources": {"max_concurrent": 0}}, "resources.max_concurrent: 0 is not allowed; "
                                           "expected an integer in [1, 10000]"),
    ({"seeds": [0, 1], "search_seeds": 3}, "search_seeds: 3 is not allowed; expected at most the number of seeds "
                                           "(2): the search trains each arm on the first search_seeds of seeds"),
    ({"search": {"class_weighting": ["inverse", "balanced"]}},
     "search.class_weighting[1]: 'balanced' is not allowed; expected one of: none, inverse, sqrt-inverse, "
     "effective-number"),
    ({"search": {"class_weighting": ["none", "none"]}},
     "search.class_weighting: ['none', 'none'] is not allowed; expected distinct schemes"),
    ({"search": {"space": "paper", "warm_start": "g.json"}},
     "search.space: 'paper' is not allowed; warm-starting from guidelines searches their (psi, rho) region: "
     "expected space decoupled"),
    # pydantic named the union's first member: "search.warm_start.bool: ... expected true or false"
    ({"search": {"warm_start": 5}},
     "search.warm_start: 5 is not allowed; expected true, false or a guidelines.json path"),
    ({"search": {"warm_start": ""}},
     "search.warm_start: '' is not allowed; expected true, false or a guidelines.json path"),
    # was named training.imbalance_ratio, a field the study does not have
    ({"settings": {"imbalance": ["step:20000"]}},
     "settings.imbalance: 'step:20000' is not allowed; expected a ratio in [1.0, 10000.0]"),
    ({"training": {"class_weighting": "balanced"}},
     "training.class_weighting: 'balanced' is not allowed; expected one of: none, inverse, sqrt-inverse, "
     "effective-number"),
    # accepted before: 2 arms could not give a top 5; a baseline twice ran once; no trial got a GPU
    ({"search": {"num_samples": 2, "top_k": 5}},
     "search.top_k: 5 is not allowed; expected at most search.num_samples (2): the confirm stage takes the best "
     "searched arms"),
    ({"baselines": ["cce", "gce", "cce"]},
     "baselines: ['cce', 'gce', 'cce'] is not allowed; expected distinct baselines"),
    ({"training": {"device": "cuda"}}, "resources.gpus_per_trial: 0.0 is not allowed; expected > 0 with "
                                       "training.device cuda: a trial that asks Ray for no GPU gets none"),
    # (cuda:0 was let through: every trial then errored, 47 s later)
    ({"training": {"device": "cuda:0"}}, "resources.gpus_per_trial: 0.0 is not allowed; expected > 0 with "
                                         "training.device cuda: a trial that asks Ray for no GPU gets none"),
    # each of these was silently overridden in every trial (a digits search ran for training.dataset mnist1d)
    ({"training": {"dataset": "mnist1d"}},
     "training.dataset: 'mnist1d' is not allowed; set by settings.dataset (under training: it would be ignored)"),
    ({"training": {"seed": 3}}, "training.seed: 3 is not allowed; set by seeds (under training: it would be ignored)"),
    ({"training": {"lam": 2.0}}, "training.lam: 2.0 is not allowed; set by the search's arms and baselines "
                                 "(under training: it would be ignored)"),
    ({"settings": {"model": ["mlp"]}, "training": {"model": "cnn"}},
     "training.model: 'cnn' is not allowed; set by settings.model (under training: it would be ignored)"),
])
def test_bad_studies_exact_messages(values, message):
    with pytest.raises(ConfigError) as e:
        Study.from_dict(values)
    assert str(e.value) == message


def test_training_fields_the_trials_override_are_kept_in_a_stored_study():
    """A study an earlier dm-tune stored with training.seed (ignored by its trials then as now) still
    resumes: refusing it would leave its search with no way to go on. training.model applies where
    settings.model is default: not refused."""
    old = {"name": "old", "training": {"seed": 7, "lam": 2.0}}
    study = Study.from_dict(old, stored=True)
    assert study.ignored_training() == [("seed", "seeds"), ("lam", "the search's arms and baselines")]
    Study.from_dict({"settings": {"model": ["default", "mlp"]}, "training": {"model": "mlp"}})


def test_a_stored_study_whose_booleans_an_earlier_dm_tune_took_as_yaml_1_1_ones_resumes_as_it_trained():
    """`val_noisy: on` is refused now (YAML 1.1's boolean); an earlier dm-tune took it for true, and a
    search it stored with it could not be resumed ("not valid here ... restore it")."""
    for spelled, meant in (("on", True), ("No", False), (1, True), ("t", True), (0, False)):
        values = {"name": "old", "training": {"val_noisy": spelled}}
        with pytest.raises(ConfigError, match="training.val_noisy"):
            Study.from_dict(values)
        study = Study.from_dict(values, stored=True)
        assert study.training["val_noisy"] is meant
        assert study.train_config(study.expand()[0]).val_noisy is meant
    with pytest.raises(ConfigError, match="training.val_noisy: 'maybe' is not allowed"):
        Study.from_dict({"name": "old", "training": {"val_noisy": "maybe"}}, stored=True)
    # (the fields so read are TrainConfig's booleans, every one of them)
    import dataclasses

    from dm_tune.config import TrainConfig
    from dm_tune.search._study import BOOLEAN_FIELDS

    assert sorted(BOOLEAN_FIELDS) == sorted(f.name for f in dataclasses.fields(TrainConfig) if "Bool" in str(f.type))


def test_training_class_weighting_is_the_dm_arms_and_refused_beside_a_searched_one():
    """training.class_weighting beside search.class_weighting: the DM arms trained the searched
    weightings, and only the baselines took it, still reported as plain "cce". It is now the DM
    arms' weighting where none is searched, and refused where one is; stored, it resumes."""
    both = {"search": {"class_weighting": ["none", "inverse"]}, "training": {"class_weighting": "sqrt-inverse"}}
    with pytest.raises(ConfigError, match=r"training.class_weighting: 'sqrt-inverse' is not allowed; set by "
                                          r"search.class_weighting for the DM arms; .*cce-cb effective-number"):
        Study.from_dict(both)
    stored = Study.from_dict(both, stored=True)  # resumes, with a warning (as the same command does)
    assert [key for key, _ in stored.ignored_training()] == ["class_weighting"]
    assert Study.from_dict({"training": {"class_weighting": "inverse"}}).train_config(
        Study.from_dict({}).expand()[0]).class_weighting == "inverse"


def test_study_is_immutable():
    import dataclasses

    study = Study.from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.settings.noise_rate = (0.2,)  # type: ignore[misc]


def test_study_round_trips_through_json():
    import json

    study = Study.from_dict({"settings": {"noise_rate": [0.2, 0.4]}, "seeds": [3, 4]})
    assert Study.from_dict(json.loads(json.dumps(study.to_dict()))) == study


def test_search_seeds_default_to_two_or_the_only_seed():
    assert Study.from_dict({}).search_seed_count == 2
    assert Study.from_dict({"seeds": [5]}).search_seed_count == 1
    assert Study.from_dict({"search_seeds": 3}).search_seed_count == 3


def test_a_stored_study_resumes_with_what_a_new_one_is_refused():
    """Checks added since a study began (repeated values in an axis, an imbalance the classes
    cannot take, a training field no trial uses) refuse a new study, never the resume of one."""
    from dm_tune.search._preflight import load_sources

    values = {"settings": {"noise_rate": [0.2, 0.2], "imbalance": ["longtail:5000"]},
              "baselines": ["cce"], "training": {"gce_q": 0.3}}
    with pytest.raises(ConfigError):
        Study.from_dict(values)
    stored = Study.from_dict(values, stored=True)
    assert len(stored.expand()) == 1
    assert set(load_sources(stored, new=False)) == {"digits"}
    with pytest.raises(ConfigError, match="settings.imbalance: 'longtail:5000' is not allowed"):
        load_sources(Study.from_dict({"settings": {"imbalance": ["longtail:5000"]}}))


def test_pretrained_weights_no_model_of_the_study_loads_are_refused(tmp_path):
    """training.pretrained with models that load no weights: every trial ignored it."""
    from dm_tune.search._preflight import load_sources

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    study = Study.from_dict({"training": {"pretrained": str(weights)}})
    with pytest.raises(ConfigError, match="training.pretrained: .* only applies to models resnet18, .* this study "
                                          "trains with model mlp"):
        load_sources(study)
    assert set(load_sources(study, new=False)) == {"digits"}  # a stored study goes on as it began


@pytest.mark.parametrize(("dataset", "training", "words"), [
    ("digits", {"momentum": 0.5}, "training.momentum: 0.5 is not allowed; only applies to optimizer sgd; this study "
                                  "trains with optimizer adam"),
    ("digits", {"optimizer": "adam", "momentum": 0.5}, "training.momentum: .* with optimizer adam"),
    ("digits", {"lr_milestones": [0.3, 0.6]}, "training.lr_milestones: .* only applies to schedule step; .* with "
                                              "schedule none"),
    ("digits", {"hidden_dim": 32}, None),  # the default mlp uses it
    ("mnist1d", {"hidden_dim": 32}, "training.hidden_dim: 32 .* only applies to models mlp and text; this study "
                                    "trains with model cnn"),
    ("digits", {"augment": True}, "training.augment: True .* only applies to the image datasets"),
    ("digits", {"download": True}, "training.download: True .* only applies to datasets cifar10, cifar100"),
])
def test_training_fields_no_trial_uses_are_refused(dataset, training, words, capsys):
    """A training field the trials' optimiser, schedule, model or dataset ignores (the datasets'
    defaults included: digits trains with Adam, no schedule): every trial trained without it. A
    stored study goes on as it began, saying so."""
    from dm_tune.search._preflight import load_sources

    study = Study.from_dict({"settings": {"dataset": [dataset]}, "training": training})
    if words is None:
        assert set(load_sources(study)) == {dataset} and set(load_sources(study, new=False)) == {dataset}
        assert capsys.readouterr().err == ""
        return
    with pytest.raises(ConfigError, match=words):
        load_sources(study)
    assert set(load_sources(study, new=False)) == {dataset}
    (key,) = training.keys() - {"optimizer"}
    assert re.fullmatch(f"dm-tune: warning: training.{key} is ignored \\(it only applies to .*\\)\n",
                        capsys.readouterr().err)


@pytest.mark.parametrize("field", ["grace_period", "reduction_factor"])
def test_an_asha_field_without_asha_is_refused(field):
    """scheduler.grace_period or reduction_factor set with no scheduler (kind none, the default):
    nothing stopped any trial early, and nothing said so. A stored study goes on as it began."""
    value = {"grace_period": 5, "reduction_factor": 2.0}[field]
    with pytest.raises(ConfigError, match=rf"^scheduler.{field}: {value} is not allowed; only applies to "
                                          r"scheduler.kind asha; this study's kind is none"):
        Study.from_dict({"scheduler": {field: value}})
    assert Study.from_dict({"scheduler": {"kind": "asha", field: value}}).scheduler.kind == "asha"
    assert Study.from_dict({"scheduler": {field: value}}, stored=True).scheduler.kind == "none"


def test_scheduler_none_turns_off_a_files_asha_with_its_fields(tmp_path):
    """--scheduler none on a study file with ASHA (the bundled CIFAR studies) is a study without
    it, not a refusal of the file's grace_period."""
    from dm_tune.cli import build_parser
    from dm_tune.search.cli import study_values

    config = tmp_path / "s.yaml"
    config.write_text("scheduler:\n  kind: asha\n  grace_period: 5\n  reduction_factor: 2\n")
    args = build_parser().parse_args(["search", "--config", str(config), "--scheduler", "none"])
    assert Study.from_dict(study_values(args)).scheduler == Study.from_dict({}).scheduler
