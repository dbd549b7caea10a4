"""The long-range recall generator: determinism, the planted property, prepare, bad parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.prepare import prepare
from data_prep.synthetic_recall import RecallParams, generate, main
from tests.data_prep_util import cfg


def _histories(out: Path) -> tuple[dict, list[np.ndarray]]:
    """Ground truth and each user's items in time order (one array per ground-truth row)."""
    ev = pq.read_table(out / "events")
    gt = pq.read_table(out / "ground_truth.parquet").to_pydict()
    user, item, ts = (ev.column(c).to_numpy() for c in ("user_id", "item_id", "timestamp"))
    order = np.lexsort((ts, user))
    user, item, ts = user[order], item[order], ts[order]
    assert (np.diff(ts)[user[1:] == user[:-1]] > 0).all(), "timestamps must be distinct within a user"
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    ends = np.r_[starts[1:], len(user)]
    assert list(user[starts]) == gt["user_id"]
    return gt, [item[a:b] for a, b in zip(starts, ends)]


def test_deterministic_given_seed(tmp_path: Path) -> None:
    p = dict(users=50, min_len=120, max_len=300)
    generate(RecallParams(seed=3, **p), tmp_path / "a")
    generate(RecallParams(seed=3, **p), tmp_path / "b")
    generate(RecallParams(seed=4, **p), tmp_path / "c")
    read = lambda d: pq.read_table(d / "events").to_pydict()  # noqa: E731
    assert read(tmp_path / "a") == read(tmp_path / "b")
    assert read(tmp_path / "a") != read(tmp_path / "c")


def test_next_favourite_is_only_in_the_far_history(tmp_path: Path) -> None:
    k, f, s = 64, 8, 12
    summary = generate(RecallParams(users=200, seed=1, min_len=150, max_len=600, k=k, favourites=f, spacing=s),
                       tmp_path / "r")
    gt, hists = _histories(tmp_path / "r")
    n_fav_events = 0
    for i, items in enumerate(hists):
        fav = gt["favourites"][i]
        assert len(set(fav)) == f and gt["n_events"][i] == len(items) and 150 <= len(items) <= 600
        assert items[-1] == gt["target_item"][i]
        where = np.flatnonzero(np.isin(items, fav))
        n_fav_events += len(where)
        # favourites only in their slots: every s events, in a fixed cycle
        assert (np.diff(where) == s).all() and where[0] < s
        seq = [fav.index(x) for x in items[where]]
        assert all((b - a) % f == 1 for a, b in zip(seq, seq[1:]))
        # each favourite visit after the first cycle repeats the item f*s events back, and the last
        # k events before it do not hold it
        for e in where[where >= f * s]:
            assert items[e - f * s] == items[e] and items[e] not in set(items[e - k : e])
        # the test target: a favourite for recall users, background for the others
        assert (gt["kind"][i] == "recall") == (where[-1] == len(items) - 1)
    assert summary["favourite_events"] == n_fav_events
    kinds = gt["kind"]
    assert summary["users_by_kind"] == {"recall": kinds.count("recall"), "other": kinds.count("other")}
    assert 60 < kinds.count("recall") < 140
    seg = pq.read_table(tmp_path / "r" / "segments.parquet").to_pydict()
    assert seg == {"user_id": gt["user_id"], "kind": kinds}


def test_prepare_keeps_every_user_and_event(tmp_path: Path) -> None:
    s = generate(RecallParams(users=40, seed=2, min_len=120, max_len=200), tmp_path / "raw")
    report = prepare(str(tmp_path / "raw" / "events"), str(tmp_path / "prep"), cfg())
    assert report["users_out"] == 40 and report["events_out"] == s["events"]


@pytest.mark.parametrize("kw, msg", [
    (dict(favourites=4, spacing=16), "must exceed k = 64"),
    (dict(min_len=50), "min_len, max_len"),
    (dict(max_len=210), "min_len, max_len"),
    (dict(p_recall=1.5), "p_recall"),
    (dict(users=0), "users"),
])
def test_bad_parameters_name_the_field(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        RecallParams(**{"users": 10, **kw}).validate()


def test_cli_rejects_a_window_that_holds_the_next_favourite(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--users", "10", "--out", str(tmp_path / "x"), "--favourites", "4", "--spacing", "10"])
    assert "must exceed k = 64" in capsys.readouterr().err
    assert main(["--users", "10", "--out", str(tmp_path / "y"), "--min-len", "120", "--max-len", "150"]) == 0
    assert (tmp_path / "y" / "segments.parquet").exists()


def test_reference_rankers_what_the_recall_target_needs(tmp_path: Path) -> None:
    """benchmarks/recall_heuristics.py on a small sample: no count over the last k events finds a
    recall target (it is never in the window), the generator's period finds every one in its top
    10, and nothing periodic is predicted for background targets."""
    from benchmarks.recall_heuristics import evaluate

    generate(RecallParams(users=120, seed=5, min_len=200, max_len=400), tmp_path)  # >= 2 earlier visits
    res = evaluate(tmp_path, k=64, period=96)
    assert res["recall"]["window_freq"]["hr@10"] == 0.0
    assert res["recall"]["periodic"]["hr@10"] == 1.0 and res["recall"]["periodic"]["hr@1"] > 0.5
    assert res["other"]["periodic"]["hr@10"] == 0.0
    assert res["other"]["window_freq"]["hr@10"] > 0.2  # the current interest, counted in the window
    assert res["recall"]["window_freq"]["users"] + res["other"]["window_freq"]["users"] == 120
