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
"""


from typing import Dict, Final, Tuple

import torch

__all__ = ["repeat_pairs", "repeat_pairs_reference", "FIRST_ITEM"]

#: item indices below this (0 padding, 1 unknown) are never paired: they are not catalog items.
FIRST_ITEM: Final[int] = 2


def _next_and_occurrence(items: torch.Tensor, offsets: torch.Tensor,
                         seg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(next [N], occurrence [N])`` int64: the row of the next occurrence of each row's item in
    its sequence (the sequence's end row when there is none) and how many times the item has
    occurred in the sequence up to and including the row (1 for a first occurrence)."""
    n = items.shape[0]
    dev = items.device
    span = int(items.max()) + 1 if n > 0 else 1
    key = seg * span + items
    order = torch.sort(key, stable=True)[1]  # rows grouped by (sequence, item), in row order
    skey = key[order]
    ends = offsets[1:][seg]
    nxt = ends.clone()
    if n > 1:
        same = skey[1:] == skey[:-1]
        nxt[order[:-1]] = torch.where(same, order[1:], ends[order[:-1]])
    ar = torch.arange(n, device=dev)
    first = torch.ones(n, dtype=torch.bool, device=dev)
    if n > 1:
        first[1:] = skey[1:] != skey[:-1]
    group_start = torch.cummax(torch.where(first, ar, torch.zeros_like(ar)), 0)[0]
    occ = torch.empty_like(ar)
    occ[order] = ar - group_start + 1
    return nxt, occ


def repeat_pairs(items: torch.Tensor, offsets: torch.Tensor,
                 first_query: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (query row, last-occurrence row) pair of a packed batch.

    Args:
        items: ``[N]`` int64 item index of every history row, sequences packed back to back.
        offsets: ``[B+1]`` int64 sequence offsets.
        first_query: ``[B]`` int64 first queried row of each sequence (global row index, clamped
            to the sequence); rows ``first_query[b] .. offsets[b+1] − 1`` are its queries.
    Returns:
        ``(query [M], source [M], occurrence [M])`` int64: query row ``r``, the row ``j <= r`` of
        the last occurrence of ``items[j]`` up to ``r``, and how many times that item occurred up
        to ``j``. Items below :data:`FIRST_ITEM` are left out. Pairs are ordered by source row,
        then query row.
    """
    n = items.shape[0]
    dev = items.device
    b = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    seg = torch.repeat_interleave(torch.arange(b, device=dev), lengths, output_size=n)
    nxt, occ = _next_and_occurrence(items, offsets, seg)
    fq = torch.maximum(first_query, offsets[:-1])
    lo = torch.maximum(torch.arange(n, device=dev), fq[seg])  # first query row that sees row j
    count = (nxt - lo).clamp(min=0)
    count = torch.where(items >= 2, count, torch.zeros_like(count))  # FIRST_ITEM (TorchScript cannot read the global)
    total = int(count.sum())
    source = torch.repeat_interleave(torch.arange(n, device=dev), count, output_size=total)
    starts = torch.cumsum(count, 0) - count
    query = lo[source] + torch.arange(total, device=dev) - starts[source]
    return query, source, occ[source]


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
