"""Write small prepared directories (docs/data_format.md) directly from Python, for tests and demos
that must not depend on ``hytrec-prep``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["Sequence", "random_sequences", "write_prepared", "power_law_arrays", "write_prepared_arrays"]

#: one user's events: {"item": [...], "attribution": [...], "category": [...], "behavior": [...],
#: "timestamp": [...]}, all lists of equal length, sorted by timestamp.
Sequence = dict[str, list[int]]


def random_sequences(num_users: int, max_events: int, num_items: int, seed: int = 0,
                     min_events: int = 1) -> dict[int, Sequence]:
    """Random users 2..num_users+1 with log-uniform lengths and sorted timestamps (ties included)."""
    rng = np.random.default_rng(seed)
    out: dict[int, Sequence] = {}
    for u in range(2, num_users + 2):
        n = int(np.exp(rng.uniform(np.log(min_events), np.log(max_events + 1))))
        n = max(min_events, min(n, max_events))
        ts = np.sort(rng.integers(1_000_000, 1_000_000 + 50 * n + 10, size=n))
        out[u] = {
            "item": rng.integers(1, num_items, size=n).tolist(),
            "attribution": rng.integers(1, 7, size=n).tolist(),
            "category": rng.integers(1, 5, size=n).tolist(),
            "behavior": rng.integers(2, 11, size=n).tolist(),
            "timestamp": ts.tolist(),
        }
    return out


def write_prepared(root: str | Path, users: dict[int, Sequence], num_items: int,
                   num_partitions: int = 3, meta_overrides: Optional[dict[str, Any]] = None) -> Path:
    """Write ``users`` as a prepared directory; users go to partition ``user % num_partitions``.

    Vocabularies are synthetic (raw = str(index)); ``num_items`` is the item vocab size.
    """
    root = Path(root)
    (root / "vocab").mkdir(parents=True, exist_ok=True)
    (root / "sequences").mkdir(parents=True, exist_ok=True)
    sizes = {"item": num_items, "attribution": 7, "category": 5, "behavior": 11,
             "user": max(users) + 1 if users else 2}
    for name, size in sizes.items():
        idx = np.arange(2, size, dtype=np.int64)  # files list known IDs only (index >= 2)
        pq.write_table(pa.table({"raw": [str(i) for i in idx], "index": idx,
                                 "count": np.zeros(len(idx), np.int64)}), root / "vocab" / f"{name}.parquet")
    lt = pa.list_(pa.int64())
    for p in range(num_partitions):
        ids = sorted(u for u in users if u % num_partitions == p)
        cols: dict[str, Any] = {"user": pa.array(ids, pa.int64())}
        for c in ("item", "attribution", "category", "behavior", "timestamp"):
            cols[c] = pa.array([users[u][c] for u in ids], lt)
        pq.write_table(pa.table(cols), root / "sequences" / f"part-{p:05d}.parquet")
    events = sum(len(s["item"]) for s in users.values())
    meta: dict[str, Any] = {
        "schema_version": 1, "num_partitions": num_partitions, "vocab_sizes": sizes,
        "rows_in": events, "events_out": events, "users_out": len(users), "filters": [],
        "handling": {}, "config": {}, "sources": ["hytrec_torchrec.data.testing"],
    }
    meta.update(meta_overrides or {})
    (root / "meta.json").write_text(json.dumps(meta, indent=2))
    return root


def power_law_arrays(num_users: int, max_events: int, num_items: int, seed: int = 0,
                     alpha: float = 1.2, min_events: int = 3) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Vectorised random data for benchmarks: Pareto-like lengths in [min_events, max_events].

    Returns:
        offsets [U+1] int64 and columns {name: [N] int64} (item, attribution, category, behavior,
        timestamp), users are 2..U+1 in offsets order.
    """
    rng = np.random.default_rng(seed)
    u = rng.uniform(size=num_users)
    lengths = np.minimum((min_events * u ** (-1.0 / alpha)).astype(np.int64), max_events)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    cum = np.cumsum(rng.integers(0, 600, size=n))  # gaps of 0..599 s, restarted per user
    ts = 1_600_000_000 + cum - np.repeat(cum[offsets[:-1]], lengths)
    cols = {
        "item": rng.integers(2, num_items, size=n),
        "attribution": rng.integers(1, 7, size=n),
        "category": rng.integers(1, 5, size=n),
        "behavior": rng.integers(2, 11, size=n),
        "timestamp": ts.astype(np.int64),
    }
    return offsets, cols


def write_prepared_arrays(root: str | Path, offsets: np.ndarray, columns: dict[str, np.ndarray],
                          num_items: int, num_partitions: int = 4, num_categories: int = 5) -> Path:
    """Like :func:`write_prepared` for flat arrays (users 2..U+1; user u -> partition u % P);
    ``num_categories``: rows of the category vocabulary (its indices < that)."""
    root = Path(root)
    (root / "vocab").mkdir(parents=True, exist_ok=True)
    (root / "sequences").mkdir(parents=True, exist_ok=True)
    U = len(offsets) - 1
    users = np.arange(2, U + 2, dtype=np.int64)
    sizes = {"item": num_items, "attribution": 7, "category": num_categories, "behavior": 11, "user": U + 2}
    for name, size in sizes.items():
        idx = np.arange(2, size, dtype=np.int64)  # files list known IDs only (index >= 2)
        pq.write_table(pa.table({"raw": idx.astype(str), "index": idx,
                                 "count": np.zeros(len(idx), np.int64)}), root / "vocab" / f"{name}.parquet")
    lengths = np.diff(offsets)
    for p in range(num_partitions):
        rows = np.flatnonzero(users % num_partitions == p)
        sub = np.concatenate([[0], np.cumsum(lengths[rows])]).astype(np.int64)
        idx = np.repeat(offsets[rows] - sub[:-1], lengths[rows]) + np.arange(int(sub[-1]))
        cols: dict[str, Any] = {"user": pa.array(users[rows])}
        for c in ("item", "attribution", "category", "behavior", "timestamp"):
            cols[c] = pa.ListArray.from_arrays(pa.array(sub, pa.int32()), pa.array(columns[c][idx]))
        pq.write_table(pa.table(cols), root / "sequences" / f"part-{p:05d}.parquet")
    meta = {"schema_version": 1, "num_partitions": num_partitions, "vocab_sizes": sizes,
            "rows_in": int(offsets[-1]), "events_out": int(offsets[-1]), "users_out": U, "filters": [],
            "handling": {}, "config": {}, "sources": ["hytrec_torchrec.data.testing.power_law_arrays"]}
    (root / "meta.json").write_text(json.dumps(meta, indent=2))
    return root
