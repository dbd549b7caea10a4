"""A property of every run of hytrec-prep (all modes) and hytrec-compare, over drawn bad arguments.

A seeded random driver draws a tool, an input, an output and options from a workspace holding
one of everything (raw events, a prepared dataset, a folder of shard outputs, the user's own
folder with a ``meta.json``, a file, a symbolic link to a victim folder, two evaluations) and
checks, for every draw:

* the exit status is a documented one (0, 2, and 3 for hytrec-compare; never 1, an internal error);
* no path outside the run's output changes (the snapshot of the whole workspace, less the
  output, is equal before and after), and no lock or unfinished sibling is left behind;
* a failed run leaves its output exactly as it was.

Draws run in-process (milliseconds each); ``HYTREC_PROPERTY_DRAWS`` sets how many (default 60),
``HYTREC_PROPERTY_SEED`` the seed (default 43).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.cli import main as prep_main
from hytrec_torchrec.evaluation.paired import main as compare_main
from tests.test_bad_inputs import gen_two_evals_of_different_data
from tests.test_outputs_prep import snapshot

DRAWS = int(os.environ.get("HYTREC_PROPERTY_DRAWS", "60"))
SEED = int(os.environ.get("HYTREC_PROPERTY_SEED", "43"))


def _workspace(root: Path) -> None:
    """One of everything a run may be pointed at."""
    (root / "raw").mkdir()
    u = np.repeat(np.arange(5), 6)
    pq.write_table(pa.table({"user_id": u, "item_id": np.arange(30) % 7, "timestamp": np.arange(30) * 10 + 1_700_000_000}),
                   root / "raw" / "events.parquet")
    assert prep_main([str(root / "raw"), str(root / "prepared")]) == 0
    assert prep_main([str(root / "raw"), str(root / "shards"), "--shard", "0/2", "num_partitions=2"]) == 0
    assert prep_main([str(root / "raw"), str(root / "shards1"), "--shard", "1/2", "num_partitions=2"]) == 0
    (root / "mine").mkdir()
    (root / "mine" / "meta.json").write_text('{"my": "settings"}')
    (root / "mine" / "notes.txt").write_text("mine")
    (root / "victim").mkdir()
    (root / "victim" / "precious.txt").write_text("keep")
    (root / "link").symlink_to(root / "victim")
    (root / "afile").write_text("a file")
    gen_two_evals_of_different_data(root, None)  # e1/, e2/ (different data fields)
    (root / "e2" / "metrics.json").write_text((root / "e1" / "metrics.json").read_text())  # same data now


INPUTS = ["raw", "raw/events.parquet", "missing", "prepared", "mine", "afile", "link"]
OUTPUTS = ["prepared", "shards", "mine", "new", "newdir/sub/out", "afile", "link", "link/inner", "raw", "raw/sub", "victim",
           "e1", "afile/under"]
OPTIONS = ["--overwrite", "--shard 0/2", "--shard 1/2", "spill_dir=victim", "spill_dir=raw", "spill_dir=new2",
           "vocab_from=prepared", "vocab_from=mine", "num_partitions=2", "min_time=bogus", "filters.min_user_events=99"]


def _draw(rng: random.Random, root: Path) -> Tuple[str, List[str], List[str]]:
    """``(tool, argv, outputs)``: a drawn command line and the paths it may change."""
    tool = rng.choice(["prep", "prep", "merge", "compare"])
    if tool == "prep":
        out = rng.choice(OUTPUTS)
        argv = [str(root / ("raw" if rng.random() < 0.5 else rng.choice(INPUTS))), str(root / out)]
        for opt in rng.sample(OPTIONS, rng.choice([0, 0, 1, 1, 2, 3])):
            argv += [o if "=" not in o or not o.split("=")[1].isidentifier() or o.startswith(("min_", "filters"))
                     else f"{o.split('=')[0]}={root / o.split('=')[1]}" for o in opt.split()]
        return tool, argv, [out]
    if tool == "merge":
        out = rng.choice(["shards", "shards"] + OUTPUTS)
        extra = rng.sample(["shards1", "shards1", "shards", "prepared", "mine", "e1", "link"], rng.randint(0, 2))
        argv = ["--merge", str(root / out), *[str(root / e) for e in extra]]
        if rng.random() < 0.5:
            argv.append("--overwrite")
        return tool, argv, [out]
    runs = rng.sample(["e1", "e2", "e1", "e2", "prepared", "missing", "e1:m", "e2:nobody"], 2)
    target = rng.choice(["cmp.json", "e1/metrics.json", "e2/cmp.json", "afile", "link", "victim/cmp.json", "e1"])
    argv = [str(root / r) for r in runs] + ["--json", str(root / target)]
    if rng.random() < 0.5:
        argv.append("--overwrite")
    return "compare", argv, [target]


def _real(root: Path, output: str) -> str:
    """Where ``output`` lies, relative to ``root``: the folders above it resolved (a link there is
    the user's way of naming the place), the output itself not (a link there is never followed)."""
    path = root / output
    parent = Path(os.path.realpath(path.parent))
    try:
        return str((parent / path.name).relative_to(root.resolve()))
    except ValueError:
        return output


def _outside(snap: Dict[str, str], outputs: List[str]) -> Dict[str, str]:
    return {k: v for k, v in snap.items()
            if not any(k == o or k.startswith(o.rstrip("/") + "/") for o in outputs)}


@pytest.mark.parametrize("seed", [SEED])
def test_no_run_changes_what_is_not_its_output(tmp_path: Path, seed: int, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    _workspace(root)
    rng = random.Random(seed)
    outcomes: Dict[Tuple[str, bool], int] = {}
    # three runs that succeed first (so later draws meet their outputs), then the drawn ones
    scripted = [("prep", [str(root / "raw"), str(root / "new")], ["new"]),
                ("merge", ["--merge", str(root / "shards"), str(root / "shards1")], ["shards"]),
                ("compare", [str(root / "e1"), str(root / "e2"), "--json", str(root / "cmp.json")], ["cmp.json"])]
    for i in range(DRAWS + len(scripted)):
        tool, argv, outputs = scripted[i] if i < len(scripted) else _draw(rng, root)
        outputs = outputs + [_real(root, o) for o in outputs]
        before = snapshot(root)
        # folders above an output that do not exist yet are made for it
        outputs += [str(p) for o in outputs for p in Path(o).parents if str(p) != "." and str(p) not in before]
        try:
            rc = compare_main(argv) if tool == "compare" else prep_main(argv)
        except SystemExit as exc:  # argparse: a bad option value
            rc = exc.code
        err = capsys.readouterr().err
        why = f"draw {i} (seed {seed}): {tool} {' '.join(argv)}\nrc={rc}\n{err[-1500:]}"
        after = snapshot(root)
        assert rc in ((0, 2, 3) if tool == "compare" else (0, 2)), why
        assert _outside(after, outputs) == _outside(before, outputs), why
        if rc != 0:
            assert after == before, why
        assert not [k for k in after if "hytrec-lock" in k or "-tmp-" in k or "-old-" in k], why
        outcomes[tool, rc == 0] = outcomes.get((tool, rc == 0), 0) + 1
    # the draws reach both ends of every tool: runs that write and runs that are refused
    assert {(t, ok) for t in ("prep", "merge", "compare") for ok in (True, False)} <= set(outcomes), outcomes
    assert outcomes["prep", True] > 1, outcomes
    print(outcomes)
