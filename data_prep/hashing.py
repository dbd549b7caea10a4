"""The stable user hash that assigns users to partitions (documented in docs/data_prep.md).

``h(raw)`` for the raw user ID as a UTF-8 string (integers in decimal):

1. ``p = sum(b[j] * 1099511628211 ** (n - 1 - j)) mod 2**64`` over the bytes ``b`` of length ``n``
2. ``z = p + n * 0x9E3779B97F4A7C15 mod 2**64``
3. ``z`` goes through the splitmix64 finaliser; partition = ``z mod num_partitions``.

:func:`hash_strings` computes it vectorised over an Arrow string array (no Python loop over
rows); :func:`hash_one` is the plain-Python definition used by the reference implementation and
the tests.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["hash_one", "hash_strings", "partition_of"]

_P = 1099511628211
_GOLD = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1


def _mix_py(z: int) -> int:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
    return z ^ (z >> 31)


def hash_one(raw: str) -> int:
    """Reference (pure Python) hash of one raw ID string."""
    data = raw.encode("utf-8")
    p = 0
    for b in data:
        p = (p * _P + b) & _M64
    return _mix_py((p + len(data) * _GOLD) & _M64)


def _mix_np(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_strings(arr: pa.Array) -> np.ndarray:
    """Vectorised :func:`hash_one` of every value of a non-null Arrow string (or int) array."""
    if not pa.types.is_string(arr.type):
        arr = pc.cast(arr, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.uint64)
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    start, stop = offsets[0], offsets[-1]
    data = data[start:stop].astype(np.uint64)
    offsets = offsets - start
    lengths = np.diff(offsets)
    # exponent of each byte = number of bytes after it in its own string
    ends = np.repeat(offsets[1:], lengths)
    expo = ends - 1 - np.arange(len(data), dtype=np.int64)
    maxlen = int(lengths.max()) if n else 0
    powers = np.ones(max(maxlen, 1), np.uint64)
    with np.errstate(over="ignore"):
        for i in range(1, maxlen):
            powers[i] = powers[i - 1] * np.uint64(_P)
        contrib = data * powers[expo] if len(data) else data
        csum = np.concatenate([np.zeros(1, np.uint64), np.cumsum(contrib, dtype=np.uint64)])
        p = csum[offsets[1:]] - csum[offsets[:-1]]
        z = p + lengths.astype(np.uint64) * np.uint64(_GOLD)
        return _mix_np(z)


def partition_of(arr: pa.Array, num_partitions: int) -> np.ndarray:
    """Partition (int64 in ``[0, num_partitions)``) of each raw user ID.

    The hash is computed once per distinct value of the batch (dictionary encoding) and spread.
    """
    if num_partitions == 1:
        return np.zeros(len(arr), np.int64)
    enc = pc.dictionary_encode(arr)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    h = hash_strings(enc.dictionary) % np.uint64(num_partitions)
    return h.astype(np.int64)[enc.indices.to_numpy()]
