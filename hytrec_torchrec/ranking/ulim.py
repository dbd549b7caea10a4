"""ULIM's full-catalog ranking: p(category) × p(item | category), whole or through the cascade.

An item j of category c_j scores ``s_j = log p(c_j) + z_j − log Σ_{i: c_i = c_j} exp z_i`` with
``z_j = (e_{c_j} · x_j + bonus_j) / τ``: the category's probability (the pointer-generator) times
the item's softmax probability within its category under that category's user embedding
(``e_c``, :class:`~hytrec_torchrec.modules.ulim.UlimHead`). The cascade keeps only the items of each
user's top ``Kc`` categories (every other item scores −∞, so a target outside them is a miss) and
scores ``Σ_{c ∈ top Kc} |items of c|`` items instead of the catalog.

Each process scores the users of every process against the item rows it holds (row-wise or
table-wise tables, whole rows); the per-(user, category) normalisers are reduced across processes
(a max, then a sum), so no process holds the whole table. :func:`ulim_scores_reference` is the
same for one process, one item at a time, for the tests.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from hytrec_torchrec.ranking.ranks import FIRST_ITEM, ItemBlock, _add_bonus, all_gather_rows, gather_bonus, ranks_from_scores

__all__ = ["ulim_block_scores", "ulim_scores_reference", "cascade_categories", "items_scored",
           "category_ranks", "most_frequent_category_ranks", "ulim_ranks_distributed"]

#: items per chunk of the gathered ``e_{c_j}`` (``[B, chunk, D]`` floats at a time)
CHUNK = 4096


def _reduce(x: torch.Tensor, op: "dist.ReduceOp.RedOpType") -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x, op=op)
    return x


def cascade_categories(logp: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, V_c]`` bool: each user's top ``k`` categories by ``logp [B, V_c]`` (pad and unknown
    never chosen)."""
    scores = logp.clone()
    scores[:, :FIRST_ITEM] = float("-inf")
    top = torch.topk(scores, min(k, scores.shape[1] - FIRST_ITEM), dim=1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter(1, top, True)


def ulim_block_scores(logp: torch.Tensor, e: torch.Tensor, blocks: Sequence[ItemBlock],
                      item_category: torch.Tensor, temperature: float,
                      bonus: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
                      keep: Optional[torch.Tensor] = None) -> List[Tuple[int, torch.Tensor]]:
    """The scores ``s [B, n]`` of the locally held item rows (module docstring), as
    ``(first row, scores)`` per block for :func:`~hytrec_torchrec.ranking.ranks.ranks_from_scores`.

    Args:
        logp: ``[B, V_c]`` log p(category) of every user (all processes' users, same on each).
        e: ``[B, V_c, D]`` every category's user embedding.
        blocks: whole item rows held here (``(r0, 0, weight [n, D])``).
        item_category: ``[V]`` int64 category of every item.
        temperature: τ of the training logits.
        bonus: the repeat path's ``(example, item, value)`` triples (added before the softmax).
        keep: ``[B, V_c]`` bool, the cascade's categories (others score −∞); None = the whole catalog.
    Collective when distributed (every process calls it).
    """
    b, vc = logp.shape
    dev = logp.device
    zs: List[Tuple[int, torch.Tensor, torch.Tensor]] = []
    for r0, c0, w in blocks:
        if c0 != 0 or w.shape[1] != e.shape[2]:
            raise ValueError("ULIM ranking needs whole item rows (row_wise or table_wise item table)")
        n = w.shape[0]
        cats = item_category[r0:r0 + n].to(dev)
        z = torch.empty(b, n, dtype=torch.float32, device=dev)
        for j0 in range(0, n, CHUNK):
            j1 = min(n, j0 + CHUNK)
            z[:, j0:j1] = torch.einsum("bnd,nd->bn", e[:, cats[j0:j1]].float(), w[j0:j1].float())
        if bonus is not None:
            z = _add_bonus(z, bonus, r0)
        z = z / temperature
        if r0 < FIRST_ITEM:  # the padding and unknown rows take no part in any normaliser
            z[:, :min(FIRST_ITEM - r0, n)] = float("-inf")
        zs.append((r0, cats, z))
    m = torch.full((b, vc), float("-inf"), device=dev)
    for _, cats, z in zs:
        m = m.scatter_reduce(1, cats.unsqueeze(0).expand(b, -1), z, reduce="amax")
    _reduce(m, dist.ReduceOp.MAX)
    safe_m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    total = torch.zeros(b, vc, device=dev)
    for _, cats, z in zs:
        total = total.scatter_add(1, cats.unsqueeze(0).expand(b, -1), torch.exp(z - safe_m[:, cats]))
    _reduce(total, dist.ReduceOp.SUM)
    log_z = safe_m + torch.log(total)
    out: List[Tuple[int, torch.Tensor]] = []
    for r0, cats, z in zs:
        s = logp[:, cats].float() + z - log_z[:, cats]
        if keep is not None:
            s = torch.where(keep[:, cats], s, torch.full_like(s, float("-inf")))
        out.append((r0, s))
    return out


def ulim_scores_reference(logp: torch.Tensor, e: torch.Tensor, items: torch.Tensor, item_category: torch.Tensor,
                          temperature: float) -> torch.Tensor:
    """``[B, V]`` the same scores for one process, item by item and category by category."""
    b, v = logp.shape[0], items.shape[0]
    out = torch.full((b, v), float("-inf"))
    for u in range(b):
        for c in set(item_category[FIRST_ITEM:].tolist()):
            members = [j for j in range(FIRST_ITEM, v) if int(item_category[j]) == c]
            z = torch.stack([e[u, c] @ items[j] for j in members]) / temperature
            lse = torch.logsumexp(z, 0)
            for j, zj in zip(members, z):
                out[u, j] = logp[u, c] + zj - lse
    return out


def items_scored(keep: torch.Tensor, item_category: torch.Tensor) -> torch.Tensor:
    """``[B]`` int64: the catalog items the cascade scores for each user (those of its kept categories)."""
    per_cat = torch.bincount(item_category[FIRST_ITEM:].to(torch.int64), minlength=keep.shape[1])[:keep.shape[1]]
    return (keep.to(torch.int64) * per_cat.to(keep.device).unsqueeze(0)).sum(1)


def category_ranks(logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]`` rank (1 = best, ties against the target) of each target category among the real
    categories (index ≥ 2) by ``logp [B, V_c]``."""
    t = logp.gather(1, target.unsqueeze(1))
    real = logp[:, FIRST_ITEM:]
    beats = (real >= t).sum(1) - (target >= FIRST_ITEM).to(torch.int64)
    return beats + 1


def most_frequent_category_ranks(history_category: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor,
                                 num_categories: int) -> torch.Tensor:
    """``[B]`` the rank of each target category when the user's categories are ordered by how often
    they occur in the (truncated) history (the most-frequent-category baseline; categories the
    history lacks tie last, ties against the target)."""
    b = lengths.shape[0]
    rows = torch.repeat_interleave(torch.arange(b, device=lengths.device), lengths.to(torch.int64))
    counts = torch.zeros(b, num_categories, device=lengths.device)
    counts.index_put_((rows, history_category.to(torch.int64)), torch.ones_like(rows, dtype=counts.dtype),
                      accumulate=True)
    return category_ranks(counts, target)


def ulim_ranks_distributed(logp: torch.Tensor, e: torch.Tensor, targets: torch.Tensor, blocks: Sequence[ItemBlock],
                           item_category: torch.Tensor, temperature: float, top_categories: int,
                           bonus: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
                           history: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This process's examples' ``(full ranks [B], cascade ranks [B], items the cascade scores
    [B])``, every process's users scored against this process's rows (as
    :func:`~hytrec_torchrec.ranking.ranks.target_ranks_distributed`). Collective."""
    all_logp, sizes = all_gather_rows(logp.float())
    all_e, _ = all_gather_rows(e.float())
    all_t, _ = all_gather_rows(targets.to(torch.int64))
    all_h = None
    if history is not None:
        all_h = (all_gather_rows(history[0].to(torch.int64))[0], all_gather_rows(history[1].to(torch.int64))[0])
    all_b = gather_bonus(bonus, sizes) if bonus is not None else None
    reduce = dist.is_initialized() and dist.get_world_size() > 1
    full = ulim_block_scores(all_logp, all_e, blocks, item_category, temperature, all_b)
    ranks = ranks_from_scores(full, all_t, reduce=reduce, history=all_h)
    keep = cascade_categories(all_logp, top_categories)
    cascade = ulim_block_scores(all_logp, all_e, blocks, item_category, temperature, all_b, keep=keep)
    cranks = ranks_from_scores(cascade, all_t, reduce=reduce, history=all_h)
    start = sum(sizes[: dist.get_rank()]) if reduce else 0
    mine = slice(start, start + logp.shape[0])
    return ranks[mine], cranks[mine], items_scored(keep[mine], item_category)
