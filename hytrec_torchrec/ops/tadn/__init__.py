"""The TADN delta rule over jagged batches: reference, chunkwise-parallel form, GPU kernel.

Rule (per sequence, per head)::

    S_t = S_{t-1} (I - erase_t k_t k_tᵀ) + write_t v_t k_tᵀ
    o_t = S_t q_t

with ``erase = g·β`` and ``write = β`` in HyTRec's TADN. Inputs are packed back to back:
``q, k [N, H, dk]``, ``v [N, H, dv]``, ``erase, write [N, H]``, ``offsets [B+1]`` int64
(``cu_seqlens``). Keys are expected to be L2-normalised already. The state is passed in and out
transposed, ``Sᵀ [B, H, dk, dv]`` per sequence, as flash-linear-attention's ops do:
``initial_state`` (zero when None) and, with ``output_final_state``, the state after each
sequence's last row, so a history can be processed in pieces (incremental serving: the state of
the events so far plus the new events equals the whole history; ``tests/test_tadn.py``).

* :func:`~hytrec_torchrec.ops.tadn.naive.delta_rule_recurrent` (``naive.py``) — token by token.
* :func:`~hytrec_torchrec.ops.tadn.chunk.delta_rule_chunked` (``chunk.py``) — chunkwise WY/UT form,
  linear in length; ``chunked_core`` is what TorchScript calls.
* :func:`~hytrec_torchrec.ops.tadn.gpu.delta_rule_gpu` (``gpu.py``) — flash-linear-attention's
  kernel on CUDA, guarded.
* :func:`delta_rule` — dispatcher (``impl`` = auto | chunked | recurrent | gpu). Every form returns
  ``(o, final_state or None)``.
"""


from typing import Optional, Tuple

import torch

from hytrec_torchrec.ops.tadn.chunk import check_inputs, chunked_core, delta_rule_chunked, delta_rule_chunked_last
from hytrec_torchrec.ops.tadn.gpu import delta_rule_gpu, gpu_kernel_available
from hytrec_torchrec.ops.tadn.naive import delta_rule_recurrent

__all__ = [
    "chunked_core",
    "delta_rule",
    "delta_rule_chunked",
    "delta_rule_chunked_last",
    "delta_rule_recurrent",
    "gpu_kernel_available",
    "resolve_impl",
]


def resolve_impl(impl: str, device: torch.device) -> str:
    """Map ``impl`` (auto | chunked | recurrent | gpu) to what will run on ``device``.

    ``auto`` and ``gpu`` pick the GPU kernel only when ``device`` is CUDA and the kernel package
    imports (:func:`~hytrec_torchrec.ops.tadn.gpu.gpu_kernel_available`); otherwise ``chunked``.
    """
    if impl not in ("auto", "chunked", "recurrent", "gpu"):
        raise ValueError(f"impl must be auto|chunked|recurrent|gpu, got {impl!r}")
    if impl in ("auto", "gpu"):
        return "gpu" if (device.type == "cuda" and gpu_kernel_available()) else "chunked"
    return impl


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
               write: torch.Tensor, offsets: torch.Tensor, chunk_size: int = 64, impl: str = "auto",
               last_only: bool = False, initial_state: Optional[torch.Tensor] = None,
               output_final_state: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Dispatching delta rule (eager only; TorchScript calls :func:`chunked_core` directly).

    Returns ``(o [N, H, dv], final_state [B, H, dk, dv] or None)``, or the last outputs
    ``[B, H, dv]`` when ``last_only``. A call with a state in or out runs the torch forms (the GPU
    path serves the stateless call).
    """
    which = resolve_impl(impl, q.device)
    if which == "gpu" and (initial_state is not None or output_final_state):
        which = "chunked"
    final: Optional[torch.Tensor] = None
    if which == "gpu":
        o = delta_rule_gpu(q, k, v, erase, write, offsets)
    elif which == "recurrent":
        o, final = delta_rule_recurrent(q, k, v, erase, write, offsets, initial_state, output_final_state)
    else:
        check_inputs(q, k, v, erase, write, offsets, initial_state)
        return chunked_core(q, k, v, erase, write, offsets, chunk_size, last_only, initial_state, output_final_state)
    if last_only:
        lengths = offsets[1:] - offsets[:-1]
        last = o[(offsets[1:] - 1).clamp(min=0)] if o.shape[0] > 0 else o.new_zeros(lengths.numel(), o.shape[1], o.shape[2])
        return last * (lengths > 0).view(-1, 1, 1).to(o.dtype), final
    return o, final
