"""Benchmark: cost of ``model.time_bias`` (log-bucketed time-gap bias in every softmax layer).

For each history length L, the all-position tower pass used in training
(``HyTRecTower.forward_all_positions`` + backward, train mode, dropout 0.2, ``position_bias``
on as in ``configs/ml1m_ap.yaml``) runs with ``time_bias: 0`` and ``time_bias: 64`` side by side:
each repeat round runs both (alternating which goes first; ``bench_tower.interleaved_medians``)
and the median is reported, with the ratio. Two towers: HyTRec (``TTTS``, short branch K=64) and SASRec-like (``SS``, no short branch).

    .venv/bin/python benchmarks/bench_time_bias.py [--lengths 100,200,400,800] [--batch 32]

The time bias turns the softmax layers' attention mask from ``[H, L, L]`` (shared by the batch)
into ``[B, H, L, L]`` plus ``[B, L, L]`` int64 gaps per length group, so its memory and time
grow as B·L²: it is meant for windows of hundreds of events (ML-1M's 200, the short branch), not
for softmax layers over 10k-event histories.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tower import interleaved_medians  # noqa: E402
from hytrec_torchrec.config import from_dict  # noqa: E402
from hytrec_torchrec.modules import HyTRecTower, TowerConfig  # noqa: E402

TOWERS = {"TTTS+K64": ("TTTS", 64), "SS": ("SS", 0)}


def ml1m_tower(pattern: str, short: int, time_bias: int) -> HyTRecTower:
    """The tower of ``configs/ml1m_ap.yaml``'s shape (D=64, 2 heads, ``position_bias`` 200, dropout
    0.2, cosine) with the given long pattern, short window and time bias; seeded, in train mode."""
    cfg = from_dict(TowerConfig, dict(
        embedding_dim=64, features=["item"], heads=2, short_len=short, long_pattern=pattern,
        position_bias=200, time_bias=time_bias, dropout=0.2, similarity="cosine",
        tadn=dict(decay_period=2592000.0)))
    torch.manual_seed(0)
    return HyTRecTower(cfg).train()


def histories(b: int, length: int, requires_grad: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """B histories of L events: item rows ``x [B·L, 64]``, ``offsets [B+1]``, timestamps ``[B·L]``
    (gaps of 0 s to a day, sorted within each history) and request times ``[B]``."""
    offsets = torch.arange(b + 1, dtype=torch.int64) * length
    x = torch.randn(b * length, 64, requires_grad=requires_grad)
    gen = torch.Generator().manual_seed(1)
    ts = (10**9 + torch.randint(0, 86_400, (b, length), generator=gen).sort(dim=1).values).flatten()
    tc = torch.full((b,), 10**9 + 86_400, dtype=torch.int64)
    return x, offsets, ts, tc


def tower_case(pattern: str, short: int, time_bias: int, b: int, length: int) -> Callable[[bool], None]:
    """Return fn(backward) running one forward_all_positions (+ backward) on B histories of length L."""
    tower = ml1m_tower(pattern, short, time_bias)
    x, offsets, ts, tc = histories(b, length, requires_grad=True)

    def run(backward: bool) -> None:
        x.grad = None
        tower.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(backward):
            rows, bal = tower.forward_all_positions({"item": x}, offsets, ts, tc)
        if backward:
            (rows.sum() + bal).backward()

    return run


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="100,200,400,800")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines: List[str] = []

    def emit(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    emit(f"# bench_time_bias  {time.strftime('%Y-%m-%d %H:%M:%S')}  torch {torch.__version__}  "
         f"threads {torch.get_num_threads()}  {platform.machine()}  B={args.batch}  "
         f"repeats={args.repeats} (median, both settings interleaved per round)")
    emit(f"{'tower':>9} {'L':>5} {'time_bias 0 (ms)':>17} {'time_bias 64 (ms)':>18} {'ratio':>6}")
    for name, (pattern, short) in TOWERS.items():
        for length in [int(v) for v in args.lengths.split(",")]:
            cases = {str(tb): tower_case(pattern, short, tb, args.batch, length) for tb in (0, 64)}
            med = interleaved_medians(cases, args.repeats, torch.device("cpu"), modes=(True,))
            a, c = med["0"]["fwdbwd"], med["64"]["fwdbwd"]
            emit(f"{name:>9} {length:5d} {a * 1e3:17.1f} {c * 1e3:18.1f} {c / a:6.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
