"""Gated delta rule: the chunked form against the token-by-token recurrence (outputs, final states,
initial states, gradients), the ungated case against the TADN delta rule, and the memory layers
built on it (last-only and row-wise forms, the intent readout's state query)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hytrec_torchrec.modules.layers import SeqContext
from hytrec_torchrec.modules.memory import GapDecay, GatedDeltaMixer, IntentReadout, previous_gap
from hytrec_torchrec.ops.gated_delta import gated_delta_rule_chunked, gated_delta_rule_recurrent
from hytrec_torchrec.ops.jagged import segment_ids
from hytrec_torchrec.ops.tadn import delta_rule_recurrent

LENGTHS = [0, 5, 17, 1, 40, 0, 33]


def _inputs(lengths: list[int], h: int = 2, dk: int = 4, dv: int = 3, strong: bool = False,
            dtype: torch.dtype = torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    off = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    n = int(off[-1])
    q = torch.randn(n, h, dk, generator=gen, dtype=dtype)
    k = F.normalize(torch.randn(n, h, dk, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(n, h, dv, generator=gen, dtype=dtype)
    # strong: decays down to e^-8 per row, so a 64-row chunk spans e^-500 (no division may blow up)
    ld = -torch.rand(n, h, generator=gen, dtype=dtype) * (8.0 if strong else 0.5)
    a = torch.rand(n, h, generator=gen, dtype=dtype)
    b = torch.rand(n, h, generator=gen, dtype=dtype)
    init = torch.randn(len(lengths), h, dk, dv, generator=gen, dtype=dtype)
    return q, k, v, ld, a, b, off, init


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize("strong", [False, True])
def test_chunked_equals_the_recurrence(chunk: int, with_init: bool, strong: bool) -> None:
    q, k, v, ld, a, b, off, init = _inputs(LENGTHS, strong=strong)
    s0 = init if with_init else None
    o_ref, f_ref = gated_delta_rule_recurrent(q, k, v, ld, a, b, off, s0, True)
    o, f = gated_delta_rule_chunked(q, k, v, ld, a, b, off, chunk, s0, True)
    assert torch.isfinite(o).all() and torch.isfinite(f).all()
    torch.testing.assert_close(o, o_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(f, f_ref, atol=1e-10, rtol=1e-10)
    # an empty sequence keeps its initial state
    want_empty = init[0] if with_init else torch.zeros_like(init[0])
    torch.testing.assert_close(f[0], want_empty)


def test_gradients_equal_the_recurrence() -> None:
    leaves_a = [t.requires_grad_(True) for t in _inputs([6, 11, 0, 3], seed=3)[:6]]
    off, init = _inputs([6, 11, 0, 3], seed=3)[6:]
    init_a = init.clone().requires_grad_(True)
    leaves_b = [t.detach().clone().requires_grad_(True) for t in leaves_a]
    init_b = init.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(9)
    go = torch.randn(20, 2, 3, generator=gen, dtype=torch.float64)
    gf = torch.randn(4, 2, 4, 3, generator=gen, dtype=torch.float64)
    o, f = gated_delta_rule_recurrent(*leaves_a, off, init_a, True)
    ((o * go).sum() + (f * gf).sum()).backward()
    o2, f2 = gated_delta_rule_chunked(*leaves_b, off, 4, init_b, True)
    ((o2 * go).sum() + (f2 * gf).sum()).backward()
    for x, y in zip(leaves_a + [init_a], leaves_b + [init_b]):
        torch.testing.assert_close(y.grad, x.grad, atol=1e-9, rtol=1e-9)


def test_no_decay_is_the_tadn_delta_rule() -> None:
    q, k, v, ld, a, b, off, _ = _inputs(LENGTHS)
    o, _ = gated_delta_rule_chunked(q, k, v, torch.zeros_like(ld), a, b, off, 8)
    torch.testing.assert_close(o, delta_rule_recurrent(q, k, v, a, b, off)[0], atol=1e-10, rtol=1e-10)


def test_a_history_split_in_two_continues_from_the_final_state() -> None:
    """Scan the first part, hand its final state to the second part: the second part's outputs
    equal the whole history's (incremental serving builds on this)."""
    q, k, v, ld, a, b, _, _ = _inputs([30])
    whole, f_whole = gated_delta_rule_chunked(q, k, v, ld, a, b, torch.tensor([0, 30]), 8, None, True)
    cut = 13
    first = [t[:cut] for t in (q, k, v, ld, a, b)]
    second = [t[cut:] for t in (q, k, v, ld, a, b)]
    _, f1 = gated_delta_rule_chunked(*first, torch.tensor([0, cut]), 8, None, True)
    o2, f2 = gated_delta_rule_chunked(*second, torch.tensor([0, 30 - cut]), 8, f1, True)
    torch.testing.assert_close(o2, whole[cut:], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(f2, f_whole, atol=1e-10, rtol=1e-10)


def test_half_precision_runs_in_float32() -> None:
    q, k, v, ld, a, b, off, _ = _inputs([40, 9], dtype=torch.float32)
    o32, _ = gated_delta_rule_chunked(q, k, v, ld, a, b, off, 16)
    o16, _ = gated_delta_rule_chunked(*(t.bfloat16() for t in (q, k, v, ld, a, b)), off, 16)
    assert o16.dtype == torch.bfloat16
    torch.testing.assert_close(o16.float(), o32, atol=0.1, rtol=0.05)


def test_shape_errors_name_the_argument() -> None:
    q, k, v, ld, a, b, off, init = _inputs([3, 4])
    with pytest.raises(ValueError, match="log_decay"):
        gated_delta_rule_chunked(q, k, v, ld[:, :1], a, b, off)
    with pytest.raises(ValueError, match="initial_state"):
        gated_delta_rule_chunked(q, k, v, ld, a, b, off, 4, init[:, :1])


def test_previous_gap() -> None:
    ts = torch.tensor([10, 15, 15, 100, 7, 3, 50], dtype=torch.int64)
    off = torch.tensor([0, 3, 3, 5, 7])
    assert previous_gap(ts, off).tolist() == [0, 5, 0, 0, 0, 0, 47]


def test_decay_starts_near_one_with_per_head_half_lives() -> None:
    dec = GapDecay(8, 2)
    x = torch.zeros(1, 8)
    g = dec(x, torch.zeros(1, dtype=torch.int64))
    half_lives = (torch.log(torch.tensor(0.5)) / g).flatten()
    torch.testing.assert_close(half_lives, torch.tensor([128.0, 2048.0]), rtol=1e-4, atol=0)
    day = dec(x, torch.tensor([86400]))
    assert bool((day < g).all())  # a gap decays the memory further


def test_mixer_last_only_equals_the_last_row() -> None:
    torch.manual_seed(0)
    mixer = GatedDeltaMixer(16, 2, 4, key_dim=12).double()
    lengths = [7, 1, 13]
    off = torch.tensor([0] + lengths).cumsum(0)
    x = torch.randn(21, 16, dtype=torch.float64)
    ts = torch.arange(21, dtype=torch.int64) * 300
    seg = segment_ids(off, 21)
    rows = mixer(x, SeqContext(off, seg, x.new_zeros(21), False, False, ts, None))
    last = mixer(x, SeqContext(off, seg, x.new_zeros(21), True, False, ts, None))
    torch.testing.assert_close(last, rows[off[1:] - 1])


def test_intent_readout_queries_the_state_after_each_row() -> None:
    """forward_rows at row m with query (intent_m, t_m) equals forward on the prefix ending at m."""
    torch.manual_seed(0)
    reader = IntentReadout(16, 2, 4, key_dim=8).double()
    lengths = [9, 3]
    off = torch.tensor([0] + lengths).cumsum(0)
    x = torch.randn(12, 16, dtype=torch.float64)
    ts = torch.arange(12, dtype=torch.int64) * 1000
    intent = torch.randn(12, 16, dtype=torch.float64)
    tq = ts + 5000
    rows = reader.forward_rows(x, off, ts, intent, tq)
    for b, n in enumerate(lengths):
        a = int(off[b])
        for r in range(n):
            one = reader(x[a:a + r + 1], torch.tensor([0, r + 1]), ts[a:a + r + 1], intent[a + r:a + r + 1],
                         tq[a + r:a + r + 1])
            torch.testing.assert_close(rows[a + r], one[0])
