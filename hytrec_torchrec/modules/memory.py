"""Long-memory layers on the gated delta rule: a token mixer whose memory decays with the time
between events, and the intent readout that queries the long memory with the current intent.

Both are exact in all-position training: every quantity a row uses depends on that row and
earlier rows only (the decay on the gap to the *previous* event, never on the request time), so
the output for row ``m`` of a whole history equals the output for the history cut at ``m``.
All modules are TorchScript-scriptable. See docs/tower.md, "Long memory".
"""


import math
from typing import Final, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hytrec_torchrec.modules.layers import SeqContext, time_gap_bucket
from hytrec_torchrec.ops.gated_delta import gated_chunked_core
from hytrec_torchrec.ops.jagged import last_index

__all__ = ["GapDecay", "GatedDeltaMixer", "IntentReadout", "previous_gap"]

#: time scale (seconds) of the gap term of the decay: log1p(gap / GAP_SCALE).
GAP_SCALE: Final[float] = 3600.0


def previous_gap(ts: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Seconds from each row's previous event in the same sequence ``[N]`` int64 (0 for a
    sequence's first row; negative gaps clamp to 0). ``ts [N]`` int64, ``offsets [B+1]``."""
    n = ts.shape[0]
    prev = torch.cat([ts[:1], ts[:-1]]) if n > 0 else ts
    gap = (ts - prev).clamp(min=0)
    firsts = offsets[:-1][offsets[:-1] < n]
    return gap.index_fill(0, firsts, 0)


class GapDecay(nn.Module):
    """Per-row, per-head log decay ``log γ_t = −(λ_h · softplus(w_h·x_t + c_h) + μ_h · log1p(Δt / 1 h))``
    with ``Δt`` the gap to the previous event. ``λ_h = exp(·)`` is initialised so that head h
    has a half-life of ``half_life_h`` events (geometric from ``min_half_life`` to
    ``max_half_life`` over the heads) when events come back to back; ``μ_h = exp(·)`` starts at
    0.01 (a 30-day gap multiplies the memory by about 0.94). Input ``x [N, D]``, gap ``[N]``
    int64 → ``[N, H]`` (≤ 0)."""

    def __init__(self, dim: int, heads: int, min_half_life: float = 128.0, max_half_life: float = 2048.0) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, heads)
        nn.init.normal_(self.proj.weight, std=0.01)
        sp1 = math.log(math.e - 1.0)  # softplus(sp1) = 1
        nn.init.constant_(self.proj.bias, sp1)
        if heads > 1:
            lives = [min_half_life * (max_half_life / min_half_life) ** (i / (heads - 1)) for i in range(heads)]
        else:
            lives = [math.sqrt(min_half_life * max_half_life)]
        self.log_rate = nn.Parameter(torch.tensor([math.log(math.log(2.0) / t) for t in lives]))
        self.log_gap_rate = nn.Parameter(torch.full((heads,), math.log(0.01)))
        self.gap_scale = GAP_SCALE

    def forward(self, x: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        per_event = torch.exp(self.log_rate) * F.softplus(self.proj(x))
        per_gap = torch.exp(self.log_gap_rate) * torch.log1p(gap.to(x.dtype) / self.gap_scale).unsqueeze(-1)
        return -(per_event + per_gap)


class GatedDeltaMixer(nn.Module):
    """Gated-delta-rule token mixer (``tadn.gating: gated_delta``).

    Per head: ``q, k = L2norm(W_q x), L2norm(W_k x)`` (``key_dim`` wide), ``v = W_v x``,
    ``β = σ(W_β x + b_β)``, ``log γ`` from :class:`GapDecay`; memory
    ``H_t = γ_t (I − β_t k_t k_tᵀ) H_{t−1} + β_t k_t v_tᵀ`` (:mod:`hytrec_torchrec.ops.gated_delta`),
    output ``o_t = H_tᵀ q_t``, normalised per head, gated by ``σ(W_o x)`` and projected back to D.
    Unlike the paper's TADN it reads no sequence mean and no request time, so all-position training
    is exact. Forward as the other mixers: ``x [N, D]``, ``offsets [B+1]``; needs ``ts [N]``
    int64; returns ``[N, D]`` or, with ``last_only``, ``[B, D]`` from each sequence's final state.
    """

    def __init__(self, dim: int, heads: int, chunk_size: int, key_dim: int = 0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.key_dim = key_dim if key_dim > 0 else self.head_dim
        self.qk = nn.Linear(dim, 2 * heads * self.key_dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.beta = nn.Linear(dim, heads)
        self.decay = GapDecay(dim, heads)
        self.gate = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.chunk_size = chunk_size

    def forward(self, h: torch.Tensor, ctx: SeqContext) -> torch.Tensor:
        """Reads ``ctx.offsets``, ``ctx.ts`` and ``ctx.last_only`` (not ``tau``, ``prefix_mean``, ``qts``)."""
        offsets = ctx.offsets
        ts = ctx.ts
        if ts is None:
            raise ValueError("GatedDeltaMixer needs the event timestamps ts")
        return self.step(h, offsets, previous_gap(ts, offsets), None, ctx.last_only)[0]

    def step(self, h: torch.Tensor, offsets: torch.Tensor, gap: torch.Tensor, initial_state: Optional[torch.Tensor],
             last_only: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """The mixer continued from a kept memory (serving from a kept state).

        Args:
            h: ``[N, D]`` input rows of B sequences (``offsets [B+1]``).
            gap: ``[N]`` int64 seconds from each row's previous event (:func:`previous_gap`; for a
                continued sequence the first row's gap is to the last event already in the memory).
            initial_state: ``[B, H, dk, dv]`` memory before the rows, or None (zero).
            last_only: return each sequence's last row only.
        Returns:
            ``(out [N, D] or [B, D], final_state [B, H, dk, dv])``.
        """
        n = h.shape[0]
        qk = self.qk(h).view(n, 2, self.heads, self.key_dim)
        q = F.normalize(qk[:, 0], dim=-1)
        k = F.normalize(qk[:, 1], dim=-1)
        v = self.v(h).view(n, self.heads, self.head_dim)
        beta = torch.sigmoid(self.beta(h))
        log_decay = self.decay(h, gap)
        o, final = gated_chunked_core(q, k, v, log_decay, beta, beta, offsets, self.chunk_size, initial_state,
                                      not last_only)
        if last_only:
            rows = last_index(offsets)
            o = torch.einsum("bhk,bhkv->bhv", q[rows], final)
            h = h[rows]
        o = F.layer_norm(o, [self.head_dim]).reshape(o.shape[0], -1)
        return self.out(o * torch.sigmoid(self.gate(h))), final


class IntentReadout(nn.Module):
    """Reads the long rows' memory with a query built from the current intent.

    The long rows ``x [N_l, D]`` are written into a gated-delta memory (keys, values, β and decay
    from each row, as :class:`GatedDeltaMixer`); the query is ``W_q (LN(intent) + E[bucket(Δ)])``,
    ``intent`` the short branch's output and ``Δ`` the seconds from the last long event to the
    query's last event (log buckets, :func:`~hytrec_torchrec.modules.layers.time_gap_bucket`).
    The answer ``o = Hᵀ q`` (per head, normalised) is projected back to D.

    With ``copy`` the values are the rows themselves (no projection) and the answer is the raw
    mix ``o``: a soft pointer over the far events' embeddings (the tower's ``far_copy`` path).

    :meth:`forward` scans each history once and queries its final state: O(L) for the scan, O(1)
    per query after it. :meth:`forward_rows` gives row ``m`` the answer of the memory after row
    ``m`` to the query of the prediction that reads it (all-position training; exact).
    """

    copy: Final[bool]

    def __init__(self, dim: int, heads: int, chunk_size: int, key_dim: int = 0, time_buckets: int = 64,
                 copy: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.key_dim = key_dim if key_dim > 0 else self.head_dim
        self.k = nn.Linear(dim, heads * self.key_dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.beta = nn.Linear(dim, heads)
        self.decay = GapDecay(dim, heads)
        self.q_norm = nn.LayerNorm(dim)
        self.q_time = nn.Embedding(time_buckets, dim)
        nn.init.normal_(self.q_time.weight, std=0.02)
        self.q = nn.Linear(dim, heads * self.key_dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.chunk_size = chunk_size
        self.time_buckets = time_buckets
        # copy: the values are the rows themselves and the answer is the raw mix of them
        self.copy = copy

    def _memory(self, x: torch.Tensor, gap: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys, values, β and log decay of rows ``x [N_l, D]`` with gaps ``gap [N_l]`` int64."""
        n = x.shape[0]
        k = F.normalize(self.k(x).view(n, self.heads, self.key_dim), dim=-1)
        v = (x if self.copy else self.v(x)).reshape(n, self.heads, self.head_dim)
        beta = torch.sigmoid(self.beta(x))
        log_decay = self.decay(x, gap)
        return k, v, beta, log_decay

    def write(self, x: torch.Tensor, offsets: torch.Tensor, gap: torch.Tensor,
              initial_state: Optional[torch.Tensor]) -> torch.Tensor:
        """The memory after writing rows ``x [N_l, D]`` (``offsets [B+1]``, gaps to the previous
        event ``gap [N_l]`` int64) into ``initial_state [B, H, dk, dv]`` (None: zero); ``[B, H, dk, dv]``."""
        k, v, beta, log_decay = self._memory(x, gap)
        return gated_chunked_core(k, k, v, log_decay, beta, beta, offsets, self.chunk_size, initial_state, False)[1]

    def read(self, memory: torch.Tensor, intent: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """The answer ``[B, D]`` of ``memory [B, H, dk, dv]`` to ``intent [B, D]`` asked ``gap [B]``
        int64 seconds after the memory's last event."""
        q = self._query(intent, gap)
        return self._answer(torch.einsum("bhk,bhkv->bhv", q, memory))

    def _query(self, intent: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        q = self.q(self.q_norm(intent) + self.q_time(time_gap_bucket(gap, self.time_buckets)))
        return F.normalize(q.view(intent.shape[0], self.heads, self.key_dim), dim=-1)

    def _answer(self, o: torch.Tensor) -> torch.Tensor:
        if self.copy:
            return o.reshape(o.shape[0], -1)
        return self.out(F.layer_norm(o, [self.head_dim]).reshape(o.shape[0], -1))

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, ts: torch.Tensor, intent: torch.Tensor,
                t_query: torch.Tensor) -> torch.Tensor:
        """``x [N_l, D]`` long rows of B sequences, ``offsets [B+1]``, ``ts [N_l]`` int64,
        ``intent [B, D]``, ``t_query [B]`` int64 (the query's last event) → ``[B, D]``. A sequence
        with no rows reads an empty (zero) memory: ``_answer`` of a zero vector."""
        final = self.write(x, offsets, previous_gap(ts, offsets), None)
        # an empty sequence's memory is zero, so the time its query is built with does not matter
        last_ts = ts[last_index(offsets)] if ts.shape[0] > 0 else t_query
        return self.read(final, intent, t_query - last_ts)

    def forward_rows(self, x: torch.Tensor, offsets: torch.Tensor, ts: torch.Tensor, intent: torch.Tensor,
                     t_query: torch.Tensor) -> torch.Tensor:
        """Row-wise: ``intent [N_l, D]`` and ``t_query [N_l]`` are the query of the prediction
        that reads the memory as it is after row m → ``[N_l, D]``."""
        k, v, beta, log_decay = self._memory(x, previous_gap(ts, offsets))
        q = self._query(intent, t_query - ts)
        o, _ = gated_chunked_core(q, k, v, log_decay, beta, beta, offsets, self.chunk_size, None, True)
        return self._answer(o)
