"""The two branches of the tower: the hybrid long-term branch and the short-term branch.

Both take packed rows of one part of each history and return one vector per sequence ``[B, D]``;
a sequence whose part is empty gets a learned "empty" vector (so empty histories are defined).
"""


import torch
from torch import nn

from hytrec_torchrec.ops.jagged import lengths_to_offsets, segment_ids
from hytrec_torchrec.modules.layers import Block, SoftmaxMixer, TADNMixer

__all__ = ["LongBranch", "ShortBranch"]


class LongBranch(nn.Module):
    """N blocks from a pattern string (``T`` = TADN, ``S`` = causal softmax), final LayerNorm.

    Only the last row of each sequence leaves the branch, so the final block runs in
    ``last_only`` mode (a final S layer costs O(L), not O(L²); a final TADN layer skips the
    per-row outputs). Forward: ``x [N, D]``, ``offsets [B+1]``, ``tau [N]`` → ``[B, D]``.
    """

    def __init__(self, dim: int, pattern: str, heads: int, ffn_mult: int, dropout: float,
                 alpha: float, learn_alpha: bool, temporal_gate: bool, chunk_size: int, impl: str,
                 group_waste: float) -> None:
        super().__init__()
        if not pattern:
            raise ValueError("LongBranch needs a non-empty pattern")
        blocks = []
        for ch in pattern:
            if ch == "T":
                mixer: nn.Module = TADNMixer(dim, heads, alpha, learn_alpha, temporal_gate, chunk_size, impl)
            elif ch == "S":
                mixer = SoftmaxMixer(dim, heads, group_waste, dropout)
            else:
                raise ValueError(f"unknown layer letter {ch!r} in pattern {pattern!r}")
            blocks.append(Block(mixer, dim, ffn_mult, dropout))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)
        self.empty = nn.Parameter(torch.zeros(dim))
        self.num_blocks = len(blocks)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        b = offsets.numel() - 1
        lengths = offsets[1:] - offsets[:-1]
        nonempty = lengths > 0
        sel = torch.nonzero(nonempty).flatten()
        out = self.empty.unsqueeze(0).expand(b, x.shape[1])
        if sel.numel() == 0:
            return out
        off = lengths_to_offsets(lengths[sel])  # drop empty sequences (they hold no rows)
        seg = segment_ids(off, x.shape[0])
        i = 0
        for blk in self.blocks:
            x = blk(x, off, seg, tau, i == self.num_blocks - 1)
            i += 1
        full = x.new_zeros(b, x.shape[1]).index_copy(0, sel, self.norm(x))
        return torch.where(nonempty.unsqueeze(1), full, out)


class ShortBranch(nn.Module):
    """Multi-head softmax self-attention over the last K events; the last event is the query.

    Forward: ``x [N_short, D]`` (the last ≤K rows of each sequence), ``offsets [B+1]`` → ``[B, D]``.
    """

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        # group_waste = inf: K is small, so one padded [B, K] group is cheapest.
        self.block = Block(SoftmaxMixer(dim, heads, float("inf"), dropout), dim, ffn_mult, dropout)
        self.norm = nn.LayerNorm(dim)
        self.empty = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        b = offsets.numel() - 1
        lengths = offsets[1:] - offsets[:-1]
        nonempty = lengths > 0
        sel = torch.nonzero(nonempty).flatten()
        out = self.empty.unsqueeze(0).expand(b, x.shape[1])
        if sel.numel() == 0:
            return out
        off = lengths_to_offsets(lengths[sel])
        seg = segment_ids(off, x.shape[0])
        y = self.block(x, off, seg, x.new_zeros(x.shape[0]), True)
        full = x.new_zeros(b, x.shape[1]).index_copy(0, sel, self.norm(y))
        return torch.where(nonempty.unsqueeze(1), full, out)
