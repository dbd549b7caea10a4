"""ULIM (``model.kind: ulim``): the pointer-generator's distribution, the per-category user
embeddings, the category-then-item scores against an item-by-item reference, the cascade, and the
next-category ranks against brute force."""

import pytest
import torch

from hytrec_torchrec.config import ConfigError, from_dict
from hytrec_torchrec.modules.config import TowerConfig, UlimConfig
from hytrec_torchrec.modules.ulim import UlimHead
from hytrec_torchrec.ranking.ranks import ranks_from_scores, target_ranks
from hytrec_torchrec.ranking.ulim import (
    cascade_categories,
    category_ranks,
    items_scored,
    most_frequent_category_ranks,
    ulim_block_scores,
    ulim_scores_reference,
)


def _head(pointer: bool = True, cosine: bool = False) -> UlimHead:
    torch.manual_seed(0)
    head = UlimHead(UlimConfig(pointer=pointer), 8, 7, cosine)
    for p in head.parameters():  # away from the zero-initialised output layer
        torch.nn.init.normal_(p, std=0.5)
    return head


def _interests(r: int = 5, m: int = 3):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(r, m, 8, generator=g)
    valid = torch.rand(r, m, generator=g) > 0.3
    valid[0] = False  # a history without categories
    cats = torch.randint(1, 7, (r, m), generator=g)  # 1 = unknown: never pointed to
    return torch.randn(r, 8, generator=g), tokens, valid, cats


@pytest.mark.parametrize("pointer", [True, False])
def test_category_distribution_sums_to_one_over_real_categories(pointer: bool) -> None:
    head = _head(pointer)
    u, tokens, valid, cats = _interests()
    p = head.category_log_probs(u, tokens, valid, cats).exp()
    torch.testing.assert_close(p[:, 2:].sum(1), torch.ones(5), atol=1e-5, rtol=0)
    assert float(p[:, :2].max().detach()) < 1e-6
    if pointer:  # the pointer's mass goes to the history's own (valid, real) categories only
        g = torch.sigmoid(head.gate(u))[:, 0]
        gen = torch.softmax(torch.cat([torch.full((5, 2), float("-inf")), head.generator(u)[:, 2:]], 1), 1)
        extra = p - g[:, None] * gen
        for r in range(1, 5):
            own = {int(c) for c, v in zip(cats[r], valid[r]) if v and c >= 2}
            for c in range(7):
                if c not in own:
                    assert abs(float(extra[r, c])) < 1e-5
        torch.testing.assert_close(p[0], gen[0], atol=1e-6, rtol=0)  # no categories: the generator alone


def test_category_users_use_their_own_token() -> None:
    head = _head()
    u, tokens, valid, cats = _interests()
    cs = torch.arange(7).unsqueeze(0).expand(5, 7)
    e = head.category_users(u, cs, tokens, valid, cats)
    for r in range(5):
        for c in range(7):
            tok = sum((tokens[r, m] for m in range(3) if valid[r, m] and int(cats[r, m]) == c), torch.zeros(8))
            x = torch.cat([u[r], head.category.weight[c], tok])
            torch.testing.assert_close(e[r, c], u[r] + head.mlp(x), atol=1e-5, rtol=1e-5)
    fresh = UlimHead(UlimConfig(), 8, 7, False)  # the output layer starts at 0: e_c = u
    torch.testing.assert_close(fresh.category_users(u, cs, tokens, valid, cats), u.unsqueeze(1).expand(5, 7, 8))


def test_scores_equal_the_item_by_item_reference_and_rank_like_target_ranks() -> None:
    g = torch.Generator().manual_seed(2)
    b, vc, v, d = 4, 6, 40, 8
    raw = torch.randn(b, vc, generator=g)
    raw[:, :2] = float("-inf")  # pad and unknown: no mass, as the head gives
    logp = torch.log_softmax(raw, 1)
    e = torch.randn(b, vc, d, generator=g)
    items = torch.randn(v, d, generator=g)
    cat = torch.randint(2, vc, (v,), generator=g)
    blocks = [(0, 0, items[:17]), (17, 0, items[17:])]  # two row shards of one process
    scored = ulim_block_scores(logp, e, blocks, cat, temperature=0.5)
    full = torch.cat([s for _, s in scored], 1)
    ref = ulim_scores_reference(logp, e, items, cat, 0.5)
    torch.testing.assert_close(full[:, 2:], ref[:, 2:], atol=1e-5, rtol=1e-5)
    # probabilities: exp(scores) sum to 1 over the catalog
    torch.testing.assert_close(full[:, 2:].exp().sum(1), torch.ones(b), atol=1e-5, rtol=0)
    targets = torch.randint(2, v, (b,), generator=g)
    want = 1 + ((ref[:, 2:] >= ref[torch.arange(b), targets][:, None]).sum(1) - 1)
    assert torch.equal(ranks_from_scores(scored, targets), want)
    # the dot-product path through the same counter is unchanged
    u = torch.randn(b, d, generator=g)
    dot = u @ items.t()
    want_dot = 1 + ((dot[:, 2:] >= dot[torch.arange(b), targets][:, None]).sum(1) - 1)
    assert torch.equal(target_ranks(u, targets, blocks, v), want_dot)


def test_cascade_keeps_only_the_top_categories() -> None:
    g = torch.Generator().manual_seed(3)
    b, vc, v, d = 3, 8, 50, 4
    logp = torch.log_softmax(torch.randn(b, vc, generator=g), 1)
    e = torch.randn(b, vc, d, generator=g)
    items = torch.randn(v, d, generator=g)
    cat = torch.randint(2, vc, (v,), generator=g)
    keep = cascade_categories(logp, 2)
    assert keep.sum(1).tolist() == [2, 2, 2] and not bool(keep[:, :2].any())
    full = torch.cat([s for _, s in ulim_block_scores(logp, e, [(0, 0, items)], cat, 1.0)], 1)
    cas = torch.cat([s for _, s in ulim_block_scores(logp, e, [(0, 0, items)], cat, 1.0, keep=keep)], 1)
    inside = keep[:, cat]
    assert torch.equal(cas[inside], full[inside]) and bool(torch.isinf(cas[~inside]).all())
    counts = torch.bincount(cat[2:], minlength=vc)
    assert items_scored(keep, cat).tolist() == [int(counts[keep[r]].sum()) for r in range(b)]
    # a target outside the kept categories ranks last (a miss)
    r = 0
    outside = next(j for j in range(2, v) if not bool(keep[r, cat[j]]))
    ranks = ranks_from_scores([(0, cas)], torch.tensor([outside, 2, 2]))
    assert int(ranks[0]) == v - 2


def test_category_ranks_and_the_most_frequent_baseline() -> None:
    logp = torch.tensor([[0.0, 0.0, -1.0, -0.5, -3.0], [0.0, 0.0, -2.0, -2.0, -1.0]])
    assert category_ranks(logp, torch.tensor([3, 2])).tolist() == [1, 3]  # ties count against the target
    hist = torch.tensor([2, 3, 3, 4, 4, 4])
    lengths = torch.tensor([3, 3])
    # user 0: 3 twice, 2 once; user 1: 4 three times
    assert most_frequent_category_ranks(hist, lengths, torch.tensor([3, 2]), 5).tolist() == [1, 3]


def test_kind_ulim_needs_interests() -> None:
    with pytest.raises(ConfigError, match="interests"):
        from_dict(TowerConfig, {"kind": "ulim"})
    from_dict(TowerConfig, {"kind": "ulim", "interests": {"count": 4}})


# ---------------------------------------------------------------- training and evaluation, 1 vs 2 ranks
def _ulim_job(data, run) -> dict:
    from hytrec_torchrec.config import to_dict
    from hytrec_torchrec.runtime.config import JobConfig

    return to_dict(from_dict(JobConfig, {
        "run": {"dir": str(run), "seed": 1, "tensorboard": False, "progress": False},
        "data": {"path": str(data), "batch_size": 5, "num_negatives": 8, "max_len": 40,
                 "cutoffs_per_user": 2, "num_workers": 0, "seed": 2},
        "embeddings": {"dim": 16, "lr": 0.05, "init_std": 0.1},
        "model": {"kind": "ulim", "embedding_dim": 16, "short_len": 4, "long_pattern": "T", "heads": 2,
                  "short_heads": 2, "fusion": {"num_experts": 2}, "interests": {"count": 3, "recent": 2},
                  "ulim": {"top_categories": 2}},
        "train": {"max_steps": 3, "validate_every": 0, "checkpoint_every": 0, "val_batches": 1,
                  "pipeline": "plain"},
    }))


def _ulim_eval_body(rank: int, world: int, ckpt: str, data: str, out: str) -> None:
    import json

    from hytrec_torchrec.evaluation.evaluate import evaluate_checkpoint, evaluate_exported, load_eval_config
    from hytrec_torchrec.runtime.distributed import init_distributed

    ecfg, job = load_eval_config(None, ["data.batch_size=4"])
    env = init_distributed("gloo", "cpu")
    evaluate = evaluate_exported if ckpt.endswith(".pt") else evaluate_checkpoint
    res = evaluate(ckpt, data, ecfg, env, job)
    if rank == 0:
        res["example_ranks"] = {c: v.tolist() for c, v in res["example_ranks"].items()}
        with open(out, "w") as f:
            json.dump({"overall": res["overall"], "example_ranks": res["example_ranks"]}, f)


@pytest.fixture(scope="module")
def ulim_run(tmp_path_factory):
    """A small ULIM model trained for 3 steps on 1 rank: (data, run directory)."""
    from hytrec_torchrec.data.testing import random_sequences, write_prepared
    from hytrec_torchrec.testing import fit_job, run_distributed

    root = tmp_path_factory.mktemp("ulim")
    data = write_prepared(root / "prep", random_sequences(23, 60, 50, seed=4, min_events=3), num_items=50)
    run_distributed(fit_job, 1, (_ulim_job(data, root / "run"),))
    return data, root / "run"


def test_ulim_trains_and_evaluates_alike_on_one_and_two_ranks(ulim_run, tmp_path) -> None:
    """A ULIM model trains and its evaluation (full and cascade ranks, next-category HR) is the same
    on 1 and 2 ranks (the per-category normalisers are reduced across the row shards)."""
    import json

    import numpy as np

    from hytrec_torchrec.evaluation.paired import align
    from hytrec_torchrec.testing import run_distributed

    data, run = ulim_run
    assert (run / "checkpoints" / "latest").exists()
    for world in (1, 2):
        run_distributed(_ulim_eval_body, world, (str(run), str(data), str(tmp_path / f"e{world}.json")))
    one, two = (json.loads((tmp_path / f"e{w}.json").read_text()) for w in (1, 2))
    # the exported module (hytrec-export) ranks every example as the checkpoint does
    from hytrec_torchrec.serving.export import export_checkpoint

    export_checkpoint(run, tmp_path / "export", pt2=False)
    run_distributed(_ulim_eval_body, 1, (str(tmp_path / "export" / "model.pt"), str(data), str(tmp_path / "ex.json")))
    ex = json.loads((tmp_path / "ex.json").read_text())
    c = {k: np.asarray(v) for k, v in ex["example_ranks"].items()}
    a = {c: np.asarray(v) for c, v in one["example_ranks"].items()}
    b = {c: np.asarray(v) for c, v in two["example_ranks"].items()}
    ia, ib = align(a, b)
    np.testing.assert_array_equal(a["rank"][ia], b["rank"][ib])
    ia, ic = align(a, c)
    np.testing.assert_array_equal(a["rank"][ia], c["rank"][ic])
    assert one["overall"]["next_category"] == two["overall"]["next_category"]
    assert one["overall"]["cascade"] == pytest.approx(two["overall"]["cascade"])
    nc, cas = one["overall"]["next_category"], one["overall"]["cascade"]
    assert nc["examples"] == 23 and 0 <= nc["hr@1"] <= nc["hr@5"] <= nc["hr@10"] <= 1
    assert cas["top_categories"] == 2 and 0 < cas["items_scored"] < cas["catalog"]
    assert one["overall"]["hr@10"] == pytest.approx(cas["recall@10"])


def _request_values(vocab, index: torch.Tensor) -> torch.Tensor:
    """Table indices → what a request carries for them (raw int64 IDs, or the indices)."""
    if vocab.id_space() == "index":
        return index.clone()
    raw_of = {int(i): int(r) for i, r in zip(vocab.index.tolist(), vocab.raw)}
    return torch.tensor([raw_of[int(i)] for i in index], dtype=torch.int64)


def test_exported_ulim_scores_equal_training_and_the_cascade_is_their_restriction(ulim_run, tmp_path) -> None:
    """The exported ULIM module (eager and scripted) scores every item as the training model's
    evaluation does (``ulim_block_scores`` on its outputs), and its answer is the top of those
    scores restricted to each request's top categories."""
    import warnings

    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from hytrec_torchrec.data.batch import FEATURE_KEYS, Batch
    from hytrec_torchrec.ranking.scoring import item_blocks
    from hytrec_torchrec.runtime.restore import load_unsharded
    from hytrec_torchrec.serving.export import build_serving, read_vocabs
    from hytrec_torchrec.serving.ulim import UlimServing

    data, run = ulim_run
    model, cfg, state = load_unsharded(run)
    model.eval()
    sizes = {k: int(v) for k, v in state["vocab_sizes"].items()}
    vocabs = read_vocabs(data, sizes)
    eager = build_serving(model, list(cfg.model.features), cfg.data.max_len, vocabs)
    assert isinstance(eager, UlimServing) and "category" in eager.required
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(eager)
    g = torch.Generator().manual_seed(7)
    lengths = [0, 3, 12, 1, 40]
    n = sum(lengths)
    idx = {f: torch.randint(2, sizes[f], (n,), generator=g) for f in ("item", "attribution", "category", "behavior")}
    ts = 1_000_000 + torch.sort(torch.randint(0, 50_000, (n,), generator=g)).values
    b = len(lengths)
    now = torch.full((b,), 1_060_000)
    # the training model's evaluation scores of the same histories (index space)
    lens = torch.tensor(lengths, dtype=torch.int32)
    kjt = KeyedJaggedTensor(keys=list(FEATURE_KEYS),
                            values=torch.cat([idx[f] for f in ("item", "attribution", "category", "behavior")]
                                             + [torch.full((b,), 2, dtype=torch.int64)]),
                            lengths=torch.cat([lens] * 4 + [torch.ones(b, dtype=torch.int32),
                                                            torch.zeros(b, dtype=torch.int32)]), stride=b)
    z = torch.zeros(b, dtype=torch.int64)
    batch = Batch(features=kjt, timestamps=ts, t_current=now, user=z, cutoff=z, first_event_time=z,
                  valid=torch.ones(b, dtype=torch.bool))
    with torch.no_grad():
        user, logp, e, _ = model.ulim_outputs(batch)
        bonus = model.repeat_bonus(batch, user)
        want = torch.cat([s for _, s in ulim_block_scores(logp, e, item_blocks(model), model.item_category,
                                                          model.loss.temperature, bonus)], 1)
        # requests in the exported module's ID spaces (the test data's raw IDs are the indices' strings)
        values = {f: _request_values(vocabs[f], idx[f]) for f in ("item", "attribution", "category", "behavior")}
        values["timestamp"] = ts
        req = (values, {k: torch.tensor(lengths) for k in values}, now)
        for served in (eager, scripted):
            got = served.scores(*req)
            torch.testing.assert_close(got[:, 2:], want[:, 2:], atol=1e-4, rtol=1e-4)
            ids, top = served(*req, 5)
            keep = cascade_categories(served.category_log_probs(*req), cfg.model.ulim.top_categories)
            masked = torch.where(keep[:, model.item_category], got, torch.full_like(got, float("-inf")))
            ref = torch.topk(masked, 5, dim=1)
            torch.testing.assert_close(top, ref.values, atol=1e-4, rtol=1e-4)


