"""Synthetic long-range recall: the next favourite is visible only in the far history.

    python -m data_prep.synthetic_recall --users N --out DIR [--seed S] [--min-len 200]
        [--max-len 1000] [--k 64] [--favourites 8] [--spacing 12] [--n-items 3000]

A test of whether a sequence model *uses* events older than its last ``k``, on a process that is
the same at every position (so the test target is a pattern the training events contain, unlike
the long-term users of :mod:`data_prep.synthetic`, whose test target is never seen in training).

Every user has ``favourites`` items (F, distinct, user-specific, uniform over the catalog) that it
visits in a fixed cyclic order, one every ``spacing`` (s) events: events ``phase, phase + s, ...``
are favourite slots and slot ``j`` holds favourite ``(c0 + j) mod F``. With ``F * s > k`` a
favourite's previous visit is ``F * s`` events back, outside the last ``k``: a model that sees only
the last ``k`` events cannot tell which favourite is next (the ``k // s`` favourites in its window
are exactly the ones that are *not* next, and each appears there once, so nothing in the window
marks them as favourites); a model that sees the whole history can read it off, but only by
position: favourites are not the far history's most frequent items (popular and past-interest
items are), their period is what identifies them (``benchmarks/recall_heuristics.py``). Every other event is background: half from the user's current
interest (4 items, re-drawn every ``regime`` events; what a short window predicts) and half from a
Zipf-like popularity over the catalog; a background draw that hits one of the user's favourites
is re-drawn, so favourites occur only in their slots.

Half of the users (``kind: recall``) end on a favourite slot, the rest (``kind: other``) on a
background event; the last event is the test target under leave-last-out. Outputs, as
:mod:`data_prep.synthetic`: ``DIR/events/part-00000.parquet`` (raw schema),
``DIR/ground_truth.parquet`` (user_id, kind, n_events, favourites, target_item),
``DIR/segments.parquet`` (user_id, kind: a ``segments.side_file`` for ``hytrec-eval``) and
``DIR/synthetic.json`` (parameters and counts). Deterministic given the arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .synthetic import DAY, T_END, clear_events_dir, events_table, list_column

__all__ = ["RecallParams", "generate"]

N_INTEREST = 4


@dataclass
class RecallParams:
    """Generator parameters (module docstring)."""

    users: int
    seed: int = 0
    n_items: int = 3000
    min_len: int = 200
    max_len: int = 1000
    k: int = 64
    favourites: int = 8
    spacing: int = 12
    regime: int = 100
    p_interest: float = 0.5
    p_recall: float = 0.5

    def validate(self) -> "RecallParams":
        """Raise ``ValueError`` naming the bad parameter; returns ``self``."""
        if self.users < 1:
            raise ValueError(f"users: need >= 1, got {self.users}")
        if self.favourites < 2 or self.spacing < 2:
            raise ValueError(f"favourites, spacing: need >= 2, got {self.favourites}, {self.spacing}")
        if self.favourites * self.spacing <= self.k:
            raise ValueError(f"favourites * spacing = {self.favourites * self.spacing} must exceed k = {self.k}: "
                             "otherwise the next favourite is inside the last k events")
        if self.min_len < self.favourites * self.spacing + 2 * self.spacing or self.max_len < self.min_len + self.spacing:
            raise ValueError(f"min_len, max_len: need favourites * spacing + 2 * spacing <= min_len <= max_len - spacing, "
                             f"got {self.min_len}, {self.max_len}")
        if self.n_items < self.favourites + N_INTEREST + 1:
            raise ValueError(f"n_items: need > favourites + {N_INTEREST}, got {self.n_items}")
        for name in ("p_interest", "p_recall"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: need a probability in [0, 1], got {v}")
        if self.regime < 1:
            raise ValueError(f"regime: need >= 1, got {self.regime}")
        return self


def _distinct(rng: np.random.Generator, n_users: int, n: int, high: int) -> np.ndarray:
    """``[n_users, n]`` integers in ``[0, high)``, distinct within each row."""
    out = rng.integers(0, high, (n_users, n))
    for _ in range(100):
        s = np.sort(out, axis=1)
        dup = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if not dup.any():
            return out
        out[dup] = rng.integers(0, high, (int(dup.sum()), n))
    raise RuntimeError("could not draw distinct favourites; raise n_items")


def _events(p: RecallParams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-user draws and the packed event arrays (users in order, events in time order)."""
    n = p.users
    s, f = p.spacing, p.favourites
    recall = rng.random(n) < p.p_recall
    phase = rng.integers(0, s, n)
    lens = rng.integers(p.min_len, p.max_len + 1, n)
    # move each user's last event onto a slot (recall) or off every slot (other), staying in range
    last_off = (lens - 1 - phase) % s
    shift = np.where(recall, -last_off, np.where(last_off == 0, -1, 0))
    lens = lens + shift
    lens = np.where(lens < p.min_len, lens + s, lens)
    fav = _distinct(rng, n, f, p.n_items)
    c0 = rng.integers(0, f, n)
    pop = 1.0 / np.arange(1, p.n_items + 1) ** 0.8
    pop_cdf = np.cumsum(pop / pop.sum())
    pop_item = rng.permutation(p.n_items)  # popularity rank -> item

    uid = np.repeat(np.arange(n), lens)
    first = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pos = np.arange(len(uid)) - first[uid]
    slot = (pos - phase[uid]) % s == 0
    j = (pos - phase[uid]) // s
    item = pop_item[np.minimum(np.searchsorted(pop_cdf, rng.random(len(uid))), p.n_items - 1)]
    # current interest: 4 items per (user, regime), used by a share p_interest of background events
    n_reg = (lens + p.regime - 1) // p.regime
    reg_first = np.concatenate([[0], np.cumsum(n_reg)[:-1]])
    interest = rng.integers(0, p.n_items, (int(n_reg.sum()), N_INTEREST))  # may hit a favourite: re-drawn below
    reg = reg_first[uid] + pos // p.regime
    use_int = rng.random(len(uid)) < p.p_interest
    item = np.where(use_int, interest[reg, rng.integers(0, N_INTEREST, len(uid))], item)
    # background never holds a favourite of its user, so a favourite's only occurrences are its slots
    for _ in range(20):
        bad = np.flatnonzero((item[:, None] == fav[uid]).any(axis=1))
        if len(bad) == 0:
            break
        item[bad] = pop_item[np.minimum(np.searchsorted(pop_cdf, rng.random(len(bad))), p.n_items - 1)]
    for _ in range(f + 1):  # deterministic fallback: the next item ID
        bad = np.flatnonzero((item[:, None] == fav[uid]).any(axis=1))
        if len(bad) == 0:
            break
        item[bad] = (item[bad] + 1) % p.n_items
    item = np.where(slot, fav[uid, (c0[uid] + j) % f], item)
    # timestamps: exponential gaps (mean 1 h) ending 0-2 days before T_END
    gaps = 1.0 + rng.exponential(3600.0, len(uid))  # >= 1 s: no two events share a second
    cs = np.cumsum(gaps)
    last = first + lens - 1
    end = T_END - rng.uniform(0, 2 * DAY, n)
    ts = (end[uid] - (cs[last[uid]] - cs)).astype(np.int64)
    return {"uid": uid, "item": item, "ts": ts, "lens": lens, "last": last, "recall": recall, "fav": fav,
            "slot": slot}


def generate(params: RecallParams, out: str | Path) -> dict:
    """Generate the dataset into ``out``; returns the summary written to ``synthetic.json``."""
    t0 = time.time()
    p = params.validate()
    out = Path(out)
    clear_events_dir(out)
    rng = np.random.default_rng([p.seed, 7 << 20])
    e = _events(p, rng)
    n_ev = len(e["uid"])
    item_raw = e["item"].astype(np.int64) + 100_000
    beh = np.zeros(n_ev, np.int8)  # all clicks
    user_id = np.arange(p.users, dtype=np.int64) + 1
    pq.write_table(events_table(e["uid"].astype(np.int64) + 1, item_raw, e["ts"], beh, np.zeros(n_ev, np.int64),
                                e["item"].astype(np.int64) // 100 + 1),
                   out / "events" / "part-00000.parquet", compression="snappy")
    kind = np.where(e["recall"], "recall", "other")
    fav_raw = e["fav"].astype(np.int64) + 100_000
    pq.write_table(pa.table({
        "user_id": pa.array(user_id),
        "kind": pa.array(kind),
        "n_events": pa.array(e["lens"].astype(np.int64)),
        "favourites": list_column(fav_raw),
        "target_item": pa.array(item_raw[e["last"]]),
    }), out / "ground_truth.parquet")
    pq.write_table(pa.table({"user_id": pa.array(user_id), "kind": pa.array(kind)}), out / "segments.parquet")
    summary = {
        "params": asdict(p),
        "events": n_ev,
        "users": p.users,
        "users_by_kind": {"recall": int(e["recall"].sum()), "other": int((~e["recall"]).sum())},
        "favourite_events": int(e["slot"].sum()),
        "max_history": int(e["lens"].max()),
        "seconds": round(time.time() - t0, 2),
    }
    (out / "synthetic.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m data_prep.synthetic_recall``."""
    ap = argparse.ArgumentParser(prog="python -m data_prep.synthetic_recall", description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, required=True, help="number of users")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-len", type=int, default=200, help="shortest history")
    ap.add_argument("--max-len", type=int, default=1000, help="longest history (lengths are uniform in between)")
    ap.add_argument("--k", type=int, default=64, help="short window that never holds the next favourite")
    ap.add_argument("--favourites", type=int, default=8, help="favourites per user, visited in a cycle")
    ap.add_argument("--spacing", type=int, default=12, help="events from one favourite visit to the next")
    ap.add_argument("--n-items", type=int, default=3000)
    ns = ap.parse_args(argv)
    try:
        params = RecallParams(users=ns.users, seed=ns.seed, n_items=ns.n_items, min_len=ns.min_len,
                              max_len=ns.max_len, k=ns.k, favourites=ns.favourites, spacing=ns.spacing).validate()
    except ValueError as err:
        ap.error(str(err))
    summary = generate(params, ns.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "params"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
