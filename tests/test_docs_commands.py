"""Every command in README.md and docs/ is valid as written.

Each line of a fenced command block (continuation lines joined; ``text`` blocks are output and
skipped) whose program is ours is checked without running the job:

* ``hytrec-*``: the tool's own argument parser accepts the arguments, and the job or evaluation
  config they name loads with their ``key=value`` overrides (a renamed key or flag fails here);
* ``torchx run ...``: rendered with ``--dryrun`` (put right after ``run``, where the docs say it
  goes) against the repository's ``.torchxconfig``;
* ``python -m MODULE`` / ``python FILE``: the module or file exists;
* ``bash scripts/NAME.sh SUBCOMMAND RECIPE ...``: the script exists and every recipe it names is
  one it knows (``flags RECIPE``); a ``for x in A B; do ...; done`` line is checked per value.

Leading ``NAME=value`` assignments (``PROTOCOL=kept bash scripts/ml1m.sh eval ...``) are the
command's environment: ``documented_commands`` yields them apart from the argument list.

``benchmarks/results/lab_notebook.md`` (the lab notebook of past runs, whose commands name runs that
are gone) is not a doc and is not read. Optional arguments written as ``[--flag value]`` are checked with the flag.

What is cheap to run here is run as well: every documented program answers ``--help`` as it is
installed (the ``.venv/bin`` entry points, ``python -m MODULE``, ``python FILE``, each TorchX
component), and every experiment script the docs name lists its recipes and prints each recipe's
flags. The rest (the demo, training, full evaluations, data fetches) runs in a scratch copy with
``bash scripts/check_docs_commands.sh``, outside the test suite.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
OURS = ("hytrec-prep", "hytrec-train", "hytrec-eval", "hytrec-export", "hytrec-compare", "torchx", "python", "bash")


ENV_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=.*")


def documented_commands() -> Iterator[Tuple[str, Dict[str, str], List[str]]]:
    """(doc, environment, argv) of every documented command of ours, in the docs' order."""
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
            if lang in ("text", "yaml", "json", "python"):
                continue
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = re.sub(r"\s#\s.*$", "", line).strip()
                if line.startswith("export ") or not line or line.startswith("#"):
                    continue
                line = re.sub(r"\s\[key=value \.\.\.\]", "", line)  # the placeholder for any overrides
                line = re.sub(r"(^|\s)\[(-[^\]]*)\]", r"\1\2", line)  # [--json cmp.json] -> --json cmp.json
                loop = re.fullmatch(r"for (\w+) in ([^;]+); do (.+); done", line)
                lines = ([loop.group(3).replace(f"${loop.group(1)}", v) for v in loop.group(2).split()]
                         if loop else [line])
                for one in lines:
                    argv = shlex.split(one)
                    env: Dict[str, str] = {}
                    while argv and ENV_ASSIGNMENT.fullmatch(argv[0]):
                        key, value = argv.pop(0).split("=", 1)
                        env[key] = value
                    if argv and argv[0] in OURS:
                        yield doc, env, argv


COMMANDS = [(doc, argv) for doc, _, argv in documented_commands()]


def test_the_docs_have_commands_to_check() -> None:
    programs = {argv[0] for _, argv in COMMANDS}
    assert {"hytrec-prep", "hytrec-eval", "hytrec-export", "hytrec-compare", "torchx", "bash"} <= programs
    assert len(COMMANDS) >= 30
    with_env = [(env, argv) for _, env, argv in documented_commands() if env]
    assert ({"PROTOCOL": "kept"}, ["bash", "scripts/ml1m.sh", "eval", "mem200", "mem200_norep"]) in with_env


def _config_path(config: str | None) -> str | None:
    """A documented ``--config``: a file of the repository, or a built-in name (``demo``)."""
    if config is None:
        return None
    return str(ROOT / config) if (ROOT / config).is_file() else config


def _check_tool(argv: List[str]) -> None:
    prog, args = argv[0], argv[1:]
    if prog == "hytrec-prep":
        from data_prep.cli import build_parser

        ns = build_parser().parse_intermixed_args(args)
        paths = [a for a in ns.args if "=" not in a]
        assert ns.merge or len(paths) == 2, f"expected INPUT OUTPUT, got {paths}"
    elif prog == "hytrec-train":
        from hytrec_torchrec.training.cli import build_parser
        from hytrec_torchrec.runtime.config import load_job_config

        ns = build_parser().parse_intermixed_args(args)
        load_job_config(_config_path(ns.config), ns.overrides)
    elif prog == "hytrec-eval":
        from hytrec_torchrec.evaluation.cli import build_parser
        from hytrec_torchrec.evaluation.evaluate import load_eval_config

        ns = build_parser().parse_intermixed_args(args)
        load_eval_config(str(ROOT / ns.config) if ns.config else None, ns.overrides)
    elif prog == "hytrec-export":
        from hytrec_torchrec.serving.cli import build_parser

        build_parser().parse_args(args)
    elif prog == "hytrec-compare":
        from hytrec_torchrec.evaluation.paired import build_parser

        build_parser().parse_intermixed_args(args)


def _check_python(argv: List[str]) -> None:
    if argv[1] == "-m":
        assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"
    else:
        assert (ROOT / argv[1]).is_file(), f"no file {argv[1]}"


def _check_bash(argv: List[str]) -> None:
    script = ROOT / argv[1]
    assert script.is_file(), f"no script {argv[1]}"
    sub = argv[2:]
    if not sub or script.name not in ("ml1m.sh", "longhist.sh"):
        return
    names: List[str] = []
    if sub[0] == "train":
        names = [sub[2] if script.name == "longhist.sh" else sub[1]]
    elif sub[0] == "eval":
        names = [n.split("@")[0] for n in (sub[2:] if script.name == "longhist.sh" else sub[1:])]
    for name in names:
        res = subprocess.run(["bash", str(script), "flags", name], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"{argv}: {res.stderr}"


def _check_torchx(argv: List[str]) -> None:
    args = argv[1:]
    assert args[0] == "run", argv
    if "--dryrun" not in args:
        args = ["run", "--dryrun", *args[1:]]
    args = [a if a != "YOUR_IMAGE" else "registry.example/hytrec:cuda" for a in args]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    res = subprocess.run([str(Path(sys.executable).parent / "torchx"), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{argv}: {res.stderr[-2000:]}"


@pytest.mark.parametrize("doc, argv", COMMANDS, ids=[f"{d}:{' '.join(a)[:60]}" for d, a in COMMANDS])
def test_documented_command_is_valid(doc: str, argv: List[str]) -> None:
    try:
        if argv[0].startswith("hytrec-"):
            _check_tool(argv)
        elif argv[0] == "python":
            _check_python(argv)
        elif argv[0] == "bash":
            _check_bash(argv)
        elif argv[0] == "torchx":
            _check_torchx(argv)
    except SystemExit as exc:  # argparse
        pytest.fail(f"{doc}: {' '.join(argv)}: the arguments do not parse (exit {exc.code})")


# ---- run what is cheap to run -------------------------------------------------------------------

def _run_here(argv: List[str], timeout: int = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _help_commands() -> List[List[str]]:
    """One ``--help`` per documented program (the component's own for ``torchx run``)."""
    bin_dir = Path(sys.executable).parent
    seen: dict = {}
    for _, argv in COMMANDS:
        if argv[0].startswith("hytrec-"):
            seen.setdefault(argv[0], [str(bin_dir / argv[0]), "--help"])
        elif argv[0] == "python":
            target = argv[1:3] if argv[1] == "-m" else argv[1:2]
            seen.setdefault(" ".join(target), [sys.executable, *target, "--help"])
        elif argv[0] == "torchx":
            comp = next((a for a in argv if a.startswith("launch/components.py:")), None)
            if comp:
                seen.setdefault(comp, [str(bin_dir / "torchx"), "run", "-s", "local_cwd", comp, "--help"])
    return list(seen.values())


HELPS = _help_commands()


@pytest.mark.parametrize("argv", HELPS, ids=[" ".join(Path(a).name if i == 0 else a for i, a in enumerate(h[:-1]))
                                             for h in HELPS])
def test_documented_program_answers_help(argv: List[str]) -> None:
    res = _run_here(argv)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage:" in res.stdout, res.stdout[-2000:]


SCRIPTS = sorted({argv[1] for _, argv in COMMANDS
                  if argv[0] == "bash" and len(argv) > 2 and argv[2] in ("data", "train", "eval", "list", "flags")})


def test_the_docs_name_experiment_scripts() -> None:
    assert {"scripts/ml1m.sh", "scripts/longhist.sh"} <= set(SCRIPTS), SCRIPTS
    assert len(HELPS) >= 10 and any("torchx" in h[0] for h in HELPS), HELPS


@pytest.mark.parametrize("script", SCRIPTS)
def test_documented_script_lists_its_recipes_and_their_flags(script: str) -> None:
    res = _run_here(["bash", script, "list"])
    names = res.stdout.split()
    assert res.returncode == 0 and names, res.stderr
    for name in names:
        flags = _run_here(["bash", script, "flags", name])
        assert flags.returncode == 0, f"{script} flags {name}: {flags.stderr}"
        assert all("=" in f or f.endswith(".yaml") for f in flags.stdout.split()), (name, flags.stdout)
    bad = _run_here(["bash", script, "flags", "no_such_recipe"])
    assert bad.returncode == 2 and "unknown recipe 'no_such_recipe'" in bad.stderr, bad.stderr


def test_the_check_script_plans_the_documented_commands() -> None:
    """scripts/check_docs_commands.sh (run by hand, not here: it trains) starts with the README's
    demo and runs or skips, with a reason, every documented command; ``--list`` runs nothing."""
    res = _run_here(["bash", "scripts/check_docs_commands.sh", "--list"])
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if line[:4] in ("RUN ", "SKIP")]
    assert lines[0].startswith("RUN   [ 1/") and lines[0].endswith("README.md (first screen): bash scripts/demo.sh")
    assert len(lines) == len(COMMANDS)  # each documented command once (the demo moved first)
    assert "hytrec-export --checkpoint runs/demo/train --out runs/demo/export --overwrite" in res.stdout
    assert all(line.startswith("SKIP") for line in lines if re.search(r"-s (slurm|kubernetes)", line))
    skipped = res.stdout.split("SKIP")[1:]
    assert all("\n      " in s for s in skipped)  # every skip says why


def test_the_check_script_shortens_only_the_recipe_trainings() -> None:
    """``--steps N`` cuts the experiment scripts' ``train`` recipes to N steps and says so on
    their lines; every other command keeps its line as written; a bad N is refused."""
    plain = _run_here(["bash", "scripts/check_docs_commands.sh", "--list"])
    short = _run_here(["bash", "scripts/check_docs_commands.sh", "--list", "--steps", "7"])
    assert plain.returncode == 0 and short.returncode == 0, short.stderr[-2000:]
    assert "shortened" not in plain.stdout
    marked = [line for line in short.stdout.splitlines() if line.endswith("(shortened to 7 steps)")]
    assert marked and all(re.search(r": bash scripts/\w+\.sh train ", line) for line in marked), marked
    recipes = [line for line in plain.stdout.splitlines()
               if line.startswith("RUN") and re.search(r": bash scripts/\w+\.sh train ", line)]
    assert len(marked) == len(recipes)
    assert [line.replace("  (shortened to 7 steps)", "") for line in short.stdout.splitlines()] == \
        plain.stdout.splitlines()
    bad = _run_here(["bash", "scripts/check_docs_commands.sh", "--list", "--steps", "0"])
    assert bad.returncode == 2 and "--steps needs a positive integer" in bad.stderr


# ---- docs/own_data.md, run as written on a small CSV file of string IDs and date strings ---------

OWN_DATA = "docs/own_data.md"
#: overrides that make the guide's training a job of seconds (as tests/test_bad_inputs.py's TINY)
TINY_TRAIN = [
    "data.batch_size=4", "data.max_len=50", "data.num_negatives=8", "data.cutoffs_per_user=1",
    "embeddings.dim=16", "model.embedding_dim=16", "model.short_len=8", "model.long_pattern=TS",
    "model.fusion.num_experts=2", "train.max_steps=2", "train.validate_every=0", "train.val_batches=1",
    "train.checkpoint_every=2", "run.tensorboard=false", "run.progress=false",
]


def _doc_block(doc: str, lang: str) -> str:
    """The first fenced block of ``lang`` in ``doc``."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", (ROOT / doc).read_text(), re.S)
    assert blocks, f"{doc}: no {lang} block"
    return blocks[0]


def _own_events(sample: str, users: int = 12, events: int = 8) -> str:
    """The guide's sample rows plus ``users`` more users of ``events`` events each, same shape."""
    import datetime
    import random

    rng = random.Random(0)
    rows = sample.strip().splitlines()
    for u in range(users):
        t = datetime.datetime(2024, 3, 1, 8, 0, 0) + datetime.timedelta(hours=u)
        for _ in range(events):
            t += datetime.timedelta(minutes=rng.randint(1, 600))
            action = rng.choice(["view", "view", "add_to_cart", "pay"])
            rows.append(f"c-{u + 10:03d},sku-{rng.randint(1, 25):04d},{t:%Y-%m-%d %H:%M:%S},{action}")
    return "\n".join(rows) + "\n"


def _in_process(argv: List[str]) -> subprocess.CompletedProcess:
    """``hytrec-prep`` and ``hytrec-export`` through their ``main`` (the entry points' own function),
    in this process: two fewer interpreters importing TorchRec keep the test near 30 s."""
    from data_prep.cli import main as prep_main
    from hytrec_torchrec.serving.cli import main as export_main

    main = {"hytrec-prep": prep_main, "hytrec-export": export_main}[argv[0]]
    return subprocess.CompletedProcess(argv, main(argv[1:]), "", "")


def _run_guide_step(argv: List[str], cwd: Path) -> subprocess.CompletedProcess:
    """One command of the guide in ``cwd`` (the current directory for in-process ones): training
    (shortened) and serving as their own processes, the rest in this one."""
    if argv[0] in ("hytrec-prep", "hytrec-export"):
        return _in_process(argv)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    elif argv[0] == "hytrec-train":
        argv = [*argv, *TINY_TRAIN]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_own_data_guide_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/own_data.md as written: CSV (string IDs, date strings) -> prep -> train -> export -> a
    served request whose answer names raw item IDs of the file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.csv").write_text(_own_events(_doc_block(OWN_DATA, "text")))
    (tmp_path / "requests.json").write_text(_doc_block(OWN_DATA, "json"))
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the guide runs serve.py from the root
    steps = [argv for doc, _, argv in documented_commands() if doc == OWN_DATA]
    assert [a[0] for a in steps] == ["hytrec-prep", "hytrec-train", "hytrec-export", "python"]
    for argv in steps:
        res = _run_guide_step(argv, tmp_path)
        assert res.returncode == 0, f"{' '.join(argv)}: {res.stderr[-3000:]}"
    import json

    answer = json.loads(res.stdout.splitlines()[0])
    items = set(re.findall(r"sku-\d{4}", (tmp_path / "events.csv").read_text()))
    assert len(answer["items"]) == 5 and set(answer["items"]) <= items
    assert answer["unknown_ids"] == 0


def test_prep_help_lists_the_raw_columns() -> None:
    from data_prep.cli import build_parser

    text = build_parser().format_help()
    for column in ("user_id", "item_id", "timestamp", "behavior", "attribution_id", "category_id"):
        assert column in text
    assert "timestamp_format" in text and "UTC" in text
