"""Benchmark: what DDP's ``find_unused_parameters=True`` costs the dense tower per training step.

``runtime/distributed.py`` wraps the dense part of every model with
``find_unused_parameters=True``: HyTRec leaves parameters without a gradient on some batches (the
short branch's "empty" vector in all-position training, the whole long branch on a batch whose
histories fit the short window), and DDP without the flag fails on such a batch. The flag makes
DDP walk the autograd graph after every forward. This measures that walk: the SASRec-like tower
(which uses every parameter, so both settings are valid) in all-position training, wrapped in
DDP on a one-process gloo group both ways, forward + backward side by side
(``bench_tower.interleaved_medians``, alternating which goes first each round), at ML-1M's
shape (64 windows of 200 events per rank, D=64, position and time-gap biases as
``configs/ml1m_sasrec_tb.yaml``). The one-process group has no allreduce to overlap, so the
ratio is the graph walk alone.

    .venv/bin/python benchmarks/bench_ddp_unused.py [--batch 64] [--length 200] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_time_bias import histories, ml1m_tower  # noqa: E402
from bench_tower import interleaved_medians  # noqa: E402
from hytrec_torchrec.modules import HyTRecTower  # noqa: E402


class AllPositions(torch.nn.Module):
    """The tower with ``forward_all_positions`` as its ``forward`` (DDP hooks ``forward`` only)."""

    def __init__(self, tower: HyTRecTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, ts: torch.Tensor,
                tc: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x [N, D]`` item rows, ``offsets [B+1]``, ``ts [N]``, ``tc [B]`` → ``([N, D], 0-d)``."""
        return self.tower.forward_all_positions({"item": x}, offsets, ts, tc)


def ddp_case(find_unused: bool, b: int, length: int) -> Callable[[bool], None]:
    """fn(backward): one DDP-wrapped all-position forward + backward on B histories of length L."""
    ddp = DistributedDataParallel(AllPositions(ml1m_tower("SS", 0, 64)), find_unused_parameters=find_unused)
    x, offsets, ts, tc = histories(b, length, requires_grad=False)

    def run(backward: bool) -> None:
        assert backward, "timed with backward only"
        ddp.zero_grad(set_to_none=True)
        rows, bal = ddp(x, offsets, ts, tc)
        (rows.sum() + bal).backward()

    return run


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'rdzv')}", rank=0, world_size=1)
        try:
            cases = {str(f): ddp_case(f, args.batch, args.length) for f in (False, True)}
            med = interleaved_medians(cases, args.repeats, torch.device("cpu"), modes=(True,))
        finally:
            dist.destroy_process_group()
    a, c = med["False"]["fwdbwd"], med["True"]["fwdbwd"]
    lines = [
        f"# bench_ddp_unused  {time.strftime('%Y-%m-%d %H:%M:%S')}  torch {torch.__version__}  "
        f"threads {torch.get_num_threads()}  {platform.machine()}  B={args.batch}  L={args.length}  "
        f"repeats={args.repeats} (median, both settings interleaved per round)",
        f"{'find_unused_parameters=False (ms)':>34} {'=True (ms)':>11} {'ratio':>6}",
        f"{a * 1e3:34.1f} {c * 1e3:11.1f} {c / a:6.3f}",
    ]
    print("\n".join(lines), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
