"""Ranking metrics from full-catalog target ranks.

With ``rank`` the 1-based rank of the target among ``C`` catalog items:

- ``hr@K``   = 1[rank <= K]
- ``ndcg@K`` = 1[rank <= K] / log2(rank + 1)   (one relevant item, so the ideal DCG is 1)
- ``mrr``    = 1 / rank
- ``auc``    = 1 - (rank - 1) / (C - 1)        (fraction of negatives scored below the target)

Each is averaged over examples. Example::

    >>> ranking_metrics(torch.tensor([1, 3]), ks=(1, 10), catalog_size=100)["hr@1"]
    0.5
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

__all__ = ["DEFAULT_KS", "per_example_metrics", "ranking_metrics"]

DEFAULT_KS: tuple[int, ...] = (1, 10, 50, 100, 200, 500)


def per_example_metrics(
    ranks: torch.Tensor, ks: Sequence[int], catalog_size: int
) -> Dict[str, torch.Tensor]:
    """Per-example metric values, each [B] float64."""
    r = ranks.to(torch.float64)
    out: Dict[str, torch.Tensor] = {}
    for k in ks:
        hit = (r <= k).to(torch.float64)
        out[f"hr@{k}"] = hit
        out[f"ndcg@{k}"] = hit / torch.log2(r + 1.0)
    out["mrr"] = 1.0 / r
    out["auc"] = 1.0 - (r - 1.0) / max(catalog_size - 1, 1)
    return out


def ranking_metrics(
    ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS, catalog_size: int = 1
) -> Dict[str, float]:
    """Mean of :func:`per_example_metrics` over the examples (NaN when there are none)."""
    vals = per_example_metrics(ranks, ks, catalog_size)
    n = ranks.numel()
    return {k: (float(v.sum()) / n if n else float("nan")) for k, v in vals.items()}
