"""Mixture-of-experts fusion of the branch outputs into the user embedding."""


from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MoEFusion"]


class MoEFusion(nn.Module):
    """``x = [b_1; …; b_m]`` (branch outputs, each ``[B, D]``), gate ``p = softmax(W_g x + c)``
    ``[B, E]``, experts ``f_e(x) = W2_e·GELU(W1_e x + c1_e) + c2_e`` (batched over e), output
    ``Σ_e p_e f_e(x)`` ``[B, D]``.

    Load-balancing loss (returned alongside): ``E · Σ_e (mean_b p_{b,e})²`` — 1 when the batch
    uses the experts evenly, up to E when one expert takes everything.
    """

    def __init__(self, num_branches: int, dim: int, num_experts: int, hidden: int) -> None:
        super().__init__()
        inp = num_branches * dim
        self.num_experts = num_experts
        self.gate = nn.Linear(inp, num_experts)
        self.w1 = nn.Parameter(torch.randn(num_experts, inp, hidden) / inp ** 0.5)
        self.b1 = nn.Parameter(torch.zeros(num_experts, hidden))
        self.w2 = nn.Parameter(torch.randn(num_experts, hidden, dim) / hidden ** 0.5)
        self.b2 = nn.Parameter(torch.zeros(num_experts, dim))

    def forward(self, branches: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(branches, dim=-1)  # [B, m·D]
        p = torch.softmax(self.gate(x), dim=-1)  # [B, E]
        hid = F.gelu(torch.einsum("bi,eih->beh", x, self.w1) + self.b1)
        out = torch.einsum("beh,ehd->bed", hid, self.w2) + self.b2  # [B, E, D]
        user = (p.unsqueeze(-1) * out).sum(1)
        if x.shape[0] > 0:
            balance = self.num_experts * (p.mean(0) ** 2).sum()
        else:
            balance = x.new_zeros(())
        return user, balance
