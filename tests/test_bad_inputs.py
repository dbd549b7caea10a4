"""The bad-input corpus: every case in ``tests/bad_inputs/*.yaml`` runs through the real command line.

A case is one small YAML file (the format is in ``tests/bad_inputs/README.md``): the tool, its
arguments, the input files it is given (written inline, or made by a named generator below), the
documented exit status and the text of the one-line message. Each case is run as a subprocess of
the tool's entry module in a fresh folder and must

* exit with the documented status (docs/tools.md "Exit status"),
* end stderr with a line ``TOOL: ...`` holding the expected text (and have no other line where the
  case says ``only_line: true``), with no ``Traceback`` anywhere,
* leave every file of ``keeps`` as it was (nothing of the input, or of a folder the tool did not
  write, is lost), and make none of ``absent`` (no output of a refused run, no file an attacker's
  code would have made).

A case that needs a prepared dataset or a trained run names ``{prepared}`` / ``{run}``: both are
made once per session (the run by ``hytrec-train`` itself) and only read by the cases.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from hytrec_torchrec.files import file_sha256
from tests.test_cli_errors import MODULES, _run

ROOT = Path(__file__).resolve().parents[1]
CASES_DIR = Path(__file__).parent / "bad_inputs"
DEMO = ROOT / "configs" / "demo.yaml"

#: overrides that make configs/demo.yaml a job of seconds on the session's tiny dataset
TINY = [
    "data.batch_size=4", "data.max_len=50", "data.num_negatives=8", "data.cutoffs_per_user=1",
    "embeddings.dim=16", "model.embedding_dim=16", "model.short_len=8", "model.long_pattern=TS",
    "model.fusion.num_experts=2", "train.max_steps=2", "train.validate_every=0", "train.val_batches=1",
    "train.checkpoint_every=2", "run.tensorboard=false", "run.progress=false",
]

KEYS = {"about", "tool", "argv", "files", "generate", "code", "stderr", "stdout", "only_line", "keeps",
        "absent"}


def load_cases() -> List[Dict[str, Any]]:
    cases = []
    for f in sorted(CASES_DIR.glob("*.yaml")):
        case = yaml.safe_load(f.read_text())
        case["name"] = f.stem
        cases.append(case)
    return cases


CASES = load_cases()


# ---- generators: inputs that are binary or too large to write inline --------------------------

def _events(n_users: int = 5, per_user: int = 6, t0: int = 1_700_000_000) -> pa.Table:
    u = np.repeat(np.arange(n_users), per_user)
    return pa.table({"user_id": u, "item_id": np.arange(len(u)) % 7,
                     "timestamp": np.arange(len(u)) * 10 + t0})


def gen_events(tmp: Path, fx: "Fixtures") -> None:
    """``raw/events.parquet``: 5 users × 6 events of plausible times."""
    (tmp / "raw").mkdir()
    pq.write_table(_events(), tmp / "raw" / "events.parquet")


def gen_prepared(tmp: Path, fx: "Fixtures") -> None:
    """``raw/`` as in ``events`` and ``prepared/``, hytrec-prep's output of it (in-process)."""
    from data_prep.config import PrepConfig
    from data_prep.prepare import prepare
    from hytrec_torchrec.config import load_config

    if not (tmp / "raw").exists():
        gen_events(tmp, fx)
    prepare(str(tmp / "raw"), tmp / "prepared", load_config(PrepConfig, None, []))


def gen_ms_timestamp(tmp: Path, fx: "Fixtures") -> None:
    """``in.parquet``: 201 users × 100 events in seconds near 2023, the very last one in milliseconds
    (row 20100): it used to shift the reference time and drop 200 of the users."""
    n_users, per = 201, 100
    u = np.repeat(np.arange(n_users), per)
    ts = 1_700_000_000 + np.tile(np.arange(per), n_users) * 3600
    ts[-1] = ts[-1] * 1000
    pq.write_table(pa.table({"user_id": u, "item_id": np.arange(len(u)) % 50, "timestamp": ts}),
                   tmp / "in.parquet")


def gen_uint64_ids(tmp: Path, fx: "Fixtures") -> None:
    """``in.parquet`` with uint64 user and item IDs above 2^63 - 1 (an ArrowInvalid traceback once)."""
    big = 2**63 + 5
    pq.write_table(pa.table({
        "user_id": pa.array([7, 7, 7, big, big, big], pa.uint64()),
        "item_id": pa.array([1, 2, big, 1, 2, 3], pa.uint64()),
        "timestamp": pa.array([1_700_000_000 + i for i in range(6)], pa.int64()),
    }), tmp / "in.parquet")


def gen_truncated_parquet(tmp: Path, fx: "Fixtures") -> None:
    """``in/good.parquet`` and ``in/bad.parquet``, the first half of a valid file."""
    (tmp / "in").mkdir()
    pq.write_table(_events(), tmp / "in" / "good.parquet")
    data = (tmp / "in" / "good.parquet").read_bytes()
    (tmp / "in" / "bad.parquet").write_bytes(data[: len(data) // 2])


def gen_run_copy(tmp: Path, fx: "Fixtures") -> None:
    """``run/``: a copy of the session's trained run, which a case may damage."""
    shutil.copytree(fx.run(), tmp / "run")


def gen_truncated_train_state(tmp: Path, fx: "Fixtures") -> None:
    """``run/`` (a copy) whose only checkpoint has its ``train_state.json`` cut in half."""
    gen_run_copy(tmp, fx)
    f = tmp / "run" / "checkpoints" / "step_00000002" / "train_state.json"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def gen_lock_symlink(tmp: Path, fx: "Fixtures") -> None:
    """``run/.hytrec-train.lock``, a symbolic link to ``victim.txt`` beside the run (a resume once
    truncated it and wrote its pid there)."""
    (tmp / "run").mkdir()
    (tmp / "victim.txt").write_text("the user's file\n")
    (tmp / "run" / ".hytrec-train.lock").symlink_to(tmp / "victim.txt")


class _TouchOnLoad:
    """Unpickling it creates ``path`` (what an attacker's ``__reduce__`` could do, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def gen_bytes_entry_checkpoint(tmp: Path, fx: "Fixtures") -> None:
    """``run/`` (a copy) whose checkpoint index, made only of allow-listed classes, declares one
    model weight as a bytes entry stored in an extra ``evil.distcp``; DCP's default planner reads
    such an entry with ``torch.load(weights_only=False)``, which creates ``PWNED``. The manifest is
    deleted (a checkpoint without one loads unverified)."""
    import pickle

    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    gen_run_copy(tmp, fx)
    ckpt = tmp / "run" / "checkpoints" / "step_00000002"
    with open(ckpt / ".metadata", "rb") as f:
        index = pickle.load(f)  # our own checkpoint, made by the session's hytrec-train
    fqn = next(k for k in sorted(index.state_dict_metadata) if k.startswith("model.") and "tower" in k)
    index.state_dict_metadata[fqn] = BytesStorageMetadata()
    index.storage_data = {k: v for k, v in index.storage_data.items() if k.fqn != fqn}
    torch.save(_TouchOnLoad(tmp / "PWNED"), ckpt / "evil.distcp")
    size = (ckpt / "evil.distcp").stat().st_size
    index.storage_data[MetadataIndex(fqn)] = _StorageInfo("evil.distcp", 0, size)
    with open(ckpt / ".metadata", "wb") as f:
        pickle.dump(index, f)
    (ckpt / "manifest.json").unlink()


def gen_unsafe_rank_file(tmp: Path, fx: "Fixtures") -> None:
    """``run/`` (a copy) whose ``rank_00000.pt`` holds a global that would create ``PWNED`` when
    unpickled; the manifest is deleted (a checkpoint without one loads unverified)."""
    import torch

    gen_run_copy(tmp, fx)
    ckpt = tmp / "run" / "checkpoints" / "step_00000002"
    torch.save({"torch": _TouchOnLoad(tmp / "PWNED")}, ckpt / "rank_00000.pt")
    (ckpt / "manifest.json").unlink()


def gen_latest_outside(tmp: Path, fx: "Fixtures") -> None:
    """``run/`` (a copy) whose ``checkpoints/latest`` names another run's checkpoint by its absolute
    path (the session's run): once followed, so a run resumed or evaluated someone else's model."""
    gen_run_copy(tmp, fx)
    (tmp / "run" / "checkpoints" / "latest").write_text(str(fx.run() / "checkpoints" / "step_00000002"))


def gen_train_state_bad_field(tmp: Path, fx: "Fixtures") -> None:
    """``run/`` (a copy) whose ``train_state.json`` gives the item table's size as a string, with the
    manifest deleted (it would not verify otherwise)."""
    import json

    gen_run_copy(tmp, fx)
    ckpt = tmp / "run" / "checkpoints" / "step_00000002"
    state = json.loads((ckpt / "train_state.json").read_text())
    state["vocab_sizes"]["item"] = str(state["vocab_sizes"]["item"])
    (ckpt / "train_state.json").write_text(json.dumps(state))
    (ckpt / "manifest.json").unlink()


def gen_permuted_vocab(tmp: Path, fx: "Fixtures") -> None:
    """``permuted/``: the session's prepared dataset with the raw IDs of its item vocabulary
    reversed: every table has the same size, but each raw ID maps to another row."""
    shutil.copytree(fx.prepared(), tmp / "permuted")
    f = tmp / "permuted" / "vocab" / "item.parquet"
    table = pq.read_table(f)
    raw = table.column("raw")
    table = table.set_column(table.schema.get_field_index("raw"), "raw", raw.take(list(range(len(raw)))[::-1]))
    pq.write_table(table, f)
def _evaluation(folder: Path, data: str) -> None:
    """``folder/``: what hytrec-eval writes for one model on 6 examples (ranks.parquet and a
    metrics.json of the same shape), an evaluation of the dataset ``data``."""
    import json

    from hytrec_torchrec.evaluation.paired import write_ranks

    folder.mkdir()
    ranks = {"user": np.arange(6), "cutoff": np.full(6, 5), "rank": np.array([1, 3, 12, 2, 40, 7]),
             "catalog": np.full(6, 100)}
    write_ranks(folder / "ranks.parquet", {"m": ranks})
    doc = {"split": "test", "data": data, "ks": [1, 10], "models": {"m": {}}, "overall": {}}
    (folder / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")


def gen_two_evals(tmp: Path, fx: "Fixtures") -> None:
    """``e1/`` and ``e2/``: two evaluations of one dataset, on the same examples."""
    _evaluation(tmp / "e1", "runs/ml1m/prepared")
    _evaluation(tmp / "e2", "runs/ml1m/prepared")


def gen_two_evals_of_different_data(tmp: Path, fx: "Fixtures") -> None:
    """``e1/`` and ``e2/``: evaluations of two datasets whose users and cutoffs happen to match."""
    _evaluation(tmp / "e1", "runs/ml1m/prepared")
    _evaluation(tmp / "e2", "runs/other/prepared")


GENERATORS: Dict[str, Callable[[Path, "Fixtures"], None]] = {
    "events": gen_events,
    "prepared": gen_prepared,
    "ms_timestamp": gen_ms_timestamp,
    "uint64_ids": gen_uint64_ids,
    "truncated_parquet": gen_truncated_parquet,
    "run_copy": gen_run_copy,
    "truncated_train_state": gen_truncated_train_state,
    "lock_symlink": gen_lock_symlink,
    "bytes_entry_checkpoint": gen_bytes_entry_checkpoint,
    "permuted_vocab": gen_permuted_vocab,
    "unsafe_rank_file": gen_unsafe_rank_file,
    "latest_outside": gen_latest_outside,
    "train_state_bad_field": gen_train_state_bad_field,
    "two_evals": gen_two_evals,
    "two_evals_of_different_data": gen_two_evals_of_different_data,
}


# ---- session fixtures: made only when a case needs them -----------------------------------------

class Fixtures:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._prepared: Path | None = None
        self._run: Path | None = None

    def prepared(self) -> Path:
        """16 users over a 30-row item vocabulary (28 known items)."""
        if self._prepared is None:
            from hytrec_torchrec.data.testing import random_sequences, write_prepared

            self._prepared = write_prepared(self.root / "prepared",
                                            random_sequences(16, 60, 30, seed=11, min_events=6), num_items=30)
        return self._prepared

    def run(self) -> Path:
        """A 2-step run of configs/demo.yaml (tiny) on :meth:`prepared`, trained by hytrec-train."""
        if self._run is None:
            run = self.root / "run"
            res = _run("hytrec-train", ["--config", str(DEMO), f"data.path={self.prepared()}",
                                        f"run.dir={run}", *TINY], self.root, timeout=300)
            assert res.returncode == 0, res.stderr[-3000:]
            self._run = run
        return self._run


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    return Fixtures(tmp_path_factory.mktemp("bad_inputs_fixtures"))


def _expand(argv: List[str], tmp: Path, fx: Fixtures) -> List[str]:
    out: List[str] = []
    for a in argv:
        if a == "{tiny}":
            out += TINY
            continue
        if "{prepared}" in a:
            a = a.replace("{prepared}", str(fx.prepared()))
        if "{run}" in a:
            a = a.replace("{run}", str(fx.run()))
        out.append(a.replace("{tmp}", str(tmp)).replace("{root}", str(ROOT)).replace("{demo}", str(DEMO)))
    return out


def test_the_corpus_is_well_formed() -> None:
    assert len(CASES) >= 30
    tools = {c["tool"] for c in CASES}
    assert tools == set(MODULES), tools  # every command-line tool has bad inputs
    for case in CASES:
        assert set(case) - {"name"} <= KEYS, (case["name"], set(case) - KEYS)
        assert {"about", "tool", "argv", "code"} <= set(case), case["name"]
        assert case["tool"] in MODULES and isinstance(case["code"], int), case["name"]
        assert case["code"] == 0 or case.get("stderr"), f"{case['name']}: a failure must name its message"
        gens = case.get("generate", [])
        for g in [gens] if isinstance(gens, str) else gens:
            assert g in GENERATORS, (case["name"], g)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input(case: Dict[str, Any], tmp_path: Path, fixtures: Fixtures) -> None:
    gens = case.get("generate", [])
    for g in [gens] if isinstance(gens, str) else gens:
        GENERATORS[g](tmp_path, fixtures)
    for name, text in (case.get("files") or {}).items():
        f = tmp_path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    keeps = {k: file_sha256(tmp_path / k) for k in case.get("keeps", [])}
    tool = case["tool"]
    res = _run(tool, _expand(case["argv"], tmp_path, fixtures), tmp_path, timeout=300)
    why = f"{case['name']}: {case['about']}\nrc={res.returncode}\nstderr:\n{res.stderr[-3000:]}"
    assert res.returncode == case["code"], why
    assert "Traceback" not in res.stderr, why
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    needles = case.get("stderr") or []
    if isinstance(needles, str):
        needles = [needles]
    if needles:
        assert lines and lines[-1].startswith(f"{tool}: "), why
        for needle in needles:
            assert needle in lines[-1], f"{needle!r} not in the last line\n{why}"
    if case.get("only_line"):
        assert len(lines) == 1, why
    for needle in [case["stdout"]] if isinstance(case.get("stdout"), str) else case.get("stdout", []):
        assert needle in res.stdout, f"{needle!r} not in stdout\n{res.stdout[-2000:]}\n{why}"
    for name, digest in keeps.items():
        assert (tmp_path / name).is_file() and file_sha256(tmp_path / name) == digest, f"{name} lost\n{why}"
    for name in case.get("absent", []):
        assert not (tmp_path / name).exists(), f"{name} was made\n{why}"
