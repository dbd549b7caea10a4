"""Ctrl-C and a full disk are one line with a documented status in every tool (issue 43, "the
one-line contract": SIGINT exit 130; a full disk names the path, exit 4, temporary files removed).

Every test runs a tool's ``main(argv)`` in-process with one function replaced by one that raises
``KeyboardInterrupt`` or ``OSError(ENOSPC)``; none trains or evaluates a model.
"""

from __future__ import annotations

import errno
import importlib
from pathlib import Path
from typing import Any, Callable

import pytest

from data_prep.cli import main as prep_main
from hytrec_torchrec.cli import DEBUG_ENV, EXIT_DISK_FULL, EXIT_INTERRUPTED
from tests.test_outputs_prep import _raw, snapshot

#: tool -> (module of its main, the attribute replaced to interrupt it, its argv)
TOOLS: dict[str, tuple[str, str, list[str]]] = {
    "hytrec-prep": ("data_prep.prepare", "_prepare_into", ["{raw}", "{tmp}/out"]),
    "hytrec-train": ("hytrec_torchrec.training.cli", "require_stack", ["--config", "demo"]),
    "hytrec-eval": ("hytrec_torchrec.evaluation.cli", "require_stack",
                    ["--checkpoint", "run", "--data", "d", "--out", "{tmp}/out"]),
    "hytrec-export": ("hytrec_torchrec.serving.cli", "require_stack", ["--checkpoint", "run", "--out", "{tmp}/o"]),
    "hytrec-compare": ("hytrec_torchrec.evaluation.paired", "_load_arg", ["{tmp}/a", "{tmp}/b"]),
}
MAINS = {"hytrec-prep": "data_prep.cli", "hytrec-train": "hytrec_torchrec.training.cli",
         "hytrec-eval": "hytrec_torchrec.evaluation.cli", "hytrec-export": "hytrec_torchrec.serving.cli",
         "hytrec-compare": "hytrec_torchrec.evaluation.paired"}


def _raiser(exc: BaseException) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], Path) and args[0].is_dir():  # prep's staged folder: half written
            (args[0] / "part-00000.parquet").write_bytes(b"half")
        raise exc
    return fail


def _run_tool(prog: str, exc: BaseException, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    module, attr, argv = TOOLS[prog]
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setattr(importlib.import_module(module), attr, _raiser(exc))
    raw = _raw(tmp / "raw")
    args = [a.format(tmp=tmp, raw=raw) for a in argv]
    return importlib.import_module(MAINS[prog]).main(args)


def _one_line(capsys: pytest.CaptureFixture[str], prog: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), lines
    return lines[0]


@pytest.mark.parametrize("prog", sorted(TOOLS))
def test_ctrl_c_is_one_line_and_status_130(prog: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_tool(prog, KeyboardInterrupt(), tmp_path, monkeypatch) == EXIT_INTERRUPTED
    assert "interrupted" in _one_line(capsys, prog)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no output, lock or staged folder


def test_ctrl_c_in_prep_leaves_the_earlier_output_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    raw = _raw(tmp_path / "raw")
    assert prep_main([str(raw), str(tmp_path / "out")]) == 0
    before = snapshot(tmp_path)
    monkeypatch.setattr(importlib.import_module("data_prep.prepare"), "_prepare_into", _raiser(KeyboardInterrupt()))
    capsys.readouterr()
    assert prep_main([str(raw), str(tmp_path / "out"), "--overwrite"]) == EXIT_INTERRUPTED
    _one_line(capsys, "hytrec-prep")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("prog", ["hytrec-prep", "hytrec-train", "hytrec-export"])
def test_a_full_disk_names_the_path_and_is_status_4(prog: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    assert _run_tool(prog, full, tmp_path, monkeypatch) == EXIT_DISK_FULL
    line = _one_line(capsys, prog)
    assert "No space left on device" in line and "disk full" in line
    if prog == "hytrec-prep":  # the staged folder named the output
        assert f"{tmp_path / 'out'}: " in line
        assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_a_full_disk_while_compare_writes_json_removes_the_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hytrec_torchrec.outputs import write_file_staged

    target = tmp_path / "cmp.json"

    def write(tmp: Path) -> None:
        tmp.write_text("{\"half\": ")
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    with pytest.raises(OSError) as info:
        write_file_staged(target, "hytrec-compare", write)
    assert info.value.errno == errno.EDQUOT and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_saving_a_checkpoint_removes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from hytrec_torchrec.runtime import checkpoint

    def no_space(*args: Any, **kwargs: Any) -> None:
        (Path(kwargs["checkpoint_id"]) / "__0_0.distcp").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.dcp, "save", no_space)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(OSError) as info:
        checkpoint.save_checkpoint(tmp_path, 5, model, torch.optim.SGD(model.parameters(), lr=0.1), {}, {})
    assert info.value.filename == str(checkpoint.checkpoint_root(tmp_path) / "step_00000005")
    assert [p.name for p in checkpoint.checkpoint_root(tmp_path).iterdir()] == []


def test_serve_ctrl_c_is_one_line_and_status_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_faults_serve import serve_module

    serve = serve_module()
    monkeypatch.setattr(serve, "Client", _raiser(KeyboardInterrupt()))
    assert serve.main(["--model-dir", str(tmp_path)]) == EXIT_INTERRUPTED
    line = _one_line(capsys, "serve.py")
    assert "interrupted" in line
