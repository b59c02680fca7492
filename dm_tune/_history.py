"""What a run's per-epoch history says about the run as a whole.

One reading for a run that ended (``dm_tune.train``) and for a search trial a scheduler cut short,
whose final report never came (``dm_tune.search._trial``): the best-over-training values
(optimistic, labelled as such wherever they are shown) and the validation-selected ones. Plain
Python, so the search's driver reads histories without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

NAN = float("nan")


def _finite(row: Mapping[str, float], *keys: str) -> bool:
    return all(math.isfinite(float(row.get(k, NAN))) for k in keys)


def best_over_training(history: Sequence[Mapping[str, float]], retrieval: bool) -> dict[str, float]:
    """``best_test_acc`` and ``best_epoch`` (the epoch of the best test score: accuracy, or mAP for
    retrieval; 1-based, the first of ties; 0 without one), ``best_val_acc`` and
    ``val_selected_test_acc`` (the test accuracy at the epoch of the best validation accuracy; NaN
    without a validation split). Retrieval adds ``best_test_map`` and ``val_selected_test_map``."""
    score = "test_map" if retrieval else "test_acc"
    best = max((h for h in history if _finite(h, score)), key=lambda h: h[score], default=None)
    best_val = max((h for h in history if _finite(h, "test_acc", "val_acc")), key=lambda h: h["val_acc"], default=None)
    out = {
        "best_test_acc": float(best.get("test_acc", NAN)) if best else NAN,
        "best_epoch": int(best["epoch"]) if best else 0,
        "best_val_acc": float(best_val["val_acc"]) if best_val else NAN,
        "val_selected_test_acc": float(best_val["test_acc"]) if best_val else NAN,
    }
    if retrieval:
        best_map = max((h for h in history if _finite(h, "val_map")), key=lambda h: h["val_map"], default=None)
        out["best_test_map"] = max((float(h["test_map"]) for h in history if _finite(h, "test_map")), default=NAN)
        out["val_selected_test_map"] = float(best_map.get("test_map", NAN)) if best_map else NAN
    return out
