"""Prepared directory -> DataLoader of :class:`Batch` for one rank, epoch and stage.

``make_dataloader(cfg, rank, world_size, epoch)`` is the entry point. The rank's users are read
once into a :class:`RankShard` (pass it back in to avoid re-reading each epoch). The batch plan
is computed in the main process; DataLoader worker w of n builds batches w, w+n, w+2n, ... and
the DataLoader yields them round-robin, so the batch sequence is identical for any num_workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from hytrec_torchrec.data.batch import Batch
from hytrec_torchrec.data.collate import PackedBatch, build_packed, sample_negatives
from hytrec_torchrec.data.config import STAGES, DataConfig
from hytrec_torchrec.data.examples import Examples, make_examples, num_examples, stage_region
from hytrec_torchrec.data.plan import STAGE_IDS, BatchPlan, assign_ranks, plan_batches, steps_per_rank
from hytrec_torchrec.data.reader import PreparedMeta, RankData, UserIndex, read_index, read_meta, read_users

__all__ = ["RankShard", "load_shard", "JaggedBatchDataset", "BatchLoader", "make_dataloader"]


@dataclass
class RankShard:
    """One rank's users, read once, reusable across epochs and stages.

    Attributes:
        meta: parsed meta.json.
        index: global per-user index (all users, all ranks).
        rank_of_user: [U_global] int64 rank owning each index row.
        rank, world_size: this shard's position.
        data: this rank's sequences (rows sorted by user).
        n_before: [U_rank] int64 events before split_time, aligned with ``data`` rows.
        split_time: the split_time the index was computed with (None for leave_last_out).
    """

    meta: PreparedMeta
    index: UserIndex
    rank_of_user: np.ndarray
    rank: int
    world_size: int
    data: RankData
    n_before: np.ndarray
    split_time: Optional[int]


def load_shard(cfg: DataConfig, rank: int = 0, world_size: int = 1) -> RankShard:
    """Read the index of all users, assign users to ranks, read this rank's users."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
    meta = read_meta(cfg.path)
    split_time = cfg.split_time if cfg.split == "time" else None
    index = read_index(meta, split_time)
    if index.num_users < world_size:
        raise ValueError(f"{cfg.path}: {index.num_users} users cannot be spread over {world_size} ranks")
    owner = assign_ranks(index.user, index.length, world_size)
    mine = owner == rank
    data = read_users(meta, index.user[mine])
    if not (np.array_equal(data.user, index.user[mine]) and np.array_equal(data.lengths, index.length[mine])):
        raise RuntimeError(f"{cfg.path}: sequences changed between the index pass and the read")
    return RankShard(meta=meta, index=index, rank_of_user=owner, rank=rank, world_size=world_size,
                     data=data, n_before=index.n_before[mine], split_time=split_time)


class JaggedBatchDataset(IterableDataset):
    """Batches of one rank, epoch and stage; iterable (worker-sharded) and indexable by step.

    Attributes:
        examples: this rank's examples for the epoch.
        plan: the batch plan (order, chunks, yielded sequence).
        counts: eligibility and example counts (see :meth:`count_summary`).
    """

    def __init__(self, cfg: DataConfig, shard: RankShard, epoch: int = 0, stage: str = "train") -> None:
        if stage not in STAGES:
            raise ValueError(f"stage: {stage!r} is not one of {list(STAGES)}")
        split_time = cfg.split_time if cfg.split == "time" else None
        if split_time != shard.split_time:
            raise ValueError("shard was loaded with a different split_time than cfg")
        self.cfg, self.shard, self.epoch, self.stage = cfg, shard, epoch, stage
        train = stage == "train"
        d = shard.data
        self.examples: Examples = make_examples(cfg, stage, epoch, d.user, d.lengths, shard.n_before)
        idx = shard.index
        region = stage_region(cfg, stage, idx.length, idx.n_before)
        per_user = num_examples(cfg, region, stage)
        per_rank = np.bincount(shard.rank_of_user, weights=per_user, minlength=shard.world_size).astype(np.int64)
        self.steps = steps_per_rank(per_rank, cfg.batch_size, train, cfg.drop_last)
        rng = np.random.default_rng([cfg.seed, epoch, shard.rank, STAGE_IDS[stage], 0])
        self.history_len = self.examples.history_len(cfg.max_len)
        self.plan: BatchPlan = plan_batches(self.history_len, cfg.batch_size, cfg.group_window, self.steps,
                                            train, cfg.shuffle, cfg.drop_last, rng)
        mine = shard.rank_of_user == shard.rank
        self.counts = {
            "users_total": idx.num_users,
            "users_rank": int(mine.sum()),
            "users_eligible_total": int(region.eligible.sum()),
            "users_ineligible_total": int((~region.eligible).sum()),
            "users_eligible_rank": int(region.eligible[mine].sum()),
            "users_ineligible_rank": int((~region.eligible[mine]).sum()),
            "examples_total": int(per_rank.sum()),
            "examples_rank": len(self.examples),
            "examples_per_rank_min": int(per_rank.min()),
            "examples_per_rank_max": int(per_rank.max()),
            "steps": self.steps,
            "dropped_examples_rank": self.plan.dropped_examples,
            "padding_batches_rank": int((self.plan.sequence < 0).sum()),
        }

    def __len__(self) -> int:
        return len(self.plan)

    def batch(self, i: int) -> Batch:
        """Build the i-th batch of the epoch (0 <= i < len(self))."""
        return self.packed(i).unpack()

    def packed(self, i: int) -> PackedBatch:
        """The i-th batch as one buffer (what worker processes send)."""
        cfg, ex = self.cfg, self.examples
        neg_rng = np.random.default_rng([cfg.seed, self.epoch, self.shard.rank, STAGE_IDS[self.stage], 1, i])
        negatives = sample_negatives(neg_rng, cfg.num_negatives, self.shard.meta.vocab_sizes["item"])
        sel = self.plan.batch(i)
        if sel.size == 0:  # eval padding batch: one invalid example (user row 0, cutoff 0)
            one = np.zeros(1, np.int64)
            return build_packed(self.shard.data, one, one, one + 1, negatives, cfg.max_len, np.zeros(1, bool))
        return build_packed(self.shard.data, ex.row[sel], ex.cutoff[sel], ex.target_end[sel], negatives,
                           cfg.max_len, np.ones(len(sel), bool))

    def __iter__(self) -> Iterator[PackedBatch]:
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(start, len(self), step):
            yield self.packed(i)

    def count_summary(self) -> dict[str, int]:
        """Copy of the eligibility/example counts (nothing is dropped silently)."""
        return dict(self.counts)


def _identity(batch: PackedBatch) -> PackedBatch:
    return batch


class BatchLoader:
    """Iterable of :class:`Batch` over a DataLoader of :class:`PackedBatch` (unpacked here, in the
    consuming process: zero-copy views plus KJT construction).

    Attributes:
        dataset: the :class:`JaggedBatchDataset` (plan, counts).
        dataloader: the underlying torch DataLoader.
    """

    def __init__(self, dataloader: DataLoader, pin_memory: bool) -> None:
        self.dataloader = dataloader
        self.dataset: JaggedBatchDataset = dataloader.dataset  # type: ignore[assignment]
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Batch]:
        for packed in self.dataloader:
            batch = packed.unpack()
            yield batch.pin_memory() if self.pin_memory else batch


def make_dataloader(cfg: DataConfig, rank: int = 0, world_size: int = 1, epoch: int = 0,
                    stage: str = "train", shard: Optional[RankShard] = None) -> BatchLoader:
    """Loader yielding :class:`Batch` for ``rank`` of ``world_size`` in ``epoch`` and ``stage``.

    Every rank yields the same number of batches (``len(loader)``). Pass ``shard`` (from
    :func:`load_shard`, same cfg/rank/world_size) to avoid re-reading the files.
    """
    if shard is None:
        shard = load_shard(cfg, rank, world_size)
    elif (shard.rank, shard.world_size) != (rank, world_size):
        raise ValueError(f"shard is rank {shard.rank}/{shard.world_size}, asked for {rank}/{world_size}")
    dataset = JaggedBatchDataset(cfg, shard, epoch, stage)
    kwargs = {}
    if cfg.num_workers > 0:
        ctx = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else None
        kwargs = {"multiprocessing_context": ctx, "prefetch_factor": 2}
    dl = DataLoader(dataset, batch_size=None, collate_fn=_identity, num_workers=cfg.num_workers, **kwargs)
    return BatchLoader(dl, cfg.pin_memory)
