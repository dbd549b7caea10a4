"""Serving from a kept state (hytrec_torchrec/serving/state.py, docs/export.md "Serving from a kept
state"): a state fed a history in pieces answers as a full recompute of the whole history by the
same module (``scores`` / ``user_embedding``), eager and scripted: empty history, 1,000 events one at
a time, chunks of 1, 7 and 500 events, users of mixed lengths in one batch, int8 tables, the
repeat path with cycle features and the hidden-layer scorer (the defaults), the other tower forms
that have a finite state; the repeat table keeps its bound M (least recently seen evicted first);
a state of another model is refused, and so are towers without a finite state.

Tiny models (D = 8) with every parameter moved off its initial value (zero-initialised parts such
as the repeat scorer's output layer would otherwise hide a wrong input)."""

from __future__ import annotations

import io
import warnings
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from hytrec_torchrec.config import from_dict
from hytrec_torchrec.runtime.config import JobConfig
from hytrec_torchrec.serving.idmap import Vocab

T0 = 1_700_000_000
V = 40  # item table rows
NC, NB = 6, 5  # category and behaviour table rows
ATOL = 1e-5
Request = Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor]


def _vocabs() -> Dict[str, Vocab]:
    def vocab(name: str, size: int) -> Vocab:
        return Vocab(name, size, [str(i) for i in range(2, size)], np.arange(2, size))
    return {"item": vocab("item", V), "category": vocab("category", NC), "behavior": vocab("behavior", NB)}


def _serving(model_cfg: Dict | None = None, max_len: int = 1024, int8: bool = False, repeat_items: int = 0,
             seed: int = 0, features: Tuple[str, ...] = ("item", "category")):
    """A tiny stateful serving module of a randomly initialised model (every parameter perturbed)."""
    from hytrec_torchrec.runtime.factory import build_model
    from hytrec_torchrec.serving.export import build_serving

    model = {"embedding_dim": 8, "features": list(features), "short_len": 4, "heads": 2, "short_heads": 2,
             "fusion": {"num_experts": 2}, "tadn": {"chunk_size": 8}}
    model.update(model_cfg or {})
    cfg = from_dict(JobConfig, {"data": {"path": "unused", "max_len": max_len}, "embeddings": {"dim": 8, "init_std": 0.5},
                                "model": model})
    net = build_model(cfg, {"item": V, "attribution": 5, "category": NC, "behavior": NB}, torch.device("cpu")).eval()
    torch.manual_seed(seed)  # after build_model, which seeds from the config
    with torch.no_grad():
        for p in net.tower.parameters():
            p.add_(0.2 * torch.randn_like(p))
        if net.repeat is not None:
            for p in net.repeat.parameters():
                p.copy_(0.3 * torch.randn_like(p))
            net.repeat.cycle_behaviors = torch.tensor([False, False, False, True, True])  # raw 3, 4 buy
    return build_serving(net, list(features), max_len, _vocabs(), int8=int8, stateful=True, repeat_items=repeat_items)


def _script(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(module)


def _histories(lengths: List[int], seed: int = 0, num_items: int = 12) -> Request:
    """Packed histories of known and unknown IDs (raw item 999 → the unknown row), with repeats."""
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    items = torch.randint(2, 2 + num_items, (n,), generator=g)
    items[torch.rand(n, generator=g) < 0.03] = 999
    values = {"item": items, "category": torch.randint(2, NC, (n,), generator=g),
              "behavior": torch.randint(2, NB, (n,), generator=g), "timestamp": torch.empty(n, dtype=torch.int64)}
    start = 0
    for length in lengths:  # each user's clock: irregular gaps, some equal timestamps
        gaps = torch.randint(0, 20_000, (length,), generator=g) * (torch.rand(length, generator=g) < 0.9)
        values["timestamp"][start:start + length] = T0 + torch.cumsum(gaps, 0)
        start += length
    lens = torch.tensor(lengths, dtype=torch.int64)
    last = T0 + 20_000 * max(lengths + [1]) + 3_600
    return values, {k: lens.clone() for k in values}, torch.full((len(lengths),), last, dtype=torch.int64)


def _rows(values: Dict[str, torch.Tensor], lengths: List[int], pieces: List[List[int]]) -> List[Request]:
    """The history cut into consecutive updates: ``pieces[u]`` = user u's events per update."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    done = [0] * len(lengths)
    out = []
    for step in range(max(len(p) for p in pieces)):
        take = [pieces[u][step] if step < len(pieces[u]) else 0 for u in range(len(lengths))]
        idx = torch.cat([torch.arange(offsets[u] + done[u], offsets[u] + done[u] + take[u]) for u in range(len(lengths))])
        for u in range(len(lengths)):
            done[u] += take[u]
        lens = torch.tensor(take, dtype=torch.int64)
        out.append(({k: v[idx] for k, v in values.items()}, {k: lens.clone() for k in values}, None))
    assert done == lengths
    return out


def _feed(served, updates: List[Request], batch: int) -> Dict[str, torch.Tensor]:
    state = served.init_state(batch)
    for values, lens, _ in updates:
        state = served.update(state, values, lens)
    return state


def _chunks(total: int, size: int) -> List[int]:
    return [size] * (total // size) + ([total % size] if total % size else [])


def _assert_parity(served, state: Dict[str, torch.Tensor], request: Request) -> None:
    """State answers == full recompute of the same module on the whole history (real numbers)."""
    values, lens, t = request
    with torch.no_grad():
        torch.testing.assert_close(served.state_user_embedding(state, t), served.user_embedding(values, lens, t),
                                   atol=ATOL, rtol=0)
        want = served.scores(values, lens, t)
        got = served.state_scores(state, t)
    assert torch.isinf(got[:, :2]).all()
    torch.testing.assert_close(got[:, 2:], want[:, 2:], atol=ATOL, rtol=1e-5)
    assert float(want[:, 2:].std()) > 0.05  # the scores are not all alike: the comparison can fail


@pytest.fixture(scope="module")
def default_model():
    """The default tower (TTT gated delta, intent readout, time inputs, repeat path with cycles and
    the mlp scorer), eager and scripted."""
    eager = _serving()
    return eager, _script(eager)


def test_empty_history(default_model) -> None:
    for served in default_model:
        values, lens, t = _histories([0, 0])
        state = served.init_state(2)
        _assert_parity(served, state, (values, lens, t))
        # an update with no events changes nothing but leaves a valid state
        state = served.update(state, values, lens)
        _assert_parity(served, state, (values, lens, t))


@pytest.mark.parametrize("which", [0, 1], ids=["eager", "scripted"])
def test_one_event_at_a_time_for_1000_events(default_model, which: int) -> None:
    served = default_model[which]
    values, lens, t = _histories([1000], seed=1)
    state = served.init_state(1)
    checked = 0
    for i, (v, n, _) in enumerate(_rows(values, [1000], [[1] * 1000])):
        state = served.update(state, v, n)
        if i + 1 in (1, 3, 4, 5, 40, 333, 1000):
            prefix = {k: x[:i + 1] for k, x in values.items()}
            lp = torch.tensor([i + 1])
            _assert_parity(served, state, (prefix, {k: lp for k in values}, t))
            checked += 1
    assert checked == 7 and int(state["events"][0]) == 1000


@pytest.mark.parametrize("size", [7, 500])
def test_chunks_of_events(default_model, size: int) -> None:
    """Chunks of 7 and 500 events (chunks of 1: the test above, eager and scripted)."""
    eager, scripted = default_model
    values, lens, t = _histories([1000], seed=2)
    updates = _rows(values, [1000], [_chunks(1000, size)])
    for served in (eager, scripted):
        _assert_parity(served, _feed(served, updates, 1), (values, lens, t))


def test_a_batch_of_users_of_mixed_lengths(default_model) -> None:
    lengths = [0, 3, 41, 257, 5]
    pieces = [[0, 0, 0], [1, 0, 2], [7, 30, 4], [100, 1, 156], [0, 5]]
    values, lens, t = _histories(lengths, seed=3)
    updates = _rows(values, lengths, pieces)
    for served in default_model:
        state = _feed(served, updates, len(lengths))
        _assert_parity(served, state, (values, lens, t))
        # one user's rows of a batched state answer alone, and states concatenate key by key
        one = {k: v[3:4] for k, v in state.items()}
        sub = {k: v[sum(lengths[:3]):sum(lengths[:4])] for k, v in values.items()}
        _assert_parity(served, one, (sub, {k: torch.tensor([257]) for k in values}, t[3:4]))
        both = {k: torch.cat([v[3:4], v[1:2]]) for k, v in state.items()}
        order = torch.cat([torch.arange(sum(lengths[:3]), sum(lengths[:4])), torch.arange(0, 3)])
        _assert_parity(served, both, ({k: v[order] for k, v in values.items()},
                                      {k: torch.tensor([257, 3]) for k in values}, t[:2]))
        ids, scores = served.score_state(state, t, 5)
        want_ids, want_scores = served(values, lens, t, 5)
        torch.testing.assert_close(scores, want_scores, atol=ATOL, rtol=1e-5)
        assert torch.equal(ids, want_ids)


def test_int8_tables() -> None:
    eager = _serving(int8=True, seed=4)
    lengths = [300, 17]
    values, lens, t = _histories(lengths, seed=4)
    updates = _rows(values, lengths, [[1, 7, 292], [17]])
    for served in (eager, _script(eager)):
        _assert_parity(served, _feed(served, updates, 2), (values, lens, t))


@pytest.mark.parametrize("repeat_cfg", [
    dict(),  # the defaults: cycles, mlp scorer
    dict(repeat_scorer="additive", repeat_gate=True),
    dict(repeat_cycles=False),
], ids=["cycles-mlp", "additive-gate", "no-cycles"])
def test_the_repeat_bonus_from_the_state_equals_the_recomputed_one(repeat_cfg: Dict) -> None:
    """Per (user, item) pair, with the behaviour mapping (cycle events = raw behaviours 3 and 4)."""
    served = _serving(repeat_cfg, seed=5, features=("item",))
    assert "behavior" in served.required or repeat_cfg.get("repeat_cycles") is False
    lengths = [200, 1, 60]
    values, lens, t = _histories(lengths, seed=5, num_items=9)
    state = _feed(served, _rows(values, lengths, [[3, 197], [1], [60]]), 3)
    with torch.no_grad():
        user = served.user_embedding(values, lens, t)
        want = served.repeat_bonus(values, lens, t, user)
        got = served.state_repeat_bonus(state, user)
    key = lambda b: sorted(zip(b[0].tolist(), b[1].tolist(), b[2].tolist()))  # noqa: E731
    w, g = key(want), key(got)
    assert [x[:2] for x in w] == [x[:2] for x in g] and len(w) > 15
    np.testing.assert_allclose([x[2] for x in g], [x[2] for x in w], atol=ATOL, rtol=1e-5)
    assert np.std([x[2] for x in w]) > 0.05
    _assert_parity(served, state, (values, lens, t))


@pytest.mark.parametrize("model_cfg", [
    dict(long_readout="last"),
    dict(long_readout="last", short_len=0, repeat=False),
    dict(long_pattern="", repeat=False),
    dict(long_pattern="T", far_copy=True),
    dict(long_pattern="", far_copy=True),
    dict(short_layers=2, time_bias=8, time_query="next", position_bias=3),
    dict(fusion={"num_experts": 2, "long": "residual"}, similarity="cosine", long_time_inputs=False),
    dict(feature_combine="concat", tadn={"chunk_size": 8, "key_dim": 6}),
], ids=["last", "no-short", "short-only", "copy", "copy-no-long", "deep-short-next", "residual-cosine",
        "concat-keydim"])
def test_other_tower_forms(model_cfg: Dict) -> None:
    eager = _serving(model_cfg, seed=6)
    lengths = [150, 2, 9]
    values, lens, t = _histories(lengths, seed=6)
    updates = _rows(values, lengths, [[1, 6, 60, 83], [0, 1, 0, 1], [3, 3, 3]])
    for served in (eager, _script(eager)):
        _assert_parity(served, _feed(served, updates, 3), (values, lens, t))


def test_the_state_does_not_truncate_at_max_len() -> None:
    """Past max_len the recompute keeps the last max_len events, the state every event: the state
    equals the recompute of a module that keeps everything (same weights, longer max_len)."""
    short = _serving(max_len=50, seed=7, repeat_items=500)
    long = _serving(max_len=500, seed=7)
    values, lens, t = _histories([300], seed=7)
    state = _feed(short, _rows(values, [300], [[120, 180]]), 1)
    with torch.no_grad():
        got = short.state_scores(state, t)
        torch.testing.assert_close(got[:, 2:], long.scores(values, lens, t)[:, 2:], atol=ATOL, rtol=1e-5)
        assert (got[:, 2:] - short.scores(values, lens, t)[:, 2:]).abs().max() > 1e-3


def test_eviction_keeps_the_bound_and_the_most_recent_items() -> None:
    m = 4
    served = _serving(repeat_items=m, seed=8)
    big = _serving(repeat_items=0, seed=8)
    values, lens, t = _histories([120, 30], seed=8, num_items=12)
    updates = _rows(values, [120, 30], [[1] * 60 + [60], [30]])
    for module in (served, _script(served)):
        state = _feed(module, updates, 2)
        table = state["repeat"]
        assert list(table.shape) == [2, m, 10]
        full = _feed(big, updates, 2)["repeat"]
        for u, (start, end) in enumerate([(0, 120), (120, 150)]):
            items = values["item"][start:end].tolist()
            recent: List[int] = []
            for it in reversed(items):  # the m most recently seen distinct known items
                if it != 999 and it not in recent:
                    recent.append(it)
            kept = table[u][table[u, :, 0] >= 2]
            assert sorted(kept[:, 0].tolist()) == sorted(recent[:m])
            # a kept item that was never evicted has the exact statistics of the unbounded table
            for row in kept:
                ref = full[u][full[u, :, 0] == row[0]][0]
                assert int(row[2]) == int(ref[2]) and int(row[3]) == int(ref[3])  # last position and time
                assert int(row[1]) <= int(ref[1])
        ids, scores = module.score_state(state, t, 3)
        assert ids.shape == (2, 3) and torch.isfinite(scores).all()


def test_a_state_of_another_model_is_refused(default_model) -> None:
    eager, scripted = default_model
    other = _serving(seed=9)
    same_weights_other_bound = _serving(repeat_items=8)
    values, lens, t = _histories([5], seed=9)
    foreign = other.update(other.init_state(1), values, lens)
    for served in (eager, scripted):
        with pytest.raises((ValueError, torch.jit.Error), match="another model"):
            served.update(foreign, values, lens)
        with pytest.raises((ValueError, torch.jit.Error), match="another model"):
            served.score_state(foreign, t, 3)
        with pytest.raises((ValueError, torch.jit.Error), match="another model"):
            served.score_state(same_weights_other_bound.init_state(1), t, 3)
        with pytest.raises((ValueError, torch.jit.Error), match="state: missing"):
            bad = served.init_state(1)
            del bad["events"]
            served.update(bad, values, lens)
        with pytest.raises((ValueError, torch.jit.Error), match="entries for a state of 2 users"):
            served.update(served.init_state(2), values, lens)


def test_the_input_state_is_not_changed_and_the_scripted_file_round_trips(default_model) -> None:
    eager, scripted = default_model
    values, lens, t = _histories([30], seed=10)
    state = eager.update(eager.init_state(1), values, lens)
    copy = {k: v.clone() for k, v in state.items()}
    more, more_lens, _ = _histories([3], seed=11)
    more["timestamp"] = more["timestamp"] + 10**6
    after = eager.update(state, more, more_lens)
    assert all(torch.equal(state[k], copy[k]) for k in state)
    assert int(after["events"][0]) == 33
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    got = loaded.score_state(loaded.update(loaded.init_state(1), values, lens), t, 5)
    want = eager.score_state(state, t, 5)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("model_cfg, key", [
    (dict(long_pattern="TTS"), "model.long_pattern 'TTS'"),
    (dict(long_pattern="TT", long_readout="last", tadn={"gating": "paper", "chunk_size": 8}), "model.tadn.gating: paper"),
])
def test_towers_without_a_finite_state_are_refused(model_cfg: Dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        _serving(model_cfg)


def test_the_export_smoke_check_of_the_kept_state(default_model) -> None:
    """What hytrec-export --stateful checks before writing: the state's answer to the smoke request,
    eager and scripted, against the recompute."""
    from hytrec_torchrec.serving.export import check_state_smoke, example_request

    eager, scripted = default_model
    check_state_smoke(eager, scripted, example_request(_vocabs(), [5, 0, 3]))
