"""The TADN delta rule over jagged batches, chunkwise-parallel (WY/UT form); linear in length.

Rule, shapes and state convention: :mod:`hytrec_torchrec.ops.tadn` (the reference recurrence is
:mod:`.naive`, the GPU kernel :mod:`.gpu`). Chunks never cross sequences; each sequence's last
chunk is zero-padded; only the ``[dk, dv]`` chunk-to-chunk state recurrence is a loop.

Derivation (docs/tower.md has the long form). Write the state transposed, ``H = Sᵀ``
``[dk, dv]``. Inside a chunk of ``C`` rows with initial state ``H0``, let
``new_t = write_t v_t - erase_t H_{t-1}ᵀ k_t`` so ``H_t = H0 + Σ_{i≤t} k_i new_iᵀ``. Then
``(I + StrictTril(diag(a) K Kᵀ)) New = diag(b) V - diag(a) K H0`` with ``a = erase``,
``b = write``. With ``T = (I + StrictTril(diag(a) K Kᵀ))⁻¹`` (a unit lower-triangular solve),
``W = T diag(a) K`` and ``U = T diag(b) V``::

    New    = U - W H0
    O      = Q H0 + tril(Q Kᵀ) New = (Q - tril(Q Kᵀ) W) H0 + tril(Q Kᵀ) U
    H_next = H0 + Kᵀ New = (I - Kᵀ W) H0 + Kᵀ U

so every chunk reduces to ``(M, Bm) = (I - KᵀW, KᵀU)`` and the only sequential part is
``H_{j+1} = M_j H_j + Bm_j``. The chunk plan (:func:`chunk_plan`, :func:`chunk_pad`,
:func:`chunk_states`) is shared with the gated rule (:mod:`hytrec_torchrec.ops.gated_delta`).
"""



from typing import List, Optional, Tuple

import torch

__all__ = ["check_inputs", "chunk_plan", "chunk_pad", "chunk_states", "plan_with_state", "chunk_inputs", "run_chunks",
           "final_states", "chunked_core", "delta_rule_chunked", "delta_rule_chunked_last"]


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
                 write: torch.Tensor, offsets: torch.Tensor, initial_state: Optional[torch.Tensor] = None) -> None:
    """Shapes and offsets of a delta-rule call; ``ValueError`` naming what is wrong."""
    if q.dim() != 3 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [N, H, dk], got {list(q.shape)} and {list(k.shape)}")
    if v.dim() != 3 or v.shape[0] != q.shape[0] or v.shape[1] != q.shape[1]:
        raise ValueError(f"v must be [N, H, dv] matching q {list(q.shape)}, got {list(v.shape)}")
    if erase.shape != q.shape[:2] or write.shape != q.shape[:2]:
        raise ValueError(
            f"erase and write must be [N, H] = {list(q.shape[:2])}, got {list(erase.shape)} and {list(write.shape)}"
        )
    if offsets.dim() != 1 or offsets.numel() < 1 or offsets.dtype != torch.int64:
        raise ValueError("offsets must be a 1-D int64 tensor [B+1]")
    if int(offsets[0]) != 0 or int(offsets[-1]) != q.shape[0]:
        raise ValueError(f"offsets must start at 0 and end at N={q.shape[0]}, got {offsets.tolist()[:3]}...")
    if bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError("offsets must be non-decreasing")
    if initial_state is not None:
        want = [offsets.numel() - 1, q.shape[1], q.shape[2], v.shape[2]]
        if list(initial_state.shape) != want:
            raise ValueError(f"initial_state must be [B, H, dk, dv] = {want}, got {list(initial_state.shape)}")


def chunk_plan(offsets: torch.Tensor, chunk_size: int
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, List[int], int]:
    """Index plan for the padded-per-sequence chunk layout.

    Returns ``(dest [N], n_chunks [B], chunk_start [B], step_major [NC], step_counts, NC)``:
    ``dest`` maps packed rows to rows of the chunk-padded layout ``[NC*C]``; ``step_major`` lists
    chunk ids ordered by (chunk index j, sequence by decreasing chunk count), so that the sequences
    still running at step j are a prefix; ``step_counts[j]`` is how many chunks step j has.
    """
    device = offsets.device
    c = chunk_size
    lengths = offsets[1:] - offsets[:-1]
    b = lengths.numel()
    n_chunks = torch.div(lengths + (c - 1), c, rounding_mode="floor")
    chunk_start = torch.cumsum(n_chunks, 0) - n_chunks
    total_chunks = int(n_chunks.sum())
    n = int(offsets[-1])
    seg = torch.repeat_interleave(torch.arange(b, device=device), lengths, output_size=n)
    pos = torch.arange(n, device=device) - offsets[:-1][seg]
    dest = chunk_start[seg] * c + pos
    if total_chunks == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return dest, n_chunks, chunk_start, empty, [], 0
    order = torch.argsort(n_chunks, descending=True, stable=True)
    nc_sorted = n_chunks[order]
    max_nc = int(nc_sorted[0])
    steps = torch.arange(max_nc, device=device)
    live = nc_sorted.unsqueeze(0) > steps.unsqueeze(1)  # [max_nc, B]
    grid = chunk_start[order].unsqueeze(0) + steps.unsqueeze(1)
    step_major = grid[live]
    step_counts: List[int] = live.sum(1).tolist()
    return dest, n_chunks, chunk_start, step_major, step_counts, total_chunks


def chunk_pad(x: torch.Tensor, dest: torch.Tensor, rows: int) -> torch.Tensor:
    """Scatter ``x [H, N, ...]`` into a zero ``[H, rows, ...]`` tensor at ``dest`` along dim 1."""
    shape = [x.shape[0], rows] + list(x.shape[2:])
    return x.new_zeros(shape).index_copy(1, dest, x)


def chunk_states(mb: torch.Tensor, step_major: torch.Tensor, step_counts: List[int],
                  init: torch.Tensor) -> torch.Tensor:
    """Initial state of every chunk ``[NC, H, dk, dv]`` (chunk order) from the per-chunk
    transitions ``mb [NC, H, dk, dk+dv] = [M | Bm]`` by ``H_{j+1} = M_j H_j + Bm_j``, one batched
    step per chunk index; ``init [step_counts[0], H, dk, dv]`` are the first chunks' states in
    step-major order (:func:`chunk_plan`).

    The transitions are split once (a single backward concatenation) instead of slicing the whole
    tensor per step, whose backward would materialise a full-size zero gradient at every step."""
    nc, h, dk = mb.shape[0], mb.shape[1], mb.shape[2]
    dv = init.shape[-1]
    mb_blocks = torch.split(mb[step_major], step_counts)
    state = init
    states: List[torch.Tensor] = [state]
    for j in range(len(step_counts) - 1):
        nxt = step_counts[j + 1]
        blk = mb_blocks[j][:nxt].reshape(nxt * h, dk, dk + dv)
        state = torch.baddbmm(blk[..., dk:], blk[..., :dk], state[:nxt].reshape(nxt * h, dk, dv))
        state = state.view(nxt, h, dk, dv)
        states.append(state)
    h0_s = torch.cat(states, 0)  # initial state of each chunk, step-major order
    inv = torch.empty_like(step_major)
    inv[step_major] = torch.arange(nc, device=mb.device)
    return h0_s[inv]


def plan_with_state(q: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, chunk_size: int,
                    initial_state: Optional[torch.Tensor]
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, List[int], int, torch.Tensor]:
    """:func:`chunk_plan` of ``offsets`` plus each sequence's initial state ``[B, H, dk, dv]``
    (``initial_state``, or zeros)."""
    dest, n_chunks, chunk_start, step_major, step_counts, nc = chunk_plan(offsets, chunk_size)
    b, h, dk, dv = offsets.numel() - 1, q.shape[1], q.shape[2], v.shape[2]
    init = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state
    return dest, n_chunks, chunk_start, step_major, step_counts, nc, init


def chunk_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor, write: torch.Tensor,
                 dest: torch.Tensor, nc: int, c: int
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The packed inputs in the head-major chunk layout: ``q, k [H, NC, C, dk]``, ``v [H, NC, C, dv]``,
    ``erase, write [H, NC, C, 1]`` (contiguous after padding, so no transposed copies before the
    batched matmuls). Pad rows are zero (erase = write = 0, k = 0): they never touch the state,
    and their outputs are dropped."""
    h, dk, dv = q.shape[1], q.shape[2], v.shape[2]
    rows = nc * c
    qc = chunk_pad(q.transpose(0, 1), dest, rows).view(h, nc, c, dk)
    kc = chunk_pad(k.transpose(0, 1), dest, rows).view(h, nc, c, dk)
    vc = chunk_pad(v.transpose(0, 1), dest, rows).view(h, nc, c, dv)
    ac = chunk_pad(erase.t(), dest, rows).view(h, nc, c, 1)
    bc = chunk_pad(write.t(), dest, rows).view(h, nc, c, 1)
    return qc, kc, vc, ac, bc


def run_chunks(mb: torch.Tensor, n_chunks: torch.Tensor, step_major: torch.Tensor, step_counts: List[int],
               init: torch.Tensor) -> torch.Tensor:
    """The state recurrence across chunks, from the per-chunk transitions ``mb [NC, H, dk, dk+dv]``
    and each sequence's initial state ``init [B, H, dk, dv]``: the initial state of every chunk
    ``[NC, H, dk, dv]``."""
    # step 0 of the step-major order lists every non-empty sequence by decreasing chunk count
    # (chunk_plan), so its initial states are init in that order
    order = torch.argsort(n_chunks, descending=True, stable=True)
    return chunk_states(mb, step_major, step_counts, init[order[:step_counts[0]]])


def final_states(mb: torch.Tensor, h0_chunks: torch.Tensor, n_chunks: torch.Tensor, chunk_start: torch.Tensor,
                 init: torch.Tensor) -> torch.Tensor:
    """Each sequence's state after its last row ``[B, H, dk, dv]``: one more transition out of its
    last chunk (:func:`run_chunks` gives the chunks' initial states ``h0_chunks``); an empty
    sequence keeps ``init``."""
    last = (chunk_start + n_chunks - 1).clamp(min=0)
    mb_last = mb[last]  # [B, H, dk, dk+dv]
    dk = mb.shape[2]
    fin = mb_last[..., :dk] @ h0_chunks[last] + mb_last[..., dk:]
    return torch.where((n_chunks > 0).view(-1, 1, 1, 1), fin, init)


def chunked_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
                 write: torch.Tensor, offsets: torch.Tensor, chunk_size: int, last_only: bool,
                 initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Chunkwise WY/UT delta rule without input checks (TorchScript calls it directly).

    Returns ``(o, final_state)``: ``o [N, H, dv]`` or, if ``last_only``, ``[B, H, dv]`` holding
    each sequence's last output (zeros for empty sequences); ``final_state [B, H, dk, dv]`` when
    ``output_final_state`` (an empty sequence's is its initial state), else None. The state starts
    at ``initial_state [B, H, dk, dv]`` (zero when None)."""
    out_dtype = q.dtype
    if q.dtype == torch.float16 or q.dtype == torch.bfloat16:
        # Half precision: run the transform and the state recurrence in float32 (triangular
        # solves have no half kernels, and the state accumulates over thousands of rows).
        # Cast here rather than recursing: TorchScript rejects recursive calls.
        q, k, v, erase, write = q.float(), k.float(), v.float(), erase.float(), write.float()
        if initial_state is not None:
            initial_state = initial_state.float()
    h, dk, dv, b, c = q.shape[1], q.shape[2], v.shape[2], offsets.numel() - 1, chunk_size
    dest, n_chunks, chunk_start, step_major, step_counts, nc, init = plan_with_state(q, v, offsets, c, initial_state)
    final: Optional[torch.Tensor] = init.to(out_dtype) if output_final_state else None
    if nc == 0:
        if last_only:
            return v.new_zeros(b, h, dv).to(out_dtype), final
        return v.new_zeros(0, h, dv).to(out_dtype), final
    rows = nc * c
    qc, kc, vc, ac, bc = chunk_inputs(q, k, v, erase, write, dest, nc, c)

    # Intra-chunk UT transform, batched over every chunk of every sequence.
    kt = kc.transpose(-1, -2)  # [H, NC, dk, C]
    kk = kc @ kt  # [H, NC, C, C]
    # Masks as multiplications: torch.tril on [H, NC, C, C] is several times slower than a
    # broadcast multiply on CPU, in forward and backward.
    incl = torch.ones(c, c, dtype=q.dtype, device=q.device).tril()
    strict = incl - torch.eye(c, dtype=q.dtype, device=q.device)
    lower = (ac * kk) * strict + torch.eye(c, dtype=q.dtype, device=q.device)
    rhs = torch.cat([ac * kc, bc * vc], dim=-1)  # [H, NC, C, dk+dv]
    sol = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)  # [W | U]
    ktsol = kt @ sol  # [H, NC, dk, dk+dv] = [KᵀW | KᵀU]
    eye_k = torch.eye(dk, dtype=q.dtype, device=q.device)
    # Per-chunk transition, chunk-major for the loop: [NC, H, dk, dk+dv] = [M | Bm]
    mb = torch.cat([eye_k - ktsol[..., :dk], ktsol[..., dk:]], dim=-1).transpose(0, 1)

    h0_chunks = run_chunks(mb, n_chunks, step_major, step_counts, init)
    if output_final_state:
        final = final_states(mb, h0_chunks, n_chunks, chunk_start, init).to(out_dtype)
    h0 = h0_chunks.transpose(0, 1)

    if last_only:
        lengths = offsets[1:] - offsets[:-1]
        nonempty = lengths > 0
        last_chunk = (chunk_start + n_chunks - 1).clamp(min=0)
        last_row = (lengths - 1).clamp(min=0) % c
        ql = qc[:, last_chunk, last_row]  # [H, B, dk]
        qk = (kc[:, last_chunk] @ ql.unsqueeze(-1)).squeeze(-1)  # [H, B, C]
        upto = torch.arange(c, device=q.device).unsqueeze(0) <= last_row.unsqueeze(1)  # [B, C]
        qk = qk * upto.unsqueeze(0).to(qk.dtype)
        qs = (qk.unsqueeze(-2) @ sol[:, last_chunk]).squeeze(-2)  # [H, B, dk+dv]
        q_eff = ql - qs[..., :dk]
        o_last = (q_eff.unsqueeze(-2) @ h0[:, last_chunk]).squeeze(-2) + qs[..., dk:]  # [H, B, dv]
        return (o_last.transpose(0, 1) * nonempty.view(b, 1, 1).to(o_last.dtype)).to(out_dtype), final

    qk = (qc @ kt) * incl  # inclusive causal [H, NC, C, C]
    qsol = qk @ sol  # [H, NC, C, dk+dv]
    oc = (qc - qsol[..., :dk]) @ h0 + qsol[..., dk:]  # [H, NC, C, dv]
    return oc.view(h, rows, dv).index_select(1, dest).transpose(0, 1).to(out_dtype), final


def delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
                       write: torch.Tensor, offsets: torch.Tensor, chunk_size: int = 64,
                       initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Chunkwise-parallel delta rule over a jagged batch (same result as
    :func:`~hytrec_torchrec.ops.tadn.naive.delta_rule_recurrent`). Differentiable by autograd,
    also through ``initial_state``.

    Args:
        q, k: ``[N, H, dk]``; v: ``[N, H, dv]``; erase, write: ``[N, H]``; offsets: ``[B+1]`` int64;
        initial_state: ``[B, H, dk, dv]`` or None (zero).
    Returns:
        ``(o [N, H, dv], final_state [B, H, dk, dv] or None)``.
    """
    check_inputs(q, k, v, erase, write, offsets, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunked_core(q, k, v, erase, write, offsets, chunk_size, False, initial_state, output_final_state)


def delta_rule_chunked_last(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
                            write: torch.Tensor, offsets: torch.Tensor, chunk_size: int = 64,
                            initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False
                            ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Like :func:`delta_rule_chunked` but the outputs are each sequence's last one ``[B, H, dv]``
    (zeros for empty sequences); skips the per-row output product of all other rows."""
    check_inputs(q, k, v, erase, write, offsets, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunked_core(q, k, v, erase, write, offsets, chunk_size, True, initial_state, output_final_state)
