"""GPU path for the TADN delta rule via flash-linear-attention's ``chunk_gdn2`` (Triton), guarded.

``fla.ops.gdn2.chunk_gdn2`` (fla-core >= 0.6.0, "Gated DeltaNet 2") computes, on a state
``Sf [dk, dv]`` per head::

    Sf_t = (I - k_t (b_t ⊙ k_t)ᵀ) Diag(exp(g_t)) Sf_{t-1} + k_t (w_t ⊙ v_t)ᵀ,   o_t = scale · Sf_tᵀ q_t

with channel-wise erase ``b [dk]``, write ``w [dv]`` and log-decay ``g [dk]``. With ``g = 0``,
``b = erase·1``, ``w = write·1`` and ``scale = 1`` its transpose ``S = Sfᵀ`` follows exactly our rule
``S_t = S_{t-1}(I - erase_t k_t k_tᵀ) + write_t v_t k_tᵀ``, ``o_t = S_t q_t``. Nothing of fla is
copied here; we only call it. The kernel wants one "batch" of packed sequences with
``cu_seqlens`` — which is our layout already.

The guard: :func:`gpu_kernel_available` is True only when CUDA is available and ``fla.ops.gdn2``
imports; :func:`hytrec_torchrec.ops.tadn.resolve_impl` falls back to the chunkwise torch form
otherwise (tested on CPU).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["gpu_kernel_available", "delta_rule_gpu"]

_KERNEL: Optional[Any] = None
_CHECKED = False


def _load() -> Optional[Any]:
    global _KERNEL, _CHECKED
    if not _CHECKED:
        _CHECKED = True
        try:
            from fla.ops.gdn2 import chunk_gdn2  # type: ignore[import-not-found]

            _KERNEL = chunk_gdn2
        except Exception:
            _KERNEL = None
    return _KERNEL


def gpu_kernel_available() -> bool:
    """True when CUDA is available and fla's ``chunk_gdn2`` imports."""
    if not torch.cuda.is_available():
        return False
    return _load() is not None


def delta_rule_gpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
                   write: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Delta rule on CUDA via ``chunk_gdn2``. Shapes as :func:`hytrec_torchrec.ops.tadn.chunk.delta_rule_chunked`;
    returns ``o`` only (the dispatcher runs the torch forms for a call with state).

    Raises RuntimeError when the kernel is unavailable (callers go through ``resolve_impl``).
    """
    kernel = _load()
    if kernel is None or not q.is_cuda:
        raise RuntimeError("GPU delta-rule kernel unavailable (needs CUDA and fla-core>=0.6.0)")
    g = torch.zeros_like(k)
    b = erase.unsqueeze(-1).expand_as(k).contiguous()
    w = write.unsqueeze(-1).expand_as(v).contiguous()
    # Empty sequences hold no rows: drop their repeated offsets so the kernel sees none of length 0.
    offsets = torch.unique_consecutive(offsets.cpu())
    cu = offsets.to(device=q.device, dtype=torch.long)
    o, _ = kernel(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), g.unsqueeze(0), b.unsqueeze(0), w.unsqueeze(0),
        scale=1.0, cu_seqlens=cu, cu_seqlens_cpu=offsets.cpu(), output_final_state=False,
    )
    return o.squeeze(0)
