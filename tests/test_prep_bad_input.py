"""Bad input to data prep: each case gets a clear error naming file/row/column, or a counted handling.

The inputs are generated here in tmp directories; nothing binary is committed. The command-line
runs (exit status, the one-line message, nothing of the input lost) are cases of the corpus in
``tests/bad_inputs/``; these call ``prepare`` in-process and check the counts and the output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.cli import main as prep_main
from data_prep.errors import PrepInputError
from data_prep.prepare import prepare
from data_prep.reference import read_prepared
from hytrec_torchrec.config import ConfigError
from tests.data_prep_util import cfg


def _good(n_users: int = 5, per_user: int = 6) -> pa.Table:
    u = np.repeat(np.arange(n_users), per_user)
    return pa.table({
        "user_id": u,
        "item_id": np.arange(len(u)) % 7,
        "timestamp": np.arange(len(u)) * 10 + 1000,
        "behavior": ["click"] * (len(u) - 1) + ["pay"],
        "category_id": np.arange(len(u)) % 3,
    })


def _prep(argv: list[str]) -> int:
    """hytrec-prep on these small inputs, whose clocks start near 0 (``min_time=0``)."""
    return prep_main(argv + ["min_time=0"])


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_column_mapping_fixes_it(tmp_path: Path) -> None:
    pq.write_table(_good().rename_columns(["uid", "iid", "ts", "behavior", "category_id"]), tmp_path / "in.parquet")
    meta = prepare(str(tmp_path / "in.parquet"), tmp_path / "out",
                   cfg("columns.user_id=uid", "columns.item_id=iid", "columns.timestamp=ts"))
    assert meta["events_out"] == 30


def test_null_ids_error_names_row_and_column(tmp_path: Path) -> None:
    f = _csv(tmp_path / "in.csv", "user_id,item_id,timestamp\n1,5,100\n1,,101\n2,5,102\n")
    with pytest.raises(PrepInputError, match=r"in\.csv: row 2 \(line 3\), column 'item_id': null ID"):
        prepare(str(f), tmp_path / "out", cfg())


def test_null_ids_skip_is_counted(tmp_path: Path) -> None:
    t = _good()
    users = t.column("user_id").to_pylist()
    users[3] = None
    pq.write_table(t.set_column(0, "user_id", pa.array(users, pa.int64())), tmp_path / "in.parquet")
    with pytest.raises(PrepInputError, match="row 4, column 'user_id': null ID"):
        prepare(str(tmp_path / "in.parquet"), tmp_path / "o1", cfg())
    meta = prepare(str(tmp_path / "in.parquet"), tmp_path / "o2", cfg("on_bad_rows=skip", "filters.min_user_events=1"))
    assert meta["handling"]["skipped_rows.null_user_id"] == 1
    assert meta["rows_in"] == 30 and meta["rows_valid"] == 29 and meta["events_out"] == 29


def test_non_numeric_timestamp(tmp_path: Path) -> None:
    f = _csv(tmp_path / "in.csv", "user_id,item_id,timestamp\n1,5,100\n1,6,yesterday\n")
    with pytest.raises(PrepInputError, match=r"row 2 \(line 3\), column 'timestamp': not a valid timestamp \(value 'yesterday'\)"):
        prepare(str(f), tmp_path / "o", cfg())
    meta = prepare(str(f), tmp_path / "o2", cfg("on_bad_rows=skip", "filters.min_user_events=1"))
    assert meta["handling"] == {"skipped_rows.bad_timestamp": 1} and meta["events_out"] == 1


def test_formatted_and_typed_timestamps(tmp_path: Path) -> None:
    f = _csv(tmp_path / "in.csv", "user_id,item_id,timestamp\na,5,2024-01-01 00:00:10\na,6,2024-01-01 00:00:05\n")
    prepare(str(f), tmp_path / "o", cfg("timestamp_format='%Y-%m-%d %H:%M:%S'", "filters.min_user_events=1"))
    seq = read_prepared(tmp_path / "o")["users"][2][1]
    assert seq["timestamp"] == [1704067205, 1704067210]
    t = pa.table({"user_id": ["a", "a"], "item_id": [1, 2],
                  "timestamp": pa.array([1_500_000_000_123, 1_500_000_001_000], pa.timestamp("ms"))})
    pq.write_table(t, tmp_path / "ms.parquet")
    prepare(str(tmp_path / "ms.parquet"), tmp_path / "o3", cfg("filters.min_user_events=1"))
    assert read_prepared(tmp_path / "o3")["users"][2][1]["timestamp"] == [1_500_000_000, 1_500_000_001]


def test_negative_timestamp(tmp_path: Path) -> None:
    t = _good()
    ts = t.column("timestamp").to_numpy().copy()
    ts[7] = -5
    pq.write_table(t.set_column(2, "timestamp", pa.array(ts)), tmp_path / "in.parquet")
    with pytest.raises(PrepInputError, match="in.parquet: row 8, column 'timestamp': negative timestamp"):
        prepare(str(tmp_path / "in.parquet"), tmp_path / "o", cfg())
    meta = prepare(str(tmp_path / "in.parquet"), tmp_path / "o2", cfg("on_bad_rows=skip"))
    assert meta["handling"]["skipped_rows.negative_timestamp"] == 1


def test_duplicate_events_counted(tmp_path: Path) -> None:
    t = _good()
    pq.write_table(pa.concat_tables([t, t.slice(0, 4)]), tmp_path / "in.parquet")
    meta = prepare(str(tmp_path / "in.parquet"), tmp_path / "o", cfg())
    dup = next(f for f in meta["filters"] if f["name"] == "duplicate_events")
    assert dup["events_removed"] == 4 and meta["events_out"] == 30 and meta["rows_in"] == 34


def test_empty_files(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(_good(), d / "a.parquet")
    (d / "b.parquet").write_bytes(b"")
    _csv(d / "c.csv", "")
    pq.write_table(_good().slice(0, 0), d / "d.parquet")
    meta = prepare(str(d), tmp_path / "o", cfg())
    assert meta["handling"]["empty_files_skipped"] == 3 and meta["events_out"] == 30
    e = tmp_path / "empty"
    e.mkdir()
    (e / "x.parquet").write_bytes(b"")
    with pytest.raises(PrepInputError, match="every input file is empty"):
        prepare(str(e), tmp_path / "o2", cfg())


def test_truncated_parquet(tmp_path: Path) -> None:
    pq.write_table(_good(), tmp_path / "ok.parquet")
    data = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "bad.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(PrepInputError, match=r"bad\.parquet: not a readable Parquet file \(truncated or corrupt\?\)"):
        prepare(str(tmp_path / "*.parquet"), tmp_path / "o", cfg())


def test_user_with_one_event(tmp_path: Path) -> None:
    t = pa.concat_tables([_good(), pa.table({"user_id": [99], "item_id": [1], "timestamp": [5000],
                                             "behavior": ["pay"], "category_id": [1]})])
    pq.write_table(t, tmp_path / "in.parquet")
    meta = prepare(str(tmp_path / "in.parquet"), tmp_path / "o", cfg())
    cold = next(f for f in meta["filters"] if f["name"] == "cold_users")
    assert (cold["users_removed"], cold["events_removed"]) == (1, 1) and meta["users_out"] == 5
    meta = prepare(str(tmp_path / "in.parquet"), tmp_path / "o2", cfg("filters.min_user_events=1"))
    assert meta["users_out"] == 6


def test_user_with_100k_events(tmp_path: Path) -> None:
    n = 100_000
    rng = np.random.default_rng(0)
    big = pa.table({"user_id": np.full(n, 7), "item_id": rng.integers(0, 1000, n),
                    "timestamp": np.arange(n, dtype=np.int64) + 10_000,
                    "behavior": pa.array(np.where(rng.random(n) < 0.05, "pay", "click")),
                    "category_id": rng.integers(0, 9, n)})
    pq.write_table(pa.concat_tables([_good(), big]), tmp_path / "in.parquet")
    meta = prepare(str(tmp_path / "in.parquet"), tmp_path / "o", cfg("memory_budget_mb=64"))
    assert meta["events_out"] == 30 + n  # kept whole: not a scalper (5% pay); the loader truncates
    meta = prepare(str(tmp_path / "in.parquet"), tmp_path / "o2", cfg("filters.max_user_events=10000"))
    cut = next(f for f in meta["filters"] if f["name"] == "truncate_long_users")
    assert cut["events_removed"] == n - 10_000 and meta["events_out"] == 30 + 10_000
    # a click-only account of that size is a scalper
    big_clicks = big.set_column(3, "behavior", pa.array(["click"] * n))
    pq.write_table(pa.concat_tables([_good(), big_clicks]), tmp_path / "sc.parquet")
    meta = prepare(str(tmp_path / "sc.parquet"), tmp_path / "o3", cfg())
    sc = next(f for f in meta["filters"] if f["name"] == "scalper_accounts")
    assert (sc["users_removed"], sc["events_removed"]) == (1, n)


def test_unknown_ids_with_fixed_vocab(tmp_path: Path) -> None:
    pq.write_table(_good(), tmp_path / "train.parquet")
    prepare(str(tmp_path / "train.parquet"), tmp_path / "train", cfg())
    t = _good()
    items = t.column("item_id").to_numpy().copy()
    items[:3] = 555  # never seen in training
    beh = t.column("behavior").to_pylist()
    beh[4] = "share"  # unknown behaviour
    pq.write_table(t.set_column(1, "item_id", pa.array(items)).set_column(3, "behavior", pa.array(beh)),
                   tmp_path / "test.parquet")
    meta = prepare(str(tmp_path / "test.parquet"), tmp_path / "test", cfg(f"vocab_from={tmp_path / 'train'}"))
    assert meta["handling"]["unknown_ids_as_unknown.item"] == 3
    assert meta["handling"]["unknown_ids_as_unknown.behavior"] == 1
    got = read_prepared(tmp_path / "test")
    assert got["vocab"]["item"][0][:2] == read_prepared(tmp_path / "train")["vocab"]["item"][0][:2]
    first_user = got["users"][min(got["users"])][1]
    assert first_user["item"][:3] == [1, 1, 1] and first_user["behavior"][4] == 1


def test_null_optional_values_counted(tmp_path: Path) -> None:
    t = _good()
    cats = t.column("category_id").to_pylist()
    cats[0] = cats[5] = None
    pq.write_table(t.set_column(4, "category_id", pa.array(cats, pa.int64())), tmp_path / "in.parquet")
    meta = prepare(str(tmp_path / "in.parquet"), tmp_path / "o", cfg())
    assert meta["handling"]["null_category_id_as_unknown"] == 2
    assert meta["columns_present"]["attribution_id"] is False and meta["vocab_sizes"]["attribution"] == 2


def test_bad_config_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="filters.min_user_events"):
        cfg("filters.min_user_events=0")
    with pytest.raises(ConfigError, match="filterz"):
        cfg("filterz.x=1")


def test_existing_output_refused(tmp_path: Path) -> None:
    pq.write_table(_good(), tmp_path / "in.parquet")
    prepare(str(tmp_path / "in.parquet"), tmp_path / "o", cfg())
    with pytest.raises(PrepInputError, match="exists and is not empty"):
        prepare(str(tmp_path / "in.parquet"), tmp_path / "o", cfg())
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["events_out"] == 30


# ---- the output folder: nothing of the input, nothing prep did not write, is ever deleted ----

def _prepared(tmp_path: Path) -> tuple[Path, Path]:
    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(_good(), raw / "events.parquet")
    out = tmp_path / "prepared"
    assert _prep([str(raw), str(out)]) == 0
    return raw, out


def test_overwrite_replaces_a_prepared_folder_and_an_unfinished_one_is_cleared(tmp_path: Path) -> None:
    raw, out = _prepared(tmp_path)
    first = json.loads((out / "meta.json").read_text())["events_out"]
    assert _prep([str(raw), str(out), "--overwrite"]) == 0
    assert json.loads((out / "meta.json").read_text())["events_out"] == first
    # an interrupted run leaves its unfinished sibling (marker "writing"), never a half-written OUT;
    # the next run into OUT removes it
    left = tmp_path / ".prepared.hytrec-prep-tmp-999999"
    left.mkdir()
    (left / ".hytrec-prep").write_text('{"tool": "hytrec-prep", "state": "writing"}')
    (left / "sequences").mkdir()
    assert _prep([str(raw), str(out), "--overwrite"]) == 0
    assert not left.exists() and (out / "meta.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]


# ---- timestamps in another unit, or out of any plausible range ----

def _with_one_ms_row(tmp_path: Path) -> Path:
    """201 users, 100 events each in seconds near 2023, plus one row in milliseconds."""
    n_users, per = 201, 100
    u = np.repeat(np.arange(n_users), per)
    ts = 1_700_000_000 + np.tile(np.arange(per), n_users) * 3600
    ts[-1] = ts[-1] * 1000  # the last user's last event, in milliseconds
    pq.write_table(pa.table({"user_id": u, "item_id": np.arange(len(u)) % 50, "timestamp": ts}),
                   tmp_path / "in.parquet")
    return tmp_path / "in.parquet"


def test_skipping_it_drops_one_row_and_keeps_every_user(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = _with_one_ms_row(tmp_path)
    assert prep_main([str(f), str(tmp_path / "out"), "filters.inactive_days=30", "on_bad_rows=skip"]) == 0
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["users_out"] == 201 and meta["handling"]["skipped_rows.implausible_timestamp"] == 1
    assert "implausible_timestamp" in capsys.readouterr().out


@pytest.mark.parametrize("value", [315_532_800, 4_102_444_800])  # 1980-01-01 and 2100-01-01
def test_times_before_1990_or_in_the_future_are_refused(tmp_path: Path, value: int) -> None:
    t = _good()
    ts = np.asarray(t.column("timestamp").to_numpy()) + 1_700_000_000
    ts[3] = value
    pq.write_table(t.set_column(2, "timestamp", pa.array(ts)), tmp_path / "in.parquet")
    with pytest.raises(PrepInputError, match=r"row 4, column 'timestamp': timestamp \d+ s is outside"):
        prepare(str(tmp_path / "in.parquet"), tmp_path / "out", load_config_defaults())


def test_a_whole_column_in_milliseconds_reads_with_timestamp_unit(tmp_path: Path) -> None:
    t = _good()
    ms = (np.asarray(t.column("timestamp").to_numpy()) + 1_700_000_000) * 1000 + 999
    pq.write_table(t.set_column(2, "timestamp", pa.array(ms)), tmp_path / "in.parquet")
    prepare(str(tmp_path / "in.parquet"), tmp_path / "out", load_config_defaults("timestamp_unit=ms"))
    got = read_prepared(tmp_path / "out")
    first = next(iter(got["users"].values()))[1]["timestamp"][0]
    assert first == 1_700_001_000  # (1_700_001_000 s * 1000 + 999 ms) floored to seconds


def load_config_defaults(*overrides: str):
    """The shipped defaults (min_time = 1990-01-01), unlike ``tests.data_prep_util.cfg``."""
    from data_prep.config import PrepConfig
    from hytrec_torchrec.config import load_config

    return load_config(PrepConfig, None, list(overrides))


def test_prep_reports_its_progress(tmp_path: Path, capsys: pytest.CaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A line after the reading pass (rows, rows/s) and one per PROGRESS_EVERY_S of the sequence
    pass, on stderr; the summary stays alone on stdout."""
    import data_prep.prepare as prep

    monkeypatch.setattr(prep, "PROGRESS_EVERY_S", 0.0)
    pq.write_table(_good(), tmp_path / "in.parquet")
    assert _prep([str(tmp_path / "in.parquet"), str(tmp_path / "out"), "num_partitions=3"]) == 0
    out, err = capsys.readouterr()
    assert "hytrec-prep: pass 1: 30 valid rows read and spilled in" in err and "rows/s" in err
    assert "hytrec-prep: pass 2: partition 1/3" in err and "hytrec-prep" not in out


def test_uint64_ids_above_int64_are_kept_exact(tmp_path: Path) -> None:
    """uint64 ID columns are read as decimal strings (a value above 2^63 - 1 used to stop prep with
    an ArrowInvalid traceback); the vocabulary keeps the exact value."""
    big = 2**63 + 5
    t = pa.table({"user_id": pa.array([7, 7, 7, big, big, big], pa.uint64()),
                  "item_id": pa.array([1, 2, big, 1, 2, 3], pa.uint64()),
                  "timestamp": pa.array([1_700_000_000 + i for i in range(6)], pa.int64())})
    pq.write_table(t, tmp_path / "in.parquet")
    assert _prep([str(tmp_path / "in.parquet"), str(tmp_path / "out"), "min_time=0",
                  "filters.min_user_events=1"]) == 0
    raw = pq.read_table(tmp_path / "out" / "vocab" / "item.parquet").column("raw").to_pylist()
    assert str(big) in [str(r) for r in raw]
