"""Cycles and the gate in the repeat path (``model.repeat_cycles``, ``model.repeat_gate``):
per-row cycle statistics against a dictionary walk, the due ratio's buckets on a history built by
hand, exactness in all-position training (row r reads rows <= r only), the scripted head against
the eager one, the gate's target, the behaviour mapping of the data config, and the served model
reading request behaviours."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hytrec_torchrec.config import ConfigError, from_dict
from hytrec_torchrec.modules.repeat import RATIO_BUCKETS, RepeatHead, _ratio_bucket, in_history
from hytrec_torchrec.ops.repeat import cycle_rows, cycle_rows_reference, repeat_pairs

T0 = 1_700_000_000
LENGTHS = [9, 0, 1, 14, 5, 30]


def _history(lengths: list[int], num_items: int = 8, seed: int = 0, behaviors: int = 3):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    offsets = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    items = torch.randint(0, num_items, (n,), generator=g)
    ts = T0 + torch.randint(0, 200_000, (n,), generator=g).sort().values
    beh = torch.randint(0, behaviors, (n,), generator=g)
    return items, offsets, ts, beh


def _head(dim: int = 8, seed: int = 0, **kw) -> RepeatHead:
    torch.manual_seed(seed)
    head = RepeatHead(dim, cycles=True, gate=True, cycle_behaviors=torch.tensor([False, True, False]), **kw)
    for p in head.parameters():
        torch.nn.init.normal_(p)
    return head


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cycle_rows_equal_a_dictionary_walk(seed: int) -> None:
    items, offsets, _, beh = _history(LENGTHS, num_items=5, seed=seed)
    cycle = beh == 1
    got = cycle_rows(items, offsets, cycle)
    want = cycle_rows_reference(items, offsets, cycle)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert int((got[0] >= 2).sum()) > 3  # some items have a gap to measure


def test_cycle_rows_of_an_empty_batch() -> None:
    e = torch.zeros(0, dtype=torch.int64)
    count, last, first = cycle_rows(e, torch.tensor([0, 0]), torch.zeros(0, dtype=torch.bool))
    assert count.numel() == last.numel() == first.numel() == 0


def test_the_due_ratio_is_elapsed_over_the_mean_gap() -> None:
    """Item 5 bought at rows 0, 100, 200 (views of it at 150 and 250 do not reset its cycle),
    asked at row 300: 100 events since the last purchase over a mean gap of 100 → ratio 1."""
    n = 301
    items = torch.full((n,), 7, dtype=torch.int64)
    items[::2] = 6
    beh = torch.zeros(n, dtype=torch.int64)
    for r in (0, 100, 200):
        items[r], beh[r] = 5, 1
    for r in (150, 250):
        items[r], beh[r] = 5, 0
    offsets = torch.tensor([0, n])
    ts = T0 + 60 * torch.arange(n)
    count, last, first = cycle_rows(items, offsets, beh == 1)
    assert (int(count[250]), int(last[250]), int(first[250])) == (3, 200, 0)
    q = torch.tensor([300])
    ratio = _ratio_bucket((q - last[250]) * (count[250] - 1), last[250] - first[250], torch.tensor([True]))
    assert int(ratio) == 16  # log2(1) = 0 → the middle bucket
    half = _ratio_bucket(torch.tensor([50 * 2]), torch.tensor([200]), torch.tensor([True]))
    assert int(half) == 12  # ratio 1/2 → 4·(−1) + 16
    unknown = _ratio_bucket(torch.tensor([5]), torch.tensor([0]), torch.tensor([True]))
    assert int(unknown) == RATIO_BUCKETS - 1
    # the head reads exactly these buckets: only the due-events table differs from zero
    head = RepeatHead(4, cycles=True, cycle_behaviors=torch.tensor([False, True]))
    with torch.no_grad():
        head.due_events.weight[16, 0] = 1.0
    qr, it, v = head(torch.zeros(1, 4), items, offsets, ts, False, beh)[:3]
    bonus = dict(zip(it.tolist(), v.tolist()))
    assert bonus[5] == 1.0 and bonus[6] == 0.0 and bonus[7] == 0.0
    # without the behaviour mapping the views count too: the last event of item 5 is row 250
    head.cycle_behaviors = torch.zeros(0, dtype=torch.bool)
    _, it, v = head(torch.zeros(1, 4), items, offsets, ts, False, beh)[:3]
    assert dict(zip(it.tolist(), v.tolist()))[5] == 0.0


@pytest.mark.parametrize("scorer", ["additive", "mlp"])
def test_every_row_gets_the_bonus_and_gate_of_its_own_prefix(scorer: str) -> None:
    items, offsets, ts, beh = _history(LENGTHS, seed=5)
    head = _head(scorer=scorer)
    user = torch.randn(int(offsets[-1]), 8)
    q, it, v, gate = head(user, items, offsets, ts, True, beh)
    for b in range(len(LENGTHS)):
        s = int(offsets[b])
        for r in range(s, int(offsets[b + 1])):
            one = torch.tensor([0, r + 1 - s])
            q2, it2, v2, g2 = head(user[r:r + 1], items[s:r + 1], one, ts[s:r + 1], False, beh[s:r + 1])
            got = dict(zip(it[q == r].tolist(), v[q == r].tolist()))
            want = dict(zip(it2.tolist(), v2.tolist()))
            assert got.keys() == want.keys()
            for k in got:
                assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-4)
            assert float(gate[r]) == pytest.approx(float(g2[0]), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("scorer", ["additive", "mlp"])
def test_the_scripted_head_equals_the_eager_one(scorer: str) -> None:
    items, offsets, ts, beh = _history(LENGTHS, seed=6)
    head = _head(seed=1, scorer=scorer)
    scripted = torch.jit.script(head)
    for all_positions in (False, True):
        user = torch.randn(int(offsets[-1]) if all_positions else len(LENGTHS), 8)
        for a, b in zip(head(user, items, offsets, ts, all_positions, beh),
                        scripted(user, items, offsets, ts, all_positions, beh)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("scorer", ["additive", "mlp"])
def test_a_new_head_with_cycles_and_gate_adds_nothing(scorer: str) -> None:
    items, offsets, ts, beh = _history(LENGTHS, seed=7)
    head = RepeatHead(8, cycles=True, gate=True, scorer=scorer)
    _, _, bonus = head(torch.randn(len(LENGTHS), 8), items, offsets, ts, False, beh)[:3]
    assert bonus.numel() > 0 and torch.equal(bonus, torch.zeros_like(bonus))


def test_the_mlp_scorer_is_a_hidden_layer_over_the_summed_tables() -> None:
    """``f = W_2 · relu(Σ tables + b_1) + b_2``: with H = 1+R, tables copied from an additive head,
    ``W_2 = I`` and ``b_1`` large enough that relu passes everything, the mlp head's bonus equals
    the additive head's (and ``b_2`` shifts f_0, the bonus, by exactly itself); with ``b_1`` pushing
    every sum below zero, relu cuts it and only ``b_2`` is left."""
    items, offsets, ts, beh = _history(LENGTHS, seed=11)
    torch.manual_seed(2)
    mask = torch.tensor([False, True, False])
    additive = RepeatHead(8, cycles=True, cycle_behaviors=mask)
    for p in additive.parameters():
        torch.nn.init.normal_(p)
    mlp = RepeatHead(8, cycles=True, cycle_behaviors=mask, scorer="mlp", hidden=5)
    mlp.load_state_dict({**additive.state_dict(), "hidden_bias": torch.full((5,), 100.0),
                         "out.weight": torch.eye(5), "out.bias": torch.tensor([0.5, 0, 0, 0, 0])}, strict=True)
    user = torch.randn(len(LENGTHS), 8)
    q1, it1, v1, _ = additive(user, items, offsets, ts, False, beh)
    q2, it2, v2, _ = mlp(user, items, offsets, ts, False, beh)
    assert torch.equal(q1, q2) and torch.equal(it1, it2)
    torch.testing.assert_close(v2, v1 + 100.0 * (1 + mlp.intent(user)[q1].sum(-1)) + 0.5, rtol=1e-4, atol=1e-3)
    with torch.no_grad():
        mlp.hidden_bias.fill_(-1e4)
    _, _, v3, _ = mlp(user, items, offsets, ts, False, beh)
    torch.testing.assert_close(v3, torch.full_like(v3, 0.5))


def test_the_gate_target_is_membership_in_the_history() -> None:
    items, offsets, ts, beh = _history(LENGTHS, seed=8)
    head = _head()
    bonus = head(torch.randn(len(LENGTHS), 8), items, offsets, ts, False, beh)[:3]
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 8, (len(LENGTHS),), generator=g)
    got = in_history(bonus, torch.arange(len(LENGTHS)), target)
    for b in range(len(LENGTHS)):
        hist = set(x for x in items[int(offsets[b]):int(offsets[b + 1])].tolist() if x >= 2)
        assert bool(got[b]) == (int(target[b]) in hist)


def test_pairs_are_unchanged_by_the_cycle_features() -> None:
    """The cycle features change bonus values, never which (query, item) pairs get one."""
    items, offsets, ts, beh = _history(LENGTHS, seed=9)
    user = torch.randn(len(LENGTHS), 8)
    q1, it1, _ = RepeatHead(8)(user, items, offsets, ts)[:3]
    q2, it2, _ = _head()(user, items, offsets, ts, False, beh)[:3]
    assert sorted(zip(q1.tolist(), it1.tolist())) == sorted(zip(q2.tolist(), it2.tolist()))
    q, s, _ = repeat_pairs(items, offsets, offsets[1:] - 1)
    assert q.numel() == q1.numel()


def test_cycle_behaviors_come_from_the_behaviour_vocabulary(tmp_path) -> None:
    from hytrec_torchrec.runtime.factory import read_cycle_behaviors

    (tmp_path / "vocab").mkdir()
    pq.write_table(pa.table({"raw": pa.array(["click", "pay", "cart"]), "index": pa.array([2, 3, 4])}),
                   tmp_path / "vocab" / "behavior.parquet")
    mask = read_cycle_behaviors(tmp_path, ["pay", "cart"], 5)
    assert mask.tolist() == [False, False, False, True, True]
    assert read_cycle_behaviors(tmp_path, [], 5) is None
    with pytest.raises(ConfigError, match=r"data.cycle_behaviors: 'buy' is not a behaviour"):
        read_cycle_behaviors(tmp_path, ["buy"], 5)


def test_gate_needs_the_repeat_path_and_cycles_are_read_only_with_it() -> None:
    """The gate without the repeat path is an error; ``repeat_cycles`` (on by default) is simply
    not read when the repeat path is off, so a config that turns the path off stays valid."""
    from hytrec_torchrec.modules.config import TowerConfig

    with pytest.raises(ConfigError, match="needs repeat: true"):
        from_dict(TowerConfig, {"repeat": False, "repeat_gate": True}).validate()
    from_dict(TowerConfig, {"repeat": False, "repeat_cycles": True}).validate()


def test_served_scores_read_the_request_behaviours() -> None:
    """The served model (eager and scripted) with cycles and a behaviour mapping: its bonus
    equals the training head's on the same rows with the same behaviours."""
    from hytrec_torchrec.runtime.config import JobConfig
    from hytrec_torchrec.runtime.factory import build_model
    from hytrec_torchrec.serving.export import build_serving
    from hytrec_torchrec.serving.idmap import Vocab

    V, NB, max_len = 12, 4, 16
    cfg = from_dict(JobConfig, {
        "data": {"path": "unused", "max_len": max_len},
        "embeddings": {"dim": 8},
        "model": {"embedding_dim": 8, "features": ["item"], "short_len": 4, "long_pattern": "", "heads": 2,
                  "short_heads": 2, "repeat": True, "repeat_cycles": True, "repeat_gate": True,
                  "fusion": {"num_experts": 2}},
    })
    model = build_model(cfg, {"item": V, "attribution": 5, "category": 5, "behavior": NB}, torch.device("cpu")).eval()
    with torch.no_grad():
        for p in model.repeat.parameters():
            p.normal_()
    model.repeat.cycle_behaviors = torch.tensor([False, False, False, True])
    vocabs = {"item": Vocab("item", V, [str(i) for i in range(2, V)], np.arange(2, V)),
              "behavior": Vocab("behavior", NB, ["100", "101"], np.arange(2, NB))}
    eager = build_serving(model, ["item"], max_len, vocabs)
    assert "behavior" in eager.required
    scripted = torch.jit.script(eager)
    lengths = [7, 0, 25, 3]
    items, offsets, ts, beh = _history(lengths, num_items=V, seed=10, behaviors=2)
    items = items.clamp(min=2)
    raw_beh = beh + 100  # raw behaviour IDs 100 (index 2, view-like) and 101 (index 3, purchase-like)
    values = {"item": items, "behavior": raw_beh, "timestamp": ts}
    lens = torch.tensor(lengths)
    request = (values, {k: lens for k in values}, torch.full((len(lengths),), T0 + 300_000))
    user = eager.user_embedding(*request)
    for served in (eager, scripted):
        ex, it, v = served.repeat_bonus(*request, user)
        rows = torch.cat([torch.arange(max(int(offsets[b]), int(offsets[b + 1]) - max_len), int(offsets[b + 1]))
                          for b in range(len(lengths))])
        kept = torch.tensor([min(n, max_len) for n in lengths])
        off = torch.cat([torch.zeros(1, dtype=torch.int64), kept.cumsum(0)])
        want_beh = eager.inputs["behavior"].ids(raw_beh[rows])
        e2, it2, v2 = model.repeat(user, items[rows], off, ts[rows], False, want_beh)[:3]
        assert sorted(zip(ex.tolist(), it.tolist())) == sorted(zip(e2.tolist(), it2.tolist()))
        torch.testing.assert_close(torch.sort(v)[0], torch.sort(v2)[0])
