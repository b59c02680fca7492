"""Models by name, each one line in ``MODELS``; every builder takes a ``ModelSpec``.

No device placement or global state here: the training driver moves the model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dm_tune._validate import ConfigError
from dm_tune.errors import first_line


@dataclass(frozen=True)
class ModelSpec:
    input_shape: tuple[int, ...]  # one example's shape: (D,), (L,), (C, H, W), (T,) token ids or (T, C, H, W) frames
    input_kind: str               # "vector", "signal", "image", "tokens", "video"
    num_classes: int
    hidden_dim: int = 256
    pretrained: str | None = None  # a local state-dict file (resnet18/resnet50, reid-resnet18/50)
    vocab_size: int = 0            # for "tokens"


def _numeric(name: str, spec: ModelSpec) -> None:
    if spec.input_kind == "tokens":  # integer ids: a Linear layer on them is meaningless (and fails)
        raise ValueError(f"model '{name}' needs numeric inputs, not token ids (use model text, or imdb's "
                         "default representation)")


def mlp(spec: ModelSpec, depth: int = 2) -> nn.Module:
    _numeric("mlp", spec)
    dim = math.prod(spec.input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(dim, spec.hidden_dim), nn.ReLU(inplace=True)]
        dim = spec.hidden_dim
    layers.append(nn.Linear(dim, spec.num_classes))
    return nn.Sequential(*layers)


def imdb_mlp(spec: ModelSpec) -> nn.Module:
    """The paper's IMDB model: one hidden layer of 8 units on document vectors."""
    _numeric("imdb-mlp", spec)
    return mlp(ModelSpec(spec.input_shape, spec.input_kind, spec.num_classes, hidden_dim=8), depth=1)


class _PairMax(torch.autograd.Function):
    """The max of each pair of positions along ``dim`` (odd tail dropped), as MaxPool1d picks it:
    the second element if it is larger or NaN, else the first (so a NaN propagates and a tie's
    gradient goes to the first element).

    Written for the CPU's vectorised kernels: ``maximum`` gives the values, a 0/1 mask of the
    second element's wins (in the input's dtype, computed by a comparison straight into it) is
    kept, and the gradient is routed by a product and a difference with it. Boolean masks and
    ``where`` on these strided views are several times slower. A non-finite sum (a NaN or an
    inf in the values or the gradient, where a product with 0 would make a NaN) takes the exact
    boolean path instead, and so does any other device (no check that waits for it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:  # type: ignore[override]
        dim %= x.dim()
        half = x.shape[dim] // 2
        pairs = x.narrow(dim, 0, 2 * half).unflatten(dim, (half, 2))
        a, b = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
        if dim == x.dim() - 1:  # pairs side by side: comparing every other element is not
            a, b = a.contiguous(), b.contiguous()  # vectorised; two copies and dense ops are 4x faster
        out = torch.maximum(a, b)  # the picked value; NaN if either is, as MaxPool1d
        if x.is_cpu and bool(out.sum().isfinite()):  # (a check that would make a GPU wait)
            second = torch.gt(b, a, out=torch.empty_like(out))
        else:
            second = ((b > a) | (b != b)).to(out.dtype)
        ctx.save_for_backward(second)
        ctx.dim, ctx.shape = dim, x.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (second,) = ctx.saved_tensors
        dim, half = ctx.dim, second.shape[ctx.dim]
        odd = ctx.shape[dim] > 2 * half
        out = grad.new_zeros(ctx.shape) if odd else grad.new_empty(ctx.shape)
        pairs = out.narrow(dim, 0, 2 * half).unflatten(dim, (half, 2))
        to_a, to_b = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
        if grad.is_cpu and bool(grad.sum().isfinite()):
            torch.mul(grad, second, out=to_b)
            torch.sub(grad, to_b, out=to_a)
        else:
            wins = second.bool()
            to_a.copy_(torch.where(wins, 0.0, grad))
            to_b.copy_(torch.where(wins, grad, 0.0))
        return out, None


def pair_max(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """MaxPool1d(2) along ``dim``: its outputs and gradients, ties and NaNs included."""
    return _PairMax.apply(x, dim)


class PairMaxPool1d(nn.MaxPool1d):
    """``nn.MaxPool1d(2)`` with a faster training path on the CPU: the same outputs and the same
    gradients (``pair_max``), where ``max_pool1d``'s training path computes indices through the
    2-D kernel (BENCHMARKS.md: a 1-D CNN run on MNIST-1D). Inference (no grad) and other
    devices than the CPU (not measured there) use ``max_pool1d`` itself. Same state dict as
    ``nn.MaxPool1d(2)``."""

    def __init__(self, kernel_size: int = 2) -> None:
        if kernel_size != 2:
            raise ValueError(f"PairMaxPool1d pools pairs (kernel_size 2), got {kernel_size}")
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad and x.is_cpu):
            return super().forward(x)
        return pair_max(x)


def cnn(spec: ModelSpec) -> nn.Module:
    """A small 3-block CNN: 2-D convolutions for images, 1-D for signals."""
    if spec.input_kind == "signal":
        conv, pool, bn, in_ch = nn.Conv1d, PairMaxPool1d, nn.BatchNorm1d, 1
        head_pool: nn.Module = nn.AdaptiveAvgPool1d(1)
    elif spec.input_kind == "image":
        conv, pool, bn, in_ch = nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, spec.input_shape[0]
        head_pool = nn.AdaptiveAvgPool2d(1)
    else:
        raise ValueError(f"model 'cnn' needs image or signal inputs, not {spec.input_kind}")
    layers: list[nn.Module] = [nn.Unflatten(1, (1, spec.input_shape[-1]))] if spec.input_kind == "signal" else []
    for out_ch in (32, 64, 128):
        layers += [conv(in_ch, out_ch, 3, padding=1), bn(out_ch), nn.ReLU(inplace=True), pool(2)]
        in_ch = out_ch
    layers += [head_pool, nn.Flatten(), nn.Linear(in_ch, spec.num_classes)]
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    """CIFAR ResNet block with the parameter-free "option A" shortcut (He et al., 2016)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.pad = out_ch - in_ch
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.stride != 1 or self.pad:
            short = x[:, :, :: self.stride, :: self.stride]
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_ch: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks: list[nn.Module] = []
        ch = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(_BasicBlock(ch, width, 2 if stage > 0 and i == 0 else 1))
                ch = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet(depth: int) -> Callable[[ModelSpec], nn.Module]:
    def builder(spec: ModelSpec) -> nn.Module:
        if spec.input_kind != "image":
            raise ValueError(f"model 'resnet{depth}' needs image inputs, not {spec.input_kind}")
        return CifarResNet(depth, spec.input_shape[0], spec.num_classes)

    return builder


def torchvision_resnet(name: str) -> Callable[[ModelSpec], nn.Module]:
    def builder(spec: ModelSpec) -> nn.Module:
        import torchvision

        if spec.input_kind != "image":
            raise ValueError(f"model '{name}' needs image inputs, not {spec.input_kind}")
        model = getattr(torchvision.models, name)(weights=None)
        if spec.pretrained:
            load_pretrained(model, Path(spec.pretrained).expanduser())
        model.fc = nn.Linear(model.fc.in_features, spec.num_classes)
        return model

    return builder


class TrackEmbedder(nn.Module):
    """Video re-ID: an image network embeds each frame of a track, the frame embeddings are
    averaged into one track embedding, and ``fc`` classifies it (identity classification)."""

    def __init__(self, trunk: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C, H, W) tracks or (B, C, H, W) images
        if x.dim() == 4:
            x = x.unsqueeze(1)
        b, t = x.shape[:2]
        return self.fc(self.trunk(x.flatten(0, 1)).view(b, t, -1).mean(1))


def reid_resnet(name: str) -> Callable[[ModelSpec], nn.Module]:
    def builder(spec: ModelSpec) -> nn.Module:
        import torchvision

        if spec.input_kind not in ("video", "image"):
            raise ValueError(f"model 'reid-{name}' needs image tracks (e.g. mars), not {spec.input_kind}")
        trunk = getattr(torchvision.models, name)(weights=None)
        if spec.pretrained:
            load_pretrained(trunk, Path(spec.pretrained).expanduser())
        dim = trunk.fc.in_features
        trunk.fc = nn.Identity()
        return TrackEmbedder(trunk, dim, spec.num_classes)

    return builder


def load_pretrained(model: nn.Module, path: Path) -> None:
    """Load a local state dict (e.g. torchvision's ImageNet weights file); the classifier is replaced
    after. The file is read by ``read_state_dict`` once a child process has read the same bytes so
    in bounded time and memory (``_bounded``)."""
    from dm_tune.datasets._bounded import Unreadable, read_checked

    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weights file not found (a torch state dict, e.g. resnet50-*.pth)")
    try:
        state = read_checked(path.read_bytes(), "state-dict")
    except Unreadable as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, AttributeError, TypeError, ValueError, KeyError) as e:  # a shape, or odd _metadata
        said = str(e).splitlines()
        why = next((line.strip() for line in said if "size mismatch" in line), first_line(e))
        raise ValueError(f"{path}: weights do not fit the model ({why})") from None
    if [k for k in missing if not k.startswith("fc.")] or unexpected:
        raise ValueError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def read_state_dict(f) -> dict:
    """A torch-saved state dict (or a checkpoint holding one under ``state_dict``; a binary file
    object), once the pickle scan has passed it, read with torch's weights-only loader. Raises
    ``Unreadable`` where it cannot be read as one."""
    from dm_tune.datasets._bounded import Unreadable
    from dm_tune.datasets._pickles import torch_file_refusal, weights_only_refusal

    if (why := torch_file_refusal(f, "state dict", "state dict")) is not None:
        raise Unreadable(why)
    f.seek(0)
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - torch's refusal (UnpicklingError) or its reader on a damaged file
        import pickle

        why = weights_only_refusal(e) if isinstance(e, pickle.UnpicklingError) else first_line(e)
        raise Unreadable(f"could not be read as a torch-saved state dict ({why})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise Unreadable(f"is not a state dict (a dict of names to tensors): holds a {type(state).__name__}")
    odd = next((k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    if odd is not None:
        what = (f"{odd[:60]!r} holds a {type(state[odd]).__name__}" if isinstance(odd, str) else
                f"it has a {type(odd).__name__} key")
        raise Unreadable(f"is not a state dict (a dict of names to tensors): {what}")
    return state


class TextClassifier(nn.Module):
    """Mean of token embeddings (token 0 is padding) followed by an MLP."""

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=0)
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens.long()))


def text(spec: ModelSpec) -> nn.Module:
    if spec.input_kind != "tokens" or spec.vocab_size < 2:
        raise ValueError("model 'text' needs token-id inputs (e.g. imdb with dataset_options.representation: tokens)")
    return TextClassifier(spec.vocab_size, spec.num_classes, hidden=spec.hidden_dim)


MODELS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "mlp": mlp,
    "imdb-mlp": imdb_mlp,
    "cnn": cnn,
    "resnet20": cifar_resnet(20),
    "resnet32": cifar_resnet(32),
    "resnet44": cifar_resnet(44),
    "resnet56": cifar_resnet(56),
    "resnet18": torchvision_resnet("resnet18"),
    "resnet50": torchvision_resnet("resnet50"),
    "reid-resnet18": reid_resnet("resnet18"),
    "reid-resnet50": reid_resnet("resnet50"),
    "text": text,
}


# The models whose size hidden_dim sets: counted on the meta device before they are built (below).
SIZED_BY_HIDDEN_DIM = ("mlp", "text")
# A model is built in this machine's memory, in float32, before it moves to its device: one whose
# weights alone exceed the memory cannot be built here (its gradients and optimiser state, 2-3 times
# as much again, may live on a GPU, so they are not counted).
BYTES_PER_PARAMETER = 4


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(name: str, spec: ModelSpec) -> None:
    """Refuse a hidden_dim whose model's weights alone exceed this machine's memory: hidden_dim
    1000000 (within its range) made a 10**12-parameter MLP, and torch's allocator failed with a
    traceback, or Ray's trials each failed with it. Counted on the meta device (no memory)."""
    memory = physical_memory()
    if name not in SIZED_BY_HIDDEN_DIM or memory is None:
        return
    with torch.device("meta"):
        count = sum(p.numel() for p in MODELS[name](spec).parameters())
    if count * BYTES_PER_PARAMETER > memory:
        raise ConfigError("hidden_dim", spec.hidden_dim,
                          f"model {name} of that width has {count:.3g} parameters, whose float32 weights alone "
                          f"({count * BYTES_PER_PARAMETER / 2**30:,.0f} GiB) exceed this machine's "
                          f"{memory / 2**30:.0f} GiB of memory")


def build_model(name: str, spec: ModelSpec) -> nn.Module:
    try:
        check_fits(name, spec)
        return MODELS[name](spec)
    except ValueError as e:  # the model does not fit the data (e.g. resnet20 on vectors): user input
        if type(e) is ValueError:
            raise ConfigError("model", name, str(e)) from None
        raise
    except FileNotFoundError as e:  # --pretrained names a missing file
        raise ConfigError("pretrained", spec.pretrained, str(e)) from None
