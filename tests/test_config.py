"""TrainConfig: the one validated constructor (unknown keys, types, ranges, contradictions) and its
one-line messages, coercion of CLI/YAML strings, dataset defaults, and the to_dict/from_dict round trip."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from dm_tune._validate import ConfigError
from dm_tune.config import TrainConfig
from dm_tune.datasets import DATASETS
from dm_tune.methods import METHODS


def rejects(values: dict, field: str, *allowed_words: str, where: str = "") -> ConfigError:
    """``from_dict(values)`` raises a ConfigError naming ``field``, the bad value and what is allowed."""
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(values, where)
    e = info.value
    msg = str(e)
    assert e.field == field and msg.startswith(f"{field}: ")
    assert repr(e.value) in msg
    for word in allowed_words:
        assert word in msg, msg
    assert "\n" not in msg  # one line, as the CLI prints it
    return e


def test_defaults_are_valid():
    cfg = TrainConfig.from_dict({})
    assert cfg == TrainConfig()
    assert cfg.dataset == "digits" and cfg.method == "dm" and cfg.noise_rate == 0.0


def test_unknown_key_is_rejected_and_known_fields_listed():
    e = rejects({"learning_rate": 0.1}, "learning_rate", "unknown field", "lr", "noise_rate")
    assert e.value == 0.1


def test_unknown_key_with_prefix():
    rejects({"epochz": 3}, "trial.epochz", "unknown field", where="trial")


def test_unknown_keys_of_mixed_types():  # YAML `1: 2` gives an int key
    rejects({1: 2, "foo": 3}, "1", "unknown field", "noise_rate")


def test_an_empty_key_is_named():
    """It was named as the whole config: "TrainConfig: 1 is not allowed; unknown field"."""
    rejects({"": 1}, "''", "unknown field", "noise_rate")
    rejects({"": 1}, "trial.''", "unknown field", where="trial")


def test_not_a_mapping():
    rejects(["dataset", "digits"], "TrainConfig", "expected a mapping of field: value")  # type: ignore[arg-type]


@pytest.mark.parametrize("values, message", [
    ({"noise_rate": 1.5}, "noise_rate: 1.5 is not allowed; expected a number in [0.0, 1.0)"),
    ({"noise_rate": "lots"}, "noise_rate: 'lots' is not allowed; expected a number"),
    ({"epochs": True}, "epochs: True is not allowed; expected an integer"),
    ({"epochs": 2.5}, "epochs: 2.5 is not allowed; expected an integer"),
    ({"epochs": 0}, "epochs: 0 is not allowed; expected an integer in [1, 100000]"),
    ({"gce_q": 0}, "gce_q: 0 is not allowed; expected a number in (0.0, 1.0]"),
    ({"val_noisy": "maybe"}, "val_noisy: 'maybe' is not allowed; expected true or false"),
    ({"method": "focal"}, "method: 'focal' is not allowed; expected one of: " + ", ".join(METHODS)),
    ({"lr_milestones": [0.5, "x"]}, "lr_milestones[1]: 'x' is not allowed; expected a number"),
    ({"lr_milestones": [0.75, 0.5]}, "lr_milestones: [0.75, 0.5] is not allowed; "
                                     "expected increasing fractions of the training budget in (0, 1)"),
    ({"dataset_options": {1: 2}}, "dataset_options[1]: 1 is not allowed; expected a string as key"),
    ({"noise": "none", "noise_rate": 0.3}, "noise_rate: 0.3 is not allowed; must be 0 with noise 'none'"),
    ({"imbalance": "step"}, "imbalance_ratio: 1.0 is not allowed; "
                            "imbalance 'step' needs a ratio > 1 (largest / smallest class)"),
    ({"lerning_rate": 0.1}, "lerning_rate: 0.1 is not allowed; unknown field; known fields: amp, augment, "
                            "batch_size, beta, class_weighting, class_weighting_beta, data_root, data_seed, dataset, "
                            "dataset_options, device, download, "
                            "epochs, gce_q, hidden_dim, imbalance, imbalance_ratio, lam, lr, lr_gamma, lr_milestones, "
                            "method, model, momentum, noise, noise_file, noise_key, noise_rate, num_workers, "
                            "optimizer, pretrained, schedule, seed, sl_log_clip, sl_mu, sl_nu, val_fraction, "
                            "val_noisy, weight_decay"),
])
def test_exact_messages(values, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(values)
    assert str(info.value) == message


def test_a_long_bad_value_is_shortened_to_keep_one_readable_line():
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"dataset_options": list(range(1000))})
    assert str(info.value) == ("dataset_options: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, "
                               "19, 20, 21... is not allowed; expected a mapping")
    assert info.value.value == list(range(1000))


@pytest.mark.parametrize("values, field, allowed", [
    ({"epochs": "ten"}, "epochs", "expected an integer"),
    ({"epochs": 2.5}, "epochs", "expected an integer"),
    ({"epochs": True}, "epochs", "expected an integer"),
    ({"noise_rate": "lots"}, "noise_rate", "expected a number"),
    ({"noise_rate": True}, "noise_rate", "expected a number"),
    ({"val_noisy": "maybe"}, "val_noisy", "expected true or false"),
    ({"dataset": 3}, "dataset", "expected a string"),
    ({"lr_milestones": "0.5"}, "lr_milestones", "expected a list"),
    ({"lr_milestones": [0.5, "x"]}, "lr_milestones[1]", "expected a number"),
    ({"dataset_options": [1, 2]}, "dataset_options", "expected a mapping"),
    ({"data_root": 5}, "data_root", "expected a string"),
])
def test_wrong_types(values, field, allowed):
    rejects(values, field, allowed)


@pytest.mark.parametrize("values, field, allowed", [
    ({"noise_rate": 1.0}, "noise_rate", "[0.0, 1.0)"),
    ({"noise_rate": -0.1}, "noise_rate", "[0.0, 1.0)"),
    ({"noise_rate": float("nan")}, "noise_rate", "[0.0, 1.0)"),
    ({"lam": -1}, "lam", "[0.0, 1000.0]"),
    ({"beta": float("inf")}, "beta", "[-1000.0, 1000.0]"),
    ({"lr": 0.0}, "lr", "(0.0, 10.0]"),
    ({"gce_q": 0}, "gce_q", "(0.0, 1.0]"),
    ({"epochs": 0}, "epochs", "an integer in [1, 100000]"),
    ({"num_workers": -1}, "num_workers", "an integer in [0, 256]"),
    ({"val_fraction": 0.95}, "val_fraction", "[0.0, 0.9]"),
    ({"imbalance_ratio": 0.5}, "imbalance_ratio", "[1.0, 10000.0]"),
    ({"device": "gpu"}, "device", "auto, cpu, cuda, cuda:N or mps"),
    ({"device": "cuda:x"}, "device", "cuda:N"),
    ({"lr_milestones": [0.75, 0.5]}, "lr_milestones", "increasing"),
    ({"lr_milestones": [0.5, 1.0]}, "lr_milestones", "(0, 1)"),
    ({"dataset": "imagenet"}, "dataset", "expected one of: digits, mnist1d, cifar10"),
    ({"method": "focal"}, "method", "expected one of: dm, cce"),
    ({"noise": "gaussian"}, "noise", "expected one of: none, symmetric, pair"),
    ({"model": "vgg"}, "model", "expected one of: mlp"),
    ({"optimizer": "lbfgs"}, "optimizer", "expected one of: sgd, adam"),
    ({"schedule": "linear"}, "schedule", "expected one of: none, step, cosine"),
])
def test_out_of_range_values(values, field, allowed):
    rejects(values, field, allowed)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_valid_devices(device):
    assert TrainConfig.from_dict({"device": device}).device == device


@pytest.mark.parametrize("values, field, allowed", [
    ({"noise": "none", "noise_rate": 0.3}, "noise_rate", "must be 0 with noise 'none'"),
    ({"noise": "file"}, "noise_file", "a label file is required"),
    ({"noise": "symmetric", "noise_file": "labels.npy"}, "noise", "must be 'file'"),
    ({"noise": "file", "noise_file": "labels.npy", "noise_rate": 0.4}, "noise_rate",
     "must be 0 with noise 'file': the file's labels set the rate"),
    ({"imbalance": "none", "imbalance_ratio": 10}, "imbalance_ratio", "must be 1 with imbalance 'none'"),
    # trained at a constant rate, lr_gamma ignored without a word
    ({"schedule": "step", "lr_milestones": [], "lr_gamma": 0.5}, "lr_milestones",
     "a step schedule needs at least one milestone"),
])
def test_contradictions(values, field, allowed):
    rejects(values, field, allowed)


def test_contradiction_named_with_prefix():
    rejects({"noise": "none", "noise_rate": 0.3}, "trial.noise_rate", where="trial")


def test_consistent_combinations_are_accepted():
    TrainConfig.from_dict({"noise": "none", "noise_rate": 0.0})
    TrainConfig.from_dict({"noise": "file", "noise_file": "labels.npy"})
    TrainConfig.from_dict({"imbalance": "step", "imbalance_ratio": 10})


def test_strings_from_the_command_line_are_coerced():
    cfg = TrainConfig.from_dict({"noise_rate": "0.4", "val_noisy": "true", "download": "FALSE",
                                 "epochs": "5", "lam": "2", "lr_milestones": ["0.3", "0.6"],
                                 "augment": "False", "data_seed": "7", "lr": "1e-3"})
    assert cfg.noise_rate == 0.4 and isinstance(cfg.noise_rate, float)
    assert cfg.val_noisy is True and cfg.download is False and cfg.augment is False
    assert cfg.epochs == 5 and isinstance(cfg.epochs, int)
    assert cfg.lam == 2.0 and isinstance(cfg.lam, float)
    assert cfg.lr_milestones == (0.3, 0.6)
    assert cfg.data_seed == 7 and cfg.lr == 1e-3


def test_integral_floats_become_ints():
    assert TrainConfig.from_dict({"epochs": 5.0}).epochs == 5  # YAML may write 5.0


def test_optional_fields_accept_none():
    cfg = TrainConfig.from_dict({"model": None, "lr": None, "epochs": None, "data_seed": None})
    assert cfg.model is None and cfg.lr is None and cfg.epochs is None


def test_config_is_immutable_and_replace_validates():
    cfg = TrainConfig.from_dict({"noise_rate": 0.2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.noise_rate = 0.5  # type: ignore[misc]
    assert cfg.replace(noise_rate=0.4).noise_rate == 0.4 and cfg.noise_rate == 0.2
    with pytest.raises(ConfigError, match="noise_rate"):
        cfg.replace(noise_rate=1.5)


def _digits_defaults():
    source = DATASETS["digits"][0](None, {}, False)
    return source.defaults, source.default_model, source.input_kind


def test_resolve_fills_dataset_defaults():
    defaults, model, kind = _digits_defaults()
    cfg = TrainConfig.from_dict({"seed": 3}).resolve(defaults, model, kind)
    for key in ("epochs", "optimizer", "lr", "batch_size", "weight_decay", "schedule"):
        assert getattr(cfg, key) == defaults[key], key
    assert cfg.model == "mlp" and cfg.augment is False and cfg.data_seed == 3


def test_resolve_keeps_explicit_values():
    defaults, model, kind = _digits_defaults()
    cfg = TrainConfig.from_dict({"epochs": 7, "lr": 0.05, "optimizer": "sgd", "model": "cnn",
                                 "augment": True, "seed": 3, "data_seed": 9}).resolve(defaults, model, kind)
    assert (cfg.epochs, cfg.lr, cfg.optimizer, cfg.model, cfg.augment, cfg.data_seed) == (7, 0.05, "sgd", "cnn", True, 9)
    assert cfg.batch_size == defaults["batch_size"]


def test_resolve_without_dataset_defaults_uses_the_generic_ones():
    cfg = TrainConfig().resolve({}, "resnet20", "image")
    assert (cfg.optimizer, cfg.lr, cfg.epochs, cfg.schedule, cfg.batch_size) == ("sgd", 0.1, 100, "cosine", 128)
    assert cfg.augment is True and cfg.model == "resnet20"


def test_round_trip_through_dict_and_json():
    cfg = TrainConfig.from_dict({"dataset": "mnist1d", "noise": "pair", "noise_rate": 0.3,
                                 "imbalance": "longtail", "imbalance_ratio": 10,
                                 "dataset_options": {"num_samples": 500}, "lr_milestones": [0.4, 0.8],
                                 "method": "gce", "gce_q": 0.5, "seed": 4, "device": "cpu"})
    d = cfg.to_dict()
    assert d["lr_milestones"] == [0.4, 0.8]
    assert TrainConfig.from_dict(d) == cfg
    assert TrainConfig.from_dict(json.loads(json.dumps(d))) == cfg
    resolved = cfg.resolve({"epochs": 3}, "cnn", "signal")
    assert TrainConfig.from_dict(resolved.to_dict()) == resolved


def test_config_errors_pickle_with_their_message():
    import dataclasses
    import pickle

    from dm_tune._validate import ConfigError

    for value in (1.5, dataclasses.MISSING):
        e = ConfigError("noise_rate", value, "expected a number in [0.0, 1.0)")
        again = pickle.loads(pickle.dumps(e))
        assert str(again) == str(e) and (again.field, again.allowed) == (e.field, e.allowed)


def test_the_names_validation_reads_are_the_registries_keys():
    """Configs are validated against dm_tune._names (no torch); the registries that hold the code
    have exactly those names, in that order, and the same on-disk flags and tasks."""
    from dm_tune import _names
    from dm_tune.datasets import TASKS
    from dm_tune.models import MODELS
    from dm_tune.noise import NOISE_MODELS

    assert {name: on_disk for name, (_, on_disk) in DATASETS.items()} == _names.DATASET_ROOTS
    assert list(DATASETS) == list(_names.DATASET_NAMES)
    assert tuple(METHODS) == _names.METHOD_NAMES
    assert tuple(MODELS) == _names.MODEL_NAMES
    assert tuple(NOISE_MODELS) == _names.NOISE_NAMES
    assert TASKS is _names.TASKS


def test_validating_a_config_or_a_study_imports_no_heavy_library():
    """A mistyped flag is answered before torch, Ray, MLflow or Optuna is imported."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from dm_tune.config import TrainConfig\n"
            "from dm_tune.search._study import Study\n"
            "import dm_tune.search._preflight, dm_tune.search._run, dm_tune.search._stores\n"
            "TrainConfig.from_dict({'lam': 2.0})\n"
            "Study.from_dict({'name': 'x'})\n"
            "print(sorted(m for m in ('torch', 'numpy', 'ray', 'mlflow', 'optuna', 'pandas') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_yaml_merge_keys_override_and_are_no_repeat(tmp_path):
    """A key that overrides one merged in with ``<<`` (also through a chain of merges) is YAML's
    own override; a key written twice in one mapping is refused, at any depth."""
    from dm_tune.errors import UserError, load_yaml

    chained = tmp_path / "chained.yaml"
    chained.write_text("defaults: &g {epochs: 5, lr: 0.1}\nprofiles: {fast: &fast {<<: *g, epochs: 2}}\n"
                       "training: {<<: *fast}\n")
    assert load_yaml(str(chained), "--config")["training"] == {"epochs": 2, "lr": 0.1}
    nested = tmp_path / "nested.yaml"
    nested.write_text("training:\n  epochs: 1\n  lr: 0.1\n  epochs: 2\n")
    with pytest.raises(UserError, match=r"key 'epochs' is given twice \(line 4\)"):
        load_yaml(str(nested), "--config")


@pytest.mark.timeout(60)
def test_a_yaml_bomb_is_refused_at_once(tmp_path):
    """Anchors that nest ten aliases per level (a "billion laughs", 500 bytes) load as shared lists,
    but the error wrote the whole value before cutting it to 80 characters: 10**9 strings, minutes
    and gigabytes, then killed with no message."""
    from dm_tune.config import TrainConfig
    from dm_tune._validate import ConfigError
    from dm_tune.errors import load_yaml

    levels = ["  a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("lam:\n" + "\n".join(levels) + "\n")
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(load_yaml(str(bomb), "--config"))
    assert str(e.value) == ("lam: {'a0': ['lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol']... "
                            "is not allowed; expected a number")


def test_yaml_numbers_and_booleans_are_read_by_yaml_1_2(tmp_path):
    """YAML 1.1 (PyYAML's) reads `017` as 15, `1:20` as 80, `1_0` as 10, `on` as true and `1e-3` as
    text: a config is read by YAML 1.2's core schema, as the CLI reads a number; YAML 1.1's other
    forms stay text, which the config's fields refuse by name."""
    from dm_tune.config import TrainConfig
    from dm_tune._validate import ConfigError
    from dm_tune.errors import UserError, load_yaml

    path = tmp_path / "c.yaml"
    path.write_text("a: 017\nb: 1:20\nc: 1_0\nd: 1e-3\ne: 0x1f\nf: 0o17\ng: -.inf\nh: yes\ni: True\n"
                    "j: 0b11\nk: .5\non: 1\n")
    data = load_yaml(str(path), "--config")
    assert data == {"a": 17, "b": "1:20", "c": "1_0", "d": 0.001, "e": 31, "f": 15, "g": float("-inf"),
                    "h": "yes", "i": True, "j": "0b11", "k": 0.5, "on": 1}
    assert [type(data[k]) for k in "ade"] == [int, float, int]
    assert TrainConfig.from_dict({"epochs": data["a"], "lr": data["d"]}).epochs == 17
    # a value its explicit tag does not fit was a traceback (ValueError, or AttributeError for a date)
    for tagged, words in (("!!int abc", "tag does not fit: invalid literal for int()"),
                          ("!!timestamp abc", "tag does not fit)")):
        path.write_text(f"epochs: {tagged}\n")
        with pytest.raises(UserError, match=re.escape(f"c.yaml: not valid YAML (a value its explicit {words}")):
            load_yaml(str(path), "--config")
    for field, value, allowed in (("epochs", "1_0", "an integer"), ("epochs", "1:20", "an integer"),
                                  ("epochs", "yes", "an integer"), ("lr", "1_0e-3", "a number")):
        with pytest.raises(ConfigError, match=f"{field}: '{value}' is not allowed; expected {allowed}"):
            TrainConfig.from_dict({field: value})
    # YAML 1.1's booleans stay text, and a boolean field refuses them (pydantic took `on`, `no`, `y`,
    # and 0 and 1, as booleans: `val_noisy: on` trained with noisy validation labels without a word)
    for field in ("val_noisy", "download", "augment"):
        for value in ("on", "off", "yes", "no", "y", "n", 1, 0, "1"):
            with pytest.raises(ConfigError, match=f"^{field}: {re.escape(repr(value))} is not allowed; "
                                                  "expected true or false"):
                TrainConfig.from_dict({field: value})
        assert getattr(TrainConfig.from_dict({field: True}), field) is True
        assert getattr(TrainConfig.from_dict({field: "False"}), field) is False


def test_constructing_the_dataclass_raises_config_errors_too():
    """TrainConfig(**values) and dataclasses.replace raised pydantic's ValidationError, which an
    `except ConfigError` (what from_dict raises) missed, and a rule between fields lost its name."""
    import dataclasses

    with pytest.raises(ConfigError, match=r"^noise_rate: 0.4 is not allowed; must be 0 with noise 'none'$"):
        TrainConfig(noise="none", noise_rate=0.4)
    with pytest.raises(ConfigError, match=r"^nosie: 1 is not allowed; unknown field"):
        TrainConfig(nosie=1)
    with pytest.raises(ConfigError, match=r"^lam: -1 is not allowed"):
        dataclasses.replace(TrainConfig(), lam=-1)
    assert TrainConfig(noise_rate=0.3) == TrainConfig.from_dict({"noise_rate": 0.3})
    with pytest.raises(ConfigError, match=r"^dataset: 'nope' is not allowed; expected one of"):  # was "[0]: ..."
        TrainConfig("nope")
    assert TrainConfig("mnist1d", None, False, noise_rate=0.2).dataset == "mnist1d"
