"""Paired comparison (``hytrec_torchrec.evaluation.paired``, ``hytrec-compare``): the difference and
its standard error against a direct NumPy transcription, example matching and its errors, the
ranks file round trip and the CLI. The 1-rank vs 2-rank ranks check is in tests/test_evaluate.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hytrec_torchrec.evaluation.paired import (PairingError, align, compare, main, over_seeds, paired_difference,
                                               read_ranks, write_ranks)


def _table(users: np.ndarray, ranks: np.ndarray, catalog: int = 500) -> dict:
    return {"user": users, "cutoff": users * 7 + 3, "rank": ranks, "catalog": np.full(len(users), catalog)}


def test_difference_and_standard_error_match_numpy() -> None:
    rng = np.random.default_rng(0)
    n = 400
    a = rng.integers(1, 300, n)
    b = np.maximum(1, a + rng.integers(-40, 20, n))  # B ranks targets a little higher
    cat = rng.integers(300, 500, n)
    res = paired_difference(a, b, cat, cat, ["hr@10", "ndcg@10", "mrr", "auc"])
    for m, f in {"hr@10": lambda r: (r <= 10).astype(float),
                 "ndcg@10": lambda r: (r <= 10) / np.log2(r + 1.0),
                 "mrr": lambda r: 1.0 / r,
                 "auc": lambda r: 1.0 - (r - 1.0) / (cat - 1.0)}.items():
        d = f(b) - f(a)
        assert res[m]["diff"] == pytest.approx(d.mean(), abs=1e-12)
        se = math.sqrt(((d - d.mean()) ** 2).sum() / (n - 1) / n)
        assert res[m]["se"] == pytest.approx(se, rel=1e-9)
        assert res[m]["z"] == pytest.approx(d.mean() / se, rel=1e-9)
        assert res[m]["a"] == pytest.approx(f(a).mean()) and res[m]["b"] == pytest.approx(f(b).mean())
        assert (res[m]["b_only"], res[m]["a_only"]) == (int((d > 0).sum()), int((d < 0).sum()))
    assert res["hr@10"]["n"] == n and res["mrr"]["diff"] > 0


def test_the_paired_error_is_smaller_than_the_unpaired_one_for_correlated_models() -> None:
    """The point of pairing: two models that mostly agree per user differ with a standard error
    far below the √(p(1−p)/n) of either hit rate."""
    rng = np.random.default_rng(1)
    a = rng.integers(1, 40, 2000)
    b = a.copy()
    flip = rng.choice(2000, 60, replace=False)
    b[flip] = np.where(a[flip] <= 10, 25, 3)  # 60 users change sides of the top-10 cut
    res = paired_difference(a, b, np.full(2000, 100), np.full(2000, 100), ["hr@10"])["hr@10"]
    unpaired = math.sqrt(res["a"] * (1 - res["a"]) / 2000)
    assert res["b_only"] + res["a_only"] == 60
    assert res["se"] < unpaired / 2


def test_identical_models_differ_by_zero() -> None:
    r = np.array([1, 5, 50])
    res = paired_difference(r, r, np.full(3, 9), np.full(3, 9), ["hr@10", "ndcg@10"])
    assert res["hr@10"]["diff"] == 0 and res["hr@10"]["se"] == 0 and res["hr@10"]["z"] == 0


def test_examples_are_matched_on_user_and_cutoff_not_on_order() -> None:
    users = np.array([4, 1, 9, 2])
    a = _table(users, np.array([1, 2, 3, 4]))
    perm = np.array([2, 0, 3, 1])
    b = {c: v[perm] for c, v in a.items()}
    ia, ib = align(a, b)
    np.testing.assert_array_equal(a["rank"][ia], b["rank"][ib])
    rows = compare([("a", a), ("b", b)], ["hr@1", "mrr"])
    assert rows[0]["mrr"]["diff"] == 0 and rows[0]["baseline"] == "a"


def test_different_example_sets_are_an_error_with_counts() -> None:
    a = _table(np.array([1, 2, 3]), np.array([1, 2, 3]))
    b = _table(np.array([1, 2, 4, 5]), np.array([1, 2, 3, 4]))
    with pytest.raises(PairingError, match=r"A and B evaluated different examples \(1 only in A, 2 only in B, 2 in both\)"):
        align(a, b)
    dup = _table(np.array([1, 1]), np.array([1, 2]))
    with pytest.raises(PairingError, match="appears more than once"):
        align(dup, dup)
    with pytest.raises(PairingError, match="unknown metric 'recall@10'"):
        paired_difference(np.ones(2), np.ones(2), np.full(2, 5), np.full(2, 5), ["recall@10"])


def test_ranks_file_round_trip_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(2)
    users = np.arange(50)
    t1 = _table(users, rng.integers(1, 60, 50))
    t2 = _table(users, rng.integers(1, 60, 50))
    t3 = _table(users, rng.integers(1, 60, 50))
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    write_ranks(tmp_path / "one" / "ranks.parquet", {"base": t1})
    write_ranks(tmp_path / "two" / "ranks.parquet", {"m2": t2, "m3": t3})
    back = read_ranks(tmp_path / "two")
    assert list(back) == ["m2", "m3"]
    for c in t3:
        np.testing.assert_array_equal(back["m3"][c], t3[c])
    out = tmp_path / "cmp.json"
    rc = main([str(tmp_path / "one"), f"{tmp_path / 'two'}:m3", "--metrics", "hr@10", "mrr", "--json", str(out),
               "--plot", str(tmp_path / "cmp.png")])
    assert rc == 0
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"  # the side-by-side picture
    text = capsys.readouterr().out
    assert "| m3 |" in text and "| m2 |" not in text and "Paired differences against `base`" in text
    rows = json.loads(out.read_text())
    want = paired_difference(t1["rank"], t3["rank"], t1["catalog"], t3["catalog"], ["hr@10"])["hr@10"]
    assert rows[0]["hr@10"]["diff"] == pytest.approx(want["diff"])
    # bad input: a directory without ranks, an unknown model name
    (tmp_path / "old").mkdir()
    assert main([str(tmp_path / "one"), str(tmp_path / "old")]) == 3
    assert "no per-example ranks" in capsys.readouterr().err
    assert main([str(tmp_path / "one"), f"{tmp_path / 'two'}:m9"]) == 3
    assert "no model 'm9' (has ['m2', 'm3'])" in capsys.readouterr().err


def test_a_report_records_models_it_cannot_pair_instead_of_failing() -> None:
    """In one hytrec-eval run the checkpoints' own data configs (e.g. data.min_history) may pick
    different eligible users: the report notes the model as not paired and keeps the others."""
    from hytrec_torchrec.evaluation.paired import markdown

    a = _table(np.array([1, 2, 3]), np.array([1, 2, 3]))
    b = _table(np.array([1, 2]), np.array([1, 1]))
    c = _table(np.array([3, 2, 1]), np.array([3, 2, 1]))
    with pytest.raises(PairingError):
        compare([("a", a), ("b", b), ("c", c)], ["hr@1"])
    rows = compare([("a", a), ("b", b), ("c", c)], ["hr@1"], record_unpaired=True)
    assert rows[0]["error"].startswith("a and b evaluated different examples (1 only in a")
    assert rows[1]["hr@1"]["diff"] == 0
    text = markdown(rows, ["hr@1"])
    assert "| b | not paired: a and b evaluated different examples" in text and "| c | 0.3333" in text


def test_length_buckets_pair_the_examples_of_each_bucket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--length-buckets`` compares within [a, b) of the history length (the cutoff), each bucket
    equal to a comparison of only its examples; bad edges are one line, exit status 3."""
    from hytrec_torchrec.evaluation.paired import by_history_length

    rng = np.random.default_rng(5)
    users = np.arange(300)
    a = _table(users, rng.integers(1, 60, 300))  # cutoffs 3, 10, ..., 2096
    b = _table(users, rng.integers(1, 60, 300))
    (tmp_path / "e").mkdir()
    write_ranks(tmp_path / "e" / "ranks.parquet", {"a": a, "b": b})
    parts = dict(by_history_length([("a", a), ("b", b)], [0, 500, 1000]))
    assert list(parts) == ["len[0,500)", "len[500,1000)", "len[1000,inf)"]
    sel = (a["cutoff"] >= 500) & (a["cutoff"] < 1000)
    want = paired_difference(a["rank"][sel], b["rank"][sel], a["catalog"][sel], b["catalog"][sel], ["hr@10"])
    got = compare(parts["len[500,1000)"], ["hr@10"])[0]["hr@10"]
    assert got["diff"] == pytest.approx(want["hr@10"]["diff"]) and got["n"] == int(sel.sum())
    assert sum(int(len(p[0][1]["rank"])) for p in parts.values()) == 300  # every example in one bucket
    out = tmp_path / "cmp.json"
    assert main([str(tmp_path / "e"), "--metrics", "hr@10", "--length-buckets", "0", "500", "1000",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "### len[500,1000): " + str(int(sel.sum())) + " examples" in text and "### len[1000,inf)" in text
    doc = json.loads(out.read_text())
    assert doc["buckets"]["len[500,1000)"][0]["hr@10"]["diff"] == pytest.approx(want["hr@10"]["diff"])
    assert main([str(tmp_path / "e"), "--length-buckets", "500", "100"]) == 3
    assert "--length-buckets: edges must be >= 0 and increasing" in capsys.readouterr().err


def test_side_file_groups_pair_the_examples_of_each_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--side-file`` compares within each value of a user-level column (raw user IDs mapped
    through the data's user vocabulary), each group equal to a comparison of only its users."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(6)
    users = np.arange(2, 202)
    a = _table(users, rng.integers(1, 60, 200))
    b = _table(users, rng.integers(1, 60, 200))
    (tmp_path / "e").mkdir()
    write_ranks(tmp_path / "e" / "ranks.parquet", {"a": a, "b": b})
    (tmp_path / "d" / "vocab").mkdir(parents=True)
    pq.write_table(pa.table({"raw": [f"u{i}" for i in users], "index": users}), tmp_path / "d" / "vocab" / "user.parquet")
    kinds = np.where(users % 3 == 0, "far", "new")
    pq.write_table(pa.table({"user_id": [f"u{i}" for i in users[:-10]], "kind": kinds[:-10]}), tmp_path / "side.parquet")
    assert main([str(tmp_path / "e"), "--metrics", "hr@10", "--side-file", str(tmp_path / "side.parquet"),
                 "--data", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    far = (users % 3 == 0) & (np.arange(200) < 190)
    want = paired_difference(a["rank"][far], b["rank"][far], a["catalog"][far], b["catalog"][far], ["hr@10"])
    assert f"### kind=far: {int(far.sum())} examples" in text and "### kind=new: " in text
    assert f"{want['hr@10']['diff']:+.4f}" in text.split("### kind=far")[1].split("###")[0]
    assert main([str(tmp_path / "e"), "--side-file", str(tmp_path / "side.parquet"), "--data", str(tmp_path / "d"),
                 "--side-column", "segment"]) == 3
    assert "no column 'segment'" in capsys.readouterr().err


def test_over_seeds_is_the_mean_of_the_seeds_differences_with_their_spread() -> None:
    """Two seeds whose paired differences are +0.2 and 0.0: mean +0.1, se = sd / √2 = 0.1."""
    users = np.arange(10)
    base = _table(users, np.full(10, 50))
    two_hits = _table(users, np.array([1, 1] + [50] * 8))
    rows = compare([("a1", base), ("b1", two_hits)], ["hr@10"]) + compare([("a2", base), ("b2", base)], ["hr@10"])
    res = over_seeds(rows, ["hr@10"])["hr@10"]
    assert res["diff"] == pytest.approx(0.1) and res["se"] == pytest.approx(0.1) and res["z"] == pytest.approx(1.0)
    assert (res["seeds"], res["min"], res["max"]) == (2, pytest.approx(0.0), pytest.approx(0.2))
    # one seed's paired se (evaluation noise): √(0.2·0.8·10/9 / 10) for seed 1, 0 for seed 2, root mean square
    assert res["within_se"] == pytest.approx(math.sqrt((math.sqrt(0.2 * 0.8 / 9) ** 2 + 0.0) / 2))
    with pytest.raises(PairingError, match="at least two seeds"):
        over_seeds(rows[:1], ["hr@10"])


def test_seeds_cli_pairs_consecutive_runs_and_refuses_odd_counts(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(5)
    users = np.arange(80)
    tables = {f"{m}_s{s}": _table(users, rng.integers(1, 40, 80)) for s in range(3) for m in ("short", "default")}
    (tmp_path / "e").mkdir()
    write_ranks(tmp_path / "e" / "ranks.parquet", tables)
    runs = [f"{tmp_path / 'e'}:{m}_s{s}" for s in range(3) for m in ("short", "default")]
    out = tmp_path / "seeds.json"
    assert main(["--seeds", "--metrics", "hr@10", "--json", str(out), *runs]) == 0
    text = capsys.readouterr().out
    assert "| 3 | default_s2 − short_s2 |" in text and "Over the 3 seeds" in text
    doc = json.loads(out.read_text())
    per_seed = [paired_difference(tables[f"short_s{s}"]["rank"], tables[f"default_s{s}"]["rank"],
                                  tables[f"short_s{s}"]["catalog"], tables[f"default_s{s}"]["catalog"],
                                  ["hr@10"])["hr@10"]["diff"] for s in range(3)]
    assert doc["over_seeds"]["hr@10"]["diff"] == pytest.approx(np.mean(per_seed))
    assert doc["over_seeds"]["hr@10"]["se"] == pytest.approx(np.std(per_seed, ddof=1) / math.sqrt(3))
    assert main(["--seeds", *runs[:5]]) == 3
    assert "must be pairs" in capsys.readouterr().err
    assert main(["--seeds", *runs[:2]]) == 3
    assert "at least two seeds" in capsys.readouterr().err
    assert main(["--seeds", *runs, "--length-buckets", "1", "10"]) == 3
    assert "does not combine" in capsys.readouterr().err
