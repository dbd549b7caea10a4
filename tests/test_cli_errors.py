"""Every command-line tool: a bad argument or input is one line on stderr with the documented exit
status (a traceback only with ``--debug`` / ``HYTREC_DEBUG=1``), and ``--help`` answers within a
second (no torch import before argparse). The bad inputs themselves are the corpus in
``tests/bad_inputs/`` (run by tests/test_bad_inputs.py); this file checks what the tools share."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hytrec_torchrec.cli import DEBUG_ENV, internal_error

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")

MODULES = {
    "hytrec-prep": "hytrec_torchrec.data_prep.cli",
    "hytrec-train": "hytrec_torchrec.training.cli",
    "hytrec-eval": "hytrec_torchrec.evaluation.cli",
    "hytrec-export": "hytrec_torchrec.serving.cli",
    "hytrec-compare": "hytrec_torchrec.evaluation.paired",
}


def _run(prog: str, args: list[str], tmp: Path, timeout: int = 180, **env: str) -> subprocess.CompletedProcess:
    """Run ``prog`` through its entry module in ``tmp``; the caller's ``HYTREC_DEBUG`` is not
    inherited (only ``env`` sets it), so a traceback never comes from the test environment."""
    base = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    return subprocess.run([sys.executable, "-m", MODULES[prog], *args], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp, env=dict(base, PYTHONWARNINGS="ignore", **env))


def test_debug_prints_the_traceback(tmp_path: Path) -> None:
    res = _run("hytrec-train", ["--config", DEMO, "data.path=missing", "run.dir=run", "--debug"], tmp_path)
    assert res.returncode != 0 and "Traceback (most recent call last)" in res.stderr
    res = _run("hytrec-eval", ["--checkpoint", "missing", "--data", "missing", "--out", "o"], tmp_path,
               **{DEBUG_ENV: "0"})
    assert "Traceback" not in res.stderr


def test_an_unexpected_exception_is_one_line_with_status_1(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert internal_error("hytrec-x", KeyError("item")) == 1
    assert capsys.readouterr().err == "hytrec-x: internal error: KeyError: 'item'\n"
    missing = ModuleNotFoundError("No module named 'torchrec'", name="torchrec")
    assert internal_error("hytrec-x", missing) == 2
    assert "run scripts/setup.sh" in capsys.readouterr().err
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(KeyError):
        internal_error("hytrec-x", KeyError("item"))


@pytest.mark.parametrize("prog", sorted(MODULES))
def test_help_is_fast(prog: str, tmp_path: Path) -> None:
    best = float("inf")
    for _ in range(2):  # the better of two: the first may pay for a cold file cache
        t0 = time.perf_counter()
        res = _run(prog, ["--help"], tmp_path)
        best = min(best, time.perf_counter() - t0)
        assert res.returncode == 0 and "usage:" in res.stdout
    assert best < 1.0, f"{prog} --help took {best:.2f} s"
    assert ":func:" not in res.stdout and "``" not in res.stdout, res.stdout


@pytest.mark.parametrize("prog", ["hytrec-train", "hytrec-eval", "hytrec-export"])
def test_without_torchrec_the_tools_point_at_the_setup_script(prog: str, tmp_path: Path) -> None:
    """As after ``pip install .`` alone: torchrec cannot be imported (hidden here)."""
    args = {"hytrec-train": ["--config", DEMO], "hytrec-eval": ["--checkpoint", "c", "--data", "d", "--out", "o"],
            "hytrec-export": ["--checkpoint", "c", "--out", "o"]}[prog]
    code = (f"import sys; sys.modules['torchrec'] = None; from {MODULES[prog]} import main; "
            f"sys.exit(main({args!r}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "run scripts/setup.sh" in lines[0], res.stderr[-2000:]
