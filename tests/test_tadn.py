"""TADN delta rule: chunkwise form vs the token-by-token reference, jagged batching, state in and
out (a history in pieces equals it whole), the gate."""

import math

import pytest
import torch
import torch.nn.functional as F

from hytrec_torchrec.ops import jagged
from hytrec_torchrec.ops import tadn
from hytrec_torchrec.ops.tadn import gpu_kernel_available, resolve_impl
from hytrec_torchrec.modules.layers import SeqContext, TADNMixer, TemporalGate, temporal_decay


def make_inputs(lengths, heads=2, dk=8, dv=6, dtype=torch.float32, seed=0, grad=False):
    """Random packed inputs; gate g cycles through 0, 1 and uniform values (erase = g·β)."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    offsets = torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0)
    q = torch.randn(n, heads, dk, generator=gen, dtype=dtype)
    k = F.normalize(torch.randn(n, heads, dk, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(n, heads, dv, generator=gen, dtype=dtype)
    beta = torch.rand(n, heads, generator=gen, dtype=dtype)
    g = torch.rand(n, heads, generator=gen, dtype=dtype)
    g[0::3] = 0.0
    g[1::3] = 1.0
    erase = g * beta
    tensors = [q, k, v, erase, beta]
    if grad:
        tensors = [t.clone().requires_grad_(True) for t in tensors]
    return tensors, offsets


def _out(fn):
    """The op's output alone (every form returns ``(o, final_state or None)``)."""
    return lambda *a, **kw: fn(*a, **kw)[0]


delta_rule = _out(tadn.delta_rule)
delta_rule_chunked = _out(tadn.delta_rule_chunked)
delta_rule_chunked_last = _out(tadn.delta_rule_chunked_last)
delta_rule_recurrent = _out(tadn.delta_rule_recurrent)


def run_with_grads(fn, tensors, offsets, cot, **kw):
    o = fn(*tensors, offsets, **kw)
    grads = torch.autograd.grad(o, tensors, cot)
    return o.detach(), grads


C = 64


def test_chunked_matches_recurrent_forward_and_grads_mixed_lengths():
    lengths = [1, C - 1, C, C + 1, 3000, 0, 5]
    tensors, offsets = make_inputs(lengths, heads=2, dk=8, dv=8, grad=True)
    cot = torch.randn(sum(lengths), 2, 8, generator=torch.Generator().manual_seed(1))
    o_ref, g_ref = run_with_grads(delta_rule_recurrent, tensors, offsets, cot)
    o_chk, g_chk = run_with_grads(delta_rule_chunked, tensors, offsets, cot, chunk_size=C)
    torch.testing.assert_close(o_chk, o_ref, atol=1e-4, rtol=0)
    for name, a, b in zip(["q", "k", "v", "erase", "write"], g_chk, g_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("chunk", [1, 3, 16, 64])
def test_chunk_sizes_agree_float64(chunk):
    lengths = [7, 16, 33, 1, 0, 50]
    tensors, offsets = make_inputs(lengths, dtype=torch.float64, seed=3)
    ref = delta_rule_recurrent(*tensors, offsets)
    out = delta_rule_chunked(*tensors, offsets, chunk_size=chunk)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


def test_extreme_gates_closed_form():
    """g = 0 (erase nothing) gives plain linear attention o_t = Σ_{i≤t} β_i v_i (k_i·q_t);
    erase = write = 1 with identical keys keeps only the newest value: o_t = v_t (k·q_t)."""
    lengths = [20, 9]
    (q, k, v, _, beta), off = make_inputs(lengths, dtype=torch.float64, seed=5)
    zero = torch.zeros_like(beta)
    out = delta_rule_chunked(q, k, v, zero, beta, off, chunk_size=4)
    for s in range(2):
        a, b = int(off[s]), int(off[s + 1])
        scores = torch.einsum("thd,ihd->hti", q[a:b], k[a:b]).tril()  # [H, t, i]
        expect = torch.einsum("hti,ih,ihd->thd", scores, beta[a:b], v[a:b])
        torch.testing.assert_close(out[a:b], expect, atol=1e-12, rtol=0)
    k_same = k[:1].expand_as(k).contiguous()
    ones = torch.ones_like(beta)
    out = delta_rule_chunked(q, k_same, v, ones, ones, off, chunk_size=4)
    expect = v * (k_same * q).sum(-1, keepdim=True)
    torch.testing.assert_close(out, expect, atol=1e-12, rtol=0)


def test_jagged_batch_equals_each_sequence_alone():
    lengths = [130, 1, 64, 0, 77]
    tensors, offsets = make_inputs(lengths, seed=7)
    batched = delta_rule_chunked(*tensors, offsets, chunk_size=32)
    for s, n in enumerate(lengths):
        a, b = int(offsets[s]), int(offsets[s + 1])
        alone = delta_rule_chunked(*[t[a:b] for t in tensors], torch.tensor([0, n]), chunk_size=32)
        torch.testing.assert_close(batched[a:b], alone, atol=1e-6, rtol=0)


def test_last_only_matches_full():
    lengths = [100, 1, 0, 64, 65]
    tensors, offsets = make_inputs(lengths, seed=9, grad=True)
    full = delta_rule_chunked(*tensors, offsets, chunk_size=32)
    last = delta_rule_chunked_last(*tensors, offsets, chunk_size=32)
    for s, n in enumerate(lengths):
        expect = full[int(offsets[s + 1]) - 1] if n else torch.zeros_like(last[s])
        torch.testing.assert_close(last[s], expect, atol=1e-5, rtol=0)
    g_full = torch.autograd.grad(full[offsets[1:][torch.tensor(lengths) > 0] - 1].sum(), tensors)
    g_last = torch.autograd.grad(last.sum(), tensors)
    for a, b in zip(g_last, g_full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_empty_batch_and_validation():
    tensors, offsets = make_inputs([0, 0])
    assert delta_rule_chunked(*tensors, offsets).shape == (0, 2, 6)
    assert delta_rule_recurrent(*tensors, offsets).shape == (0, 2, 6)
    tensors, offsets = make_inputs([3, 2])
    with pytest.raises(ValueError, match="offsets"):
        delta_rule_chunked(*tensors, torch.tensor([0, 3, 4]))
    with pytest.raises(ValueError, match="erase"):
        delta_rule_chunked(tensors[0], tensors[1], tensors[2], tensors[3][:, :1], tensors[4], offsets)


@pytest.mark.parametrize("form", ["recurrent", "chunked", "chunked_last"])
def test_history_in_two_pieces_equals_it_whole(form):
    """The final state of a history's first part, fed as the initial state of the rest, gives the
    rest's outputs and the whole history's final state (what incremental serving relies on)."""
    lengths = [70, 5, 0, 33]
    cuts = [40, 5, 0, 1]
    tensors, offsets = make_inputs(lengths, dtype=torch.float64, seed=11)
    op = {"recurrent": tadn.delta_rule_recurrent, "chunked": lambda *a, **kw: tadn.delta_rule_chunked(*a, chunk_size=16, **kw),
          "chunked_last": lambda *a, **kw: tadn.delta_rule_chunked_last(*a, chunk_size=16, **kw)}[form]
    whole, f_whole = tadn.delta_rule_recurrent(*tensors, offsets, None, True)
    first = torch.cat([torch.arange(int(offsets[s]), int(offsets[s]) + c) for s, c in enumerate(cuts)])
    rest = torch.cat([torch.arange(int(offsets[s]) + c, int(offsets[s + 1])) for s, c in enumerate(cuts)])
    off1 = torch.tensor([0] + cuts).cumsum(0)
    off2 = torch.tensor([0] + [n - c for n, c in zip(lengths, cuts)]).cumsum(0)
    _, f1 = op(*[t[first] for t in tensors], off1, output_final_state=True)
    o2, f2 = op(*[t[rest] for t in tensors], off2, initial_state=f1, output_final_state=True)
    torch.testing.assert_close(f2, f_whole, atol=1e-10, rtol=0)
    if form == "chunked_last":
        for s, n in enumerate(lengths):
            expect = whole[int(offsets[s + 1]) - 1] if n > cuts[s] else torch.zeros_like(o2[s])
            torch.testing.assert_close(o2[s], expect, atol=1e-10, rtol=0)
    else:
        torch.testing.assert_close(o2, whole[rest], atol=1e-10, rtol=0)
    # an empty sequence keeps its initial state; no state requested gives None
    init = torch.randn(2, 2, 8, 6, dtype=torch.float64)
    tensors0, off0 = make_inputs([0, 3], dtype=torch.float64)
    _, f = op(*tensors0, off0, initial_state=init, output_final_state=True)
    torch.testing.assert_close(f[0], init[0])
    assert op(*tensors0, off0)[1] is None
    with pytest.raises(ValueError, match="initial_state"):
        op(*tensors0, off0, initial_state=init[:1])


def test_initial_state_gradients_match():
    lengths = [19, 0, 40]
    tensors, offsets = make_inputs(lengths, dtype=torch.float64, seed=13, grad=True)
    init = torch.randn(3, 2, 8, 6, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(sum(lengths), 2, 6, dtype=torch.float64)
    grads = []
    for o, f in (tadn.delta_rule_recurrent(*tensors, offsets, init, True),
                 tadn.delta_rule_chunked(*tensors, offsets, 8, init, True)):
        grads.append(torch.autograd.grad((o * cot).sum() + f.square().sum(), tensors + [init]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_gpu_guard_falls_back_to_chunked_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_impl("gpu", cpu) == "chunked"
    assert resolve_impl("auto", cpu) == "chunked"
    assert resolve_impl("recurrent", cpu) == "recurrent"
    if not torch.cuda.is_available():
        assert not gpu_kernel_available()
    tensors, offsets = make_inputs([10, 70], seed=2)
    torch.testing.assert_close(
        delta_rule(*tensors, offsets, chunk_size=16, impl="gpu"),
        delta_rule_chunked(*tensors, offsets, chunk_size=16),
    )
    with pytest.raises(ValueError, match="impl"):
        resolve_impl("fast", cpu)


def test_temporal_decay_exact_for_epoch_seconds():
    # 1 second apart at ~1.7e9 s: float32 cannot tell these timestamps apart, int64 differences can.
    ts = torch.tensor([1_700_000_000, 1_700_000_001, 1_700_000_003], dtype=torch.int64)
    now = torch.tensor([1_700_000_004], dtype=torch.int64)
    seg = torch.zeros(3, dtype=torch.int64)
    tau = temporal_decay(ts, now, seg, 2.0, torch.float32)
    torch.testing.assert_close(tau, torch.tensor([math.exp(-2.0), math.exp(-1.5), math.exp(-0.5)]))
    # events after t_current count as fresh
    tau = temporal_decay(torch.tensor([10]), torch.tensor([5]), seg[:1], 2.0, torch.float32)
    assert float(tau) == 1.0


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_gate_matches_paper_formulas_on_hand_made_numbers():
    """One sequence of two events, D = 2, one head, numbers set by hand."""
    mixer = TADNMixer(dim=2, heads=1, alpha=0.25, learn_alpha=False, temporal_gate=True, chunk_size=4, impl="chunked")
    with torch.no_grad():
        mixer.gate.proj.weight.copy_(torch.tensor([[0.5, -1.0, 2.0, 0.25]]))
        mixer.gate.proj.bias.fill_(0.1)
        mixer.gate.static_logit.fill_(0.3)
        mixer.fuse.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, -1.0, 0.5, 0.0]]))
        mixer.fuse.bias.copy_(torch.tensor([0.0, 0.2]))
    h = [[1.0, 2.0], [3.0, -2.0]]
    ts = torch.tensor([1_000, 1_600], dtype=torch.int64)
    now = torch.tensor([2_000], dtype=torch.int64)
    T = 500.0
    offsets = torch.tensor([0, 2])
    seg = torch.zeros(2, dtype=torch.int64)
    tau = temporal_decay(ts, now, seg, T, torch.float32)
    h_tilde, g = mixer.gates(torch.tensor(h), offsets, seg, tau)

    hbar = [(h[0][j] + h[1][j]) / 2 for j in range(2)]  # [2.0, 0.0]
    W = [0.5, -1.0, 2.0, 0.25]
    Wf = [[1.0, 0.0, 0.0, 1.0], [0.0, -1.0, 0.5, 0.0]]
    bf = [0.0, 0.2]
    g_static = _sig(0.3)
    for t in range(2):
        dh = [h[t][j] - hbar[j] for j in range(2)]
        cat = h[t] + dh
        tau_t = math.exp(-(2_000 - int(ts[t])) / T)
        g_t = 0.25 * (_sig(sum(w * x for w, x in zip(W, cat)) + 0.1) * tau_t) + (1 - 0.25) * g_static
        assert abs(g[t, 0].item() - g_t) < 1e-6
        for j in range(2):
            qf = _sig(sum(w * x for w, x in zip(Wf[j], cat)) + bf[j])
            assert abs(h_tilde[t, j].item() - (qf * dh[j] + (1 - qf) * h[t][j])) < 1e-6


def test_gate_learned_alpha_and_deltanet_mode():
    gate = TemporalGate(dim=3, heads=2, alpha=0.2, learn_alpha=True)
    assert abs(gate.alpha().item() - 0.2) < 1e-6
    assert gate.alpha_logit.requires_grad
    mixer = TADNMixer(4, 2, 0.5, False, temporal_gate=False, chunk_size=8, impl="chunked")
    x = torch.randn(5, 4)
    _, g = mixer.gates(x, torch.tensor([0, 5]), torch.zeros(5, dtype=torch.int64), torch.rand(5))
    assert torch.equal(g, torch.ones(5, 2))


def test_mixer_recurrent_and_chunked_impls_agree():
    torch.manual_seed(0)
    mixer = TADNMixer(8, 2, 0.5, False, True, chunk_size=8, impl="chunked")
    lengths = [20, 3, 0, 9]
    off = torch.tensor([0] + lengths).cumsum(0)
    x = torch.randn(sum(lengths), 8)
    seg = jagged.segment_ids(off, x.shape[0])
    tau = torch.rand(x.shape[0])
    out_c = mixer(x, SeqContext(off, seg, tau, False, False, None, None))
    mixer.impl = "recurrent"
    out_r = mixer(x, SeqContext(off, seg, tau, False, False, None, None))
    torch.testing.assert_close(out_c, out_r, atol=1e-5, rtol=0)


def test_jagged_helpers_fbgemm_and_torch_paths_agree(monkeypatch):
    off = torch.tensor([0, 3, 3, 7])
    vals = torch.randn(7, 4)
    fb = (jagged.jagged_to_padded(vals, off, 5), jagged.lengths_to_offsets(torch.tensor([3, 0, 4])))
    monkeypatch.setattr(jagged, "_HAS_FBGEMM", False)
    pt = (jagged.jagged_to_padded(vals, off, 5), jagged.lengths_to_offsets(torch.tensor([3, 0, 4])))
    torch.testing.assert_close(fb[0], pt[0])
    assert torch.equal(fb[1], pt[1]) and torch.equal(pt[1], off)
    torch.testing.assert_close(jagged.padded_to_jagged(pt[0], off, 7), vals)
    head, head_off, tail, tail_off = jagged.split_tail(off, 2)
    assert head.tolist() == [0, 3, 4] and head_off.tolist() == [0, 1, 1, 3]
    assert tail.tolist() == [1, 2, 5, 6] and tail_off.tolist() == [0, 2, 2, 4]
    assert jagged.length_groups([100, 90, 50, 49, 0], 0.2) == [0, 2, 4]
    assert jagged.length_groups([100, 90, 50, 49, 0], 0.25) == [0, 3, 4]
