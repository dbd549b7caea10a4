"""Training throughput on 2 CPU ranks (gloo), with the step time split by stage.

    .venv/bin/python benchmarks/bench_train.py [--steps 8] [--out benchmarks/results/train_cpu.txt]

For each history length (max_len 200 and 10,000) a synthetic prepared set is written whose users
all have ``max_len + 1`` events, and two ranks run, side by side in one process group:

1. **end to end**: steps exactly as ``hytrec-train`` runs them, with ``TrainPipelineSparseDist``
   and with the plain loop (``train.pipeline``), on the same batches (history tokens/s, both ranks);
2. **split**: the same kind of step done by hand in stages, each timed on every rank:
   ``data`` (next batch from the loader), ``emb fwd`` (sharded lookup with its input/output
   all-to-alls), ``tower fwd`` (tower + sampled-softmax loss), ``tower bwd`` (backward to the
   embedding outputs and dense weights), ``dense allreduce`` (gloo all-reduce of the dense
   gradients — DDP does this inside backward in the real step), ``emb bwd`` (backward all-to-all,
   embedding gradient and the fused row-wise Adagrad update) and ``optimizer`` (clip + AdamW);
3. **loader**: the rank's loader alone (no model), in history tokens/s, compared with what one
   rank's step consumes: it must deliver at least 5× that.

Times are medians over ``--steps`` steps after 2 warm-up steps, averaged over the two ranks.
The machine is shared, so compare numbers within one run; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from hytrec_torchrec.config import from_dict
from hytrec_torchrec.data.testing import power_law_arrays, write_prepared_arrays
from hytrec_torchrec.testing import run_distributed

SETTINGS = [  # (max_len, per-rank batch size)
    (200, 32),
    (10_000, 2),
]
STAGES = ["data", "emb fwd", "tower fwd", "tower bwd", "dense allreduce", "emb bwd", "optimizer"]


def _job(data: Path, run: Path, max_len: int, batch: int, steps: int, pipeline: str) -> Dict[str, Any]:
    return {
        "run": {"dir": str(run), "seed": 0, "tensorboard": False, "progress": False},
        "data": {"path": str(data), "batch_size": batch, "num_negatives": 256, "max_len": max_len,
                 "cutoffs_per_user": 1, "num_workers": 0, "seed": 0},
        "embeddings": {"dim": 64},
        "model": {"embedding_dim": 64, "short_len": 64, "long_pattern": "TTTS", "heads": 2,
                  "short_heads": 2, "fusion": {"num_experts": 4}},
        "optim": {"lr": 1e-3, "grad_clip": 1.0},
        "train": {"max_steps": steps, "validate_every": 0, "checkpoint_every": 0,
                  "pipeline": pipeline},
    }


def _sync() -> None:
    torch.distributed.barrier()


def _split_step(trainer: Any, batch: Any) -> Dict[str, float]:
    """One training step done stage by stage; returns seconds per stage (without ``data``)."""
    from torchrec.sparse.jagged_tensor import JaggedTensor

    hy = trainer._unwrapped()
    world = trainer.env.world_size
    times: Dict[str, float] = {}
    t = time.perf_counter()
    # the sharded collection returns a lazy awaitable: materialise it so the output all-to-all
    # is timed here
    emb = {k: jt for k, jt in hy.embeddings(batch.features).items()}
    for jt in emb.values():
        jt.values()
    times["emb fwd"] = time.perf_counter() - t

    t = time.perf_counter()
    leaves = {k: jt.values().detach().requires_grad_() for k, jt in emb.items()}
    cut = {k: JaggedTensor(values=leaves[k], lengths=jt.lengths(), offsets=jt.offsets())
           for k, jt in emb.items()}
    loss, _ = hy.loss_from_embeddings(cut, batch)
    total = loss / world
    times["tower fwd"] = time.perf_counter() - t

    t = time.perf_counter()
    total.backward()
    times["tower bwd"] = time.perf_counter() - t

    t = time.perf_counter()
    dense = [p for n, p in hy.named_parameters() if not n.startswith("embeddings.")]
    for p in dense:  # same buffer layout on every rank, even where a branch got no gradient
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in dense])
    torch.distributed.all_reduce(flat)
    i = 0
    for p in dense:
        n = p.grad.numel()
        p.grad.copy_(flat[i:i + n].view_as(p.grad))
        i += n
    times["dense allreduce"] = time.perf_counter() - t

    t = time.perf_counter()
    keys = [k for k in leaves if leaves[k].grad is not None]
    torch.autograd.backward([emb[k].values() for k in keys], [leaves[k].grad for k in keys])
    times["emb bwd"] = time.perf_counter() - t

    t = time.perf_counter()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    times["optimizer"] = time.perf_counter() - t
    return times


def _body(rank: int, world: int, job: Dict[str, Any], steps: int, out: str) -> None:
    from hytrec_torchrec.data.loader import make_dataloader
    from hytrec_torchrec.runtime.config import JobConfig
    from hytrec_torchrec.runtime.distributed import init_distributed
    from hytrec_torchrec.training.loop import Trainer

    torch.set_num_threads(1)
    cfg = from_dict(JobConfig, job)
    trainer = Trainer(cfg, init_distributed("gloo", "cpu"))
    warm = 2
    n = warm + steps

    # 1. end to end: the job's own step, with TrainPipelineSparseDist and with the plain loop
    batches = iter(make_dataloader(cfg.data, rank, world, 0, "train", shard=trainer.shard))
    step_batches = [next(batches) for _ in range(n)]
    tokens = sum(int(b.history_lengths().sum()) for b in step_batches[warm:])
    trainer.model.train()
    e2e: Dict[str, float] = {}
    for pipeline in ("sparse_dist", "plain"):
        trainer.cfg.train.pipeline = pipeline
        seg = trainer._segment(iter(step_batches))
        for _ in range(warm):
            next(seg)
        _sync()
        t0 = time.perf_counter()
        for _ in seg:
            pass
        _sync()
        e2e[pipeline] = time.perf_counter() - t0
    tok = torch.tensor([tokens], dtype=torch.float64)
    torch.distributed.all_reduce(tok)

    # 2. split step, by hand
    loader = iter(make_dataloader(cfg.data, rank, world, 1, "train", shard=trainer.shard))
    per_stage: Dict[str, List[float]] = {s: [] for s in STAGES}
    for i in range(n):
        t = time.perf_counter()
        batch = next(loader)
        d = time.perf_counter() - t
        times = _split_step(trainer, batch)
        if i >= warm:
            per_stage["data"].append(d)
            for k, v in times.items():
                per_stage[k].append(v)
    med = torch.tensor([statistics.median(per_stage[s]) for s in STAGES], dtype=torch.float64)
    torch.distributed.all_reduce(med)
    med /= world

    # 3. the loader alone
    loader = iter(make_dataloader(cfg.data, rank, world, 2, "train", shard=trainer.shard))
    t = time.perf_counter()
    ltok = 0
    for _ in range(n):
        ltok += int(next(loader).history_lengths().sum())
    lrate = torch.tensor([ltok / (time.perf_counter() - t)], dtype=torch.float64)
    torch.distributed.all_reduce(lrate)
    lrate /= world
    if rank == 0:
        torch.save({"e2e_s": e2e["sparse_dist"], "e2e_plain_s": e2e["plain"], "steps": steps, "tokens": float(tok), "stages": med,
                    "loader_tok_s": float(lrate)}, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--out", default="benchmarks/results/train_cpu.txt")
    args = p.parse_args()
    lines = [
        f"# bench_train.py --steps {args.steps}: 2 gloo ranks x 1 thread, {platform.processor() or platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f}",
        "# model: dim 64, TTTS + short 64, 4 experts, 256 uniform negatives; item table "
        f"{args.items:,} rows (row-wise), attribution/category/behavior small",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for max_len, batch in SETTINGS:
            users = max(64, 2 * batch * (args.steps + 2) * 3)
            offsets, cols = power_law_arrays(users, max_len + 1, args.items, seed=1,
                                             min_events=max_len + 1)
            data = write_prepared_arrays(Path(tmp) / f"d{max_len}", offsets, cols, args.items)
            job = _job(data, Path(tmp) / f"r{max_len}", max_len, batch, args.steps, "sparse_dist")
            out = Path(tmp) / f"res{max_len}.pt"
            run_distributed(_body, 2, (job, args.steps, str(out)))
            r = torch.load(out, weights_only=True)
            step_s = r["e2e_s"] / r["steps"]
            tok_s = r["tokens"] / r["e2e_s"]
            stages = r["stages"].tolist()
            split_total = sum(stages)
            per_rank_consumed = tok_s / 2
            plain_s = r["e2e_plain_s"] / r["steps"]
            lines += [
                "",
                f"max_len {max_len}, batch {batch}/rank: end-to-end {step_s * 1e3:.0f} ms/step, "
                f"{tok_s:,.0f} history tokens/s (2 ranks) with TrainPipelineSparseDist; plain loop "
                f"{plain_s * 1e3:.0f} ms/step, {r['tokens'] / r['e2e_plain_s']:,.0f} tokens/s",
                f"  split step (by hand) {split_total * 1e3:.0f} ms:",
            ]
            for name, v in zip(STAGES, stages):
                lines.append(f"    {name:<16}{v * 1e3:9.1f} ms  {100 * v / split_total:5.1f}%")
            lines.append(
                f"  loader alone {r['loader_tok_s']:,.0f} tokens/s per rank = "
                f"{r['loader_tok_s'] / per_rank_consumed:.1f}x what a rank's step consumes "
                f"({per_rank_consumed:,.0f}/s); target >= 5x"
            )
            print("\n".join(lines[-(len(STAGES) + 4):]), flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
