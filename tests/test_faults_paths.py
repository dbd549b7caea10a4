"""``~`` and ``=`` in INPUT/OUTPUT paths (issue 43, "the one-line contract"): every tool expands a
leading ``~`` in its path arguments and path config keys, and a path with ``=`` in it is not taken
for a ``key=value`` override.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from data_prep.cli import main as prep_main
from hytrec_torchrec.config import is_override, load_config
from hytrec_torchrec.runtime.config import JobConfig
from tests.test_outputs_prep import _raw

#: tool module -> argv whose every path is under ``~`` -> the parsed attributes that must be expanded
PARSERS = {
    "hytrec_torchrec.evaluation.cli": (["--checkpoint", "~/run", "--model", "~/m.pt", "--data", "~/d", "--out", "~/e",
                                        "--config", "~/c.yaml"], ["checkpoint", "model", "data", "out", "config"]),
    "hytrec_torchrec.serving.cli": (["--checkpoint", "~/run", "--out", "~/x", "--data", "~/d"],
                                    ["checkpoint", "out", "data"]),
    "hytrec_torchrec.evaluation.paired": (["~/a", "~/b:m", "--json", "~/j.json", "--plot", "~/p.png"],
                                          ["runs", "json", "plot"]),
    "hytrec_torchrec.training.cli": (["--config", "~/c.yaml"], ["config"]),
}


def _events_out(prepared: Path) -> int:
    return int(json.loads((prepared / "meta.json").read_text())["events_out"])


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("module", sorted(PARSERS))
def test_every_tool_expands_tilde_in_its_path_options(module: str, home: Path) -> None:
    argv, attrs = PARSERS[module]
    args = importlib.import_module(module).build_parser().parse_args(argv)
    for attr in attrs:
        values = getattr(args, attr)
        for value in values if isinstance(values, list) else [values]:
            assert value.startswith(str(home)), (attr, value)


def test_path_config_keys_expand_tilde(home: Path) -> None:
    cfg = load_config(JobConfig, None, ["data.path=~/prepared", "run.dir=~/runs/a"])
    assert cfg.data.path == str(home / "prepared") and cfg.run.dir == str(home / "runs" / "a")


def test_prep_expands_tilde_in_input_output_and_config_paths(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _raw(home / "raw")
    (home / "spill").mkdir()
    assert prep_main(["~/raw", "~/out", "spill_dir=~/spill"]) == 0, capsys.readouterr().err
    assert _events_out(home / "out") > 0
    assert not (Path.cwd() / "~").exists()


@pytest.mark.parametrize("arg,expected", [
    ("min_time=0", True), ("filters.inactive_days=3", True), ("out/a=b", False), ("/data/x=1", False),
    ("./a=b", False), ("=x", False), ("a b=1", False),
])
def test_is_override(arg: str, expected: bool) -> None:
    assert is_override(arg) is expected


def test_prep_reads_and_writes_paths_with_equals_signs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _raw(tmp_path / "day=1")
    monkeypatch.chdir(tmp_path)
    # "day=1" exists, so it is the INPUT; "out/v=2" holds a "/" before "=", so it is the OUTPUT
    assert prep_main(["day=1", "out/v=2", "min_time=0"]) == 0, capsys.readouterr().err
    assert _events_out(tmp_path / "out" / "v=2") > 0
    assert prep_main([str(tmp_path / "day=1"), str(tmp_path / "a=b"), "min_time=0"]) == 0
    assert _events_out(tmp_path / "a=b") > 0
