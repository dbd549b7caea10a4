"""Full-catalog rank of each target item, computed shard by shard (docs/design.md §6).

Every ranking metric we report (HR@K, NDCG@K, MRR, AUC) is a function of the target's rank in
the full catalog, so no top-K list is needed: each process scores the users of *all* processes
against the item rows it holds locally, counts the items that beat each target, and the counts
are summed across processes. No process ever materialises the whole item table.

Catalog: item indices ``2 .. V-1`` (0 is padding, 1 the unknown bucket).
Rank: ``1 + #{j in catalog, j != target : s_j >= s_target}`` — ties count against the target
(pessimistic), so a model that scores everything equally gets the worst rank, never the best.

Example (single process, plain tensor table)::

    ranks = target_ranks(user, targets, [(0, 0, weight)], num_items=weight.shape[0])
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate

__all__ = [
    "ItemBlock",
    "all_gather_rows",
    "gather_bonus",
    "local_item_blocks",
    "local_pieces",
    "ranked_catalog_sizes",
    "ranks_from_scores",
    "target_ranks",
    "target_ranks_distributed",
    "topk_distributed",
]

#: (row offset, column offset, weight [rows, cols]) of one locally held piece of the item table.
ItemBlock = Tuple[int, int, torch.Tensor]

FIRST_ITEM = 2


def local_pieces(table: torch.Tensor) -> Optional[List[ItemBlock]]:
    """The pieces of a sharded table this process holds, or None for a whole (plain) tensor.

    The one reader of sharded state-dict entries, in both forms TorchRec gives them:

    * ``ShardedTensor`` (torchrec without ``output_dtensor``, or the ``sharded_tensor`` form of
      :func:`~hytrec_torchrec.runtime.distributed.sharded_state_form`): its ``local_shards()``;
    * ``DTensor`` whose local tensor is torchrec's ``LocalShardsWrapper`` (any sharding type,
      table-wise included, whose non-owners hold no shard): its ``local_shards()`` with
      ``local_offsets()``; a ``DTensor`` replicated on every rank counts as a plain tensor.

    Returns:
        ``[(row offset, column offset, weight [rows, cols]), ...]`` (empty on a rank that holds
        no shard), or None when ``table`` is a plain tensor, the same on every rank.

    Raises:
        TypeError: a ``DTensor`` sharded other than through a ``LocalShardsWrapper``.
    """
    if isinstance(table, DTensor):
        local = table.to_local()
        if hasattr(local, "local_offsets"):  # torchrec's LocalShardsWrapper
            return [(int(off[0]), int(off[1]), shard)
                    for off, shard in zip(local.local_offsets(), local.local_shards())]
        if all(isinstance(p, Replicate) for p in table.placements):
            return None
        raise TypeError(f"a DTensor with placements {table.placements} and a plain local tensor: "
                        "expected torchrec's LocalShardsWrapper")
    if hasattr(table, "local_shards"):  # ShardedTensor
        return [
            (int(s.metadata.shard_offsets[0]), int(s.metadata.shard_offsets[1]), s.tensor)
            for s in table.local_shards()
        ]
    return None


def local_item_blocks(table: torch.Tensor, owner_only: bool = True) -> List[ItemBlock]:
    """The locally held pieces of an item table weight.

    Args:
        table: a sharded table from a DMP state dict (``ShardedTensor`` or ``DTensor``:
            :func:`local_pieces`) or a plain tensor (unsharded or data-parallel, the same on every
            rank). With ``owner_only`` (distributed), rank r of W reports only rows
            ``[V·r/W, V·(r+1)/W)`` of a plain tensor, so every row is counted once and the ranks
            share the scoring work, as with a row-wise table.
    """
    pieces = local_pieces(table)
    if pieces is not None:
        return pieces
    if isinstance(table, DTensor):  # replicated on every rank
        table = table.to_local()
    if owner_only and dist.is_initialized():
        world, rank, n = dist.get_world_size(), dist.get_rank(), int(table.shape[0])
        lo, hi = n * rank // world, n * (rank + 1) // world
        return [(lo, 0, table[lo:hi])] if hi > lo else []
    return [(0, 0, table)]


def _block_scores(user: torch.Tensor, blocks: Sequence[ItemBlock]) -> List[Tuple[int, torch.Tensor]]:
    out = []
    for r0, c0, w in blocks:
        cols = w.shape[1]
        out.append((r0, user[:, c0 : c0 + cols].to(w.dtype) @ w.t()))
    return out


def target_ranks(
    user: torch.Tensor,
    targets: torch.Tensor,
    blocks: Sequence[ItemBlock],
    num_items: int,
    exclude: torch.Tensor | None = None,
    reduce: bool = False,
    history: Tuple[torch.Tensor, torch.Tensor] | None = None,
    bonus: Tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Rank of each target in the full catalog.

    Args:
        user: [B, D] user embeddings.
        targets: [B] int64 target item indices.
        blocks: locally held item-table pieces (:func:`local_item_blocks`). Blocks must hold whole
            rows unless ``reduce`` is set (column-split tables: partial scores are all-reduced).
        num_items: V, rows of the item table.
        exclude: optional [B, V] bool mask of items to leave out of the ranking per example
            (e.g. history items when configured); the target itself is never excluded.
        reduce: sum partial counts/scores across processes (distributed use).
        history: optional ``(item values [N], lengths [B])`` of each example's history: these
            items are left out of the example's ranking (the target itself never is). Built per
            block as a ``[B, rows]`` mask, never ``[B, V]``.
        bonus: optional ``(example [M], item [M], value [M])``: ``value`` is added to the score of
            ``item`` for that example (the repeat path, :mod:`hytrec_torchrec.modules.repeat`);
            pairs unique. Every process passes the same triples (all examples').
    Returns:
        [B] int64 ranks, 1 = best.
    """
    B = user.shape[0]
    dev = user.device
    user = user.float()
    col_split = any(w.shape[1] != user.shape[1] for _, _, w in blocks)
    if reduce and dist.is_initialized():
        flag = torch.tensor([1 if col_split else 0], device=dev)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        col_split = bool(flag.item())
    scored = _block_scores(user, blocks)
    if col_split:
        full = torch.zeros(B, num_items, dtype=torch.float32, device=dev)
        for r0, s in scored:
            full[:, r0 : r0 + s.shape[1]] += s.float()
        if reduce and dist.is_initialized():
            dist.all_reduce(full)
            scored = [(0, full)] if dist.get_rank() == 0 else []
        else:
            scored = [(0, full)]
    if bonus is not None:
        scored = [(r0, _add_bonus(s.float(), bonus, r0)) for r0, s in scored]
    return ranks_from_scores(scored, targets, reduce=reduce, exclude=exclude, history=history)


def ranks_from_scores(
    scored: Sequence[Tuple[int, torch.Tensor]],
    targets: torch.Tensor,
    reduce: bool = False,
    exclude: torch.Tensor | None = None,
    history: Tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`target_ranks` from scores already computed: ``scored`` = ``(first row r0, scores
    [B, n] of items r0 … r0+n−1)`` of the locally held whole rows; the other arguments as there.
    Any scorer (the dot product, ULIM's category-then-item scores) ranks through here."""
    B = targets.shape[0]
    dev = targets.device
    tscore = torch.zeros(B, dtype=torch.float32, device=dev)
    for r0, s in scored:
        inside = (targets >= r0) & (targets < r0 + s.shape[1])
        idx = inside.nonzero().squeeze(1)
        tscore[idx] = s[idx, targets[idx] - r0].float()
    if reduce and dist.is_initialized():
        dist.all_reduce(tscore)
    count = torch.zeros(B, dtype=torch.int64, device=dev)
    for r0, s in scored:
        s = s.float()
        n = s.shape[1]
        if exclude is not None or history is not None:
            ex = exclude[:, r0 : r0 + n] if exclude is not None else None
            if history is not None:
                hm = _history_mask(history[0], history[1], targets, r0, n)
                ex = hm if ex is None else ex | hm
            cols = torch.arange(r0, r0 + n, device=dev)
            beats = s >= tscore[:, None]
            beats &= cols[None, :] != targets[:, None]
            beats &= (cols >= FIRST_ITEM)[None, :]
            beats &= ~ex
            count += beats.sum(dim=1)
            continue
        # one pass over the block (it can be [B, 500k]): count every column scoring >= the
        # target's score, then take back the target's own column and the padding/unknown columns
        count += (s >= tscore[:, None]).sum(dim=1)
        inside = ((targets >= r0) & (targets < r0 + n)).nonzero().squeeze(1)
        own = s[inside, targets[inside] - r0] >= tscore[inside]
        count.index_add_(0, inside, -own.to(torch.int64))
        if r0 < FIRST_ITEM:
            special = s[:, : min(FIRST_ITEM - r0, n)]
            count -= (special >= tscore[:, None]).sum(dim=1)
    if reduce and dist.is_initialized():
        dist.all_reduce(count)
    return count + 1


def _add_bonus(s: torch.Tensor, bonus: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], r0: int) -> torch.Tensor:
    """``s [B, n]`` (scores of items ``r0 .. r0+n-1``) plus the bonus of the pairs inside it."""
    ex, item, value = bonus
    inside = (item >= r0) & (item < r0 + s.shape[1])
    return s.index_put((ex[inside], item[inside] - r0), value[inside].to(s.dtype), accumulate=True)


def _removable_history(values: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(example [M], item [M])`` int64 of the history events that history removal takes out of
    a ranking: every event of example b whose item is not b's target (duplicates kept)."""
    rows = torch.repeat_interleave(torch.arange(targets.shape[0], device=targets.device),
                                   lengths.to(torch.int64))
    v = values.to(torch.int64)
    other = v != targets[rows]
    return rows[other], v[other]


def _history_mask(values: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, r0: int,
                  n: int) -> torch.Tensor:
    """``[B, n]`` bool: item ``r0 + j`` is in example b's history and is not its target."""
    rows, v = _removable_history(values, lengths, targets)
    inside = (v >= r0) & (v < r0 + n)
    mask = torch.zeros(targets.shape[0], n, dtype=torch.bool, device=targets.device)
    mask[rows[inside], v[inside] - r0] = True
    return mask


def ranked_catalog_sizes(values: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                         num_items: int) -> torch.Tensor:
    """[B] int64 items each example is ranked among when its history is left out of the ranking:
    the catalog (``num_items - 2``) minus the distinct history items in it, the target excepted.

    Args:
        values: [N] history item indices of all examples, packed; lengths: [B]; targets: [B].
    """
    rows, v = _removable_history(values, lengths, targets)
    keep = (v >= FIRST_ITEM) & (v < num_items)
    keys = torch.unique(rows[keep] * num_items + v[keep])
    removed = torch.bincount(keys // num_items, minlength=targets.shape[0])
    return (num_items - FIRST_ITEM) - removed


def target_ranks_distributed(
    user: torch.Tensor,
    targets: torch.Tensor,
    blocks: Sequence[ItemBlock],
    num_items: int,
    history: Tuple[torch.Tensor, torch.Tensor] | None = None,
    bonus: Tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Ranks for this process's examples, scored against every process's local item rows.

    All processes call this together (possibly with different B, including 0). Each gathers every
    process's users and targets, scores them against its local rows, and the counts are summed.
    ``history`` (``(item values, lengths)`` of this process's examples; all processes pass it or
    none does) leaves each example's history items out of its ranking. ``bonus`` (this process's
    ``(example, item, value)`` repeat-path triples, example indices local; all processes pass it
    or none does) is added to those scores.

    Returns:
        [B] int64 ranks of this process's examples.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return target_ranks(user, targets, blocks, num_items, history=history, bonus=bonus)
    all_u, sizes = all_gather_rows(user.float())
    all_t, _ = all_gather_rows(targets)
    all_h = None
    if history is not None:  # the flag must agree on every rank (collectives below)
        all_h = (all_gather_rows(history[0].to(torch.int64))[0],
                 all_gather_rows(history[1].to(torch.int64))[0])
    all_b = gather_bonus(bonus, sizes) if bonus is not None else None
    ranks = target_ranks(all_u, all_t, blocks, num_items, reduce=True, history=all_h, bonus=all_b)
    start = sum(sizes[: dist.get_rank()])
    return ranks[start : start + user.shape[0]]


def gather_bonus(bonus: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], sizes: List[int]
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every process's repeat-path triples ``(example, item, value)``, example indices turned into
    indices into the gathered users (``sizes``: users per process, :func:`all_gather_rows`)."""
    ex, ex_sizes = all_gather_rows(bonus[0].to(torch.int64))
    shift = torch.tensor([sum(sizes[:r]) for r in range(len(sizes))], dtype=torch.int64, device=ex.device)
    ex = ex + torch.repeat_interleave(shift, torch.tensor(ex_sizes, device=ex.device))
    return ex, all_gather_rows(bonus[1].to(torch.int64))[0], all_gather_rows(bonus[2].float())[0]


def all_gather_rows(x: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
    """Concatenate every process's ``x`` along dim 0 (row counts may differ, including 0).

    Returns:
        ``(rows of rank 0, rows of rank 1, ...)`` concatenated, and the row count per rank.
        Without a process group, ``(x, [len(x)])``.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x, [int(x.shape[0])]
    world = dist.get_world_size()
    dev = x.device
    sizes_t = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world)]
    dist.all_gather(sizes_t, torch.tensor([x.shape[0]], dtype=torch.int64, device=dev))
    sizes = [int(s.item()) for s in sizes_t]
    m = max(sizes)
    pad = x.new_zeros((m,) + tuple(x.shape[1:]))
    pad[: x.shape[0]] = x
    parts = [torch.zeros_like(pad) for _ in range(world)]
    dist.all_gather(parts, pad)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]), sizes


def topk_distributed(
    user: torch.Tensor, blocks: Sequence[ItemBlock], k: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Full-catalog top-``k`` items of this process's users, merged across row shards.

    All processes call it together (B may differ, including 0). Each gathers every process's
    users, takes the top-``k`` of its local catalog rows (index >= 2), and the candidates of all
    processes are all-gathered and merged, so no process scores or holds the whole table.
    Blocks must hold whole rows (row-wise or table-wise sharding). Candidates equal in score are
    ordered by lower item index; which of several items tied exactly at the k-th place is kept
    is unspecified.

    Returns:
        ``(scores [B, k'] float32, items [B, k'] int64)``, best first, ``k' = min(k, catalog)``.
    """
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    all_u, sizes = all_gather_rows(user.float()) if distributed else (user.float(), [user.shape[0]])
    B, dev = all_u.shape[0], all_u.device
    cand_s = [torch.empty(B, 0, device=dev)]
    cand_i = [torch.empty(B, 0, dtype=torch.int64, device=dev)]
    for r0, c0, w in blocks:
        if w.shape[1] != all_u.shape[1]:
            raise ValueError("topk_distributed needs whole item rows (row-wise or table-wise sharding)")
        lo = max(FIRST_ITEM - r0, 0)
        if lo >= w.shape[0]:
            continue
        s = all_u @ w[lo:].to(torch.float32).t()
        kk = min(k, s.shape[1])
        top = torch.topk(s, kk, dim=1)
        cand_s.append(top.values)
        cand_i.append(top.indices + r0 + lo)
    s, i = torch.cat(cand_s, 1), torch.cat(cand_i, 1)
    if distributed:
        world = dist.get_world_size()
        n = torch.tensor([s.shape[1]], device=dev)
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        m = int(n.item())
        pad_s = torch.full((B, m), float("-inf"), device=dev)
        pad_i = torch.full((B, m), -1, dtype=torch.int64, device=dev)
        pad_s[:, : s.shape[1]], pad_i[:, : i.shape[1]] = s, i
        gs = [torch.empty_like(pad_s) for _ in range(world)]
        gi = [torch.empty_like(pad_i) for _ in range(world)]
        dist.all_gather(gs, pad_s)
        dist.all_gather(gi, pad_i)
        s, i = torch.cat(gs, 1), torch.cat(gi, 1)
    # order: score descending, then item index ascending (two stable sorts)
    o = torch.argsort(i, dim=1, stable=True)
    s, i = s.gather(1, o), i.gather(1, o)
    o = torch.argsort(s, dim=1, descending=True, stable=True)
    s, i = s.gather(1, o), i.gather(1, o)
    valid = int((i >= 0).sum(1).min().item()) if B else 0
    kk = min(k, valid)
    s, i = s[:, :kk], i[:, :kk]
    if distributed:
        start = sum(sizes[: dist.get_rank()])
        s, i = s[start : start + user.shape[0]], i[start : start + user.shape[0]]
    return s, i
