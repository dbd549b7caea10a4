"""Repeat pairs: for each query point of a history, the distinct items seen so far and where each
was seen last.

A query of sequence ``b`` is a row ``r`` of it (the prefix ending at ``r`` asks "what comes next");
its pairs are the rows ``j <= r`` of ``b`` that hold the *last* occurrence of their item up to
``r``, one per distinct item. Queries are the rows ``first_query[b] .. end_b − 1`` of every
sequence: ``first_query = end − 1`` gives one query per history (evaluation, serving), ``start``
gives every row (all-position training, where the pairs of a whole history number the sum of the
distinct items of its prefixes, up to L²/2), ``end − K`` the last K rows (at most K·L pairs).

:func:`repeat_pairs` is the vectorised form (a sort by (sequence, item) and one
``repeat_interleave``); :func:`repeat_pairs_reference` walks every query with a dictionary, and
``tests/test_repeat.py`` checks that the two agree. :func:`repeat_pairs` is
TorchScript-compatible (the served model calls it).

:func:`cycle_rows` gives, for every row, what the item's *cycle events* (the rows marked by a
boolean mask, e.g. purchases; every row when no behaviour is marked) up to and including that row
say: how many there were, and the rows of the first and the last of them. With a pair's source row
``j`` (the item's last occurrence up to the query ``r``), these give the item's mean
inter-purchase gap ``(last − first) / (count − 1)`` and the time since its last purchase, so
"due again" is a ratio of two numbers known at ``r``. One sort by (sequence, item) and segmented
prefix scans: O(L log L) for a history, O(1) more per pair; :func:`cycle_rows_reference` walks
the rows with dictionaries.
"""


from typing import Dict, Final, Optional, Tuple

import torch

__all__ = ["repeat_pairs", "repeat_pairs_reference", "cycle_rows", "cycle_rows_reference", "item_groups",
           "ItemGroups", "FIRST_ITEM"]

#: item indices below this (0 padding, 1 unknown) are never paired: they are not catalog items.
FIRST_ITEM: Final[int] = 2


def _segments(offsets: torch.Tensor, n: int) -> torch.Tensor:
    """``[N]`` int64 sequence index of every row."""
    b = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(b, device=offsets.device), lengths, output_size=n)


#: ``(seg [N], order [N], group_start [N])`` int64 of :func:`item_groups`: every row's sequence,
#: the rows grouped by (sequence, item) (each group in row order), and for each sorted position
#: the position where its group starts.
ItemGroups = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def item_groups(items: torch.Tensor, offsets: torch.Tensor) -> ItemGroups:
    """The one stable sort by (sequence, item) that :func:`repeat_pairs` and :func:`cycle_rows`
    both read (pass it to both to sort once)."""
    n = items.shape[0]
    seg = _segments(offsets, n)
    span = int(items.max()) + 1 if n > 0 else 1
    key = seg * span + items
    order = torch.sort(key, stable=True)[1]
    skey = key[order]
    pos = torch.arange(n, device=items.device)
    first = torch.ones(n, dtype=torch.bool, device=items.device)
    first[1:] = skey[1:] != skey[:-1]
    group_start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0)[0]
    return seg, order, group_start


def _next_and_occurrence(offsets: torch.Tensor, groups: ItemGroups) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(next [N], occurrence [N])`` int64: the row of the next occurrence of each row's item in
    its sequence (the sequence's end row when there is none) and how many times the item has
    occurred in the sequence up to and including the row (1 for a first occurrence)."""
    seg, order, group_start = groups
    n = order.shape[0]
    ends = offsets[1:][seg]
    nxt = ends.clone()
    if n > 1:
        same = group_start[1:] == group_start[:-1]  # the next sorted position is in the same group
        nxt[order[:-1]] = torch.where(same, order[1:], ends[order[:-1]])
    occ = torch.empty_like(order)
    occ[order] = torch.arange(n, device=order.device) - group_start + 1
    return nxt, occ


def repeat_pairs(items: torch.Tensor, offsets: torch.Tensor, first_query: torch.Tensor,
                 groups: Optional[ItemGroups] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (query row, last-occurrence row) pair of a packed batch.

    Args:
        items: ``[N]`` int64 item index of every history row, sequences packed back to back.
        offsets: ``[B+1]`` int64 sequence offsets.
        first_query: ``[B]`` int64 first queried row of each sequence (global row index, clamped
            to the sequence); rows ``first_query[b] .. offsets[b+1] − 1`` are its queries.
        groups: :func:`item_groups` of ``items`` when the caller has it already.
    Returns:
        ``(query [M], source [M], occurrence [M])`` int64: query row ``r``, the row ``j <= r`` of
        the last occurrence of ``items[j]`` up to ``r``, and how many times that item occurred up
        to ``j``. Items below :data:`FIRST_ITEM` are left out. Pairs are ordered by source row,
        then query row.
    """
    n = items.shape[0]
    dev = items.device
    if groups is None:
        groups = item_groups(items, offsets)
    seg = groups[0]
    nxt, occ = _next_and_occurrence(offsets, groups)
    fq = torch.maximum(first_query, offsets[:-1])
    lo = torch.maximum(torch.arange(n, device=dev), fq[seg])  # first query row that sees row j
    count = (nxt - lo).clamp(min=0)
    count = torch.where(items >= 2, count, torch.zeros_like(count))  # FIRST_ITEM (TorchScript cannot read the global)
    total = int(count.sum())
    source = torch.repeat_interleave(torch.arange(n, device=dev), count, output_size=total)
    starts = torch.cumsum(count, 0) - count
    query = lo[source] + torch.arange(total, device=dev) - starts[source]
    return query, source, occ[source]


def cycle_rows(items: torch.Tensor, offsets: torch.Tensor, cycle: torch.Tensor,
               groups: Optional[ItemGroups] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What each row's item's cycle events up to and including the row say.

    Args:
        items: ``[N]`` int64 item index of every row, sequences packed back to back.
        offsets: ``[B+1]`` int64 sequence offsets.
        cycle: ``[N]`` bool: the row is a cycle event (a purchase-like behaviour).
        groups: :func:`item_groups` of ``items`` when the caller has it already.
    Returns:
        ``(count [N], last [N], first [N])`` int64: how many rows ``i <= j`` of the sequence hold
        row ``j``'s item as a cycle event, and the rows of the last and the first of them (−1 when
        the count is 0).
    """
    n = items.shape[0]
    dev = items.device
    if n == 0:
        e = torch.zeros(0, dtype=torch.int64, device=dev)
        return e, e, e
    if groups is None:
        groups = item_groups(items, offsets)
    _, order, group_start = groups
    pos = torch.arange(n, device=dev)
    c = cycle[order].to(torch.int64)
    csum = torch.cumsum(c, 0)
    before = (csum - c)[group_start]  # cycle events of earlier groups
    count_s = csum - before
    # the last cycle event of the group so far: a running max over sorted positions where a cycle
    # event holds its own position and every other row the position just before its group (never
    # above any position of its own group, never below any of an earlier group)
    last_s = torch.cummax(torch.where(c > 0, pos, group_start - 1), 0)[0]
    first_s = torch.cummax(torch.where((c > 0) & (count_s == 1), pos, group_start - 1), 0)[0]
    none = count_s == 0
    last_row = torch.where(none, torch.full_like(pos, -1), order[last_s.clamp(min=0)])
    first_row = torch.where(none, torch.full_like(pos, -1), order[first_s.clamp(min=0)])
    count = torch.empty_like(pos)
    last = torch.empty_like(pos)
    firstr = torch.empty_like(pos)
    count[order] = count_s
    last[order] = last_row
    firstr[order] = first_row
    return count, last, firstr


def cycle_rows_reference(items: torch.Tensor, offsets: torch.Tensor,
                         cycle: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`cycle_rows` by walking every sequence with dictionaries (slow; for tests)."""
    count: list[int] = []
    last: list[int] = []
    first: list[int] = []
    for b in range(offsets.numel() - 1):
        seen: Dict[int, list[int]] = {}
        for r in range(int(offsets[b]), int(offsets[b + 1])):
            rows = seen.setdefault(int(items[r]), [])
            if bool(cycle[r]):
                rows.append(r)
            count.append(len(rows))
            last.append(rows[-1] if rows else -1)
            first.append(rows[0] if rows else -1)
    t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return t(count), t(last), t(first)


def repeat_pairs_reference(items: torch.Tensor, offsets: torch.Tensor,
                           first_query: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`repeat_pairs` by walking every query row with a dictionary (slow; for tests).
    Same outputs, ordered by query row, then source row."""
    q_out: list[int] = []
    s_out: list[int] = []
    o_out: list[int] = []
    for b in range(offsets.numel() - 1):
        start, end = int(offsets[b]), int(offsets[b + 1])
        fq = max(int(first_query[b]), start)
        last: Dict[int, int] = {}
        seen: Dict[int, int] = {}
        occ_at: Dict[int, int] = {}
        for r in range(start, end):
            it = int(items[r])
            seen[it] = seen.get(it, 0) + 1
            last[it] = r
            occ_at[r] = seen[it]
            if r < fq:
                continue
            for item, j in sorted(last.items(), key=lambda kv: kv[1]):
                if item >= FIRST_ITEM:
                    q_out.append(r)
                    s_out.append(j)
                    o_out.append(occ_at[j])
    t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return t(q_out), t(s_out), t(o_out)
