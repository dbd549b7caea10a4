"""Checks that run before the work, not after it (issue 43, "the one-line contract").

``hytrec-train`` checks ``run.dir`` (a file, under a file, an earlier run without ``--resume``)
before it reads the dataset or builds the model: the tests give a dataset that does not exist, so a
run.dir refusal proves the check came first (it used to come after the load, in ``fit()``).
The other tools' outputs are checked before the work by their own tests (``--out`` of hytrec-eval,
hytrec-export and hytrec-compare, prep's OUTPUT: tests/test_outputs_*.py; every request of
examples/serve.py before the first model call: tests/test_faults_serve.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hytrec_torchrec.cli import DEBUG_ENV


def _train(tmp: Path, run_dir: Path, *extra: str) -> int:
    from hytrec_torchrec.training.cli import main

    return main(["--config", "demo", f"data.path={tmp / 'no-such-dataset'}", f"run.dir={run_dir}",
                 "run.tensorboard=false", "run.progress=false", *extra])


def _last_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("hytrec-train: "), lines
    return lines[-1]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def test_an_earlier_run_is_refused_before_the_dataset_is_read(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    assert _train(tmp_path, run, "train.resume=false") == 2
    assert "holds an earlier run" in _last_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == ["summary.json"]  # no lock, nothing written


def test_a_run_dir_under_a_file_is_refused_before_the_dataset_is_read(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("mine")
    assert _train(tmp_path, tmp_path / "afile" / "run") == 2
    line = _last_line(capsys)
    assert "run.dir" in line and "not a directory" in line, line
    assert (tmp_path / "afile").read_text() == "mine"


def test_options_may_come_between_the_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``hytrec-train ... a=1 --overwrite b=2`` once failed with "unrecognized arguments: b=2" (argparse
    splits a positional list at an option; hytrec-prep parsed intermixed already): found by the
    property test (tests/test_outputs_property_tools.py). Every override is read here: the run.dir
    after the option is the one refused."""
    (tmp_path / "afile").write_text("mine")
    assert _train(tmp_path, tmp_path / "run", "--overwrite", f"run.dir={tmp_path / 'afile'}") == 2
    line = _last_line(capsys)
    assert "run.dir" in line and "not a directory" in line, line


def test_eval_and_compare_take_options_between_their_arguments(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from hytrec_torchrec.evaluation.cli import main as eval_main
    from hytrec_torchrec.evaluation.paired import main as compare_main

    (tmp_path / "afile").write_text("mine")
    argv = ["--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "diagnostics.users=0",
            "--overwrite", "split=nope", "--out", str(tmp_path / "out")]
    assert eval_main(argv) == 2
    assert "split: 'nope' is not one of" in capsys.readouterr().err.strip().splitlines()[-1]
    assert compare_main([str(tmp_path / "e1"), "--json", str(tmp_path / "afile" / "x"), str(tmp_path / "e2")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("hytrec-compare: ") and "unrecognized" not in line and "afile" in line, line


@pytest.mark.parametrize("inside", ["", "vocab", "run"])
def test_a_run_dir_in_the_dataset_is_refused_before_the_work(tmp_path: Path, inside: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """run.dir that is data.path or lies in it once trained with exit 0 and wrote checkpoints into
    the prepared dataset (an input); found by the property test (tests/test_outputs_property_tools.py)."""
    from hytrec_torchrec.training.cli import main

    data = tmp_path / "prepared"
    (data / "vocab").mkdir(parents=True)
    (data / "meta.json").write_text("{}")
    run = data / inside if inside else data
    assert main(["--config", "demo", f"data.path={data}", f"run.dir={run}", "run.progress=false"]) == 2
    line = _last_line(capsys)
    assert "run.dir" in line and "choose a run.dir outside the dataset" in line, line
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == ["meta.json", "vocab"]
