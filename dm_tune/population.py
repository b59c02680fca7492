"""Population trials: K training configurations of one dataset and architecture in one loop.

``train_population(configs, datas, report, resume) -> list[TrainResult]`` trains member k on
``datas[k]`` exactly as ``train(configs[k], datas[k])`` would (same initialisation, batch order,
augmentation, method, optimiser and schedule), but all members step together: their parameters
are stacked (dm_tune._popmodels), their losses computed in one call (dm_tune._poplosses) and
their updates applied in one pass (dm_tune._popoptim). ``train()`` stays the reference; the
tests check a member's trajectory against it.

Shared by the members of one population: the dataset and its test split, the model
architecture, batch size, epochs, optimiser kind, device and precision (``SHARED_FIELDS``).
Per member: everything else (method and its knobs, seed and data seed, so the noise draw,
validation split, initialisation and batch order; learning rate, weight decay, momentum and
schedule). ``plan_populations`` splits any list of configurations into populations.

Members fail alone: a member whose loss or weights become NaN/inf is recorded as
``diverged`` and frozen (its parameters zeroed, its learning rate 0); the others go on.

``report(metrics, snapshot)`` is called after every epoch with ``{member index: that epoch's
metrics}`` for the members that trained in it, and a zero-argument function returning the
population's state (see ``snapshot`` in train_population: one entry per member, in the single
model's state-dict format); ``train_population(..., resume=state)`` continues every unfinished
member from it. A member's ``epoch_time_s`` is its share of the population's epoch (wall time /
members trained), so summing over members gives the wall time; ``population_epoch_time_s`` and
``population_size`` are in its history too.

Models without a population form (``dm_tune._popmodels.unsupported_reason``), on-disk data and
fp16 mixed precision (which needs a loss scaler per member) run one member at a time through
``train()``; a population of one member always does.
"""

from __future__ import annotations

import math
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dm_tune._poplosses import MEMBER_LOSSES, PopulationLoss, member_loss
from dm_tune._popmodels import PopulationModel, unsupported_reason
from dm_tune._popoptim import PopulationOptimizer
from dm_tune._popsteps import MemberRows, PopulationInputs, epoch_metrics, evaluate, step_metrics
from dm_tune.class_weighting import member_class_weights
from dm_tune.config import TrainConfig
from dm_tune.data import Data, check_prepared_for
from dm_tune.errors import UserError
from dm_tune.methods import build_loss
from dm_tune.models import ModelSpec, build_model
from dm_tune.train import (EVAL_BATCH, TrainResult, _amp_dtype, _autocast, _lr_factor, _result, batch_bounds,
                           loss_ceiling, select_device, train)

PopulationReport = Callable[[dict[int, dict[str, float]], Callable[[], dict[str, Any]]], None]

# Fields every member of one population shares (the resolved config's); all others may differ.
SHARED_FIELDS = ("dataset", "data_root", "dataset_options", "model", "hidden_dim", "pretrained", "optimizer",
                 "epochs", "batch_size", "augment", "device", "amp")

SNAPSHOT_FORMAT = "dm-tune-population/1"

# The population size chosen from benchmarks/population.py (BENCHMARKS.md, "Population trials"),
# by device type and model: at or near the most configurations per second, for speed and memory.
# 1: populations were no faster than separate runs there (the ResNets on the 2-core CPU, where
# their arithmetic and memory traffic, not per-step overhead, bound a step). The 1-D CNN: 4
# (1.4-1.7x on the Intel Xeon VM, as fast as 16 and with a quarter of the memory). Models not
# listed: 16.
SUGGESTED_SIZES: dict[tuple[str, str], int] = {
    ("cpu", "mlp"): 16, ("cpu", "imdb-mlp"): 16, ("cpu", "cnn"): 4,
    ("cpu", "resnet20"): 1, ("cpu", "resnet32"): 1, ("cpu", "resnet44"): 1, ("cpu", "resnet56"): 1,
    ("cuda", "resnet20"): 64,
}


def suggested_population_size(model: str, device_type: str) -> int:
    """How many members to train at once for ``model`` on a ``device_type`` ("cpu", "cuda") device."""
    return SUGGESTED_SIZES.get((device_type, model), 16)


def _resolved(config: TrainConfig, data: Data) -> TrainConfig:
    return config.resolve(data.defaults, data.default_model, data.input_kind)


def population_key(config: TrainConfig, data: Data) -> tuple[Any, ...]:
    """Members with equal keys can share a population."""
    c = _resolved(config, data)
    return tuple(repr(getattr(c, f)) for f in SHARED_FIELDS) + (
        data.input_shape, data.num_classes, len(data.train), len(data.val), len(data.test))


def solo_reason(config: TrainConfig, data: Data) -> str | None:
    """Why this configuration must train alone (through train()), or None if it can join a population."""
    c = _resolved(config, data)
    if data.task != "classification":
        return f"dataset {c.dataset!r} is a {data.task} task (populations evaluate classification accuracy)"
    if not (data.train.in_memory and data.val.in_memory and data.test.in_memory):
        return f"dataset {c.dataset!r} is read from disk (populations need in-memory data)"
    if c.method not in MEMBER_LOSSES:
        return f"method {c.method!r} has no population form"
    device = select_device(c.device)
    if _amp_dtype(c, device) == torch.float16:
        return "fp16 mixed precision needs a loss scaler per member (use --amp bf16 or off)"
    spec = _spec(c, data)
    with torch.random.fork_rng(devices=[]):
        return unsupported_reason(build_model(c.model, spec))


def plan_populations(configs: Sequence[TrainConfig], datas: Sequence[Data], size: int) -> list[list[int]]:
    """Member indices grouped into populations of at most ``size`` compatible members, in order;
    members that must train alone (``solo_reason``) get populations of their own."""
    if size < 1:
        raise ValueError(f"population size must be >= 1, got {size}")
    groups: dict[tuple[Any, ...], list[int]] = {}
    plan: list[list[int]] = []
    for i, (config, data) in enumerate(zip(configs, datas)):
        if size == 1 or solo_reason(config, data) is not None:
            plan.append([i])
            continue
        group = groups.setdefault(population_key(config, data), [])
        if not group:
            plan.append(group)
        group.append(i)
        if len(group) == size:
            del groups[population_key(config, data)]
    return plan


def train_population(configs: Sequence[TrainConfig], datas: Sequence[Data],
                     report: PopulationReport | None = None,
                     resume: dict[str, Any] | None = None,
                     member_done: Callable[[int, TrainResult], None] | None = None) -> list[TrainResult]:
    """Train every member ``configs[k]`` on ``datas[k]``; one TrainResult per member, in order.

    ``member_done(k, result)``: called as soon as member ``k`` has its result: in a population
    trained one member at a time before the next starts, in one trained together when the member
    diverges (frozen, it never changes again; the others end at once, in the returned list). A
    caller keeps it, so that a population that then fails for good does not lose how it ended."""
    if len(configs) != len(datas) or not configs:
        raise ValueError(f"need one data per config and at least one member, got {len(configs)} and {len(datas)}")
    for c, d in zip(configs, datas):
        check_prepared_for(c, d)
    reasons = [solo_reason(c, d) for c, d in zip(configs, datas)]
    if len(configs) == 1 or any(reasons):
        reason = next((r for r in reasons if r), None)
        if reason and len(configs) > 1:
            print(f"dm-tune: population of {len(configs)} runs one member at a time (K = 1): {reason}",
                  file=sys.stderr)
        return _train_one_by_one(configs, datas, report, resume, member_done)
    return _train_all(configs, datas, report, resume, member_done)


def _train_all(configs: Sequence[TrainConfig], datas: Sequence[Data], report: PopulationReport | None,
               resume: dict[str, Any] | None,
               member_done: Callable[[int, TrainResult], None] | None = None) -> list[TrainResult]:
    keys = [population_key(c, d) for c, d in zip(configs, datas)]
    if len(set(keys)) > 1:
        field = _first_difference(configs, datas)
        raise ValueError(f"members of one population must share {field!r} (see plan_populations)")
    try:
        return _train_together([_resolved(c, d) for c, d in zip(configs, datas)], list(datas), report, resume,
                               member_done)
    except torch.cuda.OutOfMemoryError as e:  # the population's size is the user's knob: say which
        raise UserError(f"a population of {len(configs)} members ran out of GPU memory ({_oom_summary(e)}); "
                        f"train fewer at once: --population-size {len(configs) // 2} (dm-tune train, "
                        "dm-tune search) or population_size in the study") from None


def _oom_summary(error: BaseException) -> str:
    """torch's out-of-memory message up to what it says is free (its advice on the allocator left out)."""
    text = " ".join(str(error).split())
    found = re.match(r"(.*?is free)\.", text)
    return found.group(1) if found else text[:160]


def _first_difference(configs: Sequence[TrainConfig], datas: Sequence[Data]) -> str:
    resolved = [_resolved(c, d) for c, d in zip(configs, datas)]
    for f in SHARED_FIELDS:
        if len({repr(getattr(c, f)) for c in resolved}) > 1:
            return f
    return "data shapes and split sizes"


def _spec(config: TrainConfig, data: Data) -> ModelSpec:
    return ModelSpec(data.input_shape, data.input_kind, data.num_classes, config.hidden_dim,
                     config.pretrained, data.vocab_size)


# --- one member at a time: train() itself ------------------------------------------------------


def _train_one_by_one(configs: Sequence[TrainConfig], datas: Sequence[Data], report: PopulationReport | None,
                      resume: dict[str, Any] | None,
                      member_done: Callable[[int, TrainResult], None] | None = None) -> list[TrainResult]:
    """Each member through train(); the snapshot holds the finished results and the current run."""
    if resume is not None and (resume.get("format") != SNAPSHOT_FORMAT or resume.get("kind") != "one-by-one"):
        raise ValueError("resume: not a snapshot of a population trained one member at a time")
    done: list[dict[str, Any]] = list(resume["done"]) if resume else []
    results = [TrainResult(**d) for d in done]
    for k, result in enumerate(results):  # finished before the snapshot
        if member_done is not None:
            member_done(k, result)
    interrupted = len(done)  # the member the snapshot's current run belongs to; those after it start afresh
    for k in range(len(results), len(configs)):
        current = resume["current"] if resume and k == interrupted else None

        def member_report(metrics: dict[str, float], snap: Callable[[], dict[str, Any]], k: int = k) -> None:
            if report is not None:
                report({k: metrics}, lambda: {"format": SNAPSHOT_FORMAT, "kind": "one-by-one",
                                              "done": list(done), "current": snap()})

        result = train(configs[k], datas[k], member_report, current)
        results.append(result)
        done.append(_result_fields(result))
        if member_done is not None:
            member_done(k, result)
    return results


def _result_fields(result: TrainResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in TrainResult.__dataclass_fields__}


# --- all members at once -----------------------------------------------------------------------


def _class_weights(configs: Sequence[TrainConfig], datas: Sequence[Data]) -> torch.Tensor | None:
    """Each member's class weights for its own (noisy) training labels, [K, C]; None if no member weights."""
    weights = [member_class_weights(c, d.train.labels, d.num_classes) for c, d in zip(configs, datas)]
    if all(w is None for w in weights):
        return None
    ones = torch.ones(datas[0].num_classes, dtype=torch.float64)
    return torch.stack([ones if w is None else w for w in weights])


def _stack(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Stacked [K, ...] on the device (labels and flags: small next to the inputs, see MemberRows)."""
    return torch.stack(tensors).to(device)


def _train_together(configs: list[TrainConfig], datas: list[Data], report: PopulationReport | None,
                    resume: dict[str, Any] | None,
                    member_done: Callable[[int, TrainResult], None] | None = None) -> list[TrainResult]:
    first, data0 = configs[0], datas[0]
    size = len(configs)
    device = select_device(first.device)
    amp = _amp_dtype(first, device)

    # Each member is built exactly as its own train() run builds it: seeded, then the model.
    members = []
    for c, d in zip(configs, datas):
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        np.random.seed(c.seed % 2**32)
        members.append(build_model(c.model, _spec(c, d)))
    gens = [torch.Generator(device="cpu").manual_seed(c.seed) for c in configs]
    model = PopulationModel(members).to(device)
    del members
    loss_fn = PopulationLoss([member_loss(c) for c in configs], _class_weights(configs, datas)).to(device)
    # As train(): a member whose epoch loss explodes (even finitely) has diverged (the display
    # loss is unweighted, so the ceiling needs no class weights).
    ceilings = [loss_ceiling(build_loss(c), data0.num_classes) for c in configs]
    opt = PopulationOptimizer(model.named_member_parameters(), str(first.optimizer),
                              [float(c.weight_decay) for c in configs], [c.momentum for c in configs])
    prep = PopulationInputs(data0, device, bool(first.augment), gens)

    # The members' data: member k's training set, labels and validation split in row k (the
    # inputs read through one device copy of the dataset they were taken from, where they share one).
    shared: dict = {}
    train_x = MemberRows([d.train.inputs for d in datas], device,  # type: ignore[misc]
                         [d.train.origin for d in datas], shared)
    train_y = _stack([d.train.labels for d in datas], device)
    is_noisy = _stack([d.is_noisy for d in datas], device)
    known = _stack([d.noise_known for d in datas], device)
    clean_labels = _stack([d.clean_train_labels for d in datas], device)
    val_x = MemberRows([d.val.inputs for d in datas], device,  # type: ignore[misc]
                       [d.val.origin for d in datas], shared)
    val_y = _stack([d.val.labels for d in datas], device)
    test_x, test_y = data0.test.inputs.to(device), data0.test.labels.to(device)  # type: ignore[union-attr]
    chunk = max(64, EVAL_BATCH // size) if data0.input_kind == "image" else EVAL_BATCH

    n = len(data0.train)
    batch_size, epochs = int(first.batch_size), int(first.epochs)  # type: ignore[arg-type]
    bounds = batch_bounds(n, batch_size)  # as train()'s: a last batch of one joins the one before
    steps_per_epoch = len(bounds)
    total_steps = steps_per_epoch * epochs

    histories: list[list[dict[str, float]]] = [[] for _ in configs]
    status = ["running"] * size
    start_epoch = 0

    def result(k: int) -> TrainResult:
        return _result(configs[k], datas[k], histories[k], "diverged" if status[k] == "diverged" else "finished",
                       sum(h["epoch_time_s"] for h in histories[k]))

    if resume is not None:
        start_epoch = _load(resume, configs, model, opt, gens, histories, status)
        for k in range(size):  # diverged before the snapshot: said again (the caller may be a new process)
            if status[k] == "diverged" and member_done is not None:
                member_done(k, result(k))

    def snapshot() -> dict[str, Any]:
        return {"format": SNAPSHOT_FORMAT, "kind": "population", "epoch": max(len(h) for h in histories),
                "members": [{"config": c.to_dict(), "status": status[k], "history": list(histories[k]),
                             "epoch": len(histories[k]), "model": model.member_state_dict(k),
                             "optimizer": opt.member_state(k), "generator": gens[k].get_state()}
                            for k, c in enumerate(configs)],
                "torch_rng": torch.get_rng_state()}

    for epoch in range(start_epoch, epochs):
        live = [k for k in range(size) if status[k] == "running"]
        if not live:
            break
        t0 = time.perf_counter()
        model.train()
        stepping = [status[k] == "running" for k in range(size)]  # False once a member stops
        running = torch.tensor(stepping, device=device).unsqueeze(1)
        acc = torch.zeros(size, 11, device=device, dtype=torch.float64)
        # acc columns as in train(): loss_sum, n, correct_noisy_label, correct_clean_label (where
        # known), w_clean_sum, n_clean, w_noisy_sum, n_noisy, noisy_fitted, weight_var_sum, n_known
        host_orders = torch.stack([torch.randperm(n, generator=g) for g in gens])
        orders = host_orders.to(device)
        # Each member's labels and noise flags in its epoch's order, once: a step takes a slice.
        epoch_y, epoch_noisy, epoch_known, epoch_clean = (
            t.gather(1, orders) for t in (train_y, is_noisy, known, clean_labels))
        lrs = [0.0] * size
        for step in range(steps_per_epoch):
            progress = (epoch * steps_per_epoch + step) / total_steps
            lrs = [c.lr * _lr_factor(c, progress) if stepping[k] else lrs[k] for k, c in enumerate(configs)]
            opt.set_lr([lr if stepping[k] else 0.0 for k, lr in enumerate(lrs)])
            part = slice(*bounds[step])
            idx, y = host_orders[:, part], epoch_y[:, part]
            with _autocast(device, amp):
                logits = model(prep(train_x.take(idx), train=True))
            losses = loss_fn(logits, y)
            opt.zero_grad()
            losses.sum().backward()
            opt.step()
            with torch.no_grad():
                shares = loss_fn.last_shares
                acc += torch.where(running, step_metrics(logits, y, losses, shares, epoch_noisy[:, part],
                                                          epoch_known[:, part], epoch_clean[:, part]), 0.0)
            if step % 20 == 0:
                bad = ~torch.isfinite(losses.detach()) & running.squeeze(1)
                if bool(bad.any()):  # as train() does: the member stops after this step
                    for k in bad.nonzero().flatten().tolist():
                        stepping[k] = False
                    running = torch.tensor(stepping, device=device).unsqueeze(1)
        a = acc.tolist()
        finite = model.finite_members().tolist()
        val_acc = evaluate(model, val_x, val_y, prep, amp, chunk)
        test_acc = evaluate(model, test_x, test_y, prep, amp, chunk)
        wall = time.perf_counter() - t0
        reported: dict[int, dict[str, float]] = {}
        for k in live:
            metrics = epoch_metrics(epoch, a[k], val_acc[k], test_acc[k], lrs[k], wall, len(live))
            if not math.isfinite(a[k][0]) or not finite[k] or a[k][0] / a[k][1] > ceilings[k]:
                status[k] = "diverged"
                metrics["diverged"] = 1.0
                model.zero_member(k)  # frozen: it computes finite values and never moves again
                opt.zero_member(k)
            elif epoch + 1 == epochs:
                status[k] = "finished"
            histories[k].append(metrics)
            reported[k] = dict(metrics)
            if status[k] == "diverged" and member_done is not None:
                member_done(k, result(k))
        if report is not None:
            report(reported, snapshot)

    return [result(k) for k in range(size)]


def _load(state: dict[str, Any], configs: list[TrainConfig], model: PopulationModel, opt: PopulationOptimizer,
          gens: list[torch.Generator], histories: list[list[dict[str, float]]], status: list[str]) -> int:
    """Restore a population snapshot; returns the epoch to continue from."""
    if state.get("format") != SNAPSHOT_FORMAT or state.get("kind") != "population":
        raise ValueError("resume: not a population snapshot of this version")
    members = state["members"]
    if len(members) != len(configs):
        raise ValueError(f"resume: the snapshot has {len(members)} members, the population {len(configs)}")
    for k, (member, config) in enumerate(zip(members, configs)):
        if member["config"] != config.to_dict():
            raise ValueError(f"resume: member {k}'s config differs from the snapshot's")
        model.load_member_state_dict(k, member["model"])
        opt.load_member_state(k, member["optimizer"])
        gens[k].set_state(member["generator"])
        histories[k].extend(member["history"])
        status[k] = member["status"]
        if status[k] == "diverged":
            model.zero_member(k)
            opt.zero_member(k)
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"])


__all__ = ["PopulationReport", "SHARED_FIELDS", "SUGGESTED_SIZES", "plan_populations", "population_key",
           "solo_reason", "suggested_population_size", "train_population"]
