"""Evaluation throughput (users/s): full-catalog ranking on 2 CPU ranks (gloo), row-wise sharded items.

Measures the ranking stage of ``hytrec-eval`` with random user embeddings and a random item table
split row-wise over the ranks (each rank holds and scores only its rows):

* ``ranks``: :func:`target_ranks_distributed` — the full-catalog rank of each target, from which
  HR/NDCG@{1..500}, MRR and AUC follow (what ``hytrec-eval`` computes);
* ``top500``: :func:`topk_distributed` — the merged full-catalog top-500 list of each user.

``--layout data_parallel`` instead gives every rank the whole table (a replicated,
data-parallel table) and scores the row slice :func:`local_item_blocks` assigns to the rank;
``data_parallel_rank0`` scores the whole table on rank 0 alone (what ``local_item_blocks`` did
before the slices), for comparison.

The tower forward pass is not included (it depends on the model; ``hytrec-eval`` prints its
end-to-end users/s, see docs/results.md). Usage::

    python benchmarks/bench_eval.py [--catalogs 3706 1000000] [--users 4096 1024] [--dim 64]
        [--batch 256] [--world 2] [--threads 1] [--layout row_wise] [--append benchmarks/results/eval.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hytrec_torchrec.testing import run_distributed  # noqa: E402


def _body(rank: int, world: int, catalog: int, users: int, dim: int, batch: int, threads: int,
          repeats: int, out: str, layout: str = "row_wise") -> None:
    import torch.distributed as dist

    from hytrec_torchrec.ranking.ranks import local_item_blocks, target_ranks_distributed, topk_distributed

    torch.set_num_threads(threads)
    V = catalog + 2
    g = torch.Generator().manual_seed(1000 + rank)
    if layout == "row_wise":
        per = (V + world - 1) // world
        r0, r1 = rank * per, min(V, (rank + 1) * per)
        block = [(r0, 0, torch.randn(r1 - r0, dim, generator=g))]  # this rank's rows only
    else:  # every rank holds the whole (same) table
        table = torch.randn(V, dim, generator=torch.Generator().manual_seed(999))
        if layout == "data_parallel":
            block = local_item_blocks(table)
        else:
            block = [(0, 0, table)] if rank == 0 else []
    mine = users // world
    u = torch.randn(mine, dim, generator=g)
    t = torch.randint(2, V, (mine,), generator=g)
    res = {}
    for mode in ("ranks", "top500"):
        best = float("inf")
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            for s in range(0, mine, batch):
                if mode == "ranks":
                    target_ranks_distributed(u[s:s + batch], t[s:s + batch], block, V)
                else:
                    topk_distributed(u[s:s + batch], block, 500)
            dist.barrier()
            best = min(best, time.perf_counter() - t0)
        res[mode] = {"seconds": round(best, 3), "users_per_s": round(mine * world / best, 1)}
    if rank == 0:
        Path(out).write_text(json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogs", type=int, nargs="+", default=[3706, 1_000_000])
    p.add_argument("--users", type=int, nargs="+", default=[4096, 1024], help="users per catalog size")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=256, help="users per rank per step")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--repeats", type=int, default=2, help="best of N")
    p.add_argument("--layout", default="row_wise", choices=["row_wise", "data_parallel", "data_parallel_rank0"])
    p.add_argument("--append", help="append the result lines to this file")
    a = p.parse_args()
    users = a.users if len(a.users) == len(a.catalogs) else [a.users[0]] * len(a.catalogs)
    lines = [f"# bench_eval {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()} "
             f"cpus={os.cpu_count()} torch={torch.__version__} world={a.world} threads/rank={a.threads} "
             f"dim={a.dim} batch/rank={a.batch} layout={a.layout} (best of {a.repeats})"]
    for catalog, n in zip(a.catalogs, users):
        with tempfile.TemporaryDirectory() as d:
            out = str(Path(d) / "r.json")
            run_distributed(_body, a.world, (catalog, n, a.dim, a.batch, a.threads, a.repeats, out, a.layout))
            r = json.loads(Path(out).read_text())
        for mode, v in r.items():
            lines.append(f"catalog={catalog:>9} users={n:>6} {mode:<7} {v['users_per_s']:>10.1f} users/s "
                         f"({v['seconds']:.2f} s)")
    text = "\n".join(lines)
    print(text)
    if a.append:
        with open(a.append, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
