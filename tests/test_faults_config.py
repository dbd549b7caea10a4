"""Config values: NaN and infinity are refused for every float key, and a type error says which type
was expected and which was given (issue 43, "the one-line contract").

The float keys are found by walking the config dataclasses of every tool, so a float key added
later is covered without a new test.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Union

import pytest

from data_prep.cli import main as prep_main
from data_prep.config import PrepConfig
from hytrec_torchrec.config import ConfigError, load_config
from hytrec_torchrec.runtime.config import JobConfig
from tests.test_outputs_prep import _raw

CONFIGS = [JobConfig, PrepConfig]


def _is_float(tp: Any) -> bool:
    if tp is float:
        return True
    origin = typing.get_origin(tp)
    return (origin is Union or origin is types.UnionType) and float in typing.get_args(tp)


def float_keys(cls: type, prefix: str = "") -> Iterator[str]:
    """The dotted keys of every float (or optional float) field under ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if _is_float(tp):
            yield key
        elif dataclasses.is_dataclass(tp):
            yield from float_keys(tp, f"{key}.")


KEYS = [(cls, key) for cls in CONFIGS for key in float_keys(cls)]


def test_the_walk_finds_the_keys_of_the_issue() -> None:
    keys = {key for _, key in KEYS}
    assert {"optim.lr", "optim.grad_clip", "embeddings.lr"} <= keys, sorted(keys)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("cls,key", KEYS, ids=[f"{c.__name__}:{k}" for c, k in KEYS])
def test_nan_and_inf_are_refused_for_every_float_key(cls: type, key: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(cls, None, [f"{key}={value}"])
    message = str(info.value)
    assert f": {key}: expected a finite float, got " in message and len(message.splitlines()) == 1, message


def test_nan_in_a_yaml_file_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("optim:\n  lr: .NaN\n  grad_clip: .inf\n")
    with pytest.raises(ConfigError, match=rf"^{path}: optim\.lr: expected a finite float, got nan"):
        load_config(JobConfig, path)


@pytest.mark.parametrize("override,message", [
    ("optim.lr=abc", "optim.lr: expected a float, got str 'abc'"),
    ("optim.lr=true", "optim.lr: expected a float, got bool True"),
    ("optim.grad_clip=[1]", "optim.grad_clip: expected a float or null, got list [1]"),
    ("data.batch_size=1.5", "data.batch_size: expected an integer, got float 1.5"),
    ("data.batch_size=null", "data.batch_size: expected an integer, got null"),
    ("run.dir=3", "run.dir: expected a string, got int 3"),
    ("run.tensorboard=yes please", "run.tensorboard: expected true/false, got str 'yes please'"),
    ("optim=3", "optim: expected a mapping for"),
])
def test_a_type_error_says_which_type_was_expected_and_given(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(JobConfig, None, [override])
    assert message in str(info.value), str(info.value)


def test_prep_refuses_nan_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _raw(tmp_path / "raw")
    assert prep_main([str(raw), str(tmp_path / "out"), "filters.inactive_days=.nan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inactive_days: expected a finite float, got nan" in err[0], err
    assert not (tmp_path / "out").exists()


# ---- YAML merge keys (<<) in every config a tool reads --------------------------------------------

def _merge_argv(tool: str, tmp: Path, config: Path | None, override: str | None) -> list[str]:
    """A command line of ``tool`` whose only fault is its config file or override."""
    extra = (["--config", str(config)] if config else []) + ([override] if override else [])
    if tool == "prep":
        return [str(_raw(tmp / "raw")), str(tmp / "out"), *extra]
    if tool == "train":
        return [f"run.dir={tmp / 'out'}", f"data.path={tmp / 'data'}", "run.progress=false", *extra]
    return ["--checkpoint", str(tmp / "run"), "--data", str(tmp / "data"), "--out", str(tmp / "out"), *extra]


def _tool_main(tool: str):
    from hytrec_torchrec.evaluation.cli import main as eval_main
    from hytrec_torchrec.training.cli import main as train_main

    return {"prep": prep_main, "train": train_main, "eval": eval_main}[tool]


#: per tool, a config file (top level and nested) and an override value, each with a merge key
MERGE_CASES = [
    ("prep", "<<: {min_time: 0}\n", None),
    ("prep", "filters:\n  <<: {min_user_events: 2}\n", None),
    ("prep", None, "filters={<<: {min_user_events: 2}}"),
    ("train", "<<: {run: {seed: 3}}\n", None),
    ("train", "data:\n  <<: {max_len: 12}\n", None),
    ("train", None, "data={<<: {max_len: 12}}"),
    ("eval", "<<: {split: test}\n", None),
    ("eval", "diagnostics:\n  <<: {users: 0}\n", None),
    ("eval", None, "diagnostics={<<: {users: 0}}"),
]


@pytest.mark.parametrize("tool,text,override", MERGE_CASES,
                         ids=[f"{t}-{'override' if o else 'file'}{i}" for i, (t, _, o) in enumerate(MERGE_CASES)])
def test_every_tool_refuses_a_yaml_merge_key_with_one_line(tool: str, text: str | None, override: str | None,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A merge key (``<<:``) in the train, prep or eval config, in a file or an override value: one
    line naming the merge key, exit status 2, and nothing written (issue 43, "YAML merge keys")."""
    monkeypatch.delenv("HYTREC_DEBUG", raising=False)
    config = None
    if text is not None:
        config = tmp_path / "cfg.yaml"
        config.write_text(text)
    assert _tool_main(tool)(_merge_argv(tool, tmp_path, config, override)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "YAML merge keys (<<) are not supported" in err[0], err
    assert not (tmp_path / "out").exists()
