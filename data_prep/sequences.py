"""Pass 2 on one partition: dense IDs, stable time sort, the filters, per-user list rows.

Everything is vectorised with numpy over the events of the partition (no loop over events).
Filter order: duplicate events, scalper accounts, inactive users, cold users, then truncation of
very long users to their most recent ``max_user_events`` events. Each user-level filter counts the
users it removes (a user caught by several is counted by the first) and their events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .config import Filters

__all__ = ["DenseEvents", "FilterCounts", "FILTER_NAMES", "build_sequences", "PAY_INDEX"]

PAY_INDEX = 10  # fixed behaviour index of "pay" (docs/data_format.md)
FILTER_NAMES = ("duplicate_events", "scalper_accounts", "inactive_users", "cold_users", "truncate_long_users")
SEQ_COLUMNS = ("item", "attribution", "category", "behavior", "timestamp")


@dataclass
class DenseEvents:
    """Events of one partition in input order, already mapped to dense indices."""

    user: np.ndarray
    item: np.ndarray
    attribution: np.ndarray
    category: np.ndarray
    behavior: np.ndarray
    timestamp: np.ndarray

    def take(self, idx: np.ndarray) -> "DenseEvents":
        """Rows ``idx`` (an index or boolean array)."""
        return DenseEvents(*(getattr(self, f)[idx] for f in ("user",) + SEQ_COLUMNS))


@dataclass
class FilterCounts:
    """users/events removed per filter, summed over partitions."""

    users: dict[str, int] = field(default_factory=lambda: {n: 0 for n in FILTER_NAMES})
    events: dict[str, int] = field(default_factory=lambda: {n: 0 for n in FILTER_NAMES})

    def add(self, name: str, users: int, events: int) -> None:
        self.users[name] += int(users)
        self.events[name] += int(events)


def _runs(user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets and lengths of runs of equal values in a sorted array."""
    if len(user) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.flatnonzero(user[1:] != user[:-1]) + 1])
    lengths = np.diff(np.concatenate([starts, [len(user)]]))
    return starts, lengths


def _duplicates(ev: DenseEvents, order: np.ndarray) -> np.ndarray:
    """Mask over sorted positions of events repeating an earlier (user, item, time, behavior).

    ``ev.user``/``ev.timestamp`` are already sorted; ``ev.item``/``ev.behavior`` are in input
    order and gathered through ``order`` for the few candidates with an equal (user, time) neighbour.
    """
    n = len(ev.user)
    dup = np.zeros(n, bool)
    if n < 2:
        return dup
    same = (ev.user[1:] == ev.user[:-1]) & (ev.timestamp[1:] == ev.timestamp[:-1])
    cand = np.zeros(n, bool)
    cand[1:] |= same
    cand[:-1] |= same
    idx = np.flatnonzero(cand)
    if len(idx) == 0:
        return dup
    # among candidates, sort by (user, ts, item, behavior, position); stable => first occurrence first
    item, beh = ev.item[order[idx]], ev.behavior[order[idx]]
    o = np.lexsort((idx, beh, item, ev.timestamp[idx], ev.user[idx]))
    s, item, beh = idx[o], item[o], beh[o]
    eq = (
        (ev.user[s[1:]] == ev.user[s[:-1]])
        & (ev.timestamp[s[1:]] == ev.timestamp[s[:-1]])
        & (item[1:] == item[:-1])
        & (beh[1:] == beh[:-1])
    )
    dup[s[1:][eq]] = True
    return dup


def _sort_order(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Stable order by (user, timestamp): ties keep input order."""
    if len(user) == 0:
        return np.zeros(0, np.int64)
    t0, t1 = int(ts.min()), int(ts.max())
    span = t1 - t0 + 1
    if int(user.max()) < (2**62) // span:  # one composite int64 key, one stable sort
        return np.argsort(user * span + (ts - t0), kind="stable")
    return np.lexsort((ts, user))


def build_sequences(
    ev: DenseEvents,
    filters: Filters,
    has_behavior: bool,
    dataset_end: int,
    counts: FilterCounts,
) -> DenseEvents:
    """Sort events by (user, timestamp) keeping input order on ties, apply the filters.

    Args:
        ev: the partition's events in input order.
        filters: the filter thresholds.
        has_behavior: whether the input has a behaviour column (the scalper filter needs it).
        dataset_end: the largest timestamp of the whole input (for the inactivity filter).
        counts: accumulates the removals.
    Returns:
        The kept events, sorted by user then time.
    """
    order = _sort_order(ev.user, ev.timestamp)
    user, ts = ev.user[order], ev.timestamp[order]
    keep = np.ones(len(order), bool)
    if filters.drop_duplicates:
        dup = _duplicates(DenseEvents(user, ev.item, ev.attribution, ev.category, ev.behavior, ts), order)
        counts.add("duplicate_events", 0, dup.sum())
        keep &= ~dup

    starts, lengths = _runs(user)
    n_user = lengths - (np.add.reduceat((~keep).astype(np.int64), starts) if len(starts) else 0)
    removed = np.zeros(len(starts), bool)
    if has_behavior and filters.scalper_min_events is not None and len(starts):
        is_pay = (ev.behavior[order] == PAY_INDEX) & keep
        pays = np.add.reduceat(is_pay.astype(np.int64), starts)
        scalper = (n_user >= filters.scalper_min_events) & (pays <= filters.scalper_max_pay_ratio * n_user)
        counts.add("scalper_accounts", scalper.sum(), n_user[scalper].sum())
        removed |= scalper
    if filters.inactive_days is not None and len(starts):
        last = ts[starts + lengths - 1]  # duplicates never remove the last event of a user
        inactive = ~removed & (last < dataset_end - filters.inactive_days * 86400.0)
        counts.add("inactive_users", inactive.sum(), n_user[inactive].sum())
        removed |= inactive
    cold = ~removed & (n_user < filters.min_user_events)
    counts.add("cold_users", cold.sum(), n_user[cold].sum())
    removed |= cold
    if removed.any():
        keep &= np.repeat(~removed, lengths)
    if filters.max_user_events is not None and len(starts):
        # rank of each kept event from the end of its user's kept events
        kept_cum = np.cumsum(keep[::-1])[::-1]  # kept events at or after position i (whole array)
        ends = starts + lengths
        after_user = np.concatenate([kept_cum[ends[:-1]], [0]]) if len(ends) else np.zeros(0, np.int64)
        rank = kept_cum - np.repeat(after_user, lengths)  # 1 = last kept event of the user
        cut = keep & (rank > filters.max_user_events)
        n_cut = int(cut.sum())
        if n_cut:
            counts.add("truncate_long_users", 0, n_cut)
            keep &= ~cut
    final = order[keep] if not keep.all() else order
    return ev.take(final)


def to_table(ev: DenseEvents) -> pa.Table:
    """One row per user (sorted by user): ``user`` and the five list columns."""
    starts, lengths = _runs(ev.user)
    offsets = pa.array(np.concatenate([starts, [len(ev.user)]]).astype(np.int32), pa.int32())
    cols = {"user": pa.array(ev.user[starts], pa.int64())}
    for c in SEQ_COLUMNS:
        cols[c] = pa.ListArray.from_arrays(offsets, pa.array(getattr(ev, c), pa.int64()))
    return pa.table(cols)
