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
import glob
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


def read_item_categories(data_path: str | Path, num_items: int, held_out: int = 2) -> torch.Tensor:
    """``[V_item]`` int64: each item's category, its most frequent one over the training events
    (every user's events but the last ``held_out``: the validation and test targets of
    ``leave_last_out``); an item with no training event takes its most frequent category over all
    events (a category is item metadata), an item never seen the unknown category (1). Ties go to
    the lower category index. ``model.kind: ulim`` scores and cascades items by it."""
    items_tr, cats_tr, items_all, cats_all = [], [], [], []
    for f in sorted(glob.glob(str(Path(data_path) / "sequences" / "part-*.parquet"))):
        t = pq.read_table(f, columns=["item", "category"])
        item_l, cat_l = t.column("item").combine_chunks(), t.column("category").combine_chunks()
        lengths = np.diff(item_l.offsets.to_numpy())
        it = item_l.values.to_numpy().astype(np.int64)
        ct = cat_l.values.to_numpy().astype(np.int64)
        pos_from_end = np.repeat(lengths, lengths) - (np.arange(len(it)) - np.repeat(item_l.offsets.to_numpy()[:-1], lengths))
        train = pos_from_end > held_out
        items_tr.append(it[train]), cats_tr.append(ct[train]), items_all.append(it), cats_all.append(ct)
    out = np.ones(num_items, dtype=np.int64)
    for its, cts in ((items_all, cats_all), (items_tr, cats_tr)):  # training events last: they win
        it = np.concatenate(its) if its else np.zeros(0, np.int64)
        ct = np.concatenate(cts) if cts else np.zeros(0, np.int64)
        keep = (it < num_items) & (ct >= 2)
        it, ct = it[keep], ct[keep]
        if it.size == 0:
            continue
        width = int(ct.max()) + 1
        pairs, counts = np.unique(it * width + ct, return_counts=True)
        pi, pc = pairs // width, pairs % width
        order = np.lexsort((pc, -counts, pi))  # per item: most frequent first, then lower category
        pi, pc = pi[order], pc[order]
        first = np.ones(len(pi), dtype=bool)
        first[1:] = pi[1:] != pi[:-1]
        out[pi[first]] = pc[first]
    return torch.from_numpy(out)


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
    data; one for everything (or none) is a :class:`ConfigError` naming ``category``. ULIM needs one
    target per example (or all-position training)."""
    if cfg.model.kind == "ulim" and cfg.data.num_targets != 1 and not cfg.data.all_positions:
        raise ConfigError("model.kind: ulim scores each example with its target's category: it needs "
                          f"data.num_targets: 1 (got {cfg.data.num_targets}) or data.all_positions")
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
    ulim = cfg.model.kind == "ulim"
    model = HyTRecModel(cfg.model, embeddings, counts, all_positions=cfg.data.all_positions,
                        whole_catalog_negatives=cfg.data.num_negatives == -1,
                        supervised_rows=cfg.data.supervised_rows if cfg.data.all_positions else 0,
                        cycle_behaviors=cycle,
                        item_category=read_item_categories(cfg.data.path, int(vocab_sizes["item"])) if ulim else None,
                        num_categories=int(vocab_sizes["category"]) if ulim else 0)
    model.tower.to(device)
    model.loss.to(device)
    return model
