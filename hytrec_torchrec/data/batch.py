"""The training/evaluation batch: jagged features in one KeyedJaggedTensor plus dense per-example
tensors. Implements torchrec's ``Pipelineable`` so ``TrainPipelineSparseDist`` can move it.

Layout (B examples, N = total history events, R negatives)::

    features: KeyedJaggedTensor, keys in FEATURE_KEYS order, stride B
        history_item         lengths [B] = history lengths h_b        values [N]
        history_attribution  lengths [B] = h_b (same)                 values [N]
        history_category     lengths [B] = h_b (same)                 values [N]
        history_behavior     lengths [B] = h_b (same)                 values [N]
        target_item          lengths [B] = t_b, 1 <= t_b <= m         values [sum t_b]
        negative_item        lengths [B] = [R, 0, ..., 0]             values [R]
    timestamps      [N] int64 seconds, aligned with the history values
    t_current       [B] int64 timestamp of the first target
    user            [B] int64 dense user index
    cutoff          [B] int64 target position in the user's full sequence (= untruncated history length)
    first_event_time[B] int64 timestamp of the user's first event (position 0)
    valid           [B] bool, False only for eval padding examples (docs/data_loader.md)

The R negatives are shared by the whole batch; they sit in example 0's slot only because a KJT
needs B lengths per key.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from hytrec_torchrec.schema import FEATURE_KEYS, HISTORY_KEYS

__all__ = ["Batch", "FEATURE_KEYS", "HISTORY_KEYS"]  # the keys: hytrec_torchrec/schema.py



@dataclass
class Batch(Pipelineable):
    """One batch; see the module docstring for shapes."""

    features: KeyedJaggedTensor
    timestamps: torch.Tensor
    t_current: torch.Tensor
    user: torch.Tensor
    cutoff: torch.Tensor
    first_event_time: torch.Tensor
    valid: torch.Tensor

    @property
    def batch_size(self) -> int:
        """B, number of examples (including eval padding examples)."""
        return int(self.user.shape[0])

    def history_lengths(self) -> torch.Tensor:
        """[B] history lengths (the lengths of ``history_item``)."""
        return self.features.lengths()[: self.batch_size]

    def history_offsets(self) -> torch.Tensor:
        """[B+1] offsets of each example's history in ``timestamps`` / history values."""
        return torch.ops.fbgemm.asynchronous_complete_cumsum(self.history_lengths())

    def _tensor_fields(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "features"]

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        """Copy to ``device`` (returns a new Batch)."""
        kw = {n: getattr(self, n).to(device=device, non_blocking=non_blocking) for n in self._tensor_fields()}
        return Batch(features=self.features.to(device=device, non_blocking=non_blocking), **kw)

    def record_stream(self, stream: torch.Stream) -> None:
        """Mark every tensor as used on ``stream`` (CUDA pipelining)."""
        self.features.record_stream(stream)
        for n in self._tensor_fields():
            getattr(self, n).record_stream(stream)

    def pin_memory(self) -> "Batch":
        """Page-locked copy (DataLoader ``pin_memory=True`` calls this)."""
        kw = {n: getattr(self, n).pin_memory() for n in self._tensor_fields()}
        return Batch(features=self.features.pin_memory(), **kw)
