"""The Ray Tune function trainable: a thin adapter from a population of ``TrialSpec`` to
``dm_tune.population.train_population`` (a population of one trains through ``dm_tune.train``).

The trial config is ``{"specs": [TrialSpec.to_dict(), ...], "group": name, "resume_from": path
or None}``; everything shared by the setting's trials (the training fields, the in-memory
dataset) is bound once with ``tune.with_parameters``. Every report carries each member's
metrics in ``members`` (a population of one also at the top level, where a scheduler reads
them); the trial ends with one final report of every member's ``TrialOutcome``.

Checkpoints hold the training state only (tensors and plain values, ``torch.save``; loaded with
``weights_only=True``). A retried trial continues from Tune's newest checkpoint of it; a population
handed out again after an interrupted search continues from ``resume_from``, the newest
checkpoint the ledger recorded for it. A trial shorter than the checkpoint interval has none and
starts again from scratch.
"""

from __future__ import annotations

import math
import os
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dm_tune.search._trial import RESTORED_KEY, TrialOutcome, TrialSpec, population_report

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class TrialRuntime:
    """How trials of a setting report and checkpoint (not part of what they train)."""

    checkpoint_every: int = 1        # epochs between checkpoints...
    checkpoint_min_s: float = 0.0    # ...but at most one per this many seconds
    report_every: int = 1            # epochs between reports to Tune (1 when a scheduler decides)
    cpus: int = 1                    # torch threads


def _fault_hook(epoch: int, members: set[int]) -> None:
    """Test hook: DMTUNE_FAULT="EPOCH:DIR" makes each trial fail once when it reaches EPOCH (with
    DMTUNE_FAULT_KILL=1 its worker process is killed instead, as by the OOM killer or kill -9);
    DMTUNE_FAULT_MEMBER=K: only when member K (of a population trained one at a time) reaches it."""
    spec = os.environ.get("DMTUNE_FAULT")
    if not spec:
        return
    at, marker_dir = spec.split(":", 1)
    member = os.environ.get("DMTUNE_FAULT_MEMBER")
    if member is not None and int(member) not in members:
        return
    from ray import tune

    marker = Path(marker_dir) / f"{tune.get_context().get_trial_id()}.failed"
    if epoch == int(at) and not marker.exists():
        marker.touch()
        if os.environ.get("DMTUNE_FAULT_KILL") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected failure at epoch {epoch} (DMTUNE_FAULT)")


def _load_state(directory: str | Path) -> dict[str, Any] | None:
    import torch

    path = Path(directory) / STATE_FILE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def _resume_state(resume_from: str | None) -> dict[str, Any] | None:
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            return _load_state(d)
    if resume_from and "://" in resume_from:  # a checkpoint on remote storage (--storage-path s3://...)
        with tune.Checkpoint(resume_from).as_directory() as d:
            return _load_state(d)
    if resume_from and Path(resume_from).is_dir():
        return _load_state(resume_from)
    return None


def _restored(resume: Mapping[str, Any] | None) -> dict[int, list[dict[str, Any]]]:
    """Each member's epochs in the checkpoint a trial resumes from (a population trained together,
    or the member a population trained one at a time was training)."""
    if not resume:
        return {}
    if resume.get("kind") == "population":
        return {k: list(m.get("history") or []) for k, m in enumerate(resume.get("members") or [])}
    if resume.get("kind") == "one-by-one" and resume.get("current"):
        return {len(resume.get("done") or []): list(resume["current"].get("history") or [])}
    return {}


def _reporter(runtime: TrialRuntime, budget: int, size: int, ended: dict[int, dict[str, Any]],
              restored: dict[int, list[dict[str, Any]]] | None = None,
              ) -> Callable[[dict[int, dict[str, float]], Any], None]:
    """Tune's per-epoch reports; ``ended``: the final reports of members that ended since the last
    report (trained one at a time, or diverged in a population trained together), carried in the
    next one in place of their epoch (the searcher keeps them), so that a trial that then fails for
    good loses none of them. ``restored``: each member's epochs before the checkpoint the trial
    resumed from, sent once with the member's first report after it (``RESTORED_KEY``), so that the
    history the searcher keeps of a trial cut short (by a scheduler) is whole."""
    import torch
    from ray import tune

    pending = {k: rows for k, rows in (restored or {}).items() if rows}
    last_checkpoint = [time.monotonic()]
    calls = [0]

    def report(epoch_metrics: dict[int, dict[str, float]], snapshot) -> None:
        calls[0] += 1
        epoch = max(int(m["epoch"]) for m in epoch_metrics.values())
        _fault_hook(epoch, set(epoch_metrics))
        members: list[dict[str, Any] | None] = [ended[k] if k in ended else epoch_metrics.get(k)
                                                for k in range(size)]
        metrics: dict[str, Any] = {"epoch": epoch, "members": members}
        if size == 1:
            # The last epoch reaches Tune only in the final report: a scheduler that stops trials
            # at the end of the budget (ASHA does) must not cut the trial off before it.
            if epoch == budget:
                return
            metrics.update(members[0] or {})
        sent = [k for k in pending if k not in ended and members[k] is not None]
        for k in sent:  # (its first epoch after the checkpoint; a member that ended carries its whole history)
            members[k] = {**members[k], RESTORED_KEY: pending[k]}
        due = (calls[0] % runtime.checkpoint_every == 0
               and time.monotonic() - last_checkpoint[0] >= runtime.checkpoint_min_s)
        if due and not all(m.get("diverged") for m in epoch_metrics.values()):
            last_checkpoint[0] = time.monotonic()
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(snapshot(), Path(tmp) / STATE_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            ended.clear()
        elif calls[0] % runtime.report_every == 0 or ended:
            tune.report(metrics)  # a member that ended rides in the first report after: it is sent now
            ended.clear()
        else:
            return  # not sent: the restored epochs wait for the next report
        for k in sent:
            del pending[k]

    return report


def _outcome(result: Any, node_id: str) -> TrialOutcome:
    # what trained it (provenance), and the fingerprints of what it trained on: its dataset, its label file
    fingerprints = {"data_fingerprint": result.data.get("fingerprint"),
                    "noise_file_fingerprint": result.data.get("noise_file_fingerprint")}
    return TrialOutcome(
        status=result.status, epochs_reached=result.epochs_completed,
        final_val_acc=result.val_accuracy, final_test_acc=result.test_accuracy,
        best_val_acc=result.best_val_accuracy, best_test_acc=result.best_test_accuracy,
        val_selected_test_acc=result.val_selected_test_accuracy, best_epoch=result.best_epoch,
        train_time_s=result.train_time_s, noise_rate_realised=result.noise_rate_realised,
        imbalance_ratio_realised=float(result.data.get("imbalance_ratio_realised", math.nan)),
        test_examples=float(result.data.get("num_test", math.nan)),
        node_id=node_id, history=tuple(result.history),
        provenance={**result.provenance, **{k: v for k, v in fingerprints.items() if v}},
        # retrieval: test_map -> final_test_map, ...; best_test_map and val_selected_test_map as named
        task_metrics={k if k.startswith(("best_", "val_selected_")) else f"final_{k}": v
                      for k, v in result.retrieval.items()})


def dm_trainable(config: Mapping[str, Any], base: Mapping[str, Any], runtime: TrialRuntime,
                 source: Any = None) -> None:
    import ray
    import torch
    from ray import tune

    from dm_tune.config import TrainConfig
    from dm_tune.data import prepare
    from dm_tune.population import train_population

    torch.set_num_threads(runtime.cpus)
    if not isinstance(config.get("specs"), (list, tuple)) or not config["specs"]:
        raise ValueError("dm_trainable's config is {'specs': [TrialSpec.to_dict(), ...]} (one per member, e.g. "
                         "{'setting': 'mine', 'stage': 'search', 'seed': 0, 'overrides': {'method': 'dm', 'lam': 1.0, "
                         f"'beta': 8.0}}}}), not {sorted(config)}: wrap a trainable of your own around it")
    specs = [TrialSpec.from_dict(d) for d in config["specs"]]
    configs = [TrainConfig.from_dict(spec.train_values(base)) for spec in specs]
    datas = [prepare(c, source) for c in configs]  # each seed its own noise draw and validation split
    d0 = datas[0]
    budget = configs[0].resolve(d0.defaults, d0.default_model, d0.input_kind).epochs
    resume = _resume_state(config.get("resume_from"))
    node = ray.get_runtime_context().get_node_id()
    ended: dict[int, dict[str, Any]] = {}

    def member_done(k: int, result: Any) -> None:
        ended[k] = _outcome(result, node).to_report()

    results = train_population(configs, datas, _reporter(runtime, budget, len(specs), ended, _restored(resume)),
                               resume=resume, member_done=member_done)
    tune.report(population_report([_outcome(r, node) for r in results]))
