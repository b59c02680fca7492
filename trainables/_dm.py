"""The Ray Tune function trainable: a thin adapter from a trial config to ``dm_tune.train``.

Trial config = the arm being tried: DM knobs from a searcher (``psi``/``rho`` or
``lam``/``beta``, optionally ``lr``/``weight_decay``) or a fixed arm (``overrides``, e.g. a
baseline), (``arm``: {name, baseline, overrides}) plus an optional ``seed``. Everything else (the setting, the budget) is ``base``,
bound once with ``tune.with_parameters`` together with the in-memory dataset, if any.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from dm_tune.search_spaces import to_lam_beta

SEARCHED = ("psi", "rho", "lam", "beta")
EXTRA = ("lr", "weight_decay")
STATE_FILE = "state.pt"
# Keys of ``base`` that steer the trial rather than the training run.
TRIAL_KEYS = ("checkpoint_every", "checkpoint_min_s", "report_every", "cpus_per_trial")


def trial_values(config: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig values for one trial: base, then fixed overrides, then searched knobs."""
    values = {k: v for k, v in base.items() if k not in TRIAL_KEYS}
    values.update((config.get("arm") or {}).get("overrides", {}))
    if any(k in config for k in SEARCHED):
        values.update(method="dm", **{k: v for k, v in to_lam_beta(config).items() if k in ("lam", "beta")})
    values.update({k: config[k] for k in EXTRA if k in config})
    if "seed" in config:
        values["seed"] = config["seed"]
    return values


def _fault_hook(epoch: int) -> None:
    """Test hook: DMTUNE_FAULT="EPOCH:DIR" makes each trial fail once when it reaches EPOCH."""
    spec = os.environ.get("DMTUNE_FAULT")
    if not spec:
        return
    at, marker_dir = spec.split(":", 1)
    from ray import tune

    marker = Path(marker_dir) / f"{tune.get_context().get_trial_id()}.failed"
    if epoch == int(at) and not marker.exists():
        marker.touch()
        raise RuntimeError(f"injected failure at epoch {epoch} (DMTUNE_FAULT)")


def dm_trainable(config: dict[str, Any], base: dict[str, Any], source: Any = None) -> None:
    import ray
    import torch
    from ray import tune

    from dm_tune import TrainConfig, prepare, train

    torch.set_num_threads(int(base.get("cpus_per_trial", 1)))
    cfg = TrainConfig.from_dict(trial_values(config, base))
    data = prepare(cfg, source)
    every = int(base.get("checkpoint_every", 1))
    # A checkpoint is skipped if the last one is more recent than this (short trials simply
    # restart after a crash; long ones lose at most this much work).
    min_s = float(base.get("checkpoint_min_s", 0.0))
    # Each tune.report is a round trip to the driver; without a scheduler that needs every epoch,
    # trials report at their checkpoints only and the final result carries the full history.
    report_every = int(base.get("report_every", 1))
    last_checkpoint = [time.monotonic()]
    # The last epoch goes to Tune only in the final report, with the result: a scheduler that
    # stops trials at the end of the budget (ASHA does) must not cut the trial off before it.
    budget = cfg.resolve(data.defaults, data.default_model, data.input_kind).epochs

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)

    def report(metrics: dict[str, float], snapshot) -> None:
        epoch = int(metrics["epoch"])
        _fault_hook(epoch)
        if epoch == budget:
            return
        due = epoch % every == 0 and time.monotonic() - last_checkpoint[0] >= min_s
        if due and not metrics.get("diverged"):
            last_checkpoint[0] = time.monotonic()
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(snapshot(), Path(tmp) / STATE_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        elif epoch % report_every == 0:
            tune.report(metrics)

    result = train(cfg, data, report, resume=resume)
    last = result.history[-1] if result.history else {"epoch": 0}
    tune.report({
        **last, "final": 1.0, "status": result.status,
        "final_test_acc": result.test_accuracy, "final_val_acc": result.val_accuracy,
        "best_test_acc": result.best_test_accuracy, "best_val_acc": result.best_val_accuracy,
        "val_selected_test_acc": result.val_selected_test_accuracy, "best_epoch": result.best_epoch,
        "epochs_reached": result.epochs_completed, "train_time_s": result.train_time_s,
        "noise_rate_realised": result.noise_rate_realised,
        "node_id": ray.get_runtime_context().get_node_id(),
        "result_json": json.dumps(result.to_dict(), allow_nan=True),
    })
