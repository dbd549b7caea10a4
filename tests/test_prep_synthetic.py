"""The synthetic generator: determinism, the planted long-term property, planted scalpers/silent users."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep.prepare import prepare
from data_prep.synthetic import SynthParams, generate
from tests.data_prep_util import cfg


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(d.rglob("*.parquet")):
        t = pq.read_table(f)
        h.update(f"{f.relative_to(d)} {t.schema}".encode())
        for col in t.columns:
            h.update(str(col.to_pylist()).encode())
    return h.hexdigest()


def test_deterministic_given_seed(tmp_path: Path) -> None:
    a = generate(SynthParams(events=5000, seed=7, max_len=400), tmp_path / "a")
    b = generate(SynthParams(events=5000, seed=7, max_len=400), tmp_path / "b")
    c = generate(SynthParams(events=5000, seed=8, max_len=400), tmp_path / "c")
    assert a["events"] == b["events"] == 5000
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert c["events"] == 5000 and _digest(tmp_path / "c") != _digest(tmp_path / "a")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def _events_by_user(out: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ground truth and the events of a generated dataset in (user, time) order: user, item and
    category columns [n_events], and each user's first / past-the-end event index [n_users]."""
    ev = pq.read_table(out / "events")
    gt = pq.read_table(out / "ground_truth.parquet").to_pydict()
    user, item, cat, ts = (ev.column(c).to_numpy() for c in ("user_id", "item_id", "category_id", "timestamp"))
    order = np.lexsort((ts, user))  # the generator writes users in time order already; be safe
    user, item, cat = user[order], item[order], cat[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    return gt, user, item, cat, starts, np.r_[starts[1:], len(user)]


def test_long_term_targets_absent_from_last_k(tmp_path: Path) -> None:
    k = 64
    s = generate(SynthParams(events=200_000, seed=1, max_len=12288, k=k, chunk_events=50_000), tmp_path / "s")
    assert s["max_history"] >= 12_000 and s["files"] > 1
    gt, user, item, cat, starts, ends = _events_by_user(tmp_path / "s")
    n_long = 0
    for i, u in enumerate(gt["user_id"]):
        s0, e0 = starts[i], ends[i]
        assert user[s0] == u and e0 - s0 == gt["n_events"][i]
        assert list(item[e0 - 1 : e0]) == gt["target_items"][i]
        if gt["kind"][i] != "long_term":
            continue
        n_long += 1
        window_items = set(item[e0 - 1 - k : e0 - 1].tolist())
        window_cats = set(cat[e0 - 1 - k : e0 - 1].tolist())
        target = gt["target_items"][i][0]
        assert target not in window_items, f"user {u}: target in last-{k} window"
        assert not window_cats & set(gt["long_term_categories"][i]), f"user {u}: long-term category in window"
        # ... yet the long history carries the signal: the target is a favourite seen earlier
        assert target in gt["long_term_items"][i]
        assert (item[s0 : e0 - 1 - k] == target).sum() >= 3
    assert n_long > 50
    # burst: short-term users' targets come from their burst items, which fill the window
    short = [i for i, kd in enumerate(gt["kind"]) if kd == "short_term"]
    assert all(gt["target_items"][i][0] in gt["burst_items"][i] for i in short)


def test_history_lengths_power_law(tmp_path: Path) -> None:
    s = generate(SynthParams(events=300_000, seed=2), tmp_path / "s")
    n = pq.read_table(tmp_path / "s" / "ground_truth.parquet").column("n_events").to_numpy()
    assert n.max() == 12288 and np.median(n) < 60 and (n >= 1000).sum() > 10
    assert s["users_by_kind"]["scalper"] > 0


def test_prepare_catches_planted_scalpers_and_silent_users(tmp_path: Path) -> None:
    generate(SynthParams(events=100_000, seed=4, max_len=3000, p_scalper=0.003), tmp_path / "s")
    gt = pq.read_table(tmp_path / "s" / "ground_truth.parquet")
    meta = prepare(str(tmp_path / "s" / "events"), tmp_path / "p",
                   cfg("filters.scalper_min_events=2000", "filters.inactive_days=60", "filters.min_user_events=1"))
    f = {x["name"]: x for x in meta["filters"]}
    scalpers = pc.equal(gt.column("kind"), "scalper")
    assert pc.sum(scalpers).as_py() > 0
    assert f["scalper_accounts"]["users_removed"] == pc.sum(scalpers).as_py()
    silent_not_scalper = pc.and_(gt.column("silent"), pc.invert(scalpers))
    assert f["inactive_users"]["users_removed"] == pc.sum(silent_not_scalper).as_py()


def test_cli_length_distribution_flags(tmp_path: Path, capsys) -> None:
    """``--min-len`` / ``--alpha`` reach the generator: every history is at least ``min_len``
    long (the long-history experiment of docs/results.md uses them), and bad values are errors
    naming the flag."""
    import json

    from data_prep.synthetic import main

    out = tmp_path / "long"
    assert main(["--events", "20000", "--out", str(out), "--max-len", "600", "--min-len", "200",
                 "--alpha", "1.5"]) == 0
    params = json.loads((out / "synthetic.json").read_text())["params"]
    assert (params["min_len"], params["alpha"], params["max_len"]) == (200, 1.5, 600)
    gt = pq.read_table(out / "ground_truth.parquet", columns=["n_events", "kind"]).to_pydict()
    lens = np.array(gt["n_events"])
    scalper = np.array(gt["kind"]) == "scalper"  # planted with 5000+ events whatever max_len is
    assert lens.sum() == 20000 and lens.min() >= 200 and lens[~scalper].max() <= 600
    for bad, flag in ((["--alpha", "1.0"], "--alpha"), (["--min-len", "1"], "min_len")):
        with pytest.raises(SystemExit):
            main(["--events", "20000", "--out", str(tmp_path / "bad")] + bad)
        assert flag in capsys.readouterr().err


def _returns_per_user(out: Path, k: int) -> tuple[dict, list[int]]:
    """Ground truth, and per long-term user the number of history positions (before the last-k
    window) holding a favourite right after k events without a long-term category."""
    gt, _, item, cat, starts, ends = _events_by_user(out)
    counts = []
    for i, kind in enumerate(gt["kind"]):
        if kind != "long_term":
            continue
        s0, e0 = starts[i], ends[i]
        h = e0 - 1 - k - s0  # events before the window (one target)
        fav = np.isin(item[s0 : s0 + h], gt["long_term_items"][i])
        lt = np.r_[0, np.cumsum(np.isin(cat[s0 : s0 + h], gt["long_term_categories"][i]))]
        e = np.arange(k, h)
        counts.append(int((fav[e] & (lt[e] - lt[e - k] == 0)).sum()))
        # the long-term target keeps its properties: absent from the window, 3+ copies before it
        target = gt["target_items"][i][0]
        assert target not in set(item[e0 - 1 - k : e0 - 1].tolist())
        assert (item[s0 : s0 + h] == target).sum() >= 3
    return gt, counts


def test_return_episodes_put_the_long_term_pattern_into_training_events(tmp_path: Path) -> None:
    """Without ``returns`` no history event is a favourite right after k events without a
    long-term category, so the long-term targets test a pattern no training event shows; with
    ``returns=3`` each long-term user with room gets up to 3 such episodes, counted in the
    summary, and the planted target copies survive."""
    k = 64
    base = dict(events=120_000, seed=3, max_len=1000, min_len=150, alpha=1.5, k=k, chunk_events=40_000)
    generate(SynthParams(**base), tmp_path / "off")
    _, off = _returns_per_user(tmp_path / "off", k)
    assert len(off) > 50 and sum(off) == 0
    s = generate(SynthParams(**base, returns=3), tmp_path / "on")
    gt, on = _returns_per_user(tmp_path / "on", k)
    assert sum(on) == s["return_episodes"] > len(on)  # more than one per long-term user on average
    assert max(on) <= 3
    n_long = [n for n, kd in zip(gt["n_events"], gt["kind"]) if kd == "long_term"]
    # room for 3 episodes of k + 1 events between the planted copies: every user this long has 3
    assert all(c == 3 for c, n in zip(on, n_long) if n - 1 - k >= 8 * (k + 2))
    with pytest.raises(ValueError, match="returns"):
        SynthParams(events=1000, returns=-1).resolved()
