"""Loader throughput: history events/s delivered, at max_len 200 and 10,000, with 0 and 2 workers.

    .venv/bin/python benchmarks/bench_loader.py [--users 5000] [--out benchmarks/results/loader.txt]
    .venv/bin/python benchmarks/bench_loader.py --prepared DIR     # any prepared directory

Writes a power-law synthetic prepared directory (hytrec_torchrec.data.testing.power_law_arrays,
lengths 30..20,000, alpha 0.7) to a temporary directory, then reads one training epoch per
setting through make_dataloader and reports events/s of history delivered to the consumer
(the consumer does nothing, so this is the loader's ceiling). Worker timings include worker
start-up. The machine is shared; the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hytrec_torchrec.config import from_dict
from hytrec_torchrec.data import DataConfig, JaggedBatchDataset, load_shard, make_dataloader
from hytrec_torchrec.data.plan import padding_waste
from hytrec_torchrec.data.stats import read_epoch
from hytrec_torchrec.data.testing import power_law_arrays, write_prepared_arrays

SETTINGS = [  # (max_len, batch_size)
    (200, 128),
    (10_000, 32),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--cutoffs-per-user", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--prepared", type=Path, default=None, help="benchmark this prepared directory instead")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = p.parse_args()
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.prepared is None:
            offsets, cols = power_law_arrays(args.users, 20_000, 100_000, seed=0, alpha=0.7, min_events=30)
            write_prepared_arrays(tmp, offsets, cols, 100_000, num_partitions=8)
            lengths = np.diff(offsets)
            source = f"power_law_arrays, written in {time.perf_counter() - t0:.1f}s"
        else:
            tmp = str(args.prepared)
            lengths = load_shard(from_dict(DataConfig, {"path": tmp})).index.length
            source = tmp
        say(f"dataset: {len(lengths):,} users, {int(lengths.sum()):,} events, lengths p50/p90/p99/max = "
            f"{np.percentile(lengths, 50):.0f}/{np.percentile(lengths, 90):.0f}/"
            f"{np.percentile(lengths, 99):.0f}/{lengths.max()} ({source})")
        base = {"path": tmp, "cutoffs_per_user": args.cutoffs_per_user, "num_negatives": 128, "seed": 0}
        t0 = time.perf_counter()
        shard = load_shard(from_dict(DataConfig, base))
        say(f"load_shard (index pass + read, 1 rank): {time.perf_counter() - t0:.2f}s")
        say(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cpus, load average before run {os.getloadavg()[0]:.2f}")
        say()
        say(f"{'max_len':>7} {'B':>4} {'workers':>7} {'batches':>7} {'hist ev/batch':>13} "
            f"{'ms/batch':>8} {'hist Mev/s':>10} {'pad waste':>9} {'waste ungrouped':>15}")
        for max_len, bs in SETTINGS:
            for nw in args.workers:
                cfg = from_dict(DataConfig, {**base, "max_len": max_len, "batch_size": bs, "num_workers": nw})
                ungrouped = from_dict(DataConfig, {**base, "max_len": max_len, "batch_size": bs, "group_window": 0})
                ds0 = JaggedBatchDataset(ungrouped, shard, 0, "train")
                st = read_epoch(make_dataloader(cfg, shard=shard)).as_dict()
                say(f"{max_len:>7} {bs:>4} {nw:>7} {st['batches']:>7} "
                    f"{st['history_events'] / max(st['batches'], 1):>13,.0f} "
                    f"{1e3 * st['seconds'] / max(st['batches'], 1):>8.2f} "
                    f"{st['history_events_per_s'] / 1e6:>10.2f} {st['padding_waste']:>9.3f} "
                    f"{padding_waste(ds0.history_len, ds0.plan):>15.3f}")
        say(f"load average after run {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if args.append else "w"
        with args.out.open(mode) as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
