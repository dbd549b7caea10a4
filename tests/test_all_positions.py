"""All-position training (``data.all_positions``): the per-row tower output against the per-cutoff
tower, causality, the running mean, the loss against a direct reference, target rows and the
window tiling of training cutoffs. The sharded-vs-unsharded check with this objective is in
tests/test_train_distributed.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hytrec_torchrec.config import ConfigError, from_dict
from hytrec_torchrec.data.config import DataConfig
from hytrec_torchrec.data.examples import make_examples
from hytrec_torchrec.model import next_event_rows
from hytrec_torchrec.modules import HyTRecTower, TowerConfig
from hytrec_torchrec.modules.layers import SeqContext, SoftmaxMixer, time_gap_bucket, time_gap_edges
from hytrec_torchrec.modules.loss import shared_negatives_loss
from hytrec_torchrec.ops.jagged import next_event_times, segment_ids, segment_prefix_mean

T0 = 1_700_000_000
LENGTHS = [9, 1, 0, 14, 5]


def _cfg(**kw: object) -> TowerConfig:
    """A small tower in the paper's form unless ``kw`` says otherwise (a ``tadn`` dict updates the base one)."""
    base: dict = dict(embedding_dim=16, features=["item"], heads=2, short_heads=2, short_len=4,
                      long_pattern="TTTS", long_readout="last", long_time_inputs=False, repeat=False,
                      tadn=dict(chunk_size=4, decay_period=3600.0, gating="paper"), fusion=dict(num_experts=2))
    base["tadn"] = {**base["tadn"], **kw.pop("tadn", {})}  # type: ignore[dict-item]
    base.update(kw)
    return from_dict(TowerConfig, base)


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    offsets = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    x = torch.randn(n, 16, generator=gen)
    ts = T0 + torch.randint(0, 20_000, (n,), generator=gen).sort().values
    tc = torch.full((len(lengths),), T0 + 20_000, dtype=torch.int64)
    return x, offsets, ts, tc


@pytest.mark.parametrize("kw", [
    dict(long_pattern="SS", short_len=0),      # SASRec-like
    dict(long_pattern="", short_len=4),        # short-only
    dict(long_pattern="SS", short_len=4),      # softmax long branch + short branch + fusion
    dict(long_pattern="SS", short_len=4, position_bias=6),  # with relative-position biases
    dict(long_pattern="SS", short_len=4, position_bias=6, time_bias=24),  # and time-gap biases
    dict(long_pattern="S", short_len=0, time_bias=40),  # time-gap biases alone
    # gaps measured from the predicted event's time (HSTU's choice), both branches and one
    dict(long_pattern="SS", short_len=4, position_bias=6, time_bias=24, time_query="next"),
    dict(long_pattern="S", short_len=0, time_bias=40, time_query="next"),
    # stacked sliding-window short branch: receptive field 3·(4−1)+1 = 10 < the 14-row history
    dict(long_pattern="", short_len=4, short_layers=3),
    dict(long_pattern="SS", short_len=4, short_layers=2, position_bias=6, time_bias=24, time_query="next"),
    # the gated delta rule reads no request time or sequence mean: exact, with either readout
    dict(long_pattern="TT", short_len=4, tadn=dict(chunk_size=4, gating="gated_delta")),
    dict(long_pattern="TT", short_len=4, long_readout="intent", long_time_inputs=True,
         tadn=dict(chunk_size=4, gating="gated_delta", key_dim=12)),
    dict(long_pattern="TS", short_len=4, long_readout="intent", time_bias=24,
         tadn=dict(chunk_size=3, gating="gated_delta")),
    dict(long_pattern="S", short_len=0, long_time_inputs=True),
    # the long branch added to the short branch's fusion (fusion.long: residual)
    dict(long_pattern="TT", short_len=4, long_readout="intent", fusion=dict(long="residual"),
         tadn=dict(chunk_size=4, gating="gated_delta")),
    # the copy path, with and without a long branch
    dict(long_pattern="TT", short_len=4, long_readout="intent", far_copy=True,
         tadn=dict(chunk_size=4, gating="gated_delta")),
    dict(long_pattern="", short_len=4, far_copy=True, tadn=dict(chunk_size=3)),
])
def test_rows_equal_the_per_cutoff_tower_without_tadn(kw: dict) -> None:
    torch.manual_seed(0)
    tower = HyTRecTower(_cfg(**kw)).eval()
    for name, p in tower.named_parameters():
        if name.endswith(("rel_bias", "time_bias", "gap_emb.weight", "log_gap_rate", "long_scale")):  # make them matter
            torch.nn.init.normal_(p)
    x, off, ts, tc = _batch(LENGTHS)
    rows, _ = tower.forward_all_positions({"item": x}, off, ts, tc)
    assert rows.shape == (sum(LENGTHS), 16)
    for b, n in enumerate(LENGTHS):
        a = int(off[b])
        for r in range(n):  # the prefix a .. a+r as its own one-example batch, whose target
            # (request time t_current) is the next event, or the example's target after the last row
            t_next = ts[a + r + 1:a + r + 2] if r + 1 < n else tc[b:b + 1]
            want = tower({"item": x[a:a + r + 1]}, torch.tensor([0, r + 1]), ts[a:a + r + 1], t_next)
            torch.testing.assert_close(rows[a + r], want[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pattern,time_bias,query", [("TTTS", 0, "event"), ("T", 0, "event"),
                                                     ("TTTS", 24, "event"), ("TTTS", 24, "next")])
def test_rows_never_depend_on_later_rows(pattern: str, time_bias: int, query: str) -> None:
    torch.manual_seed(1)
    tower = HyTRecTower(_cfg(long_pattern=pattern, time_bias=time_bias, time_query=query)).eval()
    for name, p in tower.named_parameters():
        if name.endswith("time_bias"):
            torch.nn.init.normal_(p)
    x, off, ts, tc = _batch(LENGTHS, seed=2)
    rows, _ = tower.forward_all_positions({"item": x}, off, ts, tc)
    b, r = 3, 7  # change every row after row r of example 3
    a, n = int(off[b]), LENGTHS[b]
    x2 = x.clone()
    x2[a + r + 1:a + n] += torch.randn(n - r - 1, 16)
    rows2, _ = tower.forward_all_positions({"item": x2}, off, ts, tc)
    torch.testing.assert_close(rows2[: a + r + 1], rows[: a + r + 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(rows2[a + n:], rows[a + n:], atol=1e-5, rtol=0)
    assert (rows2[a + r + 1:a + n] - rows[a + r + 1:a + n]).abs().max() > 1e-3  # the change is seen


@pytest.mark.parametrize("query", ["event", "next"])
def test_the_predicted_event_time_reaches_only_its_own_row(query: str) -> None:
    """With ``time_query: next`` row r's time bias measures from event r + 1 (the event it
    predicts): moving that event's timestamp changes row r and leaves rows before it alone; with
    ``event`` it cannot change row r. The request time t_current reaches the last row the same way."""
    torch.manual_seed(6)
    tower = HyTRecTower(_cfg(long_pattern="SS", short_len=4, time_bias=24, time_query=query)).eval()
    for name, p in tower.named_parameters():
        if name.endswith("time_bias"):
            torch.nn.init.normal_(p)
    x, off, ts, tc = _batch(LENGTHS, seed=3)
    rows, _ = tower.forward_all_positions({"item": x}, off, ts, tc)
    b, r = 3, 9
    a, n = int(off[b]), LENGTHS[b]
    ts2 = ts.clone()
    ts2[a + r + 1:] += 5_000_000  # event r + 1 and everything after it happen ~2 months later
    rows2, _ = tower.forward_all_positions({"item": x}, off, ts2, tc + 5_000_000)
    torch.testing.assert_close(rows2[: a + r], rows[: a + r], atol=1e-5, rtol=0)
    moved = (rows2[a + r] - rows[a + r]).abs().max().item()
    assert moved > 1e-3 if query == "next" else moved < 1e-5
    now = ts[a + n - 1:a + n] + 1  # a request right after the last event, then two months later
    last = tower({"item": x[a:a + n]}, torch.tensor([0, n]), ts[a:a + n], now)
    later = tower({"item": x[a:a + n]}, torch.tensor([0, n]), ts[a:a + n], now + 5_000_000)
    assert ((later - last).abs().max().item() > 1e-3) == (query == "next")


def test_rows_with_tadn_at_the_last_position_differ_only_by_the_running_mean() -> None:
    """For a history shorter than K + 2 the long part has at most one row, so the running mean is
    the full mean and the last row equals the per-cutoff tower exactly (τ uses t_current)."""
    torch.manual_seed(3)
    tower = HyTRecTower(_cfg(long_pattern="TTTS")).eval()
    x, off, ts, tc = _batch([5])
    rows, _ = tower.forward_all_positions({"item": x}, off, ts, tc)
    want = tower({"item": x}, off, ts, tc)
    torch.testing.assert_close(rows[-1], want[0], atol=1e-5, rtol=0)


def test_segment_prefix_mean_matches_a_loop() -> None:
    x, off, _, _ = _batch(LENGTHS)
    got = segment_prefix_mean(x, off, segment_ids(off, x.shape[0]))
    for b, n in enumerate(LENGTHS):
        a = int(off[b])
        for r in range(n):
            torch.testing.assert_close(got[a + r], x[a:a + r + 1].mean(0), atol=1e-6, rtol=0)


def test_sliding_window_softmax_rows_equal_last_only_on_each_window() -> None:
    torch.manual_seed(4)
    mixer = SoftmaxMixer(16, 2, group_waste=0.0, window=3).eval()
    x, off, _, _ = _batch(LENGTHS)
    seg = segment_ids(off, x.shape[0])
    full = mixer(x, SeqContext(off, seg, x.new_zeros(x.shape[0]), False, False, None, None))
    for b, n in enumerate(LENGTHS):
        a = int(off[b])
        for r in range(n):
            lo = max(0, r - 2)
            w = x[a + lo:a + r + 1]
            o = torch.tensor([0, w.shape[0]])
            want = mixer(w, SeqContext(o, segment_ids(o, w.shape[0]), w.new_zeros(w.shape[0]), True, False, None, None))
            torch.testing.assert_close(full[a + r], want[0], atol=1e-5, rtol=0)


def test_time_gap_bucket_values() -> None:
    gaps = torch.tensor([-5, 0, 1, 60, 3600, 86400, 30 * 86400, 365 * 86400, 10**12])
    assert time_gap_bucket(gaps, 64).tolist() == [0, 0, 2, 11, 23, 32, 42, 49, 63]
    assert time_gap_bucket(gaps, 12).tolist() == [0, 0, 2, 11, 11, 11, 11, 11, 11]
    # bucket b starts at gap 2^(b/2) - 1: the boundaries of buckets 2 and 3 are at 1 s and 1.83 s
    assert time_gap_bucket(torch.tensor([[1, 2], [3, 4]]), 64).tolist() == [[2, 3], [4, 4]]


def test_next_event_times() -> None:
    ts = torch.tensor([10, 20, 30, 40, 41])
    off = torch.tensor([0, 2, 2, 5])  # histories of 2, 0 and 3 events
    got = next_event_times(ts, off, torch.tensor([25, 99, 50]))
    assert got.tolist() == [20, 25, 40, 41, 50]
    assert next_event_times(ts[:0], torch.tensor([0, 0]), torch.tensor([7])).tolist() == []


@pytest.mark.parametrize("num_buckets", [1, 2, 12, 64, 128])
def test_integer_bucket_edges_match_the_log_definition(num_buckets: int) -> None:
    """The layers' integer bucketing (``time_gap_edges`` + ``torch.bucketize``) equals the
    floating-point definition at every edge, one second on either side, and on random gaps."""
    edges = time_gap_edges(num_buckets)
    assert edges.shape == (num_buckets - 1,)
    # below 2^40 s (~35,000 years): past ~10^14 s the float64 log2 rounds 1 + g = 2^49 - 1 up to
    # 2^49 and the reference, not the integer edges, is one bucket off
    near = edges[edges < 2**40]
    gaps = torch.cat([near - 1, near, near + 1, torch.tensor([-7, 0, 1, 2, 3, 10**12]),
                      torch.randint(0, 10**9, (2000,), generator=torch.Generator().manual_seed(0))])
    fast = torch.bucketize(gaps.clamp(min=0), edges, right=True)
    assert torch.equal(fast, time_gap_bucket(gaps, num_buckets))
    if num_buckets == 64:  # hand values: bucket b starts at ceil(2^(b/2)) - 1 s (bucket 1 is empty)
        assert edges[:7].tolist() == [1, 1, 2, 3, 5, 7, 11]
        assert edges[22:24].tolist() == [2896, 4095]  # buckets 23 (holds 1 h = 3600 s) and 24


@pytest.mark.parametrize("max_distance,time_buckets,query", [(3, 0, False), (0, 30, False), (3, 30, False),
                                                             (3, 30, True)])
def test_position_and_time_bias_match_a_dense_reference(max_distance: int, time_buckets: int,
                                                        query: bool) -> None:
    torch.manual_seed(7)
    mixer = SoftmaxMixer(8, 2, group_waste=0.0, max_distance=max_distance, time_buckets=time_buckets).eval()
    for p in (mixer.rel_bias, mixer.time_bias):
        if p is not None:
            torch.nn.init.normal_(p)
    lengths = [5, 0, 7, 1, 3]
    off = torch.tensor([0] + lengths).cumsum(0)
    x = torch.randn(sum(lengths), 8)
    # steps of 0-3 s put many pairwise gaps exactly on bucket edges (1, 2, 3, 5, 7, 11 s ...);
    # one jump of up to 10^6 s per sequence covers the far buckets
    steps = torch.randint(0, 4, (x.shape[0],))
    steps[off[:-1][torch.tensor(lengths) > 2] + 2] = torch.randint(0, 10**6, (1,)).item()
    ts = T0 + steps.cumsum(0)
    # query times: each row's own time plus 0-3 s or 0-3 x 10^5 s, as the next event's time would be
    qts = ts + torch.randint(0, 4, ts.shape) * torch.tensor([1, 100_000])[torch.randint(0, 2, ts.shape)]
    qts = qts if query else ts
    seg = segment_ids(off, x.shape[0])
    full = mixer(x, SeqContext(off, seg, x.new_zeros(x.shape[0]), False, False, ts, qts if query else None))
    last = mixer(x, SeqContext(off, seg, x.new_zeros(x.shape[0]), True, False, ts, qts if query else None))
    for s, n in enumerate(lengths):
        a = int(off[s])
        if n == 0:
            continue
        q, k, v = mixer.qkv(x[a:a + n]).view(n, 3, 2, 4).unbind(1)
        att = torch.einsum("ihd,jhd->hij", q, k) / 2.0
        dist = torch.zeros(n, n, dtype=torch.int64)
        for i in range(n):  # pair by pair, from the definitions
            for j in range(n):
                dist[i, j] = i - j
                if max_distance > 0:
                    att[:, i, j] += mixer.rel_bias[:, min(max(i - j, 0), max_distance - 1)]
                if time_buckets > 0:
                    gap = max(int(qts[a + i] - ts[a + j]), 0)
                    bucket = min(math.floor(2 * math.log2(1 + gap)), time_buckets - 1)
                    att[:, i, j] += mixer.time_bias[:, bucket]
        att = att.masked_fill(dist < 0, float("-inf")).softmax(-1)
        ref = mixer.out(torch.einsum("hij,jhd->ihd", att, v).reshape(n, 8))
        torch.testing.assert_close(full[a:a + n], ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(last[s], ref[-1], atol=1e-5, rtol=0)


def test_next_event_rows() -> None:
    assert next_event_rows(torch.tensor([0, 2, 3]), 3).tolist() == [1, 3, 4]
    # an empty history in the middle has no row, its example's target is never used
    assert next_event_rows(torch.tensor([0, 2, 2, 4]), 4).tolist() == [1, 4, 3, 6]


def test_shared_negatives_loss_matches_a_direct_reference() -> None:
    gen = torch.Generator().manual_seed(5)
    p, r, d, v = 7, 5, 4, 10
    user = torch.randn(p, d, generator=gen)
    pos_ids = torch.randint(2, v, (p,), generator=gen)
    neg_ids = torch.randint(2, v, (r,), generator=gen)
    neg_ids[0] = pos_ids[0]  # an accidental hit, masked
    table = torch.randn(v, d, generator=gen)
    log_q = -math.log(v - 2)
    got = shared_negatives_loss(user, pos_ids, table[pos_ids], neg_ids, table[neg_ids], log_q)
    total = 0.0
    for i in range(p):
        s = float(user[i] @ table[pos_ids[i]])
        logits = [s] + [float(user[i] @ table[n]) - math.log(r) - log_q for n in neg_ids if n != pos_ids[i]]
        total += math.log(sum(math.exp(z) for z in logits)) - s
    assert abs(float(got) - total / p) < 1e-5
    empty = shared_negatives_loss(user[:0], pos_ids[:0], table[pos_ids[:0]], neg_ids, table[neg_ids], log_q)
    assert float(empty) == 0.0



def test_whole_catalog_negatives_give_the_exact_softmax() -> None:
    """``data.num_negatives: -1``: every known item is a negative, the log-Q term cancels and the
    shared-negatives loss is the plain cross-entropy over the catalog (items 2..V-1)."""
    from hytrec_torchrec.data.collate import sample_negatives
    from hytrec_torchrec.modules.loss import uniform_log_q

    gen = torch.Generator().manual_seed(7)
    p, d, v, tau = 9, 6, 12, 0.05
    user = torch.nn.functional.normalize(torch.randn(p, d, generator=gen), dim=-1)
    table = torch.nn.functional.normalize(torch.randn(v, d, generator=gen), dim=-1)
    pos_ids = torch.randint(2, v, (p,), generator=gen)
    neg_ids = torch.from_numpy(sample_negatives(np.random.default_rng(0), -1, v))
    assert neg_ids.tolist() == list(range(2, v))
    got = shared_negatives_loss(user, pos_ids, table[pos_ids], neg_ids, table[neg_ids], uniform_log_q(v), tau)
    want = torch.nn.functional.cross_entropy(user @ table[2:].t() / tau, pos_ids - 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    with pytest.raises(ConfigError, match="num_negatives: -2 must be >= -1"):
        DataConfig(path="x", num_negatives=-2).validate()

@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_whole_catalog_fast_path_equals_the_shared_negatives_loss(similarity: str) -> None:
    """``AllPositionsLoss(whole_catalog=True)`` (one ``F.cross_entropy``) gives the loss and the
    gradients of the reference :func:`shared_negatives_loss` over the same catalog negatives, and
    refuses negatives that are not the whole catalog in order."""
    from torchrec.sparse.jagged_tensor import JaggedTensor

    from hytrec_torchrec.model import AllPositionsLoss
    from hytrec_torchrec.modules.loss import catalog_softmax_loss

    cosine = similarity == "cosine"
    gen = torch.Generator().manual_seed(11)
    b, n, d, v = 3, 9, 8, 15
    off = torch.tensor([0, 4, 5, 9])
    hist_ids = torch.randint(2, v, (n,), generator=gen)
    tgt_ids = torch.randint(2, v, (b,), generator=gen)
    neg_ids = torch.arange(2, v)
    ones = torch.ones(b, dtype=torch.int64)
    neg_len = torch.tensor([v - 2] + [0] * (b - 1))
    rows0 = torch.randn(n, d, generator=gen)
    table0 = torch.randn(v, d, generator=gen)

    def run(whole: bool, negatives: torch.Tensor = neg_ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = rows0.clone().requires_grad_(True)
        table = table0.clone().requires_grad_(True)
        loss = AllPositionsLoss(v, cosine, 0.3, whole_catalog=whole)(
            rows, off, JaggedTensor(values=table[hist_ids], lengths=off[1:] - off[:-1]), hist_ids,
            JaggedTensor(values=table[tgt_ids], lengths=ones), tgt_ids,
            JaggedTensor(values=table[negatives], lengths=neg_len), negatives)
        loss.backward()
        return loss.detach(), rows.grad, table.grad

    fast, ref = run(True), run(False)
    for got, want in zip(fast, ref):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="data.num_negatives must be -1"):
        run(True, torch.flip(neg_ids, [0]))
    empty = catalog_softmax_loss(rows0[:0], hist_ids[:0], table0[2:])
    assert float(empty) == 0.0


def test_training_windows_tile_every_training_target_once() -> None:
    cfg = DataConfig(path="x", max_len=4, all_positions=True, cutoffs_per_user=0)
    length = np.array([2, 3, 5, 11, 12], dtype=np.int64)
    user = np.arange(len(length), dtype=np.int64)
    ex = make_examples(cfg, "train", 0, user, length, np.zeros_like(length))
    for u, n in enumerate(length):
        cut = ex.cutoff[ex.row == u]
        targets = []
        for c in cut:  # the window of cutoff c supervises targets max(c - max_len, 0) + 1 .. c
            targets += list(range(max(c - cfg.max_len, 0) + 1, c + 1))
        # leave-last-out: the last two events are validation and test targets
        assert sorted(targets) == list(range(1, n - 2)), (u, cut)
    assert np.array_equal(ex.target_end, ex.cutoff + 1)
    capped = make_examples(DataConfig(path="x", max_len=4, all_positions=True, cutoffs_per_user=1),
                           "train", 0, user, length, np.zeros_like(length))
    assert capped.cutoff.tolist() == (length - 3)[length > 3].tolist()  # the most recent window
    # train_on_valid: the validation event (position L - 2) is a training target too
    tov = make_examples(DataConfig(path="x", max_len=4, all_positions=True, cutoffs_per_user=0,
                                   train_on_valid=True), "train", 0, user, length, np.zeros_like(length))
    for u, n in enumerate(length):
        targets = [t for c in tov.cutoff[tov.row == u] for t in range(max(c - 4, 0) + 1, c + 1)]
        assert sorted(targets) == list(range(1, n - 1)), (u, targets)


@pytest.mark.parametrize("kw, key", [
    (dict(num_targets=2), "num_targets"),
    (dict(min_history=2), "min_history"),
])
def test_all_positions_config_errors_name_the_key(kw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        DataConfig(path="x", all_positions=True, **kw).validate()


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_cosine_losses_ignore_the_scale_of_item_vectors(similarity: str) -> None:
    """Under cosine similarity both training losses see only directions: scaling every item
    vector by 3 leaves them unchanged (and changes the dot-product losses)."""
    from torchrec.sparse.jagged_tensor import JaggedTensor

    from hytrec_torchrec.model import AllPositionsLoss, RetrievalLoss

    cosine = similarity == "cosine"
    gen = torch.Generator().manual_seed(6)
    b, n, r, d, v = 3, 7, 4, 8, 12
    off = torch.tensor([0, 2, 5, 7])
    rows = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    user = rows[off[1:] - 1]
    hist_ids = torch.randint(2, v, (n,), generator=gen)
    tgt_ids = torch.randint(2, v, (b,), generator=gen)
    neg_ids = torch.randint(2, v, (r,), generator=gen)
    table = torch.randn(v, d, generator=gen)
    counts = torch.ones(v, dtype=torch.int64)

    def losses(scale: float) -> tuple[float, float]:
        def jt(ids: torch.Tensor, lengths: torch.Tensor) -> JaggedTensor:
            return JaggedTensor(values=table[ids] * scale, lengths=lengths)
        ones = torch.ones(b, dtype=torch.int64)
        neg_len = torch.tensor([r] + [0] * (b - 1))
        one = RetrievalLoss(counts, cosine, 0.5)(user, jt(tgt_ids, ones), tgt_ids, jt(neg_ids, neg_len), neg_ids)
        every = AllPositionsLoss(v, cosine, 0.5)(rows, off, jt(hist_ids, off[1:] - off[:-1]), hist_ids,
                                                  jt(tgt_ids, ones), tgt_ids, jt(neg_ids, neg_len), neg_ids)
        return float(one), float(every)

    a, c = losses(1.0), losses(3.0)
    if cosine:
        assert abs(a[0] - c[0]) < 1e-5 and abs(a[1] - c[1]) < 1e-5
    else:
        assert abs(a[0] - c[0]) > 1e-3 and abs(a[1] - c[1]) > 1e-3


def test_epoch_stats_count_every_supervised_position(tmp_path) -> None:
    """Loader statistics under ``all_positions``: one supervised position per history event, and
    over one training epoch that is every training event after a user's first (leave-last-out:
    events 1 .. n-3 of a user with n events)."""
    from hytrec_torchrec.data.loader import load_shard, make_dataloader
    from hytrec_torchrec.data.stats import read_epoch
    from hytrec_torchrec.data.testing import random_sequences, write_prepared

    users = random_sequences(15, 30, 40, seed=3, min_events=1)
    path = write_prepared(tmp_path / "prep", users, 40)
    cfg = DataConfig(path=str(path), max_len=8, all_positions=True, cutoffs_per_user=0, batch_size=2)
    shard = load_shard(cfg)
    loader = make_dataloader(cfg, shard=shard)
    assert loader.dataset.count_summary()["dropped_examples_rank"] == 0  # 14 windows, 7 batches
    st = read_epoch(loader, all_positions=True).as_dict()
    expected = sum(max(len(u["item"]) - 3, 0) for u in users.values())
    assert st["supervised_positions"] == st["history_events"] == expected
    per_cutoff = read_epoch(make_dataloader(cfg, shard=shard)).as_dict()  # counted as per-cutoff
    assert per_cutoff["supervised_positions"] == per_cutoff["target_events"] == per_cutoff["examples"]


def test_a_stacked_short_branch_reads_exactly_its_receptive_field() -> None:
    """With L short layers of window K the user embedding depends on the last L·(K−1)+1 events
    (short-only tower): changing the event just outside that changes nothing, the one just
    inside changes it."""
    torch.manual_seed(7)
    tower = HyTRecTower(_cfg(long_pattern="", short_len=4, short_layers=3)).eval()
    x, off, ts, tc = _batch([14], seed=4)
    base = tower({"item": x}, off, ts, tc)
    reach = 3 * (4 - 1) + 1
    for row, seen in ((14 - reach - 1, False), (14 - reach, True)):
        x2 = x.clone()
        x2[row] += torch.randn(16)  # not a constant shift, which the LayerNorms remove
        moved = (tower({"item": x2}, off, ts, tc) - base).abs().max().item()
        assert (moved > 1e-4) == seen, (row, moved)
