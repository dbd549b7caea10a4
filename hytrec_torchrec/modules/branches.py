"""The two branches of the tower: the hybrid long-term branch and the short-term branch.

Both take packed rows of one part of each history and return one vector per sequence ``[B, D]``;
a sequence whose part is empty gets a learned "empty" vector (so empty histories are defined).
"""


from typing import Optional, Tuple

import torch
from torch import nn

from hytrec_torchrec.ops.jagged import lengths_to_offsets, segment_ids
from hytrec_torchrec.modules.layers import Block, SoftmaxMixer, TADNMixer

__all__ = ["LongBranch", "ShortBranch"]



def _drop_empty(offsets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offsets without the empty sequences (they hold no rows).

    Returns ``nonempty [B]`` bool, ``sel [B']`` indices of the non-empty sequences and their
    offsets ``[B'+1]``.
    """
    lengths = offsets[1:] - offsets[:-1]
    nonempty = lengths > 0
    sel = torch.nonzero(nonempty).flatten()
    return nonempty, sel, lengths_to_offsets(lengths[sel])


def _restore_empty(rows: torch.Tensor, nonempty: torch.Tensor, sel: torch.Tensor,
                   empty: torch.Tensor) -> torch.Tensor:
    """``[B', D]`` per-sequence outputs back to ``[B, D]``; empty sequences get ``empty [D]``."""
    b = nonempty.shape[0]
    full = rows.new_zeros(b, rows.shape[1]).index_copy(0, sel, rows)
    return torch.where(nonempty.unsqueeze(1), full, empty.unsqueeze(0).expand(b, rows.shape[1]))

class LongBranch(nn.Module):
    """N blocks from a pattern string (``T`` = TADN, ``S`` = causal softmax), final LayerNorm.

    Only the last row of each sequence leaves the branch, so the final block runs in
    ``last_only`` mode (a final S layer costs O(L), not O(L²); a final TADN layer skips the
    per-row outputs). Forward: ``x [N, D]``, ``offsets [B+1]``, ``tau [N]``, ``ts [N]`` int64 event
    timestamps (for the softmax layers' time-gap bias) and optional ``qts [N]`` int64 query times
    (default ``ts``; :class:`~hytrec_torchrec.modules.layers.SoftmaxMixer`) → ``[B, D]``.
    """

    def __init__(self, dim: int, pattern: str, heads: int, ffn_mult: int, dropout: float,
                 alpha: float, learn_alpha: bool, temporal_gate: bool, chunk_size: int, impl: str,
                 group_waste: float, position_bias: int = 0, time_bias: int = 0) -> None:
        super().__init__()
        if not pattern:
            raise ValueError("LongBranch needs a non-empty pattern")
        blocks = []
        for ch in pattern:
            if ch == "T":
                mixer: nn.Module = TADNMixer(dim, heads, alpha, learn_alpha, temporal_gate, chunk_size, impl)
            elif ch == "S":
                mixer = SoftmaxMixer(dim, heads, group_waste, dropout, 0, position_bias, time_bias)
            else:
                raise ValueError(f"unknown layer letter {ch!r} in pattern {pattern!r}")
            blocks.append(Block(mixer, dim, ffn_mult, dropout))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)
        self.empty = nn.Parameter(torch.zeros(dim))
        self.num_blocks = len(blocks)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, tau: torch.Tensor,
                ts: torch.Tensor, qts: Optional[torch.Tensor] = None) -> torch.Tensor:
        nonempty, sel, off = _drop_empty(offsets)
        if sel.numel() == 0:
            return self.empty.unsqueeze(0).expand(nonempty.shape[0], x.shape[1])
        seg = segment_ids(off, x.shape[0])
        i = 0
        for blk in self.blocks:
            x = blk(x, off, seg, tau, i == self.num_blocks - 1, False, ts, qts)
            i += 1
        return _restore_empty(self.norm(x), nonempty, sel, self.empty)

    def forward_rows(self, x: torch.Tensor, offsets: torch.Tensor, tau: torch.Tensor,
                     ts: torch.Tensor, qts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every row's output ``[N, D]`` (all-position training): row ``r`` is the branch's output
        for the prefix ending at ``r``. Exact for softmax layers; TADN layers take h̄ as the
        running mean (``prefix_mean``), which differs from :meth:`forward` on that prefix, where
        every row of it uses the prefix's mean. Nothing in row ``r`` depends on a later row."""
        _, _, off = _drop_empty(offsets)  # empty sequences hold no rows
        if x.shape[0] == 0:
            return self.norm(x)
        seg = segment_ids(off, x.shape[0])
        for blk in self.blocks:
            x = blk(x, off, seg, tau, False, True, ts, qts)
        return self.norm(x)


class ShortBranch(nn.Module):
    """Multi-head softmax self-attention over the last K events; the last event is the query.

    Forward: ``x [N_short, D]`` (the last ≤R rows of each sequence, R = :attr:`receptive_field`),
    ``offsets [B+1]``, ``ts [N_short]`` int64 event timestamps and optional query times
    ``qts [N_short]`` → ``[B, D]``. Every layer's attention has a sliding window of K rows, so
    :meth:`forward_rows` over whole histories gives every row exactly the output :meth:`forward`
    gives for the R events ending there. With one layer (SPEC §4) R = K; each further layer
    (``layers`` > 1) widens it by K − 1.

    The first layer is ``block`` and any further ones ``extra_blocks`` (so checkpoints of
    one-layer branches keep their parameter names).
    """

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float, window: int,
                 position_bias: int = 0, time_bias: int = 0, layers: int = 1) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"ShortBranch needs at least one layer, got {layers}")

        def make() -> Block:
            # group_waste = inf: K is small, so one padded [B, K] group is cheapest.
            mixer = SoftmaxMixer(dim, heads, float("inf"), dropout, window, min(position_bias, window), time_bias)
            return Block(mixer, dim, ffn_mult, dropout)

        self.block = make()
        self.extra_blocks = nn.ModuleList([make() for _ in range(layers - 1)])
        self.norm = nn.LayerNorm(dim)
        self.empty = nn.Parameter(torch.zeros(dim))
        self.receptive_field = layers * (window - 1) + 1

    def _run(self, x: torch.Tensor, off: torch.Tensor, ts: torch.Tensor, qts: Optional[torch.Tensor],
             last_only: bool) -> torch.Tensor:
        """All layers over non-empty sequences ``x [N, D]``; only the final one may be ``last_only``."""
        seg = segment_ids(off, x.shape[0])
        zeros = x.new_zeros(x.shape[0])
        n_extra = len(self.extra_blocks)
        x = self.block(x, off, seg, zeros, last_only and n_extra == 0, False, ts, qts)
        i = 0
        for blk in self.extra_blocks:
            i += 1
            x = blk(x, off, seg, zeros, last_only and i == n_extra, False, ts, qts)
        return x

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, ts: torch.Tensor,
                qts: Optional[torch.Tensor] = None) -> torch.Tensor:
        nonempty, sel, off = _drop_empty(offsets)
        if sel.numel() == 0:
            return self.empty.unsqueeze(0).expand(nonempty.shape[0], x.shape[1])
        y = self._run(x, off, ts, qts, True)
        return _restore_empty(self.norm(y), nonempty, sel, self.empty)

    def forward_rows(self, x: torch.Tensor, offsets: torch.Tensor, ts: torch.Tensor,
                     qts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every row's output ``[N, D]`` over whole histories ``x [N, D]``: row ``r`` depends on
        the R rows ending at ``r`` only (exactly :meth:`forward` for a history ending at ``r``)."""
        _, _, off = _drop_empty(offsets)
        if x.shape[0] == 0:
            return self.norm(x)
        return self.norm(self._run(x, off, ts, qts, False))
