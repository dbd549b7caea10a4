"""Write small prepared directories (docs/data_format.md) directly from Python, for tests and demos
that must not depend on ``hytrec-prep``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["Sequence", "random_sequences", "write_prepared"]

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
        idx = np.arange(size, dtype=np.int64)
        pq.write_table(pa.table({"raw": [str(i) for i in idx], "index": idx,
                                 "count": np.zeros(size, np.int64)}), root / "vocab" / f"{name}.parquet")
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
