"""The repeat path (``model.repeat``, hytrec_torchrec.modules.repeat): pair enumeration against a
dictionary walk, exactness in all-position training, the losses with a bonus against dense
references, full-catalog ranks with a bonus against dense scores, and the served model (eager and
TorchScript) against the training model's scores plus a bonus computed by hand. The 2-rank
sharded = unsharded check with the repeat path is in tests/test_train_distributed.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hytrec_torchrec.config import from_dict, to_dict
from hytrec_torchrec.ranking.ranks import target_ranks
from hytrec_torchrec.modules.loss import catalog_softmax_loss, sampled_softmax_loss, shared_negatives_loss
from hytrec_torchrec.modules.repeat import RepeatHead, dense_bonus, lookup_bonus
from hytrec_torchrec.ops.repeat import repeat_pairs, repeat_pairs_reference

T0 = 1_700_000_000
LENGTHS = [9, 0, 1, 14, 5, 30]


def _history(lengths: list[int], num_items: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    offsets = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    items = torch.randint(0, num_items, (n,), generator=g)  # includes padding 0 and unknown 1
    ts = T0 + torch.randint(0, 200_000, (n,), generator=g).sort().values
    return items, offsets, ts


def _randomised_head(dim: int, seed: int = 0, **kw: int) -> RepeatHead:
    torch.manual_seed(seed)
    head = RepeatHead(dim, **kw)
    for p in head.parameters():
        torch.nn.init.normal_(p)
    return head


@pytest.mark.parametrize("queries", ["every_row", "last_row", "last_3"])
def test_pairs_equal_a_dictionary_walk(queries: str) -> None:
    items, offsets, _ = _history(LENGTHS)
    first = {"every_row": offsets[:-1], "last_row": offsets[1:] - 1,
             "last_3": torch.maximum(offsets[:-1], offsets[1:] - 3)}[queries]
    got = sorted(zip(*[t.tolist() for t in repeat_pairs(items, offsets, first)]))
    want = sorted(zip(*[t.tolist() for t in repeat_pairs_reference(items, offsets, first)]))
    assert got == want and len(got) > 10
    for q, j, occ in got:  # the source is the last occurrence, never after the query
        assert j <= q and items[j] >= 2 and occ >= 1


def test_a_new_head_adds_nothing() -> None:
    items, offsets, ts = _history(LENGTHS)
    _, _, bonus = RepeatHead(8)(torch.randn(len(LENGTHS), 8), items, offsets, ts)[:3]
    assert bonus.numel() > 0 and torch.equal(bonus, torch.zeros_like(bonus))


def test_every_row_gets_the_bonus_of_its_own_prefix() -> None:
    items, offsets, ts = _history(LENGTHS, seed=1)
    head = _randomised_head(8)
    user = torch.randn(int(offsets[-1]), 8)
    q, it, v = head(user, items, offsets, ts, True)[:3]
    for b in range(len(LENGTHS)):
        s = int(offsets[b])
        for r in range(s, int(offsets[b + 1])):
            q2, it2, v2 = head(user[r:r + 1], items[s:r + 1], torch.tensor([0, r + 1 - s]), ts[s:r + 1], False)[:3]
            assert torch.equal(q2, torch.zeros_like(q2))
            got = dict(zip(it[q == r].tolist(), v[q == r].tolist()))
            want = dict(zip(it2.tolist(), v2.tolist()))
            assert got.keys() == want.keys()
            for k in got:
                assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-4)  # float32 sums of terms ~20


def test_train_rows_limit_the_rows_that_get_a_bonus() -> None:
    items, offsets, ts = _history(LENGTHS, seed=2)
    user = torch.randn(int(offsets[-1]), 8)
    full = _randomised_head(8)
    part = _randomised_head(8, train_rows=3)
    q, it, v = full(user, items, offsets, ts, True)[:3]
    q3, it3, v3 = part(user, items, offsets, ts, True)[:3]
    ends = offsets[1:][torch.searchsorted(offsets, q3, right=True) - 1]
    assert bool((q3 >= ends - 3).all())
    keep = torch.isin(q, q3)
    assert sorted(zip(q[keep].tolist(), it[keep].tolist())) == sorted(zip(q3.tolist(), it3.tolist()))


def _hand_bonus(head: RepeatHead, user: torch.Tensor, items: list[int], ts: list[int]) -> dict[int, float]:
    """The module docstring's formula for one history, written out with Python arithmetic."""
    w = {name: getattr(head, name).weight.detach() for name in ("count", "distance", "time")}
    p = head.intent(user).detach()
    out: dict[int, float] = {}
    last = len(items) - 1
    for it in set(items):
        if it < 2:
            continue
        j = max(i for i, x in enumerate(items) if x == it)
        count = sum(1 for x in items[:j + 1] if x == it)
        cb = min(int(math.floor(2 * math.log2(count))), 15)
        db = min(int(math.floor(2 * math.log2(last - j + 1))), 31)
        tb = min(int(math.floor(2 * math.log2(1 + ts[last] - ts[j]))), 63)
        f = w["count"][cb] + w["distance"][db] + w["time"][tb]
        out[it] = float(f[0] + (p * f[1:]).sum())
    return out


def test_the_bonus_follows_its_formula() -> None:
    items, offsets, ts = _history(LENGTHS, seed=3)
    head = _randomised_head(8)
    user = torch.randn(len(LENGTHS), 8)
    q, it, v = head(user, items, offsets, ts)[:3]
    for b in range(len(LENGTHS)):
        s, e = int(offsets[b]), int(offsets[b + 1])
        want = _hand_bonus(head, user[b], items[s:e].tolist(), ts[s:e].tolist()) if e > s else {}
        got = dict(zip(it[q == b].tolist(), v[q == b].tolist()))
        assert got.keys() == want.keys()
        for k in got:
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-4)


def test_dense_and_lookup_bonus_agree() -> None:
    items, offsets, ts = _history(LENGTHS, seed=4)
    bonus = _randomised_head(8)(torch.randn(len(LENGTHS), 8), items, offsets, ts)[:3]
    cands = torch.tensor([2, 5, 3, 5, 7, 1])  # repeats and the unknown item
    dense = dense_bonus(bonus, len(LENGTHS), cands)
    qq = torch.arange(len(LENGTHS)).repeat_interleave(cands.numel())
    assert torch.equal(lookup_bonus(bonus, qq, cands.repeat(len(LENGTHS))).view(len(LENGTHS), -1), dense)
    assert int((dense != 0).sum()) > 0 and bool((dense[:, 5] == 0).all())


def _dense(bonus, rows: int, num_items: int) -> torch.Tensor:
    out = torch.zeros(rows, num_items)
    out[bonus[0], bonus[1]] = bonus[2]
    return out


def test_losses_with_a_bonus_equal_the_dense_softmax() -> None:
    torch.manual_seed(0)
    num_items, d, tau = 12, 8, 0.5
    items, offsets, ts = _history(LENGTHS, num_items=num_items, seed=5)
    n = int(offsets[-1])
    user = torch.randn(n, d)
    catalog = torch.randn(num_items - 2, d)
    pos = torch.randint(2, num_items, (n,))
    bonus = _randomised_head(d)(user, items, offsets, ts, True)[:3]
    logits = (user @ catalog.t() + _dense(bonus, n, num_items)[:, 2:]) / tau
    want = F.cross_entropy(logits, pos - 2)
    torch.testing.assert_close(catalog_softmax_loss(user, pos, catalog, tau, bonus), want)
    negs = torch.arange(2, num_items)
    shared = shared_negatives_loss(user, pos, catalog[pos - 2], negs, catalog, -math.log(num_items - 2), tau,
                                   pos_bonus=lookup_bonus(bonus, torch.arange(n), pos),
                                   neg_bonus=dense_bonus(bonus, n, negs))
    torch.testing.assert_close(shared, want)


def test_per_example_loss_with_a_bonus_equals_the_dense_softmax() -> None:
    torch.manual_seed(1)
    num_items, d, tau = 12, 8, 0.5
    items, offsets, ts = _history(LENGTHS, num_items=num_items, seed=6)
    B = len(LENGTHS)
    user = torch.randn(B, d)
    catalog = torch.randn(num_items, d)
    target = torch.randint(2, num_items, (B,))
    bonus = _randomised_head(d)(user, items, offsets, ts)[:3]
    negs = torch.arange(2, num_items)
    loss = sampled_softmax_loss(user=user, pos_ids=target, pos_emb=catalog[target],
                                target_to_example=torch.arange(B), pos_log_q=torch.zeros(B), neg_ids=negs,
                                neg_emb=catalog[negs], neg_log_q=-math.log(num_items - 2), temperature=tau,
                                in_batch=False, example_bonus=dense_bonus(bonus, B, torch.cat([target, negs])))
    logits = (user @ catalog[2:].t() + _dense(bonus, B, num_items)[:, 2:]) / tau
    torch.testing.assert_close(loss, F.cross_entropy(logits, target - 2))


def test_ranks_with_a_bonus_equal_ranks_of_dense_scores() -> None:
    torch.manual_seed(2)
    num_items, d = 40, 6
    items, offsets, ts = _history(LENGTHS, num_items=num_items, seed=7)
    B = len(LENGTHS)
    user = torch.randn(B, d)
    table = torch.randn(num_items, d)
    head = _randomised_head(d)
    bonus = head(user, items, offsets, ts)[:3]
    bonus = (bonus[0], bonus[1], bonus[2] * 3.0)  # large enough to reorder the catalog
    hist_last = [int(items[int(offsets[b + 1]) - 1]) if offsets[b + 1] > offsets[b] else 5 for b in range(B)]
    targets = torch.tensor([max(t, 2) for t in hist_last])  # targets that are history items
    scores = user @ table.t() + _dense(bonus, B, num_items)
    want = torch.tensor([1 + int(((scores[b, 2:] >= scores[b, targets[b]]).sum()) - 1) for b in range(B)])
    blocks = [(0, 0, table[:17]), (17, 0, table[17:])]  # two row blocks, as two shards would hold
    assert torch.equal(target_ranks(user, targets, blocks, num_items, bonus=bonus), want)
    without = target_ranks(user, targets, blocks, num_items)
    assert not torch.equal(without, want)  # the bonus changed some ranks


def test_served_scores_equal_training_scores_plus_the_hand_bonus() -> None:
    """A model with the repeat path → the serving module, eager and scripted: scores are the
    training model's ``user · item`` plus :func:`_hand_bonus` of each request's history."""
    from hytrec_torchrec.serving.export import build_serving
    from hytrec_torchrec.serving.idmap import Vocab
    from hytrec_torchrec.runtime.config import JobConfig
    from hytrec_torchrec.runtime.factory import build_model

    V, max_len = 20, 16
    cfg = from_dict(JobConfig, {
        "data": {"path": "unused", "max_len": max_len},
        "embeddings": {"dim": 8},
        "model": {"embedding_dim": 8, "features": ["item"], "short_len": 4, "long_pattern": "T", "heads": 2,
                  "short_heads": 2, "similarity": "cosine", "repeat": True, "fusion": {"num_experts": 2},
                  # the additive scorer without cycle features: the one _hand_bonus writes out (the
                  # default's served parity: test_repeat_cycles.py::test_served_scores_read_the_request_behaviours)
                  "repeat_cycles": False, "repeat_scorer": "additive",
                  "tadn": {"chunk_size": 4, "gating": "gated_delta"}, "long_readout": "intent"},
    })
    sizes = {"item": V, "attribution": 5, "category": 5, "behavior": 11}
    model = build_model(cfg, sizes, torch.device("cpu")).eval()
    with torch.no_grad():
        for p in model.repeat.parameters():
            p.normal_()
    vocabs = {"item": Vocab("item", V, [str(i) for i in range(2, V)], np.arange(2, V))}
    eager = build_serving(model, ["item"], max_len, vocabs)
    scripted = torch.jit.script(eager)
    lengths = [7, 0, 25, 3]  # 25 > max_len: the served model keeps the last 16 events
    items, offsets, ts = _history(lengths, num_items=V, seed=8)
    items = items.clamp(min=2)
    values = {"item": items, "timestamp": ts}
    lens = torch.tensor(lengths)
    request = (values, {k: lens for k in values}, torch.full((len(lengths),), T0 + 300_000))
    user = eager.user_embedding(*request)
    base = user @ eager.item_embeddings().t()
    for served in (eager, scripted):
        got = served.scores(*request)
        for b in range(len(lengths)):
            s, e = int(offsets[b]), int(offsets[b + 1])
            s = max(s, e - max_len)
            want = base[b].clone()
            if e > s:
                for it, v in _hand_bonus(model.repeat, user[b], items[s:e].tolist(), ts[s:e].tolist()).items():
                    want[it] += v
            torch.testing.assert_close(got[b, 2:], want[2:], atol=1e-5, rtol=0)
    ids, _ = scripted(*request, 3)
    assert ids.shape == (len(lengths), 3)
    # the diagnostics read the scripted model's repeat head as they read the eager one
    from hytrec_torchrec.evaluation.diagnostics import _bonus, exported_access

    card = {"config": {"model": to_dict(cfg.model)}}
    access = exported_access(scripted, card, {"item": torch.arange(V)})
    assert access.repeat is not None
    hist = [({"item": items[int(offsets[b]):int(offsets[b + 1])][-max_len:].numpy()},
             ts[int(offsets[b]):int(offsets[b + 1])][-max_len:].numpy()) for b in range(len(lengths))]
    ex, item, value = _bonus(access, hist, user)
    dense = torch.zeros(len(lengths), V).index_put_((ex, item), value, accumulate=True)
    torch.testing.assert_close(base[:, 2:] + dense[:, 2:], scripted.scores(*request)[:, 2:], atol=1e-5, rtol=0)


def test_the_summed_lookup_and_its_gradient_equal_table_by_table_sums() -> None:
    """The repeat path's training lookup (one embedding_bag forward, one index_add per table
    backward) against the plain sum of ``table[index]`` per table, values and gradients."""
    from hytrec_torchrec.modules.repeat import _SummedLookup

    g = torch.Generator().manual_seed(3)
    tables = [torch.randn(rows, 6, generator=g, dtype=torch.float64, requires_grad=True) for rows in (4, 9, 2)]
    idx = [torch.randint(0, t.shape[0], (50,), generator=g) for t in tables]
    shifted = torch.stack([idx[0], idx[1] + 4, idx[2] + 13], 1)
    got = _SummedLookup.apply(shifted, *tables)
    want = sum(t[i] for t, i in zip(tables, idx))
    torch.testing.assert_close(got, want)
    weight = torch.randn(50, 6, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * weight).sum(), tables)
    want_grads = torch.autograd.grad((want * weight).sum(), tables)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda *ts: _SummedLookup.apply(shifted, *ts), tuple(tables))
