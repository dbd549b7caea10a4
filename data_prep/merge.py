"""Merge the shard outputs of a sharded ``hytrec-prep`` run into one prepared dataset.

Every shard reads the whole input, so the *global* fields of the shard metas (vocab sizes, rows
read, bad-row handling counts from reading, input time range, sources, config) must be identical
and are checked. The *per-partition* fields are summed: ``events_in_partitions``, ``events_out``,
``users_out``, every filter's ``users_removed``/``events_removed``, the ``unknown_ids_as_unknown.*``
handling counts and the vocabulary ``count`` columns; ``time_range`` takes the min/max.

Everything is read and checked before anything is written; the dataset is then written beside
OUTPUT and renamed onto it under OUTPUT's lock (hytrec_torchrec/outputs.py), so a merge that fails
leaves OUTPUT as it was. The shard folders of other outputs (``extra``) are inputs, only read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hytrec_torchrec.outputs import (
    FOREIGN,
    LOCK_SUFFIX,
    OURS,
    OutputError,
    OutputLock,
    check_apart,
    check_replaceable,
    classify,
    clear_stale_siblings,
    parents_made,
    staged_dir,
)

from .errors import PrepInputError
from .prepare import TABLES, TOOL, is_shard_output, prep_kind

__all__ = ["merge"]

_GLOBAL = ("schema_version", "num_partitions", "partition_hash", "vocab_sizes", "rows_in", "rows_valid",
           "config", "columns_present", "input_time_range", "sources")
_PARTITIONED_HANDLING = "unknown_ids_as_unknown."


def _shard_dirs(folder: Path) -> list[Path]:
    """The complete shard outputs under ``folder/_shards`` (a folder of shard outputs); a live
    shard run (its lock), a link or an unfinished shard is refused."""
    if prep_kind(folder) != "shards":
        raise PrepInputError(f"{folder}: not a folder of hytrec-prep shard outputs (hytrec-prep IN {folder} "
                             "--shard I/N writes one)")
    shards = folder / "_shards"
    found = []
    for entry in sorted(os.scandir(shards), key=lambda e: e.name):
        if entry.name.endswith(LOCK_SUFFIX):
            _no_live_shard_run(shards / entry.name[1:-len(LOCK_SUFFIX)])
            continue
        if entry.name.startswith("."):
            continue  # the unfinished folder of an interrupted shard run
        path = Path(entry.path)
        if not entry.name.startswith("shard-") or not is_shard_output(path):
            raise PrepInputError(f"{path}: not a complete shard output of hytrec-prep")
        found.append(path)
    return found


def _no_live_shard_run(target: Path) -> None:
    """Raise unless the shard output ``target`` is free: its lock is taken (a lock of a process
    that no longer runs is taken over) and let go at once."""
    lock = OutputLock(target, TOOL)
    try:
        lock.acquire()
    except OutputError as exc:
        raise PrepInputError(f"{exc}; merge after it ends") from None
    lock.release()


def _check_metas(out: Path, shard_dirs: list[Path], metas: list[dict]) -> None:
    """Shards 0..N-1 exactly once, of one run (equal global fields), with their part files."""
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
        for p in m["shard"]["partitions"]:
            if not (sd / "sequences" / f"part-{p:05d}.parquet").is_file():
                raise PrepInputError(f"{sd}/sequences/part-{p:05d}.parquet: missing")
    parts = sorted(p for m in metas for p in m["shard"]["partitions"])
    if parts != list(range(first["num_partitions"])):
        raise PrepInputError(f"{out}: the shards' partitions {parts} are not 0..{first['num_partitions'] - 1}")


def _merged_meta(metas: list[dict]) -> dict:
    """The dataset's meta from the shards' (global fields kept, per-partition fields summed)."""
    first = metas[0]
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
    merged["merged_from_shards"] = first["shard"]["count"]
    merged["timing_s"] = {"shards_total": [m["timing_s"]["total"] for m in metas]}
    return merged


def _merged_vocabs(shard_dirs: list[Path]) -> dict[str, pa.Table]:
    """Each table's vocabulary with the shards' counts summed (raw/index checked equal)."""
    out = {}
    for t in TABLES:
        tables = [pq.read_table(sd / "vocab" / f"{t}.parquet") for sd in shard_dirs]
        base = tables[0]
        total = base.column("count")
        for sd, tb in zip(shard_dirs[1:], tables[1:]):
            if not (tb.column("raw").equals(base.column("raw")) and tb.column("index").equals(base.column("index"))):
                raise PrepInputError(f"{sd}/vocab/{t}.parquet: vocabulary differs from {shard_dirs[0]}")
            total = pc.add(total, tb.column("count"))
        out[t] = pa.table({"raw": base.column("raw"), "index": base.column("index"), "count": total})
    return out


def _check_target(out: Path, overwrite: bool) -> list[Path]:
    """The shard outputs OUTPUT holds; raises unless OUTPUT may be written: absent, empty, a folder
    of shard outputs, or (with ``overwrite``) a complete prepared dataset."""
    what = classify(out, lambda p: prep_kind(p) is not None)
    if what == OURS and prep_kind(out) == "shards":
        return _shard_dirs(out)
    if what in (OURS, FOREIGN):
        check_replaceable(out, tool=TOOL, kind="prepared dataset", overwrite=overwrite,
                          recognise=lambda p: prep_kind(p) is not None)
    return []


def merge(output: str | Path, extra: Sequence[str | Path] = (), overwrite: bool = False) -> dict:
    """Merge the shard outputs in ``output/_shards`` and in each of ``extra`` (folders a sharded run
    wrote) into the prepared dataset ``output``; returns the merged meta.

    Args:
        output: the dataset folder: absent, empty, a folder of shard outputs, or with ``overwrite``
            an earlier prepared dataset.
        extra: other folders of shard outputs, only read.
        overwrite: replace an earlier prepared dataset at ``output``.
    """
    out = Path(output)
    try:
        for e in extra:
            check_apart(out, [e])
        with parents_made(out), OutputLock(out, TOOL):
            shard_dirs = _check_target(out, overwrite)
            for e in extra:
                shard_dirs += _shard_dirs(Path(e))
            if not shard_dirs:
                raise PrepInputError(f"{out}: no shard outputs under _shards/ to merge")
            metas = [json.loads((sd / "meta.json").read_text()) for sd in shard_dirs]
            _check_metas(out, shard_dirs, metas)
            merged = _merged_meta(metas)
            vocabs = _merged_vocabs(shard_dirs)
            clear_stale_siblings(out, TOOL)
            with staged_dir(out, TOOL) as work:
                _write_dataset(work, shard_dirs=shard_dirs, metas=metas, vocabs=vocabs, merged=merged)
    except OutputError as exc:
        raise PrepInputError(str(exc)) from None
    return merged


def _write_dataset(work: Path, shard_dirs: list[Path], metas: list[dict], vocabs: dict[str, pa.Table],
                   merged: dict) -> None:
    """The merged dataset in the fresh folder ``work``: the shards' part files, vocab/, meta.json."""
    (work / "sequences").mkdir()
    for sd, m in zip(shard_dirs, metas):
        for p in m["shard"]["partitions"]:
            name = f"part-{p:05d}.parquet"
            shutil.copyfile(sd / "sequences" / name, work / "sequences" / name)
    (work / "vocab").mkdir()
    for t, table in vocabs.items():
        pq.write_table(table, work / "vocab" / f"{t}.parquet")
    (work / "meta.json").write_text(json.dumps(merged, indent=2) + "\n")
