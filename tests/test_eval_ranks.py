"""Full-catalog ranks and ranking metrics against slow NumPy references, and sharded == unsharded."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hytrec_torchrec.ranking.metrics import metric_names, per_example_metrics, ranking_metrics
from hytrec_torchrec.ranking.ranks import target_ranks, target_ranks_distributed
from hytrec_torchrec.testing import run_distributed


def _np_ranks(user: np.ndarray, table: np.ndarray, targets: np.ndarray) -> np.ndarray:
    out = []
    for u, t in zip(user, targets):
        s = table @ u
        beats = sum(1 for j in range(2, len(table)) if j != t and s[j] >= s[t])
        out.append(1 + beats)
    return np.array(out)


def _np_metrics(ranks: np.ndarray, ks: tuple[int, ...], catalog: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = float(np.mean([1.0 if r <= k else 0.0 for r in ranks]))
        out[f"ndcg@{k}"] = float(np.mean([1.0 / math.log2(r + 1) if r <= k else 0.0 for r in ranks]))
    out["mrr"] = float(np.mean([1.0 / r for r in ranks]))
    out["auc"] = float(np.mean([1.0 - (r - 1) / (catalog - 1) for r in ranks]))
    return out


def _case(seed: int = 0, B: int = 13, V: int = 57, D: int = 8):
    g = torch.Generator().manual_seed(seed)
    user = torch.randn(B, D, generator=g)
    table = torch.randn(V, D, generator=g)
    targets = torch.randint(2, V, (B,), generator=g)
    return user, table, targets


def test_ranks_and_metrics_match_numpy() -> None:
    user, table, targets = _case()
    ranks = target_ranks(user, targets, [(0, 0, table)], num_items=table.shape[0])
    ref = _np_ranks(user.double().numpy(), table.double().numpy(), targets.numpy())
    np.testing.assert_array_equal(ranks.numpy(), ref)
    ks = (1, 10, 50)
    got = ranking_metrics(ranks, ks, catalog_size=table.shape[0] - 2)
    want = _np_metrics(ref, ks, table.shape[0] - 2)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


def test_metric_names_are_the_computed_metrics() -> None:
    """The names the reports and config checks use are exactly those computed, in report order."""
    ks = (1, 10, 50)
    names = metric_names(ks)
    assert sorted(names) == sorted(per_example_metrics(torch.tensor([1, 4]), ks, 100))
    assert names[:3] == ["hr@1", "hr@10", "hr@50"] and names[-2:] == ["mrr", "auc"]


def test_perfect_scorer_and_ties() -> None:
    V, D = 20, 20
    table = torch.eye(V, D)
    targets = torch.tensor([2, 5, 19])
    user = table[targets] * 3.0  # target scores 3, every other item 0
    ranks = target_ranks(user, targets, [(0, 0, table)], num_items=V)
    assert ranks.tolist() == [1, 1, 1]
    m = ranking_metrics(ranks, (1,), catalog_size=V - 2)
    assert m["hr@1"] == 1.0 and m["auc"] == 1.0
    # all scores equal: ties count against the target (worst rank = catalog size)
    flat = target_ranks(torch.zeros(3, D), targets, [(0, 0, table)], num_items=V)
    assert flat.tolist() == [V - 2] * 3


def test_column_split_blocks_equal_whole() -> None:
    user, table, targets = _case(1)
    whole = target_ranks(user, targets, [(0, 0, table)], table.shape[0])
    halves = [(0, 0, table[:, :4]), (0, 4, table[:, 4:])]
    np.testing.assert_array_equal(target_ranks(user, targets, halves, table.shape[0]).numpy(),
                                  whole.numpy())


def _sharded_body(rank: int, world: int, out: str, mode: str) -> None:
    user, table, targets = _case(2, B=10)
    mine = slice(rank * 5, rank * 5 + 5)
    V = table.shape[0]
    if mode == "row":
        cut = 23
        blocks = [(0, 0, table[:cut])] if rank == 0 else [(cut, 0, table[cut:])]
    else:
        blocks = [(0, 0, table[:, :3])] if rank == 0 else [(0, 3, table[:, 3:])]
    ranks = target_ranks_distributed(user[mine], targets[mine], blocks, V)
    torch.save(ranks, Path(out) / f"r{rank}.pt")


@pytest.mark.parametrize("mode", ["row", "column"])
def test_two_rank_sharded_ranks_equal_single_process(tmp_path: Path, mode: str) -> None:
    run_distributed(_sharded_body, 2, (str(tmp_path), mode))
    user, table, targets = _case(2, B=10)
    want = target_ranks(user, targets, [(0, 0, table)], table.shape[0])
    got = torch.cat([torch.load(tmp_path / f"r{r}.pt") for r in range(2)])
    np.testing.assert_array_equal(got.numpy(), want.numpy())
