"""Retrieval metrics for re-identification: mAP and CMC under the standard re-ID protocol. No I/O.

Every query is ranked against the whole gallery by a similarity score (higher = closer). For a
query, gallery entries are ignored when they are

- of the same identity *and* the same camera as the query (the query itself among them: MARS
  puts its queries in the gallery), or
- junk as the dataset defines it (MARS: the identity "-1" detections).

The remaining entries of the query's identity are its matches. Queries with no match left are
skipped (they have no defined AP), as in the MARS and Market-1501 evaluation code.

- **AP** is non-interpolated average precision, computed by scikit-learn's
  ``label_ranking_average_precision_score``: for one query with binary relevance it is exactly
  the mean, over the matches, of the precision at each match's rank. Ties: an entry scored the
  same as a match ranks at or before it, matches included (scikit-learn's convention; a lone
  match tied with non-matches ranks after them, two tied matches each count the other).
  Ignored entries get a score below every other and no relevance, so they rank after every match and
  cannot change its precision. **mAP** is the mean AP over queries.
- **CMC rank-k** is the fraction of queries whose first match is among the top k, ignored
  entries excluded; ties count against the query (a non-match scored the same as the best match
  ranks before it), so a collapsed model's CMC does not depend on the gallery order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RANKS = (1, 5, 10)


def unscored(queries: float = float("nan"), ranks: Sequence[int] = RANKS) -> dict[str, float]:
    """The metrics with no ranking to score: mAP and CMC NaN."""
    return {"map": float("nan"), **{f"rank{k}": float("nan") for k in ranks}, "queries": queries}


def retrieval_metrics(scores: np.ndarray, query_ids: np.ndarray, query_cams: np.ndarray,
                      gallery_ids: np.ndarray, gallery_cams: np.ndarray,
                      gallery_junk: np.ndarray | None = None,
                      ranks: Sequence[int] = RANKS) -> dict[str, float]:
    """``{"map": ..., "rank1": ..., "rank5": ..., "rank10": ..., "queries": n}`` (fractions in [0, 1]).

    ``scores`` is (queries, gallery), higher = more similar; ids and cameras are integer arrays;
    ``gallery_junk`` is a bool per gallery entry. ``queries`` counts the queries that had a match.
    """
    from sklearn.metrics import label_ranking_average_precision_score

    scores = np.asarray(scores, dtype=np.float64)
    q_ids, q_cams = np.asarray(query_ids), np.asarray(query_cams)
    g_ids, g_cams = np.asarray(gallery_ids), np.asarray(gallery_cams)
    if scores.shape != (len(q_ids), len(g_ids)) or len(q_cams) != len(q_ids) or len(g_cams) != len(g_ids):
        raise ValueError(f"scores {scores.shape} do not match {len(q_ids)} queries x {len(g_ids)} gallery entries")
    if not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinite values")
    same_id = q_ids[:, None] == g_ids[None, :]
    ignored = same_id & (q_cams[:, None] == g_cams[None, :])
    if gallery_junk is not None:
        ignored |= np.asarray(gallery_junk, dtype=bool)[None, :]
    relevant = same_id & ~ignored
    has_match = relevant.any(axis=1)
    out = unscored(float(has_match.sum()), ranks)
    if not has_match.any():
        return out
    # Ignored entries sink below every score (scikit-learn takes finite scores only).
    floor = np.nextafter(scores.min(), -np.inf)  # below every score at any magnitude (min - 1 tied at 1e17)
    relevant, masked = relevant[has_match], np.where(ignored, floor, scores)[has_match]
    out["map"] = float(label_ranking_average_precision_score(relevant, masked))
    best = np.where(relevant, masked, -np.inf).max(axis=1, keepdims=True)
    first = ((masked >= best) & ~relevant & ~ignored[has_match]).sum(axis=1)  # 0-based rank of the first match
    for k in ranks:
        out[f"rank{k}"] = float((first < k).mean())
    return out


def cosine_scores(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Cosine similarity of every query embedding to every gallery embedding (queries x gallery)."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    return q @ g.T
