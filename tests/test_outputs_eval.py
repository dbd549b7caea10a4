"""hytrec-eval and hytrec-compare write only their own output (issue 43, BAD 15-16; the mechanism:
hytrec_torchrec/outputs.py; BAD 15, 17 and 18 are also cases of tests/bad_inputs/).

An evaluation is written beside ``--out`` and renamed onto it when complete, so a SIGTERM while it
writes leaves the earlier evaluation whole, and the unfinished folder beside it carries a marker
that hytrec-compare (and the next evaluation, which removes it) recognise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bad_inputs import Fixtures
from tests.test_cli_errors import _run
from tests.test_outputs_prep import snapshot

#: hytrec-eval, killed by SIGTERM when it has written ranks.parquet, metrics.json and report.md
#: and starts on the plot
_KILLED_WHILE_WRITING = """
import os, signal, sys
import hytrec_torchrec.evaluation.report as report
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
report.plot_length_buckets = killed
from hytrec_torchrec.evaluation.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    return Fixtures(tmp_path_factory.mktemp("outputs_eval"))


def _eval_args(fx: Fixtures, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(fx.run()), "--data", str(fx.prepared()), "--out", str(out), "data.batch_size=4",
            "diagnostics.users=0", *extra]


def test_an_earlier_evaluation_is_replaced_only_with_overwrite(fx: Fixtures, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert _run("hytrec-eval", _eval_args(fx, out), tmp_path).returncode == 0
    marker = json.loads((out / ".hytrec-eval").read_text())
    assert marker["tool"] == "hytrec-eval" and marker["state"] == "complete"
    before = snapshot(tmp_path)
    res = _run("hytrec-eval", _eval_args(fx, out), tmp_path)
    assert res.returncode == 2 and "use --overwrite" in res.stderr.strip().splitlines()[-1], res.stderr
    assert snapshot(tmp_path) == before
    res = _run("hytrec-eval", _eval_args(fx, out, "--overwrite"), tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # no lock, no sibling left
    assert json.loads((out / "metrics.json").read_text())["data_identity"]


def test_sigterm_while_writing_leaves_the_earlier_evaluation_whole(fx: Fixtures, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert _run("hytrec-eval", _eval_args(fx, out), tmp_path).returncode == 0
    before = snapshot(out)
    env = {k: v for k, v in os.environ.items() if k != "HYTREC_DEBUG"}
    res = subprocess.run([sys.executable, "-c", _KILLED_WHILE_WRITING, *_eval_args(fx, out, "--overwrite")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(env, PYTHONWARNINGS="ignore"))
    assert res.returncode == -signal.SIGTERM, res.stderr[-2000:]
    assert snapshot(out) == before  # no new ranks beside the old metrics, report and plot
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".eval.hytrec-eval-tmp-")]
    assert len(left) == 1 and json.loads((left[0] / ".hytrec-eval").read_text())["state"] == "writing"
    # hytrec-compare refuses the unfinished folder, and pairs the whole one
    res = _run("hytrec-compare", [str(left[0]), str(out)], tmp_path)
    assert res.returncode == 3 and "incomplete output of hytrec-eval" in res.stderr, res.stderr
    assert _run("hytrec-compare", [str(out), str(out)], tmp_path).returncode == 0
    # the next evaluation takes over the dead run's lock and removes its folder
    res = _run("hytrec-eval", _eval_args(fx, out, "--overwrite"), tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_out_inside_an_input_is_refused(fx: Fixtures, tmp_path: Path) -> None:
    run = tmp_path / "run"
    import shutil

    shutil.copytree(fx.run(), run)
    before = snapshot(tmp_path)
    res = _run("hytrec-eval", ["--checkpoint", str(run), "--data", str(fx.prepared()), "--out", str(run / "eval")],
               tmp_path)
    assert res.returncode == 2 and "are the same or nested" in res.stderr, res.stderr
    assert snapshot(tmp_path) == before


def test_export_overwrite_needs_an_export_not_its_file_names(fx: Fixtures, tmp_path: Path) -> None:
    """hytrec-export uses the same mechanism: a folder whose files are merely named like an export's
    is not replaced, and a real earlier export is (its lock and unfinished folder gone after)."""
    out = tmp_path / "export"
    out.mkdir()
    (out / "model_card.json").write_text('{"mine": 1}')
    (out / "model.pt").write_text("my own model")
    before = snapshot(tmp_path)
    res = _run("hytrec-export", ["--checkpoint", str(fx.run()), "--out", str(out), "--no-pt2", "--overwrite"],
               tmp_path)
    assert res.returncode == 2 and "no hytrec-export model card" in res.stderr, res.stderr
    assert snapshot(tmp_path) == before
    (out / "model_card.json").unlink()
    (out / "model.pt").unlink()
    for _ in range(2):
        res = _run("hytrec-export", ["--checkpoint", str(fx.run()), "--out", str(out), "--no-pt2", "--overwrite"],
                   tmp_path)
        assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert json.loads((out / ".hytrec-export").read_text())["state"] == "complete"
