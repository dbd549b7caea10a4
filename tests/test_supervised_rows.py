"""``data.supervised_rows``: all-position windows that keep up to ``max_len`` events of context but
supervise only their last M positions. Tiling (every training target once per epoch), the tower's
last-M rows against the rows computed for every position, the loss on the selected rows against
a direct reference (with the repeat path's bonus), the epoch statistics and the config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor

from hytrec_torchrec.config import ConfigError, from_dict
from hytrec_torchrec.data.config import DataConfig
from hytrec_torchrec.data.examples import make_examples
from hytrec_torchrec.model import AllPositionsLoss, next_event_rows
from hytrec_torchrec.modules import HyTRecTower, TowerConfig
from hytrec_torchrec.modules.loss import shared_negatives_loss, uniform_log_q
from hytrec_torchrec.modules.repeat import RepeatHead, dense_bonus, lookup_bonus
from hytrec_torchrec.ops.jagged import split_tail

T0 = 1_700_000_000
LENGTHS = [13, 1, 0, 20, 6]


def test_windows_tile_every_training_target_once_with_context() -> None:
    cfg = DataConfig(path="x", max_len=8, all_positions=True, cutoffs_per_user=0, supervised_rows=3)
    length = np.array([2, 3, 5, 11, 12, 30], dtype=np.int64)
    user = np.arange(len(length), dtype=np.int64)
    ex = make_examples(cfg, "train", 0, user, length, np.zeros_like(length))
    for u, n in enumerate(length):
        cut = ex.cutoff[ex.row == u]
        assert np.all(np.diff(np.sort(cut)) == 3), cut  # a cutoff every M events
        # the window of cutoff c supervises targets max(c - M, 0) + 1 .. c
        targets = [t for c in cut for t in range(max(c - 3, 0) + 1, c + 1)]
        assert sorted(targets) == list(range(1, n - 2)), (u, cut)  # leave-last-out: every one once
    # each window still reads up to max_len events of history before its cutoff
    assert ex.history_len(cfg.max_len).max() == 8
    assert np.array_equal(ex.target_end, ex.cutoff + 1)


@pytest.mark.parametrize("kw", [
    dict(),  # the default tower (gated delta, intent readout, time inputs)
    dict(long_pattern="TTTS", long_readout="last", long_time_inputs=False, tadn=dict(gating="paper")),
    dict(short_layers=2, time_bias=24, time_query="next", position_bias=6),
    dict(far_copy=True),
    dict(fusion=dict(num_experts=2, long="residual")),
    dict(long_pattern=""),  # short-only
    dict(long_pattern="SS", short_len=0, long_readout="last"),  # SASRec-like
], ids=["default", "paper", "stacked_short_next_query", "copy", "residual", "short_only", "sasrec"])
@pytest.mark.parametrize("last_rows", [1, 5])
def test_last_rows_equal_the_rows_computed_for_every_position(kw: dict, last_rows: int) -> None:
    base: dict = dict(embedding_dim=16, features=["item"], heads=2, short_heads=2, short_len=4, repeat=False,
                      tadn=dict(chunk_size=4, decay_period=3600.0), fusion=dict(num_experts=2))
    base["tadn"] = {**base["tadn"], **kw.pop("tadn", {})}
    base.update(kw)
    torch.manual_seed(0)
    tower = HyTRecTower(from_dict(TowerConfig, base)).eval()
    for name, p in tower.named_parameters():
        if name.endswith(("rel_bias", "time_bias", "long_scale", "log_gap_rate")):  # make them matter
            torch.nn.init.normal_(p)
    gen = torch.Generator().manual_seed(1)
    n = sum(LENGTHS)
    off = torch.tensor([0] + LENGTHS, dtype=torch.int64).cumsum(0)
    x = torch.randn(n, 16, generator=gen, requires_grad=True)
    ts = T0 + torch.randint(0, 50_000, (n,), generator=gen).sort().values
    tc = torch.full((len(LENGTHS),), T0 + 50_000, dtype=torch.int64)
    every, _ = tower.forward_all_positions({"item": x}, off, ts, tc)
    last, _ = tower.forward_all_positions({"item": x}, off, ts, tc, last_rows)
    sel = split_tail(off, last_rows)[2]
    torch.testing.assert_close(last[sel], every[sel], atol=1e-5, rtol=0)
    rest = torch.ones(n, dtype=torch.bool)
    rest[sel] = False
    assert bool((last[rest] == 0).all())
    last[sel].sum().backward()  # the supervised rows train the tower
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("with_bonus", [False, True])
def test_the_loss_on_selected_rows_matches_a_direct_reference(with_bonus: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    d, v, r, m = 8, 15, 6, 3
    off = torch.tensor([0, 5, 6, 6, 13])
    n, b = int(off[-1]), off.shape[0] - 1
    rows = torch.randn(n, d, generator=gen)
    hist_ids = torch.randint(2, v, (n,), generator=gen)
    tgt_ids = torch.randint(2, v, (b,), generator=gen)
    neg_ids = torch.randint(2, v, (r,), generator=gen)
    table = torch.randn(v, d, generator=gen)
    items = torch.cat([hist_ids, tgt_ids])
    ts = T0 + torch.arange(n) * 60
    bonus = None
    if with_bonus:
        head = RepeatHead(d, train_rows=m)
        for t in (head.count, head.distance, head.time):
            torch.nn.init.normal_(t.weight)
        bonus = head(rows, hist_ids, off, ts, True)[:3]
    sel = split_tail(off, m)[2]

    def jt(ids: torch.Tensor, lengths: torch.Tensor) -> JaggedTensor:
        return JaggedTensor(values=table[ids], lengths=lengths)

    got = AllPositionsLoss(v)(rows, off, jt(hist_ids, off[1:] - off[:-1]), hist_ids,
                              jt(tgt_ids, torch.ones(b, dtype=torch.int64)), tgt_ids,
                              jt(neg_ids, torch.tensor([r] + [0] * (b - 1))), neg_ids, bonus=bonus, last_rows=m)
    pos = items[next_event_rows(off, n)[sel]]
    pos_bonus = neg_bonus = None
    if bonus is not None:
        pos_bonus = lookup_bonus(bonus, sel, pos)
        neg_bonus = dense_bonus(bonus, n, neg_ids)[sel]
    want = shared_negatives_loss(rows[sel], pos, table[pos], neg_ids, table[neg_ids], uniform_log_q(v),
                                 pos_bonus=pos_bonus, neg_bonus=neg_bonus)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    if bonus is not None:  # a bonus pair on an unsupervised row is a bug, not a silent drop
        wide = RepeatHead(d, train_rows=m + 1)(rows, hist_ids, off, ts, True)[:3]
        with pytest.raises(ValueError, match="repeat_rows"):
            AllPositionsLoss(v)(rows, off, jt(hist_ids, off[1:] - off[:-1]), hist_ids,
                                jt(tgt_ids, torch.ones(b, dtype=torch.int64)), tgt_ids,
                                jt(neg_ids, torch.tensor([r] + [0] * (b - 1))), neg_ids, bonus=wide, last_rows=m)


def test_epoch_stats_count_the_supervised_rows(tmp_path) -> None:
    from hytrec_torchrec.data.loader import load_shard, make_dataloader
    from hytrec_torchrec.data.stats import read_epoch
    from hytrec_torchrec.data.testing import random_sequences, write_prepared

    users = random_sequences(15, 30, 40, seed=3, min_events=1)
    path = write_prepared(tmp_path / "prep", users, 40)
    cfg = DataConfig(path=str(path), max_len=8, all_positions=True, cutoffs_per_user=0, batch_size=1,
                     supervised_rows=3)
    loader = make_dataloader(cfg, shard=load_shard(cfg))
    st = read_epoch(loader, all_positions=True, supervised_rows=3).as_dict()
    # every training event after a user's first is supervised once (events 1 .. n-3)
    assert st["supervised_positions"] == sum(max(len(u["item"]) - 3, 0) for u in users.values())
    assert st["history_events"] > st["supervised_positions"]  # the context is read, not supervised


@pytest.mark.parametrize("kw, message", [
    (dict(supervised_rows=4), "supervised_rows: 4 needs all_positions"),
    (dict(supervised_rows=-1, all_positions=True), "supervised_rows: -1 must be >= 0"),
])
def test_config_errors_name_the_key(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataConfig(path="x", max_len=8, num_targets=1, **kw).validate()


@pytest.mark.parametrize("rows", [8, 9, 1000])
def test_supervising_at_least_max_len_rows_is_every_position(rows: int) -> None:
    """M >= max_len supervises every row of a window, which is what 0 means: it is read as 0."""
    cfg = DataConfig(path="x", max_len=8, num_targets=1, all_positions=True, supervised_rows=rows)
    cfg.validate()
    assert cfg.supervised_rows == 0
