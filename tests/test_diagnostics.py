"""Long-history diagnostics (evaluation/diagnostics.py): a short-only tower is blind to its far
history (swap sensitivity, long contribution and far influence exactly 0), a tower with a long
branch is not; the influence is the projected Jacobian norm; hytrec-eval writes the section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from hytrec_torchrec.config import from_dict, to_dict
from hytrec_torchrec.evaluation.diagnostics import (DiagnosticsConfig, Example, TowerAccess, _far_swapped,
                                                    cosine_distance, run_diagnostics)
from hytrec_torchrec.modules import HyTRecTower, TowerConfig

FEATURES = ("item", "attribution", "category", "behavior")
T0 = 1_700_000_000
DIM = 16


def _cfg(pattern: str) -> TowerConfig:
    return from_dict(TowerConfig, dict(embedding_dim=DIM, short_len=4, heads=2, long_pattern=pattern,
                                       fusion=dict(num_experts=3), tadn=dict(chunk_size=8, decay_period=3600.0)))


def _access(tower: HyTRecTower, rows: int = 60) -> TowerAccess:
    gen = torch.Generator().manual_seed(1)
    tables = {f: torch.randn(rows, DIM, generator=gen) for f in FEATURES}
    return TowerAccess(tower.eval(), list(FEATURES), lambda f, idx: tables[f][idx], tables["item"],
                       torch.device("cpu"))


def _examples(lengths: List[int]) -> List[Example]:
    rng = np.random.default_rng(0)
    out = []
    for i, n in enumerate(lengths):
        ts = np.sort(rng.integers(T0, T0 + 50_000, size=n)).astype(np.int64)
        out.append(Example(key=i, user=i + 2, cutoff=n, t_current=T0 + 60_000,
                           ids={f: rng.integers(2, 60, size=n).astype(np.int64) for f in FEATURES},
                           timestamps=ts, segments=np.array([True, n >= 30])))
    return out


LENGTHS = [3, 4, 9, 30, 45, 12, 60, 7, 33, 5]
CFG = DiagnosticsConfig(users=16, distances=[10, 30], projections=2)


@pytest.mark.parametrize("pattern", ["", "TS"])
def test_short_only_tower_is_blind_to_the_far_history(pattern: str) -> None:
    torch.manual_seed(0)
    tower = HyTRecTower(_cfg(pattern))
    res = run_diagnostics(_access(tower), _examples(LENGTHS), ["all", "long"], CFG)
    o = res["overall"]
    k = 4
    assert res["status"] == "ok" and res["short_len"] == k and res["distances"] == [5, 10, 30]
    assert o["users"] == 10 and o["swap_skipped"] == 2 and o["swap_users"] == 8  # lengths 3, 4 <= K
    assert len(o["gate_mean"]) == 3 and sum(o["gate_mean"]) == pytest.approx(1.0, abs=1e-6)
    assert o["retention_users"] == {"5": 8, "10": 5, "30": 4}
    assert res["segments"]["long"]["users"] == 4
    if not pattern:  # no long branch: nothing before the last K events can matter, exactly
        assert o["swap_sensitivity"] == 0.0 and o["swap_top10_changed"] == 0.0
        assert o["swap_top10_overlap"] == 1.0
        assert o["long_contribution"] == 0.0 and o["long_top10_changed"] == 0.0
        assert o["influence"] == {"5": 0.0, "10": 0.0, "30": 0.0}
        assert o["retention"] == {"5": 0.0, "10": 0.0, "30": 0.0} and np.isnan(o["retention_after_500"])
        assert not res["has_long"]
    else:
        assert o["swap_sensitivity"] > 1e-6 and o["long_contribution"] > 1e-6
        assert all(v > 0 for v in o["influence"].values())
        assert o["retention"]["5"] == pytest.approx(1.0) and o["retention"]["30"] > 0
        assert res["segments"]["long"]["swap_sensitivity"] > 0 and res["has_long"]


def test_influence_is_the_projected_jacobian_norm() -> None:
    torch.manual_seed(0)
    tower = HyTRecTower(_cfg("TS")).eval()
    access = _access(tower)
    ex = _examples([20])
    cfg = DiagnosticsConfig(users=1, distances=[10], projections=2)
    res = run_diagnostics(access, ex, ["all"], cfg)
    feats = {f: access.lookup(f, torch.from_numpy(ex[0].ids[f])) for f in FEATURES}
    off = torch.tensor([0, 20])
    ts = torch.from_numpy(ex[0].timestamps)
    tc = torch.tensor([ex[0].t_current])
    proj = torch.randn(2, DIM, generator=torch.Generator().manual_seed(cfg.seed + 1))
    for d in (5, 10):
        row = 20 - d

        def user_of(x: torch.Tensor) -> torch.Tensor:  # x [F, D]: event `row`'s feature embeddings
            f2 = {f: torch.cat([feats[f][:row], x[i:i + 1], feats[f][row + 1:]]) for i, f in enumerate(FEATURES)}
            return tower(f2, off, ts, tc)[0]

        jac = torch.autograd.functional.jacobian(user_of, torch.stack([feats[f][row] for f in FEATURES]))
        want = ((torch.einsum("d,dfe->fe", proj[0], jac) ** 2).sum()
                + (torch.einsum("d,dfe->fe", proj[1], jac) ** 2).sum()).div(2).sqrt()
        assert res["overall"]["influence"][str(d)] == pytest.approx(float(want), rel=1e-4)


def test_swap_keeps_the_tail_and_time_order_and_distance_is_exact() -> None:
    a, b = _examples([9, 15])
    ids, ts = _far_swapped((a.ids, a.timestamps), (b.ids, b.timestamps), 4)
    assert len(ts) == 11 + 4
    np.testing.assert_array_equal(ids["item"][-4:], a.ids["item"][-4:])
    np.testing.assert_array_equal(ids["item"][:11], b.ids["item"][:11])
    np.testing.assert_array_equal(ts[-4:], a.timestamps[-4:])
    assert ts[10] == a.timestamps[4] and (np.diff(ts) >= 0).all()  # donor's last far event at a's
    u = torch.randn(5, 8)
    assert torch.equal(cosine_distance(u, u), torch.zeros(5, dtype=torch.float64))
    assert cosine_distance(u, -u).tolist() == pytest.approx([2.0] * 5)


# ---------------------------------------------------------------- ranks
def _tiny_access() -> TowerAccess:
    torch.manual_seed(0)
    return _access(HyTRecTower(_cfg("TS")))


def _gather_body(rank: int, world: int, out: str) -> None:
    """Each rank holds every other example; rank 0 gets the 6 smallest keys of all, runs, broadcasts."""
    from hytrec_torchrec.evaluation.diagnostics import ExampleSampler, collect_diagnostics

    cfg = DiagnosticsConfig(users=6, distances=[10])
    sampler = ExampleSampler(cfg, ["all", "long"])
    sampler.examples = [x for x in _examples(LENGTHS) if x.key % world == rank]
    res = collect_diagnostics(sampler, cfg, _tiny_access)  # called on rank 0 only
    Path(out, f"diag{rank}.json").write_text(json.dumps(res))


def test_two_ranks_sample_and_broadcast_like_one_process(tmp_path: Path) -> None:
    from hytrec_torchrec.testing import run_distributed

    run_distributed(_gather_body, 2, (str(tmp_path),))
    got = [json.loads(Path(tmp_path, f"diag{r}.json").read_text()) for r in range(2)]
    assert got[0] == got[1] and got[0]["users"] == 6
    want = run_diagnostics(_tiny_access(), _examples(LENGTHS)[:6], ["all", "long"],
                           DiagnosticsConfig(users=6, distances=[10]))
    assert json.loads(json.dumps(want["overall"])) == got[0]["overall"]


# ---------------------------------------------------------------- hytrec-eval end to end
def _cli_body(rank: int, world: int, argv: list, out: str) -> None:
    from hytrec_torchrec.evaluation.cli import main

    Path(out).write_text(str(main(argv)))


def test_hytrec_eval_writes_diagnostics(tmp_path: Path) -> None:
    from hytrec_torchrec.data.testing import random_sequences, write_prepared
    from hytrec_torchrec.testing import fit_job, run_distributed
    from hytrec_torchrec.runtime.config import JobConfig

    data = write_prepared(tmp_path / "prep", random_sequences(14, 60, 40, seed=4, min_events=3), num_items=40)
    job = to_dict(from_dict(JobConfig, {
        "run": {"dir": str(tmp_path / "run"), "seed": 1, "tensorboard": False, "progress": False},
        "data": {"path": str(data), "batch_size": 4, "num_negatives": 8, "max_len": 40, "num_workers": 0},
        "embeddings": {"dim": 16, "lr": 0.05, "init_std": 0.1},
        "model": {"embedding_dim": 16, "short_len": 4, "long_pattern": "TS", "heads": 2, "short_heads": 2,
                  "fusion": {"num_experts": 2}},
        "train": {"max_steps": 1, "validate_every": 0, "checkpoint_every": 0, "pipeline": "plain"},
    }))
    run_distributed(fit_job, 1, (job,))
    from hytrec_torchrec.serving.export import export_checkpoint

    export_checkpoint(tmp_path / "run", tmp_path / "export", pt2=False)
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(tmp_path / "run"), "--checkpoint", str(tmp_path / "run"), "--name", "a",
            "--name", "b", "--model", str(tmp_path / "export" / "model.pt"), "--name", "exported",
            "--data", str(data), "--out", str(out), "segments.length_buckets=[1,20]",
            "diagnostics.users=10", "diagnostics.distances=[10,30]", "threads=1"]
    run_distributed(_cli_body, 1, (argv, str(tmp_path / "rc")))
    assert (tmp_path / "rc").read_text() == "0"
    doc = json.loads((out / "metrics.json").read_text())
    d = doc["models"]["a"]["diagnostics"]
    assert doc["diagnostics"] == d and doc["models"]["b"]["diagnostics"]["overall"] == d["overall"]
    assert d["status"] == "ok" and d["users"] == 10 and d["short_len"] == 4 and d["has_long"]
    o = d["overall"]
    assert o["users"] == 10 and o["swap_users"] + o["swap_skipped"] == 10
    assert o["swap_sensitivity"] > 0 and o["influence"]["5"] > 0 and len(o["gate_mean"]) == 2
    assert set(d["segments"]) <= {"cold_start", "silent_old", "ultra_long", "len[1,20)", "len[20,inf)"}
    assert doc["config"]["diagnostics"]["users"] == 10
    # the exported model (its own tables and scripted tower) gives the checkpoint's diagnostics
    e = doc["models"]["exported"]["diagnostics"]
    assert e["status"] == "ok" and not e["notes"]
    for key in ("swap_sensitivity", "long_contribution", "swap_top10_changed"):
        assert e["overall"][key] == pytest.approx(o[key], abs=1e-5), key
    assert e["overall"]["gate_mean"] == pytest.approx(o["gate_mean"], abs=1e-5)
    assert e["overall"]["influence"]["5"] == pytest.approx(o["influence"]["5"], rel=1e-4)
    report = (out / "report.md").read_text()
    section = report.split("## Long-history diagnostics", 1)[1].split("## Counts", 1)[0]
    assert "means the model ignores events older than the last K" in section
    assert "| a | 4 | yes | 10 |" in section and "| b | 4 | yes | 10 |" in section and "| exported | 4 | yes | 10 |" in section
    assert "retention(10)" in section and "retention(30)" in section
    # a model the diagnostics cannot open is skipped with the reason, the evaluation goes on
    from hytrec_torchrec.evaluation.diagnostics import ExampleSampler, checkpoint_access, collect_diagnostics

    cfg = DiagnosticsConfig(users=4, max_table_gb=0.0)
    sampler = ExampleSampler(cfg, ["all"])
    sampler.examples = _examples([9, 12])
    res = collect_diagnostics(
        sampler, cfg, lambda: checkpoint_access(str(tmp_path / "run"), (), torch.device("cpu"), cfg.max_table_gb))
    assert res["status"] == "skipped" and "more than diagnostics.max_table_gb=0" in res["reason"]
    assert collect_diagnostics(None, DiagnosticsConfig(users=0), _tiny_access)["status"] == "disabled"


def test_the_repeat_path_shows_in_the_top10_not_in_the_embedding() -> None:
    """A short-only tower with the repeat path: the user embedding ignores the far history
    (swap sensitivity 0) but the final scores do not (the bonus of far items): the top-10 lists
    rank dot product + bonus, so far history read by the path is visible; a zero (untrained) head
    changes nothing."""
    from hytrec_torchrec.evaluation.diagnostics import _bonus, _topk
    from hytrec_torchrec.modules.repeat import RepeatHead

    torch.manual_seed(0)
    tower = HyTRecTower(_cfg(""))
    head = RepeatHead(DIM)
    access = _access(tower)
    access.repeat = head.eval()
    examples = _examples(LENGTHS)
    zero = run_diagnostics(access, examples, ["all", "long"], CFG)
    assert zero["repeat"] and zero["overall"]["swap_top10_changed"] == 0.0
    with torch.no_grad():
        for table in (head.count, head.distance, head.time):
            table.weight.normal_(0, 3.0)
    res = run_diagnostics(access, examples, ["all", "long"], CFG)
    o = res["overall"]
    assert o["swap_sensitivity"] == 0.0 and o["long_contribution"] == 0.0
    assert o["swap_top10_changed"] > 0 and o["long_top10_changed"] > 0
    # the top-10 is the brute-force top-10 of dot product + dense bonus
    hist = [(x.ids, x.timestamps) for x in examples]
    users = torch.randn(len(hist), DIM)
    bonus = _bonus(access, hist, users)
    dense = users @ access.items.t()
    dense.index_put_((bonus[0], bonus[1]), bonus[2], accumulate=True)
    want = torch.topk(dense[:, 2:], 10, dim=1).indices + 2
    assert torch.equal(_topk(users, access.items, 10, bonus), want)
