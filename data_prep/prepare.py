"""``prepare``: raw events -> prepared dataset (docs/data_format.md), streaming in a memory budget.

Pass 1 (:mod:`data_prep.spill`) hash-partitions the input by user into spill files and gathers
the distinct IDs; the vocabularies are then fixed globally. Pass 2 loads one partition at a time,
maps IDs to dense indices, sorts, filters (:mod:`data_prep.sequences`) and writes
``sequences/part-PPPPP.parquet``. The number of partitions is chosen so that one partition's
working set fits the budget.

Sharded runs (``shard=(i, n)``) process the partitions ``p`` with ``p % n == i`` and write their
vocabulary counts and meta under ``OUTPUT/_shards/shard-i-of-n/``; :func:`data_prep.merge.merge`
then writes the final ``vocab/`` and ``meta.json``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hytrec_torchrec.config import to_dict
from hytrec_torchrec.files import remove_entries
from hytrec_torchrec.schema import VOCABS

from .config import ColumnMap, PrepConfig
from .errors import PrepInputError
from .readers import InputPlan, Source, iter_normalized, plan_inputs
from .sequences import FILTER_NAMES, DenseEvents, FilterCounts, build_sequences, to_table
from .sources import DATASETS, split_format
from .spill import SpillResult, spill_batches, spill_path
from .vocab import FUNNEL, Vocab, behavior_vocab, build_vocab, empty_vocab, load_vocab

__all__ = ["prepare", "plan_partitions", "check_output_apart", "clear_prepared", "MARKER", "SCHEMA_VERSION",
           "HASH_DOC", "TABLES"]

SCHEMA_VERSION = 1
TABLES = VOCABS  # the vocabularies written (hytrec_torchrec/schema.py)
HASH_DOC = "splitmix64(poly_1099511628211(utf8(raw)) + len * 0x9E3779B97F4A7C15) mod num_partitions"
#: resident memory of the interpreter with pyarrow + numpy loaded, not available to partitions
BASE_MB = 150
#: peak bytes per event while one partition is processed (pass 2), measured on synthetic data
BYTES_PER_EVENT = 300
#: bytes per input row while a batch is read, normalised and split (pass 1)
BYTES_PER_ROW_PASS1 = 600
_SEQ_SCHEMA = pa.schema(
    [("user", pa.int64())] + [(c, pa.list_(pa.int64())) for c in ("item", "attribution", "category", "behavior", "timestamp")]
)
_COL_OF = {"item": "item_id", "attribution": "attribution_id", "category": "category_id", "user": "user_id"}


def plan_partitions(cfg: PrepConfig, rows_estimate: int) -> tuple[int, int]:
    """(number of partitions, rows per input batch) for the budget."""
    work = max(cfg.memory_budget_mb - BASE_MB, cfg.memory_budget_mb * 0.25) * 2**20
    parts = cfg.num_partitions or max(1, math.ceil(1.25 * rows_estimate * BYTES_PER_EVENT / work))
    batch = cfg.batch_rows or int(min(1 << 20, max(1024, work / BYTES_PER_ROW_PASS1)))
    return parts, batch


def _compression(cfg: PrepConfig) -> Optional[str]:
    return None if cfg.compression == "none" else cfg.compression


def _write_part(table: pa.Table, path: Path, cfg: PrepConfig) -> None:
    """One ``sequences/part-*.parquet``: no column statistics (costly on lists, unused),
    dictionary pages for the low-cardinality lists only."""
    pq.write_table(
        table,
        path,
        compression=_compression(cfg),
        use_dictionary=["item", "attribution", "category", "behavior"],
        write_statistics=False,
    )


def _vocabs(cfg: PrepConfig, plan: InputPlan, sp: SpillResult) -> dict[str, Vocab]:
    v: dict[str, Vocab] = {"user": build_vocab("user", sp.uniques["user_id"])}
    for name in ("item", "attribution", "category"):
        col = _COL_OF[name]
        if cfg.vocab_from:
            v[name] = load_vocab(cfg.vocab_from, name, plan.id_types[col])
        elif plan.present[col]:
            v[name] = build_vocab(name, sp.uniques[col])
        else:
            v[name] = empty_vocab(name, plan.id_types[col])
    v["behavior"] = (
        load_vocab(cfg.vocab_from, "behavior", pa.string()) if cfg.vocab_from else behavior_vocab(sp.behavior_codes)
    )
    return v


def _dense(tbl: pa.Table, vocabs: dict[str, Vocab], code_index: np.ndarray, handling: Counter) -> DenseEvents:
    cols = {}
    for name in ("user", "item", "attribution", "category"):
        idx, unknown = vocabs[name].lookup(tbl.column(_COL_OF[name]).combine_chunks())
        if unknown:
            handling[f"unknown_ids_as_unknown.{name}"] += unknown
        cols[name] = idx
    beh = code_index[tbl.column("behavior").to_numpy()]
    unknown_beh = int((beh == 1).sum())
    if unknown_beh:
        handling["unknown_ids_as_unknown.behavior"] += unknown_beh
    return DenseEvents(
        cols["user"], cols["item"], cols["attribution"], cols["category"], beh, tbl.column("timestamp").to_numpy()
    )


def _write_vocabs(vocabs: dict[str, Vocab], counts: dict[str, np.ndarray], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        pq.write_table(vocabs[name].table(counts[name]), out / f"{name}.parquet")


#: written first into every output folder: ``--overwrite`` only ever clears a folder that has it.
MARKER = ".hytrec-prep"
#: the entries hytrec-prep writes into an output folder; ``--overwrite`` removes these and no others.
OUTPUT_ENTRIES = frozenset({MARKER, "meta.json", "sequences", "vocab", "_spill", "_shards"})


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_apart(out: Path, input_spec: str, input_files: list[str]) -> None:
    """Raise :class:`PrepInputError` when the output folder is an input, holds an input file, or
    lies inside an input folder (``--overwrite`` would then delete the raw data)."""
    o = out.resolve()
    for f in input_files:
        if _inside(Path(f).resolve(), o):
            raise PrepInputError(f"{out}: the output folder holds the input file {f}; choose an output "
                                 "folder outside the input")
    spec = Path(input_spec)
    if spec.is_dir() and (_inside(o, spec.resolve()) or _inside(spec.resolve(), o)):
        raise PrepInputError(f"{out}: the output folder and the input folder {input_spec} are the same or "
                             "nested; choose an output folder outside the input")


def clear_prepared(out: Path) -> None:
    """Remove a previous output of hytrec-prep from ``out`` (``--overwrite``). Refuses, deleting
    nothing, unless the folder carries :data:`MARKER` (or is a prepared folder written before the
    marker existed: it has ``meta.json``) and holds only entries hytrec-prep writes."""
    names = {p.name for p in out.iterdir()}
    if MARKER not in names and "meta.json" not in names:
        raise PrepInputError(f"{out}: --overwrite only replaces a folder written by hytrec-prep, and this "
                             f"one has no {MARKER} or meta.json; choose another output folder")
    foreign = sorted(names - OUTPUT_ENTRIES)
    if foreign:
        raise PrepInputError(f"{out}: --overwrite refused: the folder holds entries hytrec-prep did not write "
                             f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); move them or "
                             "choose another output folder")
    remove_entries(out, names)


#: seconds between progress lines of the sequence pass (stderr)
PROGRESS_EVERY_S = 10.0


def _progress(msg: str) -> None:
    """One progress line on stderr (the summary goes to stdout)."""
    print(f"hytrec-prep: {msg}", file=sys.stderr, flush=True)


def prepare(
    input_spec: str,
    output: str | Path,
    cfg: PrepConfig,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    sources: Optional[list[Source]] = None,
) -> dict:
    """Run ``hytrec-prep``; returns the meta dict (the shard's meta for a sharded run).

    Args:
        input_spec: file, directory or glob, or ``NAME:DIR`` for a dataset format
            (:mod:`.sources`; ignored when ``sources`` is given).
        output: the prepared directory.
        cfg: the configuration.
        shard: ``(i, n)``: process partitions ``p % n == i``.
        overwrite: for unsharded runs, replace an existing output directory.
        sources: in-memory sources in the raw schema instead of files.
    """
    t0 = time.time()
    input_spec, fmt = split_format(input_spec, cfg.format)
    if sources is None and fmt in DATASETS:
        sources = DATASETS[fmt](input_spec)
        cfg = replace(cfg, format=fmt, columns=ColumnMap())  # the loaders write the raw schema's names
    out = Path(output)
    si, sn = shard
    if not (0 <= si < sn):
        raise PrepInputError(f"--shard {si}/{sn}: need 0 <= I < N")
    # everything is checked before anything is deleted: the inputs exist and are readable, and
    # none of them lies inside the output folder (nor the output inside an input folder)
    plan = plan_inputs(input_spec, cfg, sources)
    check_output_apart(out, input_spec, [s.name for s in plan.sources if s.kind != "table"] + plan.empty_files)
    if sn == 1 and out.exists() and any(out.iterdir()):
        names = {p.name for p in out.iterdir()}
        unfinished = MARKER in names and "meta.json" not in names  # an earlier run that failed
        if not overwrite and not unfinished:
            raise PrepInputError(f"{out}: output directory exists and is not empty (use --overwrite)")
        if unfinished:
            print(f"hytrec-prep: {out}: clearing the unfinished output of an earlier run", file=sys.stderr)
        clear_prepared(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    num_parts, batch_rows = plan_partitions(cfg, plan.rows_estimate)
    mine = {p for p in range(num_parts) if p % sn == si}
    spill_dir = Path(cfg.spill_dir) if cfg.spill_dir else out / "_spill"
    spill_dir = spill_dir / f"shard-{si}-of-{sn}"
    if spill_dir.exists():
        shutil.rmtree(spill_dir)
    handling: Counter = Counter()
    rows_by_file: dict[str, int] = {}
    batches = iter_normalized(plan, cfg, batch_rows, handling, rows_by_file)
    sp = spill_batches(batches, plan.id_types, num_parts, mine, spill_dir)
    if sp.rows_valid == 0:
        raise PrepInputError(f"{input_spec}: no valid event rows (empty input, or every row was skipped)")
    t_pass1 = time.time()
    _progress(f"pass 1: {sp.rows_valid:,} valid rows read and spilled in {t_pass1 - t0:.1f} s "
              f"({sp.rows_valid / max(t_pass1 - t0, 1e-9):,.0f} rows/s); building sequences of {len(mine)} partitions")
    vocabs = _vocabs(cfg, plan, sp)
    code_index, _ = vocabs["behavior"].lookup(pa.array(sp.behavior_codes, pa.string()))
    counts = {n: np.zeros(vocabs[n].size, np.int64) for n in TABLES}
    fc = FilterCounts()
    part_handling: Counter = Counter()
    seq_dir = out / "sequences"
    seq_dir.mkdir(parents=True, exist_ok=True)
    events_out = users_out = 0
    kept_min, kept_max = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    # part files are written by one background thread (pyarrow releases the GIL) while the next
    # partition is processed; at most one table is in flight, which the budget estimate includes
    writer = ThreadPoolExecutor(max_workers=1)
    pending: Optional[Future] = None
    t_log = time.time()
    for i, p in enumerate(sorted(mine)):
        if time.time() - t_log >= PROGRESS_EVERY_S:
            t_log = time.time()
            _progress(f"pass 2: partition {i}/{len(mine)}, {events_out:,} events in {users_out:,} sequences, "
                      f"about {(len(mine) - i) * (t_log - t_pass1) / max(i, 1):.0f} s left")
        path = spill_path(spill_dir, p)
        if path.exists():
            with pa.OSFile(str(path), "rb") as f:
                tbl = pa.ipc.open_stream(f).read_all()
            path.unlink(missing_ok=True)
            ev = _dense(tbl, vocabs, code_index, part_handling)
            del tbl
            ev = build_sequences(ev, cfg.filters, plan.present["behavior"], sp.ts_max, fc)
            for name in ("item", "attribution", "category", "behavior", "user"):
                counts[name] += np.bincount(getattr(ev, name), minlength=len(counts[name]))[: len(counts[name])]
            table = to_table(ev)
            if len(ev.user):
                kept_min, kept_max = min(kept_min, int(ev.timestamp.min())), max(kept_max, int(ev.timestamp.max()))
            events_out += len(ev.user)
            users_out += table.num_rows
            del ev
        else:
            table = _SEQ_SCHEMA.empty_table()
        if pending is not None:
            pending.result()
        pending = writer.submit(_write_part, table, seq_dir / f"part-{p:05d}.parquet", cfg)
        del table
    if pending is not None:
        pending.result()
    writer.shutdown()
    shutil.rmtree(spill_dir, ignore_errors=True)
    if cfg.spill_dir is None:
        try:
            (out / "_spill").rmdir()
        except OSError:
            pass
    for k in ("item", "attribution", "category", "behavior"):
        counts[k][:2] = 0
    handling.update(part_handling)
    if plan.empty_files:
        handling["empty_files_skipped"] = len(plan.empty_files)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "num_partitions": num_parts,
        "partition_hash": HASH_DOC,
        "vocab_sizes": {n: vocabs[n].size for n in TABLES},
        "rows_in": sum(rows_by_file.values()),
        "rows_valid": sp.rows_valid,
        "events_in_partitions": sum(sp.rows_per_partition.get(p, 0) for p in mine),
        "events_out": events_out,
        "users_out": users_out,
        "filters": _filters_meta(cfg, plan, fc),
        "handling": dict(sorted(handling.items())),
        "config": to_dict(cfg),
        "columns_present": {c: plan.present[c] for c in plan.present},
        "time_range": [kept_min, kept_max] if events_out else None,
        "input_time_range": [sp.ts_min, sp.ts_max],
        "sources": [{"path": s.name, "rows": rows_by_file.get(s.name, 0)} for s in plan.sources]
        + [{"path": e, "rows": 0, "empty": True} for e in plan.empty_files],
        "timing_s": {"pass1": round(t_pass1 - t0, 3), "total": round(time.time() - t0, 3)},
    }
    if sn == 1:
        _write_vocabs(vocabs, counts, out / "vocab")
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    else:
        sdir = out / "_shards" / f"shard-{si}-of-{sn}"
        if sdir.exists():
            shutil.rmtree(sdir)
        _write_vocabs(vocabs, counts, sdir / "vocab")
        meta["shard"] = {"index": si, "count": sn, "partitions": sorted(mine)}
        (sdir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _filters_meta(cfg: PrepConfig, plan: InputPlan, fc: FilterCounts) -> list[dict]:
    f = cfg.filters
    has_beh = plan.present["behavior"]
    info = {
        "duplicate_events": {"enabled": f.drop_duplicates, "key": ["user", "item", "timestamp", "behavior"], "keeps": "first in input order"},
        "scalper_accounts": {
            "enabled": f.scalper_min_events is not None and has_beh,
            "applicable": has_beh,
            "min_events": f.scalper_min_events,
            "max_pay_ratio": f.scalper_max_pay_ratio,
        },
        "inactive_users": {"enabled": f.inactive_days is not None, "inactive_days": f.inactive_days},
        "cold_users": {"enabled": True, "min_user_events": f.min_user_events},
        "truncate_long_users": {"enabled": f.max_user_events is not None, "max_user_events": f.max_user_events},
    }
    return [
        {"name": n, "users_removed": fc.users[n], "events_removed": fc.events[n], **info[n]} for n in FILTER_NAMES
    ]


__all__ += ["FUNNEL"]
