"""User segments for offline evaluation (docs/design.md §6): which segments each evaluation example is in.

Every example (user, cutoff) is in segment ``all`` and in zero or more of:

* ``cold_start``: the user's history before the cutoff has at most ``cold_start_max_history``
  events (the *untruncated* history, ``Batch.cutoff``);
* ``silent_old``: registered long ago and silent long before the cutoff — the first event is at
  least ``silent_old_min_age_days`` before ``t_current`` and the last history event at least
  ``silent_old_min_gap_days`` before it (an empty history is never silent-old);
* ``ultra_long``: at least ``ultra_long_min_history`` history events (untruncated);
* one history-length bucket ``len[a,b)`` per consecutive pair of ``length_buckets`` edges (the
  last one open, ``len[a,inf)``); lengths below the first edge are in no bucket;
* ``<column>=<value>`` for each column of an optional Parquet side file (``user_id`` → value):
  user-level attributes such as country or acquisition channel.

Side file rules (docs/design.md §7): the user column must exist and be unique (error naming the file and
the first duplicate); raw user IDs are matched to the prepared ``vocab/user.parquet`` as strings;
side-file users absent from the vocabulary are **counted** (``unknown_users``, with examples) and
otherwise ignored; evaluated users absent from the side file are counted per column
(``users_missing``) and are in no value segment of that column.

Example::

    cfg = SegmentConfig(cold_start_max_history=5, length_buckets=[1, 10, 100])
    seg = Segmenter(cfg, prepared_dir)
    member = seg.membership(batch)        # [B, len(seg.names)] bool
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from hytrec_torchrec.config import ConfigError, check_range

__all__ = ["SegmentConfig", "Segmenter", "SideFileError", "segment_flags"]

DAY = 86400.0


class SideFileError(ValueError):
    """The segment side file is unreadable or malformed (message names the file and field)."""


@dataclass
class SegmentConfig:
    """Segment thresholds (``segments.*`` keys of the evaluation config).

    Attributes:
        cold_start_max_history: cold-start = at most this many history events before the cutoff.
        silent_old_min_age_days: silent-old needs the first event at least this long before
            ``t_current`` ...
        silent_old_min_gap_days: ... and the last history event at least this long before it.
        ultra_long_min_history: ultra-long = at least this many history events.
        length_buckets: increasing bucket edges of the history length (untruncated).
        side_file: optional Parquet file with a user column and user-level segment columns.
        side_user_column: name of the user column in the side file (raw user IDs).
        side_columns: columns used as segments (``None``: every column except the user column).
        max_side_values: a side column with more distinct values than this is an error (a typo
            such as a per-user column would otherwise create thousands of segments).
    """

    cold_start_max_history: int = 5
    silent_old_min_age_days: float = 180.0
    silent_old_min_gap_days: float = 30.0
    ultra_long_min_history: int = 1000
    length_buckets: List[int] = field(default_factory=lambda: [1, 10, 20, 50, 100, 200, 500, 1000, 5000])
    side_file: Optional[str] = None
    side_user_column: str = "user_id"
    side_columns: Optional[List[str]] = None
    max_side_values: int = 50

    def validate(self) -> None:
        check_range("cold_start_max_history", self.cold_start_max_history, 0)
        check_range("silent_old_min_age_days", self.silent_old_min_age_days, 0.0)
        check_range("silent_old_min_gap_days", self.silent_old_min_gap_days, 0.0)
        check_range("ultra_long_min_history", self.ultra_long_min_history, 1)
        if not self.length_buckets:
            raise ConfigError("length_buckets: at least one edge is required")
        for i, e in enumerate(self.length_buckets):
            check_range(f"length_buckets[{i}]", e, 0)
        if any(b <= a for a, b in zip(self.length_buckets, self.length_buckets[1:])):
            raise ConfigError(f"length_buckets: {self.length_buckets} must be strictly increasing")
        if not self.side_user_column:
            raise ConfigError("side_user_column: must not be empty")
        check_range("max_side_values", self.max_side_values, 1)

    def bucket_names(self) -> List[str]:
        return length_bucket_names(self.length_buckets)


def length_bucket_names(edges: Sequence[int]) -> List[str]:
    """``len[a,b)`` for each consecutive pair of ``edges``, the last one open (``len[a,inf)``)."""
    e = list(edges)
    return [f"len[{a},{b})" for a, b in zip(e, e[1:])] + [f"len[{e[-1]},inf)"]


def segment_flags(cfg: SegmentConfig, history_len: torch.Tensor, age_s: torch.Tensor,
                  gap_s: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Built-in segment membership from per-example quantities (all [B]).

    Args:
        history_len: untruncated history length (events before the cutoff).
        age_s: ``t_current`` − first event time, seconds.
        gap_s: ``t_current`` − last history event time, seconds (ignored where history_len = 0).
    Returns:
        ``{name: [B] bool}`` for ``all``, ``cold_start``, ``silent_old``, ``ultra_long`` and the
        length buckets, in :meth:`Segmenter.names` order.
    """
    h = history_len.to(torch.int64)
    out = {
        "all": torch.ones_like(h, dtype=torch.bool),
        "cold_start": h <= cfg.cold_start_max_history,
        "silent_old": (h > 0) & (age_s.double() >= cfg.silent_old_min_age_days * DAY)
        & (gap_s.double() >= cfg.silent_old_min_gap_days * DAY),
        "ultra_long": h >= cfg.ultra_long_min_history,
    }
    edges = list(cfg.length_buckets) + [math.inf]
    for name, lo, hi in zip(cfg.bucket_names(), edges, edges[1:]):
        out[name] = (h >= lo) & (h < hi) if hi != math.inf else h >= lo
    return out


class Segmenter:
    """Segment names and per-batch membership for one prepared dataset.

    Args:
        cfg: thresholds and the optional side file.
        data_path: the prepared directory (its ``vocab/user.parquet`` maps side-file user IDs).
    Attributes:
        names: every segment name, fixed before evaluation (identical on every rank).
        side_counts: side-file handling counts (``rows``, ``unknown_users``, examples, ...).
    """

    BUILTIN = ("all", "cold_start", "silent_old", "ultra_long")

    def __init__(self, cfg: SegmentConfig, data_path: str | Path) -> None:
        self.cfg = cfg
        self.names: List[str] = list(self.BUILTIN) + cfg.bucket_names()
        self.side_counts: Dict[str, Any] = {}
        # per side column: dense user index -> value code (-1 = missing); value names
        self._side: List[tuple[str, np.ndarray, List[str]]] = []
        if cfg.side_file:
            self._load_side(Path(cfg.side_file), Path(data_path))

    # ------------------------------------------------------------------ side file
    def _load_side(self, path: Path, data_path: Path) -> None:
        if not path.is_file():
            raise SideFileError(f"{path}: segment side file not found")
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise SideFileError(f"{path}: not a readable Parquet file: {exc}") from exc
        ucol = self.cfg.side_user_column
        if ucol not in table.column_names:
            raise SideFileError(f"{path}: no user column {ucol!r} (columns: {table.column_names}); "
                                "set segments.side_user_column")
        cols = self.cfg.side_columns
        if cols is None:
            cols = [c for c in table.column_names if c != ucol]
        for c in cols:
            if c not in table.column_names or c == ucol:
                raise SideFileError(f"{path}: segment column {c!r} not found (columns: {table.column_names})")
        if not cols:
            raise SideFileError(f"{path}: no segment columns besides {ucol!r}")
        users = table.column(ucol)
        if users.null_count:
            row = int(np.flatnonzero(pc.is_null(users).to_numpy(zero_copy_only=False))[0])
            raise SideFileError(f"{path}: row {row}: {ucol} is null")
        raw = [str(u) for u in users.to_pylist()]
        seen: Dict[str, int] = {}
        for i, u in enumerate(raw):
            if u in seen:
                raise SideFileError(f"{path}: row {i}: duplicate {ucol} {u!r} (first at row {seen[u]})")
            seen[u] = i
        vocab = pq.read_table(data_path / "vocab" / "user.parquet", columns=["raw", "index"])
        vraw = [str(r) for r in vocab.column("raw").to_pylist()]
        vidx = vocab.column("index").to_numpy()
        index_of = dict(zip(vraw, vidx.tolist()))
        size = int(vidx.max()) + 1 if len(vidx) else 2
        dense = np.array([index_of.get(u, -1) for u in raw], dtype=np.int64)
        unknown = [u for u, d in zip(raw, dense) if d < 0]
        known = dense >= 0
        self.side_counts = {
            "file": str(path),
            "rows": len(raw),
            "unknown_users": len(unknown),
            "unknown_examples": unknown[:5],
            "columns": {},
        }
        for c in cols:
            values = table.column(c).cast(pa.string()).to_pylist()
            names = sorted({v for v, k in zip(values, known) if k and v is not None})
            if len(names) > self.cfg.max_side_values:
                raise SideFileError(
                    f"{path}: column {c!r} has {len(names)} distinct values (> segments.max_side_values="
                    f"{self.cfg.max_side_values}); is it a user-level segment column?")
            code_of = {v: i for i, v in enumerate(names)}
            codes = np.full(size, -1, dtype=np.int64)
            for d, v in zip(dense, values):
                if d >= 0 and v is not None:
                    codes[d] = code_of[v]
            self._side.append((c, codes, names))
            self.names += [f"{c}={v}" for v in names]
            self.side_counts["columns"][c] = {"values": len(names), "null_values": sum(v is None for v in values)}
        self._missing = {c: 0 for c, _, _ in self._side}

    # ------------------------------------------------------------------ membership
    def membership(self, batch: Any) -> torch.Tensor:
        """[B, len(names)] bool membership of each example of ``batch`` (padding included)."""
        lens = batch.history_lengths()
        offsets = batch.history_offsets()
        ts = batch.timestamps
        last = torch.where(lens > 0, ts[(offsets[1:] - 1).clamp(min=0)] if ts.numel() else batch.t_current,
                           batch.first_event_time)
        flags = segment_flags(self.cfg, batch.cutoff, batch.t_current - batch.first_event_time,
                              batch.t_current - last)
        cols = [flags[n] for n in self.BUILTIN] + [flags[n] for n in self.cfg.bucket_names()]
        if self._side:
            users = batch.user.cpu().numpy()
            valid = batch.valid.cpu().numpy()
            for c, codes, names in self._side:
                code = np.where((users >= 0) & (users < len(codes)), codes[np.clip(users, 0, len(codes) - 1)], -1)
                self._missing[c] += int(((code < 0) & valid).sum())
                code_t = torch.from_numpy(code)
                for i in range(len(names)):
                    cols.append(code_t == i)
        return torch.stack([c.to(torch.bool).cpu() for c in cols], dim=1)

    def missing_counts(self) -> Dict[str, int]:
        """Evaluated examples (this rank) whose user has no value in each side column."""
        return dict(getattr(self, "_missing", {}))
