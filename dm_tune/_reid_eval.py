"""Retrieval evaluation of a trained identity classifier: embeddings from the layer before the
classifier, cosine similarity of queries to the gallery, mAP and CMC (``dm_tune.retrieval``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from dm_tune.datasets import Gallery
from dm_tune.retrieval import cosine_scores, retrieval_metrics, unscored

Batches = Callable[[Gallery], Iterable[torch.Tensor]]


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The final linear layer: ``model.fc`` (torchvision ResNets, the re-ID model, the CIFAR
    ResNets) or else the last ``nn.Linear`` of the module tree (the MLPs)."""
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"model {type(model).__name__} has no linear classifier to take embeddings before")
    return linears[-1]


@torch.no_grad()
def embed(model: nn.Module, batches: Iterable[torch.Tensor]) -> np.ndarray:
    """The classifier's input for every example of ``batches`` (already on the device), in order."""
    captured: list[torch.Tensor] = []
    hook = classifier_layer(model).register_forward_pre_hook(
        lambda _m, args: captured.append(args[0].detach().float().flatten(1).cpu()))
    try:
        model.eval()
        for x in batches:
            model(x)
    finally:
        hook.remove()
    return torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)


def gallery_metrics(model: nn.Module, g: Gallery, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """mAP and CMC of ``g``'s queries against all of ``g``."""
    emb = embed(model, batches)
    if not np.isfinite(emb).all():  # a diverged model: no ranking to score (train() records it diverged)
        return unscored()
    q = g.query.numpy()
    scores = cosine_scores(emb[q], emb)
    ids, cams = g.ids.numpy(), g.cams.numpy()
    return retrieval_metrics(scores, ids[q], cams[q], ids, cams, g.junk.numpy())


def epoch_metrics(model: nn.Module, val: Gallery, test: Gallery, batches: Batches) -> dict[str, float]:
    """The per-epoch retrieval metrics: validation mAP and rank-1, test mAP and CMC rank-1/5/10."""
    v = gallery_metrics(model, val, batches(val))
    t = gallery_metrics(model, test, batches(test))
    return {"val_map": v["map"], "val_rank1": v["rank1"], "test_map": t["map"], "test_rank1": t["rank1"],
            "test_rank5": t["rank5"], "test_rank10": t["rank10"]}
