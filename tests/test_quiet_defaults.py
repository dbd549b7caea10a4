"""Quiet, fast training defaults (issue 44): intra-op threads from the cores per local rank, the
known library messages dropped where they are raised, DDP's find_unused_parameters from the tower."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from hytrec_torchrec.config import ConfigError, from_dict, load_config, to_dict
from hytrec_torchrec.runtime.config import JobConfig
from hytrec_torchrec.runtime.known_warnings import (
    LOGGER_MESSAGES,
    ddp_find_unused_parameters,
    filter_known_messages,
)
from hytrec_torchrec.runtime.threads import _cgroup_quota, available_cores, choose_threads

# ---- threads ------------------------------------------------------------------------------------


def test_threads_default_to_the_cores_per_local_rank() -> None:
    assert choose_threads(0, 1, {}, cores=8) == (8, "8 cores / 1 local rank")
    assert choose_threads(0, 2, {}, cores=8) == (4, "8 cores / 2 local ranks")
    assert choose_threads(0, 4, {}, cores=2)[0] == 1  # never 0


def test_threads_told_otherwise() -> None:
    assert choose_threads(3, 2, {"OMP_NUM_THREADS": "1"}, cores=8) == (3, "train.threads")
    assert choose_threads(0, 2, {"OMP_NUM_THREADS": "6"}, cores=8) == (6, "OMP_NUM_THREADS")
    assert choose_threads(0, 1, {"OMP_NUM_THREADS": "x"}, cores=8) == (8, "8 cores / 1 local rank")


def test_cgroup_quota_caps_the_cores(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert _cgroup_quota(cpu_max) == 2
    assert available_cores(cpu_max) <= 2
    cpu_max.write_text("max 100000\n")
    assert _cgroup_quota(cpu_max) is None
    assert _cgroup_quota(tmp_path / "absent") is None


def test_threads_config_key() -> None:
    assert load_config(JobConfig, None, ["data.path=x", "train.threads=2"]).train.threads == 2
    with pytest.raises(ConfigError, match="train.threads"):
        load_config(JobConfig, None, ["data.path=x", "train.threads=-1"])


# ---- library messages ---------------------------------------------------------------------------


@pytest.mark.parametrize("logger_name", sorted(LOGGER_MESSAGES))
def test_known_messages_are_dropped_at_their_logger(logger_name: str, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("HYTREC_LOG", raising=False)
    filter_known_messages()
    filter_known_messages()  # idempotent: one filter per logger
    logger = logging.getLogger(logger_name)
    assert sum(type(f).__name__ == "KnownMessages" for f in logger.filters) == 1
    known = LOGGER_MESSAGES[logger_name][0] + " ..."
    with caplog.at_level(logging.WARNING, logger=logger_name):
        logger.warning(known)
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records if r.name == logger_name] == ["something else"]
    monkeypatch.setenv("HYTREC_LOG", "INFO")  # asked for: shown
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=logger_name):
        logger.warning(known)
    assert [r.getMessage() for r in caplog.records if r.name == logger_name] == [known]


# ---- DDP's find_unused_parameters ---------------------------------------------------------------

SASREC = {"short_len": 0, "long_pattern": "SS", "long_readout": "last", "repeat": False}


def _model_cfg(**model: Any) -> Any:
    return load_config(JobConfig, None, ["data.path=x", *(f"model.{k}={v}" for k, v in model.items())]).model


def test_find_unused_parameters_follows_the_tower() -> None:
    assert ddp_find_unused_parameters(None, _model_cfg()) is True  # the default HyTRec tower
    assert ddp_find_unused_parameters(None, _model_cfg(**SASREC)) is False
    assert ddp_find_unused_parameters(None, _model_cfg(**{**SASREC, "repeat": True})) is True
    assert ddp_find_unused_parameters(True, _model_cfg(**SASREC)) is True
    assert ddp_find_unused_parameters(False, _model_cfg()) is False


def _train_and_report(rank: int, world: int, cfgs: list[dict], out: str) -> None:
    from hytrec_torchrec.runtime.distributed import init_distributed
    from hytrec_torchrec.training.loop import Trainer

    flags = []
    for cfg in cfgs:
        trainer = Trainer(from_dict(JobConfig, cfg), init_distributed("gloo", "cpu"))
        flags.append(trainer.model._dmp_wrapped_module.find_unused_parameters)
        trainer.fit()  # DDP without the flag fails on the second step if a parameter got no gradient
    Path(out).write_text(repr(flags))


@pytest.mark.slow
def test_towers_without_the_flag_train(tmp_path: Path) -> None:
    """The SASRec-like towers, whose flag auto turns off, train for several steps on histories of
    mixed lengths, in last-position and all-position training with the time-gap bias."""
    from hytrec_torchrec.data.testing import random_sequences, write_prepared
    from hytrec_torchrec.testing import run_distributed

    data = write_prepared(tmp_path / "prepared", random_sequences(24, 40, 30, seed=5, min_events=3), num_items=30)
    base = {"data": {"path": str(data), "batch_size": 4, "num_negatives": 8, "max_len": 20, "num_workers": 0},
            "embeddings": {"dim": 16}, "model": {"embedding_dim": 16, "heads": 2, **SASREC},
            "train": {"max_steps": 5, "validate_every": 0, "checkpoint_every": 0, "val_batches": 1},
            "run": {"tensorboard": False, "progress": False}}
    plain = to_dict(from_dict(JobConfig, {**base, "run": {**base["run"], "dir": str(tmp_path / "a")}}))
    allpos = to_dict(from_dict(JobConfig, {
        **base, "run": {**base["run"], "dir": str(tmp_path / "b")},
        "data": {**base["data"], "all_positions": True, "cutoffs_per_user": 0},
        "model": {**base["model"], "time_bias": 8}}))
    run_distributed(_train_and_report, 1, ([plain, allpos], str(tmp_path / "flags")))
    assert (tmp_path / "flags").read_text() == "[False, False]"
