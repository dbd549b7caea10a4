"""The long-history benchmarks: determinism, the far / recent definitions, the pattern at training
positions, the reference rankers, prepare, bad parameters."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.cli import main as prep_main
from benchmarks.longhist_heuristics import evaluate as evaluate_rankers
from data_prep.synthetic_longhist import SCENARIOS, LongHistParams, generate, main

PREP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "prep" / "synthetic.yaml"
#: the scenarios with far / recent users by item (replenishment has due / recent / new,
#: category_return far / recent by category: their own tests)
FAR_RECENT = tuple(s for s in SCENARIOS if s not in ("replenishment", "category_return"))
SMALL = dict(min_len=300, max_len=700)


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(d.rglob("*.parquet")):
        t = pq.read_table(f)
        h.update(f"{f.relative_to(d)} {t.schema}".encode())
        for col in t.columns:
            h.update(str(col.to_pylist()).encode())
    return h.hexdigest()


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


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Each scenario once: 160 users, histories of 300-700 events."""
    root = tmp_path_factory.mktemp("longhist")
    return {s: (root / s, generate(LongHistParams(scenario=s, users=160, seed=1, **SMALL), root / s))
            for s in SCENARIOS}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_deterministic_given_the_arguments(tmp_path: Path, scenario: str) -> None:
    p = dict(scenario=scenario, users=30, **SMALL)
    generate(LongHistParams(seed=3, **p), tmp_path / "a")
    generate(LongHistParams(seed=3, **p), tmp_path / "b")
    generate(LongHistParams(seed=4, **p), tmp_path / "c")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert sorted(f.name for f in (tmp_path / "a").iterdir()) == [
        "events", "ground_truth.parquet", "segments.parquet", "synthetic.json"]


def _far_positions(items: np.ndarray, pattern: np.ndarray, k: int) -> np.ndarray:
    """Positions of pattern events whose item occurred before, but not in the k events before."""
    out = []
    for e in np.flatnonzero(pattern):
        if items[e] in set(items[:e].tolist()) and items[e] not in set(items[max(e - k, 0) : e].tolist()):
            out.append(e)
    return np.array(out, np.int64)


@pytest.mark.parametrize("scenario", FAR_RECENT)
def test_far_and_recent_hold_on_the_data(generated: dict, scenario: str) -> None:
    out, summary = generated[scenario]
    p = LongHistParams(**summary["params"])
    k = p.k
    gt, hists = _histories(out)
    assert gt["kind"].count("far") == summary["users_by_kind"]["far"] == 80
    assert gt["kind"].count("recent") == 80
    seg = pq.read_table(out / "segments.parquet").to_pydict()
    assert seg == {"user_id": gt["user_id"], "kind": gt["kind"]}
    n_train, n_ends = 0, 0
    for i, items in enumerate(hists):
        hist, y = items[:-1], items[-1]
        assert p.min_len <= len(items) == gt["n_events"][i] <= p.max_len and y == gt["target_item"][i]
        window = set(hist[-k:].tolist())
        if gt["kind"][i] == "far":  # not in the last k history events, at least min_prior times before
            assert y not in window and (hist == y).sum() >= p.min_prior
            assert gt["pattern_target"][i]
        else:
            assert gt["kind"][i] == "recent" and y in window
        # the pattern events, from the ground truth alone
        pat_items = np.array(gt["items"][i])
        if scenario == "favourites":
            pattern = np.isin(items, pat_items)
            for f in pat_items:  # every return is gap_min .. gap_max (+ a few on collisions) after the last
                gaps = np.diff(np.flatnonzero(items == f))
                assert len(gaps) == 0 or (p.gap_min <= gaps.min() and gaps.max() <= p.gap_max + p.favourites)
        elif scenario == "periodic":
            pattern = np.isin(items, pat_items)
            for f, per, ph in zip(pat_items, gt["periods"][i], gt["phases"][i]):
                assert p.period_min <= per <= p.period_max
                assert list(np.flatnonzero(items == f)) == list(range(ph, len(items), per))
        else:
            group = np.full(len(items), -1)
            for g in range(p.interests):
                group[np.isin(items, pat_items[g * p.group_size : (g + 1) * p.group_size])] = g
            inter = np.flatnonzero(group >= 0)
            starts = inter[1:][group[inter[1:]] != group[inter[:-1]]]
            assert (np.diff(starts) >= p.session_min).all()
            # consecutive sessions follow the cycle order
            assert ((group[starts] - group[inter[np.searchsorted(inter, starts) - 1]]) % p.interests == 1).all()
            pattern = np.zeros(len(items), bool)
            pattern[starts] = True
            # a far end needs the ending interest to have had an earlier session (the cycle order shown)
            ending_start = np.r_[inter[0], starts[:-1]]
            cycle_seen = [bool((group[inter[inter < a]] == group[inter[inter < s][-1]]).any())
                          for a, s in zip(ending_start, starts)]
            end_ok = np.zeros(len(items), bool)
            end_ok[starts[cycle_seen]] = True
            assert gt["session_start"][i] == gt["pattern_target"][i] == bool(pattern[-1])
            if gt["kind"][i] == "far":  # the next interest in the cycle after the one that ends
                assert group[-1] == (group[inter[-2]] + 1) % p.interests
        assert gt["pattern_target"][i] == bool(pattern[-1])
        far_pos = _far_positions(items, pattern, k)
        n_train += int((far_pos <= len(items) - 3).sum())
        if scenario != "interleaved":
            end_ok = pattern
        n_ends += sum(int((items[:e] == items[e]).sum() >= p.min_prior and end_ok[e])
                      for e in far_pos if e <= len(items) - 3)
    # the pattern the far targets test is in the training positions, many times over: events whose
    # item was last seen more than k events back (and, fewer, ones a far history could end on)
    assert summary["far_recurrences_in_training"] == n_train
    assert summary["far_end_events_in_training"] == n_ends
    assert n_train > len(hists) and n_ends > len(hists) / 10


def test_reference_rankers_need_the_far_history(generated: dict) -> None:
    """benchmarks/longhist_heuristics.py: counting the last k events never finds a far target; the
    scenario oracle finds most of them; the window explains most recent targets."""
    from benchmarks.longhist_heuristics import evaluate

    for scenario in FAR_RECENT:
        res = evaluate(generated[scenario][0])
        far, recent = res["far"], res["recent"]
        assert far["last_k_counts"]["users"] == recent["last_k_counts"]["users"] == 80
        assert far["last_k_counts"]["hr@10"] == 0.0, scenario
        assert far["oracle"]["hr@10"] >= 0.85, (scenario, far)
        assert far["oracle"]["hr@10"] >= far["history_counts"]["hr@10"] + 0.5, (scenario, far)
        assert recent["last_k_counts"]["hr@10"] > 0.6, (scenario, recent)


def test_replenishment_due_recent_and_new_hold_on_the_data(generated: dict) -> None:
    """Staples are bought every cycle · (1 ± jitter) events (a few more on collisions) and viewed
    in between; a due target is a staple bought at least min_prior times before and absent from
    the last k events; a new target was never seen; a recent one is in the last k events."""
    out, summary = generated["replenishment"]
    p = LongHistParams(**summary["params"])
    ev = pq.read_table(out / "events")
    gt = pq.read_table(out / "ground_truth.parquet").to_pydict()
    assert summary["users_by_kind"] == {"due": 80, "new": 32, "recent": 48}
    user, item, ts = (ev.column(c).to_numpy() for c in ("user_id", "item_id", "timestamp"))
    beh = np.asarray(ev.column("behavior").to_pylist())
    order = np.lexsort((ts, user))
    user, item, beh = user[order], item[order], beh[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    ends = np.r_[starts[1:], len(user)]
    views, cycles = 0, 0.0
    for i, (a, b) in enumerate(zip(starts, ends)):
        items, bought = item[a:b], beh[a:b] == "pay"
        hist, y, kind = items[:-1], items[-1], gt["kind"][i]
        window = set(hist[-p.k:].tolist())
        if kind == "due":
            assert y in gt["items"][i] and bought[-1] and y not in window
            assert int((bought[:-1] & (hist == y)).sum()) >= p.min_prior
        elif kind == "new":
            assert y not in set(hist.tolist())
        else:
            assert kind == "recent" and y in window
        for f, cycle in zip(gt["items"][i], gt["cycles"][i]):
            assert p.cycle_min <= cycle <= p.cycle_max
            gaps = np.diff(np.flatnonzero((items == f) & bought))
            lo, hi = cycle * (1 - p.jitter) - 1, cycle * (1 + p.jitter) + 1 + 2 * p.staples
            assert len(gaps) == 0 or (gaps.min() >= lo and gaps.max() <= hi), (f, cycle, gaps)
            views += int(((items == f) & ~bought).sum())
            cycles += len(items) / cycle
    assert 0.8 * p.staple_views * cycles <= views <= 1.1 * p.staple_views * cycles  # views between purchases
    res = evaluate_rankers(out)
    assert res["due"]["last_k_counts"]["hr@10"] == 0.0
    assert res["due"]["oracle"]["hr@10"] >= 0.9 and res["due"]["most_purchased"]["hr@10"] < 0.8
    assert res["new"]["oracle"]["hr@10"] == 0.0 and res["recent"]["last_k_counts"]["hr@10"] > 0.6


def _category_histories(out: Path) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]]]:
    """Ground truth and each user's (items, categories) in time order."""
    ev = pq.read_table(out / "events")
    gt = pq.read_table(out / "ground_truth.parquet").to_pydict()
    user, item, ts, cat = (ev.column(c).to_numpy() for c in ("user_id", "item_id", "timestamp", "category_id"))
    order = np.lexsort((ts, user))
    user, item, cat = user[order], item[order], cat[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    ends = np.r_[starts[1:], len(user)]
    assert list(user[starts]) == gt["user_id"]
    return gt, [(item[a:b], cat[a:b]) for a, b in zip(starts, ends)]


def test_category_return_far_and_recent_hold_on_the_data(generated: dict) -> None:
    """Non-learned check of the category kinds: every target is an item new to the user; a far
    target's category is absent from the last k history events and occurs further back (at least
    min_prior times, last at least return_min events back); a recent target's category is in
    the last k events. Categories partition the catalog, interest categories occur only in
    episodes separated by at least return_min events, and their items are new to the user."""
    out, summary = generated["category_return"]
    p = LongHistParams(**summary["params"])
    k = p.k
    gt, hists = _category_histories(out)
    assert summary["users_by_kind"] == {"far": 80, "recent": 80}
    assert pq.read_table(out / "segments.parquet").to_pydict() == {"user_id": gt["user_id"], "kind": gt["kind"]}
    # the catalog: one category per item, category_size_min .. max items each, at most `categories`
    ev = pq.read_table(out / "events", columns=["item_id", "category_id"])
    pairs = np.unique(np.stack([ev.column(0).to_numpy(), ev.column(1).to_numpy()], 1), axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs)
    assert 1 <= pairs[:, 1].min() and pairs[:, 1].max() <= p.categories
    assert len(np.unique(pairs[:, 1])) > p.categories // 2
    per_cat = np.bincount(pairs[:, 1])
    assert per_cat.max() <= p.category_size_max
    n_far_train, repeats = 0, 0
    for i, (items, cats) in enumerate(hists):
        hist, hcat, y, yc = items[:-1], cats[:-1], items[-1], cats[-1]
        assert p.min_len <= len(items) == gt["n_events"][i] <= p.max_len
        assert y == gt["target_item"][i] and yc == gt["target_category"][i]
        assert y not in set(hist.tolist())  # a new item: the item-level repeat path cannot help
        seen = np.flatnonzero(hcat == yc)
        gap = len(hist) - int(seen[-1]) if len(seen) else -1
        assert gap == gt["category_gap"][i]
        interests = gt["interests"][i]
        assert p.cat_interests_min <= len(interests) == len(set(interests)) <= p.cat_interests_max
        if gt["kind"][i] == "far":
            assert yc not in set(hcat[-k:].tolist()) and len(seen) >= p.min_prior and gap >= p.return_min
            assert yc in interests and gt["pattern_target"][i] and gt["episode_start"][i]
        else:
            assert gt["kind"][i] == "recent" and yc in set(hcat[-k:].tolist()) and 1 <= gap <= k
        # interest categories come in episodes (at most episode_max events) at least return_min apart
        for c in interests:
            at = np.flatnonzero(cats == c)
            if len(at) == 0:
                continue
            jumps = np.diff(at)
            assert ((jumps < p.episode_max) | (jumps >= p.return_min)).all(), (c, jumps)
            firsts = at[np.r_[True, jumps >= p.return_min]]
            n_far_train += int((firsts[1:] <= len(items) - 3).sum())
            repeats += len(at) - len(np.unique(items[at]))
    assert summary["far_recurrences_in_training"] == n_far_train > len(hists)
    assert summary["interest_repeats"] == repeats == 0  # categories of 50+ items are not exhausted here
    fg = summary["far_category_gap"]
    assert p.return_min <= fg["min"] <= fg["median"] <= fg["max"]
    # item-count rankers: a target is never in the history, so they all score 0
    res = _item_count_rankers(out)
    assert all(r["hr@10"] == 0.0 for kind in res.values() for r in kind.values())


def _item_count_rankers(out: Path) -> dict:
    """The item-count rankers of benchmarks/longhist_heuristics.py (last k, whole history)."""
    from collections import Counter

    from benchmarks.longhist_heuristics import rankers
    from data_prep.synthetic import kind_histories, ranker_hit_rates

    params = {**json.loads((out / "synthetic.json").read_text())["params"], "scenario": "favourites"}
    fns = {n: f for n, f in rankers(params, Counter()).items() if n != "oracle"}
    return ranker_hit_rates(kind_histories(out), fns)


def test_category_return_prepares_with_its_categories(tmp_path: Path) -> None:
    """``hytrec-prep`` keeps every event of category_return and reads its category_id."""
    s = generate(LongHistParams(scenario="category_return", users=40, seed=2, **SMALL), tmp_path / "raw")
    assert prep_main([str(tmp_path / "raw" / "events"), str(tmp_path / "prep"), "--config", str(PREP_CONFIG)]) == 0
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert meta["users_out"] == 40 and meta["events_out"] == s["events"]
    n_cat = len(set(pq.read_table(tmp_path / "raw" / "events", columns=["category_id"]).column(0).to_pylist()))
    assert meta["vocab_sizes"]["category"] >= n_cat > 40


def test_prepares_with_hytrec_prep(tmp_path: Path) -> None:
    """``hytrec-prep RAW/events PREPARED --config configs/prep/synthetic.yaml`` keeps every user and event."""
    s = generate(LongHistParams(scenario="interleaved", users=50, seed=2, **SMALL), tmp_path / "raw")
    assert prep_main([str(tmp_path / "raw" / "events"), str(tmp_path / "prep"), "--config", str(PREP_CONFIG)]) == 0
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert meta["users_out"] == 50 and meta["events_out"] == s["events"]


@pytest.mark.parametrize("kw, msg", [
    (dict(scenario="bursts"), "scenario"),
    (dict(users=0), "users"),
    (dict(min_len=50), "min_len, max_len"),
    (dict(max_len=250), "min_len, max_len"),
    (dict(far_fraction=1.5), "far_fraction"),
    (dict(min_prior=0), "min_prior"),
    (dict(gap_min=64), "gap_min = 64 must exceed k = 64"),
    (dict(gap_max=100), "gap_max"),
    (dict(favourites=0), "favourites"),
    (dict(min_prior=7), "max_len"),
    (dict(scenario="periodic", period_min=30), "period_min"),
    (dict(scenario="periodic", period_max=90), "period_max"),
    (dict(scenario="periodic", periodic=0), "periodic"),
    (dict(scenario="interleaved", session_min=60), "session_min"),
    (dict(scenario="interleaved", interests=1), "interests"),
    (dict(scenario="interleaved", interests=13), "max_len"),
    (dict(scenario="interleaved", n_items=20), "n_items"),
    (dict(p_interest=-0.1), "p_interest"),
    (dict(regime=0), "regime"),
    (dict(scenario="replenishment", cycle_min=60), "cycle_min"),
    (dict(scenario="replenishment", staples=0), "staples"),
    (dict(scenario="replenishment", jitter=1.0), "jitter"),
    (dict(scenario="replenishment", cycle_min=70, jitter=0.2), "jitter"),
    (dict(scenario="replenishment", new_fraction=0.6), "new_fraction"),
    (dict(scenario="replenishment", staple_views=-1.0), "staple_views"),
    (dict(scenario="category_return", return_min=64), "return_min = 64 must exceed k = 64"),
    (dict(scenario="category_return", return_max=100), "return_max"),
    (dict(scenario="category_return", categories=7), "categories"),
    (dict(scenario="category_return", cat_interests_min=0), "cat_interests_min, cat_interests_max"),
    (dict(scenario="category_return", cat_interests_min=7), "cat_interests_min, cat_interests_max"),
    (dict(scenario="category_return", category_size_max=40), "category_size_min, category_size_max"),
    (dict(scenario="category_return", episode_min=0), "episode_min, episode_max"),
    (dict(scenario="category_return", p_episode=1.5), "p_episode"),
    (dict(scenario="category_return", return_min=400, min_len=300, max_len=400), "max_len"),
])
def test_bad_parameters_name_the_field(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        LongHistParams(**kw).validate()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--scenario", "periodic", "--out", str(tmp_path / "x"), "--period-min", "40"])
    assert "period_min = 40 must exceed k = 64" in capsys.readouterr().err
    assert main(["--scenario", "favourites", "--users", "10", "--out", str(tmp_path / "y"), "--max-len", "400"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["users"] == 10 and printed["users_by_kind"] == {"far": 5, "recent": 5}
    assert json.loads((tmp_path / "y" / "synthetic.json").read_text())["params"]["max_len"] == 400
    assert main(["--scenario", "category_return", "--users", "6", "--out", str(tmp_path / "z"), "--max-len", "400",
                 "--return-max", "300", "--cat-interests-max", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["users_by_kind"] == {"far": 3, "recent": 3} and printed["interest_repeats"] == 0
