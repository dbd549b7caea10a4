"""Peak memory of one training step of the tower against history length, with and without
activation checkpointing of the long branch (``model.long_checkpoint``).

    .venv/bin/python benchmarks/bench_memory.py [--lengths 5000 10000 20000 50000] [--dim 64]
        [--out benchmarks/results/memory_cpu.txt]

One history of L events at batch 1, the default tower (``TowerConfig``'s defaults: three
gated-delta layers read with the intent, time inputs, short branch of 64) in all-position mode
(every row a target, as the long-history recipes train): the forward of every row, a sampled
softmax against 1,024 shared negatives, and the backward. Each (L, checkpointing) point runs in a
fresh process, which reports its peak resident memory (``ru_maxrss``) and the step's wall time;
the baseline resident memory of a process that imported torch and built the tower is reported
beside it. The repeat path (a model part outside the tower) is not included: its pairs grow as
``model.repeat_rows`` × L.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List


def _point(length: int, dim: int, checkpoint: bool) -> Dict[str, float]:
    import torch
    import torch.nn.functional as F

    from hytrec_torchrec.config import from_dict
    from hytrec_torchrec.modules import HyTRecTower, TowerConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = from_dict(TowerConfig, {"embedding_dim": dim, "features": ["item"], "long_checkpoint": checkpoint})
    tower = HyTRecTower(cfg).train()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    g = torch.Generator().manual_seed(1)
    x = torch.randn(length, dim, generator=g, requires_grad=True)
    ts = torch.cumsum(torch.randint(1, 3600, (length,), generator=g), 0)
    off = torch.tensor([0, length])
    targets = torch.randn(length, dim, generator=g)
    negs = torch.randn(1024, dim, generator=g)
    t = time.perf_counter()
    rows, bal = tower.forward_all_positions({"item": x}, off, ts, ts[-1:])
    logits = torch.cat([(rows * targets).sum(1, keepdim=True), rows @ negs.t()], 1)
    loss = F.cross_entropy(logits, torch.zeros(length, dtype=torch.int64)) + bal
    loss.backward()
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"length": length, "checkpoint": checkpoint, "peak_mb": peak, "base_mb": base, "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", nargs="+", type=int, default=[5000, 10000, 20000, 50000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/memory_cpu.txt")
    p.add_argument("--point", nargs=2, metavar=("LENGTH", "CHECKPOINT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.point:
        print(json.dumps(_point(int(a.point[0]), a.dim, a.point[1] == "1")))
        return
    load = os.getloadavg()[0]
    results: List[Dict[str, float]] = []
    for length in a.lengths:
        for ckpt in ("0", "1"):
            out = subprocess.run([sys.executable, __file__, "--dim", str(a.dim), "--point", str(length), ckpt],
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                results.append({"length": length, "checkpoint": ckpt == "1", "error": out.stderr.strip()[-300:]})
            else:
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(results[-1], flush=True)
    lines = [f"# bench_memory.py --lengths {' '.join(map(str, a.lengths))} --dim {a.dim}: one history at batch 1, "
             f"all-position training step of the default tower, 1 thread, {platform.processor() or platform.machine()}, "
             f"load average {load:.1f} at start",
             "# peak = ru_maxrss of a fresh process (MB); base = the same after importing torch and building the tower",
             "", f"{'events':>8}{'checkpoint':>12}{'peak MB':>10}{'base MB':>10}{'step s':>9}"]
    for r in results:
        if "error" in r:
            lines.append(f"{r['length']:>8}{str(r['checkpoint']):>12}  failed: {r['error']}")
        else:
            lines.append(f"{r['length']:>8}{str(r['checkpoint']):>12}{r['peak_mb']:>10,.0f}{r['base_mb']:>10,.0f}"
                         f"{r['seconds']:>9.1f}")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
