"""Merge the shard outputs of a sharded ``hytrec-prep`` run into the final ``vocab/`` and ``meta.json``.

Every shard reads the whole input, so the *global* fields of the shard metas (vocab sizes, rows
read, bad-row handling counts from reading, input time range, sources, config) must be identical
and are checked. The *per-partition* fields are summed: ``events_in_partitions``, ``events_out``,
``users_out``, every filter's ``users_removed``/``events_removed``, the ``unknown_ids_as_unknown.*``
handling counts and the vocabulary ``count`` columns; ``time_range`` takes the min/max.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import PrepInputError
from .prepare import TABLES

__all__ = ["merge"]

_GLOBAL = ("schema_version", "num_partitions", "partition_hash", "vocab_sizes", "rows_in", "rows_valid",
           "config", "columns_present", "input_time_range", "sources")
_PARTITIONED_HANDLING = "unknown_ids_as_unknown."


def merge(output: str | Path, extra: list[str | Path] = ()) -> dict:
    """Merge ``output/_shards/*`` (and the shard outputs in ``extra``, whose part files are copied
    into ``output``) into ``output/vocab`` and ``output/meta.json``; returns the merged meta."""
    out = Path(output)
    shard_dirs = sorted((out / "_shards").glob("shard-*-of-*")) if (out / "_shards").exists() else []
    for e in extra:
        e = Path(e)
        for sd in sorted((e / "_shards").glob("shard-*-of-*")):
            dst = out / "_shards" / sd.name
            if dst.resolve() != sd.resolve():
                m = json.loads((sd / "meta.json").read_text())
                (out / "sequences").mkdir(parents=True, exist_ok=True)
                for p in m["shard"]["partitions"]:
                    name = f"part-{p:05d}.parquet"
                    shutil.copyfile(e / "sequences" / name, out / "sequences" / name)
                shutil.copytree(sd, dst, dirs_exist_ok=True)
                shard_dirs.append(dst)
    shard_dirs = sorted(set(shard_dirs))
    if not shard_dirs:
        raise PrepInputError(f"{out}: no shard outputs under _shards/ to merge")
    metas = [json.loads((sd / "meta.json").read_text()) for sd in shard_dirs]
    n = metas[0]["shard"]["count"]
    got = sorted(m["shard"]["index"] for m in metas)
    if got != list(range(n)) or any(m["shard"]["count"] != n for m in metas):
        raise PrepInputError(f"{out}: need shards 0..{n - 1} of {n} exactly once, found {got}")
    first = metas[0]
    for sd, m in zip(shard_dirs, metas):
        for k in _GLOBAL:
            if m[k] != first[k]:
                raise PrepInputError(f"{sd}/meta.json: field {k!r} differs from {shard_dirs[0]} (shards of different runs?)")
        glob_h = {k: v for k, v in m["handling"].items() if not k.startswith(_PARTITIONED_HANDLING)}
        glob_0 = {k: v for k, v in first["handling"].items() if not k.startswith(_PARTITIONED_HANDLING)}
        if glob_h != glob_0:
            raise PrepInputError(f"{sd}/meta.json: handling counts differ from {shard_dirs[0]}")
    merged = {k: first[k] for k in first if k not in ("shard", "timing_s")}
    for k in ("events_in_partitions", "events_out", "users_out"):
        merged[k] = sum(m[k] for m in metas)
    merged["filters"] = [dict(f) for f in first["filters"]]
    for i, f in enumerate(merged["filters"]):
        f["users_removed"] = sum(m["filters"][i]["users_removed"] for m in metas)
        f["events_removed"] = sum(m["filters"][i]["events_removed"] for m in metas)
    handling = dict(first["handling"])
    for m in metas[1:]:
        for k, v in m["handling"].items():
            if k.startswith(_PARTITIONED_HANDLING):
                handling[k] = handling.get(k, 0) + v
    merged["handling"] = dict(sorted(handling.items()))
    ranges = [m["time_range"] for m in metas if m["time_range"]]
    merged["time_range"] = [min(r[0] for r in ranges), max(r[1] for r in ranges)] if ranges else None
    merged["merged_from_shards"] = n
    merged["timing_s"] = {"shards_total": [m["timing_s"]["total"] for m in metas]}
    (out / "vocab").mkdir(parents=True, exist_ok=True)
    for t in TABLES:
        tables = [pq.read_table(sd / "vocab" / f"{t}.parquet") for sd in shard_dirs]
        base = tables[0]
        total = base.column("count")
        for sd, tb in zip(shard_dirs[1:], tables[1:]):
            if not (tb.column("raw").equals(base.column("raw")) and tb.column("index").equals(base.column("index"))):
                raise PrepInputError(f"{sd}/vocab/{t}.parquet: vocabulary differs from {shard_dirs[0]}")
            total = pc.add(total, tb.column("count"))
        pq.write_table(pa.table({"raw": base.column("raw"), "index": base.column("index"), "count": total}), out / "vocab" / f"{t}.parquet")
    for p in range(merged["num_partitions"]):
        if not (out / "sequences" / f"part-{p:05d}.parquet").exists():
            raise PrepInputError(f"{out}/sequences/part-{p:05d}.parquet: missing after merge")
    (out / "meta.json").write_text(json.dumps(merged, indent=2) + "\n")
    return merged
