"""The two branches of the tower: the hybrid long-term branch and the short-term branch.

Both take packed rows of one part of each history and return one vector per sequence ``[B, D]``;
a sequence whose part is empty gets a learned "empty" vector (so empty histories are defined).
"""


from typing import Final, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hytrec_torchrec.modules.config import TowerConfig
from hytrec_torchrec.modules.layers import Block, SeqContext, SoftmaxMixer, time_gap_bucket
from hytrec_torchrec.modules.memory import IntentReadout, previous_gap
from hytrec_torchrec.modules.registry import build_layer
from hytrec_torchrec.ops.jagged import lengths_to_offsets, segment_ids

__all__ = ["LongBranch", "ShortBranch", "TIME_INPUT_BUCKETS"]

#: log-scale buckets of the gap-to-previous-event embedding (``time_inputs``): √2 apart, so 64
#: reaches about 136 years; gaps past the last bucket share it.
TIME_INPUT_BUCKETS = 64


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
    """One block per letter of ``cfg.long_pattern`` (the layers of
    :mod:`~hytrec_torchrec.modules.registry`: ``T`` = TADN or the gated delta rule per
    ``tadn.gating``, ``S`` = causal softmax), final LayerNorm, then a readout.

    ``long_readout: last`` (the paper's form): only the last row of each sequence leaves the branch,
    so the final block runs in ``last_only`` mode (a final S layer costs O(L), not O(L²)).
    ``long_readout: intent``: every block runs on every row and an
    :class:`~hytrec_torchrec.modules.memory.IntentReadout` queries a memory of the rows with the
    caller's ``intent [B, D]`` (the short branch's output) at time ``t_query [B]``.
    ``long_time_inputs``: a learned embedding of the log-bucketed gap to the previous event is added to
    every input row.

    Forward: ``x [N, D]``, ``offsets [B+1]``, ``tau [N]``, ``ts [N]`` int64 event timestamps,
    optional ``qts [N]`` int64 query times (softmax layers' time bias; default ``ts``), and for
    the intent readout ``intent [B, D]`` and ``t_query [B]`` int64 → ``[B, D]``.
    """

    readout_intent: Final[bool]
    time_inputs: Final[bool]
    checkpoint: Final[bool]

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        if not cfg.long_pattern:
            raise ValueError("LongBranch needs a non-empty pattern")
        dim = cfg.embedding_dim
        self.blocks = nn.ModuleList([Block(build_layer(ch, cfg), dim, cfg.ffn_mult, cfg.dropout)
                                     for ch in cfg.long_pattern])
        self.norm = nn.LayerNorm(dim)
        self.empty = nn.Parameter(torch.zeros(dim))
        self.num_blocks = len(self.blocks)
        # training: recompute each block's activations in the backward pass (long_checkpoint)
        self.checkpoint = cfg.long_checkpoint
        self.readout_intent = cfg.long_readout == "intent"
        self.reader = (IntentReadout(dim, cfg.heads, cfg.tadn.chunk_size, cfg.tadn.key_dim)
                       if self.readout_intent else nn.Identity())
        self.out_norm = nn.LayerNorm(dim) if self.readout_intent else nn.Identity()
        time_inputs = cfg.long_time_inputs
        self.time_inputs = time_inputs
        self.time_buckets = TIME_INPUT_BUCKETS
        self.gap_emb = nn.Embedding(TIME_INPUT_BUCKETS, dim) if time_inputs else nn.Identity()
        if time_inputs:
            nn.init.normal_(self.gap_emb.weight, std=0.02)

    @torch.jit.unused
    def _checkpointed(self, i: int, x: torch.Tensor, ctx: SeqContext) -> torch.Tensor:
        """Block ``i`` under activation checkpointing (eager training only)."""
        return checkpoint(self.blocks[i], x, ctx, use_reentrant=False)

    def _recompute(self) -> bool:
        """Whether blocks run under activation checkpointing now (eager training with gradients)."""
        return self.checkpoint and self.training and torch.is_grad_enabled() and not torch.jit.is_scripting()

    def _inputs(self, x: torch.Tensor, off: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        if self.time_inputs:
            return x + self.gap_emb(time_gap_bucket(previous_gap(ts, off), self.time_buckets))
        return x

    def step_rows(self, x: torch.Tensor, offsets: torch.Tensor, gap: torch.Tensor,
                  states: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The blocks continued from kept memories (serving from a kept state): every block must be
        a gated-delta layer (``long_pattern`` of T layers with ``tadn.gating: gated_delta``).

        Args:
            x: ``[N, D]`` new input rows of B sequences (``offsets [B+1]``; a sequence may be empty).
            gap: ``[N]`` int64 seconds from each row's previous event (the first new row's to the
                last event already in the memories; 0 for a sequence's very first event).
            states: one ``[B, H, dk, dv]`` memory per block, before the rows.
        Returns:
            ``(rows [N, D], states)``: every new row's output after the final LayerNorm (before the
            readout; equal to :meth:`forward_rows` of the whole sequence at those rows) and the
            memories after them.
        """
        if self.time_inputs:
            x = x + self.gap_emb(time_gap_bucket(gap, self.time_buckets))
        out: List[torch.Tensor] = []
        i = 0
        for blk in self.blocks:
            y, final = blk.mixer.step(blk.norm1(x), offsets, gap, states[i], False)
            x = x + blk.drop(y)
            x = x + blk.drop(blk.ffn(blk.norm2(x)))
            out.append(final)
            i += 1
        return self.norm(x), out

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, tau: torch.Tensor,
                ts: torch.Tensor, qts: Optional[torch.Tensor] = None,
                intent: Optional[torch.Tensor] = None, t_query: Optional[torch.Tensor] = None) -> torch.Tensor:
        nonempty, sel, off = _drop_empty(offsets)
        if sel.numel() == 0:
            return self.empty.unsqueeze(0).expand(nonempty.shape[0], x.shape[1])
        seg = segment_ids(off, x.shape[0])
        x = self._inputs(x, off, ts)
        i = 0
        for blk in self.blocks:
            last = i == self.num_blocks - 1 and not self.readout_intent
            ctx = SeqContext(offsets=off, seg=seg, tau=tau, last_only=last, prefix_mean=False, ts=ts, qts=qts)
            x = self._checkpointed(i, x, ctx) if self._recompute() else blk(x, ctx)
            i += 1
        x = self.norm(x)
        if self.readout_intent:
            if intent is None or t_query is None:
                raise ValueError("LongBranch with the intent readout needs intent and t_query")
            x = self.out_norm(self.reader(x, off, ts, intent[sel], t_query[sel]))
        return _restore_empty(x, nonempty, sel, self.empty)

    def forward_rows(self, x: torch.Tensor, offsets: torch.Tensor, tau: torch.Tensor,
                     ts: torch.Tensor, qts: Optional[torch.Tensor] = None,
                     intent: Optional[torch.Tensor] = None, t_query: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every row's output ``[N, D]`` (all-position training): row ``r`` is the branch's output
        for the prefix ending at ``r``; with the intent readout, ``intent [N, D]`` and ``t_query
        [N]`` are the query of the prediction that reads the prefix ending at ``r``. Exact for
        softmax and gated-delta layers; paper TADN layers take h̄ as the running mean
        (``prefix_mean``) and τ against one request time, which differs from :meth:`forward` on
        that prefix. Nothing in row ``r`` depends on a later row."""
        _, _, off = _drop_empty(offsets)  # empty sequences hold no rows
        if x.shape[0] == 0:
            return self.norm(x)
        seg = segment_ids(off, x.shape[0])
        x = self._inputs(x, off, ts)
        ctx = SeqContext(offsets=off, seg=seg, tau=tau, last_only=False, prefix_mean=True, ts=ts, qts=qts)
        i = 0
        for blk in self.blocks:
            x = self._checkpointed(i, x, ctx) if self._recompute() else blk(x, ctx)
            i += 1
        x = self.norm(x)
        if self.readout_intent:
            if intent is None or t_query is None:
                raise ValueError("LongBranch with the intent readout needs intent and t_query")
            x = self.out_norm(self.reader.forward_rows(x, off, ts, intent, t_query))
        return x


class ShortBranch(nn.Module):
    """Multi-head softmax self-attention over the last K events; the last event is the query.

    Forward: ``x [N_short, D]`` (the last ≤R rows of each sequence, R = :attr:`receptive_field`),
    ``offsets [B+1]``, ``ts [N_short]`` int64 event timestamps and optional query times
    ``qts [N_short]`` → ``[B, D]``. Every layer's attention has a sliding window of K rows, so
    :meth:`forward_rows` over whole histories gives every row exactly the output :meth:`forward`
    gives for the R events ending there. With one layer (docs/design.md §4) R = K; each further layer
    (``layers`` > 1) widens it by K − 1.

    The first layer is ``block`` and any further ones ``extra_blocks`` (so checkpoints of
    one-layer branches keep their parameter names). Built from ``cfg`` (``short_len`` = K,
    ``short_heads``, ``short_layers``, ``position_bias``, ``time_bias``).
    """

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        dim, window, layers = cfg.embedding_dim, cfg.short_len, cfg.short_layers
        if layers < 1:
            raise ValueError(f"ShortBranch needs at least one layer, got {layers}")

        def make() -> Block:
            # group_waste = inf: K is small, so one padded [B, K] group is cheapest.
            mixer = SoftmaxMixer(dim=dim, heads=cfg.short_heads, group_waste=float("inf"), dropout=cfg.dropout,
                                 window=window, max_distance=min(cfg.position_bias, window),
                                 time_buckets=cfg.time_bias)
            return Block(mixer, dim, cfg.ffn_mult, cfg.dropout)

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
        x = self.block(x, SeqContext(offsets=off, seg=seg, tau=zeros, last_only=last_only and n_extra == 0,
                                     prefix_mean=False, ts=ts, qts=qts))
        i = 0
        for blk in self.extra_blocks:
            i += 1
            x = blk(x, SeqContext(offsets=off, seg=seg, tau=zeros, last_only=last_only and i == n_extra,
                                  prefix_mean=False, ts=ts, qts=qts))
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
