"""ID columns of every text type, and one rule for empty IDs in CSV and Parquet (issue 43, "the
one-line contract": ``large_string`` and ``string_view`` ID columns; one rule for empty IDs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.cli import main as prep_main

TEXT_TYPES = ["string", "large_string"] + (["string_view"] if hasattr(pa, "string_view") else [])


def _table(text: pa.DataType, empty_item_row: int = -1, empty_attr_row: int = -1) -> pa.Table:
    n = 30
    items = [f"i{r % 7}" for r in range(n)]
    attrs = [f"a{r % 3}" for r in range(n)]
    if empty_item_row >= 0:
        items[empty_item_row] = ""
    if empty_attr_row >= 0:
        attrs[empty_attr_row] = ""
    return pa.table({"user_id": pa.array([f"u{r // 6}" for r in range(n)], text), "item_id": pa.array(items, text),
                     "timestamp": np.arange(n) * 10 + 1_700_000_000, "behavior": pa.array(["click"] * n, text),
                     "attribution_id": pa.array(attrs, text)})


def _meta(out: Path) -> Dict[str, Any]:
    return json.loads((out / "meta.json").read_text())


def _prep(*argv: str) -> int:
    return prep_main([*argv, "min_time=0"])


@pytest.mark.parametrize("name", TEXT_TYPES)
def test_every_text_type_is_an_id_column_like_string(name: str, tmp_path: Path) -> None:
    (tmp_path / name).mkdir()
    pq.write_table(_table(getattr(pa, name)()), tmp_path / name / "events.parquet")
    assert _prep(str(tmp_path / name), str(tmp_path / "out")) == 0
    meta = _meta(tmp_path / "out")
    (tmp_path / "ref").mkdir()
    pq.write_table(_table(pa.string()), tmp_path / "ref" / "events.parquet")
    assert _prep(str(tmp_path / "ref"), str(tmp_path / "ref_out")) == 0
    ref = _meta(tmp_path / "ref_out")
    assert (meta["events_out"], meta["vocab_sizes"]) == (ref["events_out"], ref["vocab_sizes"])


def _csv(table: pa.Table, path: Path) -> None:
    rows = zip(*[table.column(c).to_pylist() for c in table.column_names])
    path.write_text(",".join(table.column_names) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def _both(tmp: Path, table: pa.Table) -> Dict[str, Path]:
    (tmp / "pq").mkdir()
    pq.write_table(table, tmp / "pq" / "events.parquet")
    (tmp / "csv").mkdir()
    _csv(table, tmp / "csv" / "events.csv")
    return {"parquet": tmp / "pq", "csv": tmp / "csv"}


def test_an_empty_item_id_is_the_same_bad_row_in_csv_and_parquet(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    inputs = _both(tmp_path, _table(pa.string(), empty_item_row=4))
    lines = {}
    for kind, folder in inputs.items():
        assert _prep(str(folder), str(tmp_path / f"out_{kind}")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "column 'item_id': null ID" in err[0], err
        lines[kind] = err[0]
        assert not (tmp_path / f"out_{kind}").exists()
    for kind, folder in inputs.items():
        assert _prep(str(folder), str(tmp_path / f"skip_{kind}"), "on_bad_rows=skip") == 0
    pq_meta, csv_meta = _meta(tmp_path / "skip_parquet"), _meta(tmp_path / "skip_csv")
    assert pq_meta["handling"]["skipped_rows.null_item_id"] == 1
    assert (pq_meta["handling"], pq_meta["events_out"]) == (csv_meta["handling"], csv_meta["events_out"])


def test_an_empty_attribution_id_is_unknown_in_csv_and_parquet(tmp_path: Path) -> None:
    inputs = _both(tmp_path, _table(pa.string(), empty_attr_row=7))
    metas = []
    for kind, folder in inputs.items():
        assert _prep(str(folder), str(tmp_path / f"out_{kind}")) == 0
        metas.append(_meta(tmp_path / f"out_{kind}"))
    assert metas[0]["handling"]["null_attribution_id_as_unknown"] == 1
    assert (metas[0]["handling"], metas[0]["vocab_sizes"]) == (metas[1]["handling"], metas[1]["vocab_sizes"])
