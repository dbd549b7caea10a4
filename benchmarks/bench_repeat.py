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
    python benchmarks/bench_repeat.py --against bd01c1e   # + that commit's plain and cycles+mlp

``--against REF`` loads ``hytrec_torchrec/modules/repeat.py`` as it was at the git commit REF
and adds its ``plain`` and ``cycles+mlp`` heads as variants ``plain@REF`` and ``cycles+mlp@REF``
(same initial weights, same inputs, timed in turn with the others).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

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


def _head_class_at(ref: str) -> Any:
    """``RepeatHead`` of ``hytrec_torchrec/modules/repeat.py`` as it was at git commit ``ref``."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(["git", "show", f"{ref}:hytrec_torchrec/modules/repeat.py"], cwd=root,
                          capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"repeat_at_{ref}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RepeatHead


def measure(lengths: List[int], train_lengths: List[int], repeats: int, against: Optional[str] = None) -> List[str]:
    """Markdown rows: workload, L, then per variant its milliseconds and ratio to plain."""
    mask = torch.tensor([False, False, False, True])
    heads = {name: RepeatHead(D, train_rows=1024, cycle_behaviors=mask, **kw) for name, kw in VARIANTS.items()}
    if against is not None:
        old = _head_class_at(against)
        for name in ("plain", "cycles+mlp"):
            head = old(D, train_rows=1024, cycle_behaviors=mask, **VARIANTS[name])
            head.load_state_dict(heads[name].state_dict())
            heads[f"{name}@{against}"] = head
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
            cells = " | ".join(f"{ms[n]:.2f} ({ms[n] / ms['plain']:.2f}x)" for n in heads)
            rows.append(f"| {workload} | {length} | {cells} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 4000, 10000])
    ap.add_argument("--train-lengths", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--against", default=None, help="a git commit whose repeat path is timed beside this one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = list(VARIANTS) + ([f"plain@{args.against}", f"cycles+mlp@{args.against}"] if args.against else [])
    header = ["| workload | L | " + " | ".join(f"{n} ms (vs plain)" for n in names) + " |",
              "|---|---|" + "---|" * len(names)]
    lines = [f"# repeat path cost, CPU, {args.threads} thread(s), median of {args.repeats}", ""] + header
    lines += measure(args.lengths, args.train_lengths, args.repeats, args.against)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
