"""The served ULIM model (``model.kind: ulim``): a request answered through the cascade.

:class:`UlimServing` is :class:`~hytrec_torchrec.serving.module.HyTRecServing` (same request
layout, ID maps, tables and tower) with ULIM's head, each item's category and the items of each
category (a CSR index built at export). ``model(values, lengths, request_time, k)`` answers through
the cascade: the top ``top_categories`` categories by the pointer-generator, only their items
scored, each with its category's user embedding, merged by ``log p(category) + log p(item |
category)``; :meth:`UlimServing.scores` gives the same scores for every item (the full ranking that
hytrec-eval measures), and :meth:`UlimServing.category_log_probs` the category distribution.
TorchScript-scriptable; the scripted file loads with torch alone.

A request whose kept categories hold fewer than ``k`` items gets its remaining slots filled with
score ``-inf`` and the padding item (index 0).
"""

from typing import Dict, Final, List, Optional, Tuple

import torch
import torch.nn.functional as F

from hytrec_torchrec.modules.repeat import RepeatHead
from hytrec_torchrec.modules.tower import HyTRecTower
from hytrec_torchrec.modules.ulim import UlimHead
from hytrec_torchrec.serving import DEFAULT_MAX_TOKENS_PER_PASS
from hytrec_torchrec.serving.idmap import Vocab
from hytrec_torchrec.serving.module import HyTRecServing

__all__ = ["UlimServing"]

#: items per chunk when every item is scored (:meth:`UlimServing.scores`)
SCORE_CHUNK: Final[int] = 8192


class UlimServing(HyTRecServing):
    """See the module docstring. ``head``: the trained :class:`UlimHead` (copied by the caller);
    ``item_category [V]`` int64; ``temperature``: τ of training; ``top_categories``: Kc."""

    top_categories: Final[int]
    temperature: Final[float]
    score_chunk: Final[int]

    def __init__(self, tower: HyTRecTower, weights: Dict[str, torch.Tensor], vocabs: Dict[str, Vocab],
                 features: List[str], max_len: int, head: UlimHead, item_category: torch.Tensor,
                 temperature: float, top_categories: int, int8: bool = False,
                 max_tokens_per_pass: int = DEFAULT_MAX_TOKENS_PER_PASS,
                 repeat: Optional[RepeatHead] = None) -> None:
        super().__init__(tower, weights, vocabs, features, max_len, int8, max_tokens_per_pass, repeat=repeat)
        self.ulim = head.eval()
        for p in self.ulim.parameters():
            p.requires_grad_(False)
        cats = item_category.to(torch.int64).clone()
        cats[:2] = 0  # padding and unknown items belong to no category
        self.register_buffer("item_category", cats)
        real = torch.arange(2, cats.numel())
        order = real[torch.argsort(cats[2:], stable=True)]
        self.register_buffer("category_items", order)
        counts = torch.bincount(cats[2:], minlength=head.num_categories)
        offsets = torch.zeros(head.num_categories + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(counts, 0)
        self.register_buffer("category_offsets", offsets)
        self.temperature = float(temperature)
        self.top_categories = int(top_categories)
        self.score_chunk = SCORE_CHUNK

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        """Item vectors ``[n, D]`` as scored (dequantized rows; L2-normalised under cosine)."""
        x = self.inputs["item"].table.lookup(index)
        if self.tower.cosine:
            x = F.normalize(x, dim=-1, eps=1e-6)
        return x

    def _heads(self, values: Dict[str, torch.Tensor], lengths: Dict[str, torch.Tensor],
               request_time: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log p(category) [B, V_c], e [B, V_c, D], dense repeat bonus [B, V] or [0, 0], user [B, D])``."""
        user, tokens, valid, tcat = self.user_parts(values, lengths, request_time)
        logp = self.ulim.category_log_probs(user, tokens, valid, tcat)
        b = user.shape[0]
        cats = torch.arange(logp.shape[1]).unsqueeze(0).expand(b, logp.shape[1])
        e = self.ulim.category_users(user, cats, tokens, valid, tcat)
        bonus = torch.zeros(0, 0)
        if self.repeat is not None:
            ex, item, value = self.repeat_bonus(values, lengths, request_time, user)
            bonus = torch.zeros(b, self.num_items).index_put((ex, item), value, accumulate=True)
        return logp, e, bonus, user

    @torch.jit.export
    def category_log_probs(self, values: Dict[str, torch.Tensor], lengths: Dict[str, torch.Tensor],
                           request_time: torch.Tensor) -> torch.Tensor:
        """``log p(category)`` ``[B, V_c]`` of each request (the pointer-generator)."""
        user, tokens, valid, tcat = self.user_parts(values, lengths, request_time)
        return self.ulim.category_log_probs(user, tokens, valid, tcat)

    @torch.jit.export
    def scores(self, values: Dict[str, torch.Tensor], lengths: Dict[str, torch.Tensor],
               request_time: torch.Tensor) -> torch.Tensor:
        """ULIM's score of every item ``[B, V]``: ``log p(c_j) + log softmax_{i ∈ c_j}(z_i)`` with
        ``z = (e_c · x + bonus) / τ``; columns 0 and 1 (and items of no category) ``-inf``."""
        logp, e, bonus, _ = self._heads(values, lengths, request_time)
        b, vc = logp.shape
        v = self.num_items
        z = torch.full((b, v), float("-inf"))
        for j0 in range(2, v, self.score_chunk):
            j1 = min(v, j0 + self.score_chunk)
            idx = torch.arange(j0, j1)
            z[:, j0:j1] = torch.einsum("bnd,nd->bn", e[:, self.item_category[j0:j1]], self._rows(idx))
        if bonus.numel() > 0:
            z = z + bonus
        z = z / self.temperature
        z[:, :2] = float("-inf")
        cats = self.item_category.unsqueeze(0).expand(b, v)
        m = torch.full((b, vc), float("-inf")).scatter_reduce(1, cats, z, reduce="amax")
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        total = torch.zeros(b, vc).scatter_add(1, cats, torch.exp(z - m.gather(1, cats)))
        log_z = m + torch.log(total)
        s = logp.gather(1, cats) + z - log_z.gather(1, cats)
        s[:, :2] = float("-inf")
        return s

    def forward(self, values: Dict[str, torch.Tensor], lengths: Dict[str, torch.Tensor],
                request_time: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items per request through the cascade: ``(ids [B, k'] int64, scores [B, k']
        float32)``, ``k' = min(k, V_item - 2)``, best first; the scores equal :meth:`scores` on
        the items of the kept categories."""
        if k < 1:
            raise ValueError("k must be >= 1, got " + str(k))
        logp, e, bonus, _ = self._heads(values, lengths, request_time)
        b = logp.shape[0]
        kk = min(k, self.num_items - 2)
        ids = torch.zeros(b, kk, dtype=torch.int64)
        out = torch.full((b, kk), float("-inf"))
        real = logp[:, 2:]
        top = torch.topk(real, min(self.top_categories, real.shape[1]), dim=1).indices + 2
        for r in range(b):
            idx_parts: List[torch.Tensor] = []
            score_parts: List[torch.Tensor] = []
            chosen: List[int] = top[r].tolist()
            for c in chosen:
                a0 = int(self.category_offsets[c])
                a1 = int(self.category_offsets[c + 1])
                if a1 == a0:
                    continue
                idx = self.category_items[a0:a1]
                z = self._rows(idx) @ e[r, c]
                if bonus.numel() > 0:
                    z = z + bonus[r, idx]
                z = z / self.temperature
                idx_parts.append(idx)
                score_parts.append(logp[r, c] + torch.log_softmax(z, 0))
            if len(idx_parts) == 0:
                continue
            idx_all = torch.cat(idx_parts)
            s_all = torch.cat(score_parts)
            best = torch.topk(s_all, min(kk, int(s_all.numel())))
            n = int(best.values.numel())
            ids[r, :n] = idx_all[best.indices]
            out[r, :n] = best.values
        return self.item_ids(ids), out
