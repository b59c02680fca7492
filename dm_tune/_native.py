"""The fused CPU kernel for DM's gradient (``_dmfused.c``), and when to use it.

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
    return (
        _dmfused is not None
        and logits.device.type == "cpu"
        and targets.device.type == "cpu"
        and logits.numel() <= MAX_ELEMENTS
    )


def dm_parts(
    logits: torch.Tensor, targets: torch.Tensor, lam: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient [N, C], shares [N] and display loss (0-d) of a CPU batch, in one C call.

    The caller has checked shapes (logits [N, C>=2], targets [N]) and devices (CPU). Half
    precision logits are promoted to float32, as in the torch version.
    """
    if _dmfused is None:
        raise RuntimeError("the fused DM kernel was not built (no C compiler at install time)")
    if logits.dtype not in FLOATS:
        logits = logits.float()
    if not logits.is_contiguous():
        logits = logits.contiguous()
    if targets.dtype != torch.long:
        targets = targets.long()
    if not targets.is_contiguous():
        targets = targets.contiguous()
    n, c = logits.shape
    grad = torch.empty_like(logits)
    share = torch.empty(n, dtype=logits.dtype)
    display = torch.empty((), dtype=logits.dtype)
    _dmfused.dm_grad(logits.data_ptr(), targets.data_ptr(), n, c, lam, beta, grad.data_ptr(),
                     share.data_ptr(), display.data_ptr(), logits.dtype == torch.float64)
    return grad, share, display
