"""hytrec-prep writes only its own output (issue 43, BAD 4-12; the mechanism: hytrec_torchrec/outputs.py).

Each test builds the situation of one case, runs hytrec-prep and compares a snapshot of every
path under the test's folder (bytes of files, targets of links) before and after: a refused or
failed run changes nothing outside its output, and leaves an earlier output as it was. The runs
that must overlap in time (two preps into one OUTPUT, or sharing a ``spill_dir``) are
subprocesses whose first run waits, at a point both the old and the new code pass, until the
second has ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.cli import main as prep_main
from hytrec_torchrec.data.reader import DatasetFormatError, read_meta

ROOT = Path(__file__).resolve().parents[1]


def _events(n_users: int = 5, per_user: int = 6, item_offset: int = 0) -> pa.Table:
    u = np.repeat(np.arange(n_users), per_user)
    return pa.table({"user_id": u, "item_id": np.arange(len(u)) % 7 + item_offset,
                     "timestamp": np.arange(len(u)) * 10 + 1_700_000_000})


def _raw(folder: Path, item_offset: int = 0) -> Path:
    folder.mkdir(parents=True)
    pq.write_table(_events(item_offset=item_offset), folder / "events.parquet")
    return folder


def snapshot(root: Path) -> Dict[str, str]:
    """Every path under ``root``: a file's bytes (hex digest), a link's target, or ``dir``."""
    import hashlib

    out: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _prep(args: list[str]) -> int:
    return prep_main([*args])


def _events_out(folder: Path) -> int:
    return json.loads((folder / "meta.json").read_text())["events_out"]


# ---- BAD 4, 5: a sharded run into a complete dataset or into the user's own folder -------------

def test_a_sharded_run_leaves_a_complete_dataset_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = _raw(tmp_path / "raw")
    assert _prep([str(raw), str(tmp_path / "out")]) == 0
    other = _raw(tmp_path / "raw2", item_offset=100)
    before = snapshot(tmp_path)
    assert _prep([str(other), str(tmp_path / "out"), "--shard", "0/2"]) == 2
    assert "holds a complete prepared dataset" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    read_meta(tmp_path / "out")


def test_a_sharded_run_leaves_the_users_folder_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = _raw(tmp_path / "raw")
    mine = tmp_path / "mine"
    (mine / "sequences").mkdir(parents=True)
    (mine / "sequences" / "part-00000.parquet").write_text("my own file")
    (mine / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        assert _prep([str(raw), str(mine), "--shard", "0/2", *extra]) == 2
        assert "did not write this one" in capsys.readouterr().err
        assert snapshot(tmp_path) == before


# ---- BAD 6: links at OUT/_spill and OUT/_shards are never followed ------------------------------

def test_a_sharded_run_follows_no_link_in_its_output(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "raw")
    victim = tmp_path / "victim"
    (victim / "shard-0-of-2").mkdir(parents=True)
    (victim / "shard-0-of-2" / "precious.txt").write_text("keep")
    (victim / "p-00000.arrow").write_text("keep too")
    out = tmp_path / "out"
    out.mkdir()
    (out / "_spill").symlink_to(victim)
    (out / "_shards").symlink_to(victim)
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        assert _prep([str(raw), str(out), "--shard", "0/2", *extra]) == 2
        assert snapshot(tmp_path) == before
    # the same links inside a folder of shard outputs that hytrec-prep made
    out2 = tmp_path / "out2"
    assert _prep([str(raw), str(out2), "--shard", "1/2"]) == 0
    (out2 / "_spill").symlink_to(victim)
    before = snapshot(tmp_path)
    assert _prep([str(raw), str(out2), "--shard", "0/2"]) == 2
    assert _prep(["--merge", str(out2)]) == 2
    assert snapshot(tmp_path) == before


# ---- BAD 7: spill_dir holding the user's files -------------------------------------------------

def test_spill_dir_keeps_what_was_there(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "raw")
    scratch = tmp_path / "scratch"
    (scratch / "shard-0-of-1").mkdir(parents=True)
    (scratch / "shard-0-of-1" / "mine.txt").write_text("mine")
    (scratch / "shard-0-of-1" / "p-00000.arrow").write_text("also mine")
    before = snapshot(scratch)
    assert _prep([str(raw), str(tmp_path / "out"), f"spill_dir={scratch}"]) == 0
    assert snapshot(scratch) == before  # nothing of the run is left there either
    assert _events_out(tmp_path / "out") == 30


# ---- BAD 8: a merge that fails changes nothing -------------------------------------------------

def test_a_failed_merge_changes_nothing(tmp_path: Path) -> None:
    assert _prep([str(_raw(tmp_path / "raw")), str(tmp_path / "out")]) == 0
    assert _prep([str(_raw(tmp_path / "raw2", item_offset=100)), str(tmp_path / "s0"), "--shard", "0/2"]) == 0
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):  # without: refused; with: shard 1 of 2 is missing
        assert _prep(["--merge", str(tmp_path / "out"), str(tmp_path / "s0"), *extra]) == 2
        assert snapshot(tmp_path) == before
    read_meta(tmp_path / "out")


def test_merge_of_unmerged_shards_then_the_loader(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "raw")
    out = tmp_path / "out"
    assert _prep([str(raw), str(out), "--shard", "0/2", "num_partitions=4"]) == 0
    with pytest.raises(DatasetFormatError, match="incomplete output"):
        read_meta(out)  # shards not merged yet
    before = snapshot(tmp_path)
    assert _prep(["--merge", str(out)]) == 2  # shard 1 missing
    assert snapshot(tmp_path) == before
    assert _prep([str(raw), str(out), "--shard", "1/2", "num_partitions=4"]) == 0
    assert _prep(["--merge", str(out)]) == 0
    assert read_meta(out).num_partitions == 4 and _events_out(out) == 30
    assert sorted(p.name for p in out.iterdir()) == [".hytrec-prep", "meta.json", "sequences", "vocab"]


# ---- BAD 9: vocab_from=OUT --overwrite ---------------------------------------------------------

def test_vocab_from_the_output_itself(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "raw")
    out = tmp_path / "out"
    assert _prep([str(raw), str(out)]) == 0
    vocab = pq.read_table(out / "vocab" / "item.parquet").select(["raw", "index"])
    assert _prep([str(raw), str(out), f"vocab_from={out}", "--overwrite"]) == 0
    assert pq.read_table(out / "vocab" / "item.parquet").select(["raw", "index"]).equals(vocab)
    assert _events_out(out) == 30
    # a vocab_from that cannot be read: refused before the output is touched
    before = snapshot(tmp_path)
    assert _prep([str(raw), str(out), f"vocab_from={tmp_path / 'nowhere'}", "--overwrite"]) == 2
    assert snapshot(tmp_path) == before


# ---- BAD 10: --overwrite and a folder that merely holds a file called meta.json ------------------

def test_overwrite_needs_prep_content_not_a_file_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = _raw(tmp_path / "raw")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "meta.json").write_text(json.dumps({"my": "settings"}))
    (mine / "vocab").mkdir()
    (mine / "vocab" / "words.txt").write_text("mine")
    (mine / ".hytrec-prep").write_text("")  # an empty marker is a name, not prep's content
    before = snapshot(tmp_path)
    assert _prep([str(raw), str(mine), "--overwrite"]) == 2
    assert "did not write this one" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


# ---- BAD 11, 12: runs that overlap -------------------------------------------------------------

_SLOW_FIRST = """
import sys, time
from pathlib import Path
import data_prep.prepare as prepare
real = prepare._vocabs
def slow(*args, **kwargs):
    Path(sys.argv[1]).write_text("spilled")
    deadline = time.time() + 60
    while not Path(sys.argv[2]).exists() and time.time() < deadline:
        time.sleep(0.05)
    return real(*args, **kwargs)
prepare._vocabs = slow
from data_prep.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _overlapping(tmp_path: Path, first: list[str], second: list[str]) -> tuple:
    """Run ``first`` until it has spilled its input, then ``second`` to its end, then let ``first``
    finish; returns both completed processes."""
    spilled, go = tmp_path / "first-spilled", tmp_path / "second-ended"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("HYTREC_DEBUG", None)
    p1 = subprocess.Popen([sys.executable, "-c", _SLOW_FIRST, str(spilled), str(go), *first], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not spilled.exists() and p1.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert spilled.exists(), p1.communicate()
    r2 = subprocess.run([sys.executable, "-m", "data_prep.cli", *second], cwd=ROOT, capture_output=True, text=True,
                        env=env, timeout=120)
    go.write_text("go")
    out1, err1 = p1.communicate(timeout=120)
    spilled.unlink()
    go.unlink()
    return subprocess.CompletedProcess(p1.args, p1.returncode, out1, err1), r2


def test_two_preps_sharing_a_spill_dir_both_finish_whole(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "raw")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "mine.txt").write_text("mine")
    r1, r2 = _overlapping(tmp_path, [str(raw), str(tmp_path / "a"), f"spill_dir={scratch}"],
                          [str(raw), str(tmp_path / "b"), f"spill_dir={scratch}"])
    assert r2.returncode == 0, r2.stderr
    assert r1.returncode == 0, r1.stderr
    assert _events_out(tmp_path / "a") == 30 and _events_out(tmp_path / "b") == 30
    assert [p.name for p in scratch.iterdir()] == ["mine.txt"]


def test_two_preps_into_one_output_refuse_each_other(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "raw")
    out = tmp_path / "out"
    r1, r2 = _overlapping(tmp_path, [str(raw), str(out)], [str(raw), str(out), "--overwrite"])
    assert r2.returncode == 2 and "another run" in r2.stderr.strip().splitlines()[-1], r2.stderr
    assert len(r2.stderr.strip().splitlines()) == 1, r2.stderr
    assert r1.returncode == 0, r1.stderr
    assert _events_out(out) == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no lock, no sibling left


def test_shards_started_together_into_one_output(tmp_path: Path) -> None:
    """The documented ``for i in 0 1 2; do hytrec-prep IN OUT --shard $i/3 & done``: each shard holds
    OUT's lock only a moment to set the folder up, then its own shard's lock."""
    raw = _raw(tmp_path / "raw")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    procs = [subprocess.Popen([sys.executable, "-m", "data_prep.cli", str(raw), str(out), "--shard", f"{i}/3",
                               "num_partitions=3"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert _prep(["--merge", str(out)]) == 0
    assert _events_out(out) == 30


def test_the_lock_follows_no_link_and_takes_over_a_dead_runs_lock(tmp_path: Path) -> None:
    """hytrec_torchrec/outputs.py: the lock is created with O_EXCL | O_NOFOLLOW beside its output."""
    from hytrec_torchrec.outputs import OutputError, OutputLock

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / ".out.hytrec-lock").symlink_to(victim)
    with pytest.raises(OutputError, match="not a lock of a hytrec tool"):
        OutputLock(tmp_path / "out", "hytrec-prep").acquire()
    assert victim.read_text() == "keep"
    (tmp_path / ".out.hytrec-lock").unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".out.hytrec-lock").write_text(json.dumps({"tool": "hytrec-prep", "pid": int(dead.stdout),
                                                            "host": os.uname().nodename}))
    with OutputLock(tmp_path / "out", "hytrec-prep") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(OutputError, match="another run"):
            OutputLock(tmp_path / "out", "hytrec-eval").acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]
