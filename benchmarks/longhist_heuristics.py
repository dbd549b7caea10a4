"""Non-learned reference rankers on the long-history benchmarks (``data_prep.synthetic_longhist``).

How much of each test target does the short window explain, and how much can be read off the far
history? Each ranker scores the test target (each user's last event) from the user's history
alone and reports HR@1 / HR@10 per kind (``far``: the target is not in the last ``k`` history
events but occurs earlier; ``recent``: it is in the last ``k``):

* ``last_k_counts``: the most frequent items of the last ``k`` history events (what a short window
  can count; it never holds a far target, so its far HR is 0 by construction);
* ``history_counts``: the most frequent items of the whole history;
* ``oracle``: the scenario's rule read off the history, given the generator's parameters (an
  upper reference for far targets, not something a model is told). ``favourites``: items absent
  from the last ``k`` that occurred at least twice, every gap and the time since the last visit
  within ``[gap_min, gap_max + favourites]``, the most *personal* first: the fewest events of the
  item over all users' histories per visit in this one (popular items of the background also
  recur that sparsely, but a favourite is a favourite of a few users only; an item's popularity
  is what a trained item embedding learns). ``periodic``: items absent from the last ``k``
  whose 2+ visits are exactly equally spaced (at least ``period_min`` apart), the one whose next
  visit is due closest to now first. ``interleaved``: *bursty* items (at least 3 occurrences in the
  ``k`` events ending at their last one) absent from the last ``k``, the one absent longest first:
  in a cycle of interests the next one is the interest visited longest ago. ``replenishment``
  (kinds ``due`` / ``recent`` / ``new``): items bought at least twice and absent from the last
  ``k``, the one whose events since its last purchase are closest to its mean gap between
  purchases first; with ``most_purchased`` (the user's most bought items) beside it.

Ties keep the first-seen order (``collections.Counter.most_common``, stable sorts). Usage::

    python benchmarks/longhist_heuristics.py RAW_DIR [--table]

``RAW_DIR`` is the generator's output (``events/``, ``segments.parquet``, ``synthetic.json``, which
gives the scenario and its parameters); prints one JSON object, or with ``--table`` a Markdown
table of HR@10.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: data_prep/

from data_prep.synthetic import kind_histories as histories, ranker_hit_rates  # noqa: E402

Ranker = Callable[[Sequence[int]], List[int]]
BURST = 3  # interleaved oracle: occurrences within k events that mark an item as an interest item


def _positions(hist: Sequence[int]) -> Dict[int, List[int]]:
    pos: Dict[int, List[int]] = {}
    for i, x in enumerate(hist):
        pos.setdefault(x, []).append(i)
    return pos


def oracle(params: dict, counts: Counter) -> Ranker:
    """The scenario's upper reference (module docstring) for ``synthetic.json`` params; ``counts``:
    item → its events over all users' histories (test targets left out)."""
    k, scenario = params["k"], params["scenario"]

    def favourites(hist: Sequence[int]) -> List[int]:
        t, near = len(hist), set(hist[-k:])
        lo, hi = params["gap_min"], params["gap_max"] + params["favourites"]
        hits = []
        for x, p in _positions(hist).items():
            gaps = np.diff(p + [t])  # the gaps so far and the time since the last visit
            if x not in near and len(p) >= 2 and gaps.min() >= lo and gaps.max() <= hi:
                hits.append((counts[x] / len(p), x))
        return [x for _, x in sorted(hits, key=lambda h: h[0])[:10]]

    def periodic(hist: Sequence[int]) -> List[int]:
        t, near = len(hist), set(hist[-k:])
        hits = []
        for x, p in _positions(hist).items():
            if x in near or len(p) < 2:
                continue
            gaps = np.diff(p)
            if gaps.min() == gaps.max() >= params["period_min"]:
                hits.append((abs(p[-1] + int(gaps[0]) - t), x))
        return [x for _, x in sorted(hits, key=lambda h: h[0])[:10]]

    def interleaved(hist: Sequence[int]) -> List[int]:
        near = set(hist[-k:])
        hits = []
        for x, p in _positions(hist).items():
            if x not in near and len(p) >= BURST and p[-BURST] > p[-1] - k:
                hits.append((p[-1], x))
        return [x for _, x in sorted(hits, key=lambda h: h[0])[:10]]

    return {"favourites": favourites, "periodic": periodic, "interleaved": interleaved}[scenario]


def rankers(params: dict, counts: Counter) -> Dict[str, Ranker]:
    """Name → function from a history (item IDs, oldest first) to its top items, best first
    (``counts``: as for :func:`oracle`)."""
    k = params["k"]

    def last_k_counts(hist: Sequence[int]) -> List[int]:
        return [x for x, _ in Counter(hist[-k:]).most_common(10)]

    def history_counts(hist: Sequence[int]) -> List[int]:
        return [x for x, _ in Counter(hist).most_common(10)]

    return {"last_k_counts": last_k_counts, "history_counts": history_counts, "oracle": oracle(params, counts)}


PURCHASE = 8  # data_prep.synthetic.BEHAVIORS.index("pay"): the replenishment scenario's purchases


def _purchase_histories(raw_dir: Path) -> Dict[str, List[tuple]]:
    """Kind → per-user ``(items, purchased)`` arrays in time order (the last event is the target)."""
    import pyarrow.parquet as pq

    ev = pq.read_table(raw_dir / "events", columns=["user_id", "item_id", "timestamp", "behavior"])
    seg = pq.read_table(raw_dir / "segments.parquet").to_pydict()
    kind = dict(zip(seg["user_id"], seg["kind"]))
    u = ev.column("user_id").to_numpy()
    beh = ev.column("behavior").combine_chunks()
    codes = np.asarray(beh.indices) if hasattr(beh, "indices") else np.asarray(beh)
    order = np.lexsort((ev.column("timestamp").to_numpy(), u))
    u, items, buy = u[order], ev.column("item_id").to_numpy()[order], codes[order] == PURCHASE
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    out: Dict[str, List[tuple]] = {}
    for a, b in zip(starts, np.r_[starts[1:], len(u)]):
        out.setdefault(kind[int(u[a])], []).append((items[a:b], buy[a:b]))
    return out


def replenishment_rankers(params: dict) -> Dict[str, Callable[[Sequence[int], Sequence[bool]], List[int]]]:
    """Rankers that also read which events were purchases: ``most_purchased`` (the user's most
    bought items) and ``oracle`` (items bought at least twice and absent from the last ``k``
    events, the one whose time since its last purchase is closest to its mean gap between
    purchases first, in events: "due again")."""
    k = params["k"]

    def most_purchased(hist: Sequence[int], buy: Sequence[bool]) -> List[int]:
        return [x for x, _ in Counter(x for x, b in zip(hist, buy) if b).most_common(10)]

    def due(hist: Sequence[int], buy: Sequence[bool]) -> List[int]:
        t, near = len(hist), set(hist[-k:])
        bought: Dict[int, List[int]] = {}
        for i, (x, b) in enumerate(zip(hist, buy)):
            if b:
                bought.setdefault(x, []).append(i)
        hits = []
        for x, p in bought.items():
            if x in near or len(p) < 2:
                continue
            gap = (p[-1] - p[0]) / (len(p) - 1)
            hits.append((abs(np.log((t - p[-1]) / gap)), x))
        return [x for _, x in sorted(hits, key=lambda h: h[0])[:10]]

    return {"most_purchased": most_purchased, "oracle": due}


def evaluate(raw_dir: Path) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{kind: {ranker: {"users", "hr@1", "hr@10"}}}`` over every user's last event."""
    params = json.loads((raw_dir / "synthetic.json").read_text())["params"]
    if params["scenario"] == "replenishment":
        return _evaluate_replenishment(raw_dir, params)
    hists = histories(raw_dir)
    counts: Counter = Counter()
    for seqs in hists.values():
        for s in seqs:
            counts.update(s[:-1].tolist())
    fns = rankers(params, counts)
    return ranker_hit_rates(hists, fns)


def _evaluate_replenishment(raw_dir: Path, params: dict) -> Dict[str, Dict[str, Dict[str, float]]]:
    """:func:`evaluate` for the replenishment scenario: the item-only rankers and the ones that read
    purchases (:func:`replenishment_rankers`)."""
    hists = _purchase_histories(raw_dir)
    plain = rankers({**params, "scenario": "favourites"}, Counter())
    fns = {"last_k_counts": plain["last_k_counts"], "history_counts": plain["history_counts"]}
    res = ranker_hit_rates({kind: [h for h, _ in v] for kind, v in hists.items()}, fns)
    for name, fn in replenishment_rankers(params).items():
        for kind, seqs in hists.items():
            top = [(fn(h[:-1].tolist(), b[:-1].tolist()), int(h[-1])) for h, b in seqs]
            res[kind][name] = {"users": len(seqs),
                               "hr@1": round(sum(t[:1] == [y] for t, y in top) / len(seqs), 4),
                               "hr@10": round(sum(y in t for t, y in top) / len(seqs), 4)}
    return res


def table(res: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """HR@10 (HR@1) of each ranker per kind as a Markdown table."""
    names = list(next(iter(res.values())))
    lines = ["| kind | users | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for kind, r in res.items():
        cells = " | ".join(f"{r[n]['hr@10']:.3f} ({r[n]['hr@1']:.3f})" for n in names)
        lines.append(f"| {kind} | {r[names[0]]['users']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw_dir", type=Path, help="data_prep.synthetic_longhist output directory")
    p.add_argument("--table", action="store_true", help="print a Markdown table of HR@10 (HR@1) instead of JSON")
    args = p.parse_args()
    res = evaluate(args.raw_dir)
    print(table(res) if args.table else json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
