"""Readers for the raw event schema (docs/design.md §3.1): Parquet or CSV, a file, a directory or a glob.

Input files are resolved and sorted by path (that order, then row order within a file, is the
"input order" that breaks timestamp ties). Each file is streamed in record batches
(``ParquetFile.iter_batches`` / ``pyarrow.csv.open_csv``) and every batch is normalised to the
canonical columns

==============  ==========================================================================
user_id         int64 if the column is an integer (not uint64) in every file, else string (uint64
                IDs, which may exceed 2^63 - 1, are read as their decimal strings)
item_id         same rule
timestamp       int64 seconds since the epoch
behavior        string or dictionary<string> (null -> ``click``, counted)
attribution_id  int64 or string, nulls allowed (-> unknown bucket), absent column -> all null
category_id     same as attribution_id
==============  ==========================================================================

Text columns may be ``string``, ``large_string`` or ``string_view``. One rule for empty IDs in CSV
and Parquet alike: an empty string is a null ID (an empty CSV field is read as null, and an empty
Parquet string is made one), so a null or empty user/item ID is the same bad row in both, and an
empty attribution/category ID goes to the unknown bucket in both.

Bad rows (null or empty user/item ID, unparsable or negative timestamp) raise :class:`PrepInputError`
naming file, row and column, or with ``on_bad_rows: skip`` are dropped and counted.
"""

from __future__ import annotations

import glob
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .config import RAW_COLUMNS, REQUIRED_COLUMNS, PrepConfig
from .errors import PrepInputError, bad_row

__all__ = ["Source", "InputPlan", "plan_inputs", "resolve_paths", "iter_normalized", "ID_COLUMNS"]

ID_COLUMNS = ("user_id", "item_id", "attribution_id", "category_id")
_PARQUET_EXT = (".parquet", ".pq")
_CSV_EXT = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")
_INT_RE = r"^\s*[-+]?[0-9]+\s*$"


@dataclass
class Source:
    """One input: a file on disk, or an in-memory table already in the raw schema (MovieLens)."""

    name: str
    kind: str  # "parquet" | "csv" | "table"
    table: Optional[pa.Table] = None
    schema: Optional[pa.Schema] = None  # filled by plan_inputs
    num_rows: Optional[int] = None  # known for parquet/table, estimated for csv
    size_bytes: int = 0


@dataclass
class InputPlan:
    """Everything decided about the inputs before any row is read."""

    sources: list[Source]
    present: dict[str, bool]  # canonical column -> present in at least one file
    file_names: dict[str, str]  # canonical column -> name in the files
    id_types: dict[str, pa.DataType]  # canonical ID column -> int64 or string
    rows_estimate: int
    empty_files: list[str] = field(default_factory=list)


def resolve_paths(spec: str) -> list[str]:
    """A file, a directory (recursively, hidden and ``_``-prefixed names ignored) or a glob."""
    if any(ch in spec for ch in "*?["):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not paths:
            raise PrepInputError(f"{spec}: the glob matches no file")
        return paths
    p = Path(spec)
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        out = []
        for root, dirs, files in os.walk(p):
            dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
            out += [os.path.join(root, f) for f in files if not f.startswith((".", "_"))]
        out = sorted(f for f in out if f.lower().endswith(_PARQUET_EXT + _CSV_EXT))
        if not out:
            raise PrepInputError(f"{spec}: directory holds no .parquet/.pq/.csv/.tsv/.txt file")
        return out
    raise PrepInputError(f"{spec}: no such file or directory")


def _kind(path: str, fmt: str) -> str:
    if fmt in ("parquet", "csv"):
        return fmt
    low = path.lower()
    if low.endswith(_PARQUET_EXT):
        return "parquet"
    if low.endswith(_CSV_EXT):
        return "csv"
    raise PrepInputError(f"{path}: cannot tell the format from the extension; set format: parquet|csv")


def _csv_header(path: str, cfg: PrepConfig) -> pa.Schema:
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 16),
            parse_options=pacsv.ParseOptions(delimiter=cfg.csv_delimiter),
            convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise PrepInputError(f"{path}: cannot read the CSV header: {exc}") from None
    names = reader.schema.names
    return pa.schema([(n, pa.string()) for n in names])


def plan_inputs(spec: str, cfg: PrepConfig, tables: Optional[list[Source]] = None) -> InputPlan:
    """Resolve the inputs, read every schema and check the column mapping.

    Raises :class:`PrepInputError` for a missing required column (naming file and column), an
    unreadable/truncated Parquet file, or an unsupported column type.
    """
    sources: list[Source] = []
    empty: list[str] = []
    if tables is not None:
        sources = tables
        for s in sources:
            s.schema = s.table.schema if s.table is not None else s.schema
            s.num_rows = s.table.num_rows if s.table is not None else s.num_rows
    else:
        for path in resolve_paths(spec):
            kind = _kind(path, cfg.format)
            size = os.path.getsize(path)
            src = Source(name=path, kind=kind, size_bytes=size)
            if size == 0:
                empty.append(path)
                continue
            if kind == "parquet":
                try:
                    meta = pq.read_metadata(path)
                    src.schema = meta.schema.to_arrow_schema()
                    src.num_rows = meta.num_rows
                except (pa.ArrowInvalid, OSError) as exc:
                    raise PrepInputError(
                        f"{path}: not a readable Parquet file (truncated or corrupt?): {exc}"
                    ) from None
            else:
                src.schema = _csv_header(path, cfg)
                src.num_rows = max(1, size // 16)  # over-estimate: ~16 bytes per CSV row minimum
            if src.num_rows == 0:
                empty.append(path)
            sources.append(src)
    cols = cfg.columns
    file_names = {c: getattr(cols, c) for c in RAW_COLUMNS if getattr(cols, c)}
    for src in sources:
        names = set(src.schema.names)
        for c in REQUIRED_COLUMNS:
            if file_names[c] not in names:
                raise PrepInputError(
                    f"{src.name}: required column {file_names[c]!r} (for {c}) is missing; "
                    f"columns in the file: {sorted(names)}; map it with columns.{c}=NAME"
                )
    present = {
        c: (c in file_names and any(file_names[c] in s.schema.names for s in sources))
        for c in RAW_COLUMNS
    }
    id_types: dict[str, pa.DataType] = {}
    for c in ID_COLUMNS:
        if not present[c]:
            id_types[c] = pa.int64()
            continue
        all_int = True
        for s in sources:
            if file_names[c] not in s.schema.names:
                continue
            t = s.schema.field(file_names[c]).type
            if pa.types.is_dictionary(t):
                t = t.value_type
            if pa.types.is_integer(t) and t != pa.uint64():
                continue
            if is_text(t) or t == pa.uint64():  # uint64 may exceed int64: kept exact as strings
                all_int = False
                continue
            raise PrepInputError(
                f"{s.name}: column {file_names[c]!r} ({c}) has type {t}; IDs must be integers or strings"
            )
        id_types[c] = pa.int64() if all_int else pa.string()
    rows = sum(s.num_rows or 0 for s in sources)
    real = [s for s in sources if s.name not in empty]
    if not real:
        raise PrepInputError(f"{spec}: every input file is empty ({len(empty)} files)")
    return InputPlan(real, present, file_names, id_types, rows, empty)


# ----------------------------------------------------------------------------------- batches


def _iter_raw(src: Source, plan: InputPlan, cfg: PrepConfig, batch_rows: int) -> Iterator[pa.RecordBatch]:
    wanted = [plan.file_names[c] for c in RAW_COLUMNS if plan.present[c]]
    cols = [n for n in wanted if n in src.schema.names]
    if src.kind == "table":
        yield from src.table.select(cols).to_batches(max_chunksize=batch_rows)
        return
    if src.kind == "parquet":
        try:
            pf = pq.ParquetFile(src.name)
            yield from pf.iter_batches(batch_size=batch_rows, columns=cols)
        except (pa.ArrowInvalid, OSError) as exc:
            raise PrepInputError(f"{src.name}: cannot read Parquet data (truncated or corrupt?): {exc}") from None
        return
    try:
        reader = pacsv.open_csv(
            src.name,
            read_options=pacsv.ReadOptions(block_size=max(1 << 16, batch_rows * 48)),
            parse_options=pacsv.ParseOptions(delimiter=cfg.csv_delimiter),
            convert_options=pacsv.ConvertOptions(
                include_columns=cols,
                column_types={n: pa.string() for n in cols},
                strings_can_be_null=True,
            ),
        )
        for batch in reader:
            yield batch
    except (pa.ArrowInvalid, OSError) as exc:
        raise PrepInputError(f"{src.name}: cannot parse CSV: {exc}") from None


def is_text(t: pa.DataType) -> bool:
    """``string``, ``large_string`` or ``string_view`` (pyarrow >= 16): one kind of text column."""
    is_view = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or is_view(t)


def _as_ids(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """An ID column as ``target`` (int64 or string). The one rule for empty IDs: an empty string is
    a null ID, as an empty CSV field is (CSV and Parquet alike)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if is_text(arr.type) and arr.type != pa.string():
        arr = arr.cast(pa.string())
    if arr.type != target:
        arr = pc.cast(arr, target)
    if pa.types.is_string(arr.type):
        arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
    return arr


def _string_ts(arr: pa.Array, cfg: PrepConfig) -> tuple[np.ndarray, np.ndarray]:
    """Parse string timestamps; returns (int64 seconds, bad mask)."""
    if cfg.timestamp_format:
        parsed = pc.strptime(arr, format=cfg.timestamp_format, unit="s", error_is_null=True)
        bad = np.asarray(pc.is_null(parsed).to_numpy(zero_copy_only=False))
        vals = pc.fill_null(parsed.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        return vals.astype(np.int64), bad
    is_int = pc.fill_null(pc.match_substring_regex(arr, _INT_RE), False)
    if pc.all(is_int).as_py():
        return pc.cast(pc.utf8_trim_whitespace(arr), pa.int64()).to_numpy(zero_copy_only=False), np.zeros(len(arr), bool)
    # slow path: floats allowed, anything else is bad
    vals = np.zeros(len(arr), np.int64)
    bad = np.zeros(len(arr), bool)
    for i, v in enumerate(arr.to_pylist()):
        try:
            f = float(v)  # type: ignore[arg-type]
            if not np.isfinite(f):
                raise ValueError
            vals[i] = int(np.floor(f))
        except (TypeError, ValueError):
            bad[i] = True
    return vals, bad


def _timestamps(arr: pa.Array, cfg: PrepConfig) -> tuple[np.ndarray, np.ndarray]:
    """Any supported timestamp column -> (int64 seconds, bad mask). Nulls are bad."""
    t = arr.type
    nulls = np.asarray(pc.is_null(arr).to_numpy(zero_copy_only=False)) if arr.null_count else None
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_integer(t):
        vals, bad = pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(), np.zeros(len(arr), bool)
    elif pa.types.is_floating(t):
        f = pc.fill_null(arr.cast(pa.float64()), np.nan).to_numpy()
        bad = ~np.isfinite(f)
        vals = np.floor(np.where(bad, 0.0, f)).astype(np.int64)
    elif pa.types.is_timestamp(t) or pa.types.is_date(t):
        per_s = {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}
        if pa.types.is_date32(t):
            raw, div, mul = arr.cast(pa.int32()).cast(pa.int64()), 1, 86400
        elif pa.types.is_date64(t):
            raw, div, mul = arr.cast(pa.int64()), 1000, 1
        else:
            raw, div, mul = arr.cast(pa.int64()), per_s[t.unit], 1
        v = pc.fill_null(raw, 0).to_numpy()
        vals, bad = np.floor_divide(v, div) * mul, np.zeros(len(arr), bool)
    elif is_text(t):
        vals, bad = _string_ts(arr.cast(pa.string()), cfg)
    else:
        raise TypeError(f"unsupported timestamp type {t}")
    if cfg.timestamp_unit != "s" and not (pa.types.is_timestamp(t) or pa.types.is_date(t)):
        vals = np.floor_divide(vals, {"ms": 1000, "us": 10**6, "ns": 10**9}[cfg.timestamp_unit])
    if nulls is not None:
        bad = bad | nulls
    return vals, bad


def _unit_hint(value: int) -> str:
    """What an implausible time in seconds most likely is."""
    for unit, f in (("ns", 10**9), ("us", 10**6), ("ms", 1000)):
        if 631_152_000 <= value // f <= 4_102_444_800:  # 1990 .. 2100 in that unit
            return f" (looks like {unit}: set timestamp_unit={unit} if the whole column is)"
    return ""


def iter_normalized(
    plan: InputPlan,
    cfg: PrepConfig,
    batch_rows: int,
    handling: Counter,
    rows_by_file: Optional[dict[str, int]] = None,
) -> Iterator[pa.RecordBatch]:
    """Yield canonical record batches from every source in input order.

    ``rows_by_file`` receives the number of rows read per file. ``handling`` receives the counts of every documented handling (skipped bad rows, nulls mapped
    to defaults). Errors name the file, the 1-based data row and the column.
    """
    fn = plan.file_names
    for src in plan.sources:
        is_csv = src.kind == "csv"
        offset = 0
        for rb in _iter_raw(src, plan, cfg, batch_rows):
            n = rb.num_rows
            if n == 0:
                continue
            names = rb.schema.names
            drop = np.zeros(n, bool)
            reasons: list[tuple[str, np.ndarray, str, str]] = []
            out: dict[str, pa.Array] = {}
            for c in ("user_id", "item_id"):
                a = _as_ids(rb.column(fn[c]), plan.id_types[c])
                if a.null_count:
                    m = np.asarray(pc.is_null(a).to_numpy(zero_copy_only=False))
                    reasons.append((f"null_{c}", m, fn[c], "null ID"))
                out[c] = a
            try:
                ts, bad_ts = _timestamps(rb.column(fn["timestamp"]), cfg)
            except TypeError as exc:
                raise PrepInputError(f"{src.name}: column {fn['timestamp']!r}: {exc}") from None
            if bad_ts.any():
                reasons.append(("bad_timestamp", bad_ts, fn["timestamp"], "not a valid timestamp"))
            neg = (ts < 0) & ~bad_ts
            if neg.any():
                reasons.append(("negative_timestamp", neg, fn["timestamp"], "negative timestamp"))
            latest = int(time.time()) + cfg.max_future_s
            odd = ~bad_ts & ~neg & ((ts < cfg.min_time) | (ts > latest))
            if odd.any():
                first = int(ts[np.flatnonzero(odd)[0]])
                reasons.append(("implausible_timestamp", odd, fn["timestamp"],
                                f"timestamp {first} s is outside {cfg.min_time}..{latest} (min_time .. now + "
                                f"max_future_s){_unit_hint(first)}"))
            for key, mask, col, problem in reasons:
                if cfg.on_bad_rows == "error":
                    i = int(np.flatnonzero(mask)[0])
                    raise bad_row(src.name, offset + i + 1, col, problem, rb.column(col)[i].as_py(), is_csv)
                handling[f"skipped_rows.{key}"] += int((mask & ~drop).sum())
                drop |= mask
            if plan.present["behavior"] and fn["behavior"] in names:
                b = rb.column(fn["behavior"])
                if pa.types.is_dictionary(b.type) and pa.types.is_string(b.type.value_type) and not b.null_count:
                    pass  # kept dictionary-encoded: the spill step maps its few values directly
                elif b.type != pa.string():
                    b = pc.cast(b.dictionary_decode() if pa.types.is_dictionary(b.type) else b, pa.string())
                if b.null_count:
                    handling["null_behavior_as_click"] += int(
                        (np.asarray(pc.is_null(b).to_numpy(zero_copy_only=False)) & ~drop).sum()
                    )
                    b = pc.fill_null(b, "click")
            elif plan.present["behavior"]:
                handling["null_behavior_as_click"] += int((~drop).sum())
                b = pa.array(["click"] * n, pa.string())
            else:
                b = pa.nulls(n, pa.string())
            out["behavior"] = b
            for c in ("attribution_id", "category_id"):
                if plan.present[c] and fn[c] in names:
                    a = _as_ids(rb.column(fn[c]), plan.id_types[c])
                    if a.null_count:
                        handling[f"null_{c}_as_unknown"] += int(
                            (np.asarray(pc.is_null(a).to_numpy(zero_copy_only=False)) & ~drop).sum()
                        )
                elif plan.present[c]:
                    handling[f"null_{c}_as_unknown"] += int((~drop).sum())
                    a = pa.nulls(n, plan.id_types[c])
                else:
                    a = pa.nulls(n, plan.id_types[c])
                out[c] = a
            batch = pa.RecordBatch.from_arrays(
                [out["user_id"], out["item_id"], pa.array(ts, pa.int64()), out["behavior"],
                 out["attribution_id"], out["category_id"]],
                names=list(RAW_COLUMNS),
            )  # (behavior may be dictionary-encoded)
            if drop.any():
                batch = batch.filter(pa.array(~drop))
            offset += n
            if rows_by_file is not None:
                rows_by_file[src.name] = offset
            yield batch
        if rows_by_file is not None:
            rows_by_file.setdefault(src.name, 0)
