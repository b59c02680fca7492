"""One training run: ``train(config, data, report) -> TrainResult``. No Ray, Optuna or MLflow.

``report(metrics, snapshot)`` is called after every epoch with that epoch's metrics (a flat
dict of floats) and a zero-argument function returning the full training state, so a caller
can checkpoint without this module knowing how; ``train(..., resume=state)`` continues from it.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from dm_tune._history import best_over_training
from dm_tune._weighting import relative_weights
from dm_tune.config import TrainConfig
from dm_tune.data import Data, check_prepared_for
from dm_tune.errors import DataError, UserError, absolute_paths
from dm_tune.methods import build_loss
from dm_tune.models import ModelSpec, build_model
from dm_tune.provenance import provenance

Report = Callable[[dict[str, float], Callable[[], dict[str, Any]]], None]

EVAL_BATCH = 1024
# Input elements per evaluation batch: 64 ImageNet-sized images (3 x 224 x 224). Small inputs
# take EVAL_BATCH examples; a MARS batch of 4-frame 256 x 128 tracks takes 24 (1024 tracks, 4096
# frames through ResNet-50 at once, needed tens of GiB of activations).
EVAL_ELEMENTS = 64 * 3 * 224 * 224


def eval_batch(input_shape: tuple[int, ...]) -> int:
    """Examples per evaluation batch for inputs of ``input_shape``."""
    return max(1, min(EVAL_BATCH, EVAL_ELEMENTS // max(1, math.prod(input_shape))))


@dataclass
class TrainResult:
    status: str                     # "finished" or "diverged"
    test_accuracy: float            # final epoch (what the reports use by default)
    val_accuracy: float             # final epoch
    best_test_accuracy: float       # best over training (optimistic; labelled as such)
    best_epoch: int                 # epoch of best_test_accuracy (retrieval: of best test mAP), 1-based, first of ties
    best_val_accuracy: float
    val_selected_test_accuracy: float  # test accuracy at the epoch of best validation accuracy (NaN: no validation)
    epochs_completed: int
    train_time_s: float
    noise_rate_realised: float
    history: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    # Retrieval runs (accuracies above are NaN): final-epoch test_map, test_rank1/5/10, val_map,
    # val_rank1; best_test_map (best over training, optimistic) and val_selected_test_map.
    retrieval: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``config`` also names the git commit and package versions that ran it.
        A retrieval run's metrics sit at the top level beside the accuracies."""
        d = asdict(self)
        d.update(d.pop("retrieval"))
        d["config"] = {**d["config"], "git_commit": self.provenance.get("git_commit"),
                       "package_versions": self.provenance.get("versions")}
        return d


def torch_threads(threads: int | None, data: Data) -> None:
    """Torch's CPU threads for training on ``data``: ``threads`` when given (--threads), else 1 for
    in-memory vector and signal data, whose small models run fastest on one thread (on a busy
    machine a second thread waits for a core: 4 MNIST-1D members took 56 s with two threads beside
    other work and 14 s with one), else left as they are (torch's default, in a command)."""
    if threads is None and data.input_kind in ("vector", "signal") and data.train.in_memory:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' requested but MPS is not available on this machine")
    return device


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32. On CUDA ``auto`` is bf16 where the GPU has it, else
    fp16. On the CPU only an explicit ``bf16`` turns autocast on: its products are fast on cores with
    native bf16 (AMX, AVX512-BF16) and emulated, so slower, elsewhere; fp16 there stays off."""
    if config.amp == "off" or device.type not in ("cuda", "cpu"):
        return None
    if device.type == "cpu":
        return torch.bfloat16 if config.amp == "bf16" else None
    if config.amp == "fp16":
        return torch.float16
    if config.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


class _Inputs:
    """Turns stored inputs into model inputs on the device (uint8 images -> normalised floats, augmentation)."""

    def __init__(self, data: Data, device: torch.device, augment: bool, gen: torch.Generator,
                 channels_last: bool = False) -> None:
        self.device, self.augment, self.gen = device, augment and data.input_kind == "image", gen
        # Images stored larger than the model's input (on-disk training splits keep a margin) are
        # cropped to it: at random when training with augmentation, else in the centre.
        self.size = tuple(data.input_shape[-2:]) if data.input_kind == "image" else None
        self.channels_last = channels_last
        self.is_tokens = data.input_kind == "tokens"
        self.mean = self.std = None
        if data.normalise is not None:
            shape = (1, -1, 1, 1)
            self.mean = torch.tensor(data.normalise[0], device=device).view(shape)
            self.std = torch.tensor(data.normalise[1], device=device).view(shape)

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.is_tokens:
            return x.long()
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = _crop_to(x, self.size, self.gen if train and self.augment else None)
        elif train and self.augment:
            x = _crop_flip(x, self.gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def channels_last(model: nn.Module, data: Data) -> bool:
    """Whether a run keeps its images and its model's weights channels-last (NHWC): for image
    batches into models with 2-D convolutions, where oneDNN's and cuDNN's NHWC kernels are the fast
    ones (benchmarks/layout.py: a CIFAR ResNet-20 step on the CPU)."""
    return data.input_kind == "image" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def _crop_to(x: torch.Tensor, size: tuple[int, ...], gen: torch.Generator | None) -> torch.Tensor:
    """Crops of ``size`` from a batch of larger images: each at a uniformly random place and
    flipped with probability 1/2 (torchvision's RandomCrop + RandomHorizontalFlip) when ``gen`` is
    given, else the centre crop."""
    n, _, h, w = x.shape
    th, tw = size
    if th > h or tw > w:
        raise ValueError(f"images of {h} x {w} cannot be cropped to {th} x {tw}")
    if gen is None:
        top, left = (h - th) // 2, (w - tw) // 2
        return x[:, :, top:top + th, left:left + tw]
    dy = torch.randint(0, h - th + 1, (n,), generator=gen, device=gen.device)
    dx = torch.randint(0, w - tw + 1, (n,), generator=gen, device=gen.device)
    flip = torch.rand(n, generator=gen, device=gen.device) < 0.5
    return _crop_flip_with(x, torch.stack([dy, dx, flip.long()]), pad=0, size=(th, tw))


def _crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, batched on the device."""
    return _crop_flip_with(x, _crop_flip_draws(x.shape[0], gen, pad), pad)


def _crop_flip_draws(n: int, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """A batch's crop and flip draws from ``gen``, [3, n] uint8 on its device: row offsets,
    column offsets, flips (1) in the order _crop_flip has always drawn them; bytes, so that
    their copy to the device stays small (3 x 8 192 bytes for a population of 64 at batch 128)."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device)
    flip = torch.rand(n, generator=gen, device=gen.device) < 0.5
    return torch.stack([dy, dx, flip.long()]).to(torch.uint8)


def _crop_flip_with(x: torch.Tensor, draws: torch.Tensor, pad: int = 4,
                    size: tuple[int, ...] | None = None) -> torch.Tensor:
    """_crop_flip with given draws (row offsets, column offsets, flips), crops of ``size`` (None:
    the images' own) from the images padded by ``pad``. The draws reach the device in one copy that
    does not wait for it (a blocking copy would stall the host until the device finished all earlier work)."""
    n, _, h, w = x.shape
    th, tw = size or (h, w)
    dy, dx, flip = draws.to(x.device, non_blocking=True).long()
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = (dy.view(n, 1) + torch.arange(th, device=x.device)).view(n, 1, th, 1).expand(n, x.shape[1], th, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(tw, device=x.device)).view(n, 1, 1, tw).expand(n, x.shape[1], th, tw)
    out = out.gather(3, cols)
    return torch.where(flip.bool().view(n, 1, 1, 1), out.flip(3), out)


class _IndexedInputs(torch.utils.data.Dataset):
    def __init__(self, inputs: torch.utils.data.Dataset) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        try:
            return self.inputs[i], i
        except DataError as e:  # in a worker process: carried to the main one as data (below)
            return _Unreadable(str(e)), i


@dataclass(frozen=True)
class _Unreadable:
    """A file a DataLoader worker could not read. Raised in a worker, a DataError reached the main
    process as torch's RuntimeError holding the worker's traceback; as data it is raised there as
    the one-line error it is."""

    message: str


def _collate(items: list[tuple[Any, int]]) -> Any:
    bad = next((x for x, _ in items if isinstance(x, _Unreadable)), None)
    return (bad, None) if bad is not None else torch.utils.data.default_collate(items)


def batch_bounds(n: int, batch_size: int, training: bool = True) -> list[tuple[int, int]]:
    """Batches as (start, end) positions: ``batch_size`` examples each, the last one possibly fewer;
    in ``training`` a last batch of one example joins the batch before it (BatchNorm cannot train
    on a single example, and one example would make a whole step), so with ``batch_size`` 1 the
    last batch holds 2."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if training and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _batches(split_inputs, n: int, batch_size: int, order: torch.Tensor | None, num_workers: int,
             device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, index) batches in ``order`` (None: sequential, for evaluation; else an epoch's
    training order, batched by ``batch_bounds``). Tensors slice directly; Datasets go through a
    DataLoader in worker processes."""
    bounds = batch_bounds(n, batch_size, training=order is not None)
    order = torch.arange(n) if order is None else order
    if isinstance(split_inputs, torch.Tensor):
        for start, end in bounds:
            idx = order[start:end]
            yield split_inputs[idx], idx
        return
    positions = order.tolist()
    sampler = [positions[start:end] for start, end in bounds]
    loader = torch.utils.data.DataLoader(
        _IndexedInputs(split_inputs), batch_sampler=sampler, num_workers=num_workers, collate_fn=_collate,
        pin_memory=device.type == "cuda", persistent_workers=False)
    for x, idx in loader:
        if isinstance(x, _Unreadable):
            raise UserError(x.message)
        yield x, idx


def predicted(logits: torch.Tensor) -> torch.Tensor:
    """The class each row of ``logits`` (last dimension) predicts, or -1, which no label is, for a
    row with a non-finite logit: a diverged model predicts nothing (argmax would read NaN as the
    largest value and give such a model the accuracy of always answering class 0)."""
    return logits.argmax(-1).masked_fill_(~torch.isfinite(logits).all(-1), -1)


@torch.no_grad()
def evaluate(model: nn.Module, split, prep: _Inputs, amp: torch.dtype | None, num_workers: int,
             batch: int = EVAL_BATCH) -> float:
    if len(split) == 0:
        return float("nan")
    model.eval()
    correct = 0
    labels = split.labels.to(prep.device)
    with _autocast(prep.device, amp):
        for x, idx in _batches(split.inputs, len(split), batch, None, num_workers, prep.device):
            pred = predicted(model(prep(x, train=False)))
            correct += int((pred == labels[idx.to(prep.device)]).sum())
    return correct / len(split)


def _evaluate(model: nn.Module, data: Data, prep: _Inputs, amp: torch.dtype | None,
              num_workers: int) -> dict[str, float]:
    """One epoch's validation and test metrics: accuracies, or mAP and CMC for retrieval data."""
    batch = eval_batch(data.input_shape)
    if data.val_gallery is None or data.test_gallery is None:
        return {"val_acc": evaluate(model, data.val, prep, amp, num_workers, batch),
                "test_acc": evaluate(model, data.test, prep, amp, num_workers, batch)}
    from dm_tune._reid_eval import epoch_metrics

    def batches(g) -> Iterator[torch.Tensor]:
        for x, _ in _batches(g.inputs, len(g), batch, None, num_workers, prep.device):
            yield prep(x, train=False)

    with torch.no_grad(), _autocast(prep.device, amp):
        return epoch_metrics(model, data.val_gallery, data.test_gallery, batches)


def _autocast(device: torch.device, amp: torch.dtype | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp)


def _lr_factor(config: TrainConfig, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` (fraction of the budget done)."""
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if config.schedule == "step":
        return config.lr_gamma ** sum(progress >= m for m in config.lr_milestones)
    return 1.0


def _make_optimizer(config: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        # On the CPU, torch's fused Adam: one pass over each tensor instead of about eight
        # elementwise ones (1.24-1.31x per digits-MLP run, 1.03-1.17x per MNIST-1D CNN run), and no
        # square root of exact zeros (the second moment of a weight that never gets a gradient),
        # which some CPUs compute 15-25x slower than of other numbers (benchmarks/optimizer.py).
        # SGD stays torch's default there: fused, it was no faster on the ResNets (0.97x).
        fused = {"fused": True} if device.type == "cpu" else {}
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **fused)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=False)


def _finite_params(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# A run has diverged when an epoch's mean training loss exceeds this many times the loss of a
# uniform prediction (at least log(num_classes)), even if it stayed finite: SGD at lr 10 on
# digits reaches 70 to 1e14 (uniform: 2.3) in its first epoch and then sits at chance. A model
# that learns stays below a few times the uniform loss, and a bounded loss (MAE, GCE) never
# gets there. Measured against the method's own uniform loss, SL's mu x CE scale is respected.
EXPLODED_LOSS_FACTOR = 20.0


def loss_ceiling(loss_fn: nn.Module, num_classes: int) -> float:
    """The mean training loss above which a run has diverged (see EXPLODED_LOSS_FACTOR)."""
    with torch.no_grad():
        uniform = float(loss_fn(torch.zeros(1, num_classes), torch.zeros(1, dtype=torch.long)))
    return EXPLODED_LOSS_FACTOR * max(uniform, math.log(max(num_classes, 2)))


def train(config: TrainConfig, data: Data, report: Report | None = None,
          resume: dict[str, Any] | None = None) -> TrainResult:
    """Train ``config`` on ``data``; call ``report`` after every epoch; return the result.

    ``report(metrics, snapshot)``: ``snapshot()`` is the state to resume from (``resume=``); its
    tensors are the run's own until ``report`` returns, so serialise it there (``torch.save``, as
    the search does) or copy them to keep it past that."""
    check_prepared_for(config, data)
    config = config.resolve(data.defaults, data.default_model, data.input_kind)
    device = select_device(config.device)
    amp = _amp_dtype(config, device)

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)

    spec = ModelSpec(data.input_shape, data.input_kind, data.num_classes, config.hidden_dim,
                     config.pretrained, data.vocab_size)
    model = build_model(config.model, spec).to(device)
    nhwc = channels_last(model, data)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(config, data.train.labels, data.num_classes)
    ceiling = loss_ceiling(loss_fn, data.num_classes)
    opt = _make_optimizer(config, model, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    prep = _Inputs(data, device, bool(config.augment), gen, nhwc)

    n = len(data.train)
    steps_per_epoch = len(batch_bounds(n, config.batch_size))
    total_steps = steps_per_epoch * config.epochs
    labels = data.train.labels.to(device)
    is_noisy = data.is_noisy.to(device)
    known = data.noise_known.to(device)
    clean_labels = data.clean_train_labels.to(device)

    history: list[dict[str, float]] = []
    start_epoch, status = 0, "finished"
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        gen.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        start_epoch = int(resume["epoch"])
        history = [dict(h) for h in resume["history"]][:start_epoch]
        if history and history[-1].get("diverged"):  # the run had ended there: it stays ended
            status, start_epoch = "diverged", config.epochs

    def snapshot() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "history": [dict(h) for h in history], "epoch": len(history), "config": config.to_dict()}

    t_train = sum(h["epoch_time_s"] for h in history)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        model.train()
        acc = torch.zeros(11, device=device, dtype=torch.float64)
        # acc: loss_sum, n, correct_noisy_label, correct_clean_label (where known), w_clean_sum,
        #      n_clean, w_noisy_sum, n_noisy, noisy_fitted, weight_var_sum, n_known
        order = torch.randperm(n, generator=gen)
        for step, (x, idx) in enumerate(_batches(data.train.inputs, n, config.batch_size, order,
                                                 config.num_workers, device)):
            progress = (epoch * steps_per_epoch + step) / total_steps
            for group in opt.param_groups:
                group["lr"] = config.lr * _lr_factor(config, progress)
            idx = idx.to(device, non_blocking=True)  # nothing in a step waits for the device
            y = labels[idx]
            with _autocast(device, amp):
                logits = model(prep(x, train=True))
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            with torch.no_grad():
                pred = predicted(logits)
                noisy, kn = is_noisy[idx], known[idx]
                rel = relative_weights(loss_fn.last_shares.to(torch.float64))
                clean_k, noisy_k = kn & ~noisy, kn & noisy
                acc += torch.stack([
                    loss.detach().double() * len(idx), torch.full((), len(idx), device=device, dtype=torch.float64),
                    (pred == y).sum().double(), ((pred == clean_labels[idx]) & kn).sum().double(),
                    (rel * clean_k).sum(), clean_k.sum().double(), (rel * noisy_k).sum(), noisy_k.sum().double(),
                    ((pred == y) & noisy_k).sum().double(),
                    rel.var(unbiased=False) * len(idx) if len(idx) > 1 else torch.zeros((), device=device, dtype=torch.float64),
                    kn.sum().double(),
                ])
            if step % 20 == 0 and not math.isfinite(float(loss.detach())):
                break
        a = acc.tolist()
        diverged = (not math.isfinite(a[0]) or not _finite_params(model)
                    or a[0] / a[1] > ceiling)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": a[0] / a[1],
            "train_acc": a[2] / a[1],                  # against the (noisy) labels trained on
            "train_clean_acc": a[3] / a[10] if a[10] else float("nan"),  # against the clean labels, where known
            **_evaluate(model, data, prep, amp, config.num_workers),
            "weight_clean": a[4] / a[5] if a[5] else float("nan"),  # mean relative weight, 1 = batch mean
            "weight_noisy": a[6] / a[7] if a[7] else float("nan"),
            "noisy_fit": a[8] / a[7] if a[7] else float("nan"),     # noisy examples fitted to their wrong label
            "weight_var": a[9] / a[1],                # the paper's emphasis variance (of relative weights)
            "lr": opt.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - t0,
        }
        t_train += metrics["epoch_time_s"]
        if diverged:
            status = "diverged"
            metrics["diverged"] = 1.0
        history.append(metrics)
        if report is not None:
            report(dict(metrics), snapshot)
        if diverged:
            break

    return _result(config, data, history, status, t_train)


def _result(config: TrainConfig, data: Data, history: list[dict[str, float]], status: str,
            t_train: float) -> TrainResult:
    nan = float("nan")
    last = history[-1] if history else {}
    retrieval = data.test_gallery is not None
    best = best_over_training(history, retrieval)
    return TrainResult(
        status=status,
        test_accuracy=last.get("test_acc", nan),
        val_accuracy=last.get("val_acc", nan),
        best_test_accuracy=best["best_test_acc"],
        best_epoch=best["best_epoch"],
        best_val_accuracy=best["best_val_acc"],
        val_selected_test_accuracy=best["val_selected_test_acc"],
        epochs_completed=len(history),
        train_time_s=t_train,
        noise_rate_realised=data.noise_rate,
        history=history,
        config=absolute_paths(config.to_dict()),  # (as typed, "a/feat.npz" named another file)
        data=dict(data.info),
        # torch's threads as it trained (--threads 2 against 1 moved a digits run's final validation
        # accuracy by 2 points: two threads sum in another order)
        provenance={**provenance(), "torch_threads": torch.get_num_threads()},
        retrieval=({**{k: last.get(k, nan) for k in ("test_map", "test_rank1", "test_rank5", "test_rank10",
                                                     "val_map", "val_rank1")},
                    "best_test_map": best["best_test_map"], "val_selected_test_map": best["val_selected_test_map"]}
                   if retrieval else {}),
    )
