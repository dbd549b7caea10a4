"""The property of tests/test_outputs_property.py for the tools that read a trained model:
``hytrec-train`` (resume into an existing run, bad overrides, a bad ``data.path``, a damaged
checkpoint), ``hytrec-export``, ``hytrec-eval``, ``hytrec-compare`` and ``examples/serve.py``.

A seeded random driver draws, per tool, a command line from a workspace that holds one of
everything: a prepared dataset and one of the same sizes with other IDs, a trained run and damaged
copies of it (a truncated or mistyped ``train_state.json``, a bytes entry, an unsafe rank file, a
``latest`` that leads out, a cut ``.distcp``, a lock that is a symbolic link), an export and damaged
copies of it, the user's own folder, a file, a symbolic link to a victim folder, two evaluations,
good and bad request files and job configs (a YAML merge key among them). For every draw:

* the exit status is a documented one (docs/tools.md "Exit status"; never 1, an internal error), and a
  failure ends stderr with one line ``TOOL: ...`` and no traceback;
* no path outside the run's output changes (examples/serve.py has no output: nothing changes);
* a failed run leaves its output exactly as it was (a run dir, an export, an evaluation, a file);
* a run that succeeds did not write into an input: its output is not, and does not lie in, a path
  given on its command line (a dataset, a checkpoint, a config).

Draws run in-process. ``HYTREC_PROPERTY_TOOL_DRAWS`` sets the draws per tool (default 20),
``HYTREC_PROPERTY_SEED`` the seed (default 43). The trained run and the export are the session
fixture ``trained_export`` (tests/conftest.py) that tests/test_export.py uses too; each tool's draws
work on their own copy.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import pytest
import yaml

from tests.test_bad_inputs import (gen_bytes_entry_checkpoint, gen_latest_outside, gen_lock_symlink,
                                   gen_permuted_vocab, gen_train_state_bad_field, gen_truncated_train_state,
                                   gen_two_evals_of_different_data, gen_unsafe_rank_file)
from tests.test_export import _item_raw, _serve_module
from tests.test_outputs_prep import snapshot
from tests.test_outputs_property import _outside, _real

DRAWS = int(os.environ.get("HYTREC_PROPERTY_TOOL_DRAWS", "20"))
SEED = int(os.environ.get("HYTREC_PROPERTY_SEED", "43"))

#: the exit statuses each tool documents for what the draws can produce (docs/tools.md "Exit status")
DOCUMENTED = {"train": (0, 2, 3), "export": (0, 2, 3), "eval": (0, 2, 3), "compare": (0, 2, 3), "serve": (0, 2)}
PROGS = {"train": "hytrec-train", "export": "hytrec-export", "eval": "hytrec-eval", "compare": "hytrec-compare",
         "serve": "serve.py"}
Draw = Tuple[List[str], List[str]]  # (argv, the outputs it may change, relative to the workspace)


class _Source:
    """What tests/test_bad_inputs.py's generators copy and damage: the fixture's run and data."""

    def __init__(self, fixture: Dict[str, Path]) -> None:
        self._fixture = fixture

    def run(self) -> Path:
        return self._fixture["run"]

    def prepared(self) -> Path:
        return self._fixture["data"]


# ---- the workspace ------------------------------------------------------------------------------

def _damage_run(root: Path, src: _Source) -> None:
    """``d_*/run``: copies of the trained run, each damaged in one way (and ``d_lock/run``, a run
    dir whose lock is a link to ``d_lock/victim.txt``)."""
    for name, gen in [("d_trunc", gen_truncated_train_state), ("d_bytes", gen_bytes_entry_checkpoint),
                      ("d_rank", gen_unsafe_rank_file), ("d_latest", gen_latest_outside),
                      ("d_field", gen_train_state_bad_field), ("d_lock", gen_lock_symlink)]:
        (root / name).mkdir()
        gen(root / name, src)
    (root / "d_distcp").mkdir()
    shutil.copytree(src.run(), root / "d_distcp" / "run")
    part = root / "d_distcp" / "run" / "checkpoints" / "step_00000002" / "__0_0.distcp"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 3])


def _damage_export(root: Path) -> None:
    """``x_*``: copies of the export, each damaged in one way."""
    for name in ("x_model", "x_card", "x_field", "x_vocab", "x_novocab"):
        shutil.copytree(root / "export", root / name)
    model = root / "x_model" / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    (root / "x_card" / "model_card.json").write_text('{"format": ')
    card = json.loads((root / "x_field" / "model_card.json").read_text())
    card["input_contract"]["max_len"] = str(card["input_contract"].get("max_len"))
    (root / "x_field" / "model_card.json").write_text(json.dumps(card))
    (root / "x_vocab" / "vocab" / "behavior.json").write_text('{"raw": 3}')
    (root / "x_novocab" / "vocab" / "category.json").unlink()


def _configs(root: Path, run_dir: Path) -> None:
    """``job.yaml`` (the trained run's own config), ``merge.yaml`` (the same with a YAML merge key),
    ``dup.yaml`` (a duplicate key) and ``eval_merge.yaml``."""
    state = json.loads((run_dir / "checkpoints" / "step_00000002" / "train_state.json").read_text())
    (root / "job.yaml").write_text(yaml.safe_dump(state["config"]))
    text = (root / "job.yaml").read_text()
    (root / "merge.yaml").write_text(text.replace("data:\n", "data:\n  <<: {max_len: 12}\n", 1))
    (root / "dup.yaml").write_text(text + "train:\n  max_steps: 3\n")
    (root / "eval_merge.yaml").write_text("split:\n  <<: {a: 1}\n")


def _requests(root: Path) -> None:
    """``req_*.json``: a good request file and bad ones."""
    vocab = {f: json.loads((root / "export" / "vocab" / f"{f}.json").read_text())["raw"][0]
             for f in ("attribution", "category", "behavior")}
    event = dict(vocab, item=int(_item_raw(2)), timestamp=1_700_000_000)
    good = [{"request_time": 1_700_000_100, "history": [event, dict(event, item=int(_item_raw(3)))]}]
    (root / "req_good.json").write_text(json.dumps(good * 3))
    (root / "req_json.json").write_text("[{")
    (root / "req_empty.json").write_text("[]")
    (root / "req_type.json").write_text(json.dumps([dict(good[0], history=[dict(event, item="abc")])]))
    (root / "req_time.json").write_text(json.dumps([dict(good[0], request_time=10**13)]))


def _workspace(root: Path, fixture: Dict[str, Path]) -> None:
    src = _Source(fixture)
    shutil.copytree(fixture["data"], root / "prepared")
    shutil.copytree(fixture["run"], root / "run")
    shutil.copytree(fixture["fp32"], root / "export")
    gen_permuted_vocab(root, src)  # permuted/: same table sizes, other IDs
    _damage_run(root, src)
    _damage_export(root)
    _configs(root, root / "run")
    _requests(root)
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("mine")
    (root / "victim").mkdir()
    (root / "victim" / "precious.txt").write_text("keep")
    (root / "link").symlink_to(root / "victim")
    (root / "afile").write_text("a file")
    gen_two_evals_of_different_data(root, src)  # e1/, e2/
    (root / "e2" / "metrics.json").write_text((root / "e1" / "metrics.json").read_text())  # one dataset


# ---- the draws ----------------------------------------------------------------------------------

RUNS = ["run", "run", "d_trunc/run", "d_bytes/run", "d_rank/run", "d_latest/run", "d_field/run", "d_distcp/run",
        "d_lock/run"]
EXPORTS = ["export", "x_model", "x_card", "x_field", "x_vocab", "x_novocab"]
PLACES = ["new/out", "mine", "afile", "afile/under", "link", "link/inner", "victim", "prepared", "run", "export",
          "e1", "missing", "prepared/out", "run/out", "export/out", "prepared/vocab"]
DATA = ["prepared"] * 5 + ["permuted", "permuted", "missing", "afile", "export", "mine", "run"]
TRAIN_OVERRIDES = ["train.max_stepz=3", "optim.lr=fast", "optim.lr=.nan", "data.max_len=0", "train.resume=false",
                   "--overwrite", "model.heads=4", "data.num_negatives=100000", "embeddings.optimizer=adam",
                   "optim.grad_clip=-inf", "data.batch_size=abc", "train.max_steps=1",
                   "optim.schedule.decay_steps=1000"]
EVAL_OVERRIDES = ["split=nope", "ks=[]", "data.batch_size=4", "max_batches=0", "k=1", "data.max_len=0"]


def _pick(rng: random.Random, root: Path, choices: Sequence[str]) -> str:
    return str(root / rng.choice(choices))


def _some(rng: random.Random, options: Sequence[str], counts: Sequence[int] = (0, 0, 1, 2)) -> List[str]:
    """A few of ``options`` (mostly none: a draw should reach past the argument checks)."""
    return rng.sample(list(options), rng.choice(counts))


def draw_train(rng: random.Random, root: Path) -> Draw:
    run_dir = rng.choice(RUNS * 2 + ["new/run", "afile", "afile/run", "mine", "link", "export", "prepared",
                                     "prepared/run", "prepared/vocab"])
    config = rng.choice(["job.yaml"] * 12 + ["merge.yaml", "dup.yaml", "missing.yaml", "afile"])
    flags = ["--overwrite"] if rng.random() < 0.2 else []
    argv = [*flags, "--config", str(root / config), f"run.dir={root / run_dir}",
            f"data.path={_pick(rng, root, DATA)}", "run.tensorboard=false", "run.progress=false", "train.resume=true"]
    return argv + _some(rng, TRAIN_OVERRIDES, (0, 0, 0, 1, 2)), [run_dir]


def draw_export(rng: random.Random, root: Path) -> Draw:
    out = rng.choice(PLACES + ["export"] * 6 + ["new/export"] * 2)
    argv = ["--checkpoint", _pick(rng, root, RUNS + ["missing", "prepared", "export"]), "--out", str(root / out)]
    argv += ["--no-pt2"] if rng.random() < 0.9 else []
    argv += ["--overwrite"] if rng.random() < 0.6 else []
    argv += ["--data", _pick(rng, root, DATA)] if rng.random() < 0.4 else []
    argv += _some(rng, ["--int8", "--allow-unchecked-vocab", "--max-tokens-per-pass=-1", "--max-tokens-per-pass=abc"])
    return argv, [out]


def draw_eval(rng: random.Random, root: Path) -> Draw:
    out = rng.choice(PLACES + ["e1"] * 2 + ["new/eval"])
    model = (["--checkpoint", _pick(rng, root, RUNS + ["missing", "export"])] if rng.random() < 0.6
             else ["--model", str(root / rng.choice(EXPORTS + ["run", "missing"]) / "model.pt")])
    argv = [*model, "--data", _pick(rng, root, DATA), "--out", str(root / out)]
    argv += ["--overwrite"] if rng.random() < 0.5 else []
    argv += ["--allow-unchecked-vocab"] if rng.random() < 0.2 else []
    argv += ["--config", str(root / "eval_merge.yaml")] if rng.random() < 0.1 else []
    cheap = ["diagnostics.users=0", "max_batches=1"]  # a run that succeeds takes one batch
    return argv + [*cheap, *_some(rng, EVAL_OVERRIDES + ["--overwrite"], (0, 0, 0, 1))], [out]


def draw_compare(rng: random.Random, root: Path) -> Draw:
    runs = rng.sample(["e1", "e2", "e1", "e2", "run", "export", "prepared", "missing", "e1:m"], 2)
    target = rng.choice(["cmp.json", "cmp.json", "run/summary.json", "export/model_card.json", "prepared/meta.json",
                         "export", "run", "link", "afile/under", "e1/metrics.json", "new/cmp.json"])
    argv = [str(root / r) for r in runs] + ["--json", str(root / target)]
    return argv + (["--overwrite"] if rng.random() < 0.5 else []), [target]


def draw_serve(rng: random.Random, root: Path) -> Draw:
    argv = ["--model-dir", _pick(rng, root, EXPORTS + ["export", "export", "run", "missing", "afile", "mine"])]
    if rng.random() < 0.8:
        argv += ["--requests", _pick(rng, root, ["req_good.json", "req_good.json", "req_json.json",
                                                 "req_empty.json", "req_type.json", "req_time.json", "missing",
                                                 "mine", "export/model_card.json"])]
    argv += _some(rng, ["--k=0", "--k=-1", "--k=abc", "--k=2", "--k=2", "--max-batch=0", "--max-batch=1",
                        "--max-batch=1", "--num=-1", "--num=2", "--check-torch-only"], (0, 0, 0, 1, 2))
    return argv, []


DRAWERS: Dict[str, Callable[[random.Random, Path], Draw]] = {
    "train": draw_train, "export": draw_export, "eval": draw_eval, "compare": draw_compare, "serve": draw_serve}


# ---- running a draw -----------------------------------------------------------------------------

def _mains() -> Dict[str, Callable[[List[str]], int]]:
    from hytrec_torchrec.evaluation.cli import main as eval_main
    from hytrec_torchrec.evaluation.paired import main as compare_main
    from hytrec_torchrec.serving.cli import main as export_main
    from hytrec_torchrec.training.cli import main as train_main

    return {"train": train_main, "export": export_main, "eval": eval_main, "compare": compare_main,
            "serve": _serve_module().main}


def _call(main: Callable[[List[str]], int], argv: List[str]) -> int:
    """``main(argv)``'s exit status; argparse's ``SystemExit`` (a bad option value) gives its code."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


def _may_change(root: Path, outputs: List[str], before: Dict[str, str]) -> List[str]:
    """The outputs, the place each really lies (folders above it resolved), and the folders above
    them that do not exist yet (made for the output)."""
    places = outputs + [_real(root, o) for o in outputs]
    return places + [str(p) for o in places for p in Path(o).parents if str(p) != "." and str(p) not in before]


def _given(argv: List[str], root: Path) -> List[Path]:
    """The paths under ``root`` that ``argv`` names (``key=PATH`` and ``DIR:MODEL`` included)."""
    values = [a.split("=", 1)[1] if "=" in a else a for a in argv]
    return [Path(v.split(":")[0]) for v in values if v.startswith(str(root))]


def _written_into_an_input(argv: List[str], root: Path, outputs: List[str]) -> List[str]:
    """The outputs that are, or lie in, another path the command line names."""
    from hytrec_torchrec.outputs import inside

    given = [p for p in _given(argv, root) if os.path.lexists(p)]
    return [o for o in outputs for p in given
            if p != root / o and inside((root / o).resolve(), p.resolve())]


def _check_draw(tool: str, rc: int, err: str, before: Dict[str, str], after: Dict[str, str],
                may_change: List[str], why: str) -> None:
    allowed = DOCUMENTED[tool] + ((1,) if "--check-torch-only" in why else ())
    assert rc in allowed, why
    assert "Traceback" not in err, why
    if rc != 0:
        lines = err.strip().splitlines()
        assert lines and ": " in lines[-1], why
        assert after == before, why
    assert _outside(after, may_change) == _outside(before, may_change), why
    assert not [k for k in after if "hytrec-lock" in k or "-tmp-" in k or "-old-" in k], why


@pytest.fixture
def _one_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """hytrec-train in-process is a one-rank gloo job: its environment is set here (and restored
    after the test), its process group destroyed after the test."""
    import torch.distributed as dist

    from hytrec_torchrec.cli import DEBUG_ENV
    from hytrec_torchrec.runtime.distributed import free_port

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.delenv("TORCHX_JOB_ID", raising=False)
    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                           LOCAL_RANK="0", LOCAL_WORLD_SIZE="1").items():
        monkeypatch.setenv(key, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("tool", list(DRAWERS))
def test_no_run_changes_what_is_not_its_output(tool: str, trained_export: Dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture, _one_rank: None) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    _workspace(root, trained_export)
    rng = random.Random(f"{SEED}-{tool}")
    main = _mains()[tool]
    outcomes: Dict[bool, int] = {}
    for i in range(DRAWS):
        argv, outputs = DRAWERS[tool](rng, root)
        before = snapshot(root)
        may_change = _may_change(root, outputs, before)
        rc = _call(main, argv)
        err = capsys.readouterr().err
        why = f"draw {i} (seed {SEED}): {PROGS[tool]} {' '.join(argv)}\nrc={rc}\n{err[-1500:]}"
        _check_draw(tool, rc, err, before, snapshot(root), may_change, why)
        assert rc != 0 or not _written_into_an_input(argv, root, outputs), why
        outcomes[rc == 0] = outcomes.get(rc == 0, 0) + 1
    print(tool, outcomes)
    assert outcomes.get(False, 0) > 0, outcomes  # the draws reach refusals


def test_a_failed_resume_leaves_the_run_dir_as_it_was(trained_export: Dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture, _one_rank: None) -> None:
    """The first case the property found: a resume refused after the run dir was claimed (here a
    ``latest`` that leads out of the run) left its own pid in the earlier run's lock file. The claim
    is now undone (hytrec_torchrec/training/rundir.py: undo_claim)."""
    from hytrec_torchrec.training.cli import main as train_main

    gen_latest_outside(tmp_path, _Source(trained_export))
    shutil.copytree(trained_export["data"], tmp_path / "prepared")
    _configs(tmp_path, tmp_path / "run")
    before = snapshot(tmp_path)
    rc = _call(train_main, ["--config", str(tmp_path / "job.yaml"), f"run.dir={tmp_path / 'run'}",
                            f"data.path={tmp_path / 'prepared'}", "run.tensorboard=false", "run.progress=false"])
    assert rc == 2 and "not a checkpoint of this run" in capsys.readouterr().err.strip().splitlines()[-1]
    assert snapshot(tmp_path) == before
