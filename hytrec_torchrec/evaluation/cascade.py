"""ULIM's own evaluation numbers (``model.kind: ulim``): next-category HR@K beside the
most-frequent-category baseline, and the cascade's recall against full-catalog scoring of the same
model, with the items it scores (docs/evaluation.md, "ULIM").

Per evaluated example it keeps the rank of the target's category under the pointer-generator and
under the user's most frequent history categories, the target item's rank under the full ULIM
scores and under the cascade, and how many items the cascade scored; :meth:`UlimStats.compute`
gathers every process's examples and gives::

    {"next_category": {"hr@1", "hr@5", "hr@10", "most_frequent_hr@1", "most_frequent_hr@5",
                       "most_frequent_hr@10", "hr@5_minus_most_frequent": {"diff", "se", "z"},
                       "examples"},
     "cascade": {"top_categories", "recall@K" (full), "cascade_recall@K", "items_scored" (mean),
                 "catalog", "examples"}}
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["UlimStats", "CATEGORY_KS"]

#: cutoffs of next-category HR
CATEGORY_KS = (1, 5, 10)


class UlimStats:
    """Accumulates ULIM's per-example ranks (module docstring)."""

    def __init__(self, ks: Sequence[int], top_categories: int, catalog: int) -> None:
        self.ks = list(ks)
        self.top_categories = top_categories
        self.catalog = catalog
        self.parts: Dict[str, List[np.ndarray]] = {k: [] for k in ("cat", "mf", "full", "cascade", "scored")}

    def update(self, keep: torch.Tensor, cat_rank: torch.Tensor, mf_rank: torch.Tensor, full_rank: torch.Tensor,
               cascade_rank: torch.Tensor, scored: torch.Tensor) -> None:
        """One batch: ``keep [B]`` bool (the valid examples) and ``[B]`` ranks / item counts."""
        k = keep.cpu()
        for name, t in (("cat", cat_rank), ("mf", mf_rank), ("full", full_rank), ("cascade", cascade_rank),
                        ("scored", scored)):
            self.parts[name].append(t.cpu()[k].numpy().astype(np.int64))

    def _gathered(self) -> Dict[str, np.ndarray]:
        local = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in self.parts.items()}
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return local
        every: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(every, local)
        return {k: np.concatenate([g[k] for g in every]) for k in local}

    def compute(self) -> Dict[str, Any]:
        """The ``next_category`` and ``cascade`` dicts (collective when distributed)."""
        a = self._gathered()
        n = len(a["cat"])
        nc: Dict[str, Any] = {"examples": n}
        for k in CATEGORY_KS:
            nc[f"hr@{k}"] = float((a["cat"] <= k).mean()) if n else math.nan
            nc[f"most_frequent_hr@{k}"] = float((a["mf"] <= k).mean()) if n else math.nan
        d = (a["cat"] <= 5).astype(np.float64) - (a["mf"] <= 5).astype(np.float64)
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        diff = float(d.mean()) if n else math.nan
        nc["hr@5_minus_most_frequent"] = {"diff": diff, "se": se, "z": diff / se if se and se > 0 else math.nan}
        cas: Dict[str, Any] = {"top_categories": self.top_categories, "catalog": self.catalog, "examples": n,
                               "items_scored": float(a["scored"].mean()) if n else math.nan}
        for k in self.ks:
            cas[f"recall@{k}"] = float((a["full"] <= k).mean()) if n else math.nan
            cas[f"cascade_recall@{k}"] = float((a["cascade"] <= k).mean()) if n else math.nan
        return {"next_category": nc, "cascade": cas}
