"""The run directory's lock never leads outside the run (issue 43 BAD 13), and a job that fails
before its first write leaves the run directory as it found it (the lock's bytes, no folder made)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hytrec_torchrec.config import ConfigError
from hytrec_torchrec.training.rundir import LOCK_NAME, claim_run_dir, note_before_claim, undo_claim


def _claim(run: Path) -> None:
    handle = claim_run_dir(run, resume=True, overwrite=False, is_main=True)
    assert handle is not None
    handle.close()


def test_a_symlinked_lock_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    victim.write_text("precious\n")
    (run / LOCK_NAME).symlink_to(victim)
    with pytest.raises(ConfigError, match=f"{LOCK_NAME} is a symbolic link; refused"):
        claim_run_dir(run, resume=True, overwrite=False, is_main=True)
    assert victim.read_text() == "precious\n"


def test_a_dangling_lock_link_creates_nothing_outside_the_run(tmp_path: Path) -> None:
    run, outside = tmp_path / "run", tmp_path / "outside" / "created.txt"
    run.mkdir()
    outside.parent.mkdir()
    (run / LOCK_NAME).symlink_to(outside)
    with pytest.raises(ConfigError, match="symbolic link"):
        claim_run_dir(run, resume=True, overwrite=False, is_main=True)
    assert not outside.exists()


def test_a_hard_linked_lock_is_refused(tmp_path: Path) -> None:
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    victim.write_text("precious\n")
    os.link(victim, run / LOCK_NAME)
    with pytest.raises(ConfigError, match="hard link"):
        claim_run_dir(run, resume=True, overwrite=False, is_main=True)
    assert victim.read_text() == "precious\n"


def test_a_plain_lock_is_created_and_reused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _claim(run)
    assert (run / LOCK_NAME).read_text() == str(os.getpid())
    _claim(run)  # an earlier job's lock file is taken over
    assert (run / LOCK_NAME).read_text() == str(os.getpid())


def test_an_undone_claim_puts_the_earlier_lock_back(tmp_path: Path) -> None:
    """A resume that fails after the claim (a damaged checkpoint) once left its own pid in the lock
    of an earlier run: the run dir changed although nothing was written (found by the property test,
    tests/test_outputs_property_tools.py)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_bytes(b"4242")
    undo = note_before_claim(run)
    handle = claim_run_dir(run, resume=True, overwrite=False, is_main=True)
    assert (run / LOCK_NAME).read_text() == str(os.getpid())
    undo_claim(handle, undo)
    assert handle.closed and (run / LOCK_NAME).read_bytes() == b"4242"
    _claim(run)  # released: the next job takes it


def test_an_undone_claim_of_a_new_run_dir_leaves_nothing(tmp_path: Path) -> None:
    run = tmp_path / "new" / "run"
    undo = note_before_claim(run)
    undo_claim(claim_run_dir(run, resume=True, overwrite=False, is_main=True), undo)
    assert list(tmp_path.iterdir()) == []


def test_an_undone_claim_never_writes_through_a_link(tmp_path: Path) -> None:
    """The claim refused a linked lock: undoing it removes no folder it did not make and touches
    neither the link nor its target."""
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    victim.write_text("precious\n")
    (run / LOCK_NAME).symlink_to(victim)
    undo = note_before_claim(run)
    with pytest.raises(ConfigError):
        claim_run_dir(run, resume=True, overwrite=False, is_main=True)
    undo_claim(None, undo)
    assert (run / LOCK_NAME).is_symlink() and victim.read_text() == "precious\n"
