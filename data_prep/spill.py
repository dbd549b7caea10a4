"""Pass 1: stream normalised batches into per-partition Arrow IPC spill files on disk.

Each batch is split by the user's hash partition (stable split, so every spill file keeps input
order) and appended to ``spill_dir/p-PPPPP.arrow``. Only the partitions of this shard are
written, but every row is seen, so the global facts (distinct IDs for the vocabularies, time
range, bad-row counts) are identical in every shard.
"""

from __future__ import annotations

import resource
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .hashing import hash_strings
from .vocab import UniqueCollector

__all__ = ["SpillResult", "spill_schema", "spill_path", "spill_batches"]


def spill_schema(id_types: dict[str, pa.DataType]) -> pa.Schema:
    """Columns of a spill file (behaviour as a provisional int32 code)."""
    return pa.schema(
        [
            ("user_id", id_types["user_id"]),
            ("item_id", id_types["item_id"]),
            ("timestamp", pa.int64()),
            ("behavior", pa.int32()),
            ("attribution_id", id_types["attribution_id"]),
            ("category_id", id_types["category_id"]),
        ]
    )


def spill_path(spill_dir: Path, p: int) -> Path:
    """Spill file of partition ``p``."""
    return spill_dir / f"p-{p:05d}.arrow"


@dataclass
class SpillResult:
    """Global facts gathered while spilling."""

    uniques: dict[str, pa.Array]
    behavior_codes: list[str]  # provisional code -> raw behaviour string
    rows_valid: int
    rows_per_partition: dict[int, int]
    ts_min: int
    ts_max: int
    handling: Counter = field(default_factory=Counter)


def _raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def spill_batches(
    batches: Iterable[pa.RecordBatch],
    id_types: dict[str, pa.DataType],
    num_partitions: int,
    mine: set[int],
    spill_dir: Path,
) -> SpillResult:
    """Write the rows of partitions ``mine`` to spill files; gather global facts from all rows."""
    spill_dir.mkdir(parents=True, exist_ok=True)
    _raise_fd_limit(len(mine))
    schema = spill_schema(id_types)
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    collectors = {c: UniqueCollector(id_types[c]) for c in ("user_id", "item_id", "attribution_id", "category_id")}
    codes: dict[str, int] = {}
    rows_valid = 0
    per_part: Counter = Counter()
    ts_min, ts_max = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    mine_mask = np.zeros(num_partitions, bool)
    mine_mask[list(mine)] = True
    try:
        for rb in batches:
            n = rb.num_rows
            if n == 0:
                continue
            rows_valid += n
            ts = rb.column(2).to_numpy()
            ts_min, ts_max = min(ts_min, int(ts.min())), max(ts_max, int(ts.max()))
            enc = pc.dictionary_encode(rb.column(0))
            collectors["user_id"].add(enc.dictionary)
            for i, c in ((1, "item_id"), (4, "attribution_id"), (5, "category_id")):
                collectors[c].add(rb.column(i))
            # behaviour -> provisional code (few distinct values: a dict over the dictionary)
            beh = rb.column(3)
            if beh.null_count == n:
                code = np.full(n, codes.setdefault("click", len(codes)), np.int32)
            else:
                benc = beh if pa.types.is_dictionary(beh.type) else pc.dictionary_encode(beh)
                ind = benc.indices.to_numpy().astype(np.int64)
                used = np.bincount(ind, minlength=len(benc.dictionary)) > 0  # register used values only
                values = benc.dictionary.to_pylist()
                table = np.array(
                    [codes.setdefault(v, len(codes)) if used[i] else -1 for i, v in enumerate(values)], np.int32
                )
                code = table[ind]
            if num_partitions == 1:
                part = np.zeros(n, np.int64)
            else:
                h = (hash_strings(enc.dictionary) % np.uint64(num_partitions)).astype(np.int64)
                part = h[enc.indices.to_numpy()]
            batch = pa.RecordBatch.from_arrays(
                [rb.column(0), rb.column(1), rb.column(2), pa.array(code, pa.int32()), rb.column(4), rb.column(5)],
                schema=schema,
            )
            if len(mine) != num_partitions:
                sel = mine_mask[part]
                if not sel.all():
                    batch = batch.filter(pa.array(sel))
                    part = part[sel]
            if batch.num_rows == 0:
                continue
            order = np.argsort(part, kind="stable")
            sorted_part = part[order]
            batch = batch.take(pa.array(order))
            bounds = np.flatnonzero(np.diff(sorted_part)) + 1
            starts = np.concatenate([[0], bounds])
            stops = np.concatenate([bounds, [len(sorted_part)]])
            for s, e in zip(starts.tolist(), stops.tolist()):
                p = int(sorted_part[s])
                w = writers.get(p)
                if w is None:
                    w = writers[p] = pa.ipc.new_stream(str(spill_path(spill_dir, p)), schema)
                w.write_batch(batch.slice(s, e - s))
                per_part[p] += e - s
    finally:
        for w in writers.values():
            w.close()
    return SpillResult(
        uniques={c: col.result() for c, col in collectors.items()},
        behavior_codes=sorted(codes, key=codes.__getitem__),
        rows_valid=rows_valid,
        rows_per_partition=dict(per_part),
        ts_min=ts_min if rows_valid else 0,
        ts_max=ts_max if rows_valid else 0,
    )
