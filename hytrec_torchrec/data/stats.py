"""Dataset and batch statistics: users, events, length percentiles, unknown-bucket counts,
eligibility per stage, batches per epoch, padding waste, loader throughput."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from hytrec_torchrec.data.batch import Batch
from hytrec_torchrec.data.loader import RankShard
from hytrec_torchrec.data.reader import FEATURES

__all__ = ["dataset_stats", "EpochStats", "read_epoch", "format_stats"]

_PCTS = (50, 90, 99)


def dataset_stats(shard: RankShard) -> dict[str, Any]:
    """Global user/event/length statistics plus, over the shard's users, index-0/1 counts.

    ``unknown_<feature>`` counts events whose index is 1 (the unknown bucket; a feature column
    missing from the raw data maps every event there), ``padding_<feature>`` those with index 0
    (should be 0 in prepared data).
    """
    length = shard.index.length
    out: dict[str, Any] = {
        "users": shard.index.num_users,
        "events": shard.index.num_events,
        "length_mean": float(length.mean()) if length.size else 0.0,
        "length_min": int(length.min()) if length.size else 0,
        "length_max": int(length.max()) if length.size else 0,
        **{f"length_p{p}": float(np.percentile(length, p)) if length.size else 0.0 for p in _PCTS},
        "vocab_sizes": dict(shard.meta.vocab_sizes),
        "stats_users_scope": f"rank {shard.rank}/{shard.world_size}: {shard.data.num_users} users",
    }
    f = shard.data.features
    for i, name in enumerate(FEATURES):
        out[f"unknown_{name}"] = int(np.count_nonzero(f[i] == 1))
        out[f"padding_{name}"] = int(np.count_nonzero(f[i] == 0))
    return out


@dataclass
class EpochStats:
    """Accumulates what the loader delivered over an epoch (call :meth:`update` per batch).

    ``padding_waste`` = 1 - sum(h) / sum_batches(B * max h) over the epoch: the share of a padded
    [B, max_len_in_batch] layout that would be padding. With heavy-tailed lengths it is dominated
    by the few batches holding the longest histories; ``padding_waste_median_batch`` is the
    median of the per-batch values.

    ``supervised_positions`` counts the predictions the training loss makes: one per target event,
    or, with ``all_positions`` (``data.all_positions``), one per history event (each history row
    predicts the next event, the last one the example's target; docs/training.md).
    """

    all_positions: bool = False
    supervised_rows: int = 0  # data.supervised_rows: with all_positions, the last M rows of a window are targets

    batches: int = 0
    examples: int = 0
    padding_examples: int = 0
    history_events: int = 0
    target_events: int = 0
    negatives: int = 0
    supervised: int = 0  # all-position targets: history rows, or the last supervised_rows of each
    padded_slots: int = 0  # sum over batches of B * max history length
    history_max: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    batch_waste: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def update(self, batch: Batch) -> None:
        """Add one batch."""
        lengths = batch.features.lengths()
        B = batch.batch_size
        h = lengths[:B]
        valid = int(batch.valid.sum())
        self.batches += 1
        self.examples += valid
        self.padding_examples += B - valid
        self.history_events += int(h.sum())
        self.supervised += int((h.clamp(max=self.supervised_rows) if self.supervised_rows else h).sum())
        self.target_events += int(lengths[4 * B:5 * B].sum())
        self.negatives += int(lengths[5 * B:].sum())
        hmax = int(h.max()) if B else 0
        self.padded_slots += hmax * B
        self.history_max = max(self.history_max, hmax)
        self.batch_sizes.append(B)
        if hmax:
            self.batch_waste.append(1.0 - int(h.sum()) / (hmax * B))

    def as_dict(self) -> dict[str, Any]:
        waste = 1.0 - self.history_events / self.padded_slots if self.padded_slots else 0.0
        return {
            "batches": self.batches,
            "examples": self.examples,
            "padding_examples": self.padding_examples,
            "history_events": self.history_events,
            "target_events": self.target_events,
            "supervised_positions": self.supervised if self.all_positions else self.target_events,
            "negatives": self.negatives,
            "history_mean": self.history_events / max(self.examples + self.padding_examples, 1),
            "history_max": self.history_max,
            "padding_waste": waste,
            "padding_waste_median_batch": float(np.median(self.batch_waste)) if self.batch_waste else 0.0,
            "seconds": self.seconds,
            "history_events_per_s": self.history_events / self.seconds if self.seconds else 0.0,
            "batches_per_s": self.batches / self.seconds if self.seconds else 0.0,
        }


def read_epoch(loader: Iterable[Batch], all_positions: bool = False, supervised_rows: int = 0) -> EpochStats:
    """Iterate a loader once, timing it (includes worker start-up); ``all_positions`` and
    ``supervised_rows`` as :class:`EpochStats`."""
    st = EpochStats(all_positions=all_positions, supervised_rows=supervised_rows)
    t0 = time.perf_counter()
    for b in loader:
        st.update(b)
    st.seconds = time.perf_counter() - t0
    return st


def format_stats(title: str, stats: dict[str, Any]) -> str:
    """Aligned ``key: value`` block."""
    width = max((len(k) for k in stats), default=0)
    lines = [title]
    for k, v in stats.items():
        if isinstance(v, float):
            v = f"{v:,.4f}" if abs(v) < 10 else f"{v:,.1f}"
        elif isinstance(v, int):
            v = f"{v:,}"
        lines.append(f"  {k.ljust(width)}  {v}")
    return "\n".join(lines)
