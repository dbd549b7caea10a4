"""Streaming prepare == plain-Python in-memory reference; N shards == unsharded; budget -> partitions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.cli import main as prep_main
from data_prep.hashing import hash_one, hash_strings
from data_prep.prepare import prepare
from data_prep.reference import read_prepared, reference_prepare
from tests.data_prep_util import ACTIVE_FILTERS, cfg, small_synthetic


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_synthetic(tmp_path_factory.mktemp("eq"))


def test_hash_vectorised_equals_python() -> None:
    vals = ["", "0", "42", "1m_1", "héllo wörld", "x" * 300, "Toy Story (1995)"]
    got = hash_strings(pa.array(vals))
    assert [int(v) for v in got] == [hash_one(v) for v in vals]
    ints = pa.array([0, 7, -3, 10**15])
    assert [int(v) for v in hash_strings(ints)] == [hash_one(str(v)) for v in ints.to_pylist()]


def test_streaming_tiny_budget_equals_reference(events: Path, tmp_path: Path) -> None:
    c = cfg("memory_budget_mb=1", "batch_rows=1500", *ACTIVE_FILTERS)
    meta = prepare(str(events), tmp_path / "stream", c)
    assert meta["num_partitions"] > 8, "a tiny budget must give many partitions"
    got = read_prepared(tmp_path / "stream")
    ref = reference_prepare(str(events), c, meta["num_partitions"])
    assert got["vocab"] == ref["vocab"]
    assert got["filters"] == ref["filters"]
    assert got["users"].keys() == ref["users"].keys()
    for u in ref["users"]:
        assert got["users"][u] == ref["users"][u], f"user {u}"
    # every filter removed something on this data, so each of them is really compared
    assert all(events_removed > 0 for _, events_removed in ref["filters"].values())
    assert meta["events_out"] == sum(len(l["item"]) for _, l in ref["users"].values())


def test_budget_large_single_partition_same_content(events: Path, tmp_path: Path) -> None:
    small = prepare(str(events), tmp_path / "small", cfg("memory_budget_mb=1", *ACTIVE_FILTERS))
    big = prepare(str(events), tmp_path / "big", cfg("memory_budget_mb=4096", *ACTIVE_FILTERS))
    assert big["num_partitions"] == 1 and small["num_partitions"] > 1
    a, b = read_prepared(tmp_path / "small"), read_prepared(tmp_path / "big")
    assert a["vocab"] == b["vocab"] and a["filters"] == b["filters"]
    assert {u: v[1] for u, v in a["users"].items()} == {u: v[1] for u, v in b["users"].items()}
    for k in ("events_out", "users_out", "rows_in", "vocab_sizes", "handling", "time_range"):
        assert small[k] == big[k], k


def test_shards_together_equal_unsharded(events: Path, tmp_path: Path) -> None:
    over = ["memory_budget_mb=1", "num_partitions=7", *ACTIVE_FILTERS]
    full = tmp_path / "full"
    assert prep_main([str(events), str(full), *over]) == 0
    sharded = tmp_path / "sharded"
    for i in range(3):
        assert prep_main([str(events), str(sharded), "--shard", f"{i}/3", *over]) == 0
    assert not (sharded / "meta.json").exists()
    assert prep_main(["--merge", str(sharded)]) == 0
    for p in range(7):
        name = f"sequences/part-{p:05d}.parquet"
        assert pq.read_table(full / name).equals(pq.read_table(sharded / name)), name
    for t in ("user", "item", "attribution", "category", "behavior"):
        name = f"vocab/{t}.parquet"
        assert pq.read_table(full / name).equals(pq.read_table(sharded / name)), name
    m_full = json.loads((full / "meta.json").read_text())
    m_sh = json.loads((sharded / "meta.json").read_text())
    skip = {"timing_s", "merged_from_shards"}
    assert {k: v for k, v in m_full.items() if k not in skip} == {k: v for k, v in m_sh.items() if k not in skip}


def test_merge_refuses_missing_shard(events: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert prep_main([str(events), str(out), "--shard", "0/2", "num_partitions=4"]) == 0
    assert prep_main(["--merge", str(out)]) == 2


def test_shards_in_separate_dirs_merge(events: Path, tmp_path: Path) -> None:
    over = ["num_partitions=4"]
    assert prep_main([str(events), str(tmp_path / "a"), "--shard", "0/2", *over]) == 0
    assert prep_main([str(events), str(tmp_path / "b"), "--shard", "1/2", *over]) == 0
    assert prep_main(["--merge", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert prep_main([str(events), str(tmp_path / "full"), *over]) == 0
    a, f = read_prepared(tmp_path / "a"), read_prepared(tmp_path / "full")
    assert a == f


def test_sequences_sorted_and_ties_keep_input_order(tmp_path: Path) -> None:
    t = pa.table({
        "user_id": ["b", "a", "b", "b", "a", "b"],
        "item_id": [5, 1, 7, 6, 2, 5],
        "timestamp": [10, 3, 10, 9, 3, 10],
        "behavior": ["click", "pay", "pay", "click", "click", "click"],
    })
    pq.write_table(t, tmp_path / "in.parquet")
    prepare(str(tmp_path / "in.parquet"), tmp_path / "out", cfg("filters.min_user_events=1"))
    got = read_prepared(tmp_path / "out")
    item = {r: i for r, i, _ in got["vocab"]["item"]}
    users = {r: i for r, i, _ in got["vocab"]["user"]}
    b = got["users"][users["b"]][1]
    # b: ts 9 (item 6), then ts 10 in input order: item 5 click, item 7 pay; the second (5, click, 10) is a duplicate
    assert b["item"] == [item["6"], item["5"], item["7"]]
    assert b["timestamp"] == [9, 10, 10]
    a = got["users"][users["a"]][1]
    assert a["item"] == [item["1"], item["2"]] and a["behavior"] == [10, 2]
    assert got["filters"]["duplicate_events"] == (0, 1)
    assert np.all(np.diff([i for _, i, _ in got["vocab"]["item"]]) == 1)
