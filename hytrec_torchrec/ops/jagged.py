"""Jagged-batch helpers: sequences packed back to back, described by ``offsets`` ``[B+1]`` int64.

Every function here is TorchScript-compatible and works with plain PyTorch. Where fbgemm's jagged
operators are loaded (``fbgemm-gpu-cpu`` on CPU machines) and we run eagerly, the padding helpers
use ``torch.ops.fbgemm.jagged_to_padded_dense`` / ``dense_to_jagged`` /
``asynchronous_complete_cumsum``; otherwise (TorchScript, or the GPU test machine which has no
fbgemm) they use index arithmetic with identical results (a test checks both paths agree). The
fbgemm branch sits behind ``torch.jit.is_scripting()`` so that a scripted model never references
``torch.ops.fbgemm`` and loads in processes that did not import fbgemm.
"""


from typing import List, Tuple

import torch

try:  # fbgemm registers torch.ops.fbgemm.* on import; absent on the GPU machine.
    import fbgemm_gpu  # noqa: F401

    _HAS_FBGEMM = hasattr(torch.ops.fbgemm, "jagged_to_padded_dense")
except Exception:  # pragma: no cover - depends on the environment
    _HAS_FBGEMM = False

__all__ = [
    "has_fbgemm",
    "lengths_to_offsets",
    "segment_ids",
    "jagged_to_padded",
    "jagged_to_padded_1d",
    "padded_to_jagged",
    "segment_mean",
    "segment_prefix_mean",
    "split_tail",
    "last_index",
    "next_event_times",
    "length_groups",
    "pass_bounds",
]


def has_fbgemm() -> bool:
    """True when fbgemm's jagged operators are loaded in this process."""
    return _HAS_FBGEMM


def lengths_to_offsets(lengths: torch.Tensor) -> torch.Tensor:
    """Lengths ``[B]`` int64 → offsets ``[B+1]`` int64 (inclusive cumsum with a leading 0)."""
    if not torch.jit.is_scripting():
        if _HAS_FBGEMM and lengths.device.type == "cpu":
            return torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
    out = torch.zeros(lengths.numel() + 1, dtype=lengths.dtype, device=lengths.device)
    out[1:] = torch.cumsum(lengths, 0)
    return out


def segment_ids(offsets: torch.Tensor, total: int) -> torch.Tensor:
    """Sequence index of every packed row: ``[N]`` int64 with ``N = total = offsets[-1]``."""
    lengths = offsets[1:] - offsets[:-1]
    ar = torch.arange(lengths.numel(), device=offsets.device)
    return torch.repeat_interleave(ar, lengths, output_size=total)


def _padded_index(offsets: torch.Tensor, max_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row index ``[B, max_len]`` into the packed values and validity mask ``[B, max_len]``."""
    lengths = offsets[1:] - offsets[:-1]
    ar = torch.arange(max_len, device=offsets.device)
    mask = ar.unsqueeze(0) < lengths.unsqueeze(1)
    idx = offsets[:-1].unsqueeze(1) + ar.unsqueeze(0)
    idx = torch.where(mask, idx, torch.zeros_like(idx))
    return idx, mask


def jagged_to_padded(values: torch.Tensor, offsets: torch.Tensor, max_len: int) -> torch.Tensor:
    """Packed ``values [N, D]`` → zero-padded ``[B, max_len, D]`` (sequences cut at ``max_len``).

    ``offsets[0]`` must be 0. Differentiable in ``values``.
    """
    if not torch.jit.is_scripting():
        if _HAS_FBGEMM and values.device.type == "cpu":
            return torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [max_len], 0.0)
    idx, mask = _padded_index(offsets, max_len)
    if values.shape[0] == 0:
        return values.new_zeros(offsets.numel() - 1, max_len, values.shape[1])
    return values[idx] * mask.unsqueeze(-1).to(values.dtype)


def jagged_to_padded_1d(values: torch.Tensor, offsets: torch.Tensor, max_len: int) -> torch.Tensor:
    """Packed per-row scalars ``values [N]`` (any dtype, e.g. int64 timestamps) → zero-padded
    ``[B, max_len]``. Not differentiable; ``offsets[0]`` must be 0."""
    idx, mask = _padded_index(offsets, max_len)
    if values.shape[0] == 0:
        return values.new_zeros(offsets.numel() - 1, max_len)
    return torch.where(mask, values[idx], torch.zeros_like(idx).to(values.dtype))


def padded_to_jagged(padded: torch.Tensor, offsets: torch.Tensor, total: int) -> torch.Tensor:
    """Padded ``[B, max_len, D]`` → packed ``[N, D]`` (``N = total``); inverse of
    :func:`jagged_to_padded` for sequences no longer than ``max_len``."""
    if not torch.jit.is_scripting():
        if _HAS_FBGEMM and padded.device.type == "cpu":
            return torch.ops.fbgemm.dense_to_jagged(padded, [offsets], total)[0]
    _, mask = _padded_index(offsets, padded.shape[1])
    return padded[mask]


def segment_mean(values: torch.Tensor, offsets: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean of packed ``values [N, D]`` → ``[B, D]`` (zeros for empty sequences).

    ``seg`` is :func:`segment_ids` of ``offsets``.
    """
    b = offsets.numel() - 1
    sums = values.new_zeros(b, values.shape[1]).index_add(0, seg, values)
    lengths = (offsets[1:] - offsets[:-1]).clamp(min=1).to(values.dtype)
    return sums / lengths.unsqueeze(1)


def segment_prefix_mean(values: torch.Tensor, offsets: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Causal per-sequence mean ``[N, D]``: row ``r`` gets the mean of its sequence's rows up to
    and including ``r`` (a running mean; the last row of each sequence equals :func:`segment_mean`).

    The running sums are taken in float64, so long sequences do not lose precision.
    """
    n = values.shape[0]
    cs = torch.cat([values.new_zeros(1, values.shape[1]).double(), values.double().cumsum(0)], 0)
    rows = torch.arange(n, device=values.device)
    start = offsets[:-1][seg]
    sums = cs[rows + 1] - cs[start]
    count = (rows - start + 1).to(torch.float64).unsqueeze(1)
    return (sums / count).to(values.dtype)


def split_tail(offsets: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split every sequence into head (all but the last ``k`` rows) and tail (the last ``k``).

    Returns ``(head_rows [N_head], head_offsets [B+1], tail_rows [N_tail], tail_offsets [B+1])``
    where ``*_rows`` index the packed rows of the full batch in packed order.
    """
    lengths = offsets[1:] - offsets[:-1]
    tail_len = lengths.clamp(max=k)
    head_len = lengths - tail_len
    head_off = lengths_to_offsets(head_len)
    tail_off = lengths_to_offsets(tail_len)
    n_head = int(head_off[-1])
    n_tail = int(tail_off[-1])
    head_seg = segment_ids(head_off, n_head)
    tail_seg = segment_ids(tail_off, n_tail)
    head_rows = offsets[:-1][head_seg] + (torch.arange(n_head, device=offsets.device) - head_off[:-1][head_seg])
    tail_start = offsets[:-1] + head_len
    tail_rows = tail_start[tail_seg] + (torch.arange(n_tail, device=offsets.device) - tail_off[:-1][tail_seg])
    return head_rows, head_off, tail_rows, tail_off


def last_index(offsets: torch.Tensor) -> torch.Tensor:
    """Packed row of the last element of each sequence ``[B]`` (clamped to 0 for empty ones)."""
    return (offsets[1:] - 1).clamp(min=0)


def next_event_times(timestamps: torch.Tensor, offsets: torch.Tensor,
                     t_current: torch.Tensor) -> torch.Tensor:
    """Time of the event each row predicts ``[N]`` int64: row ``r`` of a sequence gets the
    timestamp of row ``r + 1``, the last row gets its sequence's ``t_current [B]`` (the request
    time: the target's timestamp). ``timestamps [N]``, ``offsets [B+1]``.

    Example: timestamps ``[10, 20, 30]``, offsets ``[0, 2, 2, 3]``, t_current ``[25, 99, 40]``
    → ``[20, 25, 40]``.
    """
    n = timestamps.shape[0]
    if n == 0:
        return timestamps
    nxt = torch.cat([timestamps[1:], timestamps[:1]])
    lengths = offsets[1:] - offsets[:-1]
    has = torch.nonzero(lengths > 0).flatten()
    return nxt.index_copy(0, offsets[1:][has] - 1, t_current[has].to(timestamps.dtype))


def length_groups(sorted_lengths: List[int], max_waste: float) -> List[int]:
    """Group boundaries over lengths sorted in descending order.

    Consecutive sequences join a group while ``group_size * group_max <= (1 + max_waste) *
    sum(lengths)``, i.e. padding within the group stays below ``max_waste`` of the real tokens.
    Returns boundaries ``[0, e_1, ..., B]``; zero-length sequences are excluded from the end.
    """
    bounds: List[int] = [0]
    n = len(sorted_lengths)
    i = 0
    while i < n and sorted_lengths[i] > 0:
        top = sorted_lengths[i]
        total = top
        j = i + 1
        while j < n and sorted_lengths[j] > 0:
            cand = total + sorted_lengths[j]
            if (j - i + 1) * top > (1.0 + max_waste) * cand:
                break
            total = cand
            j += 1
        bounds.append(j)
        i = j
    return bounds


def pass_bounds(offsets: torch.Tensor, max_tokens: int) -> List[int]:
    """Request boundaries ``[0, b1, ..., B]`` of consecutive groups holding at most ``max_tokens``
    events each (a longer request forms its own group; ``max_tokens`` 0: one group).

    ``offsets``: ``[B+1]`` int64 packed offsets of the (truncated) histories. A batch of no
    requests gives ``[0, 0]`` (one empty pass, so the tower still defines the output shape).

    Example::

        pass_bounds(torch.tensor([0, 3, 5, 9, 10]), 5)  # [0, 2, 4]: requests {0, 1} and {2, 3}
    """
    b = offsets.numel() - 1
    if max_tokens <= 0 or b <= 1 or int(offsets[-1]) <= max_tokens:
        return [0, b]
    ends: List[int] = offsets.tolist()
    bounds: List[int] = [0]
    for i in range(1, b):
        if ends[i + 1] - ends[bounds[-1]] > max_tokens:
            bounds.append(i)
    bounds.append(b)
    return bounds
