"""Raw ID ↔ dense index mapping inside the served model (torch only at serving time).

A prepared vocabulary (docs/data_format.md) lists raw IDs as strings with their dense index
(index 0 = padding, 1 = unknown, known IDs ≥ 2). At export each feature gets an *ID space*:

* ``raw_int64`` — every raw ID is the decimal form of an int64 (``str(int(raw)) == raw``): the
  model takes raw integer IDs and maps them with a sorted array + ``torch.searchsorted``;
  IDs not in the vocabulary map to the unknown index 1.
* ``index`` — some raw ID is not such an integer (e.g. behaviour names ``click``, ``pay``): the
  model takes dense indices, which the client reads from the exported vocabulary file
  (``vocab/<feature>.json``); values outside ``[0, V)`` map to the unknown index 1.
"""

from dataclasses import dataclass
from typing import Final, List, Optional

import numpy as np
import torch
from torch import nn

__all__ = ["Vocab", "IdMap", "UNKNOWN_INDEX", "PAD_INDEX"]

PAD_INDEX = 0
UNKNOWN_INDEX = 1


@dataclass
class Vocab:
    """One feature's vocabulary as read from a prepared dataset.

    Attributes:
        feature: table name (item, attribution, category, behavior).
        size: V, rows of the table (includes padding and unknown).
        raw: raw IDs as strings, ``[M]`` (known IDs only).
        index: ``[M]`` int64 dense index of each raw ID (all in ``2..V-1``).
    """

    feature: str
    size: int
    raw: List[str]
    index: np.ndarray

    def int_ids(self) -> Optional[np.ndarray]:
        """``[M]`` int64 raw IDs when every raw ID is a canonical int64 decimal, else None."""
        try:
            ids = np.array([int(r) for r in self.raw], dtype=np.int64)
        except (ValueError, OverflowError):
            return None
        if any(str(int(i)) != r for i, r in zip(ids.tolist(), self.raw)):
            return None  # e.g. "007" or "+5": not the decimal form the client would send
        return ids

    def id_space(self) -> str:
        """``raw_int64`` or ``index`` (module docstring)."""
        return "raw_int64" if self.int_ids() is not None else "index"


class IdMap(nn.Module):
    """Maps one feature's request values to table indices, and item indices back to raw IDs.

    Args:
        vocab: the feature's vocabulary.
    """

    raw_int: Final[bool]
    unknown: Final[int]

    def __init__(self, vocab: Vocab) -> None:
        super().__init__()
        self.unknown = UNKNOWN_INDEX
        ids = vocab.int_ids()
        self.raw_int = ids is not None
        self.num_rows = int(vocab.size)
        index = np.asarray(vocab.index, dtype=np.int64)
        if index.size and (index.min() < 2 or index.max() >= vocab.size):
            raise ValueError(f"vocab {vocab.feature}: indices must lie in 2..{vocab.size - 1}")
        raw_of_index = torch.full((vocab.size,), -1, dtype=torch.int64)
        if ids is not None:
            order = np.argsort(ids, kind="stable")
            if ids.size > 1 and (np.diff(ids[order]) == 0).any():
                raise ValueError(f"vocab {vocab.feature}: duplicate raw IDs")
            sorted_raw = torch.from_numpy(ids[order].copy())
            sorted_index = torch.from_numpy(index[order].copy())
            raw_of_index[torch.from_numpy(index)] = torch.from_numpy(ids)
        else:
            sorted_raw = torch.zeros(0, dtype=torch.int64)
            sorted_index = torch.zeros(0, dtype=torch.int64)
            raw_of_index[torch.from_numpy(index)] = torch.from_numpy(index)
        self.register_buffer("sorted_raw", sorted_raw)
        self.register_buffer("sorted_index", sorted_index)
        self.register_buffer("raw_of_index", raw_of_index)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Request values ``[N]`` int64 → table indices ``[N]`` int64 (unknown → 1)."""
        if not self.raw_int:
            ok = (values >= 0) & (values < self.num_rows)
            return torch.where(ok, values, torch.full_like(values, self.unknown))
        if self.sorted_raw.numel() == 0:
            return torch.full_like(values, self.unknown)
        pos = torch.searchsorted(self.sorted_raw, values).clamp(max=self.sorted_raw.numel() - 1)
        hit = self.sorted_raw[pos] == values
        return torch.where(hit, self.sorted_index[pos], torch.full_like(values, self.unknown))

    @torch.jit.export
    def to_raw(self, index: torch.Tensor) -> torch.Tensor:
        """Table indices ``[...]`` int64 → raw IDs (``raw_int64``) or the indices (``index``)."""
        if self.raw_int:
            return self.raw_of_index[index]
        return index
