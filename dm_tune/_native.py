"""The fused CPU kernels for DM's gradient, a population's losses and a population CNN block's
BatchNorm + pooling + ReLU (``_dmfused.c``), and when to use them.

The torch implementation (``_weighting._dm_parts_torch``) is the reference: it runs on every
device and dtype. On a CPU, for the small batches of small models, its ~15 tensor operations cost
more than the model's own step does to compute them (dispatch and allocation, ~3 us each), so
the same function is also written as one C loop over the batch. It is built with the package
(``setup.py``; optional: without a C compiler dm-tune falls back to torch) and is tested against
the torch version on every shape, dtype and extreme the tests cover.
"""

from __future__ import annotations

import torch

try:
    from dm_tune import _dmfused
except ImportError:  # built without a C compiler: the torch implementation is used
    _dmfused = None

# The fused loop costs ~4 ns per logit (one libm exp each) plus ~7 us per call; the torch version
# ~2 ns per logit (vectorised) plus ~30 us of dispatch. Measured on the 2-core benchmark machine,
# forward only: [128, 10] 15 us native vs 36 us torch, [128, 100] 57 us vs 35 us. So the fused
# kernel runs up to 8192 logits (10 classes up to batch 819), torch above.
MAX_ELEMENTS = 1 << 13

FLOATS = (torch.float32, torch.float64)  # computed as is; other dtypes are promoted to float32


def available() -> bool:
    """Whether the fused kernel was built (it needs a C compiler at install time)."""
    return _dmfused is not None


def eligible(logits: torch.Tensor, targets: torch.Tensor) -> bool:
    """The fused kernel runs on CPU tensors of any float dtype, for batches up to MAX_ELEMENTS."""
    return _fits(logits, targets, MAX_ELEMENTS)


def _fits(logits: torch.Tensor, targets: torch.Tensor, limit: int) -> bool:
    """Built, both tensors on the CPU, and at most ``limit`` logits."""
    return (
        _dmfused is not None
        and logits.device.type == "cpu"
        and targets.device.type == "cpu"
        and logits.numel() <= limit
    )


def check_class_indices(targets: torch.Tensor) -> None:
    """Targets of an integer dtype (float or bool ones were truncated to indices without a word);
    here, below _weighting.check_batch, for the fused path that does not pass through it."""
    if targets.dtype != torch.long and (targets.is_floating_point() or targets.is_complex()
                                        or targets.dtype == torch.bool):
        raise TypeError(f"targets must be class indices of an integer dtype, got {targets.dtype}")


def _kernel_inputs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits as float32 or float64 and the targets as int64, both contiguous, as the C loop
    reads them (half precision is promoted to float32, as in the torch versions)."""
    if _dmfused is None:
        raise RuntimeError("the fused DM kernel was not built (no C compiler at install time)")
    if logits.dtype not in FLOATS:
        logits = logits.float()
    if not logits.is_contiguous():
        logits = logits.contiguous()
    if targets.dtype != torch.long:
        check_class_indices(targets)
        targets = targets.long()
    if not targets.is_contiguous():
        targets = targets.contiguous()
    return logits, targets


def dm_parts(
    logits: torch.Tensor, targets: torch.Tensor, lam: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient [N, C], shares [N] and display loss (0-d) of a CPU batch, in one C call.

    The caller has checked shapes (logits [N, C>=2], targets [N]) and devices (CPU). Half
    precision logits are promoted to float32, as in the torch version.
    """
    logits, targets = _kernel_inputs(logits, targets)
    n, c = logits.shape
    grad = torch.empty_like(logits)
    share = torch.empty(n, dtype=logits.dtype)
    display = torch.empty((), dtype=logits.dtype)
    _dmfused.dm_grad(logits.data_ptr(), targets.data_ptr(), n, c, lam, beta, grad.data_ptr(),
                     share.data_ptr(), display.data_ptr(), logits.dtype == torch.float64)
    return grad, share, display


# A population's losses (dm_tune._poplosses) in torch are ~30 operations on [K, B, C] and [K, B]
# tensors: at the populations of small models (the digits MLP: K = 6 to 64 members of batch 64),
# dispatch-bound, 0.4-1.6 ms a step, 6-12% of the population's time. The fused loop costs 20-30
# ns per logit on the 2-core VM (its libm exp), torch ~0.3 ms a call plus a cost per row that is
# small when the classes fill whole vectors (multiples of 16). Measured (1 thread, forward,
# BENCHMARKS.md "A population's losses"): the C kernel 2.1-3.7x faster up to 16384 logits but for
# 2 or 16 classes (0.9-1.1x), and 1.4-2.0x faster at 40960-163840 logits with 10 or 14 classes,
# where torch was 2-3x faster with 16 or 100. Hence two limits:
POPULATION_MAX_ELEMENTS = 1 << 14          # logits (K * B * C), any number of classes
POPULATION_MAX_ELEMENTS_FEW = 1 << 18      # with 3 to 15 classes


def population_eligible(logits: torch.Tensor, targets: torch.Tensor) -> bool:
    """The fused population kernel runs on CPU tensors up to the limits above."""
    classes = logits.shape[-1]
    return _fits(logits, targets, POPULATION_MAX_ELEMENTS_FEW if 3 <= classes < 16 else POPULATION_MAX_ELEMENTS)


def population_parts(
    logits: torch.Tensor, targets: torch.Tensor, knobs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient [K, B, C], shares [K, B] and display losses [K] of a population's CPU batch in one
    C call (dm_tune._poplosses.population_loss_parts, the reference). ``knobs``: float64 [K, 10],
    member k's MemberLoss fields in row k, in their declaration order (kind first)."""
    logits, targets = _kernel_inputs(logits, targets)
    knobs = knobs.to(torch.float64).contiguous()
    k, n, c = logits.shape
    if knobs.shape != (k, 10) or targets.shape != (k, n):
        raise ValueError(f"knobs must be [{k}, 10] and targets [{k}, {n}], got {tuple(knobs.shape)} and "
                         f"{tuple(targets.shape)}")
    grad = torch.empty_like(logits)
    share = torch.empty(k, n, dtype=logits.dtype)
    display = torch.empty(k, dtype=logits.dtype)
    _dmfused.pop_grad(logits.data_ptr(), targets.data_ptr(), k, n, c, knobs.data_ptr(), grad.data_ptr(),
                      share.data_ptr(), display.data_ptr(), torch.finfo(logits.dtype).tiny,
                      logits.dtype == torch.float64)
    return grad, share, display


# A population CNN block's BatchNorm, MaxPool1d(2) and ReLU (dm_tune._popmodels): the torch
# operators make ~10 passes over activations of several megabytes; the C loops make three forward
# and two backward, a (member, channel) row at a time. They run on the calling thread: with 2
# threads, a second POSIX thread of its own ran 2x slower (torch's OpenMP threads spin between
# their parallel regions, on the same cores). Float32 CPU tensors only; everything else takes the
# torch operators (the reference).


def block_eligible(x: torch.Tensor) -> bool:
    """Whether ``bn_pool_relu`` runs for activations ``x`` [K, C, L, B]."""
    return (_dmfused is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and x.shape[2] >= 2 and not torch.is_autocast_enabled("cpu"))


def row_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance (float64) of each row of a contiguous float32 [rows, n]."""
    rows, n = x.shape
    mean = torch.empty(rows, dtype=torch.float64)
    var = torch.empty(rows, dtype=torch.float64)
    _dmfused.bn_row_stats(x.data_ptr(), rows, n, mean.data_ptr(), var.data_ptr())
    return mean, var


def bn_pool_relu(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """relu(MaxPool1d(2)(x * alpha + beta)) along L of a contiguous float32 [K, C, L, B], with
    alpha and beta float32 [K * C] (one per row)."""
    k, c, length, batch = x.shape
    out = torch.empty(k, c, length // 2, batch, dtype=x.dtype)
    _dmfused.bn_pool_relu(x.data_ptr(), k * c, length, batch, alpha.data_ptr(), beta.data_ptr(), out.data_ptr())
    return out


def bn_pool_relu_backward(x: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                          mean: torch.Tensor, invstd: torch.Tensor, weight: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The input's gradient of ``bn_pool_relu`` with training-mode BatchNorm (alpha = weight *
    invstd, beta = bias - mean * alpha; all float32 [rows]), and per row (float64) the sum of the
    gradient reaching the BatchNorm's output, its dot product with x - mean, and the sum of the
    input's gradient."""
    k, c, length, batch = x.shape
    dx = torch.empty_like(x)
    total, dot, dx_total = torch.empty(3, k * c, dtype=torch.float64)
    _dmfused.bn_pool_relu_backward(x.data_ptr(), grad.data_ptr(), k * c, length, batch, alpha.data_ptr(),
                                   beta.data_ptr(), mean.data_ptr(), invstd.data_ptr(), weight.data_ptr(),
                                   dx.data_ptr(), total.data_ptr(), dot.data_ptr(), dx_total.data_ptr())
    return dx, total, dot, dx_total
