"""Interests by category: each history read one category at a time, and a readout of the top ones.

For every (user, category) subsequence of the history (:func:`~hytrec_torchrec.ops.category.
category_groups`: one stable sort, the groups' offsets as ``cu_seqlens``):

* a **long-term interest**: ``memory: delta`` runs a gated-delta memory
  (:class:`~hytrec_torchrec.modules.memory.GatedDeltaMixer`, its decay driven by the gap between
  the category's own events) over the whole subsequence and reads it at the category's latest row;
  ``memory: mean`` is the cheap form, a mean of the subsequence's rows that decays with the time
  between them (``mean_period`` seconds; :func:`~hytrec_torchrec.ops.category.segmented_scan`);
* a **short-term interest**: the mean of the subsequence's last ``recent`` rows.

A row ``r`` (the prediction made after event ``r``) reads the top ``count`` categories of its
prefix by recency-weighted count (half-life ``half_life`` events), each as one token
``LayerNorm(W [e_category; long; short] + e_gap)`` built from that category's latest row ``≤ r``
(``e_gap``: the log-bucketed time from that row to row ``r``). :class:`InterestReadout` attends
over the tokens (and a learned "none" token) with the current intent, the short branch's output,
as the query. Row ``r`` reads rows ``≤ r`` only, so all-position training is exact:
:meth:`CategoryInterests.forward_rows` at a history's last row equals :meth:`CategoryInterests.
forward` on the whole history. Cost: linear in the history length for the memories; the per-row
selection holds ``B × L × C`` keys (C: the most categories of one history). TorchScript-scriptable.
"""

from typing import Final, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hytrec_torchrec.modules.config import InterestConfig
from hytrec_torchrec.modules.layers import time_gap_bucket
from hytrec_torchrec.modules.memory import GatedDeltaMixer, previous_gap
from hytrec_torchrec.ops.category import (
    category_groups,
    rank_keys,
    recent_sum,
    segmented_scan,
    top_categories_last,
    top_categories_rows,
)
from hytrec_torchrec.ops.jagged import last_index, segment_ids

__all__ = ["CategoryInterests", "InterestReadout", "GAP_BUCKETS"]

#: log-scale (√2) buckets of the time since a category's latest event (as the long branch's gaps)
GAP_BUCKETS: Final[int] = 64


class CategoryInterests(nn.Module):
    """The top categories of a history as tokens ``[R, M, D]`` with a validity mask ``[R, M]`` and
    the packed row of each category's latest event ``[R, M]`` int64 (0 where not valid).

    Forward inputs: ``h [N, D]`` the combined event rows, ``cat_emb [N, D]`` each row's category
    embedding, ``category [N]`` int64 category indices, ``offsets [B+1]``, ``ts [N]`` int64
    seconds. :meth:`forward` gives one set per history (R = B, read at its last event);
    :meth:`forward_rows` one per row (R = N).
    """

    use_delta: Final[bool]

    def __init__(self, cfg: InterestConfig, dim: int, heads: int, key_dim: int) -> None:
        super().__init__()
        self.count = cfg.count
        self.recent = cfg.recent
        self.half_life = float(cfg.half_life)
        self.mean_period = float(cfg.mean_period)
        self.use_delta = cfg.memory == "delta"
        # a category's subsequence is short: chunks of cfg.chunk_size rows, not the long branch's
        self.memory = GatedDeltaMixer(dim, heads, cfg.chunk_size, key_dim) if self.use_delta else nn.Identity()
        self.token = nn.Linear(3 * dim, dim)
        self.gap_buckets = GAP_BUCKETS
        self.gap_emb = nn.Embedding(GAP_BUCKETS, dim)
        nn.init.normal_(self.gap_emb.weight, std=0.02)
        self.norm = nn.LayerNorm(dim)

    def _row_parts(self, h: torch.Tensor, category: torch.Tensor, offsets: torch.Tensor, ts: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row in time order: ``(long [N, D], short [N, D], keys [N] float64, group_rank [N])``,
        then :func:`category_groups`' ``(perm, group_offsets, group_user, group_rank)`` and the
        keys in group order."""
        n = h.shape[0]
        perm, goff, guser, grank = category_groups(category, offsets)
        seg = segment_ids(offsets, n)
        pos = torch.arange(n, device=h.device) - offsets[:-1][seg]
        hg = h[perm]
        tsg = ts[perm]
        gap = previous_gap(tsg, goff)
        if self.use_delta:
            long_g = self.memory.step(hg, goff, gap, None, False)[0]
        else:
            a = torch.exp(-gap.to(h.dtype) / self.mean_period)
            num = segmented_scan(a, hg, goff)
            den = segmented_scan(a, torch.ones_like(hg[:, :1]), goff)
            long_g = num / den
        cnt = recent_sum(torch.ones_like(hg[:, :1]), goff, self.recent)
        short_g = recent_sum(hg, goff, self.recent) / cnt
        keys_g = rank_keys(pos[perm], goff, self.half_life)
        long_t = torch.zeros_like(h).index_copy(0, perm, long_g)
        short_t = torch.zeros_like(h).index_copy(0, perm, short_g)
        keys_t = torch.zeros_like(keys_g).index_copy(0, perm, keys_g)
        rank_t = torch.zeros_like(category).index_copy(0, perm, grank[segment_ids(goff, n)])
        return long_t, short_t, keys_t, rank_t, perm, goff, guser, grank, keys_g

    def _tokens(self, rows: torch.Tensor, valid: torch.Tensor, long_t: torch.Tensor, short_t: torch.Tensor,
                cat_emb: torch.Tensor, ts: torch.Tensor, t_query: torch.Tensor) -> torch.Tensor:
        """Tokens ``[R, M, D]`` of the chosen rows ``rows [R, M]`` read at ``t_query [R]``. The
        projection ``W [e; long; short]`` depends on the event row only, so it is computed once per
        distinct chosen row and gathered (an all-position batch chooses each row for many queries)."""
        r, m = rows.shape
        flat = rows.reshape(-1)
        uniq, inverse = torch.unique(flat, return_inverse=True)
        x = self.token(torch.cat([cat_emb[uniq], long_t[uniq], short_t[uniq]], 1))[inverse]
        gap = t_query.unsqueeze(1).expand(r, m).reshape(-1) - ts[flat]
        x = self.norm(x + self.gap_emb(time_gap_bucket(gap, self.gap_buckets)))
        return x.view(r, m, -1) * valid.unsqueeze(-1).to(x.dtype)

    def forward(self, h: torch.Tensor, cat_emb: torch.Tensor, category: torch.Tensor, offsets: torch.Tensor,
                ts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token set per history, read at its last event: ``([B, M, D], valid [B, M], rows [B, M])``."""
        b = offsets.numel() - 1
        if h.shape[0] == 0:
            return (h.new_zeros(b, self.count, h.shape[1]),
                    torch.zeros(b, self.count, dtype=torch.bool, device=h.device),
                    torch.zeros(b, self.count, dtype=torch.int64, device=h.device))
        long_t, short_t, _, _, perm, goff, guser, grank, keys_g = self._row_parts(h, category, offsets, ts)
        rows, valid = top_categories_last(perm, goff, guser, grank, keys_g, b, self.count)
        nonempty = offsets[1:] > offsets[:-1]
        t_last = torch.where(nonempty, ts[last_index(offsets).clamp(min=0, max=h.shape[0] - 1)],
                             torch.zeros_like(offsets[1:]))
        return self._tokens(rows, valid, long_t, short_t, cat_emb, ts, t_last), valid, rows

    def forward_rows(self, h: torch.Tensor, cat_emb: torch.Tensor, category: torch.Tensor,
                     offsets: torch.Tensor, ts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token set per row (the prefix ending there): ``([N, M, D], valid [N, M], rows [N, M])``."""
        n = h.shape[0]
        if n == 0:
            return (h.new_zeros(0, self.count, h.shape[1]), torch.zeros(0, self.count, dtype=torch.bool,
                                                                         device=h.device),
                    torch.zeros(0, self.count, dtype=torch.int64, device=h.device))
        long_t, short_t, keys_t, rank_t, _, _, _, _, _ = self._row_parts(h, category, offsets, ts)
        c = int(rank_t.max()) + 1
        rows, valid = top_categories_rows(rank_t, keys_t, offsets, c, self.count)
        return self._tokens(rows, valid, long_t, short_t, cat_emb, ts, ts), valid, rows


class InterestReadout(nn.Module):
    """Multi-head attention of a query ``[R, D]`` (the short branch's output) over interest tokens
    ``[R, M, D]`` (mask ``valid [R, M]``) and one learned "none" token, so a history without
    categories reads the none token; output ``[R, D]``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.none = nn.Parameter(torch.zeros(1, 1, dim))
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        r, m, d = tokens.shape
        toks = torch.cat([self.none.expand(r, 1, d), tokens], 1)  # [R, 1+M, D]
        keep = torch.cat([torch.ones(r, 1, dtype=torch.bool, device=valid.device), valid], 1)
        q = self.q(query).view(r, self.heads, 1, self.head_dim)
        kv = self.kv(toks).view(r, 1 + m, 2, self.heads, self.head_dim)
        k = kv[:, :, 0].transpose(1, 2)  # [R, H, 1+M, d]
        v = kv[:, :, 1].transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep.view(r, 1, 1, 1 + m))
        return self.norm(self.out(o.reshape(r, d)))
