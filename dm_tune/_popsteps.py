"""What one step and one epoch of a population compute for each member: its inputs, its share of
the step's metrics, its epoch metrics (train()'s, per member) and its accuracy on a split."""

from __future__ import annotations

import math

from typing import TYPE_CHECKING

import torch

from dm_tune.data import Data
from dm_tune.train import _autocast, _crop_flip_draws, _crop_flip_with, predicted

if TYPE_CHECKING:
    from dm_tune._popmodels import PopulationModel


class PopulationInputs:
    """Stored inputs -> model inputs for [K, B, ...] batches (uint8 -> floats, normalisation,
    each member's augmentation from its own generator, as train()'s _Inputs does per run)."""

    def __init__(self, data: Data, device: torch.device, augment: bool, gens: list[torch.Generator]) -> None:
        self.device, self.gens = device, gens
        self.augment = augment and data.input_kind == "image"
        self.mean = self.std = None
        if data.normalise is not None:
            shape = (1, 1, -1, 1, 1)
            self.mean = torch.tensor(data.normalise[0], device=device).view(shape)
            self.std = torch.tensor(data.normalise[1], device=device).view(shape)

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if train and self.augment:  # every member's draws from its own generator, one crop and flip for all
            draws = torch.cat([_crop_flip_draws(x.shape[1], gen) for gen in self.gens], 1)
            x = _crop_flip_with(x.flatten(0, 1), draws).view(x.shape)
        return x


# Above this many bytes, the members' inputs are not stacked into one more tensor: each batch
# gathers its rows from each member's own tensor (K small indexing operations a step, which
# cost little next to a step of a model that needs such data, e.g. CIFAR at K = 64: 7.9 GB).
# Members whose rows all come from one dataset tensor of at most this size share one copy of it.
STACK_LIMIT_BYTES = 1 << 30

Origin = tuple[torch.Tensor, torch.Tensor]  # Split.origin: (dataset tensor, the rows taken)


class MemberRows:
    """Per-member tensors [n, ...] (member k's in entry k) read as one [K, b, ...] batch on the device.

    By what fits: when every member's rows were taken from one dataset tensor (``origins``, as
    ``Split.subset`` records them), one copy of that tensor on the device and each member's row
    numbers (``shared`` lets the training and validation rows of a population share the copy);
    else, up to STACK_LIMIT_BYTES, the members' tensors stacked on the device; else each batch
    gathered on the host from each member's own tensor."""

    def __init__(self, tensors: list[torch.Tensor], device: torch.device,
                 origins: list[Origin | None] | None = None,
                 shared: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """``shared``: id(dataset tensor) -> (that tensor, its copy on the device), filled as needed."""
        self.device, self.tensors, self.size = device, tensors, len(tensors)
        first = tensors[0]
        if any(t.shape != first.shape or t.dtype != first.dtype for t in tensors):
            raise ValueError("the members' rows must have one shape and dtype")
        self.base: torch.Tensor | None = None  # [N, ...] on the device: member k's row i is base[rows[k, i]]
        self.rows = torch.empty(0, dtype=torch.long)  # [K, n] on the host
        self.stacked = False  # base is the members' tensors one after the other
        base = _common_base(origins, first)
        if base is not None and base.numel() * base.element_size() <= STACK_LIMIT_BYTES:
            shared = {} if shared is None else shared
            if id(base) not in shared or shared[id(base)][0] is not base:
                shared[id(base)] = (base, base.to(device))
            self.base = shared[id(base)][1]
            self.rows = torch.stack([rows for _, rows in origins])  # type: ignore[union-attr,misc]
            return
        if sum(t.numel() * t.element_size() for t in tensors) > STACK_LIMIT_BYTES:
            return
        # Each member's rows straight into its slot on the device: no K-fold copy on the host first.
        stacked = torch.empty((self.size, *first.shape), dtype=first.dtype, device=device)
        for slot, t in zip(stacked, tensors):
            slot.copy_(t, non_blocking=True)
        self.base, self.stacked = stacked.flatten(0, 1), True
        self.rows = torch.arange(stacked.shape[0] * stacked.shape[1]).view(stacked.shape[:2])

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Member k's rows ``index[k]`` (``index`` [K, b] on the host, so reading it never waits
        for the device)."""
        if self.base is not None:  # one index_select from the device copy
            return self._select(self.rows.gather(1, index))
        return torch.stack([t[i] for t, i in zip(self.tensors, index)]).to(self.device, non_blocking=True)

    def slice(self, start: int, end: int) -> torch.Tensor:
        if self.base is not None:
            if self.stacked:
                return self.base.view(self.size, -1, *self.base.shape[1:])[:, start:end]
            return self._select(self.rows[:, start:end])
        return torch.stack([t[start:end] for t in self.tensors]).to(self.device, non_blocking=True)

    def _select(self, rows: torch.Tensor) -> torch.Tensor:
        assert self.base is not None
        flat = rows.flatten().to(self.base.device, non_blocking=True)
        return self.base.index_select(0, flat).view(*rows.shape, *self.base.shape[1:])


def _common_base(origins: list[Origin | None] | None, like: torch.Tensor) -> torch.Tensor | None:
    """The one dataset tensor every member's rows come from, if there is one."""
    if not origins or any(o is None for o in origins):
        return None
    base = origins[0][0]  # type: ignore[index]
    if any(o[0] is not base for o in origins):  # type: ignore[index]
        return None
    return base if base.dtype == like.dtype and base.shape[1:] == like.shape[1:] else None


@torch.no_grad()
def evaluate(model: PopulationModel, inputs: MemberRows | torch.Tensor, labels: torch.Tensor,
             prep: PopulationInputs, amp: torch.dtype | None, chunk: int) -> list[float]:
    """Accuracy of every member: per-member ``inputs`` and labels [K, n], or inputs [n, ...] and
    labels [n] shared by all."""
    shared = isinstance(inputs, torch.Tensor)
    n = labels.shape[-1]
    if n == 0:
        return [math.nan] * model.size
    model.eval()
    correct = torch.zeros(model.size, dtype=torch.long, device=prep.device)
    labels = labels.to(prep.device)
    with _autocast(prep.device, amp):
        for start in range(0, n, chunk):
            if shared:
                x = inputs[start:start + chunk]
                x = x.unsqueeze(0).expand(model.size, *x.shape)
                y = labels[start:start + chunk].unsqueeze(0)
            else:
                x, y = inputs.slice(start, start + chunk), labels[:, start:start + chunk]
            correct += (predicted(model(prep(x, train=False))) == y).sum(1)
    return (correct.double() / n).tolist()


def step_metrics(logits: torch.Tensor, y: torch.Tensor, losses: torch.Tensor, shares: torch.Tensor,
                  noisy: torch.Tensor, kn: torch.Tensor, clean_labels: torch.Tensor) -> torch.Tensor:
    """One step's contribution to each member's epoch sums [K, 11] (train()'s, per member), from
    the batch's labels ``y``, noise flags ``noisy``, whether its noise is known (``kn``) and clean
    labels, each [K, B]."""
    b = y.shape[1]
    pred = predicted(logits)
    rel = _relative_weights_rows(shares.to(torch.float64))
    clean_k, noisy_k = kn & ~noisy, kn & noisy
    hit = pred == y
    count = torch.full_like(losses, b, dtype=torch.float64)
    var = rel.var(1, unbiased=False) * b if b > 1 else torch.zeros_like(count)
    return torch.stack([
        losses.detach().double() * b, count, hit.sum(1).double(),
        ((pred == clean_labels) & kn).sum(1).double(),
        (rel * clean_k).sum(1), clean_k.sum(1).double(), (rel * noisy_k).sum(1), noisy_k.sum(1).double(),
        (hit & noisy_k).sum(1).double(), var, kn.sum(1).double(),
    ], 1)


def _relative_weights_rows(share: torch.Tensor) -> torch.Tensor:
    """_weighting.relative_weights for each row of [K, B] shares (batch mean 1 per member)."""
    total = share.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return share * (share.shape[1] / total)


def epoch_metrics(epoch: int, a: list[float], val_acc: float, test_acc: float, lr: float, wall: float,
                   members: int) -> dict[str, float]:
    """train()'s per-epoch metrics from one member's sums; the time is its share of the epoch."""
    nan = float("nan")
    return {
        "epoch": epoch + 1,
        "train_loss": a[0] / a[1],
        "train_acc": a[2] / a[1],
        "train_clean_acc": a[3] / a[10] if a[10] else nan,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "weight_clean": a[4] / a[5] if a[5] else nan,
        "weight_noisy": a[6] / a[7] if a[7] else nan,
        "noisy_fit": a[8] / a[7] if a[7] else nan,
        "weight_var": a[9] / a[1],
        "lr": lr,
        "epoch_time_s": wall / members,
        "population_epoch_time_s": wall,
        "population_size": members,
    }
