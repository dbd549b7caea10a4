"""Build one :class:`Batch` from flat rank data with numpy offsets arithmetic (no per-event loop)."""

from __future__ import annotations

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from hytrec_torchrec.data.batch import FEATURE_KEYS, Batch
from hytrec_torchrec.data.reader import RankData, segment_ranges

__all__ = ["build_batch", "sample_negatives"]


def sample_negatives(rng: np.random.Generator, num: int, item_vocab_size: int) -> np.ndarray:
    """[num] int64 uniform over known item indices ``2 .. item_vocab_size - 1``."""
    if num == 0:
        return np.zeros(0, np.int64)
    if item_vocab_size <= 2:
        raise ValueError("cannot sample negatives: the item vocabulary has no known items")
    return rng.integers(2, item_vocab_size, size=num, dtype=np.int64)


def build_batch(data: RankData, row: np.ndarray, cutoff: np.ndarray, target_end: np.ndarray,
                negatives: np.ndarray, max_len: int, valid: np.ndarray) -> Batch:
    """Gather histories and targets of B examples.

    Args:
        data: the rank's sequences.
        row: [B] int64 rows in ``data``.
        cutoff: [B] int64 target positions; history = positions
            ``max(0, cutoff - max_len) .. cutoff - 1``.
        target_end: [B] int64; targets = positions ``cutoff .. target_end - 1``.
        negatives: [R] int64 item indices shared by the batch.
        max_len: history truncation.
        valid: [B] bool.
    """
    B = len(row)
    base = data.offsets[row]
    start = np.maximum(cutoff - max_len, 0)
    hist_len = cutoff - start
    hidx = segment_ranges(base + start, hist_len)
    hist = np.take(data.features, hidx, axis=1)  # [4, N], row-major = KJT key-major order
    tgt_len = target_end - cutoff
    tgt = np.take(data.features[0], segment_ranges(base + cutoff, tgt_len))
    neg_len = np.zeros(B, np.int64)
    if B:
        neg_len[0] = len(negatives)
    values = np.concatenate([hist.reshape(-1), tgt, negatives])
    lengths = np.concatenate([hist_len, hist_len, hist_len, hist_len, tgt_len, neg_len]).astype(np.int32)
    features = KeyedJaggedTensor(
        keys=list(FEATURE_KEYS),
        values=torch.from_numpy(values),
        lengths=torch.from_numpy(lengths),
        stride=B,
    )
    return Batch(
        features=features,
        timestamps=torch.from_numpy(np.take(data.timestamps, hidx)),
        t_current=torch.from_numpy(np.take(data.timestamps, base + cutoff)),
        user=torch.from_numpy(data.user[row].copy()),
        cutoff=torch.from_numpy(np.ascontiguousarray(cutoff, dtype=np.int64)),
        first_event_time=torch.from_numpy(np.take(data.timestamps, base)),
        valid=torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)),
    )
