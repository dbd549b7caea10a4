"""Benchmark: the softmax layers' time-gap buckets by integer edges against the float logarithm.

``SoftmaxMixer`` buckets the ``[B, L, L]`` query-minus-key time gaps with
``torch.bucketize(gap, time_gap_edges(n), right=True)`` instead of ``time_gap_bucket`` (a float64
``log2``). Both give the same buckets (``tests/test_all_positions.py``); this measures the time of each,
side by side, alternating which goes first, on one CPU thread, and prints the median of each and
their ratio per shape::

    .venv/bin/python benchmarks/bench_time_gap_edges.py [--shapes 16x400,32x400,16x800] [--rounds 15]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hytrec_torchrec.modules.layers import time_gap_bucket, time_gap_edges  # noqa: E402

BUCKETS = 64


def _median_times(cases: Dict[str, Callable[[], torch.Tensor]], rounds: int) -> Dict[str, float]:
    names = list(cases)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for fn in cases.values():
        fn()  # warm-up
    for r in range(rounds):
        for name in names[r % 2:] + names[:r % 2]:
            t0 = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="16x400,32x400,16x800", help="BxL list")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    edges = time_gap_edges(BUCKETS)
    gen = torch.Generator().manual_seed(0)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
          f"{BUCKETS} buckets, median of {args.rounds} interleaved rounds")
    print("B     L     log2 (ms)  edges (ms)  log2/edges")
    for shape in args.shapes.split(","):
        b, length = (int(x) for x in shape.split("x"))
        ts = torch.randint(0, 10 ** 9, (b, length), generator=gen).sort(dim=1).values
        gap = ts.unsqueeze(2) - ts.unsqueeze(1)  # [B, L, L] query - key, int64 seconds
        assert torch.equal(time_gap_bucket(gap, BUCKETS), torch.bucketize(gap.clamp(min=0), edges, right=True))
        med = _median_times({
            "log2": lambda: time_gap_bucket(gap, BUCKETS),
            "edges": lambda: torch.bucketize(gap.clamp(min=0), edges, right=True),
        }, args.rounds)
        print(f"{b:<5d} {length:<5d} {med['log2'] * 1e3:9.2f}  {med['edges'] * 1e3:10.2f}  "
              f"{med['log2'] / med['edges']:10.2f}")


if __name__ == "__main__":
    main()
