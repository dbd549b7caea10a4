"""Bad input to the training job: each gets a clear error naming what is wrong.

- job-config errors (unknown key, wrong type, invalid sharding type) name the dotted key and
  the file, and ``hytrec-train`` exits with status 2 (the command-line runs of these are cases of
  the corpus in ``tests/bad_inputs/``);
- settings the CPU cannot run (``adam`` on a fused table; the uvm kernels) and a
  ``data_parallel`` table without the ``dense`` kernel (or the reverse) are config errors before
  sharding, with exit status 2;
- resuming a run on a dataset whose vocabulary sizes differ from the checkpoint's is refused (the
  shared check, runtime/data_check.py; same sizes with other IDs: tests/bad_inputs);
- a non-finite loss stops the job naming the step and batch, and the last good checkpoint stays
  intact and loadable.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hytrec_torchrec.config import ConfigError, from_dict, to_dict
from hytrec_torchrec.data.testing import random_sequences, write_prepared
from hytrec_torchrec.testing import fit_job, run_distributed
from hytrec_torchrec.runtime.config import JobConfig, load_job_config
from hytrec_torchrec.runtime.sharding import (
    check_compute_kernels_device,
    check_sparse_optimizer_device,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["train.max_stepz=3"], "train.max_stepz: unknown key"),
        (["optim.lr=fast"], "optim.lr: expected a float, got str 'fast'"),
        (["embeddings.tables.item.sharding_type=diagonal"],
         "embeddings.tables.item.sharding_type: 'diagonal' is not one of"),
        (["embeddings.tables.video.sharding_type=row_wise"], "embeddings.tables.video"),
        (["train.pipeline=turbo"], "train.pipeline"),
        (["data.max_len=0"], "data.max_len"),
        (["data.train_on_valid=true", "train.validate_every=5"], "train.validate_every: 5 must be 0"),
    ],
)
def test_config_errors_name_the_key(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_job_config(str(DEMO), overrides)
    assert needle in str(info.value)


ALL_DATA_PARALLEL = [f"embeddings.tables.{t}.{k}={v}" for t in ("item", "attribution", "category", "behavior")
                     for k, v in (("sharding_type", "data_parallel"), ("compute_kernel", "dense"))]


def test_cpu_refuses_a_sparse_optimizer_fbgemm_has_no_cpu_kernel_for() -> None:
    cfg = load_job_config(str(DEMO), ["embeddings.optimizer=adam"])
    with pytest.raises(ConfigError, match=r"embeddings.optimizer: 'adam' has no fused fbgemm kernel on CPU"
                                          r".*tables \['attribution', 'behavior', 'category', 'item'\]"):
        check_sparse_optimizer_device(cfg.embeddings, torch.device("cpu"))
    check_sparse_optimizer_device(cfg.embeddings, torch.device("cuda"))  # fbgemm has CUDA Adam
    for name in ("rowwise_adagrad", "adagrad", "sgd"):
        check_sparse_optimizer_device(load_job_config(str(DEMO), [f"embeddings.optimizer={name}"]).embeddings,
                                      torch.device("cpu"))
    # data_parallel tables take any optimizer (a plain torch one steps them), so Adam is fine on
    # CPU once every table is data_parallel, and refused while one is not
    check_sparse_optimizer_device(load_job_config(str(DEMO), ["embeddings.optimizer=adam", *ALL_DATA_PARALLEL]
                                                  ).embeddings, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"tables \['behavior'\] use a fused kernel"):
        check_sparse_optimizer_device(load_job_config(str(DEMO), ["embeddings.optimizer=adam", *ALL_DATA_PARALLEL[:6]]
                                                      ).embeddings, torch.device("cpu"))
    # hytrec-train says so before it shards anything, with exit status 2: tests/bad_inputs/train_adam_on_cpu.yaml


def test_fbgemm_cpu_dense_kernel_still_pools_sequence_lookups() -> None:
    """Why :mod:`hytrec_torchrec.runtime.dense_lookup` exists: fbgemm's CPU dense table-batched
    embedding ignores ``PoolingMode.NONE`` and returns one pooled row per bag. If an fbgemm
    upgrade fixes this (5 rows come back), the patch can go."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        DenseTableBatchedEmbeddingBagsCodegen,
    )

    tbe = DenseTableBatchedEmbeddingBagsCodegen([(10, 4)], pooling_mode=PoolingMode.NONE, use_cpu=True)
    out = tbe(torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 2, 5]))
    assert out.shape == (2, 4)  # pooled per bag, not one row per ID


@pytest.mark.parametrize("overrides,needle", [
    (["embeddings.tables.item.sharding_type=data_parallel"],
     "embeddings.tables.item.compute_kernel: 'fused' with sharding_type 'data_parallel'"),
    (["embeddings.tables.category.compute_kernel=dense"],
     "embeddings.tables.category.compute_kernel: 'dense' with sharding_type 'table_wise'"),
])
def test_data_parallel_and_the_dense_kernel_go_together(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_job_config(str(DEMO), overrides)
    load_job_config(str(DEMO), ALL_DATA_PARALLEL)


def test_cpu_refuses_kernels_that_cannot_run_an_embedding_collection() -> None:
    cfg = load_job_config(str(DEMO), ["embeddings.tables.item.compute_kernel=fused_uvm_caching"])
    with pytest.raises(ConfigError, match="embeddings.tables.item.compute_kernel: 'fused_uvm_caching' cannot run"):
        check_compute_kernels_device(cfg.embeddings, torch.device("cpu"))
    check_compute_kernels_device(cfg.embeddings, torch.device("cuda"))
    check_compute_kernels_device(load_job_config(str(DEMO), []).embeddings, torch.device("cpu"))
    check_compute_kernels_device(load_job_config(str(DEMO), ALL_DATA_PARALLEL).embeddings, torch.device("cpu"))


def _cfg(data: Path, run: Path, **train: object) -> JobConfig:
    return from_dict(JobConfig, {
        "run": {"dir": str(run), "seed": 1, "tensorboard": False, "progress": False},
        "data": {"path": str(data), "batch_size": 4, "num_negatives": 8, "max_len": 40,
                 "cutoffs_per_user": 1, "num_workers": 0},
        "embeddings": {"dim": 8},
        "model": {"embedding_dim": 8, "short_len": 4, "long_pattern": "TS", "heads": 2,
                  "short_heads": 2, "fusion": {"num_experts": 2}},
        "train": {"max_steps": 2, "validate_every": 0, "checkpoint_every": 2, "val_batches": 1,
                  "pipeline": "plain", **train},
    })


def _resume_on_other_data(rank: int, world: int, cfg_dict: dict, out: str) -> None:
    from hytrec_torchrec.runtime.distributed import init_distributed
    from hytrec_torchrec.training.loop import Trainer

    trainer = Trainer(from_dict(JobConfig, cfg_dict), init_distributed("gloo", "cpu"))
    try:
        trainer.maybe_resume()
    except ValueError as exc:
        Path(out).write_text(str(exc))


def _nan_after_checkpoint(rank: int, world: int, cfg_dict: dict, out: str) -> None:
    """Train to the step-2 checkpoint, then poison the tower output from step 3 on."""
    from hytrec_torchrec.runtime.distributed import init_distributed
    from hytrec_torchrec.training.loop import NonFiniteLossError, Trainer

    trainer = Trainer(from_dict(JobConfig, cfg_dict), init_distributed("gloo", "cpu"))
    calls = {"n": 0}

    def poison(module: torch.nn.Module, args: object, output: tuple) -> tuple:
        calls["n"] += 1
        if calls["n"] >= 3:  # training forwards 1, 2 are clean; the 3rd step's is poisoned
            return (output[0] * float("nan"),) + tuple(output[1:])  # (user, balance, long rows)
        return output

    trainer._unwrapped().tower.register_forward_hook(poison)
    try:
        trainer.fit()
    except NonFiniteLossError as exc:
        Path(out).write_text(str(exc))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("errs")
    a = write_prepared(root / "a", random_sequences(12, 40, 30, seed=2, min_events=5), num_items=30)
    b = write_prepared(root / "b", random_sequences(12, 40, 45, seed=2, min_events=5), num_items=45)
    return a, b


def test_resume_with_other_vocabulary_is_refused(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = datasets
    run_distributed(fit_job, 1, (to_dict(_cfg(a, tmp_path / "run")),))
    msg_file = tmp_path / "msg.txt"
    run_distributed(_resume_on_other_data, 1, (to_dict(_cfg(b, tmp_path / "run")), str(msg_file)))
    msg = msg_file.read_text()
    assert "vocabulary mismatch" in msg and "table sizes" in msg and str(b) in msg
    assert "step_00000002" in msg


def test_nan_loss_stops_and_keeps_last_checkpoint(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = datasets
    cfg = _cfg(a, tmp_path / "run", max_steps=4)
    msg_file = tmp_path / "msg.txt"
    run_distributed(_nan_after_checkpoint, 1, (to_dict(cfg), str(msg_file)))
    msg = msg_file.read_text()
    assert "loss is nan at step 3" in msg and "batch 2 of the epoch" in msg, msg
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000002"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step_")) == ["step_00000002"]
    assert json.loads((ckpts / "step_00000002" / "train_state.json").read_text())["step"] == 2
    from hytrec_torchrec.runtime.restore import load_unsharded

    model, _, _ = load_unsharded(tmp_path / "run")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


# ---- one run per run.dir; a resume or an evaluation never loads weights into another model ----

def _fit_catching(rank: int, world: int, cfg_dict: dict, out: str) -> None:
    """Train; write the ConfigError's message (or "ok") to ``out``."""
    from hytrec_torchrec.runtime.distributed import init_distributed
    from hytrec_torchrec.training.loop import Trainer
    from hytrec_torchrec.runtime.checkpoint import DamagedCheckpointError
    from hytrec_torchrec.runtime.safe_load import UnsafeCheckpointError

    try:
        Trainer(from_dict(JobConfig, cfg_dict), init_distributed("gloo", "cpu")).fit()
        Path(out).write_text("ok")
    except (ConfigError, UnsafeCheckpointError, DamagedCheckpointError) as exc:
        Path(out).write_text(str(exc))


def _fit(cfg: JobConfig, tmp_path: Path, world: int = 1) -> str:
    msg = tmp_path / "msg.txt"
    msg.unlink(missing_ok=True)
    run_distributed(_fit_catching, world, (to_dict(cfg), str(msg)))
    return msg.read_text()


def _steps(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))


def test_resume_with_a_changed_model_is_refused(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = datasets
    run = tmp_path / "run"
    assert _fit(_cfg(a, run), tmp_path) == "ok"
    changed = _cfg(a, run, max_steps=4)
    changed.model.long_pattern = "ST"  # other layers at the same block names
    msg = _fit(changed, tmp_path)
    assert "model.long_pattern: 'TS' -> 'ST'" in msg and "step_00000002" in msg, msg
    # the issue's case: every parameter a TS tower needs is in a TTTS checkpoint (block 1's
    # softmax layer would take the TADN layer's weights), which resumed without a word before
    deep = _cfg(a, tmp_path / "deep")
    deep.model.long_pattern = "TTTS"
    assert _fit(deep, tmp_path) == "ok"
    shallow = _cfg(a, tmp_path / "deep", max_steps=4)
    msg = _fit(shallow, tmp_path)
    assert "model.long_pattern: 'TTTS' -> 'TS'" in msg, msg
    free = _cfg(a, run, max_steps=4)
    free.model.dropout = 0.2  # changes no parameter: allowed
    assert _fit(free, tmp_path) == "ok"
    from hytrec_torchrec.runtime.restore import checkpoint_config

    with pytest.raises(ConfigError, match=r"model\.long_pattern: 'TS' -> 'ST'"):
        checkpoint_config(run, ["model.long_pattern=ST"])
    checkpoint_config(run, ["model.tadn.impl=recurrent"])


def test_a_fresh_run_into_an_earlier_runs_dir_is_refused_or_cleared(datasets: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    a, _ = datasets
    run = tmp_path / "run"
    assert _fit(_cfg(a, run, max_steps=3, checkpoint_every=1), tmp_path) == "ok"
    assert _steps(run) == ["step_00000001", "step_00000002", "step_00000003"]
    fresh = _cfg(a, run, max_steps=2, checkpoint_every=1, resume=False)
    msg = _fit(fresh, tmp_path)
    assert "holds an earlier run" in msg and "--overwrite" in msg, msg
    assert _steps(run) == ["step_00000001", "step_00000002", "step_00000003"]  # untouched
    (run / "notes.txt").write_text("mine")
    fresh.run.overwrite = True
    msg = _fit(fresh, tmp_path)
    assert "notes.txt" in msg and (run / "notes.txt").exists() and len(_steps(run)) == 3, msg
    (run / "notes.txt").unlink()
    assert _fit(fresh, tmp_path, world=2) == "ok"
    assert _steps(run) == ["step_00000001", "step_00000002"]  # the old step 3 is gone, not mixed in


def test_a_second_trainer_on_a_run_dir_is_refused(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    import fcntl
    import os

    from hytrec_torchrec.training.rundir import LOCK_NAME

    a, _ = datasets
    run = tmp_path / "run"
    run.mkdir()
    with open(run / LOCK_NAME, "w") as holder:  # as the first trainer's rank 0 holds it
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write(str(os.getpid()))
        holder.flush()
        msg = _fit(_cfg(a, run), tmp_path, world=2)
        assert f"in use by another trainer (pid {os.getpid()})" in msg, msg
        assert not (run / "checkpoints").exists()
    assert _fit(_cfg(a, run), tmp_path) == "ok"  # released: the next trainer runs


class _Payload:
    """A pickle that, when loaded, creates the file ``marker`` (as a real attack would run a shell)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_index_runs_no_code(datasets: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    import pickle

    from hytrec_torchrec.serving.cli import main as export_main
    from hytrec_torchrec.runtime.restore import load_unsharded
    from hytrec_torchrec.runtime.checkpoint import DamagedCheckpointError, write_manifest
    from hytrec_torchrec.runtime.safe_load import UnsafeCheckpointError

    a, _ = datasets
    run = tmp_path / "run"
    assert _fit(_cfg(a, run), tmp_path) == "ok"
    load_unsharded(run)  # a genuine index loads through the restricted reader
    marker = tmp_path / "pwned"
    ckpt = run / "checkpoints" / "step_00000002"
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(DamagedCheckpointError, match=r"\.metadata (does not match its SHA-256|has \d+ bytes)"):
        load_unsharded(run)  # the manifest catches the change first ...
    write_manifest(ckpt)  # ... so an attacker rewrites it too: the restricted reader must refuse
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata: refers to .*refused: unpickling it could run code"):
        load_unsharded(run)
    assert export_main(["--checkpoint", str(run), "--out", str(tmp_path / "export")]) == 2
    assert "refused: unpickling it could run code" in capsys.readouterr().err
    cfg = _cfg(a, run, max_steps=4)
    msg = _fit(cfg, tmp_path)  # resume
    assert "refused: unpickling it could run code" in msg, msg
    assert not marker.exists(), "the checkpoint index ran code"


@pytest.mark.parametrize("victim", ["__0_0.distcp", "rank_00000.pt", "train_state.json"])
def test_a_truncated_checkpoint_falls_back_to_the_previous_one(datasets: tuple[Path, Path], tmp_path: Path,
                                                               victim: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Each file of a checkpoint is in its manifest: cutting one short makes the run dir resolve to
    the previous checkpoint (with a warning naming the damaged one), naming the damaged checkpoint
    itself is a one-line error (rc 3 in hytrec-eval), and a resume continues from the older one."""
    import logging

    from hytrec_torchrec.evaluation.cli import main as eval_main
    from hytrec_torchrec.runtime.checkpoint import (
        MANIFEST,
        DamagedCheckpointError,
        latest_checkpoint,
        verify_checkpoint,
    )

    a, _ = datasets
    run = tmp_path / "run"
    assert _fit(_cfg(a, run, max_steps=4), tmp_path) == "ok"
    old, new = run / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000004"
    manifest = json.loads((new / MANIFEST).read_text())["files"]
    assert victim in manifest and manifest[victim]["size"] == (new / victim).stat().st_size
    verify_checkpoint(new)
    data = (new / victim).read_bytes()
    (new / victim).write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedCheckpointError, match=rf"step_00000004: .*{victim.replace('.', '[.]')}"):
        verify_checkpoint(new)
    with caplog.at_level(logging.WARNING, logger="hytrec.checkpoint"):
        assert latest_checkpoint(run) == old
    assert "step_00000004" in caplog.text and "skipping damaged checkpoint" in caplog.text
    assert eval_main(["--checkpoint", str(new), "--data", str(a), "--out", str(tmp_path / "ev")]) == 3
    assert _fit(_cfg(a, run, max_steps=6), tmp_path) == "ok"  # resumes from step 2, rewrites step 4
    assert _steps(run)[-1] == "step_00000006"
    verify_checkpoint(run / "checkpoints" / "step_00000004")
    for step in _steps(run):  # no checkpoint verifies: an error, not a silent fresh start
        (run / "checkpoints" / step / "train_state.json").write_text("{")
    with pytest.raises(DamagedCheckpointError, match="no checkpoint verifies"):
        latest_checkpoint(run)


def test_more_negatives_than_the_catalog_is_a_config_error(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = datasets  # 30 item indices: 28 known items
    cfg = _cfg(a, tmp_path / "run")
    cfg.data.num_negatives = 29
    msg = _fit(cfg, tmp_path)
    assert "data.num_negatives: 29 draws per batch from a catalog of 28 known items" in msg, msg
    assert not (tmp_path / "run" / "checkpoints").exists()
    cfg.data.num_negatives = 28
    assert _fit(cfg, tmp_path) == "ok"


def test_rerunning_a_finished_job_keeps_its_summary(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    """The same command run twice: the second resumes at the last step, trains nothing and leaves
    summary.json's validation as it was (it used to write an empty ``valid``)."""
    a, _ = datasets
    run = tmp_path / "run"
    assert _fit(_cfg(a, run), tmp_path) == "ok"
    first = json.loads((run / "summary.json").read_text())
    assert first["valid"] and first["step"] == 2
    assert _fit(_cfg(a, run), tmp_path) == "ok"
    assert json.loads((run / "summary.json").read_text()) == first
    assert _steps(run) == ["step_00000002"]


def test_every_checkpoint_draws_the_whole_curve(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    """curves.png is written with each checkpoint from train_state's loss_log and validation
    history, which a resumed run continues (so its picture starts at step 1, not at the resume)."""
    from hytrec_torchrec.runtime.checkpoint import read_train_state
    from hytrec_torchrec.runtime.config import describe_model

    a, _ = datasets
    run = tmp_path / "run"
    assert _fit(_cfg(a, run, max_steps=4, validate_every=2), tmp_path) == "ok"
    state = read_train_state(run / "checkpoints" / "step_00000004")
    assert [s for s, _ in state["loss_log"]] == [2, 4] and [h["step"] for h in state["history"]] == [2, 4]
    png = (run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # titled with the model, not only the folder (the PNG's Title text is the figure's title)
    model = describe_model(to_dict(_cfg(a, run).model)).encode()
    assert b"Title\x00" + model + b": " + str(run).encode() + b", step 4" in png
    assert _fit(_cfg(a, run, max_steps=6, validate_every=2), tmp_path) == "ok"
    resumed = read_train_state(run / "checkpoints" / "step_00000006")
    assert resumed["loss_log"][:2] == state["loss_log"] and [s for s, _ in resumed["loss_log"]] == [2, 4, 6]


def test_a_time_budget_stops_both_ranks_at_the_same_step_with_a_checkpoint(
        datasets: tuple[Path, Path], tmp_path: Path) -> None:
    """``train.max_minutes``: the ranks agree at the first time check past the budget (every
    ``TIME_CHECK_EVERY`` steps), save there and say so in summary.json; without a budget the same
    job runs its ``max_steps``."""
    from hytrec_torchrec.training.loop import TIME_CHECK_EVERY

    a, _ = datasets
    run = tmp_path / "run"
    cfg = _cfg(a, run, max_steps=3 * TIME_CHECK_EVERY, checkpoint_every=0, max_minutes=1e-6)
    assert _fit(cfg, tmp_path, world=2) == "ok"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == TIME_CHECK_EVERY and summary["stopped_by"] == "max_minutes"
    assert summary["valid"] and summary["wall_seconds"] > 0
    assert _steps(run) == [f"step_{TIME_CHECK_EVERY:08d}"]
    other = tmp_path / "other"
    assert _fit(_cfg(a, other, max_steps=3, checkpoint_every=0, max_minutes=60.0), tmp_path) == "ok"
    assert json.loads((other / "summary.json").read_text())["stopped_by"] == "steps"
    assert _steps(other) == ["step_00000003"]


@pytest.mark.parametrize("minutes", [0.0, -1.0])
def test_a_time_budget_must_be_positive(minutes: float) -> None:
    with pytest.raises(ConfigError, match="max_minutes"):
        load_job_config(str(DEMO), [f"train.max_minutes={minutes}"])
