"""The TADN delta rule over jagged batches: naive reference, chunkwise-parallel form, dispatcher.

Rule (per sequence, per head; state ``S`` is ``[dv, dk]``, zero at the start of every sequence)::

    S_t = S_{t-1} (I - erase_t k_t k_tᵀ) + write_t v_t k_tᵀ
    o_t = S_t q_t

with ``erase = g·β`` and ``write = β`` in HyTRec's TADN. Inputs are packed back to back:
``q, k [N, H, dk]``, ``v [N, H, dv]``, ``erase, write [N, H]``, ``offsets [B+1]`` int64
(``cu_seqlens``). Keys are expected to be L2-normalised already.

* :func:`delta_rule_recurrent` — token-by-token reference (slow, obviously correct).
* :func:`delta_rule_chunked` — chunkwise-parallel WY/UT form (linear in length, batched over all
  chunks of all sequences; only the ``[dk, dk]`` chunk-to-chunk state recurrence is a loop).
* :func:`delta_rule` — dispatcher (``impl`` = auto | chunked | recurrent | gpu); the GPU path
  (:mod:`hytrec_torchrec.ops.tadn_gpu`) is used only when CUDA and its kernel package import.

Chunked derivation (docs/tower.md has the long form). Write the state transposed, ``H = Sᵀ``
``[dk, dv]``. Inside a chunk of ``C`` rows with initial state ``H0``, let
``new_t = write_t v_t - erase_t H_{t-1}ᵀ k_t`` so ``H_t = H0 + Σ_{i≤t} k_i new_iᵀ``. Then
``(I + StrictTril(diag(a) K Kᵀ)) New = diag(b) V - diag(a) K H0`` with ``a = erase``,
``b = write``. With ``T = (I + StrictTril(diag(a) K Kᵀ))⁻¹`` (a unit lower-triangular solve),
``W = T diag(a) K`` and ``U = T diag(b) V``::

    New    = U - W H0
    O      = Q H0 + tril(Q Kᵀ) New = (Q - tril(Q Kᵀ) W) H0 + tril(Q Kᵀ) U
    H_next = H0 + Kᵀ New = (I - Kᵀ W) H0 + Kᵀ U

so every chunk reduces to ``(M, Bm) = (I - KᵀW, KᵀU)`` and the only sequential part is
``H_{j+1} = M_j H_j + Bm_j``.
"""


from typing import List, Tuple

import torch

from hytrec_torchrec.ops.tadn_gpu import delta_rule_gpu, gpu_kernel_available

__all__ = [
    "delta_rule_recurrent",
    "delta_rule_chunked",
    "delta_rule_chunked_last",
    "delta_rule",
    "resolve_impl",
]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
           write: torch.Tensor, offsets: torch.Tensor) -> None:
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


def delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
                         write: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Reference: the recurrence one token at a time (all sequences advanced together).

    Args:
        q, k: ``[N, H, dk]``; v: ``[N, H, dv]``; erase, write: ``[N, H]``; offsets: ``[B+1]`` int64.
    Returns:
        o: ``[N, H, dv]`` with ``o_t = S_t q_t`` and
        ``S_t = S_{t-1} (I - erase_t k_t k_tᵀ) + write_t v_t k_tᵀ``, ``S`` zero per sequence.
    """
    _check(q, k, v, erase, write, offsets)
    n, h, dk = q.shape
    dv = v.shape[-1]
    if n == 0:
        return v.new_zeros(0, h, dv)
    lengths = offsets[1:] - offsets[:-1]
    order = torch.argsort(lengths, descending=True, stable=True)  # longest first
    steps = torch.arange(int(lengths.max()), device=q.device)
    live = lengths[order].unsqueeze(0) > steps.unsqueeze(1)  # [T, B]: sequence still running at t
    rows = (offsets[:-1][order].unsqueeze(0) + steps.unsqueeze(1))[live]  # time-major row order
    counts: List[int] = live.sum(1).tolist()
    # One gather + split (its backward is a single concatenation), not a gather per step.
    qs, ks, vs = (torch.split(x[rows], counts) for x in (q, k, v))
    as_, bs = (torch.split(x[rows], counts) for x in (erase, write))
    S = q.new_zeros(counts[0], h, dv, dk)
    outs: List[torch.Tensor] = []
    for t, m in enumerate(counts):
        k_t, v_t, q_t = ks[t], vs[t], qs[t]  # [m, H, d]
        a_t = as_[t][..., None]  # [m, H, 1]
        b_t = bs[t][..., None]
        S = S[:m]
        # S (I - a k kᵀ) + b v kᵀ  ==  S + (b v - a S k) kᵀ   (elementwise products: tiny matmuls
        # are slow on a busy CPU, and this is the literal rank-1 update)
        Sk = (S * k_t.unsqueeze(-2)).sum(-1)  # [m, H, dv]
        S = S + (b_t * v_t - a_t * Sk).unsqueeze(-1) * k_t.unsqueeze(-2)
        outs.append((S * q_t.unsqueeze(-2)).sum(-1))  # S q
    return v.new_zeros(n, h, dv).index_copy(0, rows, torch.cat(outs))


def _chunk_plan(offsets: torch.Tensor, chunk_size: int
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


def _chunk_pad(x: torch.Tensor, dest: torch.Tensor, rows: int) -> torch.Tensor:
    """Scatter ``x [H, N, ...]`` into a zero ``[H, rows, ...]`` tensor at ``dest`` along dim 1."""
    shape = [x.shape[0], rows] + list(x.shape[2:])
    return x.new_zeros(shape).index_copy(1, dest, x)


def _chunk_states(mb: torch.Tensor, step_major: torch.Tensor, step_counts: List[int],
                  init: torch.Tensor) -> torch.Tensor:
    """Initial state of every chunk ``[NC, H, dk, dv]`` (chunk order) from the per-chunk
    transitions ``mb [NC, H, dk, dk+dv] = [M | Bm]`` by ``H_{j+1} = M_j H_j + Bm_j``, one batched
    step per chunk index; ``init [step_counts[0], H, dk, dv]`` are the first chunks' states in
    step-major order (:func:`_chunk_plan`).

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


def _chunked_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
                  write: torch.Tensor, offsets: torch.Tensor, chunk_size: int, last_only: bool
                  ) -> torch.Tensor:
    """Chunkwise WY/UT delta rule. Returns ``o [N, H, dv]`` or, if ``last_only``, ``[B, H, dv]``
    holding each sequence's last output (zeros for empty sequences)."""
    out_dtype = q.dtype
    if q.dtype == torch.float16 or q.dtype == torch.bfloat16:
        # Half precision: run the transform and the state recurrence in float32 (triangular
        # solves have no half kernels, and the state accumulates over thousands of rows).
        # Cast here rather than recursing: TorchScript rejects recursive calls.
        q, k, v, erase, write = q.float(), k.float(), v.float(), erase.float(), write.float()
    n, h, dk = q.shape
    dv = v.shape[-1]
    c = chunk_size
    b = offsets.numel() - 1
    dest, n_chunks, chunk_start, step_major, step_counts, nc = _chunk_plan(offsets, c)
    if nc == 0:
        if last_only:
            return v.new_zeros(b, h, dv).to(out_dtype)
        return v.new_zeros(0, h, dv).to(out_dtype)
    rows = nc * c
    # Head-major chunk layout [H, NC, C, d] (contiguous after padding, so no transposed copies
    # before the batched matmuls). Pad rows are zero (erase = write = 0, k = 0): they never touch
    # the state, and their outputs are dropped.
    qc = _chunk_pad(q.transpose(0, 1), dest, rows).view(h, nc, c, dk)
    kc = _chunk_pad(k.transpose(0, 1), dest, rows).view(h, nc, c, dk)
    vc = _chunk_pad(v.transpose(0, 1), dest, rows).view(h, nc, c, dv)
    ac = _chunk_pad(erase.t(), dest, rows).view(h, nc, c, 1)
    bc = _chunk_pad(write.t(), dest, rows).view(h, nc, c, 1)

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

    h0 = _chunk_states(mb, step_major, step_counts, q.new_zeros(step_counts[0], h, dk, dv)).transpose(0, 1)

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
        return (o_last.transpose(0, 1) * nonempty.view(b, 1, 1).to(o_last.dtype)).to(out_dtype)

    qk = (qc @ kt) * incl  # inclusive causal [H, NC, C, C]
    qsol = qk @ sol  # [H, NC, C, dk+dv]
    oc = (qc - qsol[..., :dk]) @ h0 + qsol[..., dk:]  # [H, NC, C, dv]
    return oc.view(h, rows, dv).index_select(1, dest).transpose(0, 1).to(out_dtype)


def delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
                       write: torch.Tensor, offsets: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
    """Chunkwise-parallel delta rule over a jagged batch (same result as :func:`delta_rule_recurrent`).

    Each sequence is split into chunks of ``chunk_size`` rows (its last chunk zero-padded; chunks
    never cross sequences, no padding to the batch maximum). Differentiable by autograd.

    Args:
        q, k: ``[N, H, dk]``; v: ``[N, H, dv]``; erase, write: ``[N, H]``; offsets: ``[B+1]`` int64.
    Returns:
        o: ``[N, H, dv]``.
    """
    _check(q, k, v, erase, write, offsets)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _chunked_core(q, k, v, erase, write, offsets, chunk_size, False)


def delta_rule_chunked_last(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
                            write: torch.Tensor, offsets: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
    """Like :func:`delta_rule_chunked` but returns only each sequence's last output ``[B, H, dv]``
    (zeros for empty sequences); skips the per-row output product of all other rows."""
    _check(q, k, v, erase, write, offsets)
    return _chunked_core(q, k, v, erase, write, offsets, chunk_size, True)


def resolve_impl(impl: str, device: torch.device) -> str:
    """Map ``impl`` (auto | chunked | recurrent | gpu) to what will run on ``device``.

    ``auto`` and ``gpu`` pick the GPU kernel only when ``device`` is CUDA and the kernel package
    imports (:func:`hytrec_torchrec.ops.tadn_gpu.gpu_kernel_available`); otherwise ``chunked``.
    """
    if impl not in ("auto", "chunked", "recurrent", "gpu"):
        raise ValueError(f"impl must be auto|chunked|recurrent|gpu, got {impl!r}")
    if impl in ("auto", "gpu"):
        return "gpu" if (device.type == "cuda" and gpu_kernel_available()) else "chunked"
    return impl


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
               write: torch.Tensor, offsets: torch.Tensor, chunk_size: int = 64, impl: str = "auto",
               last_only: bool = False) -> torch.Tensor:
    """Dispatching delta rule (eager only; TorchScript uses :func:`_chunked_core` directly).

    Returns ``o [N, H, dv]``, or ``[B, H, dv]`` last outputs when ``last_only``.
    """
    which = resolve_impl(impl, q.device)
    if which == "gpu":
        o = delta_rule_gpu(q, k, v, erase, write, offsets)
    elif which == "recurrent":
        o = delta_rule_recurrent(q, k, v, erase, write, offsets)
    else:
        _check(q, k, v, erase, write, offsets)
        return _chunked_core(q, k, v, erase, write, offsets, chunk_size, last_only)
    if last_only:
        lengths = offsets[1:] - offsets[:-1]
        last = o[(offsets[1:] - 1).clamp(min=0)] if o.shape[0] > 0 else o.new_zeros(lengths.numel(), o.shape[1], o.shape[2])
        return last * (lengths > 0).view(-1, 1, 1).to(o.dtype)
    return o
