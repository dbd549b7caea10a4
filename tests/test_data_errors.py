"""Config errors name the key; malformed prepared directories name the file; stats and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hytrec_torchrec.config import ConfigError, from_dict, load_config
from hytrec_torchrec.data import DataConfig, DatasetFormatError, load_shard, make_dataloader
from hytrec_torchrec.data.inspect import main as inspect_main
from hytrec_torchrec.data.stats import dataset_stats, read_epoch
from hytrec_torchrec.data.testing import random_sequences, write_prepared

NUM_ITEMS = 30


@pytest.fixture()
def prepared(tmp_path: Path) -> Path:
    return write_prepared(tmp_path / "prep", random_sequences(12, 40, NUM_ITEMS, seed=1), NUM_ITEMS,
                          num_partitions=2)


@pytest.mark.parametrize("data,key", [
    ({"path": "x", "batch_size": 0}, "batch_size"),
    ({"path": "x", "split": "random"}, "split"),
    ({"path": "x", "split": "time"}, "split_time"),
    ({"path": "x", "max_len": 0}, "max_len"),
    ({"path": "x", "num_targets": 0}, "num_targets"),
    ({"path": "x", "min_history": -1}, "min_history"),
    ({"path": "x", "num_negatives": "many"}, "num_negatives"),
    ({"path": "x", "cutoffs_per_usr": 3}, "cutoffs_per_usr"),
    ({}, "path"),
])
def test_config_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(DataConfig, data)
    assert str(exc.value).startswith(key + ":"), str(exc.value)


def test_config_from_yaml_names_file(tmp_path: Path) -> None:
    f = tmp_path / "data.yaml"
    f.write_text("path: /x\nmax_len: -5\n")
    with pytest.raises(ConfigError, match=r"data\.yaml: max_len"):
        load_config(DataConfig, f)


def _cfg(path: Path, **kw) -> DataConfig:
    return from_dict(DataConfig, {"path": str(path), "batch_size": 4, "num_negatives": 2, **kw})


def _rewrite_part(path: Path, part: int, fn) -> Path:
    f = path / "sequences" / f"part-{part:05d}.parquet"
    pq.write_table(fn(pq.read_table(f)), f)
    return f


def test_bad_schema_version(prepared: Path) -> None:
    meta = json.loads((prepared / "meta.json").read_text())
    meta["schema_version"] = 2
    (prepared / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetFormatError, match=r"meta\.json: schema_version is 2"):
        load_shard(_cfg(prepared))


@pytest.mark.parametrize("breakage,pattern", [
    ("no_meta", r"meta\.json: missing"),
    ("bad_json", r"meta\.json: invalid JSON"),
    ("missing_part", r"part-00001\.parquet: partition file missing"),
    ("missing_column", r"part-00000\.parquet: column 'category' missing"),
    ("wrong_type", r"part-00000\.parquet: column 'item' has type"),
    ("truncated", r"part-00001\.parquet: not a readable Parquet file"),
    ("unsorted", r"part-00000\.parquet: row 0: column 'timestamp' is not sorted"),
    ("out_of_vocab", r"part-00000\.parquet: row 0: column 'item' value 999 outside \[0, 30\)"),
    ("ragged", r"part-00000\.parquet: row 0: column 'behavior' length differs"),
])
def test_bad_prepared_dir_names_file(prepared: Path, breakage: str, pattern: str) -> None:
    def set_row0(table: pa.Table, col: str, fn) -> pa.Table:
        rows = table.column(col).to_pylist()
        rows[0] = fn(rows[0])
        i = table.schema.get_field_index(col)
        return table.set_column(i, col, pa.array(rows, table.schema.field(col).type))

    if breakage == "no_meta":
        (prepared / "meta.json").unlink()
    elif breakage == "bad_json":
        (prepared / "meta.json").write_text("{not json")
    elif breakage == "missing_part":
        (prepared / "sequences" / "part-00001.parquet").unlink()
    elif breakage == "missing_column":
        _rewrite_part(prepared, 0, lambda t: t.drop_columns(["category"]))
    elif breakage == "wrong_type":
        _rewrite_part(prepared, 0, lambda t: t.set_column(
            1, "item", pa.array([[str(x) for x in r] for r in t.column("item").to_pylist()])))
    elif breakage == "truncated":
        f = prepared / "sequences" / "part-00001.parquet"
        f.write_bytes(f.read_bytes()[:50])
    elif breakage == "unsorted":
        _rewrite_part(prepared, 0, lambda t: set_row0(t, "timestamp", lambda r: [r[0] + 10**9] + r[1:]
                                                       if len(r) > 1 else r))
    elif breakage == "out_of_vocab":
        _rewrite_part(prepared, 0, lambda t: set_row0(t, "item", lambda r: [999] + r[1:]))
    elif breakage == "ragged":
        _rewrite_part(prepared, 0, lambda t: set_row0(t, "behavior", lambda r: r + [2]))
    with pytest.raises(DatasetFormatError, match=pattern):
        load_shard(_cfg(prepared))


def test_unsorted_fixture_row_is_long_enough(prepared: Path) -> None:
    # guards test_bad_prepared_dir_names_file[unsorted]: row 0 of part 0 must have >= 2 events
    t = pq.read_table(prepared / "sequences" / "part-00000.parquet")
    assert len(t.column("timestamp").to_pylist()[0]) >= 2


def test_stats_and_counts(prepared: Path) -> None:
    cfg = _cfg(prepared)
    shard = load_shard(cfg)
    ds = dataset_stats(shard)
    total = sum(int(x) for x in shard.data.lengths)
    assert ds["users"] == 12 and ds["events"] == total
    unknown = int((shard.data.features[0] == 1).sum())
    assert ds["unknown_item"] == unknown
    loader = make_dataloader(cfg, shard=shard)
    st = read_epoch(loader).as_dict()
    assert st["batches"] == len(loader)
    counts = loader.dataset.count_summary()
    assert counts["users_eligible_total"] + counts["users_ineligible_total"] == 12
    assert st["examples"] + counts["dropped_examples_rank"] == counts["examples_rank"]
    assert 0.0 <= st["padding_waste"] < 1.0


def test_inspect_cli(prepared: Path, capsys: pytest.CaptureFixture) -> None:
    assert inspect_main([str(prepared), "batch_size=3", "max_len=5"]) == 0
    out = capsys.readouterr().out
    for word in ("users", "length_p90", "unknown_item", "users_ineligible_total", "padding_waste",
                 "history_events_per_s", "stage valid", "stage test"):
        assert word in out
    assert inspect_main([str(prepared), "batch_size=0"]) == 2
    assert "batch_size" in capsys.readouterr().err


def test_empty_partitions_and_too_many_ranks(tmp_path: Path) -> None:
    users = random_sequences(3, 20, NUM_ITEMS, seed=0, min_events=4)
    path = write_prepared(tmp_path, users, NUM_ITEMS, num_partitions=7)  # most partitions empty
    cfg = _cfg(path, batch_size=2)
    seen = [u for r in range(2) for b in make_dataloader(cfg, r, 2, 0, "test") for u in b.user[b.valid].tolist()]
    assert sorted(seen) == sorted(users)
    with pytest.raises(ValueError, match="3 users cannot be spread over 5 ranks"):
        load_shard(cfg, 0, 5)
