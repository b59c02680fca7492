"""train(): a baby config end to end, determinism, resume, divergence, DM vs CCE under noise,
and every model in MODELS on a matching input."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from dm_tune._validate import ConfigError
from dm_tune.config import TrainConfig
from dm_tune.data import prepare
from dm_tune.datasets import DATASETS, Source
from dm_tune.models import MODELS, ModelSpec, build_model
from dm_tune.train import TrainResult, train

METRICS = ("epoch", "train_loss", "train_acc", "train_clean_acc", "val_acc", "test_acc", "weight_clean",
           "weight_noisy", "noisy_fit", "weight_var", "lr", "epoch_time_s")

_DIGITS: list[Source] = []


def digits() -> Source:
    if not _DIGITS:  # load once per module (~1 s)
        _DIGITS.append(DATASETS["digits"][0](None, {}, False))
    return _DIGITS[0]


def run(report=None, resume=None, **kw) -> TrainResult:
    cfg = TrainConfig.from_dict({"dataset": "digits", "device": "cpu", "noise": "symmetric",
                                 "noise_rate": 0.4, **kw})
    return train(cfg, prepare(cfg, digits()), report, resume)


def without_times(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in history]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def baby() -> TrainResult:
    return run(epochs=3, seed=0)


# --- a baby run ------------------------------------------------------------------------------


def test_baby_run_reports_every_metric_every_epoch(baby):
    assert baby.status == "finished" and baby.epochs_completed == 3 and len(baby.history) == 3
    for i, h in enumerate(baby.history):
        assert set(METRICS) <= set(h), set(METRICS) - set(h)
        assert h["epoch"] == i + 1
        assert all(math.isfinite(h[k]) for k in METRICS), h
        for k in ("train_acc", "train_clean_acc", "val_acc", "test_acc", "noisy_fit"):
            assert 0.0 <= h[k] <= 1.0, (k, h[k])
        assert h["weight_clean"] > 0 and h["weight_noisy"] > 0 and h["weight_var"] >= 0
        assert h["lr"] == pytest.approx(1e-3)  # digits default: adam 1e-3, no schedule
    assert baby.history[-1]["train_loss"] < baby.history[0]["train_loss"]
    assert baby.history[-1]["test_acc"] > 0.5  # learning despite 40% noise


def test_baby_run_result_fields(baby):
    last = baby.history[-1]
    assert baby.test_accuracy == last["test_acc"] and baby.val_accuracy == last["val_acc"]
    assert baby.noise_rate_realised == pytest.approx(0.4, abs=0.03)
    assert baby.config["epochs"] == 3 and baby.config["model"] == "mlp" and baby.config["seed"] == 0
    assert baby.data["dataset"] == "digits"
    assert baby.data["num_train"] + baby.data["num_val"] == len(digits().train)
    assert {"git_commit", "versions"} <= set(baby.provenance)
    d = baby.to_dict()
    assert {"git_commit", "package_versions"} <= set(d["config"]) and d["config"]["package_versions"]["torch"]
    # the packages that make data or fit numbers too: mnist1d generates MNIST-1D (its version was not
    # recorded), scipy fits the report's GPs, cmaes samples
    assert {"mnist1d", "scipy", "cmaes", "scikit-learn", "numpy"} <= set(d["config"]["package_versions"])


def test_best_and_final_accuracies_are_consistent(baby):
    tests = [h["test_acc"] for h in baby.history]
    vals = [h["val_acc"] for h in baby.history]
    assert baby.best_test_accuracy == max(tests) >= baby.test_accuracy
    assert baby.history[baby.best_epoch - 1]["test_acc"] == baby.best_test_accuracy
    assert baby.best_epoch == tests.index(max(tests)) + 1  # the first epoch that reached it
    assert baby.best_val_accuracy == max(vals)
    assert baby.val_selected_test_accuracy == tests[vals.index(max(vals))]


def test_clean_run_has_no_noisy_weights():
    result = run(epochs=1, noise="none", noise_rate=0.0)
    h = result.history[0]
    assert math.isnan(h["weight_noisy"]) and math.isnan(h["noisy_fit"])
    assert h["weight_clean"] == pytest.approx(1.0)  # all examples clean: their mean is the batch mean
    assert h["train_acc"] == h["train_clean_acc"]


def test_same_seed_same_history_other_seed_other_history(baby):
    again = run(epochs=3, seed=0)
    assert without_times(again.history) == without_times(baby.history)
    other = run(epochs=3, seed=1)
    assert without_times(other.history) != without_times(baby.history)


def test_result_records_what_decides_its_rounding(baby):
    """The same config and seed repeat bit for bit only on the same kind of CPU with the same number
    of torch threads (two threads sum in another order): the result names both."""
    assert baby.provenance["torch_threads"] == 1  # (one_thread)
    assert isinstance(baby.provenance["cpu"], str) and baby.provenance["cpu"]
    torch.set_num_threads(2)
    try:
        two = run(epochs=1, seed=0)
    finally:
        torch.set_num_threads(1)
    assert two.provenance["torch_threads"] == 2 and two.to_dict()["provenance"]["torch_threads"] == 2


def test_report_is_called_every_epoch_with_a_snapshot():
    seen = []
    result = run(epochs=2, report=lambda m, snap: seen.append((m, snap)))
    assert [m for m, _ in seen] == result.history
    state = seen[-1][1]()
    assert state["epoch"] == 2 and {"model", "optimizer", "generator", "history", "config"} <= set(state)


def test_resume_reproduces_the_uninterrupted_run():
    kw = dict(epochs=4, seed=3, schedule="cosine")  # the lr depends on the epoch too
    saved = {}

    def report(metrics, snapshot):
        if metrics["epoch"] == 2:  # checkpoint as a tuner would: serialised, not by reference
            buf = io.BytesIO()
            torch.save(snapshot(), buf)
            saved["state"] = buf.getvalue()

    full = run(report=report, **kw)
    state = torch.load(io.BytesIO(saved["state"]), weights_only=False)
    assert state["epoch"] == 2
    resumed = run(resume=state, **kw)
    assert resumed.epochs_completed == 4
    assert without_times(resumed.history) == without_times(full.history)
    assert resumed.test_accuracy == full.test_accuracy and resumed.best_epoch == full.best_epoch
    assert resumed.history[2]["lr"] != resumed.history[1]["lr"]


def test_a_snapshot_kept_by_reference_still_resumes_where_it_was_taken():
    """``snapshot()``'s history was the run's own list: kept past its epoch (the Python API allows
    it), it grew with the run, and a resume from it repeated the later epochs."""
    kw = dict(epochs=4, seed=3)
    taken = {}

    def report(metrics, snapshot):
        if metrics["epoch"] == 2:
            taken["state"] = snapshot()  # not serialised: its tensors move on, its history must not

    run(report=report, **kw)
    state = taken["state"]
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]
    state["history"] = state["history"] + [{"epoch": 3}]  # a history longer than its epoch: cut to it
    assert [h["epoch"] for h in run(resume=state, **kw).history] == [1, 2, 3, 4]


def test_without_a_validation_split_nothing_is_chosen_by_validation():
    """val_fraction 0: every val_acc is NaN, and the val-selected test accuracy was epoch 1's."""
    result = run(epochs=3, seed=0, val_fraction=0.0)
    assert all(math.isnan(h["val_acc"]) for h in result.history)
    assert math.isnan(result.best_val_accuracy) and math.isnan(result.val_selected_test_accuracy)
    assert result.best_epoch == max(result.history, key=lambda h: h["test_acc"])["epoch"]


def test_the_fused_adam_follows_torchs_default_adam(monkeypatch):
    """On the CPU train() uses torch's fused Adam (faster); torch's default Adam, the loop of
    elementwise operations, is the reference it is checked against: 2 epochs (32 steps), with
    weight decay and a schedule, to float tolerance."""
    import importlib

    train_module = importlib.import_module("dm_tune.train")
    kw = dict(epochs=2, seed=1, weight_decay=1e-4, schedule="cosine")
    snaps = {}
    for arm in ("fused", "default"):
        if arm == "default":
            monkeypatch.setattr(train_module, "_make_optimizer", lambda c, model, device: torch.optim.Adam(
                model.parameters(), lr=c.lr, weight_decay=c.weight_decay))
        result = run(report=lambda m, snap, arm=arm: snaps.__setitem__(arm, snap()), **kw)
        assert result.status == "finished"
    assert snaps["fused"]["optimizer"]["param_groups"][0]["fused"] is True
    assert not snaps["default"]["optimizer"]["param_groups"][0]["fused"]
    for key, value in snaps["default"]["model"].items():
        torch.testing.assert_close(snaps["fused"]["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_evaluation_batches_shrink_with_the_input_and_change_nothing(monkeypatch):
    """A 4-frame 256 x 128 MARS track batch of 1024 needed tens of GiB; the batch is sized by the
    input now. Smaller batches give the same accuracies."""
    import importlib

    from dm_tune.train import EVAL_BATCH, eval_batch

    assert eval_batch((64,)) == eval_batch((3, 32, 32)) == EVAL_BATCH
    assert eval_batch((3, 224, 224)) == 64 and eval_batch((4, 3, 256, 128)) == 24
    whole = run(epochs=1)
    monkeypatch.setattr(importlib.import_module("dm_tune.train"), "EVAL_ELEMENTS", 64 * 7)  # 7 digits at a time
    assert eval_batch((64,)) == 7
    small = run(epochs=1)
    assert [(h["val_acc"], h["test_acc"]) for h in small.history] == [(h["val_acc"], h["test_acc"])
                                                                      for h in whole.history]


def test_a_diverging_run_stops_and_says_so():
    result = run(epochs=10, optimizer="sgd", lr=10.0, weight_decay=1.0, momentum=0.0)
    assert result.status == "diverged"
    assert result.epochs_completed == len(result.history) < 10
    assert result.history[-1].get("diverged") == 1.0
    assert not math.isfinite(result.history[-1]["train_loss"])
    # Its NaN logits predict nothing: no accuracy (argmax reads NaN as largest: class 0's share, 0.1).
    assert result.history[-1]["val_acc"] == result.history[-1]["test_acc"] == 0.0


def test_evaluation_builds_no_autograd_graph(monkeypatch):
    """Every forward pass in evaluation mode (validation and test accuracy) runs without autograd;
    training's forward passes with it."""
    import dm_tune.train as train_module

    seen: set[tuple[bool, bool]] = set()  # (model in training mode, autograd on)

    def build(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_hook(lambda mod, inputs, out: seen.add((mod.training, torch.is_grad_enabled())))
        return model

    monkeypatch.setattr(train_module, "build_model", build)
    assert run(epochs=1, seed=0).status == "finished"
    assert seen == {(True, True), (False, False)}


def test_a_row_with_a_non_finite_logit_predicts_no_class():
    from dm_tune.train import predicted

    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[0.0, 2.0, 1.0], [nan, 0.0, 1.0], [0.0, inf, 1.0], [-inf, -inf, -inf], [1.0, 1.0, 0.0]])
    assert predicted(logits).tolist() == [1, -1, -1, -1, 0]
    assert predicted(logits.expand(2, 5, 3)).tolist() == [[1, -1, -1, -1, 0]] * 2  # a population's [K, B, C]


def test_a_run_resumed_from_the_epoch_it_diverged_in_stays_diverged():
    """The snapshot of the diverged epoch (a trial killed after reporting it): resuming it trained
    on from the diverged weights; it is the same ended run."""
    kw = dict(epochs=5, optimizer="sgd", lr=10.0)
    snaps = []
    result = run(report=lambda m, snap: snaps.append(snap()), **kw)
    assert result.status == "diverged" and result.epochs_completed == 1 == len(snaps)
    resumed = run(resume=snaps[-1], **kw)
    assert (resumed.status, resumed.epochs_completed) == ("diverged", 1)
    assert without_times(resumed.history) == without_times(result.history)


@pytest.mark.parametrize("method, noise_rate", [("cce", 0.0), ("dm", 0.4), ("cce", 0.4)])
def test_a_loss_that_explodes_but_stays_finite_is_diverged(method, noise_rate):
    """SGD at lr 10: the loss reaches 70 to 1e20 in the first epoch (finite), then sits at chance."""
    result = run(epochs=5, optimizer="sgd", lr=10.0, method=method, noise_rate=noise_rate)
    first = result.history[0]
    assert math.isfinite(first["train_loss"]) and first["train_loss"] > 60
    assert result.status == "diverged" and result.epochs_completed == 1
    assert first.get("diverged") == 1.0


def test_a_noisy_run_that_learns_is_not_diverged():
    """The explosion threshold is far above any loss of a model that learns (CCE at 60% noise)."""
    result = run(epochs=30, noise_rate=0.6, method="cce")
    assert result.status == "finished" and result.epochs_completed == 30


# --- mixed precision on the CPU ------------------------------------------------------------------


def _linear_output_dtypes(monkeypatch) -> set[torch.dtype]:
    """The dtypes every nn.Linear of the models train() builds from now on computes in."""
    import dm_tune.train as train_module

    seen: set[torch.dtype] = set()

    def build(*args, **kwargs):
        model = build_model(*args, **kwargs)
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.register_forward_hook(lambda mod, inputs, out: seen.add(out.dtype))
        return model

    monkeypatch.setattr(train_module, "build_model", build)
    return seen


@pytest.mark.parametrize("amp,expected", [("bf16", torch.bfloat16), ("auto", torch.float32),
                                          ("fp16", torch.float32), ("off", torch.float32)])
def test_only_an_explicit_bf16_runs_the_cpu_products_in_bf16(monkeypatch, amp, expected):
    """--amp bf16 autocasts a CPU run (its products, training and evaluation); auto and fp16 leave
    the CPU in float32 (fp16 would need a loss scaler, and few CPUs multiply in it natively)."""
    seen = _linear_output_dtypes(monkeypatch)
    result = run(epochs=1, seed=0, amp=amp)
    assert result.status == "finished" and result.config["amp"] == amp
    assert seen == {expected}


def test_a_bf16_cpu_run_learns_like_the_float32_one():
    """bf16 products (float32 weights, optimiser and loss) change the trajectory, not what is learnt."""
    fp32, bf16 = run(epochs=5, seed=0, amp="off"), run(epochs=5, seed=0, amp="bf16")
    assert bf16.status == "finished" and bf16.history[-1]["train_loss"] != fp32.history[-1]["train_loss"]
    assert bf16.test_accuracy == pytest.approx(fp32.test_accuracy, abs=0.03), (bf16.test_accuracy, fp32.test_accuracy)
    assert bf16.test_accuracy > 0.8


# --- DM against CCE under 40% symmetric noise, 3 seeds, digits' default schedule ------------
# Measured (final test accuracy, digits defaults: 60 epochs adam 1e-3): DM lam=2 beta=24
# 94.8 / 94.3 / 93.3 %, CCE 74.6 / 79.3 / 78.7 % (seeds 0-2): a gap of ~16.6 points.
# Relative weight of noisy examples in the last epoch (1 = batch mean): DM ~0.81 / 1.01 / 0.99,
# CCE ~1.59 / 1.54 / 1.61.

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def dm_vs_cce() -> dict[str, list[TrainResult]]:
    return {
        "dm": [run(method="dm", lam=2.0, beta=24.0, seed=s) for s in SEEDS],
        "cce": [run(method="cce", seed=s) for s in SEEDS],
    }


def test_dm_beats_cce_under_symmetric_noise(dm_vs_cce):
    dm = np.mean([r.test_accuracy for r in dm_vs_cce["dm"]])
    cce = np.mean([r.test_accuracy for r in dm_vs_cce["cce"]])
    assert all(r.epochs_completed == 60 and r.status == "finished" for rs in dm_vs_cce.values() for r in rs)
    assert dm - cce >= 0.08, (dm, cce)


def test_dm_gives_noisy_examples_less_weight_than_cce(dm_vs_cce):
    dm = [r.history[-1]["weight_noisy"] for r in dm_vs_cce["dm"]]
    cce = [r.history[-1]["weight_noisy"] for r in dm_vs_cce["cce"]]
    assert np.mean(dm) < np.mean(cce) - 0.3, (dm, cce)
    assert max(dm) < min(cce), (dm, cce)


# --- models ----------------------------------------------------------------------------------

SPECS = {
    "mlp": ModelSpec((64,), "vector", 10, hidden_dim=32),
    "imdb-mlp": ModelSpec((100,), "vector", 2),
    "cnn": ModelSpec((3, 32, 32), "image", 10),
    "resnet20": ModelSpec((3, 32, 32), "image", 10),
    "resnet32": ModelSpec((3, 32, 32), "image", 100),
    "resnet44": ModelSpec((3, 32, 32), "image", 10),
    "resnet56": ModelSpec((1, 32, 32), "image", 10),
    "resnet18": ModelSpec((3, 32, 32), "image", 14),
    "resnet50": ModelSpec((3, 32, 32), "image", 14),
    "text": ModelSpec((20,), "tokens", 2, vocab_size=50),
    "reid-resnet18": ModelSpec((2, 3, 32, 16), "video", 5),   # tracks of 2 frames
    "reid-resnet50": ModelSpec((2, 3, 32, 16), "video", 5),
}


def test_every_model_has_a_spec():
    assert sorted(SPECS) == sorted(MODELS)


def _inputs(spec: ModelSpec, n: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if spec.input_kind == "tokens":
        return torch.randint(0, spec.vocab_size, (n, *spec.input_shape), generator=gen)
    return torch.randn((n, *spec.input_shape), generator=gen)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_model_builds_and_forwards(name):
    spec = SPECS[name]
    torch.manual_seed(0)
    model = build_model(name, spec)
    out = model(_inputs(spec))
    assert out.shape == (2, spec.num_classes) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_image_runs_keep_images_and_convolutions_channels_last():
    # (a run's numbers against the contiguous layout: test_population compares a ResNet-20 member,
    # whose grouped convolutions are contiguous, with its own channels-last train() run)
    from types import SimpleNamespace

    from dm_tune.train import channels_last

    image, vector, signal = (SimpleNamespace(input_kind=k) for k in ("image", "vector", "signal"))
    for name in ("resnet20", "cnn"):
        assert channels_last(build_model(name, ModelSpec((3, 32, 32), "image", 10)), image)
    assert not channels_last(build_model("mlp", ModelSpec((64,), "vector", 10)), vector)
    assert not channels_last(build_model("cnn", ModelSpec((40,), "signal", 10)), signal)


def test_cnn_on_signals():
    spec = ModelSpec((40,), "signal", 10)
    assert build_model("cnn", spec)(_inputs(spec)).shape == (2, 10)


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan"])
@pytest.mark.parametrize("length", [40, 7])
def test_pair_max_pool_is_max_pool_1d_with_its_gradients(length, nan):
    # Integer values make ties common (ties at zero after a ReLU, and between equal positives):
    # the gradient goes to the first element of a tied pair, as MaxPool1d gives it. Finite
    # values take the fast path; a NaN anywhere the exact one.
    from dm_tune.models import PairMaxPool1d

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (8, 5, length), generator=gen).double().relu()
    if nan:
        x[0, 0, :4] = torch.tensor([math.nan, 1.0, 1.0, math.nan])  # a NaN propagates from either side
    x.requires_grad_()
    grad = torch.randn(8, 5, length // 2, generator=gen, dtype=torch.float64)
    ref = torch.nn.MaxPool1d(2)(x)
    ours = PairMaxPool1d()(x)
    assert ours[0, 0, :2].isnan().all() == nan
    assert torch.allclose(ours, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(ref, x, grad)[0])
    # An infinite or NaN gradient goes to the picked element only, as MaxPool1d routes it.
    grad[1, 1, 0], grad[2, 3, 1] = math.inf, math.nan
    ours, ref = PairMaxPool1d()(x), torch.nn.MaxPool1d(2)(x)
    ours_grad, ref_grad = torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(ref, x, grad)[0]
    assert torch.equal(ours_grad.isnan(), ref_grad.isnan()) and ours_grad.isinf().sum() == 1
    assert torch.allclose(ours_grad, ref_grad, rtol=0, atol=0, equal_nan=True)
    with torch.no_grad():
        assert torch.allclose(PairMaxPool1d()(x), ref, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="kernel_size 2"):
        PairMaxPool1d(3)


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan"])
@pytest.mark.parametrize("length", [10, 7])
def test_pair_max_along_a_middle_dimension_is_max_pool_1d(length, nan):
    # A population's layout [K, C, L, B] pools along L: the same values and gradients as
    # MaxPool1d(2) on each member's [B, C, L], ties and NaNs included.
    from dm_tune.models import pair_max

    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, (3, 4, length, 6), generator=gen).double().relu()
    if nan:
        x[1, 2, :2, 0] = torch.tensor([1.0, math.nan])
    x.requires_grad_()
    grad = torch.randn(3, 4, length // 2, 6, generator=gen, dtype=torch.float64)
    ours = pair_max(x, 2)
    ref = torch.nn.MaxPool1d(2)(x.permute(0, 3, 1, 2).reshape(18, 4, length)).reshape(3, 6, 4, -1).permute(0, 2, 3, 1)
    assert ours[1, 2, 0, 0].isnan() == nan
    assert torch.allclose(ours, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(ref, x, grad)[0])


def test_the_signal_cnn_pools_pairs_with_the_fast_path():
    from dm_tune.models import PairMaxPool1d

    model = build_model("cnn", ModelSpec((40,), "signal", 10))
    assert sum(isinstance(m, PairMaxPool1d) for m in model.modules()) == 3


def test_imdb_mlp_has_eight_hidden_units():
    model = build_model("imdb-mlp", SPECS["imdb-mlp"])
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [8, 2]


@pytest.mark.parametrize("name, spec", [
    ("cnn", ModelSpec((20,), "tokens", 2, vocab_size=50)),
    ("mlp", ModelSpec((20,), "tokens", 2, vocab_size=50)),  # a traceback (Long into Linear) once training began
    ("imdb-mlp", ModelSpec((20,), "tokens", 2, vocab_size=50)),
    ("resnet20", ModelSpec((64,), "vector", 10)),
    ("resnet18", ModelSpec((64,), "vector", 10)),
    ("text", ModelSpec((3, 32, 32), "image", 10)),
    ("reid-resnet50", ModelSpec((64,), "vector", 10)),
])
def test_models_reject_the_wrong_input_kind(name, spec):
    with pytest.raises(ConfigError, match="needs") as info:  # user input: exit 2 in the CLI
        build_model(name, spec)
    assert info.value.field == "model" and info.value.value == name


def test_missing_pretrained_file_is_a_config_error(tmp_path):
    spec = ModelSpec((3, 32, 32), "image", 10, pretrained=str(tmp_path / "none.pth"))
    with pytest.raises(ConfigError, match="none.pth") as info:
        build_model("resnet18", spec)
    assert info.value.field == "pretrained"


def test_a_run_refuses_data_prepared_for_another_setting():
    """train(config, data) trained on whatever data it was given and recorded the config's setting:
    40% noise drawn from seed 0, recorded as clean labels and data seed 3."""
    from dm_tune.population import train_population

    config = TrainConfig.from_dict({"noise_rate": 0.4, "epochs": 1, "device": "cpu"})
    data = prepare(config)
    for other, field in ((config.replace(noise_rate=0.0), "noise_rate"), (config.replace(seed=3), "data_seed")):
        with pytest.raises(ConfigError, match=rf"^{field}: .* is not allowed; the data was prepared with {field} "):
            train(other, data)
        with pytest.raises(ConfigError, match=rf"^{field}: "):
            train_population([config, other], [data, data])
    same_data = config.replace(seed=3, data_seed=0, method="cce")  # another init on the same draw: fine
    assert train(same_data, data).epochs_completed == 1
    reid = TrainConfig.from_dict({"dataset": "reid-synth", "noise_rate": 0.3, "epochs": 1, "device": "cpu"})
    with pytest.raises(ConfigError, match=r"^noise_rate: 0.0 is not allowed; the data was prepared with noise_rate"):
        train(reid.replace(noise_rate=0.0), prepare(reid))  # (retrieval data too)
