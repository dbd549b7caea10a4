"""Loader vs a slow pure-Python reference, distribution, determinism, workers, truncation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec.streamable import Pipelineable

from hytrec_torchrec.config import from_dict
from hytrec_torchrec.data import FEATURE_KEYS, Batch, DataConfig, load_shard, make_dataloader
from hytrec_torchrec.data.testing import random_sequences, write_prepared

NUM_ITEMS = 40
STAGE_IDS = {"train": 0, "valid": 1, "test": 2}
FEATS = ("item", "attribution", "category", "behavior")
M64 = (1 << 64) - 1


# ---------------------------------------------------------------- slow pure-Python reference
def _sm(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _key(seed: int, epoch: int, user: int, j: int) -> int:
    return _sm(_sm(_sm(_sm(seed) ^ epoch) ^ user) ^ j)


def _region(cfg: DataConfig, stage: str, seq: dict) -> tuple[int, int, int] | None:
    """(lo, hi, end) of a user or None when not eligible; written out case by case."""
    L = len(seq["item"])
    if cfg.split == "leave_last_out":
        if stage == "train":
            last = L - 1 if cfg.train_on_valid else L - 2  # train_on_valid: through the valid event
            lo, hi, end = cfg.min_history, last, last
        elif stage == "valid":
            lo, hi, end = L - 2, L - 1, L - 1
        else:
            lo, hi, end = L - 1, L, L
    else:
        nb = 0
        for t in seq["timestamp"]:
            if t < cfg.split_time:
                nb += 1
        if stage == "train":
            last = nb if cfg.train_on_valid else nb - 1
            lo, hi, end = cfg.min_history, last, last
        elif stage == "valid":
            lo, hi, end = nb - 1, nb, nb
        else:
            lo, hi, end = nb, min(nb + 1, L), L
    if lo < cfg.min_history or lo >= hi:
        return None
    return lo, hi, end


def _cutoffs(cfg: DataConfig, stage: str, epoch: int, user: int, seq: dict) -> list[tuple[int, int]]:
    r = _region(cfg, stage, seq)
    if r is None:
        return []
    lo, hi, end = r
    n = hi - lo
    if stage != "train":
        return [(lo, min(lo + cfg.num_targets, end))]
    k = n if cfg.cutoffs_per_user == 0 else min(n, cfg.cutoffs_per_user)
    out = []
    for j in range(k):
        a, b = j * n // k, (j + 1) * n // k
        c = lo + a + _key(cfg.seed, epoch, user, j) % (b - a)
        out.append((c, min(c + cfg.num_targets, end)))
    return out


def _owners(users: dict, world_size: int) -> dict[int, int]:
    ordered = sorted(users, key=lambda u: (-len(users[u]["item"]), u))
    owner = {}
    for i, u in enumerate(ordered):
        lane = i % world_size
        owner[u] = lane if (i // world_size) % 2 == 0 else world_size - 1 - lane
    return owner


def reference_batches(users: dict, cfg: DataConfig, rank: int, world_size: int, epoch: int,
                      stage: str) -> list[dict]:
    owner = _owners(users, world_size)
    train = stage == "train"
    per_rank = [0] * world_size
    for u, seq in users.items():
        per_rank[owner[u]] += len(_cutoffs(cfg, stage, epoch, u, seq))
    B = cfg.batch_size
    if train:
        steps = min((n // B) if cfg.drop_last else -(-n // B) for n in per_rank)
    else:
        steps = max(-(-n // B) for n in per_rank)
    examples = []  # (user, cutoff, target_end)
    for u in sorted(u for u in users if owner[u] == rank):
        for c, e in _cutoffs(cfg, stage, epoch, u, users[u]):
            examples.append((u, c, e))
    E = len(examples)
    hl = [min(c, cfg.max_len) for _, c, _ in examples]
    rng = np.random.default_rng([cfg.seed, epoch, rank, STAGE_IDS[stage], 0])
    shuffle = cfg.shuffle and train
    order = [int(x) for x in rng.permutation(E)] if shuffle else list(range(E))
    if cfg.group_window > 0:
        w = cfg.group_window * B
        grouped = []
        for s in range(0, E, w):
            grouped += sorted(order[s:s + w], key=lambda e: -hl[e])
        order = grouped
    chunks = [order[s:s + B] for s in range(0, E, B)]
    if train and cfg.drop_last and chunks and len(chunks[-1]) < B:
        chunks.pop()
    seq_ids = [int(x) for x in rng.permutation(len(chunks))] if shuffle else list(range(len(chunks)))
    if train:
        seq_ids = seq_ids[:steps]
    else:
        seq_ids += [-1] * (steps - len(chunks))
    first_user = min(u for u in users if owner[u] == rank)
    out = []
    for i, cid in enumerate(seq_ids):
        neg = np.random.default_rng([cfg.seed, epoch, rank, STAGE_IDS[stage], 1, i]).integers(
            2, NUM_ITEMS, size=cfg.num_negatives, dtype=np.int64).tolist() if cfg.num_negatives else []
        exs = [examples[e] for e in chunks[cid]] if cid >= 0 else [(first_user, 0, 1)]
        b = {k: [] for k in FEATS}
        b.update(timestamps=[], hist_len=[], targets=[], t_current=[], user=[], cutoff=[], first=[],
                 negatives=neg, valid=[cid >= 0] * len(exs))
        for u, c, e in exs:
            s = users[u]
            start = max(0, c - cfg.max_len)
            for k in FEATS:
                b[k] += s[k][start:c]
            b["timestamps"] += s["timestamp"][start:c]
            b["hist_len"].append(c - start)
            b["targets"].append(s["item"][c:e])
            b["t_current"].append(s["timestamp"][c])
            b["user"].append(u)
            b["cutoff"].append(c)
            b["first"].append(s["timestamp"][0])
        out.append(b)
    return out


def as_lists(batch: Batch) -> dict:
    d = batch.features.to_dict()
    B = batch.batch_size
    hl = d["history_item"].lengths().tolist()
    for k in FEATURE_KEYS[1:4]:
        assert d[k].lengths().tolist() == hl
    neg_len = d["negative_item"].lengths().tolist()
    assert neg_len[1:] == [0] * (B - 1)
    tgt = d["target_item"]
    return {
        "item": d["history_item"].values().tolist(),
        "attribution": d["history_attribution"].values().tolist(),
        "category": d["history_category"].values().tolist(),
        "behavior": d["history_behavior"].values().tolist(),
        "timestamps": batch.timestamps.tolist(),
        "hist_len": hl,
        "targets": [t.tolist() for t in tgt.to_dense()],
        "t_current": batch.t_current.tolist(),
        "user": batch.user.tolist(),
        "cutoff": batch.cutoff.tolist(),
        "first": batch.first_event_time.tolist(),
        "negatives": d["negative_item"].values().tolist(),
        "valid": batch.valid.tolist(),
    }


# ---------------------------------------------------------------------------- fixtures/helpers
@pytest.fixture(scope="module")
def users() -> dict:
    u = random_sequences(num_users=37, max_events=120, num_items=NUM_ITEMS, seed=3)
    # a few hand-made edge cases: one event, two events, all-equal timestamps
    u[100] = {"item": [5], "attribution": [1], "category": [1], "behavior": [2], "timestamp": [7]}
    u[101] = {"item": [5, 6], "attribution": [1, 2], "category": [1, 2], "behavior": [2, 3],
              "timestamp": [7, 9]}
    u[102] = {k: list(range(2, 32)) if k == "item" else [3] * 30 for k in FEATS + ("timestamp",)}
    return u


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, users: dict) -> Path:
    return write_prepared(tmp_path_factory.mktemp("prep"), users, NUM_ITEMS, num_partitions=3)


def cfg_for(path: Path, **kw) -> DataConfig:
    base = {"path": str(path), "batch_size": 5, "num_negatives": 3, "max_len": 16,
            "cutoffs_per_user": 3, "group_window": 2}
    base.update(kw)
    return from_dict(DataConfig, base)


def loader_batches(cfg: DataConfig, rank: int, world: int, epoch: int, stage: str) -> list[dict]:
    return [as_lists(b) for b in make_dataloader(cfg, rank, world, epoch, stage)]


# ------------------------------------------------------------------------------------- tests
CASES = [
    dict(stage="train"),
    dict(stage="train", num_targets=3, max_len=4, min_history=0),
    dict(stage="train", cutoffs_per_user=0, group_window=0, drop_last=False),
    dict(stage="train", shuffle=False, world=3, rank=2),
    dict(stage="train", train_on_valid=True, num_targets=2),
    dict(stage="valid", num_targets=2),
    dict(stage="test", world=2, rank=1, num_targets=2),
    dict(stage="train", split="time", split_time=1_001_500, num_targets=2),
    dict(stage="train", split="time", split_time=1_001_500, train_on_valid=True, cutoffs_per_user=0),
    dict(stage="valid", split="time", split_time=1_001_500),
    dict(stage="test", split="time", split_time=1_001_500, num_targets=3, min_history=0, world=2),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_loader_matches_reference(prepared: Path, users: dict, case: dict) -> None:
    case = dict(case)
    stage, world, rank = case.pop("stage"), case.pop("world", 1), case.pop("rank", 0)
    cfg = cfg_for(prepared, **case)
    got = loader_batches(cfg, rank, world, 1, stage)
    want = reference_batches(users, cfg, rank, world, 1, stage)
    assert len(got) == len(want) > 0
    for i, (g, w) in enumerate(zip(got, want)):
        for k in w:
            assert g[k] == w[k], f"batch {i} field {k}"


def test_ranks_disjoint_cover_all_equal_steps(prepared: Path, users: dict) -> None:
    for world in (2, 3):
        for stage in ("train", "test"):
            cfg = cfg_for(prepared)
            seen: list[set] = []
            lens = set()
            for rank in range(world):
                shard = load_shard(cfg, rank, world)
                seen.append(set(shard.data.user.tolist()))
                dl = make_dataloader(cfg, rank, world, 0, stage, shard=shard)
                lens.add(len(list(dl)))
            assert len(lens) == 1, "every rank must yield the same number of batches"
            assert set().union(*seen) == set(users)
            assert sum(len(s) for s in seen) == len(users)
    # every eligible eval example is delivered exactly once over the ranks
    cfg = cfg_for(prepared)
    tested = []
    for rank in range(3):
        for b in make_dataloader(cfg, rank, 3, 0, "test"):
            tested += b.user[b.valid].tolist()
    eligible = [u for u, s in users.items() if len(s["item"]) - 1 >= cfg.min_history]
    assert sorted(tested) == sorted(eligible)


def test_determinism_and_epochs(prepared: Path) -> None:
    cfg = cfg_for(prepared)
    a = loader_batches(cfg, 0, 2, 4, "train")
    b = loader_batches(cfg, 0, 2, 4, "train")
    assert a == b
    c = loader_batches(cfg, 0, 2, 5, "train")
    cut = lambda bs: sorted((u, x) for bb in bs for u, x in zip(bb["user"], bb["cutoff"]))
    assert cut(a) != cut(c), "a new epoch must draw new cutoffs"
    assert [bb["user"] for bb in a] != [bb["user"] for bb in c], "a new epoch must reorder"
    d = loader_batches(cfg_for(prepared, seed=9), 0, 2, 4, "train")
    assert a != d


def test_workers_same_batches(prepared: Path) -> None:
    cfg0 = cfg_for(prepared)
    cfg2 = cfg_for(prepared, num_workers=2)
    a = loader_batches(cfg0, 1, 2, 0, "train")
    b = loader_batches(cfg2, 1, 2, 0, "train")
    assert a == b  # same sequence, not just the same set


def test_truncation_keeps_most_recent(prepared: Path, users: dict) -> None:
    cfg = cfg_for(prepared, max_len=7, cutoffs_per_user=0, group_window=0, shuffle=False)
    n = 0
    for b in make_dataloader(cfg, 0, 1, 0, "train"):
        items = b.features["history_item"]
        for u, c, h in zip(b.user.tolist(), b.cutoff.tolist(), items.to_dense()):
            full = users[u]["item"][:c]
            assert h.tolist() == full[-7:]
            assert len(h) == min(c, 7)
            n += c > 7
    assert n > 0, "the fixture must contain histories longer than max_len"


def test_batch_is_pipelineable(prepared: Path) -> None:
    b = next(iter(make_dataloader(cfg_for(prepared), 0, 1, 0, "train")))
    assert isinstance(b, Pipelineable)
    moved = b.to(torch.device("cpu"), non_blocking=False)
    assert isinstance(moved, Batch) and torch.equal(moved.timestamps, b.timestamps)
    off = b.history_offsets()
    assert off.shape == (b.batch_size + 1,) and int(off[-1]) == b.timestamps.numel()
    assert b.features.keys() == list(FEATURE_KEYS)
    assert b.features.values().dtype == torch.int64
    if torch.cuda.is_available():
        assert b.pin_memory().features.values().is_pinned()


def test_eval_padding_batches(tmp_path: Path) -> None:
    # 3 users with one example each over 2 ranks, batch 1: rank 0 has 2 batches, rank 1 has 1 + 1 pad
    u = random_sequences(3, 10, NUM_ITEMS, seed=0, min_events=5)
    cfg = cfg_for(write_prepared(tmp_path, u, NUM_ITEMS), batch_size=1)
    r0 = list(make_dataloader(cfg, 0, 2, 0, "test"))
    r1 = list(make_dataloader(cfg, 1, 2, 0, "test"))
    assert len(r0) == len(r1) == 2
    valid = [bool(b.valid.all()) for b in r0 + r1]
    assert valid.count(False) == 1
    assert sorted(x for b in r0 + r1 for x in b.user[b.valid].tolist()) == sorted(u)


def test_length_grouping_reduces_padding(tmp_path: Path) -> None:
    from hytrec_torchrec.data.loader import JaggedBatchDataset
    from hytrec_torchrec.data.plan import padding_waste

    u = random_sequences(300, 400, NUM_ITEMS, seed=5)
    path = write_prepared(tmp_path, u, NUM_ITEMS)
    shard = load_shard(cfg_for(path), 0, 1)
    waste = {}
    for gw in (0, 16):
        cfg = cfg_for(path, group_window=gw, max_len=400, batch_size=16)
        ds = JaggedBatchDataset(cfg, shard, 0, "train")
        waste[gw] = padding_waste(ds.history_len, ds.plan)
    assert waste[16] < 0.5 * waste[0]


def test_features_feed_an_embedding_collection(prepared: Path) -> None:
    """Item-table features (history, target, negatives) share one table; shapes follow the KJT."""
    from torchrec.modules.embedding_configs import EmbeddingConfig
    from torchrec.modules.embedding_modules import EmbeddingCollection

    tables = [
        EmbeddingConfig(name="item", embedding_dim=4, num_embeddings=NUM_ITEMS,
                        feature_names=["history_item", "target_item", "negative_item"]),
        EmbeddingConfig(name="attribution", embedding_dim=4, num_embeddings=7, feature_names=["history_attribution"]),
        EmbeddingConfig(name="category", embedding_dim=4, num_embeddings=5, feature_names=["history_category"]),
        EmbeddingConfig(name="behavior", embedding_dim=4, num_embeddings=11, feature_names=["history_behavior"]),
    ]
    ec = EmbeddingCollection(tables=tables, device=torch.device("cpu"))
    b = next(iter(make_dataloader(cfg_for(prepared, num_targets=2), 0, 1, 0, "train")))
    out = ec(b.features)
    n = b.timestamps.numel()
    for k in FEATURE_KEYS[:4]:
        assert out[k].values().shape == (n, 4)
    assert out["negative_item"].values().shape == (3, 4)
    assert out["target_item"].values().shape == (int(b.features["target_item"].lengths().sum()), 4)


def _one_batch(path: Path, stage: str, **kw) -> dict:
    cfg = cfg_for(path, batch_size=8, cutoffs_per_user=0, shuffle=False, group_window=0, **kw)
    batches = [as_lists(b) for b in make_dataloader(cfg, 0, 1, 0, stage)]
    assert len(batches) == 1
    return batches[0]


def test_split_semantics_by_hand(tmp_path: Path) -> None:
    """Hand-checked cutoffs for one 5-event user (independent of the reference's region table)."""
    seq = {"item": [11, 12, 13, 14, 15], "attribution": [1] * 5, "category": [2] * 5,
           "behavior": [2] * 5, "timestamp": [10, 20, 30, 40, 50]}
    path = write_prepared(tmp_path, {2: seq}, NUM_ITEMS, num_partitions=1)
    # leave-last-out: test = position 4, valid = 3, train = 1, 2 (min_history 1)
    b = _one_batch(path, "train", num_targets=3, drop_last=False)
    assert b["cutoff"] == [1, 2] and b["targets"] == [[12, 13], [13]]  # targets stop before valid
    assert _one_batch(path, "valid", num_targets=2)["targets"] == [[14]]
    t = _one_batch(path, "test", num_targets=2)
    assert t["cutoff"] == [4] and t["targets"] == [[15]] and t["item"] == [11, 12, 13, 14]
    assert t["t_current"] == [50]
    # time split at 35: valid = last event before (position 2), test = first at/after (3), m=2 -> 14, 15
    kw = {"split": "time", "split_time": 35}
    assert _one_batch(path, "train", drop_last=False, **kw)["cutoff"] == [1]
    assert _one_batch(path, "valid", **kw)["cutoff"] == [2]
    t = _one_batch(path, "test", num_targets=2, max_len=2, **kw)
    assert t["cutoff"] == [3] and t["targets"] == [[14, 15]] and t["item"] == [12, 13]
    assert t["t_current"] == [40] and t["timestamps"] == [20, 30]
    # min_history 0 adds cutoff 0 (empty history) to training
    b = _one_batch(path, "train", drop_last=False, min_history=0)
    assert b["cutoff"] == [0, 1, 2] and b["hist_len"] == [0, 1, 2]
