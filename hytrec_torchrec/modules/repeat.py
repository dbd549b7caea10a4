"""The repeat path: a learned score bonus for the items of the user's own history.

Re-consumption (re-purchase, re-listening, returning to a favourite) is the commonest way a far
history predicts the next event, and a user embedding scored by dot product has no direct way to
say "this item, which you last saw 400 events ago". The repeat path adds to the score of every
item already in the history (``model.repeat``; the idea of RepeatNet's repeat mode and of
pointer-generator recommenders), for the history ending at row ``r`` and an item last seen at row
``j <= r``::

    f      = C[bucket(occurrences of the item up to j)] + E[bucket(r − j)] + T[bucket(t_r − t_j)]
    bonus  = f_0 + Σ_k (P u_r)_k · f_k                       (f ∈ R^{1+R}, P: D → R)

in score units (added to ``u·v`` before the temperature). ``C``, ``E``, ``T`` are small learned
tables of log-scale buckets, so what is learned is *how* a history's repeats behave (how often,
after how many events, after how long), not which items; ``P u`` lets the current intent switch
between repeating and exploring. All tables start at zero, so an untrained repeat path adds
nothing. Items not in the history get no bonus; padding and unknown items are never paired.

Cost: one pass over the distinct items of a history per query (O(L) for a request, after the
O(L log L) sort of :func:`~hytrec_torchrec.ops.repeat.repeat_pairs`); all-position training pairs
every row with the distinct items before it (up to L²/2 pairs of a few floats each), or only the
last ``model.repeat_rows`` rows of each window. Exact in all-position training: the bonus of row
``r`` reads rows ``<= r`` only, and equals the bonus of the history cut at ``r``.
"""


from typing import Final, Tuple

import torch
from torch import nn

from hytrec_torchrec.modules.layers import time_gap_bucket
from hytrec_torchrec.ops.repeat import repeat_pairs

__all__ = ["RepeatHead", "RepeatBonus", "dense_bonus", "lookup_bonus", "COUNT_BUCKETS", "DISTANCE_BUCKETS", "TIME_BUCKETS"]

#: buckets of the occurrence count c >= 1: ⌊2·log2 c⌋ (1 → 0, 2 → 2, 4 → 4, 16 → 8, ≥ 182 → 15).
COUNT_BUCKETS: Final[int] = 16
#: buckets of the events since the last occurrence e >= 0: ⌊2·log2(1 + e)⌋ (≥ 46,340 share 31).
DISTANCE_BUCKETS: Final[int] = 32
#: buckets of the seconds since the last occurrence (:func:`time_gap_bucket`; 1 day → 32).
TIME_BUCKETS: Final[int] = 64

#: ``(query [M], item [M], bonus [M])``: the bonus of item ``item[m]`` for query ``query[m]``
#: (a history row in all-position training, an example otherwise). Pairs are unique.
RepeatBonus = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _log2_bucket(x: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """``min(⌊2·log2(x)⌋, num_buckets − 1)`` of ``x >= 1`` (int64, any shape)."""
    return torch.floor(2.0 * torch.log2(x.to(torch.float64))).to(torch.int64).clamp(0, num_buckets - 1)


class RepeatHead(nn.Module):
    """Score bonus of history items (module docstring).

    Args:
        dim: user embedding width D.
        rank: R, width of the intent interaction.
        train_rows: in all-position training, only the last ``train_rows`` rows of each window get
            the bonus (0 = every row).
    """

    train_rows: Final[int]
    count_buckets: Final[int]
    distance_buckets: Final[int]
    time_buckets: Final[int]

    def __init__(self, dim: int, rank: int = 4, train_rows: int = 0) -> None:
        super().__init__()
        self.count_buckets, self.distance_buckets, self.time_buckets = COUNT_BUCKETS, DISTANCE_BUCKETS, TIME_BUCKETS
        self.count = nn.Embedding(COUNT_BUCKETS, rank + 1)
        self.distance = nn.Embedding(DISTANCE_BUCKETS, rank + 1)
        self.time = nn.Embedding(TIME_BUCKETS, rank + 1)
        for table in (self.count, self.distance, self.time):
            nn.init.zeros_(table.weight)
        self.intent = nn.Linear(dim, rank)
        self.train_rows = int(train_rows)

    def pair_bonus(self, user: torch.Tensor, query: torch.Tensor, occurrence: torch.Tensor,
                   distance: torch.Tensor, seconds: torch.Tensor) -> torch.Tensor:
        """Bonus ``[M]`` of M (query, history item) pairs: ``user [Q, D]``; ``query [M]`` rows of
        ``user``; ``occurrence [M]`` (>= 1), ``distance [M]`` events and ``seconds [M]`` since the
        item's last occurrence, int64."""
        f = (self.count(_log2_bucket(occurrence, self.count_buckets))
             + self.distance(_log2_bucket(distance + 1, self.distance_buckets))
             + self.time(time_gap_bucket(seconds, self.time_buckets)))  # [M, 1+R]
        p = self.intent(user)[query]  # [M, R]
        return f[:, 0] + (p * f[:, 1:]).sum(-1)

    def forward(self, user: torch.Tensor, items: torch.Tensor, offsets: torch.Tensor,
                timestamps: torch.Tensor, all_positions: bool = False) -> RepeatBonus:
        """The bonus of every (query, distinct history item) pair.

        Args:
            user: ``[B, D]`` one user embedding per history, or with ``all_positions`` ``[N, D]``
                one per history row (the prefix ending at that row).
            items: ``[N]`` int64 item index of every history row; offsets ``[B+1]`` int64;
                timestamps ``[N]`` int64 seconds.
        Returns:
            :data:`RepeatBonus`: query = example index ``[0, B)``, or the history row with
            ``all_positions`` (rows before the last ``train_rows`` of a window get no pairs).
        """
        if all_positions:
            first = offsets[:-1]
            if self.train_rows > 0:
                first = torch.maximum(first, offsets[1:] - self.train_rows)
        else:
            first = offsets[1:] - 1
        query, source, occ = repeat_pairs(items, offsets, first)
        # the user row of each pair: the history row itself, or its example
        row = query if all_positions else torch.searchsorted(offsets, query, right=True) - 1
        bonus = self.pair_bonus(user, row, occ, query - source, timestamps[query] - timestamps[source])
        return row, items[source], bonus


def dense_bonus(bonus: RepeatBonus, num_queries: int, candidates: torch.Tensor) -> torch.Tensor:
    """``[Q, C]`` float: the bonus of candidate item ``candidates[c]`` for query ``q`` (0 when the
    item is not in q's history). ``candidates [C]`` int64 may repeat items."""
    query, item, value = bonus
    dev = value.device
    sorted_c, idx = torch.sort(candidates)
    lo = torch.searchsorted(sorted_c, item, right=False)
    hi = torch.searchsorted(sorted_c, item, right=True)
    cnt = hi - lo
    total = int(cnt.sum())
    src = torch.repeat_interleave(torch.arange(item.shape[0], device=dev), cnt, output_size=total)
    k = torch.arange(total, device=dev) - (torch.cumsum(cnt, 0) - cnt)[src]
    cols = idx[lo[src] + k]
    out = torch.zeros(num_queries, candidates.shape[0], dtype=value.dtype, device=dev)
    return out.index_put((query[src], cols), value[src], accumulate=True)


def lookup_bonus(bonus: RepeatBonus, query: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
    """``[K]`` float: the bonus of pair ``(query[k], item[k])`` (0 when the item is not in that
    query's history). ``query``, ``item`` ``[K]`` int64."""
    q, it, value = bonus
    span = int(torch.maximum(it.max(), item.max())) + 1 if it.numel() > 0 and item.numel() > 0 else 1
    keys, order = torch.sort(q * span + it)
    want = query * span + item
    pos = torch.searchsorted(keys, want).clamp(max=max(keys.numel() - 1, 0))
    if keys.numel() == 0:
        return torch.zeros(query.shape[0], dtype=value.dtype, device=value.device)
    hit = keys[pos] == want
    return torch.where(hit, value[order[pos]], torch.zeros_like(value[order[pos]]))
