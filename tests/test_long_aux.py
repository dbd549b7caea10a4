"""A long memory trained to be read: the long branch's own loss (``model.long_aux_weight``, each
row's long-branch output predicts the W events after its next target) against a loop over rows,
the future rows against a list walk, ``fusion.long_detach`` (no gradient from the fused output
into the long branch in training; evaluation unchanged), and the config checks."""

from __future__ import annotations

import math

import pytest
import torch

from hytrec_torchrec.config import ConfigError, from_dict
from hytrec_torchrec.model import LongAuxLoss, future_rows
from hytrec_torchrec.modules.config import TowerConfig
from hytrec_torchrec.modules.tower import HyTRecTower

LENGTHS = [7, 1, 12, 0, 4]


def _offsets(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)


@pytest.mark.parametrize("steps", [1, 2, 3, 6])
def test_future_rows_walk_the_history_then_the_target(steps: int) -> None:
    off = _offsets(LENGTHS)
    n = int(off[-1])
    walked = future_rows(off, n, steps)
    assert len(walked) == steps
    got = walked[-1].tolist()
    want = []
    for b, (s, e) in enumerate(zip(off[:-1].tolist(), off[1:].tolist())):
        seq = list(range(s, e)) + [n + b]  # the history rows, then the example's target
        for i in range(e - s):
            want.append(seq[i + steps] if i + steps < len(seq) else -1)
    assert got == want


def test_long_aux_loss_equals_a_loop_over_rows() -> None:
    g = torch.Generator().manual_seed(0)
    off = _offsets(LENGTHS)
    n, b, d, r, k, w = int(off[-1]), len(LENGTHS), 6, 9, 2, 3
    long_rows = torch.randn(n, d, generator=g)
    hist_emb, tgt_emb, neg_emb = torch.randn(n, d, generator=g), torch.randn(b, d, generator=g), torch.randn(r, d, generator=g)
    hist_ids, tgt_ids, neg_ids = torch.randint(2, 30, (n,), generator=g), torch.randint(2, 30, (b,), generator=g), \
        torch.randint(2, 30, (r,), generator=g)
    loss = LongAuxLoss(num_items=30, window=w, short_len=k, cosine=False, temperature=0.5)
    got = loss(long_rows, off, hist_ids, hist_emb, tgt_ids, tgt_emb, neg_ids, neg_emb)
    terms = []
    log_q = -math.log(28)
    for bb, (s, e) in enumerate(zip(off[:-1].tolist(), off[1:].tolist())):
        emb = torch.cat([hist_emb[s:e], tgt_emb[bb:bb + 1]])
        for i in range(k, e - s):  # rows with memory: K events before them
            u = long_rows[s + i] / 0.5
            lse = torch.logsumexp(u @ neg_emb.t() - (math.log(r) + log_q), 0)
            for j in range(i + 2, min(i + 2 + w, e - s + 1)):
                pos = u @ emb[j]
                terms.append(torch.logaddexp(pos, lse) - pos)
    assert len(terms) > 5
    torch.testing.assert_close(got, torch.stack(terms).mean())


def _tower(**kw) -> HyTRecTower:
    cfg = from_dict(TowerConfig, {"embedding_dim": 8, "features": ["item"], "short_len": 3, "long_pattern": "T",
                                  "heads": 2, "short_heads": 2, "fusion": {"num_experts": 2, **kw},
                                  "tadn": {"gating": "gated_delta", "chunk_size": 4}, "long_readout": "intent"})
    torch.manual_seed(0)
    return HyTRecTower(cfg)


def _inputs():
    g = torch.Generator().manual_seed(1)
    off = _offsets([9, 14])
    n = int(off[-1])
    ts = 1_700_000_000 + torch.arange(n) * 60
    return {"item": torch.randn(n, 8, generator=g)}, off, ts, ts[off[1:] - 1] + 60


def test_long_detach_stops_the_fused_gradient_into_the_long_branch() -> None:
    feats, off, ts, tc = _inputs()
    plain, detached = _tower(), _tower(long_detach=True)
    detached.load_state_dict(plain.state_dict())
    for tower in (plain, detached):
        tower.train()
        user, _, long_rows = tower.rows_and_long(feats, off, ts, tc)
        user.sum().backward(retain_graph=True)
        grads = [p.grad for p in tower.long.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        if tower is plain:
            assert grads
        else:
            # the intent readout reads the short branch, whose gradient still flows; the long
            # branch's own parameters get nothing from the fused output
            assert not grads
            (long_rows.sum()).backward()  # its own loss reaches it
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.long.parameters())
    plain.eval()
    detached.eval()
    torch.testing.assert_close(plain(feats, off, ts, tc), detached(feats, off, ts, tc))


@pytest.mark.parametrize("model, msg", [
    ({"long_pattern": "", "long_aux_weight": 0.5}, "long_aux_weight"),
    ({"short_len": 0, "long_pattern": "T", "long_readout": "last", "long_aux_weight": 0.5}, "long_aux_weight"),
    ({"long_pattern": "", "fusion": {"long_detach": True}}, "long_detach"),
    ({"long_aux_window": 0}, "long_aux_window"),
])
def test_config_errors_name_the_key(model: dict, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        from_dict(TowerConfig, model).validate()


def test_the_auxiliary_loss_needs_all_position_training() -> None:
    from hytrec_torchrec.runtime.config import JobConfig

    job = {"data": {"path": "x"}, "model": {"long_pattern": "T", "long_aux_weight": 0.5}}
    with pytest.raises(ConfigError, match="model.long_aux_weight: 0.5 needs data.all_positions"):
        from_dict(JobConfig, job).validate()
    job["data"]["all_positions"] = True
    from_dict(JobConfig, job).validate()


def test_a_job_trains_with_the_long_loss_and_detach_under_the_pipeline(tmp_path) -> None:
    """1 rank, ``train.pipeline=sparse_dist`` (TorchRec traces the model): the long branch's loss
    and the detached fusion train through the pipelined loop (the new losses are leaf modules the
    tracer does not enter)."""
    import json

    from hytrec_torchrec.config import to_dict
    from hytrec_torchrec.data.testing import random_sequences, write_prepared
    from hytrec_torchrec.runtime.config import JobConfig
    from hytrec_torchrec.testing import fit_job, run_distributed

    data = write_prepared(tmp_path / "prep", random_sequences(12, 40, 20, seed=3, min_events=8), num_items=20)
    job = to_dict(from_dict(JobConfig, {
        "run": {"dir": str(tmp_path / "run"), "seed": 1, "tensorboard": False, "progress": False},
        "data": {"path": str(data), "batch_size": 4, "num_negatives": 8, "max_len": 40, "all_positions": True,
                 "cutoffs_per_user": 1, "num_workers": 0, "seed": 2},
        "embeddings": {"dim": 8},
        "model": {"embedding_dim": 8, "short_len": 3, "long_pattern": "T", "heads": 2, "short_heads": 2,
                  "fusion": {"num_experts": 2, "long_detach": True}, "long_aux_weight": 0.5, "long_aux_window": 4,
                  "tadn": {"gating": "gated_delta", "chunk_size": 4}, "long_readout": "intent"},
        "train": {"max_steps": 2, "validate_every": 0, "checkpoint_every": 0, "val_batches": 1,
                  "pipeline": "sparse_dist"},
    }))
    run_distributed(fit_job, 1, (job,))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["step"] == 2
