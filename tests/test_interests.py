"""Interests by category: the per-category ops against naive per-user loops, the module's
all-position rows against its per-history forward, and the tower with interests (eager = scripted)."""

import math

import pytest
import torch

from hytrec_torchrec.config import from_dict
from hytrec_torchrec.modules.config import InterestConfig, TowerConfig
from hytrec_torchrec.modules.interests import CategoryInterests
from hytrec_torchrec.modules.tower import HyTRecTower
from hytrec_torchrec.ops.category import (
    category_groups,
    rank_keys,
    recent_sum,
    segmented_scan,
    segmented_scan_reference,
    top_categories_last,
    top_categories_rows,
)
from hytrec_torchrec.ops.jagged import lengths_to_offsets


def _batch(seed: int, lengths, num_cats: int = 6):
    g = torch.Generator().manual_seed(seed)
    offsets = lengths_to_offsets(torch.tensor(lengths, dtype=torch.int64))
    n = int(offsets[-1])
    cat = torch.randint(2, 2 + num_cats, (n,), generator=g)
    ts = torch.cumsum(torch.randint(1, 50_000, (n,), generator=g), 0)
    return g, offsets, cat, ts


def _naive_top(cat: torch.Tensor, start: int, r: int, half_life: float, m: int):
    """The top m categories of rows start..r by Σ 2^{-(r-i)/H}, and each one's latest row."""
    score, last = {}, {}
    for i in range(start, r + 1):
        c = int(cat[i])
        score[c] = score.get(c, 0.0) + 2.0 ** (-(r - i) / half_life)
        last[c] = i
    best = sorted(score, key=lambda c: -score[c])[:m]
    return [last[c] for c in best]


def test_groups_partition_rows_by_user_and_category():
    _, offsets, cat, _ = _batch(0, [7, 0, 12, 1])
    perm, goff, guser, grank = category_groups(cat, offsets)
    assert sorted(perm.tolist()) == list(range(int(offsets[-1])))
    for g in range(guser.numel()):
        rows = perm[goff[g]:goff[g + 1]]
        assert rows.tolist() == sorted(rows.tolist())  # time order within a group
        assert len(set(cat[rows].tolist())) == 1
        u = int(guser[g])
        assert bool(((rows >= offsets[u]) & (rows < offsets[u + 1])).all())
    # ranks count 0.. within each user
    for u in range(4):
        r = grank[guser == u].tolist()
        assert r == list(range(len(r)))


@pytest.mark.parametrize("lengths", [[1], [5, 9, 0, 33], [64, 3]])
def test_segmented_scan_equals_loop(lengths):
    g, offsets, cat, _ = _batch(1, lengths)
    _, goff, _, _ = category_groups(cat, offsets)
    n = int(offsets[-1])
    a = torch.rand(n, generator=g, dtype=torch.float64)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(segmented_scan(a, x, goff), segmented_scan_reference(a, x, goff))


def test_segmented_scan_gradient():
    g, offsets, cat, _ = _batch(2, [6, 11])
    _, goff, _, _ = category_groups(cat, offsets)
    n = int(offsets[-1])
    a = torch.rand(n, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a_, x_: segmented_scan(a_, x_, goff), (a, x))


def test_recent_sum_equals_loop():
    g, offsets, cat, _ = _batch(3, [20, 7])
    perm, goff, _, _ = category_groups(cat, offsets)
    x = torch.randn(int(offsets[-1]), 2, generator=g, dtype=torch.float64)
    got = recent_sum(x, goff, 3)
    for gi in range(goff.numel() - 1):
        for j in range(int(goff[gi]), int(goff[gi + 1])):
            lo = max(j - 2, int(goff[gi]))
            torch.testing.assert_close(got[j], x[lo:j + 1].sum(0))


@pytest.mark.parametrize("half_life", [3.0, 64.0])
def test_top_categories_rows_equal_naive_per_row(half_life):
    _, offsets, cat, _ = _batch(4, [40, 1, 25, 0, 60], num_cats=9)
    n = int(offsets[-1])
    perm, goff, guser, grank = category_groups(cat, offsets)
    pos = torch.arange(n) - offsets[:-1][torch.repeat_interleave(torch.arange(5), offsets[1:] - offsets[:-1])]
    keys_g = rank_keys(pos[perm], goff, half_life)
    keys_t = torch.zeros_like(keys_g).index_copy(0, perm, keys_g)
    rank_t = torch.zeros_like(cat).index_copy(0, perm, grank[torch.repeat_interleave(
        torch.arange(goff.numel() - 1), goff[1:] - goff[:-1])])
    m = 4
    rows, valid = top_categories_rows(rank_t, keys_t, offsets, int(rank_t.max()) + 1, m)
    for b in range(5):
        s, e = int(offsets[b]), int(offsets[b + 1])
        for r in range(s, e):
            want = _naive_top(cat, s, r, half_life, m)
            got = rows[r][valid[r]].tolist()
            assert got == want, (b, r)
    # the whole-history form equals the rows form at each history's last row
    last_rows, last_valid = top_categories_last(perm, goff, guser, grank, keys_g, 5, m)
    for b in range(5):
        if offsets[b + 1] > offsets[b]:
            r = int(offsets[b + 1]) - 1
            assert last_rows[b][last_valid[b]].tolist() == rows[r][valid[r]].tolist()
        else:
            assert not bool(last_valid[b].any())


@pytest.mark.parametrize("memory", ["delta", "mean"])
def test_module_rows_equal_forward_on_each_prefix(memory):
    torch.manual_seed(0)
    d = 8
    mod = CategoryInterests(InterestConfig(count=3, memory=memory, recent=2, half_life=4.0, chunk_size=4), d, 2, 0).eval()
    lengths = [13, 0, 6, 21]
    _, offsets, cat, ts = _batch(5, lengths, num_cats=5)
    n = int(offsets[-1])
    h = torch.randn(n, d, dtype=torch.float64)
    ce = torch.randn(n, d, dtype=torch.float64)
    mod = mod.double()
    rows_tok, rows_valid, rows_row = mod.forward_rows(h, ce, cat, offsets, ts)
    for b, length in enumerate(lengths):
        s = int(offsets[b])
        for k in range(1, length + 1):  # the prefix of the first k events of history b
            off = torch.tensor([0, k])
            sl = slice(s, s + k)
            tok, valid, trow = mod(h[sl], ce[sl], cat[sl], off, ts[sl])
            r = s + k - 1
            assert valid[0].tolist() == rows_valid[r].tolist()
            assert (trow[0][valid[0]] + s).tolist() == rows_row[r][rows_valid[r]].tolist()
            # the token sets are equal as sets: compare sorted by their first coordinate
            a = tok[0][valid[0]]
            c = rows_tok[r][rows_valid[r]]
            torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)


def _tower(count: int, memory: str = "delta") -> HyTRecTower:
    cfg = from_dict(TowerConfig, {"embedding_dim": 16, "short_len": 4, "heads": 2, "long_pattern": "T",
                                  "features": ["item", "category"], "repeat": False,
                                  "interests": {"count": count, "memory": memory, "recent": 3}})
    return HyTRecTower(cfg)


def test_tower_rows_equal_forward_and_script():
    torch.manual_seed(1)
    tower = _tower(3).eval()
    lengths = [9, 2, 17]
    _, offsets, cat, ts = _batch(6, lengths, num_cats=4)
    n = int(offsets[-1])
    feats = {"item": torch.randn(n, 16), "category": torch.randn(n, 16)}
    tc = ts[offsets[1:] - 1]
    rows, _ = tower.forward_all_positions(feats, offsets, ts, tc, category=cat)
    user = tower(feats, offsets, ts, tc, cat)
    torch.testing.assert_close(rows[offsets[1:] - 1], user, rtol=1e-5, atol=1e-5)
    scripted = torch.jit.script(tower)
    torch.testing.assert_close(scripted(feats, offsets, ts, tc, cat), user, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="category indices"):
        tower(feats, offsets, ts, tc)


def test_interests_change_the_user_embedding_and_get_gradients():
    torch.manual_seed(2)
    tower = _tower(2, "mean").train()
    _, offsets, cat, ts = _batch(7, [30, 12], num_cats=5)
    n = int(offsets[-1])
    feats = {"item": torch.randn(n, 16), "category": torch.randn(n, 16, requires_grad=True)}
    rows, _ = tower.forward_all_positions(feats, offsets, ts, ts[offsets[1:] - 1], category=cat)
    rows.sum().backward()
    assert feats["category"].grad is not None and float(feats["category"].grad.abs().sum()) > 0
    assert all(p.grad is not None for p in tower.interest_read.parameters())
    assert not math.isnan(float(rows.detach().sum()))


def test_config_needs_a_short_branch():
    from hytrec_torchrec.config import ConfigError
    with pytest.raises(ConfigError, match="interests.count"):
        from_dict(TowerConfig, {"short_len": 0, "long_pattern": "T", "long_readout": "last",
                                "interests": {"count": 2}})


def test_data_with_one_category_is_a_config_error_naming_it():
    from hytrec_torchrec.config import ConfigError
    from hytrec_torchrec.runtime.config import load_job_config
    from hytrec_torchrec.runtime.factory import check_categories

    cfg = load_job_config("configs/demo.yaml", ["model.interests.count=4"])
    with pytest.raises(ConfigError, match="category"):
        check_categories(cfg, {"category": 3})  # pad, unknown and one category
    check_categories(cfg, {"category": 4})
    off = load_job_config("configs/demo.yaml", [])
    check_categories(off, {"category": 3})  # no interests: nothing to check
