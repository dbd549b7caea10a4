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

from data_prep.config import Filters

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


def _duplicates(ev: DenseEvents) -> np.ndarray:
    """Mask of events (sorted by user, time) repeating an earlier (user, item, time, behavior)."""
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
    o = np.lexsort((idx, ev.behavior[idx], ev.item[idx], ev.timestamp[idx], ev.user[idx]))
    s = idx[o]
    eq = (
        (ev.user[s[1:]] == ev.user[s[:-1]])
        & (ev.timestamp[s[1:]] == ev.timestamp[s[:-1]])
        & (ev.item[s[1:]] == ev.item[s[:-1]])
        & (ev.behavior[s[1:]] == ev.behavior[s[:-1]])
    )
    dup[s[1:][eq]] = True
    return dup


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
    order = np.lexsort((ev.timestamp, ev.user))  # lexsort is stable: ties keep input order
    ev = ev.take(order)

    if filters.drop_duplicates:
        dup = _duplicates(ev)
        counts.add("duplicate_events", 0, dup.sum())
        if dup.any():
            ev = ev.take(~dup)

    starts, lengths = _runs(ev.user)
    removed = np.zeros(len(starts), bool)
    if has_behavior and filters.scalper_min_events is not None and len(starts):
        pays = np.add.reduceat((ev.behavior == PAY_INDEX).astype(np.int64), starts)
        scalper = (lengths >= filters.scalper_min_events) & (pays <= filters.scalper_max_pay_ratio * lengths)
        counts.add("scalper_accounts", scalper.sum(), lengths[scalper].sum())
        removed |= scalper
    if filters.inactive_days is not None and len(starts):
        last = ev.timestamp[starts + lengths - 1]
        inactive = ~removed & (last < dataset_end - filters.inactive_days * 86400.0)
        counts.add("inactive_users", inactive.sum(), lengths[inactive].sum())
        removed |= inactive
    cold = ~removed & (lengths < filters.min_user_events)
    counts.add("cold_users", cold.sum(), lengths[cold].sum())
    removed |= cold
    if removed.any():
        ev = ev.take(np.repeat(~removed, lengths))
        starts, lengths = _runs(ev.user)

    if filters.max_user_events is not None and len(starts):
        ends = np.repeat(starts + lengths, lengths)
        keep = np.arange(len(ev.user)) >= ends - filters.max_user_events
        n_cut = int((~keep).sum())
        if n_cut:
            counts.add("truncate_long_users", 0, n_cut)
            ev = ev.take(keep)
    return ev


def to_table(ev: DenseEvents) -> pa.Table:
    """One row per user (sorted by user): ``user`` and the five list columns."""
    starts, lengths = _runs(ev.user)
    offsets = pa.array(np.concatenate([starts, [len(ev.user)]]).astype(np.int32), pa.int32())
    cols = {"user": pa.array(ev.user[starts], pa.int64())}
    for c in SEQ_COLUMNS:
        cols[c] = pa.ListArray.from_arrays(offsets, pa.array(getattr(ev, c), pa.int64()))
    return pa.table(cols)
