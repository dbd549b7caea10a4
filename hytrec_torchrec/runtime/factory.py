"""Build the model of a job: its embedding tables, the item counts of its loss, the model itself.

Training (on the meta device, for ``DistributedModelParallel`` to shard), evaluation (sharded or
not) and export all build the model here, so a checkpoint always meets the same construction.

Example::

    cfg = load_job_config("configs/demo.yaml", [])
    sizes = {k: int(v) for k, v in read_meta(cfg.data.path).vocab_sizes.items()}
    model = build_model(cfg, sizes, torch.device("cpu"))
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torchrec import EmbeddingCollection

from hytrec_torchrec.config import ConfigError
from hytrec_torchrec.model import HyTRecModel
from hytrec_torchrec.runtime.config import JobConfig
from hytrec_torchrec.runtime.sharding import EmbeddingsConfig, table_configs

__all__ = ["build_embeddings", "build_model", "read_item_counts", "read_cycle_behaviors"]


def read_item_counts(data_path: str | Path, num_items: int) -> torch.Tensor:
    """[V] event count per item index from ``vocab/item.parquet`` (0 where absent)."""
    path = Path(data_path) / "vocab" / "item.parquet"
    counts = torch.zeros(num_items, dtype=torch.int64)
    if path.is_file():
        t = pq.read_table(path, columns=["index", "count"])
        idx = torch.from_numpy(t.column("index").to_numpy().astype(np.int64))
        cnt = torch.from_numpy(t.column("count").to_numpy().astype(np.int64))
        keep = idx < num_items
        counts[idx[keep]] = cnt[keep]
    return counts


def read_cycle_behaviors(data_path: str | Path, names: Sequence[str], num_behaviors: int) -> Optional[torch.Tensor]:
    """``[V_behavior]`` bool: the behaviour indices whose raw ID is one of ``names``
    (``data.cycle_behaviors``) in ``vocab/behavior.parquet``; None when ``names`` is empty.

    Raises:
        ConfigError: naming ``data.cycle_behaviors`` when a name is not in the vocabulary or the
            dataset has no behaviour vocabulary.
    """
    if not names:
        return None
    path = Path(data_path) / "vocab" / "behavior.parquet"
    if not path.is_file():
        raise ConfigError(f"data.cycle_behaviors: {path} does not exist (the dataset has no behaviour vocabulary)")
    t = pq.read_table(path, columns=["raw", "index"])
    index = dict(zip(t.column("raw").cast(pa.string()).to_pylist(), t.column("index").to_pylist()))
    mask = torch.zeros(num_behaviors, dtype=torch.bool)
    for name in names:
        if name not in index:
            known = ", ".join(sorted(index)[:20])
            raise ConfigError(f"data.cycle_behaviors: {name!r} is not a behaviour of {data_path} (it has: {known})")
        if int(index[name]) < num_behaviors:
            mask[int(index[name])] = True
    return mask


def build_embeddings(cfg: EmbeddingsConfig, vocab_sizes: Dict[str, int],
                     device: Optional[torch.device] = None) -> EmbeddingCollection:
    """The four ID tables (rows per table from ``vocab_sizes``), initialised N(0, ``init_std``).

    ``device`` ``meta`` leaves the rows unallocated for DMP to materialise shard by shard.
    """
    tables = table_configs(cfg, vocab_sizes)
    init = functools.partial(nn.init.normal_, mean=0.0, std=cfg.init_std)
    for t in tables:
        t.init_fn = init
    return EmbeddingCollection(tables=tables, device=device)


#: rows of a vocabulary before its first real ID (pad, unknown)
RESERVED_ROWS = 2


def check_categories(cfg: JobConfig, vocab_sizes: Dict[str, int]) -> None:
    """The category interests (``model.interests.count`` > 0) need at least two categories in the
    data; one for everything (or none) is a :class:`ConfigError` naming ``category``."""
    if cfg.model.interests.count <= 0:
        return
    real = int(vocab_sizes.get("category", 0)) - RESERVED_ROWS
    if real < 2:
        raise ConfigError(f"model.interests.count: the data at {cfg.data.path} has {max(real, 0)} category "
                          "id(s); the category interests need events with at least two values of the "
                          "category column (set model.interests.count: 0 for data without categories)")


def build_model(cfg: JobConfig, vocab_sizes: Dict[str, int], device: torch.device,
                embedding_device: Optional[torch.device] = None) -> HyTRecModel:
    """The unsharded model; dense part on ``device``, tables on ``embedding_device``.

    Seeded with ``run.seed`` before anything is built, so every rank builds the same tower.
    """
    check_categories(cfg, vocab_sizes)
    counts = read_item_counts(cfg.data.path, int(vocab_sizes["item"]))
    torch.manual_seed(cfg.run.seed)
    embeddings = build_embeddings(cfg.embeddings, vocab_sizes, embedding_device or device)
    cycle = (read_cycle_behaviors(cfg.data.path, cfg.data.cycle_behaviors, int(vocab_sizes["behavior"]))
             if cfg.model.repeat and cfg.model.repeat_cycles else None)
    model = HyTRecModel(cfg.model, embeddings, counts, all_positions=cfg.data.all_positions,
                        whole_catalog_negatives=cfg.data.num_negatives == -1,
                        supervised_rows=cfg.data.supervised_rows if cfg.data.all_positions else 0,
                        cycle_behaviors=cycle)
    model.tower.to(device)
    model.loss.to(device)
    return model
