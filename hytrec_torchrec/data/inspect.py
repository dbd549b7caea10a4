"""``python -m hytrec_torchrec.data.inspect PREPARED_DIR [key=value ...]``: read one epoch through
the loader and print dataset, eligibility and batch statistics.

Overrides are DataConfig fields (``batch_size=64 max_len=200 split=time split_time=...``).
Options: ``--stage train|valid|test`` (epoch read), ``--epoch N``, ``--rank R --world-size W``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from hytrec_torchrec.config import ConfigError, apply_overrides, from_dict
from hytrec_torchrec.data.config import STAGES, DataConfig
from hytrec_torchrec.data.loader import JaggedBatchDataset, load_shard, make_dataloader
from hytrec_torchrec.data.reader import DatasetFormatError
from hytrec_torchrec.data.stats import dataset_stats, format_stats, read_epoch

__all__ = ["main", "inspect_dataset"]


def inspect_dataset(cfg: DataConfig, stage: str = "train", epoch: int = 0, rank: int = 0,
                    world_size: int = 1) -> str:
    """Statistics report as text (reads one epoch of ``stage``)."""
    shard = load_shard(cfg, rank, world_size)
    parts = [format_stats(f"dataset {cfg.path}", dataset_stats(shard))]
    for s in STAGES:
        counts = JaggedBatchDataset(cfg, shard, epoch, s).count_summary()
        parts.append(format_stats(f"split {cfg.split} / stage {s} (epoch {epoch})", counts))
    loader = make_dataloader(cfg, rank, world_size, epoch, stage, shard=shard)
    epoch_stats = read_epoch(loader, cfg.all_positions and stage == "train", cfg.supervised_rows).as_dict()
    title = (f"one {stage} epoch read: batch_size={cfg.batch_size} max_len={cfg.max_len} "
             f"group_window={cfg.group_window} num_workers={cfg.num_workers}")
    parts.append(format_stats(title, epoch_stats))
    return "\n\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hytrec_torchrec.data.inspect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prepared_dir")
    p.add_argument("overrides", nargs="*", help="DataConfig key=value")
    p.add_argument("--stage", default="train", choices=STAGES)
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world-size", type=int, default=1)
    args = p.parse_args(argv)
    try:
        data = apply_overrides({"path": args.prepared_dir}, args.overrides)
        cfg = from_dict(DataConfig, data)
        print(inspect_dataset(cfg, args.stage, args.epoch, args.rank, args.world_size))
    except (ConfigError, DatasetFormatError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
