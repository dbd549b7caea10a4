"""Examples = (user, cutoff): which cutoff positions each split and stage uses.

For a user with L events (positions 0..L-1) a stage defines a *region* of cutoff positions
``[lo, hi)`` and a *target limit* ``end`` (targets are positions ``c .. min(c + m, end) - 1``):

=====================  =======================  ======================  =================
split / stage          lo                       hi                      end
=====================  =======================  ======================  =================
leave_last_out train   min_history              L - 2                   L - 2
leave_last_out valid   L - 2                    L - 1                   L - 1
leave_last_out test    L - 1                    L                       L
time train             min_history              nb - 1                  nb - 1
time valid             nb - 1                   nb                      nb
time test              nb                       nb + 1                  L
=====================  =======================  ======================  =================

``nb`` = number of the user's events with timestamp < ``split_time``. A user is eligible for a
stage when ``lo >= min_history`` and ``lo < hi``; others are counted (never silently dropped).
With ``train_on_valid`` the training ``hi`` and ``end`` are one larger (L - 1, resp. nb): the
validation event becomes a training target.

Training samples ``k = min(cutoffs_per_user, hi - lo)`` cutoffs per user per epoch (all
positions when ``cutoffs_per_user == 0``), *stratified*: the region is cut into k near-equal
strata ``[lo + floor(j*n/k), lo + floor((j+1)*n/k))`` and stratum j contributes position
``lo + floor(j*n/k) + h % width`` with ``h = key(seed, epoch, user, j)`` (:func:`cutoff_key`).
The draw depends on (seed, epoch, user) only, not on rank, world size or worker.

With ``all_positions`` (every position of a history window is a target, docs/training.md),
training cutoffs are not drawn: they tile the region from its end, ``hi - 1 - j * max_len`` for
``j = 0, 1, …`` while ``>= max(lo, 1)`` (at most ``cutoffs_per_user`` of them when that is > 0). The
window of cutoff ``c`` supervises targets ``max(c - max_len, 0) + 1 .. c``, so the windows cover
every training target exactly once per epoch. With ``supervised_rows`` M > 0 the cutoffs are
``hi - 1 - j * M`` and the window of ``c`` (still up to ``max_len`` events of history) supervises
only its last M targets ``max(c - M, 0) + 1 .. c``: again every target once per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hytrec_torchrec.data.config import DataConfig

__all__ = ["Examples", "StageRegion", "stage_region", "num_examples", "make_examples", "cutoff_key",
           "splitmix64", "window_stride"]

_U64 = np.uint64


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def cutoff_key(seed: int, epoch: int, user: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Counter-based random key for stratum ``j`` of ``user``: uint64 array, broadcast shape.

    key = sm(sm(sm(sm(seed) ^ epoch) ^ user) ^ j), sm = :func:`splitmix64`.
    """
    k = splitmix64(np.array([seed], dtype=np.uint64))
    k = splitmix64(k ^ np.uint64(epoch))
    k = splitmix64(k ^ np.asarray(user).astype(np.uint64))
    return splitmix64(k ^ np.asarray(j).astype(np.uint64))


@dataclass
class StageRegion:
    """Per-user cutoff region of one stage (see module docstring).

    Attributes:
        lo, hi, end: [U] int64.
        eligible: [U] bool, ``lo >= min_history and lo < hi``.
    """

    lo: np.ndarray
    hi: np.ndarray
    end: np.ndarray
    eligible: np.ndarray


def stage_region(cfg: DataConfig, stage: str, length: np.ndarray, n_before: np.ndarray) -> StageRegion:
    """Regions for every user, vectorised.

    Args:
        length: [U] int64 events per user.
        n_before: [U] int64 events before ``split_time`` (ignored for leave_last_out).
    """
    L = np.asarray(length, np.int64)
    pivot = L if cfg.split == "leave_last_out" else np.asarray(n_before, np.int64)
    # leave_last_out: the held-out tail starts at L - 2 (valid) ; time: at nb - 1 (valid)
    tail = pivot - 2 if cfg.split == "leave_last_out" else pivot - 1
    if stage == "train":
        lo = np.full_like(L, cfg.min_history)
        hi = tail + 1 if cfg.train_on_valid else tail
        end = hi
    elif stage == "valid":
        lo, hi, end = tail, tail + 1, tail + 1
    elif stage == "test":
        lo = tail + 1
        hi = lo + 1
        end = L if cfg.split == "time" else lo + 1
    else:
        raise ValueError(f"stage: {stage!r} is not one of ['train', 'valid', 'test']")
    hi = np.minimum(hi, L)
    eligible = (lo >= cfg.min_history) & (lo < hi)
    return StageRegion(lo=lo, hi=hi, end=end, eligible=eligible)


def window_stride(cfg: DataConfig) -> int:
    """Events between consecutive all-position training cutoffs of a user: ``supervised_rows``
    when set, else ``max_len``."""
    return cfg.supervised_rows if cfg.supervised_rows > 0 else cfg.max_len


def num_examples(cfg: DataConfig, region: StageRegion, stage: str) -> np.ndarray:
    """[U] int64 examples per user in one epoch (0 for ineligible users)."""
    n = np.where(region.eligible, region.hi - region.lo, 0)
    if stage == "train" and cfg.all_positions:
        # windows of max_len targets (ceil); position 0 has no history, so targets start at 1
        n = np.where(region.eligible, region.hi - np.maximum(region.lo, 1), 0).clip(min=0)
        n = -(-n // window_stride(cfg))
    if stage == "train" and cfg.cutoffs_per_user > 0:
        n = np.minimum(n, cfg.cutoffs_per_user)
    return n.astype(np.int64)


@dataclass
class Examples:
    """A flat list of examples over one rank's users.

    Attributes:
        row: [E] int64 row in :class:`~hytrec_torchrec.data.reader.RankData`.
        cutoff: [E] int64 target position in the user's full sequence (= untruncated history length).
        target_end: [E] int64 one past the last positive (``cutoff < target_end <= cutoff + m``).
    """

    row: np.ndarray
    cutoff: np.ndarray
    target_end: np.ndarray

    def __len__(self) -> int:
        return int(self.row.shape[0])

    def history_len(self, max_len: int) -> np.ndarray:
        """[E] int64 history length after truncation."""
        return np.minimum(self.cutoff, max_len)


def make_examples(cfg: DataConfig, stage: str, epoch: int, user: np.ndarray, length: np.ndarray,
                  n_before: np.ndarray) -> Examples:
    """All examples of the given users for one epoch, ordered by (row, stratum).

    Args:
        user: [U] int64 dense user ids (row order of RankData).
        length, n_before: [U] int64, as in :class:`~hytrec_torchrec.data.reader.UserIndex`.
    """
    region = stage_region(cfg, stage, length, n_before)
    k = num_examples(cfg, region, stage)
    rows = np.repeat(np.arange(len(user), dtype=np.int64), k)
    j = np.arange(int(k.sum()), dtype=np.int64) - np.repeat(np.cumsum(k) - k, k)
    if stage == "train" and cfg.all_positions:
        cutoff = region.hi[rows] - 1 - j * window_stride(cfg)
        return Examples(row=rows, cutoff=cutoff, target_end=cutoff + 1)
    n = (region.hi - region.lo)[rows]
    kk = k[rows]
    a = j * n // np.maximum(kk, 1)
    b = (j + 1) * n // np.maximum(kk, 1)
    width = np.maximum(b - a, 1)
    if stage == "train":
        h = cutoff_key(cfg.seed, epoch, user[rows], j)
        off = (h % width.astype(np.uint64)).astype(np.int64)
    else:
        off = np.zeros_like(a)
    cutoff = region.lo[rows] + a + off
    target_end = np.minimum(cutoff + cfg.num_targets, region.end[rows])
    return Examples(row=rows, cutoff=cutoff, target_end=target_end)
