"""Who reads what (rank assignment) and in which batches (length-grouped batch plan).

Rank assignment (balancing rule): users are sorted by (events descending, user ascending) and dealt
to ranks in a snake order 0,1,..,W-1,W-1,..,1,0,0,1,... Every user goes to exactly one rank; user
counts differ by at most one between ranks and event counts are close. The rule uses only the
global index, so it is the same on every rank and in every epoch.

Batch plan of one rank and epoch (generator ``default_rng([seed, epoch, rank, stage_id])``):
1. order = permutation of the rank's examples (training with shuffle) or their natural order;
2. length grouping: order is cut into windows of ``group_window * batch_size`` examples and each
   window is stably sorted by history length, descending;
3. batches = consecutive chunks of ``batch_size`` (training with drop_last drops the last
   incomplete chunk);
4. batch order shuffled (training with shuffle), using the same generator;
5. equal step counts: training keeps the first ``steps`` batches, with ``steps`` the minimum over
   ranks (the surplus is counted in ``dropped_examples``); eval stages append padding batches
   (one example with ``valid=False``) up to the maximum over ranks, so no eval example is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["STAGE_IDS", "assign_ranks", "BatchPlan", "plan_batches", "steps_per_rank",
           "padding_waste"]

STAGE_IDS = {"train": 0, "valid": 1, "test": 2}


def assign_ranks(user: np.ndarray, length: np.ndarray, world_size: int) -> np.ndarray:
    """Snake-deal users to ranks by decreasing length.

    Args:
        user: [U] int64 dense user ids.
        length: [U] int64 events per user.
    Returns:
        [U] int64 rank of each user.
    """
    order = np.lexsort((user, -np.asarray(length)))
    pos = np.arange(len(user), dtype=np.int64)
    lane = pos % world_size
    snake = np.where((pos // world_size) % 2 == 0, lane, world_size - 1 - lane)
    rank = np.empty(len(user), dtype=np.int64)
    rank[order] = snake
    return rank


def steps_per_rank(examples_per_rank: np.ndarray, batch_size: int, train: bool, drop_last: bool) -> int:
    """Common number of batches every rank yields.

    Args:
        examples_per_rank: [W] int64 examples of each rank this epoch.
    Returns:
        training: min over ranks of floor(n/B) (drop_last) or ceil(n/B);
        eval: max over ranks of ceil(n/B).
    """
    n = np.asarray(examples_per_rank, np.int64)
    full = n // batch_size
    ceil = -(-n // batch_size)
    if train:
        return int((full if drop_last else ceil).min())
    return int(ceil.max())


@dataclass
class BatchPlan:
    """Batches of one rank and epoch.

    Attributes:
        order: [E'] int64 example indices, grouped; batch b (b >= 0) is
            ``order[bounds[b]:bounds[b+1]]``.
        bounds: [nb+1] int64 chunk boundaries in ``order``.
        sequence: [steps] int64 chunk index of each yielded batch, -1 = padding batch.
        dropped_examples: examples of this rank not yielded this epoch.
    """

    order: np.ndarray
    bounds: np.ndarray
    sequence: np.ndarray
    dropped_examples: int

    def __len__(self) -> int:
        return int(self.sequence.shape[0])

    def batch(self, i: int) -> np.ndarray:
        """Example indices of the i-th yielded batch (empty for a padding batch)."""
        b = int(self.sequence[i])
        if b < 0:
            return np.zeros(0, np.int64)
        return self.order[self.bounds[b]:self.bounds[b + 1]]


def plan_batches(history_len: np.ndarray, batch_size: int, group_window: int, steps: int,
                 train: bool, shuffle: bool, drop_last: bool, rng: np.random.Generator) -> BatchPlan:
    """Length-grouped batch plan (module docstring, steps 1-5).

    Args:
        history_len: [E] int64 truncated history length per example.
        steps: number of batches to yield (from :func:`steps_per_rank`).
    """
    E = len(history_len)
    shuffle = shuffle and train
    order = rng.permutation(E).astype(np.int64) if shuffle else np.arange(E, dtype=np.int64)
    if group_window > 0 and E:
        window = np.arange(E, dtype=np.int64) // (group_window * batch_size)
        order = order[np.lexsort((-history_len[order], window))]
    bounds = np.arange(0, E + batch_size, batch_size, dtype=np.int64)
    bounds[-1] = min(bounds[-1], E)
    if len(bounds) >= 2 and bounds[-1] == bounds[-2]:
        bounds = bounds[:-1]
    if train and drop_last and len(bounds) >= 2 and bounds[-1] - bounds[-2] < batch_size:
        bounds = bounds[:-1]
    nb = len(bounds) - 1
    seq = rng.permutation(nb).astype(np.int64) if shuffle else np.arange(nb, dtype=np.int64)
    if train:
        seq = seq[:steps]
    else:
        seq = np.concatenate([seq, np.full(max(steps - nb, 0), -1, np.int64)])
    real = seq[seq >= 0]
    kept = int((bounds[real + 1] - bounds[real]).sum())
    return BatchPlan(order=order, bounds=bounds, sequence=seq, dropped_examples=E - kept)


def padding_waste(history_len: np.ndarray, plan: BatchPlan) -> float:
    """Fraction of a padded [B, max_len_in_batch] layout that would be padding, over the epoch.

    0 = no waste. Padding batches are ignored.
    """
    used = 0
    total = 0
    for i in range(len(plan)):
        h = history_len[plan.batch(i)]
        if h.size:
            used += int(h.sum())
            total += int(h.max()) * int(h.size)
    return 1.0 - used / total if total else 0.0
