"""Non-learned reference rankers on the long-range recall data (``data_prep.synthetic_recall``).

What does the recall test ask a model to find, and how hard is it? Each ranker below scores the
test target (each user's last event) from the user's history alone and reports HR@1 / HR@10 per
generator kind (``recall``: the target is a favourite last seen ``F * s`` events back, outside the
last ``k``; ``other``: a background event):

* ``window_freq``: the most frequent items of the last ``k`` history events (what a short window
  can count);
* ``far_freq``: the most frequent items of the events before the last ``k``;
* ``far_not_window``: as ``far_freq``, leaving out items seen in the last ``k``;
* ``periodic``: items outside the last ``k`` whose last two visits are a multiple of ``period``
  apart, the one last seen longest ago first (the generator's own rule, given its period: an
  upper reference, not something a model is told).

Ties keep the first-seen order (``collections.Counter.most_common``). Usage::

    python benchmarks/recall_heuristics.py RAW_DIR [--k 64] [--period 96]

``RAW_DIR`` is the generator's output (``events/``, ``segments.parquet``); prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: data_prep/

from data_prep.synthetic import kind_histories as histories, ranker_hit_rates  # noqa: E402

Ranker = Callable[[Sequence[int]], List[int]]


def rankers(k: int, period: int) -> Dict[str, Ranker]:
    """Name → function from a history (item IDs, oldest first) to its top items, best first."""

    def window_freq(hist: Sequence[int]) -> List[int]:
        return [x for x, _ in Counter(hist[-k:]).most_common(10)]

    def far_freq(hist: Sequence[int]) -> List[int]:
        return [x for x, _ in Counter(hist[:-k]).most_common(10)]

    def far_not_window(hist: Sequence[int]) -> List[int]:
        near = set(hist[-k:])
        return [x for x, _ in Counter(hist[:-k]).most_common() if x not in near][:10]

    def periodic(hist: Sequence[int]) -> List[int]:
        near = set(hist[-k:])
        last: Dict[int, List[int]] = {}
        for i, x in enumerate(hist):
            last.setdefault(x, []).append(i)
        hits = [x for x, p in last.items() if x not in near and len(p) >= 2 and (p[-1] - p[-2]) % period == 0]
        return sorted(hits, key=lambda x: last[x][-1])[:10]

    return {"window_freq": window_freq, "far_freq": far_freq, "far_not_window": far_not_window,
            "periodic": periodic}


def evaluate(raw_dir: Path, k: int = 64, period: int = 96) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{kind: {ranker: {"users", "hr@1", "hr@10"}}}`` over every user's last event."""
    return ranker_hit_rates(histories(raw_dir), rankers(k, period))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw_dir", type=Path, help="data_prep.synthetic_recall output directory")
    p.add_argument("--k", type=int, default=64, help="short window (the generator's --k)")
    p.add_argument("--period", type=int, default=96, help="favourites x spacing of the generator")
    args = p.parse_args()
    print(json.dumps(evaluate(args.raw_dir, args.k, args.period), indent=1))


if __name__ == "__main__":
    main()
