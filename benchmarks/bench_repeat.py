"""Cost of the repeat path's cycle features, gate and hidden-layer scorer (``model.repeat_cycles``,
``model.repeat_gate``, ``model.repeat_scorer: mlp``) against the plain repeat path, measured side by
side in one process on CPU.

Two workloads, each at several history lengths L:

* **request**: one history of L events, one query (the served model's call), forward only;
* **train**: all-position training of a batch of 2 windows of L events with the bonus on the last
  ``repeat_rows`` = 1,024 rows of each (the default), forward and backward (pairs grow as
  1,024 · distinct items, so L stops at 4,000 here).

Items are drawn from 2,000 per user-ish IDs (a history repeats items), behaviours are purchases
one time in five. Each variant runs the same inputs; the times are medians of ``--repeats`` calls
after warm-up, and the table gives each variant's time and its ratio to the plain path.

    python benchmarks/bench_repeat.py --out benchmarks/results/repeat_cycles_cpu.txt
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from hytrec_torchrec.modules.repeat import RepeatHead

D = 64
VARIANTS = {"plain": {}, "cycles": {"cycles": True}, "cycles+gate": {"cycles": True, "gate": True},
            "mlp": {"scorer": "mlp"}, "cycles+mlp": {"cycles": True, "scorer": "mlp"}}


def _inputs(batch: int, length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = batch * length
    items = torch.randint(2, 2_000, (n,), generator=g)
    offsets = torch.arange(batch + 1, dtype=torch.int64) * length
    ts = 1_700_000_000 + torch.randint(0, 600, (n,), generator=g).cumsum(0)
    beh = (torch.rand(n, generator=g) < 0.2).to(torch.int64) + 2
    return items, offsets, ts, beh


def _median_s(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(lengths: List[int], train_lengths: List[int], repeats: int) -> List[str]:
    """Markdown rows: workload, L, then per variant its milliseconds and ratio to plain."""
    mask = torch.tensor([False, False, False, True])
    heads = {name: RepeatHead(D, train_rows=1024, cycle_behaviors=mask, **kw) for name, kw in VARIANTS.items()}
    rows = []
    for workload, lens in (("request", lengths), ("train", train_lengths)):
        for length in lens:
            batch = 1 if workload == "request" else 2
            items, offsets, ts, beh = _inputs(batch, length)
            ms: Dict[str, float] = {}
            for name, head in heads.items():
                if workload == "request":
                    user = torch.randn(batch, D)

                    def call(head: RepeatHead = head, user: torch.Tensor = user) -> None:
                        with torch.no_grad():
                            head(user, items, offsets, ts, False, beh)
                else:
                    user = torch.randn(batch * length, D, requires_grad=True)

                    def call(head: RepeatHead = head, user: torch.Tensor = user) -> None:
                        q, it, bonus, gate = head(user, items, offsets, ts, True, beh)
                        (bonus.sum() + gate.sum()).backward()
                ms[name] = 1000 * _median_s(call, repeats)
            cells = " | ".join(f"{ms[n]:.2f} ({ms[n] / ms['plain']:.2f}x)" for n in VARIANTS)
            rows.append(f"| {workload} | {length} | {cells} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 4000, 10000])
    ap.add_argument("--train-lengths", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header = ["| workload | L | " + " | ".join(f"{n} ms (vs plain)" for n in VARIANTS) + " |",
              "|---|---|" + "---|" * len(VARIANTS)]
    lines = [f"# repeat path cost, CPU, {args.threads} thread(s), median of {args.repeats}", ""] + header
    lines += measure(args.lengths, args.train_lengths, args.repeats)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
