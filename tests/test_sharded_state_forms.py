"""Sharded tables in both state-dict forms, on 2 gloo processes on CPU (issue 44, "Two stacks").

Where torchrec's ``ShardingEnv`` takes ``output_dtensor`` (both pinned stacks), sharded tables are
``DTensor`` by default (``HYTREC_SHARDED_STATE=auto``), as newer torch recommends; the
``sharded_tensor`` form gives the deprecated ``ShardedTensor`` that older checkpoints hold.

- the switch resolves by feature detection and refuses unknown forms;
- a checkpoint written in the old form resumes in the new form and one written in the new form
  resumes in the old form, each ending exactly where an uninterrupted run in the new form ends;
- distributed evaluation (hytrec-eval's job function) of a checkpoint of either form, by a model
  of either form, gives the same metrics, and export (hytrec-export) of either gives the same
  weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from hytrec_torchrec.config import ConfigError, from_dict, to_dict
from hytrec_torchrec.data.testing import random_sequences, write_prepared
from hytrec_torchrec.evaluation.evaluate import evaluate_checkpoint, load_eval_config
from hytrec_torchrec.ranking.ranks import local_item_blocks, local_pieces
from hytrec_torchrec.runtime import distributed
from hytrec_torchrec.runtime.config import JobConfig
from hytrec_torchrec.runtime.distributed import (
    SHARDED_STATE_ENV,
    dtensor_supported,
    init_distributed,
    sharded_state_form,
)
from hytrec_torchrec.runtime.restore import load_unsharded
from hytrec_torchrec.serving.cli import main as export_main
from hytrec_torchrec.testing import run_distributed
from hytrec_torchrec.training.loop import Trainer

OLD, NEW = "sharded_tensor", "auto"
ITEM = "embeddings.embeddings.item.weight"


def _job(data: Path, run: Path, max_steps: int) -> Dict[str, Any]:
    """A small job with the default shardings (row-wise item/attribution, table-wise
    category/behavior) and a checkpoint every 2 steps."""
    return to_dict(from_dict(JobConfig, {
        "run": {"dir": str(run), "seed": 3, "tensorboard": False, "progress": False},
        "data": {"path": str(data), "batch_size": 4, "num_negatives": 8, "max_len": 40,
                 "cutoffs_per_user": 2, "num_workers": 0, "seed": 5},
        "embeddings": {"dim": 16, "lr": 0.05, "init_std": 0.1},
        "model": {"embedding_dim": 16, "short_len": 4, "long_pattern": "TS", "heads": 2,
                  "short_heads": 2, "fusion": {"num_experts": 2}},
        "train": {"max_steps": max_steps, "validate_every": 0, "checkpoint_every": 2, "val_batches": 1,
                  "pipeline": "plain", "threads": 1},
    }))


def _fit(cfg_dict: Dict[str, Any], form: str) -> Dict[str, Any]:
    """Train (resuming from the run's latest checkpoint) with sharded tables in ``form``; returns
    the whole state after the resume and at the end, and the class of the item table's entry."""
    os.environ[SHARDED_STATE_ENV] = form
    trainer = Trainer(from_dict(JobConfig, cfg_dict), init_distributed("gloo", "cpu"))
    trainer.maybe_resume()
    kind = type(trainer.model.state_dict()[ITEM]).__name__
    start = trainer.full_state_dict()
    trainer.fit()
    return {"kind": kind, "start": start, "final": trainer.full_state_dict()}


def _train_body(rank: int, world: int, out: str, stages: list) -> None:
    """Run ``stages`` (``[(cfg_dict, form), ...]``) in turn, each resuming where the one before
    stopped; rank 0 saves each stage's :func:`_fit` result to ``out``."""
    results = [_fit(cfg, form) for cfg, form in stages]
    if rank == 0:
        torch.save(results, out)


def _eval_body(rank: int, world: int, cases: list, data: str, out: str) -> None:
    """Evaluate each ``(checkpoint, form)`` of ``cases`` with the model's tables in ``form``."""
    env = init_distributed("gloo", "cpu")
    ecfg, job = load_eval_config(None, ["data.batch_size=4"])
    results = []
    for ckpt, form in cases:
        os.environ[SHARDED_STATE_ENV] = form
        res = evaluate_checkpoint(ckpt, data, ecfg, env, job)
        results.append(res["overall"])
    if rank == 0:
        Path(out).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """Three 2-rank runs of the same job to step 4 (checkpoints at steps 2 and 4):
    ``new`` uninterrupted in the new form, ``old_new`` stopped at step 2 in the old form and
    resumed in the new one, ``new_old`` the other way round."""
    root = tmp_path_factory.mktemp("forms")
    data = write_prepared(root / "prep", random_sequences(20, 60, 40, seed=7, min_events=6), num_items=40)
    plans = {"new": [(NEW, 4)], "old_new": [(OLD, 2), (NEW, 4)], "new_old": [(NEW, 2), (OLD, 4)]}
    out: Dict[str, Any] = {"root": root, "data": data}
    for name, stages in plans.items():
        run = root / name
        jobs = [(_job(data, run, steps), form) for form, steps in stages]
        run_distributed(_train_body, 2, (str(root / f"{name}.pt"), jobs))
        out[name] = torch.load(root / f"{name}.pt", weights_only=True)
    return out


def _assert_same(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_switch_resolves_by_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    new = "dtensor" if dtensor_supported() else "sharded_tensor"
    monkeypatch.delenv(SHARDED_STATE_ENV, raising=False)
    assert sharded_state_form() == new == sharded_state_form("auto")
    monkeypatch.setenv(SHARDED_STATE_ENV, "sharded_tensor")
    assert sharded_state_form() == "sharded_tensor"
    assert sharded_state_form("auto") == new  # an explicit form wins over the environment
    monkeypatch.setenv(SHARDED_STATE_ENV, "nonsense")
    with pytest.raises(ConfigError, match="HYTREC_SHARDED_STATE='nonsense'"):
        sharded_state_form()
    # a torchrec whose ShardingEnv has no output_dtensor keeps the old form
    monkeypatch.setattr(distributed, "dtensor_supported", lambda: False)
    assert sharded_state_form("auto") == "sharded_tensor"
    with pytest.raises(ConfigError, match="no output_dtensor"):
        sharded_state_form("dtensor")


def test_a_plain_table_has_no_pieces_and_stays_whole() -> None:
    table = torch.arange(12.0).view(6, 2)
    assert local_pieces(table) is None
    (r0, c0, w), = local_item_blocks(table, owner_only=False)
    assert (r0, c0) == (0, 0) and w is table


def test_each_form_is_the_one_asked_for(runs: Dict[str, Any]) -> None:
    new = "DTensor" if dtensor_supported() else "ShardedTensor"
    assert runs["new"][0]["kind"] == new
    assert [s["kind"] for s in runs["old_new"]] == ["ShardedTensor", new]
    assert [s["kind"] for s in runs["new_old"]] == [new, "ShardedTensor"]


def test_checkpoints_resume_across_forms_exactly(runs: Dict[str, Any]) -> None:
    full = runs["new"][0]["final"]
    for name in ("old_new", "new_old"):
        first, second = runs[name]
        _assert_same(second["start"], first["final"])  # the step-2 checkpoint loaded whole
        _assert_same(second["final"], full)  # optimizer state, RNG and loader position too
    # the two forms train alike: step 2 is the same in both
    _assert_same(runs["old_new"][0]["final"], runs["new_old"][0]["final"])
    moved = (full[ITEM] - runs["new"][0]["start"][ITEM]).abs().max()
    assert moved > 1e-4  # training moved the table, so the comparisons are not vacuous


def test_evaluation_and_export_read_both_forms(runs: Dict[str, Any]) -> None:
    root, data = runs["root"], runs["data"]
    old = root / "old_new" / "checkpoints" / "step_00000002"  # written in the old form
    new = root / "new_old" / "checkpoints" / "step_00000002"  # written in the new form
    cases = [(str(old), NEW), (str(new), NEW), (str(old), OLD), (str(new), OLD)]
    run_distributed(_eval_body, 2, (cases, str(data), str(root / "eval.json")))
    metrics = json.loads((root / "eval.json").read_text())
    assert metrics[0]["examples"] > 0
    for m in metrics[1:]:
        assert m == metrics[0]

    step2 = runs["old_new"][0]["final"]
    for ckpt in (old, new):
        model, _, _ = load_unsharded(ckpt)
        for key, value in model.state_dict().items():
            if not key.startswith("loss."):
                assert torch.equal(value, step2[key]), key
        assert export_main(["--checkpoint", str(ckpt), "--out", str(root / f"export_{ckpt.parent.parent.name}"),
                     "--no-pt2"]) == 0
    a = torch.jit.load(str(root / "export_old_new" / "model.pt")).state_dict()
    b = torch.jit.load(str(root / "export_new_old" / "model.pt")).state_dict()
    _assert_same(a, b)
