"""Global vocabularies: raw ID -> dense index (0 padding, 1 unknown, known IDs from 2).

Indices follow the ascending order of the raw ID as a string (UTF-8 byte order; integers in
decimal), so they do not depend on partitioning, sharding or input order. ``behavior`` has the
nine funnel stages at fixed indices 2..10 and any other value from 11 in ascending order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import PrepInputError

__all__ = ["FUNNEL", "Vocab", "UniqueCollector", "build_vocab", "behavior_vocab", "load_vocab", "PAD", "UNK"]

PAD, UNK = 0, 1
FUNNEL = ("click", "redirect", "activation", "wakeup", "product_click", "stay", "collect", "add_to_cart", "pay")


@dataclass
class Vocab:
    """``values[i]`` (canonical ID type) has dense index ``indices[i]``; ``raw[i]`` is its string."""

    name: str
    values: pa.Array
    indices: np.ndarray  # int64
    raw: pa.Array  # string

    @property
    def size(self) -> int:
        """Max index + 1 (includes padding and unknown)."""
        return int(self.indices.max()) + 1 if len(self.indices) else 2

    def lookup(self, arr: pa.Array) -> tuple[np.ndarray, int]:
        """Dense index of every value (null or unknown -> ``UNK``) and how many were unknown (non-null)."""
        if len(arr) == 0:
            return np.zeros(0, np.int64), 0
        pos = pc.index_in(arr, value_set=self.values)
        found = pos.to_numpy(zero_copy_only=False) if pos.null_count else pos.to_numpy()
        if pos.null_count == 0:
            return self.indices[found.astype(np.int64)], 0
        missing = np.asarray(pc.is_null(pos).to_numpy(zero_copy_only=False))
        out = np.full(len(arr), UNK, np.int64)
        out[~missing] = self.indices[pc.drop_null(pos).to_numpy().astype(np.int64)]
        unknown = int(missing.sum()) - arr.null_count
        return out, unknown

    def table(self, counts: np.ndarray) -> pa.Table:
        """The ``vocab/<name>.parquet`` table (known IDs only, sorted by index)."""
        order = np.argsort(self.indices, kind="stable")
        return pa.table(
            {
                "raw": self.raw.take(pa.array(order)),
                "index": pa.array(self.indices[order], pa.int64()),
                "count": pa.array(counts[self.indices[order]], pa.int64()),
            }
        )


class UniqueCollector:
    """Distinct values of one column over a stream of batches, in bounded memory (O(#distinct))."""

    def __init__(self, dtype: pa.DataType) -> None:
        self.dtype = dtype
        self._parts: list[pa.Array] = []
        self._pending = 0

    def add(self, arr: pa.Array) -> None:
        """Add the distinct non-null values of ``arr``."""
        u = pc.unique(pc.drop_null(arr)) if arr.null_count else pc.unique(arr)
        if len(u):
            self._parts.append(u)
            self._pending += len(u)
        if len(self._parts) > 64 or self._pending > 4_000_000:
            self._compact()

    def _compact(self) -> None:
        if len(self._parts) > 1:
            self._parts = [pc.unique(pa.concat_arrays(self._parts))]
        self._pending = len(self._parts[0]) if self._parts else 0

    def result(self) -> pa.Array:
        """All distinct values seen (unordered)."""
        self._compact()
        return self._parts[0] if self._parts else pa.array([], self.dtype)


def _as_raw(values: pa.Array) -> pa.Array:
    return values if pa.types.is_string(values.type) else pc.cast(values, pa.string())


def build_vocab(name: str, values: pa.Array) -> Vocab:
    """Vocabulary of distinct ``values``: index 2.. in ascending order of the raw string."""
    raw = _as_raw(values)
    order = pc.sort_indices(raw)
    return Vocab(name, values.take(order), np.arange(2, 2 + len(values), dtype=np.int64), raw.take(order))


def behavior_vocab(values: list[str]) -> Vocab:
    """Funnel stages at 2..10 (always present), other values from 11 in ascending order."""
    others = sorted(set(values) - set(FUNNEL))
    allv = list(FUNNEL) + others
    arr = pa.array(allv, pa.string())
    return Vocab("behavior", arr, np.arange(2, 2 + len(allv), dtype=np.int64), arr)


def load_vocab(directory: str | Path, name: str, dtype: pa.DataType) -> Vocab:
    """Read ``vocab/<name>.parquet`` of a prepared directory, for lookups of type ``dtype``."""
    path = Path(directory) / "vocab" / f"{name}.parquet"
    try:
        t = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise PrepInputError(f"{path}: cannot read the fixed vocabulary: {exc}") from None
    missing = {"raw", "index"} - set(t.column_names)
    if missing:
        raise PrepInputError(f"{path}: missing column(s) {sorted(missing)}")
    raw = t.column("raw").combine_chunks().cast(pa.string())
    idx = t.column("index").to_numpy().astype(np.int64)
    if len(idx) and idx.min() < 2:
        raise PrepInputError(f"{path}: column 'index': values must be >= 2 (0 and 1 are reserved)")
    if pa.types.is_integer(dtype):
        ok = pc.fill_null(pc.match_substring_regex(raw, r"^-?[0-9]+$"), False)
        keep = np.asarray(ok.to_numpy(zero_copy_only=False))
        values = pc.cast(raw.filter(pa.array(keep)), pa.int64())
        return Vocab(name, values, idx[keep], raw.filter(pa.array(keep)))
    return Vocab(name, raw, idx, raw)


def empty_vocab(name: str, dtype: Optional[pa.DataType] = None) -> Vocab:
    """Vocabulary of an absent column: only padding and unknown."""
    dt = dtype or pa.string()
    return Vocab(name, pa.array([], dt), np.zeros(0, np.int64), pa.array([], pa.string()))
