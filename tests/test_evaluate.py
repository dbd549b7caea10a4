"""Offline evaluation (hytrec-eval): metrics against NumPy, perfect scorer, ties, segments,
1 rank == 2 ranks on one checkpoint, the report files, and bad input (docs/design.md §6, §7)."""

from __future__ import annotations

import json
import shutil
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hytrec_torchrec.config import ConfigError, from_dict, to_dict
from hytrec_torchrec.data.testing import random_sequences, write_prepared
from hytrec_torchrec.evaluation.evaluate import EvalConfig, load_eval_config
from hytrec_torchrec.ranking.metrics import SegmentedRankingMetric, ranking_metrics
from hytrec_torchrec.ranking.ranks import ranked_catalog_sizes, target_ranks
from hytrec_torchrec.evaluation.segments import SegmentConfig, segment_flags
from hytrec_torchrec.testing import fit_job, run_distributed
from hytrec_torchrec.runtime.config import JobConfig

KS = (1, 10, 50, 100, 200, 500)
DAY = 86400


# ---------------------------------------------------------------- metrics vs NumPy
def _np_rank(scores: np.ndarray, target: int) -> int:
    """Slow reference: 1 + catalog items (index >= 2, not the target) scoring >= the target."""
    return 1 + sum(1 for j in range(2, len(scores)) if j != target and scores[j] >= scores[target])


def _np_metric_row(rank: int, catalog: int) -> dict[str, float]:
    row: dict[str, float] = {}
    for k in KS:
        row[f"hr@{k}"] = 1.0 if rank <= k else 0.0
        row[f"ndcg@{k}"] = 1.0 / math.log2(rank + 1) if rank <= k else 0.0
    row["mrr"] = 1.0 / rank
    row["auc"] = 1.0 - (rank - 1) / (catalog - 1)
    return row


def _integer_case(rng: np.random.Generator, B: int, V: int, D: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """user [B, D], table [V, D] of small integers (scores exact in any precision, many ties
    planted) and targets [B] in the real-item range [2, V)."""
    user = rng.integers(-2, 3, size=(B, D)).astype(np.float32)
    table = rng.integers(-2, 3, size=(V, D)).astype(np.float32)
    return user, table, rng.integers(2, V, size=B)


def test_segmented_metric_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    B, V, D = 40, 700, 6
    user, table, targets = _integer_case(rng, B, V, D)
    member = rng.random((B, 3)) < 0.5
    member[:, 0] = True
    ranks = target_ranks(torch.tensor(user), torch.tensor(targets), [(0, 0, torch.tensor(table))], V)
    catalog = V - 2
    ref_ranks = [_np_rank(table @ user[b], int(targets[b])) for b in range(B)]
    assert ranks.tolist() == ref_ranks
    metric = SegmentedRankingMetric(KS, catalog, ["all", "a", "b"])
    metric.update(ranks[:17], torch.tensor(member[:17]))  # two updates: sums accumulate
    metric.update(ranks[17:], torch.tensor(member[17:]))
    got = metric.compute()
    for s, name in enumerate(["all", "a", "b"]):
        rows = [_np_metric_row(r, catalog) for r, m in zip(ref_ranks, member[:, s]) if m]
        assert got[name]["examples"] == len(rows)
        for key in rows[0]:
            assert got[name][key] == pytest.approx(np.mean([r[key] for r in rows]), abs=1e-12), (name, key)
    # the segment "all" equals the plain mean of ranking_metrics
    plain = ranking_metrics(ranks, KS, catalog)
    for key, v in plain.items():
        assert got["all"][key] == pytest.approx(v, abs=1e-12)


def test_history_removal_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    B, V, D = 9, 80, 4
    user, table, targets = _integer_case(rng, B, V, D)
    lengths = rng.integers(0, 12, size=B)
    hist = [rng.integers(0, V, size=n) for n in lengths]
    hist[0] = np.array([targets[0], targets[0], 1, 0])  # the target itself is never removed
    lengths[0] = 4
    got = target_ranks(torch.tensor(user), torch.tensor(targets), [(0, 0, torch.tensor(table))], V,
                       history=(torch.tensor(np.concatenate(hist)), torch.tensor(lengths)))
    want = []
    for b in range(B):
        s = table @ user[b]
        t = int(targets[b])
        want.append(1 + sum(1 for j in range(2, V) if j != t and j not in set(hist[b].tolist()) and s[j] >= s[t]))
    assert got.tolist() == want
    plain = target_ranks(torch.tensor(user), torch.tensor(targets), [(0, 0, torch.tensor(table))], V)
    assert (got <= plain).all() and (got < plain).any()
    # AUC over each example's own ranked catalog: V - 2 minus its distinct removed items
    sizes = ranked_catalog_sizes(torch.tensor(np.concatenate(hist)), torch.tensor(lengths),
                                 torch.tensor(targets), V)
    want_sizes = [V - 2 - len({int(j) for j in hist[b] if j >= 2 and j != targets[b]}) for b in range(B)]
    assert sizes.tolist() == want_sizes and want_sizes[0] == V - 2
    metric = SegmentedRankingMetric(KS, V - 2, ["all"])
    metric.update(got, torch.ones(B, 1, dtype=torch.bool), sizes)
    want_auc = np.mean([1 - (r - 1) / (c - 1) for r, c in zip(want, want_sizes)])
    assert metric.compute()["all"]["auc"] == pytest.approx(want_auc, abs=1e-12)


def test_perfect_scorer_and_documented_ties() -> None:
    V = 600
    table = torch.eye(V)
    targets = torch.tensor([2, 77, 599])
    perfect = target_ranks(table[targets] * 2.0, targets, [(0, 0, table)], V)
    met = ranking_metrics(perfect, KS, V - 2)
    assert met["hr@1"] == 1.0 and met["auc"] == 1.0 and met["mrr"] == 1.0 and met["ndcg@10"] == 1.0
    # ties are pessimistic: a constant scorer puts the target last (rank = catalog size), AUC 0
    const = target_ranks(torch.zeros(3, V), targets, [(0, 0, table)], V)
    assert const.tolist() == [V - 2] * 3
    met = ranking_metrics(const, KS, V - 2)
    assert met["auc"] == 0.0 and met["hr@500"] == 0.0
    # a tie with exactly one other item costs one place
    user = table[targets] + table[torch.tensor([3, 78, 598])]
    assert target_ranks(user, targets, [(0, 0, table)], V).tolist() == [2, 2, 2]


# ---------------------------------------------------------------- segments
def test_segment_assignment_hand_computed() -> None:
    cfg = from_dict(SegmentConfig, {"cold_start_max_history": 2, "silent_old_min_age_days": 100,
                                    "silent_old_min_gap_days": 10, "ultra_long_min_history": 50,
                                    "length_buckets": [1, 3, 10]})
    #            history, age (days), gap (days since the last history event)
    examples = [(0, 0, 0),      # empty history: cold, no bucket
                (2, 200, 20),   # cold (2 <= 2), silent-old, len[1,3)
                (3, 200, 5),    # not cold, active recently, len[3,10)
                (9, 99, 50),    # too young for silent-old, len[3,10)
                (60, 365, 10)]  # ultra-long, silent-old (gap exactly 10), len[10,inf)
    h = torch.tensor([e[0] for e in examples])
    flags = segment_flags(cfg, h, torch.tensor([e[1] * DAY for e in examples]),
                          torch.tensor([e[2] * DAY for e in examples]))
    got = {name: f.nonzero().squeeze(1).tolist() for name, f in flags.items()}
    assert got == {"all": [0, 1, 2, 3, 4], "cold_start": [0, 1], "silent_old": [1, 4],
                   "ultra_long": [4], "len[1,3)": [1], "len[3,10)": [2, 3], "len[10,inf)": [4]}


def test_segments_from_batches_and_side_file(tmp_path: Path) -> None:
    """Segmenter on real test batches: ages/gaps from the prepared timestamps, side-file values."""
    from hytrec_torchrec.data.config import DataConfig
    from hytrec_torchrec.data.loader import make_dataloader
    from hytrec_torchrec.evaluation.segments import Segmenter

    t0 = 1_000_000_000
    def user(ts: list[int]) -> dict:
        n = len(ts)
        return {"item": [2 + i for i in range(n)], "attribution": [1] * n, "category": [1] * n,
                "behavior": [2] * n, "timestamp": ts}
    users = {
        2: user([t0, t0 + DAY, t0 + 2 * DAY]),                          # test: history 2, gap 1 day
        3: user([t0] + [t0 + 300 * DAY + i for i in range(5)] + [t0 + 400 * DAY]),  # history 6, old, gap 100 d
        4: user([t0 + i * 60 for i in range(12)]),                       # history 11, all within minutes
    }
    data = write_prepared(tmp_path / "prep", users, num_items=30, num_partitions=1)
    side = tmp_path / "side.parquet"
    pq.write_table(pa.table({"user_id": ["2", "3", "999"], "country": ["fr", "de", "us"]}), side)
    cfg = from_dict(SegmentConfig, {"cold_start_max_history": 2, "silent_old_min_age_days": 180,
                                    "silent_old_min_gap_days": 30, "ultra_long_min_history": 10,
                                    "length_buckets": [1, 5], "side_file": str(side)})
    seg = Segmenter(cfg, data)
    assert seg.names == ["all", "cold_start", "silent_old", "ultra_long", "len[1,5)", "len[5,inf)",
                         "country=de", "country=fr"]
    assert seg.side_counts["unknown_users"] == 1 and seg.side_counts["unknown_examples"] == ["999"]
    dcfg = from_dict(DataConfig, {"path": str(data), "batch_size": 8, "max_len": 4})
    batch = next(iter(make_dataloader(dcfg, 0, 1, 0, "test")))
    member = seg.membership(batch)
    got = {int(u): [n for n, m in zip(seg.names, member[i]) if m] for i, u in enumerate(batch.user)}
    assert got == {
        2: ["all", "cold_start", "len[1,5)", "country=fr"],
        3: ["all", "silent_old", "len[5,inf)", "country=de"],  # untruncated length 6 (max_len 4)
        4: ["all", "ultra_long", "len[5,inf)"],
    }
    assert seg.missing_counts() == {"country": 1}  # user 4 has no side value: counted


def test_side_file_errors(tmp_path: Path) -> None:
    from hytrec_torchrec.evaluation.segments import Segmenter, SideFileError

    data = write_prepared(tmp_path / "prep", random_sequences(4, 10, 20, seed=1), num_items=20)
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"user_id": [2, 3, 2], "tier": ["a", "b", "a"]}), dup)
    with pytest.raises(SideFileError, match=r"dup.parquet: row 2: duplicate user_id '2'"):
        Segmenter(from_dict(SegmentConfig, {"side_file": str(dup)}), data)
    nocol = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"uid": [2], "tier": ["a"]}), nocol)
    with pytest.raises(SideFileError, match="no user column 'user_id'"):
        Segmenter(from_dict(SegmentConfig, {"side_file": str(nocol)}), data)
    with pytest.raises(SideFileError, match="not found"):
        Segmenter(from_dict(SegmentConfig, {"side_file": str(tmp_path / "missing.parquet")}), data)


def test_eval_config_validation_and_routing() -> None:
    ecfg, job = load_eval_config(None, ["split=valid", "data.batch_size=7", "segments.length_buckets=[1,10]"])
    assert ecfg.split == "valid" and ecfg.segments.bucket_names() == ["len[1,10)", "len[10,inf)"]
    assert job == ["data.batch_size=7"]
    with pytest.raises(ConfigError, match=r"segments.length_buckets: \[10, 5\] must be strictly increasing"):
        load_eval_config(None, ["segments.length_buckets=[10,5]"])
    with pytest.raises(ConfigError, match="split: 'train' is not one of"):
        load_eval_config(None, ["split=train"])
    with pytest.raises(ConfigError, match=r"plot_metrics\[0\]: 'hr@3' is not a computed metric"):
        load_eval_config(None, ["plot_metrics=[hr@3]"])
    with pytest.raises(ConfigError, match="threads: 0 must be >= 1"):
        load_eval_config(None, ["threads=0"])
    assert load_eval_config("configs/eval/default.yaml", [])[0] == EvalConfig()
    # generative-recommenders' protocol: the default with the model-input history left out
    assert load_eval_config("configs/eval/published.yaml", [])[0] == EvalConfig(remove_history=True)


# ---------------------------------------------------------------- checkpoints, 1 vs 2 ranks
def _job(data: Path, run: Path) -> dict:
    return to_dict(from_dict(JobConfig, {
        "run": {"dir": str(run), "seed": 1, "tensorboard": False, "progress": False},
        "data": {"path": str(data), "batch_size": 5, "num_negatives": 8, "max_len": 40,
                 "cutoffs_per_user": 2, "num_workers": 0, "seed": 2},
        "embeddings": {"dim": 16, "lr": 0.05, "init_std": 0.1},
        "model": {"embedding_dim": 16, "short_len": 4, "long_pattern": "TS", "heads": 2,
                  "short_heads": 2, "fusion": {"num_experts": 2}},
        "train": {"max_steps": 3, "validate_every": 0, "checkpoint_every": 0, "val_batches": 1,
                  "pipeline": "plain"},
    }))


def _eval_body(rank: int, world: int, ckpt: str, data: str, out: str, overrides: list) -> None:
    from hytrec_torchrec.evaluation.evaluate import evaluate_checkpoint
    from hytrec_torchrec.runtime.distributed import init_distributed

    from hytrec_torchrec.evaluation.evaluate import NoEligibleUsersError

    ecfg, job = load_eval_config(None, overrides)
    env = init_distributed("gloo", "cpu")
    res = evaluate_checkpoint(ckpt, data, ecfg, env, job)
    # bad input on the same ranks: a split without eligible users (every user has < 1000 events)
    try:
        evaluate_checkpoint(ckpt, data, ecfg, env, job + ["data.min_history=1000"])
        res["no_eligible_error"] = None
    except NoEligibleUsersError as exc:
        res["no_eligible_error"] = str(exc)
    # a model trained through its validation events has no held-out validation split
    try:
        evaluate_checkpoint(ckpt, data, EvalConfig(split="valid"), env, job + ["data.train_on_valid=true"])
        res["train_on_valid_error"] = None
    except ConfigError as exc:
        res["train_on_valid_error"] = str(exc)
    if rank == 0:
        res["example_ranks"] = {c: v.tolist() for c, v in res["example_ranks"].items()}
        Path(out).write_text(json.dumps(res))
    _topk_body(rank, world, str(Path(out).parent))


def _cli_body(rank: int, world: int, argv: list, out: str) -> None:
    from hytrec_torchrec.evaluation.cli import main

    Path(out + f".rc{rank}").write_text(str(main(argv)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evalrun")
    data = write_prepared(root / "prep", random_sequences(23, 60, 50, seed=4, min_events=3), num_items=50)
    run_distributed(fit_job, 1, (_job(data, root / "run"),))  # written by 1 rank, read by 1 and 2
    from hytrec_torchrec.serving.export import export_checkpoint

    export_checkpoint(root / "run", root / "export", pt2=False)
    return data, root / "run"


OVERRIDES = ["data.batch_size=4", "segments.length_buckets=[1,5,20]"]


@pytest.fixture(scope="module")
def two_ranks(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-rank run: the checkpoint evaluated, the no-eligible-users error, the top-K merge."""
    data, run = trained
    out = tmp_path_factory.mktemp("two")
    run_distributed(_eval_body, 2, (str(run), str(data), str(out / "two.json"), OVERRIDES))
    return out


def test_one_and_two_ranks_identical_and_report(trained: tuple[Path, Path], two_ranks: Path,
                                                 tmp_path: Path) -> None:
    data, run = trained
    overrides = OVERRIDES
    # 1 rank through the CLI (report files), 2 ranks through the job function
    out = tmp_path / "report"
    argv = ["--checkpoint", str(run), "--checkpoint", str(run), "--model", str(run.parent / "export" / "model.pt"),
            "--name", "a", "--name", "b", "--name", "exported", "--data", str(data), "--out", str(out),
            *overrides, "threads=1"]
    run_distributed(_cli_body, 1, (argv, str(tmp_path / "cli")))
    assert (tmp_path / "cli.rc0").read_text() == "0"
    doc = json.loads((out / "metrics.json").read_text())
    two = json.loads((two_ranks / "two.json").read_text())
    one = doc["models"]["a"]
    assert one["timing"]["world_size"] == 1 and two["timing"]["world_size"] == 2
    assert one["timing"]["threads"] == 1  # the `threads` key reached torch.set_num_threads
    assert one["overall"]["examples"] == 23 == two["counts"]["users_eligible"]
    # identical: the ranks are exact integers, so hit rates and counts are equal exactly; means of
    # ndcg/mrr/auc are float64 sums in another order across ranks (equal to ~1e-16)
    for seg in ["overall"] + list(one["segments"]):
        a = one["overall"] if seg == "overall" else one["segments"][seg]
        b = two["overall"] if seg == "overall" else two["segments"][seg]
        assert a.keys() == b.keys()
        for key in a:
            if a[key] is None:  # metrics.json writes NaN (an empty segment) as null
                assert math.isnan(b[key]), (seg, key)
            elif key == "examples" or key.startswith("hr@"):
                assert a[key] == b[key], (seg, key)
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-15), (seg, key)
    for key in ("hr@1", "hr@10", "ndcg@10", "hr@500", "mrr", "auc"):
        assert key in doc["overall"]
    assert doc["models"]["b"]["overall"] == one["overall"]
    # the exported TorchScript model (hytrec-export) gives the checkpoint's numbers
    exported = doc["models"]["exported"]
    assert exported["model"]["exported"] and exported["overall"]["examples"] == 23
    for key, v in one["overall"].items():
        assert exported["overall"][key] == pytest.approx(v, abs=1e-9), key
    report = (out / "report.md").read_text()
    assert "| a |" in report and "| b |" in report and "len[5,20)" in report
    assert re.fullmatch(r".*prep: split 'leave_last_out' stage 'test' has no eligible users \(23 users, "
                        r"23 ineligible with data.min_history=1000.*", two["no_eligible_error"])
    assert two["train_on_valid_error"] and two["train_on_valid_error"].startswith(
        "split: 'valid' is not held out for this model: it was trained with data.train_on_valid=true")
    png = (out / "length_buckets.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # per-example ranks: the 2-rank gather holds the 1-rank run's examples and ranks exactly
    from hytrec_torchrec.evaluation.paired import align, read_ranks

    ranks = read_ranks(out)
    assert list(ranks) == ["a", "b", "exported"]
    gathered = {c: np.asarray(v, dtype=np.int64) for c, v in two["example_ranks"].items()}
    assert len(gathered["rank"]) == 23
    ia, ib = align(ranks["a"], gathered)
    for c in ("rank", "catalog"):
        np.testing.assert_array_equal(ranks["a"][c][ia], gathered[c][ib])
    assert one["overall"]["hr@10"] == pytest.approx(float((ranks["a"]["rank"] <= 10).mean()), abs=1e-12)
    # b and the export are the same model as a: every paired difference is 0
    assert [p["model"] for p in doc["paired"]] == ["b", "exported"]
    for p in doc["paired"]:
        assert p["hr@10"]["diff"] == 0 and p["hr@10"]["b_only"] == p["hr@10"]["a_only"] == 0
    assert "## Paired differences" in report


def test_moved_training_data_does_not_skip_the_vocabulary_check(trained: tuple[Path, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """The checkpoint's vocabulary fingerprints catch a permuted dataset even when the training
    data is gone; without fingerprints an unverifiable vocabulary is refused unless allowed."""
    import shutil

    from hytrec_torchrec.evaluation.cli import main
    from hytrec_torchrec.evaluation.evaluate import VocabMismatchError, check_vocab
    from hytrec_torchrec.runtime.restore import checkpoint_config

    data, run = trained
    _, state = checkpoint_config(run)
    assert set(state["vocab_fingerprints"]) == {"item", "attribution", "category", "behavior"}
    shuffled = tmp_path / "shuffled"
    shutil.copytree(data, shuffled)
    vocab = pq.read_table(shuffled / "vocab" / "item.parquet")
    pq.write_table(vocab.set_column(0, "raw", pa.array(vocab.column("raw").to_pylist()[::-1])),
                   shuffled / "vocab" / "item.parquet")
    moved = dict(state, data_path=str(tmp_path / "gone"))  # the training data has moved
    with pytest.raises(VocabMismatchError, match="item vocabulary .* differs .*fingerprint"):
        check_vocab(moved, shuffled, run)
    assert check_vocab(moved, data, run)["how"] == "fingerprint"
    old = {k: v for k, v in moved.items() if k != "vocab_fingerprints"}  # written before fingerprints
    with pytest.raises(VocabMismatchError, match="cannot check the ID vocabulary.*--allow-unchecked-vocab"):
        check_vocab(old, shuffled, run)
    assert check_vocab(old, shuffled, run, allow_unchecked=True)["item_vocab_checked"] is False
    rc = main(["--checkpoint", str(run), "--data", str(shuffled), "--out", str(tmp_path / "o")])
    assert rc == 3 and "differs" in capsys.readouterr().err


def test_bad_input_vocab_mismatch(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from hytrec_torchrec.evaluation.cli import main
    from hytrec_torchrec.evaluation.evaluate import VocabMismatchError, check_vocab
    from hytrec_torchrec.runtime.restore import checkpoint_config

    data, run = trained
    _, state = checkpoint_config(run)
    other = write_prepared(tmp_path / "other", random_sequences(5, 10, 30, seed=1), num_items=31)
    with pytest.raises(VocabMismatchError, match=r"checkpoint .*run.* table sizes .*'item': 50.*dataset "
                                                 r".*other.* has .*'item': 31"):
        check_vocab(state, other, run)
    assert check_vocab(state, data, run)["sizes_checked"]
    # same sizes, different item IDs than the training dataset
    import shutil

    shuffled = tmp_path / "shuffled"
    shutil.copytree(data, shuffled)
    vocab = pq.read_table(shuffled / "vocab" / "item.parquet")
    raw = vocab.column("raw").to_pylist()
    pq.write_table(vocab.set_column(0, "raw", pa.array(raw[::-1])), shuffled / "vocab" / "item.parquet")
    with pytest.raises(VocabMismatchError, match="same size, different IDs"):
        check_vocab(state, shuffled, run)
    # the CLI: clear message, exit code 3, before any process group is started
    rc = main(["--checkpoint", str(run), "--data", str(other), "--out", str(tmp_path / "o")])
    assert rc == 3
    rc = main(["--model", str(tmp_path / "x.pt"), "--data", str(data), "--out", str(tmp_path / "o")])
    assert rc == 3  # missing exported model
    # an exported model against a dataset with other vocabularies
    from hytrec_torchrec.evaluation.evaluate import check_exported_vocab

    model_file = run.parent / "export" / "model.pt"
    card = json.loads((run.parent / "export" / "model_card.json").read_text())
    assert check_exported_vocab(model_file, card, data)["item"] in ("raw_int64", "index")
    with pytest.raises(VocabMismatchError, match=r"exported model .*model.pt was trained with table sizes .*'item': 50"
                                                 r".* dataset .*other.* has .*'item': 31"):
        check_exported_vocab(model_file, card, other)
    with pytest.raises(VocabMismatchError, match=r"item vocabulary of dataset .*shuffled differs from the one exported "
                                                 r"model .* was trained with \(same size, different IDs"):
        check_exported_vocab(model_file, card, shuffled)


# ---------------------------------------------------------------- distributed top-K
def _topk_body(rank: int, world: int, out: str) -> None:
    from hytrec_torchrec.ranking.ranks import topk_distributed

    g = torch.Generator().manual_seed(5)
    user, table = torch.randn(11, 8, generator=g), torch.randn(3000, 8, generator=g)
    rows = (0, 1700) if rank == 0 else (1700, 3000)       # uneven row-wise shards
    mine = slice(0, 4) if rank == 0 else slice(4, 11)      # uneven users per rank
    s, i = topk_distributed(user[mine], [(rows[0], 0, table[rows[0]:rows[1]])], k=500)
    torch.save((s, i), Path(out) / f"top{rank}.pt")
    # history removal across ranks: every example's history is its own top-5 items
    from hytrec_torchrec.ranking.ranks import target_ranks_distributed

    hist = i[:, :5].reshape(-1)
    lengths = torch.full((i.shape[0],), 5, dtype=torch.int64)
    r = target_ranks_distributed(user[mine], i[:, 7], [(rows[0], 0, table[rows[0]:rows[1]])], 3000,
                                 history=(hist, lengths))
    torch.save(r, Path(out) / f"hist{rank}.pt")


def test_two_rank_topk_equals_single_process(two_ranks: Path) -> None:
    from hytrec_torchrec.ranking.ranks import target_ranks, topk_distributed

    tmp_path = two_ranks
    g = torch.Generator().manual_seed(5)
    user, table = torch.randn(11, 8, generator=g), torch.randn(3000, 8, generator=g)
    want_s, want_i = topk_distributed(user, [(0, 0, table)], k=500)  # no process group: one process
    ref = torch.topk(user @ table[2:].t(), 500, dim=1)
    assert torch.equal(want_i, ref.indices + 2)
    parts = [torch.load(tmp_path / f"top{r}.pt") for r in range(2)]
    assert torch.equal(torch.cat([p[1] for p in parts]), want_i)
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), want_s, rtol=0, atol=1e-5)
    # consistent with the ranks behind the metrics: the item at top-K place r has rank r
    r = target_ranks(user, want_i[:, 9], [(0, 0, table)], 3000)
    assert r.tolist() == [10] * 11
    # with the top-5 items as history removed, the 8th item ranks 3rd, on 2 ranks as on 1
    got = torch.cat([torch.load(tmp_path / f"hist{r}.pt") for r in range(2)])
    assert got.tolist() == [3] * 11


def test_data_parallel_checkpoint_evaluates_like_its_export(tmp_path: Path) -> None:
    """A checkpoint whose tables are data-parallel (dense kernel, Adam; trained on 2 ranks) is
    evaluated on 2 ranks with the CPU sequence lookup (runtime/dense_lookup.py) and gives the
    numbers of its unsharded TorchScript export on 1 rank."""
    from hytrec_torchrec.serving.export import export_checkpoint

    data = write_prepared(tmp_path / "prep", random_sequences(17, 60, 50, seed=6, min_events=3), num_items=50)
    job = _job(data, tmp_path / "run")
    job["embeddings"]["optimizer"] = "adam"
    job["embeddings"]["lr"] = 0.01
    for table in job["embeddings"]["tables"].values():
        table.update(sharding_type="data_parallel", compute_kernel="dense")
    run_distributed(fit_job, 2, (job,))
    export_checkpoint(tmp_path / "run", tmp_path / "export", pt2=False)
    out = tmp_path / "report"
    argv = ["--checkpoint", str(tmp_path / "run"), "--data", str(data), "--out", str(out), *OVERRIDES]
    run_distributed(_cli_body, 2, (argv, str(tmp_path / "cli")))
    assert (tmp_path / "cli.rc0").read_text() == "0"
    argv = ["--model", str(tmp_path / "export" / "model.pt"), "--data", str(data), "--out",
            str(tmp_path / "exported"), *OVERRIDES]
    run_distributed(_cli_body, 1, (argv, str(tmp_path / "cli1")))
    ckpt = json.loads((out / "metrics.json").read_text())
    exported = json.loads((tmp_path / "exported" / "metrics.json").read_text())
    assert ckpt["overall"]["examples"] == 17 == exported["overall"]["examples"]
    for key, v in ckpt["overall"].items():
        assert exported["overall"][key] == pytest.approx(v, abs=1e-9), key


def test_a_truncated_exported_model_is_a_one_line_error(trained: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """A model.pt cut short (a failed copy) is exit status 3 naming the file, not a zip-reader traceback."""
    from hytrec_torchrec.evaluation.cli import main
    from hytrec_torchrec.runtime.distributed import shutdown_distributed

    data, run = trained
    cut = tmp_path / "model.pt"
    whole = (run.parent / "export" / "model.pt").read_bytes()
    cut.write_bytes(whole[: len(whole) // 3])
    rc = main(["--model", str(cut), "--data", str(data), "--out", str(tmp_path / "o")])
    shutdown_distributed()
    err = capsys.readouterr().err.strip()
    assert rc == 3, err
    assert len(err.splitlines()) == 1 and f"{cut}: not a readable hytrec-export model" in err


def test_reports_name_models_not_generic_folders(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """``runs/demo/train`` and ``.../export/model.pt`` are named by their architecture and the folder
    above (the plots' legends and report.md said "train"); a named run keeps its name."""
    from hytrec_torchrec.evaluation.evaluate import model_name
    from hytrec_torchrec.runtime.config import describe_model

    _, run = trained
    assert model_name(run) == f"HyTRec TS, long memory + repeat ({run.parent.name})"
    step = sorted((run / "checkpoints").glob("step_*"))[-1]
    assert model_name(step) == f"HyTRec TS, long memory + repeat ({run.parent.name}/{step.name})"
    assert model_name(run.parent / "export" / "model.pt") == f"HyTRec TS, long memory + repeat ({run.parent.name}, exported)"
    named = tmp_path / "hytrec_tb"
    shutil.copytree(run, named)
    assert model_name(named) == "hytrec_tb"
    assert describe_model({"long_pattern": "", "short_len": 64, "repeat": True}) == "short-only + repeat"
    assert describe_model({"long_pattern": "SS", "short_len": 0}) == "SASRec-like SS"
    assert describe_model({"long_pattern": "TTTS", "short_len": 64}) == "HyTRec TTTS"  # an older config: the paper form
    assert describe_model({"long_pattern": "TTT", "short_len": 64, "long_readout": "intent", "repeat": True,
                           "tadn": {"gating": "gated_delta"}}) == "HyTRec TTT, long memory + repeat"


def test_a_long_evaluation_logs_its_progress(trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """hytrec-eval prints a progress line (batches, examples/s, time left) every PROGRESS_EVERY_S."""
    import logging

    from hytrec_torchrec.evaluation import evaluate as ev
    from hytrec_torchrec.runtime.distributed import shutdown_distributed

    data, run = trained
    monkeypatch.setattr(ev, "PROGRESS_EVERY_S", 0.0)
    ecfg, job = load_eval_config(None, ["data.batch_size=4", "diagnostics.users=0"])
    with caplog.at_level(logging.INFO, logger="hytrec.eval"):
        try:
            ev.evaluate_checkpoint(run, data, ecfg, None, job)
        finally:
            shutdown_distributed()
    lines = [r.getMessage() for r in caplog.records if "examples/s" in r.getMessage()]
    assert lines and lines[0].startswith("batch 1/") and "s left" in lines[-1], caplog.text[-2000:]
