"""Synthetic raw events with known ground truth (docs/design.md §3.4).

    python -m data_prep.synthetic --events N --out DIR [--seed S] [--max-len 12288] [--k 64]
        [--min-len 20] [--alpha 1.2]

Writes ``DIR/events/part-CCCCC.parquet`` (raw schema, one file per chunk of users),
``DIR/ground_truth.parquet`` (one row per user) and ``DIR/synthetic.json`` (the parameters).
Generation is vectorised with numpy, chunk by chunk (memory bounded by the chunk size), and
deterministic given the arguments: chunk ``c`` uses the generator seeded with ``(seed, c)``.

The world: ``n_items`` items in ``n_categories`` categories (category popularity is Zipf-like,
item popularity within a category is skewed). History lengths follow a power law
(``min_len * U**(-1/alpha)``, capped at ``max_len``; with enough events one user is planted at
``max_len``). Every user has

* long-term interests: ``3`` categories and ``8`` favourite items in them; a share ``p_long`` of
  the events before the last-K window are drawn from them (70 % favourites), so they recur
  sparsely over the whole history (the favourite that becomes the target is also planted at
  10 %, 40 % and 70 % of the history);
* a short-term intent: a burst category (never one of its long-term ones) and 4 burst items;
  half of the last ``k`` events before the target are burst events;
* funnel-stage behaviours (click ... pay) and attribution IDs (0 = organic, else a campaign tied
  to the item's category).

The last ``n_targets`` events of a user are its targets. For ``long_term`` users (a share
``p_long_target`` of users with at least ``2k + 16`` events) the targets are favourite items, and
the ``k`` events before the first target contain no item of any long-term category: a model that
sees only the last ``k`` events cannot predict them, one that sees the whole history can.
With ``returns > 0`` (off by default) every long-term user also *returns* to its favourites
inside its history, up to ``returns`` times: a stretch of ``k`` events with no item of a
long-term category, then one of its favourites (avoiding the planted copies of the target), so the
training events themselves contain the pattern the long-term targets test. Without it, no
training event ever has a favourite right after ``k`` events without one, and what a model
predicts for long-term targets is an extrapolation rather than something it was trained on.
``short_term`` users have burst items as targets. ``scalper`` users (a share ``p_scalper``) have
5000+ events, all ``click``, never ``pay``. ``silent`` users stopped 120-300 days before the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["SynthParams", "generate", "BEHAVIORS", "kind_histories", "ranker_hit_rates"]

BEHAVIORS = ("click", "redirect", "activation", "wakeup", "product_click", "stay", "collect", "add_to_cart", "pay")
_BEH_P = np.array([0.55, 0.05, 0.02, 0.02, 0.15, 0.08, 0.04, 0.05, 0.04])
N_LT, N_FAV, N_BURST = 3, 8, 4
DAY = 86400
T_END = 1_700_000_000


@dataclass
class SynthParams:
    """Generator parameters (defaults scale with ``events``)."""

    events: int
    seed: int = 0
    n_items: int = 0  # 0: events // 50 clamped to [2000, 2_000_000]
    n_categories: int = 0  # 0: n_items // 100 clamped to [20, 2000]
    min_len: int = 20
    max_len: int = 12288
    alpha: float = 1.2
    k: int = 64
    n_targets: int = 1
    p_long: float = 0.2
    p_long_target: float = 0.5
    p_burst: float = 0.5
    returns: int = 0  # return episodes per long-term user (module docstring)
    p_scalper: float = 0.0005
    p_silent: float = 0.03
    days: int = 365
    chunk_events: int = 2_000_000

    def resolved(self) -> "SynthParams":
        """A copy with the automatic sizes filled in."""
        p = SynthParams(**asdict(self))
        p.n_items = p.n_items or int(np.clip(p.events // 50, 2000, 2_000_000))
        p.n_categories = p.n_categories or int(np.clip(p.n_items // 100, 20, 2000))
        if p.max_len < 2 * p.k + 16 or p.min_len < p.n_targets + 1:
            raise ValueError("need max_len >= 2k + 16 and min_len > n_targets")
        if p.returns < 0:
            raise ValueError(f"need returns >= 0, got {p.returns}")
        return p


@dataclass
class _World:
    cat_cdf: np.ndarray
    cat_start: np.ndarray
    cat_size: np.ndarray
    item_raw: np.ndarray  # internal item -> raw ID
    item_cat: np.ndarray


def events_table(user_id: np.ndarray, item_id: np.ndarray, timestamp: np.ndarray, behavior: np.ndarray,
                 attribution_id: np.ndarray, category_id: np.ndarray) -> pa.Table:
    """Events in the raw schema (docs/design.md §3.1), one ``[N]`` array per column: raw IDs and Unix-second
    timestamps (int64) and ``behavior`` as int8 codes into :data:`BEHAVIORS` (written
    dictionary-encoded). Shared by the generators of this package."""
    return pa.table({
        "user_id": pa.array(user_id),
        "item_id": pa.array(item_id),
        "timestamp": pa.array(timestamp),
        "behavior": pa.DictionaryArray.from_arrays(pa.array(behavior), pa.array(BEHAVIORS)),
        "attribution_id": pa.array(attribution_id),
        "category_id": pa.array(category_id),
    })


def list_column(a: np.ndarray) -> pa.Array:
    """A ``[n, m]`` array as a list column of ``n`` rows of ``m`` values."""
    return pa.ListArray.from_arrays(pa.array(np.arange(0, a.size + 1, a.shape[1], dtype=np.int32)), pa.array(a.ravel()))


def clear_events_dir(out: Path) -> None:
    """Create ``out/events`` and remove ``part-*.parquet`` files a previous run left there."""
    (out / "events").mkdir(parents=True, exist_ok=True)
    for old in (out / "events").glob("part-*.parquet"):
        old.unlink()


def _world(p: SynthParams, rng: np.random.Generator) -> _World:
    c = p.n_categories
    pop = 1.0 / np.arange(1, c + 1) ** 0.8
    pop = pop[rng.permutation(c)]
    sizes = 1 + rng.multinomial(p.n_items - c, rng.dirichlet(np.full(c, 2.0)))
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return _World(
        cat_cdf=np.cumsum(pop / pop.sum()),
        cat_start=start,
        cat_size=sizes,
        item_raw=rng.permutation(p.n_items).astype(np.int64) + 100_000,
        item_cat=np.repeat(np.arange(c), sizes),
    )


def _cats(w: _World, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(w.cat_cdf, rng.random(n)), len(w.cat_cdf) - 1)


def _item_in(w: _World, rng: np.random.Generator, cats: np.ndarray) -> np.ndarray:
    u = rng.random(len(cats)) ** 2  # skew toward the category's popular (first) items
    return w.cat_start[cats] + np.minimum((u * w.cat_size[cats]).astype(np.int64), w.cat_size[cats] - 1)


def _lengths(p: SynthParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """History lengths summing to exactly ``events``, and the scalper flags."""
    out, flags, total = [], [], 0
    mean = p.min_len * p.alpha / (p.alpha - 1)
    while total < p.events:
        n = max(1024, int((p.events - total) / mean * 1.1))
        lens = np.minimum((p.min_len * rng.random(n) ** (-1.0 / p.alpha)).astype(np.int64), p.max_len)
        sc = rng.random(n) < p.p_scalper
        lens[sc] = np.maximum(lens[sc], rng.integers(5000, max(5001, p.max_len + 1), int(sc.sum())))
        out.append(lens)
        flags.append(sc)
        total += int(lens.sum())
    lens, scalper = np.concatenate(out), np.concatenate(flags)
    cut = int(np.searchsorted(np.cumsum(lens), p.events))
    lens, scalper = lens[: cut + 1].copy(), scalper[: cut + 1].copy()
    if p.events >= 4 * p.max_len:
        lens[0], scalper[0] = p.max_len, False  # plant one ultra-long (non-scalper) user
    total = int(lens.sum())
    while total > p.events:  # trim or drop users at the end to hit exactly `events`
        need = total - p.events
        if lens[-1] - need >= p.min_len:
            lens[-1] -= need
            total = p.events
        else:
            total -= int(lens[-1])
            lens, scalper = lens[:-1], scalper[:-1]
    if total < p.events:  # a last (possibly short) user takes the remainder
        lens = np.append(lens, p.events - total)
        scalper = np.append(scalper, False)
    return lens, scalper & (lens >= 5000)


def _not_in(vals: np.ndarray, sets: np.ndarray) -> np.ndarray:
    return ~(vals[:, None] == sets).any(axis=1)


def _users(
    p: SynthParams, w: _World, lens: np.ndarray, scalper: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    n = len(lens)
    lt = _cats(w, rng, n * N_LT).reshape(n, N_LT)
    fav = _item_in(w, rng, lt[np.arange(n)[:, None], rng.integers(0, N_LT, (n, N_FAV))].ravel()).reshape(n, N_FAV)
    burst = _cats(w, rng, n)
    for _ in range(50):
        bad = ~_not_in(burst, lt)
        if not bad.any():
            break
        burst[bad] = _cats(w, rng, int(bad.sum()))
    bad = ~_not_in(burst, lt)
    while bad.any():  # deterministic fallback: next category id not in the long-term set
        burst[bad] = (burst[bad] + 1) % p.n_categories
        bad = ~_not_in(burst, lt)
    burst_items = _item_in(w, rng, np.repeat(burst, N_BURST)).reshape(n, N_BURST)
    long_ok = (lens >= 2 * p.k + 16) & ~scalper
    kind = np.where(scalper, 2, np.where(long_ok & (rng.random(n) < p.p_long_target), 0, 1))  # 0 long, 1 short, 2 scalper
    silent = rng.random(n) < p.p_silent
    end = T_END - np.where(silent, rng.uniform(120, 300, n) * DAY, rng.exponential(2.0, n) * DAY)
    dur = np.minimum(lens * rng.uniform(0.5, 12.0, n) * 3600, p.days * DAY)
    tfav = rng.integers(0, N_FAV, n)  # the favourite that becomes the (first) long-term target
    return {"lens": lens, "lt": lt, "fav": fav, "tfav": tfav, "burst": burst, "burst_items": burst_items, "kind": kind,
            "silent": silent, "end": end.astype(np.int64), "start": (end - dur).astype(np.int64)}


def _chunk(
    p: SynthParams, w: _World, u: dict[str, np.ndarray], lo: int, hi: int, rng: np.random.Generator
) -> tuple[pa.Table, int]:
    """Users ``lo .. hi - 1`` as an event table, and the number of return episodes planted."""
    lens = u["lens"][lo:hi]
    n_ev = int(lens.sum())
    uid = np.repeat(np.arange(lo, hi), lens)
    first = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pos = np.arange(n_ev) - np.repeat(first, lens)
    L = lens[uid - lo]
    kind = u["kind"][uid]
    is_target = pos >= L - p.n_targets
    in_window = (pos >= L - p.n_targets - p.k) & ~is_target
    before = ~in_window & ~is_target
    r = rng.random(n_ev)
    lt_ev = before & (r < p.p_long) | (in_window & (kind == 1) & (r < p.p_long))
    burst_ev = in_window & (rng.random(n_ev) < p.p_burst)
    lt_ev &= ~burst_ev

    item = _item_in(w, rng, _cats(w, rng, n_ev))  # background
    # long-term events: favourites (70%) or another item of a long-term category
    idx = np.flatnonzero(lt_ev)
    use_fav = rng.random(len(idx)) < 0.7
    favs = u["fav"][uid[idx], rng.integers(0, N_FAV, len(idx))]
    others = _item_in(w, rng, u["lt"][uid[idx], rng.integers(0, N_LT, len(idx))])
    item[idx] = np.where(use_fav, favs, others)
    idx = np.flatnonzero(burst_ev)
    item[idx] = u["burst_items"][uid[idx], rng.integers(0, N_BURST, len(idx))]
    # long-term-target users: no long-term category anywhere in the window
    guard = np.flatnonzero(in_window & (kind == 0) & ~burst_ev)
    _clear_long_term(w, rng, item, guard, u["lt"][uid[guard]], u["burst_items"][uid[guard], 0])
    # targets: the last n_targets events. Long-term targets are favourites that recur (planted at
    # 10 %, 40 % and 70 % of the history before the window) but never appear in the window.
    idx = np.flatnonzero(is_target)
    j = pos[idx] - (L[idx] - p.n_targets)
    fav_t = u["fav"][uid[idx], (u["tfav"][uid[idx]] + j) % N_FAV]
    item[idx] = np.where(kind[idx] == 0, fav_t, u["burst_items"][uid[idx], rng.integers(0, N_BURST, len(idx))])
    long_users = np.flatnonzero(u["kind"][lo:hi] == 0) + lo
    hist = u["lens"][long_users] - p.n_targets - p.k
    base = first[long_users - lo]
    # [n_long, 3 * n_targets] history positions of the planted copies, target by target
    plants = np.stack([(f * hist).astype(np.int64) + jt for jt in range(p.n_targets) for f in (0.1, 0.4, 0.7)], 1)
    for i in range(plants.shape[1]):
        item[base + plants[:, i]] = u["fav"][long_users, (u["tfav"][long_users] + i // 3) % N_FAV]
    n_returns = 0
    if p.returns:
        rrng = np.random.default_rng([p.seed, 3 << 20, lo])
        n_returns = _plant_returns(p, w, u, item, base, long_users, hist, plants, rrng)
    cat = w.item_cat[item]
    beh = np.searchsorted(np.cumsum(_BEH_P), rng.random(n_ev) * _BEH_P.sum()).astype(np.int8)
    beh = np.minimum(beh, len(BEHAVIORS) - 1)
    beh[kind == 2] = 0  # scalpers: clicks only
    attr = np.where(rng.random(n_ev) < 0.6, 0, 1 + cat * 4 + rng.integers(0, 4, n_ev))
    # timestamps: the main part over [start, end - 6h], the window + targets over the last 6 hours
    tail = pos >= L - p.n_targets - p.k
    seg = np.concatenate([[True], (uid[1:] != uid[:-1]) | (tail[1:] != tail[:-1])])
    seg_id = np.cumsum(seg) - 1
    gaps = rng.exponential(1.0, n_ev)
    cs = np.cumsum(gaps)
    seg_first = np.flatnonzero(seg)
    seg_last = np.concatenate([seg_first[1:] - 1, [n_ev - 1]])
    base = cs[seg_first] - gaps[seg_first]
    total = cs[seg_last] - base + rng.exponential(1.0, len(seg_first))
    frac = (cs - base[seg_id]) / total[seg_id]
    start, end = u["start"][uid], u["end"][uid]
    split = np.maximum(end - 6 * 3600, start)
    lo_t = np.where(tail, split, start)
    hi_t = np.where(tail, end, split)
    ts = (lo_t + frac * (hi_t - lo_t)).astype(np.int64)
    return events_table(uid.astype(np.int64) + 1, w.item_raw[item], ts, beh, attr.astype(np.int64),
                        cat.astype(np.int64) + 1), n_returns


def _clear_long_term(w: _World, rng: np.random.Generator, item: np.ndarray, pos: np.ndarray, lt: np.ndarray,
                     fallback: np.ndarray) -> None:
    """Re-draw ``item[pos]`` (in place) until no event is in its user's long-term categories.

    ``pos``: [m] event positions; ``lt``: [m, N_LT] each event's user's long-term categories;
    ``fallback``: [m] the item (outside those categories) for events still inside after 20 draws.
    """
    for _ in range(20):
        bad = ~_not_in(w.item_cat[item[pos]], lt)
        if not bad.any():
            break
        item[pos[bad]] = _item_in(w, rng, _cats(w, rng, int(bad.sum())))
    bad = ~_not_in(w.item_cat[item[pos]], lt)
    item[pos[bad]] = fallback[bad]


def _plant_returns(p: SynthParams, w: _World, u: dict[str, np.ndarray], item: np.ndarray, first: np.ndarray,
                   users: np.ndarray, hist: np.ndarray, plants: np.ndarray, rng: np.random.Generator) -> int:
    """Plant up to ``p.returns`` return episodes per long-term user into ``item``; returns how many.

    ``item``: [n_ev] internal item IDs of the chunk; ``users``: [n] the chunk's long-term users
    (global indices); ``first``: [n] offset of each one's first event in ``item``; ``hist``: [n]
    their number of events before the last-k window; ``plants``: [n, 3 * n_targets] history
    positions of the planted target copies. An episode ending at history position ``e`` makes
    events ``e - k .. e - 1`` free of long-term categories and event ``e`` a random favourite. Its
    ``k + 1`` positions avoid the planted copies and earlier episodes, so a user without that much
    room gets fewer episodes or none.
    """
    k, planted = p.k, 0
    for uid, base, h, at in zip(users.tolist(), first.tolist(), hist.tolist(), plants):
        busy = np.zeros(h, bool)
        busy[at[at < h]] = True
        ends = np.arange(k, h)
        for _ in range(p.returns):
            c = np.concatenate([[0], np.cumsum(busy)])
            free = ends[(c[ends + 1] - c[ends - k]) == 0]  # positions e - k .. e all free
            if len(free) == 0:
                break
            e = int(free[rng.integers(0, len(free))])
            _clear_long_term(w, rng, item, np.arange(base + e - k, base + e),
                             np.broadcast_to(u["lt"][uid], (k, N_LT)), np.full(k, u["burst_items"][uid, 0]))
            item[base + e] = u["fav"][uid, rng.integers(0, N_FAV)]
            busy[e - k : e + 1] = True
            planted += 1
    return planted


def _ground_truth(p: SynthParams, w: _World, u: dict[str, np.ndarray], targets: np.ndarray, t_ts: np.ndarray) -> pa.Table:
    n = len(u["lens"])
    return pa.table(
        {
            "user_id": pa.array(np.arange(n, dtype=np.int64) + 1),
            "kind": pa.array(np.array(["long_term", "short_term", "scalper"])[u["kind"]]),
            "n_events": pa.array(u["lens"].astype(np.int64)),
            "silent": pa.array(u["silent"]),
            "long_term_categories": list_column(u["lt"].astype(np.int64) + 1),
            "long_term_items": list_column(w.item_raw[u["fav"]]),
            "burst_category": pa.array(u["burst"].astype(np.int64) + 1),
            "burst_items": list_column(w.item_raw[u["burst_items"]]),
            "target_items": list_column(w.item_raw[targets]),
            "first_target_timestamp": pa.array(t_ts),
        }
    )


def generate(params: SynthParams, out: str | Path) -> dict:
    """Generate the dataset into ``out``; returns the summary written to ``synthetic.json``."""
    t0 = time.time()
    p = params.resolved()
    out = Path(out)
    clear_events_dir(out)
    rng = np.random.default_rng([p.seed, 1 << 20])
    w = _world(p, rng)
    u = _users(p, w, *_lengths(p, rng), rng)
    n_users = len(u["lens"])
    targets = np.zeros((n_users, p.n_targets), np.int64)
    t_ts = np.zeros(n_users, np.int64)
    cum = np.cumsum(u["lens"])
    lo, c, total, returns = 0, 0, 0, 0
    while lo < n_users:
        hi = max(lo + 1, int(np.searchsorted(cum, (cum[lo - 1] if lo else 0) + p.chunk_events, side="right")))
        hi = min(hi, n_users)
        tbl, n_ret = _chunk(p, w, u, lo, hi, np.random.default_rng([p.seed, c]))
        returns += n_ret
        # the targets are the last n_targets events of each user in this chunk
        ends = np.cumsum(u["lens"][lo:hi])
        item_raw = tbl.column("item_id").to_numpy()
        ts = tbl.column("timestamp").to_numpy()
        for j in range(p.n_targets):
            targets[lo:hi, j] = item_raw[ends - p.n_targets + j]
        t_ts[lo:hi] = ts[ends - p.n_targets]
        pq.write_table(tbl, out / "events" / f"part-{c:05d}.parquet", compression="snappy")
        total += tbl.num_rows
        lo, c = hi, c + 1
    raw_to_internal = np.empty(p.n_items, np.int64)
    raw_to_internal[w.item_raw - 100_000] = np.arange(p.n_items)
    gt = _ground_truth(p, w, u, raw_to_internal[targets - 100_000], t_ts)
    pq.write_table(gt, out / "ground_truth.parquet")
    kinds = np.bincount(u["kind"], minlength=3)
    summary = {
        "params": asdict(p),
        "events": total,
        "users": n_users,
        "users_by_kind": {"long_term": int(kinds[0]), "short_term": int(kinds[1]), "scalper": int(kinds[2])},
        "silent_users": int(u["silent"].sum()),
        "return_episodes": returns,
        "max_history": int(u["lens"].max()),
        "files": c,
        "seconds": round(time.time() - t0, 2),
    }
    (out / "synthetic.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def kind_histories(raw_dir: Path) -> Dict[str, List[np.ndarray]]:
    """Kind → per-user item sequences (timestamp order; the last item is the test target)."""
    ev = pq.read_table(raw_dir / "events", columns=["user_id", "item_id", "timestamp"])
    seg = pq.read_table(raw_dir / "segments.parquet").to_pydict()
    kind = dict(zip(seg["user_id"], seg["kind"]))
    u = ev.column("user_id").to_numpy()
    items = ev.column("item_id").to_numpy()
    order = np.lexsort((ev.column("timestamp").to_numpy(), u))
    u, items = u[order], items[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    out: Dict[str, List[np.ndarray]] = {}
    for s, e in zip(starts, np.r_[starts[1:], len(u)]):
        out.setdefault(kind[int(u[s])], []).append(items[s:e])
    return out


def ranker_hit_rates(hists: Dict[str, List[np.ndarray]],
                     rankers: Dict[str, Callable[[List[int]], List[int]]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{kind: {ranker: {"users", "hr@1", "hr@10"}}}`` of non-learned rankers (history items →
    best-first item list) on every user's last event, for :func:`kind_histories`' output."""
    result: Dict[str, Dict[str, Dict[str, float]]] = {}
    for kind, seqs in sorted(hists.items()):
        result[kind] = {}
        for name, fn in rankers.items():
            top = [(fn(s[:-1].tolist()), int(s[-1])) for s in seqs]
            result[kind][name] = {
                "users": len(seqs),
                "hr@1": round(sum(t[:1] == [y] for t, y in top) / len(seqs), 4),
                "hr@10": round(sum(y in t for t, y in top) / len(seqs), 4),
            }
    return result


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m data_prep.synthetic``."""
    ap = argparse.ArgumentParser(prog="python -m data_prep.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, required=True, help="total number of events")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-len", type=int, default=12288, help="cap on history length")
    ap.add_argument("--k", type=int, default=64, help="short-term window the long-term targets avoid")
    ap.add_argument("--n-items", type=int, default=0,
                    help="catalog size (0: events / 50, clamped to [2000, 2000000])")
    ap.add_argument("--n-categories", type=int, default=0,
                    help="number of categories (0: items / 100, clamped to [20, 2000])")
    ap.add_argument("--n-targets", type=int, default=1)
    ap.add_argument("--min-len", type=int, default=20, help="shortest history (power-law scale)")
    ap.add_argument("--returns", type=int, default=0,
                    help="return episodes per long-term user: k events without its long-term "
                         "categories, then a favourite (0: none)")
    ap.add_argument("--alpha", type=float, default=1.2,
                    help="power-law exponent of history lengths (> 1; smaller: more long histories)")
    ns = ap.parse_args(argv)
    if ns.events < 100:
        ap.error("--events must be >= 100")
    if ns.alpha <= 1.0:
        ap.error("--alpha must be > 1 (the mean history length is min_len * alpha / (alpha - 1))")
    try:
        params = SynthParams(events=ns.events, seed=ns.seed, max_len=ns.max_len, k=ns.k,
                             n_items=ns.n_items, n_categories=ns.n_categories,
                             n_targets=ns.n_targets, min_len=ns.min_len, alpha=ns.alpha,
                             returns=ns.returns).resolved()
    except ValueError as e:
        ap.error(str(e))
    summary = generate(params, ns.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "params"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
