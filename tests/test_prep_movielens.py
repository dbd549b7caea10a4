"""MovieLens loaders on small hand-written files (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.cli import main as prep_main
from data_prep.errors import PrepInputError
from data_prep.movielens import WHEEL, fetch_ml1m, load_movielens, main as ml_main
from data_prep.reference import read_prepared

RATINGS = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n1::914::3::978301968\n2::3408::4::978300275\n"
# latin-1 title, a movie with several genres (first one is used), a quoted title
MOVIES = ("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
          "914::My Fair Lady (1964)::Musical|Romance\n3408::Erin \"Brockovich\" Caf\xe9 (2000)::Drama\n")


def _grouplens(d: Path) -> Path:
    d.mkdir()
    (d / "ratings.dat").write_text(RATINGS)
    (d / "movies.dat").write_bytes(MOVIES.encode("latin-1"))
    return d


def _recbole(d: Path) -> Path:
    d.mkdir()
    (d / "ml.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n"
        "1m_1\tOne Flew (1975)\t5\t978300760\r\n1m_1\tToy Story (1995)\t3\t978302109.0\r\n"
        "1m_2\tOne Flew (1975)\t4\t978298413\r\n1m_2\tUnknown Film (1999)\t4\t978298414\r\n"
    )
    (d / "ml.item").write_text(
        "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n"
        "One Flew (1975)\tOne Flew\t1975\tDrama\r\nToy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy\r\n"
    )
    return d


def test_grouplens(tmp_path: Path) -> None:
    t, main_file = load_movielens(_grouplens(tmp_path / "gl"))
    assert main_file.name == "ratings.dat"
    d = t.to_pydict()
    assert d["user_id"] == [1, 1, 2, 1, 2]
    assert d["item_id"] == [1193, 661, 1193, 914, 3408]
    assert d["timestamp"][0] == 978300760
    assert d["category_id"] == ["Drama", "Animation", "Drama", "Musical", "Drama"]


def test_recbole_atomic(tmp_path: Path) -> None:
    t, _ = load_movielens(_recbole(tmp_path / "rb"))
    d = t.to_pydict()
    assert d["user_id"] == ["1m_1", "1m_1", "1m_2", "1m_2"]
    assert d["timestamp"] == [978300760, 978302109, 978298413, 978298414]
    assert d["category_id"] == ["Drama", "Animation", "Drama", None]


def test_prepare_movielens_cli(tmp_path: Path) -> None:
    src = _recbole(tmp_path / "rb")
    out = tmp_path / "out"
    assert prep_main([f"movielens:{src}", str(out), "filters.min_user_events=1"]) == 0
    got = read_prepared(out)
    cats = {r: i for r, i, _ in got["vocab"]["category"]}
    assert set(cats) == {"Animation", "Drama"}
    import json

    meta = json.loads((out / "meta.json").read_text())
    assert meta["handling"] == {"null_category_id_as_unknown": 1}  # the film missing from ml.item
    assert meta["events_out"] == 4 and meta["columns_present"]["behavior"] is False
    gl = _grouplens(tmp_path / "gl")
    assert prep_main([str(gl), str(tmp_path / "out2"), "format=movielens", "filters.min_user_events=1"]) == 0


def test_convert_and_errors(tmp_path: Path) -> None:
    src = _grouplens(tmp_path / "gl")
    assert ml_main(["convert", str(src), str(tmp_path / "raw.parquet")]) == 0
    assert prep_main([str(tmp_path / "raw.parquet"), str(tmp_path / "o"), "filters.min_user_events=1"]) == 0
    (src / "ratings.dat").write_text("1::1193::5::978300760\n1::x::3::978302109\n")
    with pytest.raises(PrepInputError, match=r"ratings\.dat: row 2, column 'MovieID'"):
        load_movielens(src)
    with pytest.raises(PrepInputError, match="expected ratings.dat"):
        load_movielens(tmp_path)


def test_fetch_rejects_bad_checksum(tmp_path: Path) -> None:
    """A cached wheel whose SHA-256 does not match is refused (no network needed: the wheel exists)."""
    (tmp_path / WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(PrepInputError, match="SHA-256"):
        fetch_ml1m(tmp_path)
