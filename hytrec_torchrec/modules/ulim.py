"""ULIM's head: next-category prediction by a pointer-generator network and one user embedding per
category (``model.kind: ulim``; docs/ulim.md).

* **PGIN** (:meth:`UlimHead.category_log_probs`): ``p(c) = g · softmax(W_g u)_c + (1 − g) ·
  Σ_m a_m [c_m = c]``, a generator over every category mixed with a pointer ``a = softmax((W_q u) ·
  (W_k t_m) / √D)`` over the history's top categories (the interest tokens ``t_m`` of
  :mod:`~hytrec_torchrec.modules.interests`, whose categories are ``c_m``), by a learned gate
  ``g = σ(w · u + b)`` (``g = 1`` where the history has no category). With ``pointer: false`` it is
  the generator alone.
* **Per-category user embeddings** (:meth:`UlimHead.category_users`): ``e_c = u + MLP([u; v_c; t_c])``
  with ``v_c`` the head's own embedding of category c and ``t_c`` its interest token when c is one
  of the history's top categories (0 otherwise, where the generator alone knows it). Items of
  category c are scored with ``e_c``.

Shapes: ``u [R, D]`` (one row per user or, in all-position training, per history row), tokens
``[R, M, D]``, ``valid [R, M]`` bool, token categories ``[R, M]`` int64. TorchScript-scriptable.
"""

import math
from typing import Final, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hytrec_torchrec.modules.config import UlimConfig

__all__ = ["UlimHead", "LOG_EPS"]

#: floor of a category probability before its logarithm (a category neither distribution gives)
LOG_EPS: Final[float] = 1e-9


class UlimHead(nn.Module):
    """See the module docstring. ``num_categories``: rows of the category vocabulary (pad and
    unknown included; they are never predicted)."""

    pointer: Final[bool]
    cosine: Final[bool]

    def __init__(self, cfg: UlimConfig, dim: int, num_categories: int, cosine: bool) -> None:
        super().__init__()
        self.num_categories = num_categories
        self.pointer = cfg.pointer
        self.cosine = cosine
        self.generator = nn.Linear(dim, num_categories)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Linear(dim, 1)
        self.scale = 1.0 / math.sqrt(dim)
        self.log_eps = LOG_EPS
        self.category = nn.Embedding(num_categories, dim)
        nn.init.normal_(self.category.weight, std=0.02)
        hidden = cfg.hidden if cfg.hidden > 0 else dim
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[2].weight)  # e_c starts as u: the tower's own embedding
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, u: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, token_category: torch.Tensor,
                target_category: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The training step: ``(e [R, D], loss)``, each row's user embedding for its target's
        category ``target_category [R]`` int64 and the mean of ``−log p(c_target)`` over the rows
        whose target has a real category (index ≥ 2). One module call, so TorchRec's pipeline
        tracer keeps it a leaf."""
        logp = self.category_log_probs(u, tokens, valid, token_category)
        known = target_category >= 2
        nll = -logp.gather(1, target_category.unsqueeze(1)).squeeze(1)
        loss = (nll * known.to(nll.dtype)).sum() / known.sum().clamp(min=1)
        e = self.category_users(u, target_category.unsqueeze(1), tokens, valid, token_category)[:, 0]
        return e, loss

    def category_log_probs(self, u: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor,
                           token_category: torch.Tensor) -> torch.Tensor:
        """``log p(c)`` ``[R, V_c]``, a distribution over the real categories (index ≥ 2); the pad
        and unknown categories (0, 1) get ``log LOG_EPS``."""
        logits_g = self.generator(u)
        logits_g = torch.cat([torch.full_like(logits_g[:, :2], float("-inf")), logits_g[:, 2:]], 1)
        gen = torch.softmax(logits_g, dim=-1)
        if not self.pointer or tokens.shape[1] == 0:
            p = gen
        else:
            valid = valid & (token_category >= 2)
            logits = torch.einsum("rd,rmd->rm", self.q(u), self.k(tokens)) * self.scale
            logits = logits.masked_fill(~valid, float("-inf"))
            any_valid = valid.any(dim=1, keepdim=True)
            attn = torch.softmax(torch.where(any_valid, logits, torch.zeros_like(logits)), dim=-1)
            attn = attn * valid.to(attn.dtype)
            ptr = torch.zeros_like(gen).scatter_add(1, token_category, attn)
            g = torch.sigmoid(self.gate(u))
            g = torch.where(any_valid, g, torch.ones_like(g))
            p = g * gen + (1.0 - g) * ptr
        return torch.log(p + self.log_eps)

    def category_users(self, u: torch.Tensor, categories: torch.Tensor, tokens: torch.Tensor,
                       valid: torch.Tensor, token_category: torch.Tensor) -> torch.Tensor:
        """``e_c`` ``[R, K, D]`` for the categories ``[R, K]`` int64 of each row (L2-normalised
        under cosine similarity)."""
        r, k = categories.shape
        if tokens.shape[1] > 0:
            match = (categories.unsqueeze(2) == token_category.unsqueeze(1)) & valid.unsqueeze(1)  # [R, K, M]
            tok = torch.bmm(match.to(tokens.dtype), tokens)  # each category's own token, or 0
        else:
            tok = u.new_zeros(r, k, u.shape[1])
        x = torch.cat([u.unsqueeze(1).expand(r, k, u.shape[1]), self.category(categories), tok], dim=-1)
        e = u.unsqueeze(1) + self.mlp(x)
        if self.cosine:
            e = F.normalize(e, dim=-1, eps=1e-6)
        return e
