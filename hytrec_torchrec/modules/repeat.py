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
tables of log-scale buckets (``model.repeat_scorer: additive``). With ``model.repeat_scorer: mlp``
the tables are ``H`` wide and their sum goes through one hidden layer,
``f = W_2 · relu(C[·] + E[·] + T[·] + … + b_1) + b_2`` (``W_2``: H → 1+R, zero at the start): the
same as an MLP over the concatenated bucket embeddings, without materialising the concatenation.
An additive score cannot say "this elapsed/gap ratio matters only for an item bought on a regular
cycle"; the hidden layer can (docs/tower.md, "The repeat scorer").

Either way what is learned is *how* a history's repeats behave (how often, after how many
events, after how long), not which items; ``P u`` lets the current intent switch between
repeating and exploring. The additive tables, and the ``mlp`` scorer's output layer, start at
zero, so an untrained repeat path adds nothing. Items not in the history get no bonus; padding and unknown items are never paired.

Cost: one pass over the distinct items of a history per query (O(L) for a request, after the
O(L log L) sort of :func:`~hytrec_torchrec.ops.repeat.repeat_pairs`); all-position training pairs
every row with the distinct items before it (up to L²/2 pairs of a few floats each), or only the
last ``model.repeat_rows`` rows of each window. Exact in all-position training: the bonus of row
``r`` reads rows ``<= r`` only, and equals the bonus of the history cut at ``r``.
"""


from typing import Any, Final, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hytrec_torchrec.modules.config import REPEAT_SCORERS
from hytrec_torchrec.modules.layers import time_gap_bucket
from hytrec_torchrec.ops.repeat import cycle_rows, item_groups, repeat_pairs

__all__ = ["RepeatHead", "REPEAT_SCORERS", "RepeatBonus", "CycleStats", "dense_bonus", "lookup_bonus", "in_history", "find_pairs", "COUNT_BUCKETS",
           "DISTANCE_BUCKETS", "TIME_BUCKETS", "RATIO_BUCKETS"]

#: buckets of the occurrence count c >= 1: ⌊2·log2 c⌋ (1 → 0, 2 → 2, 4 → 4, 16 → 8, ≥ 182 → 15).
COUNT_BUCKETS: Final[int] = 16
#: buckets of the events since the last occurrence e >= 0: ⌊2·log2(1 + e)⌋ (≥ 46,340 share 31).
DISTANCE_BUCKETS: Final[int] = 32
#: buckets of the seconds since the last occurrence (:func:`time_gap_bucket`; 1 day → 32).
TIME_BUCKETS: Final[int] = 64
#: buckets of a "due" ratio (elapsed / mean gap): 32 quarter-octaves from 1/16 to 16, and "unknown".
RATIO_BUCKETS: Final[int] = 33

#: ``(query [M], item [M], bonus [M])``: the bonus of item ``item[m]`` for query ``query[m]``
#: (a history row in all-position training, an example otherwise). Pairs are unique.
RepeatBonus = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]

#: what the cycle features of M pairs read (all ``[M]`` int64; ``is_cycle`` bool): whether the
#: item's last occurrence is a cycle event, the item's cycle events n, the events and the seconds
#: from its last cycle event to the query, and the events and the seconds from its first cycle
#: event to its last (the "since" and "span" values are not read where n = 0, resp. n < 2).
CycleStats = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _log2_bucket(x: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """``min(⌊2·log2(x)⌋, num_buckets − 1)`` of ``x >= 1`` (int64, any shape)."""
    return torch.floor(2.0 * torch.log2(x.to(torch.float64))).to(torch.int64).clamp(0, num_buckets - 1)


def _ratio_bucket(num: torch.Tensor, den: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Quarter-octave bucket of ``num / den`` (int64 ``[M]``): ``⌊4·log2(num / den)⌋`` clamped to
    ``[−16, 15]`` and shifted to ``0 .. 31`` (a ratio of 1 → 16, 2 → 20, ½ → 12), and
    :data:`RATIO_BUCKETS` − 1 (= 32) where ``known`` is False or ``den <= 0``."""
    ok = known & (den > 0)
    r = num.to(torch.float64).clamp(min=0.5) / den.to(torch.float64).clamp(min=1e-9)
    b = torch.floor(4.0 * torch.log2(r)).to(torch.int64).clamp(-16, 15) + 16
    return torch.where(ok, b, torch.full_like(b, 32))  # RATIO_BUCKETS - 1


class _SummedLookup(torch.autograd.Function):
    """``out [M, W] = Σ_k tables[k][index[:, k] − base_k]`` for tables stacked end to end
    (``index [M, K]`` int64 already shifted by each table's first row ``base_k``): the forward is
    one ``embedding_bag`` (no per-table ``[M, W]`` temporary), the backward one ``index_add`` per
    table (on CPU several times faster than ``embedding_bag``'s own backward for ~10^6 lookups into a
    few dozen rows)."""

    @staticmethod
    def forward(ctx: Any, index: torch.Tensor, *tables: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = [t.shape[0] for t in tables]
        return F.embedding_bag(index, torch.cat(tables, 0), mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        (index,) = ctx.saved_tensors
        grads: List[Optional[torch.Tensor]] = [None]
        base = 0
        grad = grad.contiguous()
        for k, rows in enumerate(ctx.rows):
            g = torch.zeros(rows, grad.shape[1], dtype=grad.dtype, device=grad.device)
            grads.append(g.index_add_(0, index[:, k] - base, grad))
            base += rows
        return tuple(grads)


class RepeatHead(nn.Module):
    """Score bonus of history items (module docstring).

    Args:
        dim: user embedding width D.
        rank: R, width of the intent interaction.
        train_rows: in all-position training, only the last ``train_rows`` rows of each window get
            the bonus (0 = every row).
        cycles: add the cycle features (``model.repeat_cycles``).
        gate: add the repeat/explore gate (``model.repeat_gate``).
        cycle_behaviors: ``[V_behavior]`` bool, which behaviour indices are cycle events
            (purchase-like); None or all False = every event is one.
        scorer: ``additive`` (tables ``1+R`` wide, summed) or ``mlp`` (tables ``hidden`` wide,
            summed, then ``relu`` and a linear map to ``1+R``).
        hidden: H, the hidden width of the ``mlp`` scorer.
    """

    train_rows: Final[int]
    count_buckets: Final[int]
    distance_buckets: Final[int]
    time_buckets: Final[int]
    cycles: Final[bool]
    has_gate: Final[bool]
    has_mlp: Final[bool]

    def __init__(self, dim: int, rank: int = 4, train_rows: int = 0, cycles: bool = False, gate: bool = False,
                 cycle_behaviors: Optional[torch.Tensor] = None, scorer: str = "additive", hidden: int = 32) -> None:
        super().__init__()
        if scorer not in REPEAT_SCORERS:
            raise ValueError(f"scorer: {scorer!r} is not one of {REPEAT_SCORERS}")
        self.has_mlp = scorer == "mlp"
        width = int(hidden) if self.has_mlp else rank + 1
        self.count_buckets, self.distance_buckets, self.time_buckets = COUNT_BUCKETS, DISTANCE_BUCKETS, TIME_BUCKETS
        self.count = nn.Embedding(COUNT_BUCKETS, width)
        self.distance = nn.Embedding(DISTANCE_BUCKETS, width)
        self.time = nn.Embedding(TIME_BUCKETS, width)
        tables = [self.count, self.distance, self.time]
        self.cycles = bool(cycles)
        if self.cycles:
            self.kind = nn.Embedding(2, width)  # is the last occurrence a cycle event
            self.cycle_count = nn.Embedding(COUNT_BUCKETS, width)
            self.since_cycle = nn.Embedding(TIME_BUCKETS + 1, width)  # last bucket: no cycle event yet
            self.due_events = nn.Embedding(RATIO_BUCKETS, width)
            self.due_seconds = nn.Embedding(RATIO_BUCKETS, width)
            tables += [self.kind, self.cycle_count, self.since_cycle, self.due_events, self.due_seconds]
        if self.has_mlp:
            # random tables so that the hidden units differ from the start; the output layer starts at
            # zero, so an untrained repeat path still adds nothing
            for table in tables:
                nn.init.normal_(table.weight, std=0.1)
            self.hidden_bias = nn.Parameter(torch.zeros(width))
            self.out = nn.Linear(width, rank + 1)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        else:
            for table in tables:
                nn.init.zeros_(table.weight)
            self.hidden_bias = None
            self.out = nn.Identity()
        self.intent = nn.Linear(dim, rank)
        self.train_rows = int(train_rows)
        mask = cycle_behaviors if cycle_behaviors is not None else torch.zeros(0, dtype=torch.bool)
        if not bool(mask.any()):
            mask = torch.zeros(0, dtype=torch.bool)  # no mapping: every event is a cycle event
        self.register_buffer("cycle_behaviors", mask.to(torch.bool).clone())
        self.has_gate = bool(gate)
        if self.has_gate:
            # gate logit from the user and the strongest repeat evidence of its history (max over its
            # pairs of the 1+R feature sums); enters every history item's bonus as gate_scale · logit
            self.gate = nn.Linear(dim + rank + 1, 1)
            self.gate_scale = nn.Parameter(torch.zeros(()))
        else:
            self.gate = nn.Identity()
            self.gate_scale = None

    def _cycle_mask(self, behaviors: Optional[torch.Tensor], n: int, device: torch.device) -> torch.Tensor:
        """``[N]`` bool: which rows are cycle events."""
        mask = self.cycle_behaviors
        if behaviors is None or mask.numel() == 0:
            return torch.ones(n, dtype=torch.bool, device=device)
        idx = behaviors.to(torch.int64).clamp(0, mask.numel() - 1)
        return mask.to(device)[idx] & (behaviors.to(torch.int64) < mask.numel())

    def pair_features(self, query: torch.Tensor, source: torch.Tensor, occurrence: torch.Tensor,
                      timestamps: torch.Tensor, cycle: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
                      ) -> torch.Tensor:
        """``[M, 1+R]`` features of M (query row, source row) pairs, the sum of their bucket
        embeddings (``additive``) or that sum through the hidden layer (``mlp``): the query's
        history row ``query [M]``, the item's last occurrence ``source [M]`` (rows of the packed
        history), ``occurrence [M]`` (>= 1) and ``timestamps [N]`` int64 seconds; ``cycle`` =
        ``(is_cycle [N] bool, count [N], last [N], first [N])`` of :func:`cycle_rows`, or None."""
        stats: Optional[CycleStats] = None
        if self.cycles and cycle is not None:
            is_cycle, count, last, first = cycle
            lr = last[source].clamp(min=0)
            fr = first[source].clamp(min=0)
            stats = (is_cycle[source], count[source], query - lr, timestamps[query] - timestamps[lr], lr - fr,
                     timestamps[lr] - timestamps[fr])
        return self.stat_features(occurrence, query - source, timestamps[query] - timestamps[source], stats)

    def stat_features(self, occurrence: torch.Tensor, distance: torch.Tensor, seconds: torch.Tensor,
                      cycle: Optional[CycleStats]) -> torch.Tensor:
        """``[M, 1+R]`` features of M (query, item) pairs from what they say (all ``[M]`` int64):
        the item's occurrences ``occurrence`` (>= 1), the events ``distance`` and seconds
        ``seconds`` from its last occurrence to the query, and :data:`CycleStats` or None. A kept
        serving state holds these numbers per item (hytrec_torchrec/serving/state.py)."""
        tables = [self.count.weight, self.distance.weight, self.time.weight]
        index = [_log2_bucket(occurrence, self.count_buckets),
                 _log2_bucket(distance + 1, self.distance_buckets),
                 time_gap_bucket(seconds, self.time_buckets)]
        if self.cycles and cycle is not None:
            is_cycle, n, since_events, since, span_events, span_seconds = cycle
            has = n > 0
            since_b = torch.where(has, time_gap_bucket(since, self.time_buckets),
                                  torch.full_like(since, self.time_buckets))
            periodic = n >= 2
            steps = (n - 1).clamp(min=1)
            tables += [self.kind.weight, self.cycle_count.weight, self.since_cycle.weight, self.due_events.weight,
                       self.due_seconds.weight]
            index += [is_cycle.to(torch.int64), _log2_bucket(n + 1, self.count_buckets), since_b,
                      # (elapsed since the last cycle event) / (mean gap between its cycle events), in
                      # events and in seconds: about 1 when the item is due again
                      _ratio_bucket(since_events * steps, span_events, periodic),
                      _ratio_bucket(since * steps, span_seconds, periodic)]
        # one summed lookup per pair into the tables stacked end to end (embedding_bag, mode sum):
        # the same values as summing table[index] table by table, without a [M, width] temporary
        # per table (all-position training makes ~10^6 pairs; with the 32-wide mlp tables the
        # temporaries, not the arithmetic, were most of the repeat path's time)
        base = 0
        shifted: List[torch.Tensor] = []
        for table, idx in zip(tables, index):
            shifted.append(idx + base)
            base += table.shape[0]
        stacked = torch.stack(shifted, 1)
        if not torch.jit.is_scripting() and torch.is_grad_enabled():
            f = self._summed_lookup(stacked, tables)
        else:
            f = F.embedding_bag(stacked, torch.cat(tables, 0), mode="sum")
        bias = self.hidden_bias
        if bias is not None:
            f = self.out(f.add_(bias).relu_())
        return f

    @torch.jit.unused
    def _summed_lookup(self, index: torch.Tensor, tables: List[torch.Tensor]) -> torch.Tensor:
        """Training form of the summed lookup (:class:`_SummedLookup`)."""
        return _SummedLookup.apply(index, *tables)

    def pair_bonus(self, user: torch.Tensor, row: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Bonus ``[M]`` of M pairs with features ``f [M, 1+R]`` (:meth:`pair_features`) for the
        user rows ``row [M]`` of ``user [Q, D]``."""
        p = self.intent(user)[row]  # [M, R]
        return f[:, 0] + (p * f[:, 1:]).sum(-1)

    def gate_logits(self, user: torch.Tensor, row: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``[Q]`` logit of "the next item is one of the history's" for every user row of
        ``user [Q, D]``, from the row and the largest pair features ``f [M, 1+R]`` among its pairs
        (``row [M]``; zeros for a row without pairs). Zeros without ``model.repeat_gate``."""
        q = user.shape[0]
        if not self.has_gate:
            return torch.zeros(q, dtype=user.dtype, device=user.device)
        pooled = torch.full((q, f.shape[1]), float("-inf"), dtype=f.dtype, device=f.device)
        pooled = pooled.scatter_reduce(0, row.unsqueeze(1).expand(f.shape[0], f.shape[1]), f, "amax",
                                       include_self=True)
        pooled = torch.where(torch.isinf(pooled), torch.zeros_like(pooled), pooled)
        return self.gate(torch.cat([user, pooled], 1)).squeeze(1)

    def forward(self, user: torch.Tensor, items: torch.Tensor, offsets: torch.Tensor,
                timestamps: torch.Tensor, all_positions: bool = False,
                behaviors: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The bonus of every (query, distinct history item) pair, and the gate.

        Args:
            user: ``[B, D]`` one user embedding per history, or with ``all_positions`` ``[N, D]``
                one per history row (the prefix ending at that row).
            items: ``[N]`` int64 item index of every history row; offsets ``[B+1]`` int64;
                timestamps ``[N]`` int64 seconds.
            behaviors: ``[N]`` int64 behaviour index of every row (the cycle features read which
                rows are purchase-like), or None (every row is a cycle event).
        Returns:
            ``(query [M], item [M], bonus [M], gate_logit [Q])``: the first three are a
            :data:`RepeatBonus` (query = example index ``[0, B)``, or the history row with
            ``all_positions``; rows before the last ``train_rows`` of a window get no pairs); the
            bonus includes the gate's term ``gate_scale · gate_logit[query]``; ``gate_logit`` has
            one entry per row of ``user`` (zeros without ``model.repeat_gate``).
        """
        if all_positions:
            first = offsets[:-1]
            if self.train_rows > 0:
                first = torch.maximum(first, offsets[1:] - self.train_rows)
        else:
            first = offsets[1:] - 1
        groups = item_groups(items, offsets)  # one sort for the pairs and the cycle statistics
        query, source, occ = repeat_pairs(items, offsets, first, groups)
        cycle: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = None
        if self.cycles:
            is_cycle = self._cycle_mask(behaviors, items.shape[0], items.device)
            count, last, firstc = cycle_rows(items, offsets, is_cycle, groups)
            cycle = (is_cycle, count, last, firstc)
        f = self.pair_features(query, source, occ, timestamps, cycle)
        # the user row of each pair: the history row itself, or its example
        row = query if all_positions else torch.searchsorted(offsets, query, right=True) - 1
        bonus, gate = self.bonus_and_gate(user, row, f)
        return row, items[source], bonus, gate

    def bonus_and_gate(self, user: torch.Tensor, row: torch.Tensor, f: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(bonus [M], gate_logit [Q])`` of M pairs with features ``f [M, 1+R]`` for the user rows
        ``row [M]`` of ``user [Q, D]``; the bonus includes the gate's term."""
        bonus = self.pair_bonus(user, row, f)
        gate = self.gate_logits(user, row, f)
        scale = self.gate_scale
        if scale is not None:
            bonus = bonus + scale * gate[row]
        return bonus, gate


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


def find_pairs(pair_query: torch.Tensor, pair_item: torch.Tensor, query: torch.Tensor,
               item: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where each wanted pair ``(query[k], item[k])`` (``[K]`` int64) stands among the unique pairs
    ``(pair_query [M], pair_item [M])``: ``(index [K] into the M pairs, hit [K] bool)``; ``index``
    is 0 where ``hit`` is False."""
    if pair_item.numel() == 0 or item.numel() == 0:
        return torch.zeros_like(query), torch.zeros(query.shape[0], dtype=torch.bool, device=query.device)
    span = int(torch.maximum(pair_item.max(), item.max())) + 1
    keys, order = torch.sort(pair_query * span + pair_item)
    want = query * span + item
    pos = torch.searchsorted(keys, want).clamp(max=keys.numel() - 1)
    hit = keys[pos] == want
    return torch.where(hit, order[pos], torch.zeros_like(pos)), hit


def in_history(bonus: RepeatBonus, query: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
    """``[K]`` bool: item ``item[k]`` is one of query ``query[k]``'s history items (has a pair in
    ``bonus``). The repeat gate's target."""
    return find_pairs(bonus[0], bonus[1], query, item)[1]


def lookup_bonus(bonus: RepeatBonus, query: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
    """``[K]`` float: the bonus of pair ``(query[k], item[k])`` (0 when the item is not in that
    query's history). ``query``, ``item`` ``[K]`` int64."""
    index, hit = find_pairs(bonus[0], bonus[1], query, item)
    value = bonus[2]
    if value.numel() == 0:
        return torch.zeros(query.shape[0], dtype=value.dtype, device=value.device)
    return torch.where(hit, value[index], torch.zeros_like(value[index]))
