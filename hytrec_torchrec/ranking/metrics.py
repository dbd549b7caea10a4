"""Ranking metrics from full-catalog target ranks.

With ``rank`` the 1-based rank of the target among ``C`` catalog items:

- ``hr@K``   = 1[rank <= K]
- ``ndcg@K`` = 1[rank <= K] / log2(rank + 1)   (one relevant item, so the ideal DCG is 1)
- ``mrr``    = 1 / rank
- ``auc``    = 1 - (rank - 1) / (C - 1)        (fraction of negatives scored below the target)

``C`` is one number, or one per example when items are left out of some rankings (history
removal: ``C`` = catalog size minus the example's distinct removed items).

Each is averaged over examples. A metric is one entry of :data:`AT_K` or :data:`WHOLE_RANKING`;
its name then reaches the per-segment sums, the evaluation config's checks, the reports and
``hytrec-compare`` from there. Example::

    >>> ranking_metrics(torch.tensor([1, 3]), ks=(1, 10), catalog_size=100)["hr@1"]
    0.5
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

__all__ = ["AT_K", "DEFAULT_KS", "WHOLE_RANKING", "metric_names", "per_example_metrics", "ranking_metrics"]

DEFAULT_KS: tuple[int, ...] = (1, 10, 50, 100, 200, 500)


def _hit(r: torch.Tensor, k: int) -> torch.Tensor:
    return (r <= k).to(torch.float64)


def _ndcg(r: torch.Tensor, k: int) -> torch.Tensor:
    return _hit(r, k) / torch.log2(r + 1.0)


def _mrr(r: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    return 1.0 / r


def _auc(r: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    return 1.0 - (r - 1.0) / negatives


#: the metrics with a cutoff: name -> per-example value from float64 ranks [B] and K (named NAME@K)
AT_K: Dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {"hr": _hit, "ndcg": _ndcg}
#: the metrics of the whole ranking: name -> per-example value from ranks [B] and negatives [B]
WHOLE_RANKING: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mrr": _mrr, "auc": _auc}


def metric_names(ks: Sequence[int]) -> List[str]:
    """Every computed metric's name for cutoffs ``ks``, in report order (``hr@K`` for each K, then
    ``ndcg@K``, ..., then ``mrr``, ``auc``)."""
    return [f"{m}@{k}" for m in AT_K for k in ks] + list(WHOLE_RANKING)


def per_example_metrics(
    ranks: torch.Tensor, ks: Sequence[int], catalog_size: Union[int, torch.Tensor]
) -> Dict[str, torch.Tensor]:
    """Per-example metric values, each [B] float64. ``catalog_size``: C, or [B] per example."""
    r = ranks.to(torch.float64)
    out: Dict[str, torch.Tensor] = {}
    for k in ks:
        for name, at_k in AT_K.items():
            out[f"{name}@{k}"] = at_k(r, k)
    if isinstance(catalog_size, torch.Tensor):
        negatives = (catalog_size.to(torch.float64) - 1.0).clamp(min=1.0)
    else:
        negatives = torch.full_like(r, float(max(catalog_size - 1, 1)))
    for name, whole in WHOLE_RANKING.items():
        out[name] = whole(r, negatives)
    return out


def ranking_metrics(
    ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS, catalog_size: int = 1
) -> Dict[str, float]:
    """Mean of :func:`per_example_metrics` over the examples (NaN when there are none)."""
    vals = per_example_metrics(ranks, ks, catalog_size)
    n = ranks.numel()
    return {k: (float(v.sum()) / n if n else float("nan")) for k, v in vals.items()}


try:  # torchmetrics is a torchrec requirement (pinned 1.0.3)
    from torchmetrics import Metric as _Metric
except ImportError:  # pragma: no cover - torchmetrics always ships with torchrec
    _Metric = None  # type: ignore[assignment,misc]


if _Metric is not None:

    class SegmentedRankingMetric(_Metric):
        """Sums of per-example ranking metrics per segment, synced across ranks like TorchRec's
        metrics (``torchmetrics.Metric`` states with ``dist_reduce_fx="sum"``).

        Args:
            ks: the K of HR@K/NDCG@K.
            catalog_size: C, items ranked (for AUC).
            segments: segment names; ``update`` takes a [B, S] membership matrix in this order.

        ``compute()`` returns ``{segment: {"examples": n, "hr@10": ..., ...}}`` (metrics NaN for
        an empty segment). Sums are float64, so the means equal :func:`ranking_metrics` on the
        concatenated ranks up to float64 rounding.
        """

        full_state_update = False

        def __init__(self, ks: Sequence[int], catalog_size: int, segments: Sequence[str]) -> None:
            super().__init__()
            self.ks = tuple(int(k) for k in ks)
            self.catalog_size = int(catalog_size)
            self.segments = list(segments)
            self.metric_names = list(per_example_metrics(torch.ones(1), self.ks, 2).keys())
            S, M = len(self.segments), len(self.metric_names)
            self.add_state("sums", default=torch.zeros(S, M, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("counts", default=torch.zeros(S, dtype=torch.float64), dist_reduce_fx="sum")

        def update(self, ranks: torch.Tensor, membership: torch.Tensor,  # type: ignore[override]
                   catalog: Optional[torch.Tensor] = None) -> None:
            """Add examples: ``ranks`` [B] int, ``membership`` [B, S] bool, optional ``catalog``
            [B] items each example was ranked among (default: ``catalog_size``)."""
            size = self.catalog_size if catalog is None else catalog.cpu()
            vals = per_example_metrics(ranks.cpu(), self.ks, size)
            v = torch.stack([vals[n] for n in self.metric_names], dim=1)  # [B, M]
            m = membership.cpu().to(torch.float64)  # [B, S]
            self.sums += (m.t() @ v).to(self.sums.device)
            self.counts += m.sum(0).to(self.counts.device)

        def compute(self) -> Dict[str, Dict[str, float]]:  # type: ignore[override]
            out: Dict[str, Dict[str, float]] = {}
            for s, name in enumerate(self.segments):
                n = float(self.counts[s])
                row: Dict[str, float] = {"examples": int(n)}  # type: ignore[dict-item]
                for j, mname in enumerate(self.metric_names):
                    row[mname] = float(self.sums[s, j]) / n if n else float("nan")
                out[name] = row
            return out

    __all__.append("SegmentedRankingMetric")
