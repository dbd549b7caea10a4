"""The wheel: no generic top-level names, every package and the built-in configs inside it; built-in
configs found by name (``--config demo``) in a checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hytrec_torchrec.config import ConfigError, builtin_config_names, load_config, resolve_config
from hytrec_torchrec.runtime.config import JobConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    # built from a copy: pip builds a local folder in place and would leave build/ in the checkout
    src = tmp_path_factory.mktemp("src") / "repo"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info",
                                                            "__pycache__", ".pytest_cache"))
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (whl,) = out.glob("hytrec_torchrec-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        names.append("ENTRY_POINTS:" + z.read(entry).decode())
    return names


def test_wheel_installs_only_the_package(wheel_names: list[str]) -> None:
    tops = {n.split("/", 1)[0] for n in wheel_names if not n.startswith("ENTRY_POINTS:")}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"hytrec_torchrec"}


def test_wheel_holds_every_package_and_the_configs(wheel_names: list[str]) -> None:
    names = set(wheel_names)
    folders = {"hytrec_torchrec": ROOT / "hytrec_torchrec", "hytrec_torchrec/data_prep": ROOT / "data_prep",
               "hytrec_torchrec/launch": ROOT / "launch", "hytrec_torchrec/configs": ROOT / "configs"}
    for inside, folder in folders.items():
        for f in folder.rglob("*"):
            if f.suffix in (".py", ".yaml") and "__pycache__" not in f.parts:
                assert f"{inside}/{f.relative_to(folder).as_posix()}" in names, f


def test_wheel_entry_points_name_packaged_modules(wheel_names: list[str]) -> None:
    entry = next(n for n in wheel_names if n.startswith("ENTRY_POINTS:"))
    assert "hytrec-prep = hytrec_torchrec.data_prep.cli:main" in entry
    for line in entry.splitlines():
        if "=" in line:
            module = line.split("=", 1)[1].strip().split(":")[0]
            assert module.startswith("hytrec_torchrec."), line


def test_builtin_configs_by_name() -> None:
    names = builtin_config_names()
    assert {"demo", "ml1m", "eval/published", "model/short_only", "prep/synthetic"} <= set(names)
    assert resolve_config("demo") == ROOT / "configs" / "demo.yaml"
    assert resolve_config("eval/published.yaml") == ROOT / "configs" / "eval" / "published.yaml"
    by_name = load_config(JobConfig, "demo")
    by_path = load_config(JobConfig, str(ROOT / "configs" / "demo.yaml"))
    assert by_name == by_path


def test_unknown_config_names_the_builtins(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope: config file not found, nor a built-in config \(built-in: .*demo"):
        resolve_config("nope")
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("script", ["longhist_heuristics.py", "recall_heuristics.py", "bench_prep.py"])
def test_benchmark_scripts_find_data_prep_from_any_folder(script: str, tmp_path: Path) -> None:
    """data_prep is no top-level module once installed: the benchmark scripts that import it put
    the checkout on their path themselves (scripts/longhist.sh runs longhist_heuristics.py)."""
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "usage" in res.stdout, res.stderr[-2000:]
