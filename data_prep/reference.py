"""A slow, plain-Python, in-memory prepare used as the reference in tests.

It shares only the input normalisation (:func:`data_prep.readers.iter_normalized`) with the
streaming implementation; vocabularies, the partition hash, sorting, de-duplication and the filters
are re-implemented here with Python dicts, ``sorted`` and loops, straight from
docs/data_format.md and docs/data_prep.md. :func:`read_prepared` loads a prepared directory into
the same structure so the two can be compared.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .config import PrepConfig
from .hashing import hash_one
from .readers import iter_normalized, plan_inputs
from .vocab import FUNNEL

__all__ = ["reference_prepare", "read_prepared"]

_LISTS = ("item", "attribution", "category", "behavior", "timestamp")


def _raw(v: Any) -> str:
    return str(v)


def reference_prepare(input_spec: str, cfg: PrepConfig, num_partitions: int) -> dict:
    """Prepared content as ``{"vocab": {table: [(raw, index, count)]}, "users": {user: (part, lists)},
    "filters": {name: (users, events)}}``."""
    plan = plan_inputs(input_spec, cfg)
    rows: list[tuple] = []
    for rb in iter_normalized(plan, cfg, 1000, Counter()):
        d = rb.to_pydict()
        rows += list(zip(d["user_id"], d["item_id"], d["timestamp"], d["behavior"], d["attribution_id"], d["category_id"]))
    has_beh = plan.present["behavior"]
    ids = {
        "user": sorted({_raw(r[0]) for r in rows}),
        "item": sorted({_raw(r[1]) for r in rows}),
        "attribution": sorted({_raw(r[4]) for r in rows if r[4] is not None}),
        "category": sorted({_raw(r[5]) for r in rows if r[5] is not None}),
    }
    index = {t: {raw: i + 2 for i, raw in enumerate(vals)} for t, vals in ids.items()}
    behs = sorted({r[3] for r in rows if r[3] is not None} - set(FUNNEL))
    index["behavior"] = {b: i + 2 for i, b in enumerate(list(FUNNEL) + behs)}
    end = max(r[2] for r in rows)

    per_user: dict[int, list] = {}
    for pos, r in enumerate(rows):
        u = index["user"][_raw(r[0])]
        ev = (
            r[2],
            pos,
            index["item"][_raw(r[1])],
            index["attribution"].get(_raw(r[4]), 1) if r[4] is not None else 1,
            index["category"].get(_raw(r[5]), 1) if r[5] is not None else 1,
            index["behavior"][r[3] if r[3] is not None else "click"],
        )
        per_user.setdefault(u, []).append(ev)
    f = cfg.filters
    removed = {n: [0, 0] for n in ("duplicate_events", "scalper_accounts", "inactive_users", "cold_users", "truncate_long_users")}
    users: dict[int, tuple[int, dict]] = {}
    raw_of = {i: raw for raw, i in index["user"].items()}
    for u in sorted(per_user):
        evs = sorted(per_user[u], key=lambda e: (e[0], e[1]))
        if f.drop_duplicates:
            seen: set = set()
            kept = []
            for e in evs:
                key = (e[0], e[2], e[5])
                if key in seen:
                    removed["duplicate_events"][1] += 1
                    continue
                seen.add(key)
                kept.append(e)
            evs = kept
        n = len(evs)
        pays = sum(1 for e in evs if e[5] == index["behavior"]["pay"])
        if has_beh and f.scalper_min_events is not None and n >= f.scalper_min_events and pays <= f.scalper_max_pay_ratio * n:
            removed["scalper_accounts"][0] += 1
            removed["scalper_accounts"][1] += n
            continue
        if f.inactive_days is not None and evs[-1][0] < end - f.inactive_days * 86400.0:
            removed["inactive_users"][0] += 1
            removed["inactive_users"][1] += n
            continue
        if n < f.min_user_events:
            removed["cold_users"][0] += 1
            removed["cold_users"][1] += n
            continue
        if f.max_user_events is not None and n > f.max_user_events:
            removed["truncate_long_users"][1] += n - f.max_user_events
            evs = evs[n - f.max_user_events :]
        lists = {
            "item": [e[2] for e in evs],
            "attribution": [e[3] for e in evs],
            "category": [e[4] for e in evs],
            "behavior": [e[5] for e in evs],
            "timestamp": [e[0] for e in evs],
        }
        users[u] = (hash_one(raw_of[u]) % num_partitions, lists)
    counts = {t: Counter() for t in ("user", "item", "attribution", "category", "behavior")}
    for u, (_, lists) in users.items():
        counts["user"][u] += len(lists["item"])
        for t in ("item", "attribution", "category", "behavior"):
            counts[t].update(lists[t])
    vocab = {
        t: [(raw, i, counts[t].get(i, 0)) for raw, i in sorted(index[t].items(), key=lambda kv: kv[1])]
        for t in index
    }
    return {"vocab": vocab, "users": users, "filters": {k: tuple(v) for k, v in removed.items()}}


def read_prepared(directory: str | Path) -> dict:
    """A prepared directory in the structure of :func:`reference_prepare`."""
    d = Path(directory)
    meta = json.loads((d / "meta.json").read_text())
    vocab = {}
    for t in ("user", "item", "attribution", "category", "behavior"):
        tb = pq.read_table(d / "vocab" / f"{t}.parquet").to_pydict()
        vocab[t] = list(zip(tb["raw"], tb["index"], tb["count"]))
    users: dict[int, tuple[int, dict]] = {}
    for p in range(meta["num_partitions"]):
        tb = pq.read_table(d / "sequences" / f"part-{p:05d}.parquet").to_pydict()
        assert tb["user"] == sorted(tb["user"]), f"part {p}: rows not sorted by user"
        for i, u in enumerate(tb["user"]):
            assert u not in users, f"user {u} in two partitions"
            users[u] = (p, {c: tb[c][i] for c in _LISTS})
    filters = {f["name"]: (f["users_removed"], f["events_removed"]) for f in meta["filters"]}
    return {"vocab": vocab, "users": users, "filters": filters}
