"""Learnable long-history benchmarks: stationary processes whose next item is often set by events
older than the model's last ``k``.

    python -m data_prep.synthetic_longhist --out DIR
        --scenario {favourites,periodic,interleaved,replenishment,category_return}
        [--users 2000] [--seed S] [--min-len 300] [--max-len 1000] [--k 64] [--n-items 3000]
        [--far-fraction 0.5] [--min-prior 2] [--favourites 6] [--gap-min 150] [--gap-max 600]
        [--periodic 4] [--period-min 100] [--period-max 800] [--interests 3] [--group-size 8]
        [--session-min 80] [--session-max 200] [--p-session 0.75] [--regime 100] [--p-interest 0.5]
        [--categories 200] [--category-size-min 50] [--category-size-max 100] [--cat-interests-min 3]
        [--cat-interests-max 6] [--return-min 150] [--return-max 600] [--episode-min 4]
        [--episode-max 12] [--p-episode 0.8]

Each user is one draw of a process that is the same at every position, so the pattern the test
targets ask for is also what the training positions hold: a model trained on all positions sees
many events whose evidence is far back. The process runs for ``max_len`` events; the history is
cut after an end event chosen as below, and that end event is the test target (leave-last-out).
``--scenario`` picks the process:

* ``favourites``: every user has ``favourites`` (F) items (distinct, user-specific, uniform over
  the catalog). Each one recurs after a gap drawn uniformly from ``[gap_min, gap_max]`` events
  (a renewal process started ``2 * gap_max`` events before position 0, so position 0 is already
  in its steady state); when two favourites fall due at once the later one waits for the next
  free position, so a gap is at least ``gap_min`` and at most ``gap_max`` plus a few events.
* ``periodic``: every user has ``periodic`` (P) items, each with its own period drawn uniformly
  from ``[period_min, period_max]`` and a phase uniform in ``[0, period)``; item ``i`` takes
  exactly the positions ``phase_i + m * period_i`` (periods and phases are re-drawn until no two
  items want the same position).
* ``interleaved``: every user has ``interests`` (I) disjoint groups of ``group_size`` items
  (user-specific) visited in sessions of ``[session_min, session_max]`` events (uniform). The
  interests cycle in a fixed user-specific order, so the interest of the next session is the one
  visited longest ago; session 0 starts before position 0 (a uniform share of it is cut off). The
  first event of a session is an item of its interest, later ones with probability ``p_session``
  (uniform over the group), else popularity background.
* ``category_return``: interests by *category*, targets that are *new items*. The catalog is
  ``categories`` (C) categories of ``category_size_min .. category_size_max`` items each (uniform;
  ``n_items`` is not used), Zipf-like popularity (exponent 0.8) over the categories and inside
  each. Every user has ``cat_interests_min .. cat_interests_max`` interest categories (uniform
  count, drawn by category popularity without replacement), each visited in *episodes* of
  ``[episode_min, episode_max]`` events: a renewal per interest whose next episode is due
  ``[return_min, return_max]`` events after its last one ends (started ``2 * return_max`` before
  position 0; an interest due during another's episode waits for it to end). An episode opens
  with an item of its category, later events with probability ``p_episode``, else background.
  Interest events take the category's items in a popularity-weighted order without replacement,
  so every one is an item the user never had (``interest_repeats`` counts the few that are not,
  once a category is exhausted). Background: with probability ``p_interest`` the current
  category (re-drawn every ``regime`` events) else a popularity draw, the item by popularity
  inside the category; it never uses the user's interest categories, which therefore occur only
  in episodes, and the last one of an interest is at least ``return_min`` events before its next
  episode. Pattern events are the interest events; a far end is the first event of an episode.

Background, in ``favourites``, ``periodic`` and ``replenishment`` every event that is not a
pattern event: with probability ``p_interest`` one of the user's 4 current-interest items
(re-drawn every ``regime`` events), else a Zipf-like popularity draw (exponent 0.8) over ``n_items`` items. A background
draw that hits one of the user's pattern items (favourites, periodic items, interest groups) is
re-drawn, so those items occur only as pattern events.

Kinds (``segments.parquet``, ``ground_truth.parquet``), from the test target ``y`` at position
``L - 1`` of a history of ``L`` events: **far** when ``y`` does not occur in the last ``k``
history events (positions ``L - 1 - k .. L - 2``) but occurs earlier; **recent** otherwise. The
generator ends every history on one of two kinds of event, so that every recent target does occur
in the last ``k`` events:

* a far user (exactly ``round(far_fraction * users)`` users, chosen at random) ends on a *far
  pattern event*: a favourite return, a periodic slot, or the first event of a session whose
  ending interest had an earlier session (so the cycle order has been shown once), whose item
  occurred at least ``min_prior`` times before and not in the last ``k`` events (``gap_min``,
  ``period_min`` and ``session_min`` must exceed ``k``). With ``min_prior >= 2`` the far history
  shows the item recurring (a favourite's spacing, a periodic item's period), which is what
  tells it apart from a background item seen once;
* a recent user ends on any event whose item occurs in the last ``k`` events before it.

``category_return`` reads both kinds by the target's **category** instead, and every target
item of its users, far or recent, is new to the user (not in the history; item-level kinds, as
``data_prep.target_kinds`` gives them, would call them all ``new``): **far** when the target's
category does not occur in the last ``k`` history events but occurs earlier; **recent** when it
occurs in the last ``k``. A far user ends on the first event of an episode whose category
occurred at least ``min_prior`` times before (so at least ``return_min`` events back: 151-603
with the defaults, median 340); a recent user on any event of an item new to it whose category
is in the last ``k`` events (an episode's later events, or background of the current category).
As in the other scenarios only the test target is chosen; the validation target (the event
before it) is whatever the process holds there.

The end is drawn uniformly among the qualifying positions ``min_len - 1 .. max_len - 1`` of the
user's process, so history lengths lie in ``[min_len, max_len]``; a user whose process has no
qualifying position is drawn again (counted as ``redraws`` in ``synthetic.json``; this slightly
favours short periods / sessions among far users).

Parameters: ``scenario`` (above); ``users`` (default 2000); ``seed``; ``n_items`` catalog size
(3000); ``min_len`` / ``max_len`` history length range (300 / 1000); ``k`` the model's short
window (64); ``far_fraction`` share of far users (0.5); ``min_prior`` earlier occurrences a far
target's item needs (2); ``favourites`` F (6), ``gap_min`` / ``gap_max`` (150 / 600);
``periodic`` P (4), ``period_min`` / ``period_max`` (100 / 800); ``interests`` I (3),
``group_size`` (8), ``session_min`` / ``session_max`` (80 / 200), ``p_session`` (0.75);
``regime`` (100) and ``p_interest`` (0.5) for the background; ``category_return``:
``categories`` (200), ``category_size_min`` / ``category_size_max`` (50 / 100),
``cat_interests_min`` / ``cat_interests_max`` (3 / 6), ``return_min`` / ``return_max``
(150 / 600, ``return_min > k``), ``episode_min`` / ``episode_max`` (4 / 12), ``p_episode`` (0.8);
``min_prior`` counts earlier events of the target's category. Only the chosen scenario's own
parameters are checked and used.

Oracle (upper reference): ``benchmarks/longhist_heuristics.py RAW_DIR`` scores non-learned
rankers on the test targets by kind: counts in the last ``k`` events (HR@10 exactly 0 on far
targets: they are not in the window), counts over the whole history, and a scenario oracle that
reads the generator's rule off the history, given its parameters (favourites: items absent from
the window whose every gap is within ``[gap_min, gap_max]``, the most personal first, i.e. the
fewest events over all users per visit here; periodic: exactly periodic items, the one due now
first; interleaved: items of the interest visited longest ago, which is the next in the cycle).
With the defaults (2,000 users, seed 0) the far targets' HR@10 is 0 / 0 / .971 (favourites),
0 / 0 / 1.0 (periodic) and 0 / .203 / .978 (interleaved) for last-k counts / whole-history counts
/ oracle, while last-k counts find .83-.86 of the recent targets. There is no oracle for
``category_return`` (its targets are new items: every item-count ranker scores 0).

Outputs, as :mod:`data_prep.synthetic`: ``DIR/events/part-00000.parquet`` (raw schema, all
clicks, category = item // 100; category_return: the item's category),
``DIR/ground_truth.parquet`` (user_id, kind, n_events, target_item, pattern_target: the target
is a pattern event, items: the user's pattern items — favourites, periodic items, or the
interest groups one after the other in cycle order —, periodic also periods and phases,
interleaved also session_start: the target is the first event of a session; category_return
has no ``items`` but interests: the user's interest categories, target_category, category_gap:
events back to the last history event of the target's category (1 = the last one, -1 = none),
episode_start: the target opens an episode),
``DIR/segments.parquet`` (user_id, kind: a ``segments.side_file`` for ``hytrec-eval``)
and ``DIR/synthetic.json`` (parameters and counts: ``pattern_events``;
``far_recurrences_in_training``, pattern events at training positions (``<= L - 3``) whose item
was last seen more than ``k`` events before (category_return: whose category was);
``far_end_events_in_training``, those of them a far history could end on; ``redraws``;
category_return also ``catalog_items``, ``interest_repeats`` and ``far_category_gap``, the far
targets' category_gap min / median / max). Deterministic given the arguments.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .synthetic import DAY, T_END, clear_events_dir, events_table, list_column

__all__ = ["LongHistParams", "SCENARIOS", "generate"]

SCENARIOS = ("favourites", "periodic", "interleaved", "replenishment", "category_return")
#: behaviour codes of the replenishment scenario (indices into data_prep.synthetic.BEHAVIORS)
VIEW, PURCHASE = 0, 8  # "click", "pay"
N_INTEREST = 4
ZIPF = 0.8
MAX_REDRAWS = 200


@dataclass
class LongHistParams:
    """Generator parameters (module docstring)."""

    scenario: str = "favourites"
    users: int = 2000
    seed: int = 0
    n_items: int = 3000
    min_len: int = 300
    max_len: int = 1000
    k: int = 64
    far_fraction: float = 0.5
    min_prior: int = 2
    favourites: int = 6
    gap_min: int = 150
    gap_max: int = 600
    periodic: int = 4
    period_min: int = 100
    period_max: int = 800
    interests: int = 3
    group_size: int = 8
    session_min: int = 80
    session_max: int = 200
    p_session: float = 0.75
    regime: int = 100
    p_interest: float = 0.5
    staples: int = 5
    cycle_min: int = 150
    cycle_max: int = 600
    jitter: float = 0.15
    staple_views: float = 1.0
    p_buy: float = 0.15
    new_fraction: float = 0.2
    categories: int = 200
    category_size_min: int = 50
    category_size_max: int = 100
    cat_interests_min: int = 3
    cat_interests_max: int = 6
    return_min: int = 150
    return_max: int = 600
    episode_min: int = 4
    episode_max: int = 12
    p_episode: float = 0.8

    def n_pattern_items(self) -> int:
        """How many pattern items a user of this scenario has."""
        return {"favourites": self.favourites, "periodic": self.periodic,
                "interleaved": self.interests * self.group_size, "replenishment": self.staples,
                "category_return": self.cat_interests_max}[self.scenario]

    def validate(self) -> "LongHistParams":
        """Raise ``ValueError`` naming the bad parameter; returns ``self``."""
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario: need one of {', '.join(SCENARIOS)}, got {self.scenario!r}")
        if self.users < 1:
            raise ValueError(f"users: need >= 1, got {self.users}")
        if self.k < 1:
            raise ValueError(f"k: need >= 1, got {self.k}")
        if not self.k + 2 <= self.min_len <= self.max_len:
            raise ValueError(f"min_len, max_len: need k + 2 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        if self.min_prior < 1:
            raise ValueError(f"min_prior: need >= 1, got {self.min_prior}")
        if self.regime < 1:
            raise ValueError(f"regime: need >= 1, got {self.regime}")
        for name in ("far_fraction", "p_interest", "p_session", "p_episode"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: need a probability in [0, 1], got {v}")
        if self.scenario == "favourites":
            self._check_range("favourites", "gap_min", "gap_max", "a favourite's return")
        elif self.scenario == "periodic":
            self._check_range("periodic", "period_min", "period_max", "a periodic item's next slot")
        elif self.scenario == "replenishment":
            self._check_range("staples", "cycle_min", "cycle_max", "a staple's next purchase")
            for name in ("jitter", "p_buy", "new_fraction"):
                v = getattr(self, name)
                if not 0.0 <= v < 1.0:
                    raise ValueError(f"{name}: need a value in [0, 1), got {v}")
            if self.cycle_min * (1 - self.jitter) <= self.k:
                raise ValueError(f"jitter: cycle_min * (1 - jitter) = {self.cycle_min * (1 - self.jitter):g} must "
                                 f"exceed k = {self.k}")
            if self.staple_views < 0:
                raise ValueError(f"staple_views: need >= 0, got {self.staple_views}")
            if self.far_fraction + self.new_fraction > 1.0:
                raise ValueError(f"new_fraction: far_fraction + new_fraction must be <= 1, got "
                                 f"{self.far_fraction} + {self.new_fraction}")
        elif self.scenario == "category_return":
            self._check_category_return()
            return self
        else:
            if self.interests < 2 or self.group_size < 1:
                raise ValueError(f"interests, group_size: need >= 2 and >= 1, got {self.interests}, {self.group_size}")
            self._check_range(None, "session_min", "session_max", "the next interest's items")
            if self.interests * self.session_min > self.max_len - 1:
                raise ValueError(f"max_len: need > interests * session_min = {self.interests * self.session_min} "
                                 f"for a session start after a full cycle, got {self.max_len}")
        n_pat = self.n_pattern_items()
        if self.n_items <= n_pat + N_INTEREST:
            raise ValueError(f"n_items: need > {n_pat} pattern items + {N_INTEREST}, got {self.n_items}")
        return self

    def _check_category_return(self) -> None:
        if not 1 <= self.category_size_min <= self.category_size_max:
            raise ValueError(f"category_size_min, category_size_max: need 1 <= min <= max, got "
                             f"{self.category_size_min}, {self.category_size_max}")
        if not 1 <= self.cat_interests_min <= self.cat_interests_max:
            raise ValueError(f"cat_interests_min, cat_interests_max: need 1 <= min <= max, got "
                             f"{self.cat_interests_min}, {self.cat_interests_max}")
        if self.categories < self.cat_interests_max + 2:
            raise ValueError(f"categories: need >= cat_interests_max + 2 = {self.cat_interests_max + 2} (the "
                             f"background needs categories that are not interests), got {self.categories}")
        if not 1 <= self.episode_min <= self.episode_max:
            raise ValueError(f"episode_min, episode_max: need 1 <= min <= max, got {self.episode_min}, "
                             f"{self.episode_max}")
        self._check_range(None, "return_min", "return_max", "an interest category's return")
        if self.return_min + self.episode_min > self.max_len - 1:
            raise ValueError(f"max_len: need > return_min + episode_min = {self.return_min + self.episode_min} for a "
                             f"far target, got {self.max_len}")

    def _check_range(self, count: Optional[str], lo: str, hi: str, what: str) -> None:
        if count is not None and getattr(self, count) < 1:
            raise ValueError(f"{count}: need >= 1, got {getattr(self, count)}")
        a, b = getattr(self, lo), getattr(self, hi)
        if a <= self.k:
            raise ValueError(f"{lo} = {a} must exceed k = {self.k}: otherwise {what} can be inside the last k events")
        if b < a:
            raise ValueError(f"{hi}: need >= {lo} = {a}, got {b}")
        if count is not None and self.min_prior * a > self.max_len - 1:
            raise ValueError(f"max_len: need > min_prior * {lo} = {self.min_prior * a} for a far target, "
                             f"got {self.max_len}")


@dataclass
class _Catalog:
    """category_return: the catalog partitioned into categories, items of category ``c`` at
    ``start[c] .. start[c] + size[c] - 1``."""

    start: np.ndarray  # [C] first item of each category
    size: np.ndarray  # [C] items per category
    cat_of: np.ndarray  # [n_items] item -> category
    cat_pop: np.ndarray  # [C] category popularity (Zipf-like, sums to 1)
    key: np.ndarray  # [n_items] category + within-category cumulative popularity, increasing (last of c: c + 1)
    slot_item: np.ndarray  # [n_items] popularity slot -> item (a permutation inside each category)
    item_pop: np.ndarray  # [n_items] within-category popularity of each item

    def draw(self, cat: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Items of categories ``cat`` by within-category popularity, ``u`` uniform in [0, 1)."""
        return self.slot_item[np.searchsorted(self.key, cat + u, side="right")]


@dataclass
class _World:
    pop_cdf: np.ndarray  # [n_items] Zipf-like popularity, cumulative
    pop_item: np.ndarray  # [n_items] popularity rank -> item
    catalog: Optional[_Catalog] = None  # category_return only


@dataclass
class _Process:
    """One user's process over ``max_len`` positions (internal item IDs)."""

    item: np.ndarray  # [M]
    pattern: np.ndarray  # [M] bool: favourite visit / periodic slot / first event of a session
    far_ok: np.ndarray  # [M] bool: a pattern event that may end a far user's history
    items: np.ndarray  # [n_pattern_items] the user's pattern items
    extra: dict = field(default_factory=dict)  # periods, phases (periodic)
    behavior: Optional[np.ndarray] = None  # [M] behaviour codes (replenishment; None = all views)
    category: Optional[np.ndarray] = None  # [M] categories (category_return: far / recent are about them)


@dataclass
class _User:
    """One user's history (the process cut after its end event) and facts about it."""

    item: np.ndarray  # [L]
    far: bool
    pattern_target: bool
    items: np.ndarray
    extra: dict
    pattern_events: int  # pattern events in the history
    far_in_training: int  # far recurrences at training positions (<= L - 3)
    ends_in_training: int  # of those, the ones a far user's history could end on
    redraws: int
    behavior: Optional[np.ndarray] = None  # [L] behaviour codes (replenishment)
    category: Optional[np.ndarray] = None  # [L] categories (category_return)


def _zipf(w: _World, rng: np.random.Generator, n: int) -> np.ndarray:
    return w.pop_item[np.minimum(np.searchsorted(w.pop_cdf, rng.random(n)), len(w.pop_item) - 1)]


def _avoid(w: _World, rng: np.random.Generator, item: np.ndarray, mask: np.ndarray, pattern_items: np.ndarray) -> None:
    """Re-draw ``item[mask]`` (in place) from popularity while it is one of ``pattern_items``."""
    n_items = len(w.pop_item)
    for _ in range(20):
        bad = np.flatnonzero(mask & np.isin(item, pattern_items))
        if len(bad) == 0:
            return
        item[bad] = _zipf(w, rng, len(bad))
    for _ in range(len(pattern_items) + 1):  # deterministic fallback: the next item ID
        bad = np.flatnonzero(mask & np.isin(item, pattern_items))
        if len(bad) == 0:
            return
        item[bad] = (item[bad] + 1) % n_items


def _background(p: LongHistParams, w: _World, rng: np.random.Generator) -> np.ndarray:
    """[max_len] background items: current interest (4 items per regime) or popularity."""
    m = p.max_len
    n_reg = (m + p.regime - 1) // p.regime
    interest = rng.integers(0, p.n_items, (n_reg, N_INTEREST))
    use_int = rng.random(m) < p.p_interest
    pick = interest[np.arange(m) // p.regime, rng.integers(0, N_INTEREST, m)]
    return np.where(use_int, pick, _zipf(w, rng, m))


def _renewals(m: int, first: list[int], next_gap: Callable[[int], int], before: int) -> tuple[np.ndarray, np.ndarray]:
    """Renewal processes, one per item ``i`` due first at ``first[i]`` and again ``next_gap(i)``
    events after each visit, merged on one line of ``m`` positions: two items due at once take
    the next free positions in turn (so no two visits share a position). ``before`` is a
    position before every first visit. Returns ``(positions [V], items [V])`` int64 of the visits
    at ``0 .. m − 1``, in position order."""
    heap = [(due, i) for i, due in enumerate(first)]
    heapq.heapify(heap)
    last = before
    visits: list[tuple[int, int]] = []
    while heap:
        due, i = heapq.heappop(heap)
        pos = max(due, last + 1)
        if pos >= m:
            break  # every later visit is due later still
        last = pos
        if pos >= 0:
            visits.append((pos, i))
        heapq.heappush(heap, (pos + next_gap(i), i))
    return np.array([v[0] for v in visits], np.int64), np.array([v[1] for v in visits], np.int64)


def _favourites(p: LongHistParams, w: _World, rng: np.random.Generator) -> _Process:
    m, f = p.max_len, p.favourites
    fav = rng.choice(p.n_items, f, replace=False)
    item = _background(p, w, rng)
    pattern = np.zeros(m, bool)
    # renewal per favourite, started 2 * gap_max before position 0; ties wait for the next free position
    first = [int(-2 * p.gap_max + d) for d in rng.integers(0, p.gap_max, f)]
    at, which = _renewals(m, first, lambda i: int(rng.integers(p.gap_min, p.gap_max + 1)), -4 * p.gap_max)
    _avoid(w, rng, item, np.ones(m, bool), fav)
    item[at] = fav[which]
    pattern[at] = True
    return _Process(item, pattern, pattern.copy(), fav)


def _periodic(p: LongHistParams, w: _World, rng: np.random.Generator) -> _Process:
    m, n = p.max_len, p.periodic
    per = rng.integers(p.period_min, p.period_max + 1, n)
    phase = rng.integers(0, per)
    for _ in range(MAX_REDRAWS):
        slots = [np.arange(ph, m, t) for ph, t in zip(phase.tolist(), per.tolist())]
        flat = np.concatenate(slots)
        if len(np.unique(flat)) == len(flat):
            break
        per = rng.integers(p.period_min, p.period_max + 1, n)
        phase = rng.integers(0, per)
    else:
        raise RuntimeError("periodic: no collision-free periods and phases; lower periodic or widen the periods")
    items = rng.choice(p.n_items, n, replace=False)
    item = _background(p, w, rng)
    _avoid(w, rng, item, np.ones(m, bool), items)
    pattern = np.zeros(m, bool)
    for i, s in enumerate(slots):
        item[s] = items[i]
        pattern[s] = True
    return _Process(item, pattern, pattern.copy(), items,
                    {"periods": per.astype(np.int64), "phases": phase.astype(np.int64)})


def _interleaved(p: LongHistParams, w: _World, rng: np.random.Generator) -> _Process:
    m, n_int, g = p.max_len, p.interests, p.group_size
    groups = rng.choice(p.n_items, n_int * g, replace=False)  # group j: groups[j*g:(j+1)*g], cycle j -> j+1
    n_sess = m // p.session_min + 2
    lens = rng.integers(p.session_min, p.session_max + 1, n_sess)
    offset = int(rng.integers(0, lens[0]))  # events of session 0 before position 0
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]) - offset
    pos = np.arange(m)
    sess = np.searchsorted(starts, pos, side="right") - 1
    interest = (int(rng.integers(0, n_int)) + sess) % n_int
    first = (pos == starts[sess]) & (sess >= 1)
    use = (rng.random(m) < p.p_session) | first
    item = _zipf(w, rng, m)
    _avoid(w, rng, item, ~use, groups)
    item = np.where(use, groups[interest * g + rng.integers(0, g, m)], item)
    # a far end: a session start whose ending session (sess - 1) had an earlier session of the same
    # interest with an event in view (session 0 is cut and may show only background)
    earlier = sess - 1 - n_int
    shown = (earlier >= 1) | ((earlier == 0) & use[sess == 0].any())
    return _Process(item, first, first & shown, groups)


def _replenishment(p: LongHistParams, w: _World, rng: np.random.Generator) -> _Process:
    m, n = p.max_len, p.staples
    staples = rng.choice(p.n_items, n, replace=False)
    cycle = rng.integers(p.cycle_min, p.cycle_max + 1, n)
    item = _background(p, w, rng)
    _avoid(w, rng, item, np.ones(m, bool), staples)
    behavior = np.where(rng.random(m) < p.p_buy, PURCHASE, VIEW).astype(np.int8)
    # purchases: a renewal per staple with gaps of cycle · (1 ± jitter), started one cycle before
    # position 0 at a uniform phase; ties wait for the next free position
    first = [int(ph) - int(c) for c, ph in zip(cycle, rng.integers(0, cycle))]
    at, which = _renewals(m, first, lambda i: int(round(cycle[i] * (1.0 + rng.uniform(-p.jitter, p.jitter)))),
                          -4 * p.cycle_max)
    pattern = np.zeros(m, bool)
    pattern[at] = True
    # views of the staples between purchases (they do not reset a cycle), off the purchase slots
    n_views = rng.poisson(p.staple_views * m / cycle)
    vpos = np.concatenate([rng.integers(0, m, k) for k in n_views]) if n_views.sum() else np.zeros(0, np.int64)
    vwhich = np.repeat(np.arange(n), n_views)
    free = ~pattern[vpos]
    item[vpos[free]] = staples[vwhich[free]]
    behavior[vpos[free]] = VIEW
    item[at] = staples[which]
    behavior[at] = PURCHASE
    # a far end: a purchase with at least min_prior earlier purchases of its staple
    nth = np.zeros(len(at), np.int64)
    seen = np.zeros(n, np.int64)
    for k, i in enumerate(which.tolist()):
        nth[k] = seen[i]
        seen[i] += 1
    far_ok = np.zeros(m, bool)
    far_ok[at[nth >= p.min_prior]] = True
    return _Process(item, pattern, far_ok, staples, {"cycles": cycle.astype(np.int64)}, behavior)


def _category_world(p: LongHistParams, rng: np.random.Generator) -> _World:
    """The category_return catalog: ``categories`` blocks of ``category_size_min .. max`` items,
    Zipf-like popularity over the categories and inside each (a random order in both)."""
    size = rng.integers(p.category_size_min, p.category_size_max + 1, p.categories)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    n = int(size.sum())
    cat_of = np.repeat(np.arange(p.categories), size)
    rank = np.arange(n) - start[cat_of]  # popularity rank inside the category
    w = 1.0 / (rank + 1.0) ** ZIPF
    tot = np.bincount(cat_of, w)
    within = w / tot[cat_of]
    cum = np.cumsum(within) - np.repeat(np.cumsum(within)[start] - within[start], size)
    key = cat_of + cum
    key[start + size - 1] = np.arange(p.categories) + 1.0  # exact block ends: a draw never leaves its category
    slot_item = np.argsort(cat_of + rng.random(n), kind="stable")  # a random order inside each category
    item_pop = np.empty(n)
    item_pop[slot_item] = within
    cpop = 1.0 / np.arange(1, p.categories + 1) ** ZIPF
    cat_pop = (cpop / cpop.sum())[rng.permutation(p.categories)]
    cat = _Catalog(start, size, cat_of, cat_pop, key, slot_item, item_pop)
    return _World(pop_cdf=np.zeros(0), pop_item=np.arange(n), catalog=cat)


def _category_return(p: LongHistParams, w: _World, rng: np.random.Generator) -> _Process:
    m, c = p.max_len, w.catalog
    assert c is not None
    n_int = int(rng.integers(p.cat_interests_min, p.cat_interests_max + 1))
    cats = rng.choice(p.categories, n_int, replace=False, p=c.cat_pop)
    # background: the current category (re-drawn every regime events) or popularity, never an interest
    bg = c.cat_pop.copy()
    bg[cats] = 0.0
    cdf = np.cumsum(bg)

    def bg_cat(n: int) -> np.ndarray:
        return np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")

    n_reg = (m + p.regime - 1) // p.regime
    reg = bg_cat(n_reg)
    use_reg = rng.random(m) < p.p_interest
    category = np.where(use_reg, reg[np.arange(m) // p.regime], bg_cat(m))
    item = c.draw(category, rng.random(m))
    # episodes: one renewal per interest (next due return_min .. return_max events after its episode
    # ends), started 2 * return_max before position 0; an interest due during another's episode waits
    heap = [(int(-2 * p.return_max + d), i) for i, d in enumerate(rng.integers(0, p.return_max, n_int))]
    heapq.heapify(heap)
    free = -4 * p.return_max
    episodes: list[tuple[int, int, int]] = []
    while heap:
        due, i = heapq.heappop(heap)
        s = max(due, free)
        if s >= m:
            break
        n_ev = int(rng.integers(p.episode_min, p.episode_max + 1))
        episodes.append((s, n_ev, i))
        free = s + n_ev
        heapq.heappush(heap, (free + int(rng.integers(p.return_min, p.return_max + 1)), i))
    pattern = np.zeros(m, bool)
    start = np.zeros(m, bool)
    which = np.full(m, -1, np.int64)
    for s, n_ev, i in episodes:
        at = np.arange(s, s + n_ev)
        on = rng.random(n_ev) < p.p_episode
        on[0] = True  # an episode opens with an item of its interest
        at = at[on & (at >= 0) & (at < m)]
        pattern[at] = True
        which[at] = i
        if s >= 0:
            start[s] = True
    # interest items new to the user: each interest's items in a popularity-weighted order without
    # replacement (Efraimidis-Spirakis keys), taken in turn; an exhausted category starts over
    repeat = np.zeros(m, bool)
    for i, ct in enumerate(cats.tolist()):
        lo, sz = int(c.start[ct]), int(c.size[ct])
        order = lo + np.argsort(rng.exponential(size=sz) / c.item_pop[lo : lo + sz], kind="stable")
        at = np.flatnonzero(which == i)
        j = np.arange(len(at))
        item[at] = order[j % sz]
        repeat[at] = j >= sz
        category[at] = ct
    return _Process(item, pattern, start.copy(), cats.astype(np.int64),
                    {"start": start, "repeat": repeat}, category=category.astype(np.int64))


_PROCESS = {"favourites": _favourites, "periodic": _periodic, "interleaved": _interleaved,
            "replenishment": _replenishment, "category_return": _category_return}


def _previous(item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position: the previous position of the same item (-1: none) and how many earlier
    positions hold it."""
    order = np.argsort(item, kind="stable")
    s = item[order]
    same = np.r_[False, s[1:] == s[:-1]]
    prev = np.full(len(item), -1, np.int64)
    prev[order[same]] = order[np.flatnonzero(same) - 1]
    grp_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(s))))
    count = np.empty(len(item), np.int64)
    count[order] = np.arange(len(s)) - grp_start
    return prev, count


def _far_events(p: LongHistParams, proc: _Process, prev: np.ndarray, count: np.ndarray) -> np.ndarray:
    """[M] bool: far pattern events (the end events a far user may have)."""
    pos = np.arange(len(proc.item))
    return proc.far_ok & (prev >= 0) & (pos - prev > p.k) & (count >= p.min_prior)


def _user(p: LongHistParams, w: _World, rng: np.random.Generator, far: bool, new: bool = False) -> _User:
    """One user ending on a far pattern event (``far``), on an item it never had (``new``,
    replenishment only), or on an item of its last ``k`` events."""
    for redraw in range(MAX_REDRAWS):
        proc = _PROCESS[p.scenario](p, w, rng)
        # far / recent: where the target item (category_return: its category) was last seen
        prev, count = _previous(proc.item if proc.category is None else proc.category)
        pos = np.arange(p.max_len)
        far_rec = proc.pattern & (prev >= 0) & (pos - prev > p.k)  # the far definition, at every position
        far_ev = _far_events(p, proc, prev, count)
        if proc.category is not None:  # category_return: every end is an item new to the user
            fresh = _previous(proc.item)[0] < 0
            far_ev &= fresh
            ok = far_ev if far else fresh & (prev >= 0) & (pos - prev <= p.k)
        else:
            ok = far_ev if far else (prev < 0) if new else (prev >= 0) & (pos - prev <= p.k)
        cand = np.flatnonzero(ok & (pos >= p.min_len - 1))
        if len(cand):
            end = int(cand[rng.integers(0, len(cand))])
            beh = proc.behavior[: end + 1] if proc.behavior is not None else None
            cat = proc.category[: end + 1] if proc.category is not None else None
            return _User(item=proc.item[: end + 1], far=far, pattern_target=bool(proc.pattern[end]), items=proc.items,
                         extra=proc.extra, pattern_events=int(proc.pattern[: end + 1].sum()),
                         far_in_training=int(far_rec[: max(end - 1, 0)].sum()),
                         ends_in_training=int(far_ev[: max(end - 1, 0)].sum()), redraws=redraw, behavior=beh,
                         category=cat)
    what = "far" if far else "new" if new else "recent"
    raise RuntimeError(f"{p.scenario}: no {what} end event in {MAX_REDRAWS} draws; widen min_len .. max_len")


def _category_gap(category: np.ndarray) -> int:
    """Events between the target (the last of ``category``) and the last history event of its
    category (1 = the last history event), -1 when the history has none."""
    seen = np.flatnonzero(category[:-1] == category[-1])
    return int(len(category) - 1 - seen[-1]) if len(seen) else -1


def generate(params: LongHistParams, out: str | Path) -> dict:
    """Generate the dataset into ``out``; returns the summary written to ``synthetic.json``."""
    t0 = time.time()
    p = params.validate()
    out = Path(out)
    clear_events_dir(out)
    rng = np.random.default_rng([p.seed, 11 << 20, SCENARIOS.index(p.scenario)])
    if p.scenario == "category_return":
        w = _category_world(p, rng)
    else:
        pop = 1.0 / np.arange(1, p.n_items + 1) ** ZIPF
        w = _World(pop_cdf=np.cumsum(pop / pop.sum()), pop_item=rng.permutation(p.n_items))
    far = np.zeros(p.users, bool)
    far[rng.permutation(p.users)[: int(round(p.far_fraction * p.users))]] = True
    new = np.zeros(p.users, bool)
    if p.scenario == "replenishment":  # a share of the other users end on an item new to them
        rest = np.flatnonzero(~far)
        new[rest[rng.permutation(len(rest))[: int(round(p.new_fraction * p.users))]]] = True
    users = [_user(p, w, rng, bool(f), bool(nw)) for f, nw in zip(far, new)]

    lens = np.array([len(u.item) for u in users], np.int64)
    item = np.concatenate([u.item for u in users]).astype(np.int64)
    uid = np.repeat(np.arange(p.users), lens)
    n_ev = len(item)
    # timestamps: gaps of minutes (80 %) or of hours to days (20 %), ending 0-2 days before T_END
    gaps = 1.0 + np.where(rng.random(n_ev) < 0.8, rng.exponential(600.0, n_ev), rng.exponential(DAY / 2, n_ev))
    cs = np.cumsum(gaps)
    last = np.cumsum(lens) - 1
    end = T_END - rng.uniform(0, 2 * DAY, p.users)
    ts = (end[uid] - (cs[last[uid]] - cs)).astype(np.int64)
    item_raw = item + 100_000
    behavior = (np.concatenate([u.behavior for u in users]).astype(np.int8) if p.scenario == "replenishment"
                else np.zeros(n_ev, np.int8))
    category = np.concatenate([u.category for u in users]) if w.catalog is not None else item // 100
    pq.write_table(events_table(uid.astype(np.int64) + 1, item_raw, ts, behavior,
                                np.zeros(n_ev, np.int64), category.astype(np.int64) + 1),
                   out / "events" / "part-00000.parquet", compression="snappy")

    user_id = np.arange(p.users, dtype=np.int64) + 1
    kind = np.where(far, "far", np.where(new, "new", "recent"))
    if p.scenario == "replenishment":  # a far end here is a staple's re-purchase when it is due
        kind = np.where(far, "due", kind)
    gt = {
        "user_id": pa.array(user_id),
        "kind": pa.array(kind),
        "n_events": pa.array(lens),
        "target_item": pa.array(item_raw[last]),
        "pattern_target": pa.array(np.array([u.pattern_target for u in users], bool)),
    }
    extra_summary: dict = {}
    if p.scenario == "category_return":
        # the target's category, its interests (raw category IDs) and how far back the category was last seen
        gap = np.array([_category_gap(u.category) for u in users], np.int64)
        gt["target_category"] = pa.array(category[last] + 1)
        gt["category_gap"] = pa.array(gap)
        gt["episode_start"] = pa.array(np.array([bool(u.extra["start"][len(u.item) - 1]) for u in users], bool))
        gt["interests"] = pa.array([(u.items + 1).tolist() for u in users], pa.list_(pa.int64()))
        fg = gap[far]
        extra_summary = {
            "catalog_items": int(len(w.catalog.cat_of)),
            "interest_repeats": int(sum(u.extra["repeat"][: len(u.item)].sum() for u in users)),
            "far_category_gap": ({"min": int(fg.min()), "median": float(np.median(fg)), "max": int(fg.max())}
                                 if len(fg) else {}),
        }
    else:
        gt["items"] = list_column(np.stack([u.items for u in users]).astype(np.int64) + 100_000)
    if p.scenario == "periodic":
        gt["periods"] = list_column(np.stack([u.extra["periods"] for u in users]))
        gt["phases"] = list_column(np.stack([u.extra["phases"] for u in users]))
    if p.scenario == "interleaved":
        gt["session_start"] = gt["pattern_target"]
    if p.scenario == "replenishment":
        gt["cycles"] = list_column(np.stack([u.extra["cycles"] for u in users]))
    pq.write_table(pa.table(gt), out / "ground_truth.parquet")
    pq.write_table(pa.table({"user_id": pa.array(user_id), "kind": pa.array(kind)}), out / "segments.parquet")
    summary = {
        "params": asdict(p),
        "events": n_ev,
        "users": p.users,
        "users_by_kind": {str(k): int((kind == k).sum()) for k in sorted(set(kind.tolist()))},
        "pattern_events": int(sum(u.pattern_events for u in users)),
        "far_recurrences_in_training": int(sum(u.far_in_training for u in users)),
        "far_end_events_in_training": int(sum(u.ends_in_training for u in users)),
        "redraws": int(sum(u.redraws for u in users)),
        **extra_summary,
        "mean_history": round(float(lens.mean()), 1),
        "max_history": int(lens.max()),
        "seconds": round(time.time() - t0, 2),
    }
    (out / "synthetic.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m data_prep.synthetic_longhist``."""
    d = LongHistParams()
    ap = argparse.ArgumentParser(prog="python -m data_prep.synthetic_longhist", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=SCENARIOS, required=True, help="which process (module docstring)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--users", type=int, default=d.users, help="number of users")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--n-items", type=int, default=d.n_items, help="catalog size")
    ap.add_argument("--min-len", type=int, default=d.min_len, help="shortest history")
    ap.add_argument("--max-len", type=int, default=d.max_len, help="longest history (and process length)")
    ap.add_argument("--k", type=int, default=d.k, help="the model's short window; far targets are not in it")
    ap.add_argument("--far-fraction", type=float, default=d.far_fraction, help="share of users ending on a far target")
    ap.add_argument("--min-prior", type=int, default=d.min_prior,
                    help="earlier occurrences a far target's item needs")
    ap.add_argument("--favourites", type=int, default=d.favourites, help="favourites: items per user")
    ap.add_argument("--gap-min", type=int, default=d.gap_min, help="favourites: shortest gap between visits")
    ap.add_argument("--gap-max", type=int, default=d.gap_max, help="favourites: longest gap between visits")
    ap.add_argument("--periodic", type=int, default=d.periodic, help="periodic: items per user")
    ap.add_argument("--period-min", type=int, default=d.period_min, help="periodic: shortest period")
    ap.add_argument("--period-max", type=int, default=d.period_max, help="periodic: longest period")
    ap.add_argument("--interests", type=int, default=d.interests, help="interleaved: interests per user, cycled")
    ap.add_argument("--group-size", type=int, default=d.group_size, help="interleaved: items per interest")
    ap.add_argument("--session-min", type=int, default=d.session_min, help="interleaved: shortest session")
    ap.add_argument("--session-max", type=int, default=d.session_max, help="interleaved: longest session")
    ap.add_argument("--p-session", type=float, default=d.p_session,
                    help="interleaved: share of session events from its interest")
    ap.add_argument("--regime", type=int, default=d.regime, help="background: events per current interest")
    ap.add_argument("--p-interest", type=float, default=d.p_interest,
                    help="background: share from the current interest")
    ap.add_argument("--staples", type=int, default=d.staples, help="replenishment: re-purchased items per user")
    ap.add_argument("--cycle-min", type=int, default=d.cycle_min, help="replenishment: shortest cycle (events)")
    ap.add_argument("--cycle-max", type=int, default=d.cycle_max, help="replenishment: longest cycle (events)")
    ap.add_argument("--jitter", type=float, default=d.jitter,
                    help="replenishment: each gap is the cycle times 1 +- a uniform share up to this")
    ap.add_argument("--staple-views", type=float, default=d.staple_views,
                    help="replenishment: views of a staple per cycle (they do not reset it)")
    ap.add_argument("--p-buy", type=float, default=d.p_buy, help="replenishment: share of background purchases")
    ap.add_argument("--new-fraction", type=float, default=d.new_fraction,
                    help="replenishment: share of users ending on an item new to them")
    ap.add_argument("--categories", type=int, default=d.categories, help="category_return: categories in the catalog")
    ap.add_argument("--category-size-min", type=int, default=d.category_size_min,
                    help="category_return: fewest items per category")
    ap.add_argument("--category-size-max", type=int, default=d.category_size_max,
                    help="category_return: most items per category")
    ap.add_argument("--cat-interests-min", type=int, default=d.cat_interests_min,
                    help="category_return: fewest interest categories per user")
    ap.add_argument("--cat-interests-max", type=int, default=d.cat_interests_max,
                    help="category_return: most interest categories per user")
    ap.add_argument("--return-min", type=int, default=d.return_min,
                    help="category_return: shortest gap between episodes of an interest")
    ap.add_argument("--return-max", type=int, default=d.return_max,
                    help="category_return: longest gap between episodes of an interest")
    ap.add_argument("--episode-min", type=int, default=d.episode_min, help="category_return: shortest episode")
    ap.add_argument("--episode-max", type=int, default=d.episode_max, help="category_return: longest episode")
    ap.add_argument("--p-episode", type=float, default=d.p_episode,
                    help="category_return: share of an episode's events from its interest")
    ns = ap.parse_args(argv)
    kw = {k: v for k, v in vars(ns).items() if k != "out"}
    try:
        params = LongHistParams(**kw).validate()
    except ValueError as err:
        ap.error(str(err))
    summary = generate(params, ns.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "params"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
