"""Sequence layers on jagged batches: the TADN temporal gate and mixer, causal softmax attention,
and the pre-norm residual block that wraps either.

Every layer (token mixer, and the :class:`Block` around it) is called as ``layer(x, ctx)``:
packed rows ``x [N, D]`` and a :class:`SeqContext` holding everything else a layer may read, so a
new layer reads what it needs from one object instead of accepting a fixed list of arguments.
All modules are TorchScript-scriptable.
"""


import math
from typing import Final, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hytrec_torchrec.ops.jagged import (
    jagged_to_padded,
    jagged_to_padded_1d,
    last_index,
    length_groups,
    lengths_to_offsets,
    padded_to_jagged,
    segment_ids,
    segment_mean,
    segment_prefix_mean,
)
from hytrec_torchrec.ops.tadn import chunked_core, delta_rule

__all__ = ["SeqContext", "TemporalGate", "TADNMixer", "SoftmaxMixer", "FeedForward", "Block", "temporal_decay",
           "time_gap_bucket", "time_gap_edges"]


class SeqContext(NamedTuple):
    """What a sequence layer reads besides its rows ``x [N, D]``.

    Attributes:
        offsets: ``[B+1]`` int64 row offsets of the sequences.
        seg: ``[N]`` sequence id of each row (:func:`hytrec_torchrec.ops.jagged.segment_ids`).
        tau: ``[N]`` temporal decay (read by the paper's TADN only).
        last_only: return only each sequence's last row ``[B, D]`` (every sequence non-empty),
            computing only what that row needs.
        prefix_mean: TADN's h̄ is the running mean of the rows up to each row instead of the whole
            sequence's mean, so no row sees a later one (all-position training, docs/training.md).
        ts: ``[N]`` int64 event timestamps (softmax time bias, gated-delta decay), or None.
        qts: ``[N]`` int64 query times of the softmax time bias (default ``ts``), or None.
    """

    offsets: torch.Tensor
    seg: torch.Tensor
    tau: torch.Tensor
    last_only: bool
    prefix_mean: bool
    ts: Optional[torch.Tensor]
    qts: Optional[torch.Tensor]


def temporal_decay(timestamps: torch.Tensor, t_current: torch.Tensor, seg: torch.Tensor,
                   decay_period: float, dtype: torch.dtype) -> torch.Tensor:
    """τ_t = exp(−(t_current − t_t)/T) per row ``[N]``.

    The difference is taken in int64 (epoch seconds do not fit float32 exactly) and clamped at 0
    (an event stamped after ``t_current`` counts as fresh, τ = 1), then converted to ``dtype``.
    """
    delta = (t_current[seg] - timestamps).clamp(min=0)
    return torch.exp(-(delta.to(torch.float64) / decay_period)).to(dtype)


def time_gap_bucket(gap: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Log-scale bucket of a time gap in seconds (int64, any shape; negative gaps count as 0):
    ``min(⌊2·log2(1 + gap)⌋, num_buckets − 1)``, so a bucket spans a factor of √2 (0 s → 0,
    1 min → 11, 1 h → 23, 1 day → 32, 30 days → 42, 1 year → 49). Same shape, int64."""
    g = gap.clamp(min=0).to(torch.float64)
    return torch.floor(2.0 * torch.log2(1.0 + g)).to(torch.int64).clamp(max=num_buckets - 1)


def time_gap_edges(num_buckets: int) -> torch.Tensor:
    """Integer lower edges of buckets 1 … B−1 of :func:`time_gap_bucket`, int64 ``[B−1]``.

    Bucket b starts at the smallest gap g with ``2·log2(1 + g) ≥ b``, i.e. ``(1 + g)² ≥ 2^b``:
    ``g = ⌈√(2^b)⌉ − 1``, computed in exact integer arithmetic (edges past the int64 range are
    clamped to its maximum; no gap in seconds reaches them). Then
    ``torch.bucketize(gap.clamp(min=0), edges, right=True)`` equals
    ``time_gap_bucket(gap, num_buckets)`` with no floating-point logarithm, which is what the
    softmax layers use (exact for every int64 gap, whereas the float64 logarithm rounds one
    bucket high just below some edges past ~10^14 s; and faster on CPU:
    benchmarks/results/time_gap_edges_cpu.txt)::

        >>> time_gap_edges(8).tolist()
        [1, 1, 2, 3, 5, 7, 11]
    """
    int64_max = 2 ** 63 - 1
    edges = []
    for b in range(1, num_buckets):
        r = math.isqrt(2 ** b)
        if r * r < 2 ** b:
            r += 1  # ceil of the square root
        edges.append(min(r - 1, int64_max))
    return torch.tensor(edges, dtype=torch.int64)


class TemporalGate(nn.Module):
    """The paper's gate, one value per head:
    ``g_t = α·[σ(W_g·[h_t; Δh_t] + b) ⊙ τ_t] + (1−α)·g_static`` with ``g_static = σ(s)``, ``s`` a
    learned per-head parameter, and α fixed or learned (``α = σ(a)``).

    Input ``hd = [h; Δh]`` ``[N, 2D]`` and ``tau [N]``; output ``g [N, H]`` in [0, 1].
    """

    def __init__(self, dim: int, heads: int, alpha: float, learn_alpha: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, heads)
        self.static_logit = nn.Parameter(torch.zeros(heads))
        self.learn_alpha = learn_alpha
        if learn_alpha:
            init = math.log(alpha / (1.0 - alpha))
            self.alpha_logit = nn.Parameter(torch.tensor(init))
        else:
            self.alpha_logit = nn.Parameter(torch.tensor(0.0), requires_grad=False)
        self.register_buffer("alpha_fixed", torch.tensor(float(alpha)), persistent=True)

    def alpha(self) -> torch.Tensor:
        """α as a 0-d tensor."""
        if self.learn_alpha:
            return torch.sigmoid(self.alpha_logit)
        return self.alpha_fixed

    def g_static(self) -> torch.Tensor:
        """g_static ``[H]``."""
        return torch.sigmoid(self.static_logit)

    def forward(self, hd: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        a = self.alpha()
        dynamic = torch.sigmoid(self.proj(hd)) * tau.unsqueeze(-1)
        return a * dynamic + (1.0 - a) * self.g_static()


class TADNMixer(nn.Module):
    """Temporal-Aware Delta Network token mixer.

    ``Δh = h − h̄`` (h̄: per-sequence mean of this layer's input), fused input
    ``h̃ = q_f ⊙ Δh + (1 − q_f) ⊙ h`` with ``q_f = σ(W_f[h; Δh] + b_f)``; per head
    ``q, k = L2norm(W_q h̃), L2norm(W_k h̃)``, ``v = W_v h̃``, ``β = σ(W_β h̃ + b_β)``; erase ``g·β``,
    write ``β`` in the delta rule (:mod:`hytrec_torchrec.ops.tadn`); output projection back to D.
    With ``temporal_gate`` False, ``g ≡ 1`` (plain DeltaNet).
    """

    def __init__(self, dim: int, heads: int, alpha: float, learn_alpha: bool, temporal_gate: bool,
                 chunk_size: int, impl: str) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.fuse = nn.Linear(2 * dim, dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.beta = nn.Linear(dim, heads)
        self.gate = TemporalGate(dim, heads, alpha, learn_alpha)
        self.temporal_gate = temporal_gate
        self.out = nn.Linear(dim, dim)
        self.chunk_size = chunk_size
        self.impl = impl

    def gates(self, h: torch.Tensor, offsets: torch.Tensor, seg: torch.Tensor,
              tau: torch.Tensor, prefix_mean: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(h_tilde [N, D], g [N, H])`` — the fused input and the temporal gate.

        h̄ is the sequence mean, or with ``prefix_mean`` the running mean up to each row."""
        if prefix_mean:
            hbar = segment_prefix_mean(h, offsets, seg)
        else:
            hbar = segment_mean(h, offsets, seg)[seg]
        dh = h - hbar
        hd = torch.cat([h, dh], dim=-1)
        qf = torch.sigmoid(self.fuse(hd))
        h_tilde = qf * dh + (1.0 - qf) * h
        if self.temporal_gate:
            g = self.gate(hd, tau)
        else:
            g = torch.ones(h.shape[0], self.heads, dtype=h.dtype, device=h.device)
        return h_tilde, g

    def forward(self, h: torch.Tensor, ctx: SeqContext) -> torch.Tensor:
        """``h [N, D]`` → ``[N, D]`` (``[B, D]`` with ``ctx.last_only``); reads time through
        ``ctx.tau`` only."""
        n = h.shape[0]
        offsets = ctx.offsets
        last_only = ctx.last_only
        h_tilde, g = self.gates(h, offsets, ctx.seg, ctx.tau, ctx.prefix_mean)
        qkv = self.qkv(h_tilde).view(n, 3, self.heads, self.head_dim)
        q = F.normalize(qkv[:, 0], dim=-1)
        k = F.normalize(qkv[:, 1], dim=-1)
        v = qkv[:, 2]
        beta = torch.sigmoid(self.beta(h_tilde))
        erase = g * beta
        if torch.jit.is_scripting():
            o, _ = chunked_core(q, k, v, erase, beta, offsets, self.chunk_size, last_only, None, False)
        else:
            o, _ = delta_rule(q, k, v, erase, beta, offsets, self.chunk_size, self.impl, last_only)
        return self.out(o.reshape(o.shape[0], -1))


#: a sliding-window softmax layer attends block by block (O(L·W)) over groups of sequences longer
#: than this many windows, and with one [L, L] mask below it (where that is as cheap)
BLOCK_MIN_WINDOWS: Final[int] = 2


class SoftmaxMixer(nn.Module):
    """Causal multi-head softmax attention within each sequence of a jagged batch.

    Sequences are sorted by length and cut into groups of similar length (padding at most
    ``group_waste`` of the group's real rows); each group is padded with ``jagged_to_padded``
    (fbgemm when loaded) and attended with ``scaled_dot_product_attention(is_causal=True)``, so
    no row attends across sequences or to a later row, and cost is O(Σ L²) only here.
    With ``last_only`` the last row of each sequence is the only query (O(L) per sequence).
    ``window`` > 0 limits each query to itself and the ``window - 1`` rows before it (sliding
    window; the short branch uses K so that every row sees exactly its own last K events).
    ``max_distance`` > 0 adds a learned per-head relative-position bias ``b[h, min(i − j, M − 1)]``
    to the logit of query row i and key row j (M = ``max_distance``; zero at initialisation).
    It depends only on the distance, so per-cutoff and all-position outputs stay equal; without
    it the layer sees order only through causality.
    ``time_buckets`` > 0 adds a learned per-head bias ``c[h, bucket(t_i − t_j)]`` for the time gap
    between the query's and the key's events (:func:`time_gap_bucket`, seconds, log scale; zero
    at initialisation). It needs the event timestamps ``ts [N]`` int64 in ``forward``; like the
    position bias it depends only on the two rows, not on ``t_current``.
    """

    max_distance: Final[int]
    time_buckets: Final[int]
    block_min: int
    rel_bias: Optional[torch.Tensor]
    time_bias: Optional[torch.Tensor]

    def __init__(self, dim: int, heads: int, group_waste: float, dropout: float = 0.0,
                 window: int = 0, max_distance: int = 0, time_buckets: int = 0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        # No projection bias: a key bias is redundant under softmax (it adds a per-query constant),
        # so its gradient is exactly zero and Adam would only amplify float noise into it.
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.group_waste = group_waste
        self.dropout = dropout
        self.window = window
        self.max_distance = max_distance
        # registered only when used, so checkpoints of models without it keep their keys
        self.rel_bias = nn.Parameter(torch.zeros(heads, max_distance)) if max_distance > 0 else None
        self.time_buckets = time_buckets
        self.time_bias = nn.Parameter(torch.zeros(heads, time_buckets)) if time_buckets > 0 else None
        # not persistent: derived from time_buckets, so checkpoints keep their keys
        self.register_buffer("time_edges", time_gap_edges(max(time_buckets, 1)), persistent=False)
        # sliding windows over groups longer than block_min windows run block by block (_windowed)
        self.block_min = BLOCK_MIN_WINDOWS

    def _mask(self, dist: torch.Tensor, gap: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention mask for query-minus-key distances ``dist`` (any shape S; negative = later
        key or padding): bool ``S`` (True = attend), or with a bias float ``[H, *S']`` (the
        position and time biases, −inf where not attended). ``gap``: query-minus-key time gaps
        (int64 seconds, shape S' that ``S`` broadcasts to), used when ``time_buckets`` > 0."""
        keep = dist >= 0
        if self.window > 0:
            keep = keep & (dist < self.window)
        bias: Optional[torch.Tensor] = None
        rel = self.rel_bias
        if rel is not None:
            bias = rel[:, dist.clamp(0, self.max_distance - 1)]
        tb = self.time_bias
        if tb is not None and gap is not None:
            # == time_gap_bucket(gap, self.time_buckets), in integer arithmetic
            t = tb[:, torch.bucketize(gap.clamp(min=0), self.time_edges, right=True)]
            if bias is None:
                bias = t
            else:
                while bias.dim() < t.dim():  # [H, *S] against [H, g, *S]: align the leading H
                    bias = bias.unsqueeze(1)
                bias = bias + t
        if bias is not None:
            return bias.masked_fill(~keep.unsqueeze(0), float("-inf"))
        return keep

    def _windowed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gts: Optional[torch.Tensor],
                  gqts: Optional[torch.Tensor], p: float) -> torch.Tensor:
        """Sliding-window attention of every row of padded sequences ``q, k, v [g, H, L, d]`` in blocks
        of W = ``window`` rows: the queries of block i attend to the keys of blocks i − 1 and i (the
        only keys within W rows of them), so cost and memory are O(L·W) instead of O(L²). Same
        masks and biases as the full form (``gts``/``gqts [g, L]``: key and query times).
        Returns ``[g, L, D]``."""
        g, heads, lmax, d = q.shape
        w = self.window
        nb = (lmax + w - 1) // w
        padn = nb * w - lmax
        if padn > 0:
            q = F.pad(q, (0, 0, 0, padn))
            k = F.pad(k, (0, 0, 0, padn))
            v = F.pad(v, (0, 0, 0, padn))
        # keys of block i: blocks i − 1 and i ([g, H, nb, 2W, d]); block −1 is zeros, masked below
        kp = F.pad(k, (0, 0, w, 0)).unfold(2, 2 * w, w).permute(0, 1, 2, 4, 3)
        vp = F.pad(v, (0, 0, w, 0)).unfold(2, 2 * w, w).permute(0, 1, 2, 4, 3)
        qb = q.reshape(g, heads, nb, w, d)
        dev = q.device
        a = torch.arange(w, device=dev)
        j = torch.arange(2 * w, device=dev)
        dist = a.view(1, w, 1) + w - j.view(1, 1, 2 * w)  # query row − key row, [1, W, 2W]
        first = torch.arange(nb, device=dev).view(nb, 1, 1) == 0
        dist = torch.where(first & (j.view(1, 1, 2 * w) < w), torch.full_like(dist, -1), dist)  # [nb, W, 2W]
        gap: Optional[torch.Tensor] = None
        if gts is not None and gqts is not None:
            kt = F.pad(F.pad(gts, (0, padn)), (w, 0)).unfold(1, 2 * w, w)  # [g, nb, 2W]
            qt = F.pad(gqts, (0, padn)).view(g, nb, w)
            gap = qt.unsqueeze(3) - kt.unsqueeze(2)  # [g, nb, W, 2W]
        m = self._mask(dist, gap)  # bool [nb, W, 2W] or float [H, (g,) nb, W, 2W]
        if m.dim() == 5:  # [H, g, nb, W, 2W] -> [g, nb, H, W, 2W]
            m = m.permute(1, 2, 0, 3, 4).reshape(g * nb, heads, w, 2 * w)
        elif m.dim() == 4:  # [H, nb, W, 2W] (position bias only) -> [g·nb, H, W, 2W]
            m = m.permute(1, 0, 2, 3).unsqueeze(0).expand(g, nb, heads, w, 2 * w).reshape(g * nb, heads, w, 2 * w)
        else:  # bool [nb, W, 2W]
            m = m.unsqueeze(0).expand(g, nb, w, 2 * w).reshape(g * nb, 1, w, 2 * w)
        qf = qb.permute(0, 2, 1, 3, 4).reshape(g * nb, heads, w, d)
        kf = kp.permute(0, 2, 1, 3, 4).reshape(g * nb, heads, 2 * w, d)
        vf = vp.permute(0, 2, 1, 3, 4).reshape(g * nb, heads, 2 * w, d)
        o = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=m, dropout_p=p)  # [g·nb, H, W, d]
        o = o.view(g, nb, heads, w, d).permute(0, 1, 3, 2, 4).reshape(g, nb * w, heads * d)
        return o[:, :lmax]

    def forward(self, h: torch.Tensor, ctx: SeqContext) -> torch.Tensor:
        """``h [N, D]`` → ``[N, D]`` (``[B, D]`` with ``ctx.last_only``); ``ctx.ts [N]`` int64 event
        timestamps, required when ``time_buckets`` > 0; ``ctx.qts [N]`` int64 query times (default
        ``ts``): the time bias of query row i and key row j is on ``qts[i] − ts[j]``
        (``tau`` and ``prefix_mean`` unused)."""
        offsets = ctx.offsets
        last_only = ctx.last_only
        ts = ctx.ts
        qts = ctx.qts
        if self.time_buckets > 0 and ts is None:
            raise ValueError("SoftmaxMixer with time_buckets > 0 needs the event timestamps ts")
        n, dim = h.shape
        b = offsets.numel() - 1
        lengths = offsets[1:] - offsets[:-1]
        order = torch.argsort(lengths, descending=True, stable=True)
        slen = lengths[order]
        soff = lengths_to_offsets(slen)
        sseg = segment_ids(soff, n)
        perm = offsets[:-1][order][sseg] + (torch.arange(n, device=h.device) - soff[:-1][sseg])
        qkv = self.qkv(h[perm])  # rows in length-sorted sequence order
        sts: Optional[torch.Tensor] = None
        sqts: Optional[torch.Tensor] = None
        if ts is not None and self.time_buckets > 0:
            sts = ts[perm]
            sqts = sts if qts is None else qts[perm]
        slen_list: List[int] = slen.tolist()
        soff_list: List[int] = soff.tolist()
        bounds = length_groups(slen_list, self.group_waste)
        p = self.dropout if self.training else 0.0
        outs: List[torch.Tensor] = []
        for gi in range(len(bounds) - 1):
            g0 = bounds[gi]
            g1 = bounds[gi + 1]
            r0 = soff_list[g0]
            r1 = soff_list[g1]
            lmax = slen_list[g0]
            goff = soff[g0:g1 + 1] - r0
            padded = jagged_to_padded(qkv[r0:r1], goff, lmax)  # [g, lmax, 3D]
            padded = padded.view(g1 - g0, lmax, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = padded[0], padded[1], padded[2]  # [g, H, lmax, d]
            gts: Optional[torch.Tensor] = None
            gqts: Optional[torch.Tensor] = None
            if sts is not None and sqts is not None:
                gts = jagged_to_padded_1d(sts[r0:r1], goff, lmax)  # [g, lmax] key timestamps
                gqts = gts if qts is None else jagged_to_padded_1d(sqts[r0:r1], goff, lmax)
            if last_only:
                glen = slen[g0:g1]
                rows = torch.arange(g1 - g0, device=h.device)
                ql = q[rows, :, glen - 1].unsqueeze(2)  # [g, H, 1, d]
                pos = torch.arange(lmax, device=h.device).unsqueeze(0)
                gap: Optional[torch.Tensor] = None
                if gts is not None and gqts is not None:
                    gap = gqts[rows, glen - 1].unsqueeze(1) - gts  # [g, lmax]
                m = self._mask(glen.unsqueeze(1) - 1 - pos, gap)  # [g, lmax] or [H, g, lmax]
                m = m.transpose(0, 1).unsqueeze(2) if m.dim() == 3 else m.view(g1 - g0, 1, 1, lmax)
                o = F.scaled_dot_product_attention(ql, k, v, attn_mask=m, dropout_p=p)
                outs.append(o.reshape(g1 - g0, dim))
            elif self.window > 0 and lmax > self.block_min * self.window:
                o = self._windowed(q, k, v, gts, gqts, p)  # [g, lmax, D]: O(L·W), not O(L²)
                outs.append(padded_to_jagged(o, goff, r1 - r0))
            elif self.window > 0 or self.max_distance > 0 or gts is not None:
                pos = torch.arange(lmax, device=h.device)
                gap2: Optional[torch.Tensor] = None
                if gts is not None and gqts is not None:
                    gap2 = gqts.unsqueeze(2) - gts.unsqueeze(1)  # [g, lmax, lmax] query - key
                m = self._mask(pos.unsqueeze(1) - pos.unsqueeze(0), gap2)  # query row - key row
                if m.dim() == 4:  # [H, g, lmax, lmax] (time bias) -> [g, H, lmax, lmax]
                    m = m.transpose(0, 1)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=p)
                outs.append(padded_to_jagged(o.transpose(1, 2).reshape(g1 - g0, lmax, dim), goff, r1 - r0))
            else:
                o = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
                outs.append(padded_to_jagged(o.transpose(1, 2).reshape(g1 - g0, lmax, dim), goff, r1 - r0))
        if last_only:
            n_ne = bounds[-1]
            res = h.new_zeros(b, dim)
            if n_ne > 0:
                res = res.index_copy(0, order[:n_ne], torch.cat(outs, 0))
            return self.out(res)
        res = h.new_zeros(n, dim)
        if len(outs) > 0:
            res = res.index_copy(0, perm, torch.cat(outs, 0))
        return self.out(res)


class FeedForward(nn.Module):
    """Position-wise MLP ``D → mult·D → D`` with GELU."""

    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, mult * dim)
        self.fc2 = nn.Linear(mult * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(LN(x))`` then ``x + FFN(LN(x))``.

    With ``last_only`` the residual stream is cut to each sequence's last row before the add,
    so the FFN runs on ``[B, D]`` only.
    """

    def __init__(self, mixer: nn.Module, dim: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_mult, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx: SeqContext) -> torch.Tensor:
        y = self.mixer(self.norm1(x), ctx)
        if ctx.last_only:
            x = x[last_index(ctx.offsets)]
        x = x + self.drop(y)
        return x + self.drop(self.ffn(self.norm2(x)))
