"""Read a prepared directory (docs/data_format.md, schema version 1) into flat numpy arrays.

Two passes, both vectorised:

1. :func:`read_index` reads only the ``user`` and ``timestamp`` columns of every partition file
   and returns one row per user (length, events before ``split_time``). Every rank runs it, so
   every rank knows every rank's example counts without communication.
2. :func:`read_users` reads all columns, but keeps only the requested users (one rank's share).

Every malformed input raises :class:`DatasetFormatError` naming the file (and the column/row).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hytrec_torchrec.outputs import incomplete_reason
from hytrec_torchrec.schema import TABLES, TIMESTAMP, VOCABS

__all__ = [
    "vocab_fingerprint",
    "pairs_fingerprint",
    "SCHEMA_VERSION",
    "FEATURES",
    "DatasetFormatError",
    "PreparedMeta",
    "UserIndex",
    "RankData",
    "read_meta",
    "read_index",
    "read_users",
]

SCHEMA_VERSION = 1
#: history feature columns, in KJT key order.
FEATURES = TABLES  # the ID columns of a prepared row, in table order
_LIST_COLUMNS = FEATURES + (TIMESTAMP,)


class DatasetFormatError(ValueError):
    """The prepared directory does not follow docs/data_format.md; the message names the file."""


@dataclass(frozen=True)
class PreparedMeta:
    """Parsed ``meta.json``.

    Attributes:
        root: the prepared directory.
        num_partitions: number of ``sequences/part-*.parquet`` files.
        vocab_sizes: table name -> vocab size (max index + 1, includes padding 0 and unknown 1).
        raw: the whole parsed JSON object.
    """

    root: Path
    num_partitions: int
    vocab_sizes: dict[str, int]
    raw: dict[str, Any]

    def partition_files(self) -> list[Path]:
        """Paths of the partition files, in partition order; each must exist."""
        files = [self.root / "sequences" / f"part-{i:05d}.parquet" for i in range(self.num_partitions)]
        for f in files:
            if not f.is_file():
                raise DatasetFormatError(f"{f}: partition file missing (meta.json says "
                                         f"num_partitions={self.num_partitions})")
        return files


def pairs_fingerprint(raw: Iterable[Any], index: Iterable[int]) -> str:
    """SHA-256 of a vocabulary given as its ``raw`` IDs (as text) and their row ``index``, in order:
    the hash of :func:`vocab_fingerprint`, also computed over an export's ``vocab/<table>.json``."""
    h = hashlib.sha256()
    for r, idx in zip(raw, index):
        h.update(f"{r}\t{int(idx)}\n".encode())
    return h.hexdigest()


def vocab_fingerprint(root: str | Path, table: str) -> str:
    """SHA-256 of a prepared table's vocabulary (every ``raw → index`` pair, in file order), or
    ``"absent"`` when ``vocab/<table>.parquet`` does not exist. Two datasets with equal
    fingerprints map every raw ID to the same row."""
    path = Path(root) / "vocab" / f"{table}.parquet"
    if not path.is_file():
        return "absent"
    t = pq.read_table(path, columns=["raw", "index"])
    return pairs_fingerprint(t.column("raw").cast(pa.string()).to_pylist(), t.column("index").to_pylist())


def read_meta(root: str | Path) -> PreparedMeta:
    """Read and check ``ROOT/meta.json``.

    Raises:
        DatasetFormatError: missing directory/file, invalid JSON, wrong schema version, missing
            or ill-typed ``num_partitions`` / ``vocab_sizes``; the message names the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: prepared dataset directory not found")
    unfinished = incomplete_reason(root, "hytrec-prep")  # an interrupted run's folder, or unmerged shards
    if unfinished:
        raise DatasetFormatError(unfinished)
    path = root / "meta.json"
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing (is {root} a directory written by hytrec-prep?)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{path}: top level must be a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetFormatError(
            f"{path}: schema_version is {version!r}, this loader reads schema_version "
            f"{SCHEMA_VERSION} (re-run hytrec-prep or upgrade hytrec_torchrec)"
        )
    nparts = raw.get("num_partitions")
    if isinstance(nparts, bool) or not isinstance(nparts, int) or nparts < 1:
        raise DatasetFormatError(f"{path}: num_partitions must be a positive integer, got {nparts!r}")
    sizes = raw.get("vocab_sizes")
    if not isinstance(sizes, dict):
        raise DatasetFormatError(f"{path}: vocab_sizes must be an object")
    for name in VOCABS:
        v = sizes.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise DatasetFormatError(f"{path}: vocab_sizes.{name} must be an integer >= 2, got {v!r}")
    return PreparedMeta(root=root, num_partitions=nparts,
                        vocab_sizes={k: int(sizes[k]) for k in VOCABS}, raw=raw)


@dataclass
class UserIndex:
    """One row per user of the whole dataset, sorted by ``user``.

    Attributes:
        user: [U] int64 dense user index.
        length: [U] int64 number of events.
        n_before: [U] int64 events with timestamp < split_time (== length when no split_time).
    """

    user: np.ndarray
    length: np.ndarray
    n_before: np.ndarray

    @property
    def num_users(self) -> int:
        return int(self.user.shape[0])

    @property
    def num_events(self) -> int:
        return int(self.length.sum())


@dataclass
class RankData:
    """The sequences of a set of users, flat, sorted by ``user``.

    Attributes:
        user: [U] int64 dense user index.
        offsets: [U+1] int64; user i's events are ``offsets[i]:offsets[i+1]``.
        features: [4, N] int64 rows item, attribution, category, behavior (FEATURES order).
        timestamps: [N] int64 seconds.
    """

    user: np.ndarray
    offsets: np.ndarray
    features: np.ndarray
    timestamps: np.ndarray

    def __post_init__(self) -> None:
        self.features = np.ascontiguousarray(self.features, dtype=np.int64)
        self.timestamps = np.ascontiguousarray(self.timestamps, dtype=np.int64)

    @property
    def num_users(self) -> int:
        return int(self.user.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        """[U] int64 events per user."""
        return np.diff(self.offsets)


def _open(path: Path, columns: list[str]) -> pa.Table:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetFormatError(f"{path}: not a readable Parquet file: {exc}") from exc
    for col in columns:
        if col not in schema.names:
            raise DatasetFormatError(f"{path}: column {col!r} missing (has {schema.names})")
        tp = schema.field(col).type
        if col == "user":
            ok = pa.types.is_integer(tp)
        else:
            ok = (pa.types.is_list(tp) or pa.types.is_large_list(tp)) and pa.types.is_integer(tp.value_type)
        if not ok:
            want = "int64" if col == "user" else "list<int64>"
            raise DatasetFormatError(f"{path}: column {col!r} has type {tp}, expected {want}")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetFormatError(f"{path}: cannot read columns {columns}: {exc}") from exc


def _flat(path: Path, table: pa.Table, col: str) -> tuple[np.ndarray, np.ndarray]:
    """List column -> (offsets [R+1] int64 starting at 0, values [N] int64); rejects nulls."""
    arr = table.column(col).combine_chunks()
    if arr.null_count:
        row = int(np.flatnonzero(np.asarray(arr.is_null()))[0])
        raise DatasetFormatError(f"{path}: column {col!r} row {row} is null")
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    values = arr.flatten()
    if values.null_count:
        raise DatasetFormatError(f"{path}: column {col!r} contains null elements")
    offsets = offsets - offsets[0]
    return offsets, np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)


def _users(path: Path, table: pa.Table) -> np.ndarray:
    col = table.column("user")
    if col.null_count:
        raise DatasetFormatError(f"{path}: column 'user' has null rows")
    return np.asarray(col.to_numpy(), dtype=np.int64)


def read_index(meta: PreparedMeta, split_time: Optional[int] = None) -> UserIndex:
    """Pass 1: per-user lengths (and events before ``split_time``) over all partitions.

    Checks: every row has >= 1 event, timestamps sorted within each row, no user twice.
    """
    users, lengths, before = [], [], []
    for path in meta.partition_files():
        table = _open(path, ["user", "timestamp"])
        u = _users(path, table)
        off, ts = _flat(path, table, "timestamp")
        n = np.diff(off)
        if n.size and n.min() < 1:
            row = int(np.argmin(n))
            raise DatasetFormatError(f"{path}: row {row} (user {u[row]}) has an empty sequence")
        _check_sorted(path, off, ts)
        if split_time is None:
            nb = n
        else:
            # events before split_time per row: cumulative count read at the row ends.
            cum = np.concatenate([[0], np.cumsum(ts < split_time)])
            nb = cum[off[1:]] - cum[off[:-1]]
        users.append(u)
        lengths.append(n)
        before.append(nb)
    user = np.concatenate(users) if users else np.zeros(0, np.int64)
    order = np.argsort(user, kind="stable")
    user = user[order]
    if user.size > 1 and np.any(user[1:] == user[:-1]):
        dup = int(user[1:][user[1:] == user[:-1]][0])
        raise DatasetFormatError(f"{meta.root / 'sequences'}: user {dup} appears in more than one row")
    return UserIndex(user=user, length=np.concatenate(lengths)[order].astype(np.int64),
                     n_before=np.concatenate(before)[order].astype(np.int64))


def _check_sorted(path: Path, off: np.ndarray, ts: np.ndarray) -> None:
    if ts.size < 2:
        return
    bad = np.diff(ts) < 0
    bad[off[1:-1] - 1] = False  # a decrease across a row boundary is fine
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        row = int(np.searchsorted(off, pos, side="right") - 1)
        raise DatasetFormatError(f"{path}: row {row}: column 'timestamp' is not sorted ascending")


def read_users(meta: PreparedMeta, keep: np.ndarray) -> RankData:
    """Pass 2: all columns of the users in ``keep`` ([K] int64 dense user indices).

    Checks: the list columns of a row have equal lengths; indices lie in ``[0, vocab size)``.
    """
    keep = np.unique(keep)
    parts_user, parts_off, parts_feat, parts_ts = [], [], [], []
    for path in meta.partition_files():
        table = _open(path, ["user", *_LIST_COLUMNS])
        u = _users(path, table)
        rows = np.flatnonzero(np.isin(u, keep))
        if rows.size == 0:
            continue
        if rows.size < len(u):
            table = table.take(pa.array(rows))
            u = u[rows]
        off, ts = _flat(path, table, "timestamp")
        feats = []
        for name in FEATURES:
            o, v = _flat(path, table, name)
            if not np.array_equal(o, off):
                row = int(np.flatnonzero(o != off)[0]) - 1
                raise DatasetFormatError(f"{path}: row {max(row, 0)}: column {name!r} length differs "
                                         "from column 'timestamp'")
            size = meta.vocab_sizes[name]
            if v.size and (v.min() < 0 or v.max() >= size):
                pos = int(np.flatnonzero((v < 0) | (v >= size))[0])
                row = int(np.searchsorted(off, pos, side="right") - 1)
                raise DatasetFormatError(f"{path}: row {row}: column {name!r} value {v[pos]} outside "
                                         f"[0, {size}) (vocab_sizes.{name} in meta.json)")
            feats.append(v)
        parts_user.append(u)
        parts_off.append(off)
        parts_feat.append(np.stack(feats))
        parts_ts.append(ts)
    return _concat_sorted(parts_user, parts_off, parts_feat, parts_ts)


def _concat_sorted(users: list[np.ndarray], offs: list[np.ndarray], feats: list[np.ndarray],
                   tss: list[np.ndarray]) -> RankData:
    """Concatenate per-file pieces and reorder rows by user (vectorised segment gather)."""
    if not users:
        return RankData(np.zeros(0, np.int64), np.zeros(1, np.int64),
                        np.zeros((len(FEATURES), 0), np.int64), np.zeros(0, np.int64))
    user = np.concatenate(users)
    lengths = np.concatenate([np.diff(o) for o in offs])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    features = np.concatenate(feats, axis=1)
    timestamps = np.concatenate(tss)
    order = np.argsort(user, kind="stable")
    if np.array_equal(order, np.arange(len(user))):
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return RankData(user, offsets, features, timestamps)
    idx = segment_ranges(starts[order], lengths[order])
    offsets = np.concatenate([[0], np.cumsum(lengths[order])]).astype(np.int64)
    # np.take keeps the [4, N] array C-contiguous (fancy indexing on axis 1 would return F order,
    # which makes every later gather ~20x slower).
    return RankData(user[order], offsets, np.take(features, idx, axis=1), timestamps[idx])


def segment_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each pair, without a Python loop.

    Args:
        starts: [K] int64 first index of each segment.
        lengths: [K] int64 (>= 0) segment lengths.
    Returns:
        [sum(lengths)] int64 indices.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    seg_start_in_out = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, np.int64) - seg_start_in_out, lengths) + np.arange(total, dtype=np.int64)
