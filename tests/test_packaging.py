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
    assert "hytrec = hytrec_torchrec.launch.components" in entry
    for line in entry.splitlines():
        if "=" in line:
            module = line.split("=", 1)[1].strip().split(":")[0]
            # torchx.components: TorchX's own builtins, listed again beside ours (pyproject.toml)
            assert module.startswith("hytrec_torchrec.") or module == "torchx.components", line


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


def _main_modules() -> list[str]:
    """Every module of the installed package that runs as ``python -m MODULE`` (has a ``__main__``
    block), by its installed name (data_prep/ installs as hytrec_torchrec.data_prep)."""
    names = []
    for folder, package in ((ROOT / "hytrec_torchrec", "hytrec_torchrec"), (ROOT / "data_prep", "hytrec_torchrec.data_prep")):
        for f in folder.rglob("*.py"):
            if "__pycache__" not in f.parts and 'if __name__ == "__main__":' in f.read_text():
                names.append(".".join([package, *f.relative_to(folder).with_suffix("").parts]))
    return sorted(names)


MAIN_MODULES = _main_modules()

#: runs each module's ``--help`` as ``python -m`` would, in one interpreter (imports are shared)
_HELP_ALL = """
import contextlib, io, runpy, sys
failed = []
for name in sys.argv[1:]:
    sys.argv = [name, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    if code != 0 or "usage" not in out.getvalue().lower():
        failed.append(f"{name}: exit {code}")
print("FAILED " + "; ".join(failed) if failed else "OK")
"""


def _outside(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``argv`` run from ``tmp_path`` with the installed package only (``-I``: no checkout on the path)."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONWARNINGS": "ignore",
           "HOME": str(tmp_path)}
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)


def test_module_entry_points_work_outside_the_checkout(tmp_path: Path) -> None:
    assert "hytrec_torchrec.data_prep.synthetic" in MAIN_MODULES and "hytrec_torchrec.training.cli" in MAIN_MODULES
    res = _outside([sys.executable, "-I", "-c", _HELP_ALL, *MAIN_MODULES], tmp_path)
    assert res.stdout.strip().endswith("OK"), (res.stdout[-2000:], res.stderr[-2000:])


def test_torchx_components_are_registered_for_any_folder(tmp_path: Path) -> None:
    torchx = str(Path(sys.executable).parent / "torchx")
    listed = _outside([torchx, "builtins"], tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    for name in ("hytrec.train", "hytrec.evaluate", "hytrec.export", "hytrec.prepare", "dist.ddp", "utils.echo"):
        assert name in listed.stdout, listed.stdout
    dry = _outside([torchx, "run", "--dryrun", "-s", "local_cwd", "hytrec.train", "--config", "demo", "-j", "1x1"],
                   tmp_path)
    assert dry.returncode == 0 and "hytrec_torchrec.training.cli" in dry.stdout, dry.stderr[-2000:]
