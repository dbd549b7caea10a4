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
