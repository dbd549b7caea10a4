"""``prepare``: raw events -> prepared dataset (docs/data_format.md), streaming in a memory budget.

Pass 1 (:mod:`data_prep.spill`) hash-partitions the input by user into spill files and gathers
the distinct IDs; the vocabularies are then fixed globally. Pass 2 loads one partition at a time,
maps IDs to dense indices, sorts, filters (:mod:`data_prep.sequences`) and writes
``sequences/part-PPPPP.parquet``. The number of partitions is chosen so that one partition's
working set fits the budget.

Sharded runs (``shard=(i, n)``) process the partitions ``p`` with ``p % n == i`` and write their
part files, vocabulary counts and meta to ``OUTPUT/_shards/shard-i-of-n/``; :func:`data_prep.merge.merge`
then writes the dataset. Every output is written through :mod:`hytrec_torchrec.outputs` (checked
first, locked, written beside its target and renamed into place; docs/data_prep.md "Writing the output").
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hytrec_torchrec.config import to_dict
from hytrec_torchrec.outputs import (
    FOREIGN,
    OURS,
    OutputError,
    OutputLock,
    check_apart,
    check_replaceable,
    classify,
    clear_stale_siblings,
    inside,
    marker_path,
    only_entries,
    parents_made,
    read_marker,
    staged_dir,
    write_marker,
)
from hytrec_torchrec.schema import VOCABS

from .config import ColumnMap, PrepConfig
from .errors import PrepInputError
from .readers import InputPlan, Source, iter_normalized, plan_inputs
from .sequences import FILTER_NAMES, DenseEvents, FilterCounts, build_sequences, to_table
from .sources import DATASETS, split_format
from .spill import SpillResult, spill_batches, spill_path
from .vocab import FUNNEL, Vocab, behavior_vocab, build_vocab, empty_vocab, load_vocab

__all__ = ["prepare", "plan_partitions", "check_output_apart", "prep_kind", "is_shard_output", "MARKER", "TOOL",
           "SCHEMA_VERSION", "HASH_DOC", "TABLES"]

SCHEMA_VERSION = 1
TOOL = "hytrec-prep"
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


def _vocabs(cfg: PrepConfig, plan: InputPlan, sp: SpillResult, fixed: dict[str, Vocab]) -> dict[str, Vocab]:
    """The vocabularies: users always fresh; the others ``fixed`` (``vocab_from``) or built."""
    v: dict[str, Vocab] = {"user": build_vocab("user", sp.uniques["user_id"])}
    for name in ("item", "attribution", "category"):
        col = _COL_OF[name]
        if fixed:
            v[name] = fixed[name]
        elif plan.present[col]:
            v[name] = build_vocab(name, sp.uniques[col])
        else:
            v[name] = empty_vocab(name, plan.id_types[col])
    v["behavior"] = fixed["behavior"] if fixed else behavior_vocab(sp.behavior_codes)
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


#: the marker of hytrec-prep's output folders (JSON, hytrec_torchrec/outputs.py); a folder is
#: recognised as prep's by this file's content, or, written before the marker held JSON, by a
#: meta.json whose content is prep's
MARKER = marker_path(Path("."), TOOL).name
#: the entries of a complete prepared folder (``_spill``/``_shards`` only in folders of older versions)
OUTPUT_ENTRIES = frozenset({MARKER, "meta.json", "sequences", "vocab", "_spill", "_shards"})
_OUTPUT_DIRS = frozenset({"sequences", "vocab", "_spill", "_shards"})
#: the entries of the folder of one shard, ``OUT/_shards/shard-I-of-N``
SHARD_ENTRIES = frozenset({MARKER, "meta.json", "sequences", "vocab"})


def check_output_apart(out: Path, input_spec: str, input_files: list[str]) -> None:
    """Raise :class:`PrepInputError` when the output folder is an input, holds an input file, or
    lies inside an input folder (replacing it would delete the raw data)."""
    o = out.resolve()
    for f in input_files:
        if inside(Path(f).resolve(), o):
            raise PrepInputError(f"{out}: the output folder holds the input file {f}; choose an output "
                                 "folder outside the input")
    spec = Path(input_spec)
    if spec.is_dir() and (inside(o, spec.resolve()) or inside(spec.resolve(), o)):
        raise PrepInputError(f"{out}: the output folder and the input folder {input_spec} are the same or "
                             "nested; choose an output folder outside the input")


def _is_prep_meta(path: Path) -> bool:
    """Whether ``path`` is a regular file holding the JSON of a prepared dataset's meta."""
    try:
        if not path.is_file() or path.is_symlink():
            return False
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("partition_hash") == HASH_DOC and isinstance(doc.get("schema_version"), int)


def prep_kind(folder: Path) -> Optional[str]:
    """``"dataset"`` (a complete prepared folder), ``"shards"`` (shard outputs waiting for
    ``--merge``) or None (not hytrec-prep's, an unfinished one, or holding anything else)."""
    doc = read_marker(folder, TOOL)
    state = doc.get("state") if doc else None
    if state == "shards":
        return "shards" if only_entries(folder, {MARKER, "_shards"}, {"_shards"}) else None
    if doc is not None and state != "complete":
        return None
    if doc is None and not _is_prep_meta(folder / "meta.json"):
        return None
    return "dataset" if only_entries(folder, OUTPUT_ENTRIES, _OUTPUT_DIRS) else None


def is_shard_output(folder: Path) -> bool:
    """Whether ``folder`` is one complete shard's output (``OUT/_shards/shard-I-of-N``)."""
    doc = read_marker(folder, TOOL)
    return (doc is not None and doc.get("state") == "complete" and _is_prep_meta(folder / "meta.json")
            and only_entries(folder, SHARD_ENTRIES, {"sequences", "vocab"}))


#: seconds a shard run waits for another one starting into the same OUTPUT (a moment's lock)
SHARD_START_WAIT_S = 30.0
#: seconds between progress lines of the sequence pass (stderr)
PROGRESS_EVERY_S = 10.0


def _progress(msg: str) -> None:
    """One progress line on stderr (the summary goes to stdout)."""
    print(f"hytrec-prep: {msg}", file=sys.stderr, flush=True)


def _fixed_vocabs(cfg: PrepConfig, plan: InputPlan) -> dict[str, Vocab]:
    """The vocabularies of ``vocab_from``, read before anything is written (it may be OUTPUT)."""
    if not cfg.vocab_from:
        return {}
    v = {name: load_vocab(cfg.vocab_from, name, plan.id_types[_COL_OF[name]])
         for name in ("item", "attribution", "category")}
    v["behavior"] = load_vocab(cfg.vocab_from, "behavior", pa.string())
    return v


def _check_spill_dir(cfg: PrepConfig, out: Path, inputs: list[str]) -> None:
    """``spill_dir`` may be neither an input nor inside the output (which is replaced at the end)."""
    if cfg.spill_dir:
        try:
            check_apart(cfg.spill_dir, inputs, option="spill_dir")
            check_apart(cfg.spill_dir, [out], option="spill_dir")
        except OutputError as exc:
            raise PrepInputError(str(exc)) from None


@contextlib.contextmanager
def _spill_folder(cfg: PrepConfig, work: Path, shard: tuple[int, int]) -> Iterator[Path]:
    """A fresh spill folder of this run only: ``WORK/_spill`` or a new ``hytrec-spill-*`` folder
    under ``spill_dir`` (made with mkdir, so two runs sharing ``spill_dir`` never share files and
    nothing already there is touched); removed at the end."""
    if not cfg.spill_dir:
        folder = work / "_spill"
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    base = Path(cfg.spill_dir)
    made = [p for p in [base, *base.parents] if not os.path.lexists(p)]  # removed again when empty
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"hytrec-spill-shard-{shard[0]}-of-{shard[1]}-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()


def _refuse(exc: OutputError) -> PrepInputError:
    return PrepInputError(str(exc))


def _into_shards_folder(out: Path) -> None:
    """Make ``out`` the folder of shard outputs (marker ``shards`` and ``_shards/``), under its lock:
    it is absent or empty, or already such a folder; a complete dataset or anything else is refused.
    Shards started together each hold the lock a moment, so one waits up to
    :data:`SHARD_START_WAIT_S` for another (or for a merge into ``out``)."""
    lock = OutputLock(out, TOOL)
    lock.acquire(wait_s=SHARD_START_WAIT_S)
    try:
        what = classify(out, lambda p: prep_kind(p) is not None)
        if what == OURS and prep_kind(out) == "shards":
            return
        if what == OURS:
            raise OutputError(f"{out}: holds a complete prepared dataset; a sharded run does not write into "
                              "one: choose an empty folder (or remove this one)")
        if what == FOREIGN:
            check_replaceable(out, tool=TOOL, kind="hytrec-prep output", overwrite=False, recognise=lambda p: False)
        out.mkdir(exist_ok=True)
        write_marker(out, TOOL, "shards")
        (out / "_shards").mkdir()
    finally:
        lock.release()


def prepare(
    input_spec: str,
    output: str | Path,
    cfg: PrepConfig,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    sources: Optional[list[Source]] = None,
) -> dict:
    """Run ``hytrec-prep``; returns the meta dict (the shard's meta for a sharded run).

    The output is written beside its target and renamed into place when complete, under a lock
    (hytrec_torchrec/outputs.py): a failed or interrupted run leaves an earlier output as it was.

    Args:
        input_spec: file, directory or glob, or ``NAME:DIR`` for a dataset format
            (:mod:`.sources`; ignored when ``sources`` is given).
        output: the prepared directory.
        cfg: the configuration.
        shard: ``(i, n)``: process partitions ``p % n == i``, written to ``output/_shards/shard-i-of-n``.
        overwrite: replace an earlier output of hytrec-prep (the dataset, or this shard's output).
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
    # everything is checked before anything changes: the inputs exist and are readable, none of them
    # lies inside the output folder (nor the output inside an input folder), vocab_from is read
    plan = plan_inputs(input_spec, cfg, sources)
    input_files = [s.name for s in plan.sources if s.kind != "table"] + plan.empty_files
    check_output_apart(out, input_spec, input_files)
    _check_spill_dir(cfg, out, input_files + ([input_spec] if Path(input_spec).is_dir() else []))
    fixed = _fixed_vocabs(cfg, plan)
    try:
        with parents_made(out):
            target = out
            if sn > 1:
                _into_shards_folder(out)
                target = out / "_shards" / f"shard-{si}-of-{sn}"
            with OutputLock(target, TOOL):
                kind = "shard output" if sn > 1 else "prepared dataset"
                recognise = is_shard_output if sn > 1 else (lambda p: prep_kind(p) is not None)
                check_replaceable(target, tool=TOOL, kind=kind, overwrite=overwrite, recognise=recognise)
                clear_stale_siblings(target, TOOL)
                with staged_dir(target, TOOL) as work:
                    return _prepare_into(work, plan=plan, cfg=cfg, shard=shard, fixed=fixed,
                                         input_spec=input_spec, t0=t0)
    except OutputError as exc:
        raise _refuse(exc) from None


def _prepare_into(work: Path, plan: InputPlan, cfg: PrepConfig, shard: tuple[int, int], fixed: dict[str, Vocab],
                  input_spec: str, t0: float) -> dict:
    """Both passes, writing ``sequences/``, ``vocab/`` and ``meta.json`` into the fresh folder
    ``work``; returns the meta."""
    si, sn = shard
    num_parts, batch_rows = plan_partitions(cfg, plan.rows_estimate)
    mine = {p for p in range(num_parts) if p % sn == si}
    handling: Counter = Counter()
    rows_by_file: dict[str, int] = {}
    with _spill_folder(cfg, work, shard) as spill_dir:
        batches = iter_normalized(plan, cfg, batch_rows, handling, rows_by_file)
        sp = spill_batches(batches, plan.id_types, num_parts, mine, spill_dir)
        if sp.rows_valid == 0:
            raise PrepInputError(f"{input_spec}: no valid event rows (empty input, or every row was skipped)")
        t_pass1 = time.time()
        _progress(f"pass 1: {sp.rows_valid:,} valid rows read and spilled in {t_pass1 - t0:.1f} s "
                  f"({sp.rows_valid / max(t_pass1 - t0, 1e-9):,.0f} rows/s); building sequences of {len(mine)} partitions")
        vocabs = _vocabs(cfg, plan, sp, fixed)
        p2 = _pass2(work / "sequences", spill_dir=spill_dir, vocabs=vocabs, sp=sp, mine=mine, cfg=cfg,
                        plan=plan, t_pass1=t_pass1)
    counts, fc, events_out, users_out = p2.counts, p2.filters, p2.events_out, p2.users_out
    for k in ("item", "attribution", "category", "behavior"):
        counts[k][:2] = 0
    handling.update(p2.handling)
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
        "time_range": list(p2.kept) if events_out else None,
        "input_time_range": [sp.ts_min, sp.ts_max],
        "sources": [{"path": s.name, "rows": rows_by_file.get(s.name, 0)} for s in plan.sources]
        + [{"path": e, "rows": 0, "empty": True} for e in plan.empty_files],
        "timing_s": {"pass1": round(t_pass1 - t0, 3), "total": round(time.time() - t0, 3)},
    }
    if sn > 1:
        meta["shard"] = {"index": si, "count": sn, "partitions": sorted(mine)}
    _write_vocabs(vocabs, counts, work / "vocab")
    (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


@dataclass
class _Pass2:
    """What pass 2 counted: per-table index counts, filter counts, partition handling counts, the
    events and users written and the time range of the kept events."""

    counts: dict[str, np.ndarray]
    filters: FilterCounts
    handling: Counter
    events_out: int
    users_out: int
    kept: tuple[int, int]


def _pass2(seq_dir: Path, spill_dir: Path, vocabs: dict[str, Vocab], sp: SpillResult, mine: set[int],
           cfg: PrepConfig, plan: InputPlan, t_pass1: float) -> _Pass2:
    """Pass 2: one partition at a time from its spill file to ``seq_dir/part-PPPPP.parquet``."""
    code_index, _ = vocabs["behavior"].lookup(pa.array(sp.behavior_codes, pa.string()))
    counts = {n: np.zeros(vocabs[n].size, np.int64) for n in TABLES}
    fc = FilterCounts()
    part_handling: Counter = Counter()
    seq_dir.mkdir(parents=True, exist_ok=True)
    events_out = users_out = 0
    kept_min, kept_max = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    # part files are written by one background thread (pyarrow releases the GIL) while the next
    # partition is processed; at most one table is in flight, which the budget estimate includes
    writer = ThreadPoolExecutor(max_workers=1)
    pending: Optional[Future] = None
    t_log = time.time()
    try:
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
    finally:
        writer.shutdown()
    return _Pass2(counts=counts, filters=fc, handling=part_handling, events_out=events_out, users_out=users_out,
                  kept=(kept_min, kept_max))


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
