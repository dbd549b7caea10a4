"""Plan the embedding sharding of a job without running it: tables, shards and memory per rank.

The planner sees the same tables, constraints and fused optimizer as the training job
(:func:`~hytrec_torchrec.runtime.factory.build_model` on the meta device), but for a world size and
device of your choosing, so a 2-node × 8-GPU layout can be checked on a laptop::

    python -m hytrec_torchrec.training.plan --config configs/industrial.yaml \\
        --world-size 16 --local-world-size 8 --device cuda \\
        --vocab item=10000000 attribution=50000000 category=20000 behavior=8

Vocabulary sizes come from ``data.path``'s ``meta.json`` when it exists; ``--vocab`` overrides
them (the industrial example has no dataset on this machine). Memory per rank is TorchRec's own
storage estimate of each shard (weights, fused optimizer state and I/O buffers) as chosen by
the planner; ``--json`` writes it machine-readably.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from hytrec_torchrec.cli import quiet_library_noise
from hytrec_torchrec.config import ConfigError
from hytrec_torchrec.model import HyTRecModel
from hytrec_torchrec.runtime.config import JobConfig, load_job_config
from hytrec_torchrec.runtime.factory import build_embeddings
from hytrec_torchrec.runtime.sharding import make_planner, sharders, sparse_optimizer
from hytrec_torchrec.schema import TABLES

__all__ = ["ShardInfo", "plan_job", "format_memory"]


@dataclass(frozen=True)
class ShardInfo:
    """One planned shard: which table, how it is split, where it lives and what it costs."""

    table: str
    sharding_type: str
    compute_kernel: str
    rank: int
    rows: int
    cols: int
    hbm_bytes: int
    ddr_bytes: int


def plan_job(
    cfg: JobConfig,
    vocab_sizes: Dict[str, int],
    world_size: int,
    local_world_size: Optional[int] = None,
    device: str = "cuda",
) -> List[ShardInfo]:
    """Run the job's planner for ``world_size`` ranks and list every shard with its storage.

    Args:
        cfg: the job config (``embeddings`` section: tables, constraints, optimizer, caps).
        vocab_sizes: rows per table.
        world_size: total ranks; ``local_world_size`` ranks per host (default: all on one).
        device: ``cuda`` (HBM) or ``cpu`` (DDR) compute device assumed by the planner.
    """
    counts = torch.ones(int(vocab_sizes["item"]), dtype=torch.int64)
    model = HyTRecModel(cfg.model, build_embeddings(cfg.embeddings, vocab_sizes, torch.device("meta")), counts)
    opt_cls, opt_kwargs = sparse_optimizer(cfg.embeddings)
    apply_optimizer_in_backward(opt_cls, model.embeddings.parameters(), opt_kwargs)
    planner = make_planner(cfg.embeddings, world_size, device, local_world_size,
                           batch_size=cfg.data.batch_size)
    planner.plan(model, sharders())
    best = getattr(planner, "_best_plan", None)
    if not best:
        raise RuntimeError("the TorchRec planner exposed no sharding options (_best_plan)")
    out: List[ShardInfo] = []
    for option in best:
        for shard in option.shards:
            storage = shard.storage
            out.append(ShardInfo(
                table=option.name, sharding_type=option.sharding_type,
                compute_kernel=option.compute_kernel, rank=int(shard.rank),
                rows=int(shard.size[0]), cols=int(shard.size[1]),
                hbm_bytes=int(storage.hbm if storage else 0),
                ddr_bytes=int(storage.ddr if storage else 0),
            ))
    return out


def format_memory(shards: Sequence[ShardInfo], world_size: int) -> str:
    """Markdown: the tables' layout, then embedding memory per rank (GiB)."""
    gib = 1024**3
    lines = ["| table | sharding | kernel | shards | rows × cols per shard |", "|---|---|---|---|---|"]
    by_table: Dict[str, List[ShardInfo]] = defaultdict(list)
    for s in shards:
        by_table[s.table].append(s)
    for table, ss in by_table.items():
        sizes = sorted({(s.rows, s.cols) for s in ss})
        size_txt = ", ".join(f"{r:,} × {c}" for r, c in sizes[:3]) + (" …" if len(sizes) > 3 else "")
        lines.append(f"| {table} | {ss[0].sharding_type} | {ss[0].compute_kernel} | {len(ss)} | "
                     f"{size_txt} |")
    lines += ["", "| rank | HBM (GiB) | DDR (GiB) | tables |", "|---|---|---|---|"]
    for rank in range(world_size):
        mine = [s for s in shards if s.rank == rank]
        hbm = sum(s.hbm_bytes for s in mine) / gib
        ddr = sum(s.ddr_bytes for s in mine) / gib
        names = ", ".join(sorted({s.table for s in mine})) or "-"
        lines.append(f"| {rank} | {hbm:.2f} | {ddr:.2f} | {names} |")
    total = sum(s.hbm_bytes + s.ddr_bytes for s in shards) / gib
    lines.append(f"\ntotal embedding storage (weights + optimizer state + buffers): {total:.2f} GiB")
    return "\n".join(lines)


def _parse_vocab(items: Sequence[str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise ConfigError(f"--vocab {item!r}: expected TABLE=ROWS (e.g. item=10000000)")
        out[key] = int(value)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hytrec_torchrec.training.plan",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--local-world-size", type=int, default=None)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--vocab", nargs="*", default=[], help="TABLE=ROWS (overrides meta.json)")
    parser.add_argument("--json", help="also write the shards as JSON here")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = parser.parse_args(argv)
    quiet_library_noise()
    try:
        cfg = load_job_config(args.config, list(args.overrides))
        vocab: Dict[str, int] = {}
        meta = Path(cfg.data.path) / "meta.json"
        if meta.is_file():
            vocab = {k: int(v) for k, v in json.loads(meta.read_text())["vocab_sizes"].items()}
        vocab.update(_parse_vocab(args.vocab))
        missing = [t for t in TABLES if t not in vocab]
        if missing:
            raise ConfigError(f"no vocabulary size for {missing}: {meta} is absent; pass --vocab")
    except ConfigError as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 2
    shards = plan_job(cfg, vocab, args.world_size, args.local_world_size, args.device)
    print(f"{args.config}: {args.world_size} ranks ({args.local_world_size or args.world_size} "
          f"per host, {args.device}), embedding dim {cfg.embeddings.dim}, optimizer "
          f"{cfg.embeddings.optimizer}, vocab {vocab}\n")
    print(format_memory(shards, args.world_size))
    if args.json:
        Path(args.json).write_text(json.dumps([s.__dict__ for s in shards], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
