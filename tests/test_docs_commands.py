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

``docs/results_log.md`` is the lab notebook of past runs (its commands name runs that are gone)
and is left out. Optional arguments written as ``[--flag value]`` are checked with the flag.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")
                              if p.name != "results_log.md")
OURS = ("hytrec-prep", "hytrec-train", "hytrec-eval", "hytrec-export", "hytrec-compare", "torchx", "python", "bash")


def documented_commands() -> Iterator[Tuple[str, List[str]]]:
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
                    if argv and argv[0] in OURS:
                        yield doc, argv


COMMANDS = list(documented_commands())


def test_the_docs_have_commands_to_check() -> None:
    programs = {argv[0] for _, argv in COMMANDS}
    assert {"hytrec-prep", "hytrec-eval", "hytrec-export", "hytrec-compare", "torchx", "bash"} <= programs
    assert len(COMMANDS) >= 30


def _check_tool(argv: List[str]) -> None:
    prog, args = argv[0], argv[1:]
    if prog == "hytrec-prep":
        from data_prep.cli import build_parser

        ns = build_parser().parse_intermixed_args(args)
        paths = [a for a in ns.args if "=" not in a]
        assert ns.merge or len(paths) == 2, f"expected INPUT OUTPUT, got {paths}"
    elif prog == "hytrec-train":
        from hytrec_torchrec.training.cli import build_parser
        from hytrec_torchrec.training.config import load_job_config

        ns = build_parser().parse_args(args)
        load_job_config(str(ROOT / ns.config) if ns.config else None, ns.overrides)
    elif prog == "hytrec-eval":
        from hytrec_torchrec.evaluation.cli import build_parser
        from hytrec_torchrec.evaluation.evaluate import load_eval_config

        ns = build_parser().parse_args(args)
        load_eval_config(str(ROOT / ns.config) if ns.config else None, ns.overrides)
    elif prog == "hytrec-export":
        from hytrec_torchrec.serving.cli import build_parser

        build_parser().parse_args(args)
    elif prog == "hytrec-compare":
        from hytrec_torchrec.evaluation.paired import build_parser

        build_parser().parse_args(args)


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
