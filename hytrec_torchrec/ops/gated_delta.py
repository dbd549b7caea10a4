"""Gated delta rule on jagged batches: per-row decay, initial state in, final state out.

Rule (per sequence, per head; the state ``H`` is ``[dk, dv]``, the transpose of the ``S`` of
:mod:`hytrec_torchrec.ops.tadn`, as flash-linear-attention stores it)::

    H_t = γ_t (I − a_t k_t k_tᵀ) H_{t−1} + b_t k_t v_tᵀ        γ_t = exp(log_decay_t) ∈ (0, 1]
    o_t = H_tᵀ q_t

With ``log_decay ≡ 0`` it is the delta rule of :mod:`hytrec_torchrec.ops.tadn`; with
``a = b = β`` it is the gated delta rule (Gated DeltaNet). ``H_0`` is ``initial_state[b]`` (zero
by default), and the state after each sequence's last row can be returned, so a history can be
scanned once and continued or queried later (incremental serving, the tower's intent readout).

Inputs are packed back to back: ``q, k [N, H, dk]`` (keys L2-normalised), ``v [N, H, dv]``,
``log_decay, erase, write [N, H]``, ``offsets [B+1]`` int64 (``cu_seqlens``),
``initial_state [B, H, dk, dv]`` or None.

* :func:`gated_delta_rule_recurrent` — token-by-token reference.
* :func:`gated_delta_rule_chunked` — chunkwise-parallel form, linear in length.

Chunked derivation (docs/tower.md, "Gated delta rule"). Inside a chunk of ``C`` rows with initial
state ``H0``, let ``λ_t = Σ_{i≤t} log γ_i`` (within the chunk), ``G_t = exp(λ_t)`` and
``Γ_{ti} = exp(λ_t − λ_i)`` for ``t ≥ i`` (else 0; every factor is ≤ 1, nothing is divided by a
small decay). With ``new_t = b_t v_t − a_t γ_t H_{t−1}ᵀ k_t``, ``H_t = G_t H0 + Σ_{i≤t} Γ_{ti}
k_i new_iᵀ`` and::

    (I + StrictTril(diag(a) (K Kᵀ ⊙ Γ))) New = diag(b) V − diag(a G) K H0

so with the unit lower-triangular solve ``[W | U] = T [diag(aG) K | diag(b) V]``::

    New    = U − W H0
    O      = (diag(G) Q − (Q Kᵀ ⊙ Γ) W) H0 + (Q Kᵀ ⊙ Γ) U
    H_next = (G_C I − Kᵀ diag(r) W) H0 + Kᵀ diag(r) U,     r_i = Γ_{Ci}

and the only sequential part is ``H_{j+1} = M_j H_j + Bm_j`` over chunk indices, batched over all
sequences. Padding rows have ``a = b = 0``, ``k = 0`` and ``log γ = 0``: they leave the state as it is.
"""


from typing import List, Optional, Tuple

import torch

from hytrec_torchrec.ops.tadn.chunk import (
    check_inputs,
    chunk_inputs,
    chunk_pad,
    final_states,
    plan_with_state,
    run_chunks,
)

__all__ = ["gated_delta_rule_recurrent", "gated_delta_rule_chunked", "gated_chunked_core"]


def _check_gated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                 erase: torch.Tensor, write: torch.Tensor, offsets: torch.Tensor,
                 initial_state: Optional[torch.Tensor]) -> None:
    check_inputs(q, k, v, erase, write, offsets, initial_state)
    if log_decay.shape != q.shape[:2]:
        raise ValueError(f"log_decay must be [N, H] = {list(q.shape[:2])}, got {list(log_decay.shape)}")


def gated_delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                               erase: torch.Tensor, write: torch.Tensor, offsets: torch.Tensor,
                               initial_state: Optional[torch.Tensor] = None,
                               output_final_state: bool = False
                               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Reference: the recurrence one sequence and one token at a time (slow, obviously correct).

    Returns ``(o [N, H, dv], final_state [B, H, dk, dv] or None)``; an empty sequence's final
    state is its initial state."""
    _check_gated(q, k, v, log_decay, erase, write, offsets, initial_state)
    n, h, dk = q.shape
    dv = v.shape[-1]
    b = offsets.numel() - 1
    outs: List[torch.Tensor] = []
    finals: List[torch.Tensor] = []
    bounds: List[int] = offsets.tolist()
    for s in range(b):
        state = q.new_zeros(h, dk, dv) if initial_state is None else initial_state[s]
        for t in range(bounds[s], bounds[s + 1]):
            kt, vt = k[t], v[t]  # [H, dk], [H, dv]
            kh = torch.einsum("hk,hkv->hv", kt, state)
            state = torch.exp(log_decay[t]).view(h, 1, 1) * (
                state - erase[t].view(h, 1, 1) * kt.unsqueeze(-1) * kh.unsqueeze(-2))
            state = state + write[t].view(h, 1, 1) * kt.unsqueeze(-1) * vt.unsqueeze(-2)
            outs.append(torch.einsum("hk,hkv->hv", q[t], state))
        finals.append(state)
    o = torch.stack(outs) if outs else v.new_zeros(0, h, dv)
    return o, (torch.stack(finals) if output_final_state else None)


def gated_chunked_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                       erase: torch.Tensor, write: torch.Tensor, offsets: torch.Tensor, chunk_size: int,
                       initial_state: Optional[torch.Tensor], want_rows: bool
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise gated delta rule without input checks (TorchScript calls it directly).

    Returns ``(o, final_state)``: ``o [N, H, dv]`` when ``want_rows`` (else an empty
    ``[0, H, dv]``) and ``final_state [B, H, dk, dv]`` (always; computing it is one batched
    chunk transition)."""
    out_dtype = q.dtype
    if q.dtype == torch.float16 or q.dtype == torch.bfloat16:
        q, k, v = q.float(), k.float(), v.float()
        log_decay, erase, write = log_decay.float(), erase.float(), write.float()
        if initial_state is not None:
            initial_state = initial_state.float()
    h, dk, dv, c = q.shape[1], q.shape[2], v.shape[2], chunk_size
    dest, n_chunks, chunk_start, step_major, step_counts, nc, init = plan_with_state(q, v, offsets, c, initial_state)
    if nc == 0:
        return v.new_zeros(0, h, dv).to(out_dtype), init.to(out_dtype)
    rows = nc * c
    qc, kc, vc, ac, bc = chunk_inputs(q, k, v, erase, write, dest, nc, c)
    lc = chunk_pad(log_decay.t(), dest, rows).view(h, nc, c, 1)

    lam = torch.cumsum(lc, dim=2)  # λ_t [H, NC, C, 1]
    g = torch.exp(lam)  # G_t
    incl = torch.ones(c, c, dtype=q.dtype, device=q.device).tril()
    eye_c = torch.eye(c, dtype=q.dtype, device=q.device)
    strict = incl - eye_c
    # Γ_ti = exp(λ_t − λ_i) for t ≥ i: the exponent is zeroed above the diagonal before exp (it is
    # positive there and could overflow), and the result masked after.
    gam = torch.exp((lam - lam.transpose(-1, -2)) * incl) * incl  # [H, NC, C, C]
    kt = kc.transpose(-1, -2)  # [H, NC, dk, C]
    lower = (ac * (kc @ kt) * gam) * strict + eye_c
    rhs = torch.cat([(ac * g) * kc, bc * vc], dim=-1)  # [H, NC, C, dk+dv]
    sol = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)  # [W | U]
    lam_end = lam[:, :, c - 1:, :]  # λ_C [H, NC, 1, 1]
    r = torch.exp(lam_end - lam)  # Γ_{C,i} [H, NC, C, 1]
    ktsol = (kc * r).transpose(-1, -2) @ sol  # [H, NC, dk, dk+dv]
    eye_k = torch.eye(dk, dtype=q.dtype, device=q.device)
    m_mat = torch.exp(lam_end) * eye_k - ktsol[..., :dk]
    mb = torch.cat([m_mat, ktsol[..., dk:]], dim=-1).transpose(0, 1)  # [NC, H, dk, dk+dv]

    h0_chunks = run_chunks(mb, n_chunks, step_major, step_counts, init)
    final = final_states(mb, h0_chunks, n_chunks, chunk_start, init)

    if not want_rows:
        return v.new_zeros(0, h, dv).to(out_dtype), final.to(out_dtype)
    h0 = h0_chunks.transpose(0, 1)  # [H, NC, dk, dv]
    qsol = ((qc @ kt) * gam) @ sol  # [H, NC, C, dk+dv]
    oc = (g * qc - qsol[..., :dk]) @ h0 + qsol[..., dk:]
    o = oc.view(h, rows, dv).index_select(1, dest).transpose(0, 1)
    return o.to(out_dtype), final.to(out_dtype)


def gated_delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                             erase: torch.Tensor, write: torch.Tensor, offsets: torch.Tensor,
                             chunk_size: int = 64, initial_state: Optional[torch.Tensor] = None,
                             output_final_state: bool = False
                             ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Chunkwise-parallel gated delta rule (same result as :func:`gated_delta_rule_recurrent`).

    Chunks never cross sequences; each sequence's last chunk is zero-padded. Differentiable by
    autograd (also through ``initial_state``). Returns ``(o [N, H, dv], final_state
    [B, H, dk, dv] or None)``."""
    _check_gated(q, k, v, log_decay, erase, write, offsets, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    o, final = gated_chunked_core(q, k, v, log_decay, erase, write, offsets, chunk_size, initial_state, True)
    return o, (final if output_final_state else None)
