"""Population models: K members of one architecture, parameters stacked, one forward for all.

``PopulationModel(members)`` takes K models built by ``dm_tune.models.build_model`` (so each
member starts from exactly the initialisation its own run would have) and keeps every entry of
their state dicts stacked along a new leading dimension of size K, under the single model's
key. Inputs are ``[K, B, ...]`` (member k's batch in row k), logits ``[K, B, classes]``.
BatchNorm statistics, running and per batch, are per member.

How each layer runs for all members at once (measured against the alternatives on the 2-core
CPU: BENCHMARKS.md, "Population trials"):

- Linear: one ``baddbmm`` ([K, out, in] x [K, in, B]);
- Conv1d (the MNIST-1D CNN): in a [K, C, L, B] layout, one ``baddbmm`` per kernel tap on shifted
  views of the input (im2col + one ``baddbmm`` below 16 input channels, and the reference), so
  BatchNorm is one call over K*C channels and max-pooling a reduction over a view; on the CPU a
  block's BatchNorm, MaxPool1d(2) and ReLU run as one fused C loop per (member, channel) row
  (``_native.bn_pool_relu``; the torch operators stay the reference and the path elsewhere);
- Conv2d (the CIFAR ResNets): a grouped convolution (groups = K) in a [B, K*C, H, W] layout.

A model is supported when its class is in ``SEQUENTIAL_LAYERS`` (``nn.Sequential`` models made of
the listed layers: ``mlp``, ``imdb-mlp``, the 1-D ``cnn``) or is ``CifarResNet``;
``unsupported_reason`` says why another is not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dm_tune import _native
from dm_tune.models import CifarResNet, _BasicBlock, pair_max

# nn.Sequential layers the population forward knows, each with the layout it takes.
SEQUENTIAL_LAYERS = (nn.Flatten, nn.Unflatten, nn.Linear, nn.ReLU, nn.Conv1d, nn.BatchNorm1d,
                     nn.MaxPool1d, nn.AdaptiveAvgPool1d)


def unsupported_reason(model: nn.Module) -> str | None:
    """None if a population of this model can be trained at once, else why not."""
    if isinstance(model, CifarResNet):
        return None
    if not isinstance(model, nn.Sequential):
        return f"{type(model).__name__} has no population form (supported: mlp, imdb-mlp, 1-D cnn, resnet20/32/44/56)"
    for layer in model:
        if not isinstance(layer, SEQUENTIAL_LAYERS):
            return f"layer {type(layer).__name__} has no population form"
        if isinstance(layer, nn.Conv1d) and (layer.stride != (1,) or layer.dilation != (1,) or layer.groups != 1
                                             or not isinstance(layer.padding, tuple)):
            return "only stride-1, undilated, ungrouped Conv1d layers have a population form"
        if isinstance(layer, nn.MaxPool1d) and (layer.kernel_size not in (2, (2,)) or layer.stride not in (2, (2,))
                                                or layer.padding not in (0, (0,))):
            return "only MaxPool1d(2) has a population form"
        if isinstance(layer, nn.AdaptiveAvgPool1d) and layer.output_size not in (1, (1,)):
            return "only AdaptiveAvgPool1d(1) has a population form"
        if isinstance(layer, nn.BatchNorm1d) and (not layer.track_running_stats or layer.momentum is None):
            return "BatchNorm1d needs running statistics with a momentum"
    return None


class PopulationModel(nn.Module):
    """K members' parameters and buffers, stacked; ``forward([K, B, ...]) -> [K, B, classes]``."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        reason = unsupported_reason(members[0])
        if reason is not None:
            raise ValueError(reason)
        self.size = len(members)
        self._names: dict[str, str] = {}  # the single model's state-dict key -> attribute name
        states = [m.state_dict() for m in members]
        trainable = dict(members[0].named_parameters())
        for key in states[0]:
            name = "m_" + key.replace(".", "_")
            stacked = torch.stack([s[key].detach() for s in states]).clone()
            if key in trainable:
                self.register_parameter(name, nn.Parameter(stacked))
            else:
                self.register_buffer(name, stacked)
            self._names[key] = name
        template = members[0]
        self._forward = (_resnet_forward(template) if isinstance(template, CifarResNet)
                         else _sequential_forward(template))

    def keys(self) -> list[str]:
        return list(self._names)

    def named_member_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(single model's key, stacked parameter) pairs."""
        return [(key, p) for key in self._names if isinstance(p := self.get(key), nn.Parameter)]

    def get(self, key: str) -> torch.Tensor:
        """The stacked tensor [K, ...] of the single model's entry ``key``."""
        return getattr(self, self._names[key])

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's state in the single model's format (``build_model(...).load_state_dict`` takes it)."""
        return {key: self.get(key)[k].detach().clone() for key in self._names}

    @torch.no_grad()
    def load_member_state_dict(self, k: int, state: dict[str, torch.Tensor]) -> None:
        for key in self._names:
            self.get(key)[k].copy_(state[key])

    @torch.no_grad()
    def finite_members(self) -> torch.Tensor:
        """bool [K]: whether every parameter of member k is finite."""
        ok = torch.ones(self.size, dtype=torch.bool, device=self.get(self.keys()[0]).device)
        for p in self.parameters():
            ok &= torch.isfinite(p).flatten(1).all(1)
        return ok

    @torch.no_grad()
    def zero_member(self, k: int) -> None:
        """Member k's parameters and statistics set to 0 (a frozen member then computes finite values)."""
        for key in self._names:
            self.get(key)[k].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self, x)


# --- nn.Sequential models (mlp, imdb-mlp, the 1-D cnn) -----------------------------------------
# Activations keep the batch innermost: [K, D, B] for features, [K, C, L, B] for signals, so a
# Linear is W x + b ([K, out, in] x [K, in, B]) and its weight gradient comes out in the weight's
# own layout (no copy when it is accumulated), and a channel's values over the batch are one row.

Step = Callable[[PopulationModel, torch.Tensor], torch.Tensor]


def _sequential_forward(template: nn.Sequential) -> Callable[[PopulationModel, torch.Tensor], torch.Tensor]:
    order = _pool_before_relu(list(enumerate(template)))  # (the single model's index, layer)
    layers = [layer for _, layer in order]
    steps = []
    fused = 0  # layers still to skip: taken by a fused block step
    for j, (i, layer) in enumerate(order):
        if fused:
            fused -= 1
            continue
        if _relu_in_batch_norm(layers, j):
            continue  # the BatchNorm step before it applies it
        if isinstance(layer, nn.Conv1d) and _pooled_block(layers, j + 1):  # the convolution goes with it
            bn, relu = layers[j + 1], layers[j + 3]
            conv = (f"{i}.", layer.kernel_size[0], layer.padding[0], layer.bias is not None)  # type: ignore[index]
            steps.append(_block(f"{order[j + 1][0]}.", bn.momentum, bn.eps, bn.affine, relu.inplace, conv))  # type: ignore[arg-type]
            fused = 3
        elif _pooled_block(layers, j):
            relu = layers[j + 2]
            steps.append(_block(f"{i}.", layer.momentum, layer.eps, layer.affine, relu.inplace))  # type: ignore[arg-type]
            fused = 2
        elif isinstance(layer, nn.BatchNorm1d):
            steps.append(_batch_norm(f"{i}.", layer.momentum, layer.eps, layer.affine,  # type: ignore[arg-type]
                                     _relu_in_batch_norm(layers, j + 1)))
        else:
            steps.append(_step(f"{i}.", layer))

    def forward(model: PopulationModel, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(1, -1)  # [K, B, ...] -> [K, ..., B]
        for step in steps:
            x = step(model, x)
        return x.transpose(1, 2).contiguous()  # [K, classes, B] -> [K, B, classes]

    return forward


def _pool_before_relu(order: list[tuple[int, nn.Module]]) -> list[tuple[int, nn.Module]]:
    """Each ReLU right before a MaxPool1d(2) moved after it: max and ReLU commute (the same values
    and gradients), so the ReLU runs on half the elements."""
    order = list(order)
    for j in range(len(order) - 1):
        if isinstance(order[j][1], nn.ReLU) and isinstance(order[j + 1][1], nn.MaxPool1d):
            order[j], order[j + 1] = order[j + 1], order[j]
    return order


def _pooled_block(layers: list[nn.Module], i: int) -> bool:
    """Whether layers i, i+1, i+2 are BatchNorm1d, MaxPool1d(2) and ReLU (a CNN block's, after
    ``_pool_before_relu``): one ``_block`` step."""
    return (i + 2 < len(layers) and isinstance(layers[i], nn.BatchNorm1d)
            and isinstance(layers[i + 1], nn.MaxPool1d) and isinstance(layers[i + 2], nn.ReLU))


def _relu_in_batch_norm(layers: list[nn.Module], i: int) -> bool:
    """Whether layer i is an in-place ReLU right after a BatchNorm1d. The BatchNorm step applies it
    to its own output before reshaping that to [K, C, ...]: in place on the reshaped view, autograd
    would copy the whole gradient through views in the backward (CopySlices, AsStrided)."""
    return (0 < i < len(layers) and isinstance(layers[i], nn.ReLU) and layers[i].inplace
            and isinstance(layers[i - 1], nn.BatchNorm1d))


def _step(prefix: str, layer: nn.Module) -> Step:
    if isinstance(layer, nn.Flatten):
        return lambda m, x: x if x.dim() == 3 else x.reshape(x.shape[0], -1, x.shape[-1])
    if isinstance(layer, nn.Unflatten):  # [K, L, B] -> [K, 1, L, B]
        return lambda m, x: x.unsqueeze(1)
    if isinstance(layer, nn.ReLU):  # in place where the single model's is (one [K, D, B] tensor fewer)
        inplace = layer.inplace
        return lambda m, x: F.relu(x, inplace=inplace)
    if isinstance(layer, nn.Linear):
        has_bias = layer.bias is not None

        def linear(m: PopulationModel, x: torch.Tensor) -> torch.Tensor:  # [K, in, B] -> [K, out, B]
            if has_bias:
                return torch.baddbmm(m.get(prefix + "bias").unsqueeze(2), m.get(prefix + "weight"), x)
            return torch.bmm(m.get(prefix + "weight"), x)

        return linear
    if isinstance(layer, nn.Conv1d):
        return _conv1d(prefix, layer.kernel_size[0], layer.padding[0], layer.bias is not None)  # type: ignore[index]
    if isinstance(layer, nn.MaxPool1d):
        return _max_pool_2
    if isinstance(layer, nn.AdaptiveAvgPool1d):  # [K, C, L, B] -> [K, C, B]
        return lambda m, x: x.mean(2)
    raise ValueError(f"layer {type(layer).__name__} has no population form")


def _conv1d(prefix: str, kernel: int, padding: int, has_bias: bool) -> Step:
    """Conv1d on [K, C, L, B]: ``shifted_conv1d`` on the CPU from ``SHIFTED_MIN_CHANNELS`` input
    channels, else ``im2col_conv1d`` (the reference; also under autocast)."""

    def conv(m: PopulationModel, x: torch.Tensor) -> torch.Tensor:
        w = m.get(prefix + "weight")
        bias = m.get(prefix + "bias") if has_bias else None
        if (x.is_cpu and x.shape[1] >= SHIFTED_MIN_CHANNELS and not torch.is_autocast_enabled("cpu")
                and x.dtype == w.dtype):
            return shifted_conv1d(x, w, bias, padding)
        return im2col_conv1d(x, w, bias, padding)

    return conv


def im2col_conv1d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """Stride-1 Conv1d of each member on [K, C, L, B] (weights [K, O, C, T], bias [K, O]) as
    im2col + one batched matrix product."""
    k, cin, length, batch = x.shape
    kernel = w.shape[3]
    padded = F.pad(x, (0, 0, padding, padding))
    out_len = length + 2 * padding - kernel + 1
    # cols[k, c * kernel + t, l * B + b] = padded[k, c, l + t, b]: the weight's own layout.
    cols = torch.stack([padded[:, :, t:t + out_len] for t in range(kernel)], 2)
    cols = cols.view(k, cin * kernel, out_len * batch)
    w = w.reshape(k, w.shape[1], cin * kernel)
    out = torch.bmm(w, cols) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, cols)
    return out.view(k, w.shape[1], out_len, batch)


# From this many input channels a population's Conv1d on the CPU is one product per tap on
# shifted views (shifted_conv1d); below it a tap's product is too thin and im2col's single one
# is faster (measured with 1 input channel: BENCHMARKS.md, "The 1-D CNN's convolutions").
SHIFTED_MIN_CHANNELS = 16


def shifted_conv1d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """``im2col_conv1d``'s result without the im2col: one batched product per kernel tap t, on
    views of the input shifted by t - padding positions (with the batch innermost, a shift along
    L is an offset of B elements in a row), accumulated into the output; the backward the same
    way. No padded copy, no [K, C * T, L * B] columns, no zero-filled gradients of them."""
    return _ShiftedConv1d.apply(x, w, bias, padding)


def _tap_ranges(length: int, out_len: int, kernel: int, padding: int) -> list[tuple[int, int, int, int]]:
    """Per tap t: (t, the output positions [lo, hi) it reaches, its shift: input = output + shift)."""
    return [(t, max(0, padding - t), min(out_len, length + padding - t), t - padding) for t in range(kernel)]


def _products_into(out: torch.Tensor, terms: list[tuple[int, int, torch.Tensor, torch.Tensor]],
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """``out`` [K, O, N] = bias + the sum over ``terms`` (lo, hi, a, b) of ``a @ b``, each written
    into ``out[:, :, lo:hi]``. A term that spans all of ``out`` writes it first (with the bias);
    if none does, ``out`` starts from the bias, or 0."""
    full = next((j for j, (lo, hi, _, _) in enumerate(terms) if lo == 0 and hi == out.shape[2]), None)
    if full is not None:
        _, _, a, b = terms[full]
        if bias is None:
            torch.bmm(a, b, out=out)
        else:
            torch.baddbmm(bias.unsqueeze(2), a, b, out=out)
    elif bias is None:
        out.zero_()
    else:
        out.copy_(bias.unsqueeze(2).expand_as(out))
    for j, (lo, hi, a, b) in enumerate(terms):
        if j != full:
            out[:, :, lo:hi].baddbmm_(a, b)
    return out


class _ShiftedConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                padding: int) -> torch.Tensor:
        k, cin, length, batch = x.shape
        cout, kernel = w.shape[1], w.shape[3]
        out_len = length + 2 * padding - kernel + 1
        ranges = [(t, lo, hi, shift) for t, lo, hi, shift in _tap_ranges(length, out_len, kernel, padding) if hi > lo]
        flat = x.reshape(k, cin, length * batch)
        taps = w.permute(3, 0, 1, 2).contiguous()  # [T, K, O, C]: each tap's weights a dense [K, O, C]
        # Output positions [lo, hi) of tap t read input positions [lo + shift, hi + shift).
        out = _products_into(x.new_empty(k, cout, out_len * batch),
                             [(lo * batch, hi * batch, taps[t], flat[:, :, (lo + shift) * batch:(hi + shift) * batch])
                              for t, lo, hi, shift in ranges], bias)
        ctx.save_for_backward(flat, taps)
        ctx.ranges, ctx.has_bias, ctx.x_shape = ranges, bias is not None, x.shape
        return out.view(k, cout, out_len, batch)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        flat, taps = ctx.saved_tensors
        k, cout, out_len, batch = grad.shape
        grad = grad.reshape(k, cout, out_len * batch)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_taps = torch.zeros_like(taps) if len(ctx.ranges) < len(taps) else torch.empty_like(taps)
            for t, lo, hi, shift in ctx.ranges:
                torch.bmm(grad[:, :, lo * batch:hi * batch],
                          flat[:, :, (lo + shift) * batch:(hi + shift) * batch].transpose(1, 2), out=grad_taps[t])
            grad_w = grad_taps.permute(1, 2, 3, 0)
        if ctx.needs_input_grad[0]:
            grad_x = _products_into(torch.empty_like(flat),
                                    [((lo + shift) * batch, (hi + shift) * batch, taps[t].transpose(1, 2),
                                      grad[:, :, lo * batch:hi * batch]) for t, lo, hi, shift in ctx.ranges])
            grad_x = grad_x.view(ctx.x_shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(2)
        return grad_x, grad_w, grad_b, None


def _batch_norm(prefix: str, momentum: float, eps: float, affine: bool, relu: bool) -> Step:
    """BatchNorm over [K, C, ...] (channels in dim 1, per member): one call over K*C channels;
    then, if ``relu``, a ReLU in place on its output."""

    def bn(m: PopulationModel, x: torch.Tensor) -> torch.Tensor:
        k, c = x.shape[:2]
        if m.training:
            m.get(prefix + "num_batches_tracked").add_(1)
        w = m.get(prefix + "weight").view(-1) if affine else None
        b = m.get(prefix + "bias").view(-1) if affine else None
        out = F.batch_norm(x.reshape(1, k * c, -1), m.get(prefix + "running_mean").view(-1),
                           m.get(prefix + "running_var").view(-1), w, b, m.training, momentum, eps)
        if relu:
            out = F.relu(out, inplace=True)
        return out.view(x.shape)

    return bn


# Whether a CNN block's BatchNorm, pooling and ReLU run as the fused C loops where they can
# (``_native.block_eligible``); off, they run as the three torch steps (the reference).
FUSED_BLOCKS = True


def _block(prefix: str, momentum: float, eps: float, affine: bool, relu_inplace: bool,
           conv: tuple[str, int, int, bool] | None = None) -> Step:
    """BatchNorm1d, MaxPool1d(2) and ReLU over [K, C, L, B] (after ``conv``, a Conv1d's (prefix,
    kernel, padding, has_bias), if given): on float32 CPU activations, in training or without
    autograd, the fused C loops (``_native.bn_pool_relu``: the batch's statistics, then one pass;
    the convolution's bias is added there, not by the convolution: it shifts the statistics by
    itself, so it only enters the running mean and, in evaluation, the shift); else, and whenever
    a statistic or a BatchNorm coefficient is not finite (so NaNs and infs propagate exactly as
    they do there), the reference steps."""
    bn = _batch_norm(prefix, momentum, eps, affine, False)
    conv_step = _conv1d(*conv) if conv is not None else None
    bias_key = conv[0] + "bias" if conv is not None and conv[3] else None
    bare_conv = _conv1d(conv[0], conv[1], conv[2], False) if bias_key is not None else None  # type: ignore[index]

    def fused(m: PopulationModel, x: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor | None:
        """The C loops' output, or None where a statistic or coefficient is not finite."""
        x = x.contiguous()
        k, c, length, batch = x.shape
        w = m.get(prefix + "weight").view(-1) if affine else x.new_ones(k * c)
        b = m.get(prefix + "bias").view(-1) if affine else x.new_zeros(k * c)
        running_mean, running_var = m.get(prefix + "running_mean").view(-1), m.get(prefix + "running_var").view(-1)
        with torch.no_grad():
            offset = shift.view(-1).double() if shift is not None else 0.0
            if m.training:  # the statistics of x + shift are x's, the mean shifted
                mean64, var = _native.row_stats(x.view(k * c, -1))
            else:  # (x + shift - running_mean) alpha + b
                mean64, var = running_mean.double() - offset, running_var.double()
            mean = mean64.float()
            invstd = (var + eps).rsqrt().float()
            alpha = invstd * w
            beta = b - mean * alpha
            if not bool(torch.isfinite(torch.cat([mean, invstd, alpha, beta])).all()):
                return None
            if m.training:
                m.get(prefix + "num_batches_tracked").add_(1)
                n = length * batch
                running_mean.copy_(running_mean * (1 - momentum) + (mean64 + offset) * momentum)
                running_var.copy_(running_var * (1 - momentum) + var * (n / (n - 1)) * momentum)
        return _BatchNormPoolReLU.apply(x, w, b, shift, mean, invstd, alpha, beta)

    def block(m: PopulationModel, x: torch.Tensor) -> torch.Tensor:
        # (checked on the convolution's input first: elsewhere it keeps its bias, as before)
        fusable = FUSED_BLOCKS and (m.training or not torch.is_grad_enabled()) and _native.block_eligible(x)
        shift = None  # the convolution's bias [K, C], when left to the fused loops
        if bare_conv is not None and fusable:
            x, shift = bare_conv(m, x), m.get(bias_key)  # type: ignore[arg-type]
        elif conv_step is not None:
            x = conv_step(m, x)
        if fusable and _native.block_eligible(x) and (out := fused(m, x, shift)) is not None:
            return out
        return F.relu(_max_pool_2(m, bn(m, x if shift is None else x + shift[:, :, None, None])),
                      inplace=relu_inplace)

    return block


class _BatchNormPoolReLU(torch.autograd.Function):
    """relu(MaxPool1d(2)(BatchNorm(x + shift))) with the batch's statistics of x, ``mean`` and
    ``invstd`` (and alpha = invstd * weight, beta = bias - mean * alpha, computed by the caller):
    the C loops of ``_native``, forward and backward. ``shift`` (a convolution's bias [K, C], or
    None) changes no output; its gradient is the sum of x's over each row."""

    @staticmethod
    def forward(ctx, x, weight, bias, shift, mean, invstd, alpha, beta):  # type: ignore[override]
        ctx.save_for_backward(x, weight, mean, invstd, alpha, beta)
        ctx.shift_shape = None if shift is None else shift.shape
        return _native.bn_pool_relu(x, alpha, beta)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, mean, invstd, alpha, beta = ctx.saved_tensors
        grad_x, total, dot, x_total = _native.bn_pool_relu_backward(x, grad.contiguous(), alpha, beta, mean, invstd,
                                                                    weight.detach().contiguous())
        grad_w = (dot * invstd).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = total.to(weight.dtype) if ctx.needs_input_grad[2] else None
        grad_shift = x_total.to(x.dtype).view(ctx.shift_shape) if ctx.needs_input_grad[3] else None
        return grad_x, grad_w, grad_b, grad_shift, None, None, None, None


def _max_pool_2(m: PopulationModel, x: torch.Tensor) -> torch.Tensor:
    """MaxPool1d(2) along L of [K, C, L, B]: ``pair_max``, as a single run's ``PairMaxPool1d``
    (the same outputs and gradients, ties and NaNs included)."""
    return pair_max(x, 2)


# --- CIFAR ResNets: grouped convolutions in a [B, K*C, H, W] layout ----------------------------


# Whether a ResNet population's grouped convolutions run channels-last (NHWC), by device type:
# on where benchmarks/population.py --resnet-layout measured it faster (BENCHMARKS.md, "The
# stacked layouts": 1.1-1.2x on the CPU, 1.07-1.29x for K = 4-64 on an H200, where cuDNN's
# contiguous grouped kernels transpose to NHWC and back).
CHANNELS_LAST: dict[str, bool] = {"cpu": True, "cuda": True}


def _resnet_forward(template: CifarResNet) -> Callable[[PopulationModel, torch.Tensor], torch.Tensor]:
    blocks = [(f"blocks.{i}.", block.stride, block.pad) for i, block in enumerate(template.blocks)
              if isinstance(block, _BasicBlock)]
    stem_bn = template.stem[1]

    def conv(m: PopulationModel, key: str, x: torch.Tensor, stride: int) -> torch.Tensor:
        w = m.get(key)  # [K, out, in, 3, 3]
        w = w.reshape(-1, *w.shape[2:])
        if CHANNELS_LAST.get(x.device.type, False):
            x = x.contiguous(memory_format=torch.channels_last)
            w = w.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w, None, stride, 1, groups=m.size)

    def bn(m: PopulationModel, prefix: str, x: torch.Tensor) -> torch.Tensor:
        if m.training:
            m.get(prefix + "num_batches_tracked").add_(1)
        return F.batch_norm(x, m.get(prefix + "running_mean").view(-1), m.get(prefix + "running_var").view(-1),
                            m.get(prefix + "weight").view(-1), m.get(prefix + "bias").view(-1),
                            m.training, stem_bn.momentum, stem_bn.eps)

    def forward(m: PopulationModel, x: torch.Tensor) -> torch.Tensor:
        k, batch = x.shape[:2]
        x = x.transpose(0, 1).reshape(batch, -1, *x.shape[3:])  # [B, K*C, H, W]
        x = F.relu(bn(m, "stem.1.", conv(m, "stem.0.weight", x, 1)), inplace=True)
        for prefix, stride, pad in blocks:
            out = F.relu(bn(m, prefix + "bn1.", conv(m, prefix + "conv1.weight", x, stride)), inplace=True)
            out = bn(m, prefix + "bn2.", conv(m, prefix + "conv2.weight", out, 1))
            short = x
            if stride != 1 or pad:
                short = x[:, :, ::stride, ::stride]
                b, _, h, w = short.shape
                short = F.pad(short.reshape(b, k, -1, h, w), (0, 0, 0, 0, pad // 2, pad - pad // 2))
                short = short.reshape(b, -1, h, w)
            x = F.relu(out + short, inplace=True)
        pooled = x.mean((2, 3)).view(batch, k, -1).permute(1, 2, 0)  # [K, 64, B]
        logits = torch.baddbmm(m.get("fc.bias").unsqueeze(2), m.get("fc.weight"), pooled)
        return logits.transpose(1, 2).contiguous()

    return forward
