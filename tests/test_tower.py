"""HyTRec tower: layers, branches, fusion, scripting, baselines by config, loss, overfitting."""

import math
import warnings
from pathlib import Path

import pytest
import torch

from hytrec_torchrec.config import ConfigError, from_dict, load_config
from hytrec_torchrec.modules import HyTRecTower, TowerConfig, log_q_from_counts, sampled_softmax_loss, score
from hytrec_torchrec.modules.fusion import MoEFusion
from hytrec_torchrec.modules.layers import SeqContext, SoftmaxMixer
from hytrec_torchrec.ops.jagged import segment_ids

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000


def small_cfg(**kw) -> TowerConfig:
    """A small tower in the paper's form (TTTS, paper TADN, last-row readout, no repeat path) unless
    ``kw`` says otherwise; a ``tadn`` dict in ``kw`` updates the base one."""
    base = dict(embedding_dim=16, short_len=4, heads=2, long_pattern="TTTS", long_readout="last",
                long_time_inputs=False, repeat=False, tadn=dict(chunk_size=8, decay_period=3600.0, gating="paper"))
    base["tadn"] = {**base["tadn"], **kw.pop("tadn", {})}
    base.update(kw)
    return from_dict(TowerConfig, base)


def batch(lengths, dim=16, seed=0, features=("item", "attribution", "category", "behavior")):
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    offsets = torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0)
    feats = {f: torch.randn(n, dim, generator=gen) for f in features}
    ts = T0 + torch.randint(0, 100_000, (n,), generator=gen)
    tc = torch.full((len(lengths),), T0 + 100_000, dtype=torch.int64)
    return feats, offsets, ts, tc


def test_softmax_mixer_matches_dense_per_sequence_reference():
    torch.manual_seed(0)
    mixer = SoftmaxMixer(8, 2, group_waste=0.0).eval()
    lengths = [5, 0, 12, 1, 11]
    off = torch.tensor([0] + lengths).cumsum(0)
    x = torch.randn(sum(lengths), 8)
    seg = segment_ids(off, x.shape[0])
    out = mixer(x, SeqContext(off, seg, x.new_zeros(x.shape[0]), False, False, None, None))
    last = mixer(x, SeqContext(off, seg, x.new_zeros(x.shape[0]), True, False, None, None))
    for s, n in enumerate(lengths):
        a = int(off[s])
        if n == 0:
            assert torch.equal(last[s], mixer.out(torch.zeros(8)))
            continue
        q, k, v = mixer.qkv(x[a:a + n]).view(n, 3, 2, 4).unbind(1)
        att = torch.einsum("ihd,jhd->hij", q, k) / 2.0
        att = att.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        ref = mixer.out(torch.einsum("hij,jhd->ihd", att, v).reshape(n, 8))
        torch.testing.assert_close(out[a:a + n], ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(last[s], ref[-1], atol=1e-5, rtol=0)
    mixer.group_waste = float("inf")  # one padded group: same answer
    torch.testing.assert_close(mixer(x, SeqContext(off, seg, x.new_zeros(x.shape[0]), False, False, None, None)), out, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pattern", ["TTTS", "SS", "T", ""])
def test_tower_batch_equals_each_sequence_alone_and_empty_is_defined(pattern):
    torch.manual_seed(0)
    tower = HyTRecTower(small_cfg(long_pattern=pattern)).eval()
    lengths = [0, 1, 4, 5, 23, 9]
    feats, off, ts, tc = batch(lengths)
    with torch.no_grad():
        user = tower(feats, off, ts, tc)
        assert user.shape == (6, 16) and torch.isfinite(user).all()
        for s, n in enumerate(lengths):
            a, b = int(off[s]), int(off[s + 1])
            alone = tower({f: e[a:b] for f, e in feats.items()}, torch.tensor([0, n]), ts[a:b], tc[s:s + 1])
            torch.testing.assert_close(user[s:s + 1], alone, atol=1e-5, rtol=0)
        empty = tower({f: e[:0] for f, e in feats.items()}, torch.zeros(3, dtype=torch.int64), ts[:0], tc[:2])
        assert empty.shape == (2, 16) and torch.isfinite(empty).all()


def test_timestamps_matter_only_through_the_temporal_gate():
    torch.manual_seed(0)
    feats, off, ts, tc = batch([30, 12])
    gated = HyTRecTower(small_cfg(long_pattern="TT")).eval()
    plain = HyTRecTower(small_cfg(long_pattern="TT", tadn=dict(chunk_size=8, temporal_gate=False))).eval()
    with torch.no_grad():
        assert not torch.allclose(gated(feats, off, ts, tc), gated(feats, off, ts - 50_000, tc))
        torch.testing.assert_close(plain(feats, off, ts, tc), plain(feats, off, ts - 50_000, tc))


@pytest.mark.parametrize("kw", [dict(), dict(short_layers=3),
                                dict(long_readout="intent", long_time_inputs=True, far_copy=True,
                                     tadn=dict(gating="gated_delta", chunk_size=8)),
                                dict(long_readout="intent", fusion=dict(long="residual"),
                                     tadn=dict(gating="gated_delta", chunk_size=8))],
                         ids=["one_short_layer", "three_short_layers", "gated_delta_intent_copy", "residual_long"])
def test_scripted_tower_equals_eager(kw):
    torch.manual_seed(0)
    tower = HyTRecTower(small_cfg(**{"long_pattern": "TTTS", "feature_combine": "concat", **kw})).eval()
    feats, off, ts, tc = batch([0, 3, 40, 17, 8], seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(tower)
    with torch.no_grad():
        torch.testing.assert_close(scripted(feats, off, ts, tc), tower(feats, off, ts, tc), atol=1e-5, rtol=0)
        feats2, off2, ts2, tc2 = batch([70, 1], seed=5)
        torch.testing.assert_close(scripted(feats2, off2, ts2, tc2), tower(feats2, off2, ts2, tc2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_config_examples_build_and_train_step(path):
    cfg = load_config(TowerConfig, path, ["embedding_dim=16", "short_len=4", "tadn.chunk_size=8"])
    tower = HyTRecTower(cfg)
    feats, off, ts, tc = batch([0, 6, 19], features=tuple(cfg.features))
    user, aux = tower.forward_with_aux(feats, off, ts, tc)
    (user.square().mean() + aux).backward()
    assert all(p.grad is not None for p in tower.fusion.parameters())


def test_model_config_examples_cover_the_baselines():
    names = {p.stem for p in (REPO / "configs" / "model").glob("*.yaml")}
    assert {"hytrec", "hytrec_paper", "sasrec", "tadn_only", "short_only", "deltanet"} <= names


def test_the_default_tower_is_the_long_memory_tower_with_the_repeat_path():
    """TowerConfig's defaults and configs/model/hytrec.yaml are the same tower; hytrec_paper.yaml is
    the paper's form (docs/tower.md, "The default tower")."""
    default = TowerConfig()
    assert (default.long_pattern, default.tadn.gating, default.long_readout, default.long_time_inputs,
            default.repeat, default.short_len) == ("TTT", "gated_delta", "intent", True, True, 64)
    shipped = load_config(TowerConfig, REPO / "configs" / "model" / "hytrec.yaml")
    for key in ("long_pattern", "long_readout", "long_time_inputs", "repeat", "short_len", "far_copy"):
        assert getattr(shipped, key) == getattr(default, key), key
    assert shipped.tadn.gating == default.tadn.gating
    paper = load_config(TowerConfig, REPO / "configs" / "model" / "hytrec_paper.yaml")
    assert (paper.long_pattern, paper.tadn.gating, paper.long_readout, paper.long_time_inputs, paper.repeat) == (
        "TTTS", "paper", "last", False, False)


def test_unknown_layer_letter_names_the_registered_ones() -> None:
    """The pattern's letters are checked against modules/registry.py: by the job config at load,
    and by the branch when a tower is built from a model config alone."""
    from hytrec_torchrec.runtime.config import JobConfig  # the job config: one layer up from modules/

    with pytest.raises(ConfigError, match=r"model\.long_pattern: 'TXS' has letters \['X'\]; use T \(.*\), S \("):
        from_dict(JobConfig, dict(data=dict(path="p"), model=dict(long_pattern="TXS")))
    with pytest.raises(ConfigError, match=r"long_pattern: 'X' has letters"):
        HyTRecTower(from_dict(TowerConfig, dict(long_pattern="TXS")))


@pytest.mark.parametrize(
    "override, key",
    [
        (dict(tadn=dict(alpha=1.5)), "tadn.alpha"),
        (dict(tadn=dict(impl="cuda")), "tadn.impl"),
        (dict(fusion=dict(num_experts=0)), "fusion.num_experts"),
        (dict(feature_combine="mean"), "feature_combine"),
        (dict(embedding_dim=10, heads=3), "heads"),
        (dict(long_pattern="", short_len=0), "long_pattern"),
        (dict(features=["item", "price"]), "features[1]"),
        (dict(tadn=dict(decay=3.0)), "tadn.decay"),
        (dict(time_bias=-1), "time_bias"),
        (dict(time_bias=500), "time_bias"),
        (dict(time_query="target"), "time_query"),
        (dict(short_layers=0), "short_layers"),
        (dict(tadn=dict(gating="mamba")), "tadn.gating"),
        (dict(long_readout="query"), "long_readout"),
        (dict(long_readout="intent", short_len=0), "long_readout"),
        (dict(far_copy=True, short_len=0, long_readout="last"), "far_copy"),
        (dict(short_len=0), "long_readout"),  # the default intent readout needs a short branch
        (dict(fusion=dict(long="add")), "fusion.long"),
        (dict(fusion=dict(long="residual"), short_len=0, long_readout="last"), "fusion.long"),
        (dict(fusion=dict(short_dropout=1.0)), "fusion.short_dropout"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        from_dict(TowerConfig, override)
    assert str(err.value).startswith(key), str(err.value)


def test_a_residual_long_branch_starts_as_the_short_only_tower_and_learns_to_be_used():
    """fusion.long residual: with the scale at its initial 0 the far history changes nothing (the
    tower is its own short-only ablation, whose MoE sees the short branch alone); the scale gets a
    gradient, and once it moves the far history counts."""
    torch.manual_seed(0)
    cfg = small_cfg(long_pattern="TT", long_readout="intent", fusion=dict(long="residual"),
                    tadn=dict(gating="gated_delta"))
    tower = HyTRecTower(cfg).eval()
    assert tower.fusion.gate.in_features == cfg.embedding_dim  # the MoE fuses the short branch only
    feats, off, ts, tc = batch([30, 12], seed=3)
    far = {f: x.clone() for f, x in feats.items()}
    for x in far.values():  # change every event before the last short_len of each history
        x[: 30 - 4] += torch.randn(26, x.shape[1])
        x[30: 42 - 4] += torch.randn(8, x.shape[1])
    torch.testing.assert_close(tower(far, off, ts, tc), tower(feats, off, ts, tc), atol=0, rtol=0)
    user, _ = tower.train().forward_with_aux(feats, off, ts, tc)
    user.square().sum().backward()
    assert tower.long_scale.grad is not None and tower.long_scale.grad.abs().sum() > 0
    with torch.no_grad():
        tower.long_scale.fill_(1.0)
    tower.eval()
    assert (tower(far, off, ts, tc) - tower(feats, off, ts, tc)).abs().max() > 1e-3


def test_short_dropout_zeroes_the_short_branch_for_a_fraction_of_rows_in_training_only():
    """fusion.short_dropout p: evaluation is the tower without it; in training, about p of the
    rows are fused from the long branch and zeros in place of the short branch's output, the rest
    exactly as without it (per example and, in all-position training, per row)."""
    torch.manual_seed(0)
    cfg = small_cfg(long_pattern="TT", long_readout="intent", tadn=dict(gating="gated_delta"), dropout=0.0,
                    fusion=dict(short_dropout=0.5))
    tower = HyTRecTower(cfg)
    plain = HyTRecTower(small_cfg(long_pattern="TT", long_readout="intent", tadn=dict(gating="gated_delta"),
                                  dropout=0.0))
    plain.load_state_dict(tower.state_dict())
    feats, off, ts, tc = batch([20] * 200, seed=5)
    tower.eval(), plain.eval()
    torch.testing.assert_close(tower(feats, off, ts, tc), plain(feats, off, ts, tc), atol=0, rtol=0)
    tower.train(), plain.train()
    torch.manual_seed(1)
    got = tower(feats, off, ts, tc)
    want = plain(feats, off, ts, tc)
    same = (got - want).abs().amax(1) == 0
    assert 0.35 < 1 - same.float().mean().item() < 0.65
    with torch.no_grad():  # the dropped rows: the fusion of the long branch with zeros
        plain_fuse = plain._fuse
        plain._fuse = lambda br: plain_fuse(br[:-1] + [torch.zeros_like(br[-1])])  # type: ignore[method-assign]
        dropped = plain(feats, off, ts, tc)
    del plain._fuse  # the class's method again
    torch.testing.assert_close(got[~same], dropped[~same], atol=1e-6, rtol=0)
    rows, _ = tower.forward_all_positions(feats, off, ts, tc)
    rows_plain, _ = plain.forward_all_positions(feats, off, ts, tc)
    assert 0.35 < ((rows - rows_plain).abs().amax(1) > 0).float().mean().item() < 0.65


def test_moe_load_balance_loss():
    fusion = MoEFusion(2, 4, num_experts=4, hidden=8)
    with torch.no_grad():
        fusion.gate.weight.zero_()
        fusion.gate.bias.zero_()
    _, bal = fusion([torch.randn(5, 4), torch.randn(5, 4)])
    assert abs(bal.item() - 1.0) < 1e-6  # even use
    with torch.no_grad():
        fusion.gate.bias.copy_(torch.tensor([50.0, 0, 0, 0]))
    _, bal = fusion([torch.randn(5, 4), torch.randn(5, 4)])
    assert abs(bal.item() - 4.0) < 1e-4  # collapsed onto one expert


def slow_sampled_softmax(user, pos_ids, pos_emb, t2e, pos_log_q, neg_ids, neg_emb, neg_log_q, temperature):
    """Direct transcription of the docstring formula, one target at a time."""
    T, R = len(pos_ids), len(neg_ids)
    total = 0.0
    for t in range(T):
        e = int(t2e[t])
        mine = {int(pos_ids[j]) for j in range(T) if int(t2e[j]) == e}
        u = user[e].double()
        cands = []
        for j in range(T):
            if j != t and int(pos_ids[j]) in mine:
                continue
            cands.append(float(u @ pos_emb[j].double()) / temperature - math.log(T * math.exp(float(pos_log_q[j]))))
        for r in range(R):
            if int(neg_ids[r]) in mine:
                continue
            cands.append(float(u @ neg_emb[r].double()) / temperature - (math.log(R) + neg_log_q))
        s_pos = float(u @ pos_emb[t].double()) / temperature - math.log(T * math.exp(float(pos_log_q[t])))
        lse = math.log(sum(math.exp(c) for c in cands))
        total += lse - s_pos
    return total / T


def test_sampled_softmax_matches_slow_transcription():
    gen = torch.Generator().manual_seed(0)
    user = torch.randn(4, 6, generator=gen)
    # example 0 has two positives (3 and 7); item 3 is also example 2's positive (accidental hit)
    pos_ids = torch.tensor([3, 7, 5, 3, 9])
    t2e = torch.tensor([0, 0, 1, 2, 3])
    table = torch.randn(12, 6, generator=gen)
    counts = torch.tensor([0, 4, 1, 9, 2, 3, 1, 6, 2, 5, 1, 1])
    pos_log_q = log_q_from_counts(counts, pos_ids)
    neg_ids = torch.tensor([7, 1, 5, 11])  # 7 hits example 0, 5 hits example 1
    neg_log_q = -math.log(12)
    got = sampled_softmax_loss(user, pos_ids, table[pos_ids], t2e, pos_log_q, neg_ids, table[neg_ids], neg_log_q,
                               temperature=0.5)
    want = slow_sampled_softmax(user, pos_ids, table[pos_ids], t2e, pos_log_q, neg_ids, table[neg_ids], neg_log_q, 0.5)
    assert abs(float(got) - want) < 1e-5
    # without uniform negatives
    got = sampled_softmax_loss(user, pos_ids, table[pos_ids], t2e, pos_log_q)
    want = slow_sampled_softmax(user, pos_ids, table[pos_ids], t2e, pos_log_q, [], [], 0.0, 1.0)
    assert abs(float(got) - want) < 1e-5


def test_whole_catalog_without_in_batch_is_the_exact_softmax():
    """``data.num_negatives: -1`` in the per-example loss: ``in_batch=False`` and the whole catalog
    as uniform negatives give the catalog cross-entropy, each example's other positives masked."""
    from hytrec_torchrec.modules.loss import uniform_log_q

    gen = torch.Generator().manual_seed(3)
    v, tau = 12, 0.5
    user = torch.randn(4, 6, generator=gen)
    table = torch.randn(v, 6, generator=gen)
    pos_ids = torch.tensor([3, 7, 5, 3, 9])  # example 0 has positives 3 and 7
    t2e = torch.tensor([0, 0, 1, 2, 3])
    catalog = torch.arange(2, v)
    pos_log_q = torch.full((5,), 5.0)  # ignored without in-batch candidates
    got = sampled_softmax_loss(user, pos_ids, table[pos_ids], t2e, pos_log_q, catalog, table[catalog],
                               uniform_log_q(v), temperature=tau, in_batch=False)
    logits = user[t2e] @ table[2:].t() / tau  # [T, V-2]
    logits[0, 7 - 2] = float("-inf")  # target 3 of example 0: its other positive 7 is masked
    logits[1, 3 - 2] = float("-inf")
    want = torch.nn.functional.cross_entropy(logits, pos_ids - 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    # the in-batch default differs: item 3 is scored twice and log-Q shifts the positive
    default = sampled_softmax_loss(user, pos_ids, table[pos_ids], t2e, pos_log_q, catalog, table[catalog],
                                   uniform_log_q(v), temperature=tau)
    assert abs(float(default) - float(want)) > 1e-3


def test_score_is_dot_product():
    u, items = torch.randn(3, 5), torch.randn(7, 5)
    torch.testing.assert_close(score(u, items), torch.einsum("bd,md->bm", u, items))


def test_tiny_model_overfits_fixed_set():
    torch.manual_seed(0)
    n_items, dim = 50, 16
    cfg = small_cfg(long_pattern="TTS", fusion=dict(num_experts=2, load_balance_weight=0.0))
    tower = HyTRecTower(cfg)
    tables = torch.nn.ModuleDict({f: torch.nn.Embedding(n_items, dim) for f in cfg.features})
    gen = torch.Generator().manual_seed(1)
    lengths = [3, 9, 14, 6, 20, 11, 2, 17]
    off = torch.tensor([0] + lengths).cumsum(0)
    ids = torch.randint(1, n_items, (sum(lengths),), generator=gen)
    ts = T0 + torch.randint(0, 10_000, (sum(lengths),), generator=gen)
    tc = torch.full((len(lengths),), T0 + 10_000)
    pos = torch.randperm(n_items - 1, generator=gen)[: len(lengths)] + 1
    negs = torch.randint(1, n_items, (16,), generator=gen)
    t2e = torch.arange(len(lengths))
    log_q = torch.full((len(lengths),), -math.log(len(lengths)))
    opt = torch.optim.Adam(list(tower.parameters()) + list(tables.parameters()), lr=1e-2)
    losses = []
    for _ in range(120):
        feats = {f: tables[f](ids) for f in cfg.features}
        user, aux = tower.forward_with_aux(feats, off, ts, tc)
        item_table = tables["item"].weight
        loss = sampled_softmax_loss(user, pos, item_table[pos], t2e, log_q, negs, item_table[negs],
                                    -math.log(n_items)) + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_configs_stored_before_the_long_memory_options_rebuild_the_paper_tower():
    from hytrec_torchrec.modules.config import fill_pre_memory_keys

    stored = {"long_pattern": "TTTS", "tadn": {"alpha": 0.5}}
    filled = fill_pre_memory_keys(stored)
    assert sorted(filled) == ["far_copy", "long_readout", "long_time_inputs", "repeat", "repeat_cycles", "repeat_gate",
                              "repeat_scorer", "tadn.gating", "tadn.key_dim"]
    cfg = from_dict(TowerConfig, stored)
    assert (cfg.long_readout, cfg.long_time_inputs, cfg.tadn.gating) == ("last", False, "paper")
    newer = {"long_readout": "intent", "tadn": {"gating": "gated_delta", "key_dim": 64}, "long_time_inputs": True,
             "far_copy": True, "repeat": True}
    # a config stored before the repeat path's cycles, gate and scorer rebuilds its repeat path without them
    assert fill_pre_memory_keys(newer) == ["repeat_cycles", "repeat_gate", "repeat_scorer"]
    assert newer["tadn"]["gating"] == "gated_delta"
    assert (newer["repeat_cycles"], newer["repeat_gate"], newer["repeat_scorer"]) == (False, False, "additive")


@pytest.mark.parametrize("all_positions", [False, True])
def test_long_checkpoint_gives_the_same_outputs_and_gradients(all_positions: bool) -> None:
    """``model.long_checkpoint`` recomputes the long branch's activations in the backward pass:
    outputs and every gradient equal the plain run (dropout included: the RNG state is replayed);
    the scripted tower ignores it."""
    def build(ckpt: bool) -> HyTRecTower:
        torch.manual_seed(0)
        return HyTRecTower(from_dict(TowerConfig, {"embedding_dim": 16, "short_len": 4, "heads": 2, "dropout": 0.1,
                                                   "long_pattern": "TT", "features": ["item"],
                                                   "long_checkpoint": ckpt, "tadn": {"chunk_size": 8}})).train()
    g = torch.Generator().manual_seed(1)
    off = torch.tensor([0, 30, 37, 80])
    ts = torch.cumsum(torch.randint(1, 1000, (80,), generator=g), 0)
    x = torch.randn(80, 16, generator=g)
    tc = ts[off[1:] - 1]
    outs, grads = [], []
    for ckpt in (False, True):
        tower = build(ckpt)
        torch.manual_seed(5)
        if all_positions:
            y, _ = tower.forward_all_positions({"item": x}, off, ts, tc)
        else:
            y = tower({"item": x}, off, ts, tc)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append({n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[1], outs[0])
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("long.blocks") for k in grads[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    scripted = torch.jit.script(build(True).eval())
    torch.testing.assert_close(scripted({"item": x}, off, ts, tc), build(True).eval()({"item": x}, off, ts, tc))


@pytest.mark.parametrize("max_distance, time_buckets", [(0, 0), (4, 0), (0, 12), (4, 12)])
def test_blocked_sliding_window_equals_the_full_mask(max_distance: int, time_buckets: int) -> None:
    """A sliding-window softmax layer over long groups attends block by block (O(L·W)); its rows
    equal the one-mask form's, with the position and time biases, and its gradients too."""
    torch.manual_seed(0)
    mixer = SoftmaxMixer(dim=8, heads=2, group_waste=float("inf"), window=4, max_distance=max_distance,
                         time_buckets=time_buckets)
    for prm in mixer.parameters():
        torch.nn.init.normal_(prm, std=0.5)
    off = torch.tensor([0, 1, 6, 15, 38, 68])
    n = int(off[-1])
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 8, generator=g, requires_grad=True)
    ts = torch.cumsum(torch.randint(0, 5000, (n,), generator=g), 0)
    seg = segment_ids(off, n)
    ctx = SeqContext(offsets=off, seg=seg, tau=torch.ones(n), last_only=False, prefix_mean=False, ts=ts, qts=None)
    outs, grads = [], []
    for block_min in (10**9, 0):  # the one-mask form, then blocks for every group
        mixer.block_min = block_min
        y = mixer(x, ctx)
        (gx,) = torch.autograd.grad(y.square().sum(), x)
        outs.append(y.detach())
        grads.append(gx)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)
    mixer.block_min = 0
    scripted = torch.jit.script(mixer)
    torch.testing.assert_close(scripted(x, ctx), outs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("all_positions", [False, True])
def test_long_input_grad_false_keeps_the_outputs_and_stops_the_long_gradient_at_the_inputs(all_positions: bool) -> None:
    """``model.long_input_grad: false``: the same outputs; the events only the long branch reads
    (those before the short branch's window) get no gradient, the long branch's own parameters
    still do; with the default they get one."""
    g = torch.Generator().manual_seed(1)
    off = torch.tensor([0, 30, 37, 80])
    ts = torch.cumsum(torch.randint(1, 1000, (80,), generator=g), 0)
    x0 = torch.randn(80, 16, generator=g)
    tc = ts[off[1:] - 1]
    far = torch.zeros(80, dtype=torch.bool)
    for s, e in zip(off[:-1].tolist(), off[1:].tolist()):
        far[s:max(s, e - 4)] = True  # short_len 4: the rows before each history's last 4
    outs, far_grads = [], []
    for input_grad in (True, False):
        torch.manual_seed(0)
        tower = HyTRecTower(from_dict(TowerConfig, {"embedding_dim": 16, "short_len": 4, "heads": 2,
                                                    "long_pattern": "TT", "features": ["item"],
                                                    "long_input_grad": input_grad, "tadn": {"chunk_size": 8}}))
        x = x0.clone().requires_grad_(True)
        if all_positions:
            y, _ = tower.forward_all_positions({"item": x}, off, ts, tc)
            y = y[off[1:] - 1]  # the last row of each history: its far rows are the long branch's only
        else:
            y = tower({"item": x}, off, ts, tc)
        y.square().sum().backward()
        outs.append(y.detach())
        far_grads.append(x.grad[far].abs().sum().item())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in tower.named_parameters()
                   if n.startswith("long."))
    torch.testing.assert_close(outs[1], outs[0])
    assert far_grads[0] > 0 and far_grads[1] == 0
