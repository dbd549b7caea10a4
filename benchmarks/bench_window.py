"""The short branch's sliding-window softmax in all-position training: one [L, L] mask against
blocks of W rows (``SoftmaxMixer._windowed``), side by side in one run.

    .venv/bin/python benchmarks/bench_window.py [--lengths 1024 4096 16384] [--rounds 3]
        [--out benchmarks/results/window_cpu.txt]

Two histories of L events, D = 64, 2 heads, window W = 64 (the default short branch), forward and
backward, 1 thread; each form's best of ``--rounds`` alternating rounds. The full form is skipped
where its [L, L] attention would not fit (L > 16,384).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from hytrec_torchrec.modules.layers import SeqContext, SoftmaxMixer
from hytrec_torchrec.ops.jagged import segment_ids

FULL = 10**9  # block_min that keeps the one-mask form


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/window_cpu.txt")
    a = p.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    lines = [f"# bench_window.py --lengths {' '.join(map(str, a.lengths))} --rounds {a.rounds}: 2 histories, D 64, "
             f"2 heads, W 64, forward + backward, 1 thread, {platform.processor() or platform.machine()}, "
             f"load average {load:.1f} at start", "",
             f"{'events':>8}{'full s':>10}{'blocked s':>11}{'full / blocked':>16}"]
    for length in a.lengths:
        torch.manual_seed(0)
        mixer = SoftmaxMixer(dim=64, heads=2, group_waste=float("inf"), window=64)
        off = torch.tensor([0, length, 2 * length])
        n = 2 * length
        x = torch.randn(n, 64, requires_grad=True)
        ctx = SeqContext(offsets=off, seg=segment_ids(off, n), tau=torch.ones(n), last_only=False,
                         prefix_mean=False, ts=torch.arange(n), qts=None)
        forms = [2] + ([FULL] if length <= 16384 else [])
        best = {f: float("inf") for f in forms}
        for _ in range(a.rounds):
            for f in forms:
                mixer.block_min = f
                t = time.perf_counter()
                mixer(x, ctx).sum().backward()
                best[f] = min(best[f], time.perf_counter() - t)
        full = best.get(FULL)
        lines.append(f"{length:>8}{(f'{full:.3f}' if full else '-'):>10}{best[2]:>11.3f}"
                     f"{(f'{full / best[2]:.1f}x' if full else '-'):>16}")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text + f"written to {a.out}")


if __name__ == "__main__":
    main()
