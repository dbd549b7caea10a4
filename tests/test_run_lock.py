"""The run directory's lock never leads outside the run (issue 43 BAD 13)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hytrec_torchrec.config import ConfigError
from hytrec_torchrec.training.rundir import LOCK_NAME, claim_run_dir


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
