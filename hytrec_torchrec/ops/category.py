"""Per-(user, category) subsequences of jagged histories, and the scans and selections over them.

A batch of histories is packed back to back (``offsets [B+1]``, rows in time order). The rows of
one user and one category form that user's *category subsequence*. :func:`category_groups` finds
them with one stable sort: ``perm`` lists the rows group by group (each group in time order), and
``group_offsets`` are the groups' ``cu_seqlens``, so any jagged op (the gated delta rule, a mean)
runs over every subsequence of the batch at once.

* :func:`segmented_scan` — ``y_j = a_j y_{j−1} + x_j`` within each group (``y`` = 0 before a
  group's first row), by recursive doubling: ⌈log₂ G⌉ vectorised steps for groups of up to G
  rows; :func:`segmented_scan_reference` is the row loop it is tested against.
* :func:`recent_sum` — the sum of each row's last ``w`` rows within its group (prefix sums).
* :func:`rank_keys` — a key per row whose order, among the latest rows of a user's categories, is
  the order of their recency-weighted counts ``Σ 2^{−(r − i)/H}`` at any later row ``r``.
* :func:`top_categories_rows` / :func:`top_categories_last` — the top ``M`` categories of every
  row's prefix (all-position training) or of each whole history (a request): for each, the row of
  its latest occurrence. Row ``r`` reads rows ``≤ r`` only.
"""

from typing import List, Tuple

import torch

from hytrec_torchrec.ops.jagged import lengths_to_offsets, segment_ids

__all__ = ["category_groups", "segmented_scan", "segmented_scan_reference", "recent_sum", "rank_keys",
           "top_categories_rows", "top_categories_last"]


def category_groups(category: torch.Tensor, offsets: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the rows of each history by category.

    Args:
        category: ``[N]`` int64 category index of every row (rows in time order per history).
        offsets: ``[B+1]`` int64 history offsets.
    Returns:
        ``(perm [N], group_offsets [G+1], group_user [G], group_rank [G])``: ``perm`` lists the
        packed rows group by group (users in batch order, each user's categories in ascending index,
        each group's rows in time order); ``group_user`` is each group's history and
        ``group_rank`` its index among that history's groups (0 … C_b − 1).
    """
    n = int(category.shape[0])
    seg = segment_ids(offsets, n)
    width = int(category.max()) + 1 if n > 0 else 1
    key = seg * width + category
    sorted_key, perm = torch.sort(key, stable=True)
    is_start = torch.ones(n, dtype=torch.bool, device=category.device)
    if n > 1:
        is_start[1:] = sorted_key[1:] != sorted_key[:-1]
    gid = torch.cumsum(is_start.to(torch.int64), 0) - 1
    g = int(gid[-1]) + 1 if n > 0 else 0
    group_offsets = lengths_to_offsets(torch.bincount(gid, minlength=g))
    starts = group_offsets[:-1]
    group_user = seg[perm[starts]] if g > 0 else seg[:0]
    first_group = torch.searchsorted(group_user, torch.arange(offsets.numel() - 1, device=category.device))
    group_rank = torch.arange(g, device=category.device) - first_group[group_user]
    return perm, group_offsets, group_user, group_rank


def _group_first(group_offsets: torch.Tensor, n: int) -> torch.Tensor:
    """``[N]`` index (in group order) of each row's group's first row."""
    return group_offsets[:-1][segment_ids(group_offsets, n)]


def segmented_scan(a: torch.Tensor, x: torch.Tensor, group_offsets: torch.Tensor) -> torch.Tensor:
    """``y_j = a_j · y_{j−1} + x_j`` within each group (rows in group order; ``y`` is 0 before a
    group's first row, so its ``a`` is unused).

    Args:
        a: ``[N]`` factors; x: ``[N, D]``; group_offsets: ``[G+1]``.
    Returns:
        ``[N, D]``. Recursive doubling: after the step of width ``d``, row ``j`` holds the scan of
        its last ``2d`` rows as ``(A_j, X_j)`` with ``y_j = A_j y_{j−2d} + X_j``; differentiable.
    """
    n = int(x.shape[0])
    if n == 0:
        return x
    first = _group_first(group_offsets, n)
    longest = int((group_offsets[1:] - group_offsets[:-1]).max())
    idx = torch.arange(n, device=x.device)
    A = a
    X = x
    d = 1
    while d < longest:
        src = idx - d
        valid = src >= first
        srcc = src.clamp(min=0)
        w = torch.where(valid, A, torch.zeros_like(A))
        X = X + w.unsqueeze(1) * X[srcc]
        A = w * A[srcc]
        d *= 2
    return X


def segmented_scan_reference(a: torch.Tensor, x: torch.Tensor, group_offsets: torch.Tensor) -> torch.Tensor:
    """:func:`segmented_scan` as a loop over groups and rows (the reference it is tested against)."""
    out = torch.zeros_like(x)
    bounds: List[int] = group_offsets.tolist()
    for g in range(len(bounds) - 1):
        y = torch.zeros_like(x[0]) if x.shape[0] > 0 else x.new_zeros(0)
        for j in range(bounds[g], bounds[g + 1]):
            y = (a[j] * y if j > bounds[g] else y) + x[j]
            out[j] = y
    return out


def recent_sum(x: torch.Tensor, group_offsets: torch.Tensor, window: int) -> torch.Tensor:
    """``[N, D]``: for each row (group order), the sum of ``x`` over its group's rows ``j − w + 1 …
    j`` (fewer at the group's start). Prefix sums in float64, so long batches lose no precision."""
    n = int(x.shape[0])
    if n == 0:
        return x
    first = _group_first(group_offsets, n)
    cs = torch.cat([x.new_zeros(1, x.shape[1], dtype=torch.float64), torch.cumsum(x.double(), 0)], 0)
    idx = torch.arange(n, device=x.device)
    lo = torch.maximum(idx - window + 1, first)
    return (cs[idx + 1] - cs[lo]).to(x.dtype)


def rank_keys(positions: torch.Tensor, group_offsets: torch.Tensor, half_life: float) -> torch.Tensor:
    """``[N]`` float64 rank keys (rows in group order): ``κ_j = log S_j + p_j ln2 / H`` with
    ``S_j = Σ_{i ≤ j in the group} 2^{−(p_j − p_i)/H}`` the recency-weighted count of the row's
    category at its own position ``p_j`` (row index within the history; ``H`` = ``half_life``
    rows). At a later row ``r`` of the same history the category's count is
    ``S_j 2^{−(r − p_j)/H}``, so ordering categories by ``κ`` of their latest rows ≤ ``r`` orders them
    by their counts at ``r``, for every ``r`` at once."""
    n = int(positions.shape[0])
    if n == 0:
        return positions.to(torch.float64)
    p = positions.to(torch.float64)
    first = _group_first(group_offsets, n)
    prev = torch.where(torch.arange(n, device=p.device) > first, p[(torch.arange(n, device=p.device) - 1).clamp(min=0)], p)
    step = torch.exp2(-(p - prev) / half_life)
    s = segmented_scan(step, torch.ones(n, 1, dtype=torch.float64, device=p.device), group_offsets)[:, 0]
    return torch.log(s) + p * (0.6931471805599453 / half_life)


def _top_rows(keys: torch.Tensor, last: torch.Tensor, m: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` best columns of ``keys [R, C]`` (−inf = absent) as ``(rows [R, m], valid [R, m])``:
    ``last [R, C]``'s entry at each chosen column, best first, 0 where not valid (fewer than ``m``
    present, or ``C`` < ``m``)."""
    r, c = keys.shape
    take = min(m, c)
    best, which = torch.topk(keys, take, dim=1)
    rows = torch.gather(last, 1, which)
    valid = best > float("-inf")
    if take < m:
        rows = torch.cat([rows, rows.new_zeros(r, m - take)], 1)
        valid = torch.cat([valid, valid.new_zeros(r, m - take)], 1)
    return torch.where(valid, rows, torch.zeros_like(rows)), valid


def top_categories_rows(category_group_rank: torch.Tensor, keys: torch.Tensor, offsets: torch.Tensor,
                        num_groups_max: int, m: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The top ``m`` categories of every row's prefix (all-position training).

    Args:
        category_group_rank: ``[N]`` int64, each row's category as its group's index within the
            row's history (``group_rank`` of :func:`category_groups`, in time order).
        keys: ``[N]`` float64 :func:`rank_keys` of each row, in time order.
        offsets: ``[B+1]``; num_groups_max: the most groups of one history (C).
    Returns:
        ``(rows [N, m] int64, valid [N, m] bool)``: for row ``r``, the packed row of the latest
        occurrence (at or before ``r``) of each of its prefix's top ``m`` categories, best first;
        ``valid`` is False where the prefix has fewer than ``m`` categories (``rows`` then 0).
        Memory ``B × L_max × C`` (the categories of each history, not the vocabulary).
    """
    n = int(keys.shape[0])
    dev = keys.device
    b = offsets.numel() - 1
    if n == 0:
        return torch.zeros(0, m, dtype=torch.int64, device=dev), torch.zeros(0, m, dtype=torch.bool, device=dev)
    seg = segment_ids(offsets, n)
    pos = torch.arange(n, device=dev) - offsets[:-1][seg]
    lmax = int((offsets[1:] - offsets[:-1]).max())
    c = max(num_groups_max, 1)
    occ = torch.full((b, lmax, c), -1, dtype=torch.int64, device=dev)
    occ[seg, pos, category_group_rank] = torch.arange(n, device=dev)
    last = torch.cummax(occ, dim=1).values[seg, pos]  # [N, C] latest row of each category, or -1
    none = torch.full(last.shape, float("-inf"), dtype=keys.dtype, device=dev)
    k = torch.where(last >= 0, keys[last.clamp(min=0)], none)
    return _top_rows(k, last, m)


def top_categories_last(perm: torch.Tensor, group_offsets: torch.Tensor, group_user: torch.Tensor,
                        group_rank: torch.Tensor, keys_grouped: torch.Tensor, num_users: int,
                        m: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The top ``m`` categories of each whole history (a request): :func:`top_categories_rows` at
    each history's last row, from the groups' last rows only (O(N + B·C)).

    Args: the outputs of :func:`category_groups`; ``keys_grouped [N]`` :func:`rank_keys` in group
    order; ``num_users`` B. Returns ``(rows [B, m] int64, valid [B, m] bool)`` (packed rows in time
    order).
    """
    dev = perm.device
    g = int(group_user.shape[0])
    if g == 0:
        return (torch.zeros(num_users, m, dtype=torch.int64, device=dev),
                torch.zeros(num_users, m, dtype=torch.bool, device=dev))
    ends = group_offsets[1:] - 1
    c = int(group_rank.max()) + 1
    k = torch.full((num_users, c), float("-inf"), dtype=keys_grouped.dtype, device=dev)
    k[group_user, group_rank] = keys_grouped[ends]
    last = torch.zeros(num_users, c, dtype=torch.int64, device=dev)
    last[group_user, group_rank] = perm[ends]
    return _top_rows(k, last, m)
