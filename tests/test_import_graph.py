"""The package's import graph: dependencies run one way, no module imports itself back.

Read from the source (``ast``), function-local imports included, so a cycle cannot hide behind a
local import. The layers, lowest first (docs/architecture.md draws the same graph):

- ``files``, ``outputs``, ``config``, ``cli``, ``launcher``, ``torchrun``, ``schema``, ``card``: helpers every layer may use;
- ``ops`` (tensor kernels), ``data`` (prepared datasets and batches);
- ``modules`` (tower layers), then ``model`` (embeddings + tower + loss), ``ranking`` (full-catalog
  ranks and metrics shared by validation and evaluation);
- ``runtime`` (config, process group, tables, checkpoints, building a model from a run);
- ``training``, ``evaluation``, ``serving``: peers that never import each other;
- ``testing`` (helpers for the tests), which nothing in the package imports.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "hytrec_torchrec"

HELPERS = {"files", "outputs", "config", "cli", "launcher", "torchrun", "schema", "card"}
#: package (or top-level module) -> the packages it may import besides itself
ALLOWED: Dict[str, Set[str]] = {
    "files": set(), "outputs": set(), "config": set(), "cli": {"outputs"}, "launcher": set(), "torchrun": set(), "schema": set(), "card": set(),
    "ops": set(),
    "data": HELPERS,
    "modules": HELPERS | {"ops"},
    "model": HELPERS | {"ops", "data", "modules"},
    "ranking": HELPERS | {"ops", "data", "modules"},
    "runtime": HELPERS | {"ops", "data", "modules", "model"},
    "training": HELPERS | {"ops", "data", "modules", "model", "ranking", "runtime"},
    "evaluation": HELPERS | {"ops", "data", "modules", "model", "ranking", "runtime"},
    "serving": HELPERS | {"ops", "data", "modules", "model", "runtime"},
    "testing": HELPERS | {"runtime", "training"},
}

#: third-party imports a function may make locally: optional (fla, matplotlib, tensorboard, tqdm)
#: or the stack that ``pip install .`` leaves out (torchrec, fbgemm_gpu), so that importing the module
#: or asking a CLI for --help does not need it
LAZY_OK = ("fla", "matplotlib", "torch.utils.tensorboard", "tqdm", "torchmetrics", "torchrec", "fbgemm_gpu",
           "torch.distributed.run", "torch.distributed.elastic")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _entry_point_modules() -> Set[str]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {target.split(":")[0] for target in scripts.values()}


def _imports(path: Path) -> List[Tuple[str, List[str], bool, int]]:
    """``(module, imported names, inside a function, line)`` for every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    out: List[Tuple[str, List[str], bool, int]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # imports for annotations only: never run, so no edge
            if isinstance(child, ast.Import):
                out.extend((a.name, [], local, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.append((child.module, [a.name for a in child.names], local, child.lineno))
            visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return out


def _graph() -> Tuple[Dict[str, Set[str]], Dict[str, List[Tuple[str, List[str], bool, int]]]]:
    """Module -> the package modules it imports (``from pkg import mod`` counts ``pkg.mod``)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    edges: Dict[str, Set[str]] = {m: set() for m in files}
    raw = {mod: _imports(path) for mod, path in files.items()}
    for mod, imports in raw.items():
        for module, names, _, _ in imports:
            for name in [module] + [f"{module}.{n}" for n in names]:
                if name in files and name != mod and not mod.startswith(name + "."):
                    edges[mod].add(name)  # a package's own __init__ is not an edge of its modules
    return edges, raw


def _package(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_forbidden_package_edges() -> None:
    edges, _ = _graph()
    bad = []
    for mod, targets in edges.items():
        src = _package(mod)
        if src == "__init__":
            continue
        for t in targets:
            dst = _package(t)
            if dst != src and dst not in ALLOWED[src]:
                bad.append(f"{mod} -> {t} ({src} may not import {dst})")
    assert not bad, "imports that run the wrong way:\n" + "\n".join(sorted(bad))


def test_every_package_has_a_layer() -> None:
    edges, _ = _graph()
    unknown = {_package(m) for m in edges} - set(ALLOWED) - {"__init__"}
    assert not unknown, f"add {sorted(unknown)} to ALLOWED (and to docs/architecture.md)"


def test_no_module_cycles() -> None:
    edges, _ = _graph()
    state: Dict[str, int] = {}
    stack: List[str] = []
    cycles: List[List[str]] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t, 0) == 0:
                dfs(t)
            elif state[t] == 1:
                cycles.append(stack[stack.index(t):] + [t])
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if state.get(m, 0) == 0:
            dfs(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_local_imports_only_where_needed() -> None:
    """Imports sit at the top of a file. A function may import locally only an optional or
    setup-installed package (``LAZY_OK``), or, in a console entry point's module, anything (so that
    ``--help`` and argument errors answer without importing torch)."""
    _, raw = _graph()
    entry = _entry_point_modules()
    bad = [f"{mod}:{line} imports {module} inside a function"
           for mod, imports in raw.items() if mod not in entry
           for module, _, local, line in imports if local and not module.startswith(LAZY_OK)]
    assert not bad, "function-local imports (move them to the top of the file):\n" + "\n".join(sorted(bad))


def test_architecture_doc_lists_the_graph() -> None:
    """docs/architecture.md's "Dependencies" list is the package graph of the code, edge for edge."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Dependencies", 1)[1].split("```", 2)[1]
    documented: Dict[str, Set[str]] = {}
    for line in block.strip().splitlines():
        src, _, dsts = line.partition("→")
        documented[src.strip()] = {d.strip() for d in dsts.split(",") if d.strip()}
    edges, _ = _graph()
    actual: Dict[str, Set[str]] = {p: set() for p in documented}
    for mod, targets in edges.items():
        src = _package(mod)
        if src in HELPERS or src == "__init__":
            continue
        actual.setdefault(src, set()).update(_package(t) for t in targets
                                             if _package(t) not in HELPERS | {src})
    assert documented == actual
