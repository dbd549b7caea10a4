"""One run directory, one run: the trainer claims ``run.dir`` before it reads or writes anything.

* **Lock.** Rank 0 holds an exclusive ``flock`` on ``RUN_DIR/.hytrec-train.lock`` for the life
  of the job; a second trainer on the same directory stops with a one-line error naming the
  holder's pid instead of racing the first one's checkpoints. (``flock`` is per host: on a shared
  filesystem it keeps apart jobs whose rank 0 runs on the same node only.) The lock file is opened
  without following a symbolic link (``O_NOFOLLOW``): a lock that is a link, dangling or not, a
  hard link or anything but a regular file is refused, so the pid is never written outside the run.
* **No mixed runs.** With ``train.resume: false``, a directory that already holds a run's outputs
  is refused unless ``run.overwrite`` (``hytrec-train --overwrite``), which removes exactly the
  entries a training run writes (:data:`RUN_ENTRIES`) and refuses, removing nothing, when the
  directory holds anything else.

* **Undone when the job fails before its first write.** :func:`note_before_claim` records what the
  claim will change (the folders it makes for ``run.dir``, the lock file's bytes); a job that fails
  between the claim and its first write (a damaged checkpoint, a dataset that is not the
  checkpoint's) calls :func:`undo_claim`, which puts the lock's bytes back (or removes a lock the
  claim created) and removes the folders it made, so the run dir is as it was.
* **Checked before the work.** :func:`check_run_dir` runs the same checks without changing anything
  (``run.dir`` not a folder, under a file, or holding an earlier run; also ``run.dir`` that is the
  dataset or lies in it, which the run would write into) when the trainer starts,
  before the dataset is read and the model built; :func:`claim_run_dir` then takes the lock and
  checks again.

Errors are :class:`~hytrec_torchrec.config.ConfigError` (``hytrec-train`` exit status 2), raised
on every rank: rank 0 decides and broadcasts the verdict, so no rank waits at a barrier for a
rank that stopped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional, Sequence

import torch.distributed as dist

from hytrec_torchrec.config import ConfigError
from hytrec_torchrec.files import remove_entries
from hytrec_torchrec.outputs import inside

__all__ = ["LOCK_NAME", "RUN_ENTRIES", "claim_run_dir", "check_run_dir", "ClaimUndo", "note_before_claim",
           "undo_claim"]

LOCK_NAME = ".hytrec-train.lock"
#: what a training run writes into its directory; ``--overwrite`` removes these and nothing else.
RUN_ENTRIES = frozenset({"checkpoints", "summary.json", "tb", "sharding_plan.txt", "curves.png", LOCK_NAME})


def _open_lock_file(run_dir: Path) -> IO[str]:
    """``run_dir/LOCK_NAME`` opened for reading and writing, created when absent, without following
    a symbolic link (and without blocking on a FIFO).

    Raises:
        ConfigError: the lock is a symbolic link, not a regular file, or a hard link of another file.
    """
    path = run_dir / LOCK_NAME
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"run.dir {run_dir}: {LOCK_NAME} is a symbolic link; refused (the lock is "
                              "written, and must not lead outside the run): remove it") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        what = "is not a regular file" if not stat.S_ISREG(info.st_mode) else "has another hard link"
        raise ConfigError(f"run.dir {run_dir}: {LOCK_NAME} {what}; refused (the lock is written): remove it")
    return os.fdopen(fd, "r+")


def _lock(run_dir: Path) -> IO[str]:
    f = _open_lock_file(run_dir)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise ConfigError(f"run.dir {run_dir}: in use by another trainer (pid {holder}); wait for it to "
                          "finish or choose another run.dir") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def _earlier_run_error(run_dir: Path, resume: bool, overwrite: bool) -> Optional[str]:
    """Why ``run_dir`` (an existing folder) may not take a new run, or None."""
    names = {p.name for p in run_dir.iterdir()} - {LOCK_NAME}
    if resume or not (names & (RUN_ENTRIES - {LOCK_NAME})):
        return None
    if not overwrite:
        return (f"run.dir {run_dir}: holds an earlier run ({', '.join(sorted(names)[:4])}) and "
                "train.resume is false; resume it (train.resume=true), choose another run.dir, or "
                "clear it with --overwrite (run.overwrite=true)")
    foreign = sorted(names - RUN_ENTRIES)
    if foreign:
        return (f"run.dir {run_dir}: --overwrite refused: it holds entries a training run did not "
                f"write ({', '.join(foreign[:5])}); move them or choose another run.dir")
    return None


def _check_earlier_run(run_dir: Path, resume: bool, overwrite: bool) -> None:
    problem = _earlier_run_error(run_dir, resume, overwrite)
    if problem is not None:
        raise ConfigError(problem)
    names = {p.name for p in run_dir.iterdir()} - {LOCK_NAME}
    if not resume and names & (RUN_ENTRIES - {LOCK_NAME}):  # an earlier run, all of it ours: --overwrite
        remove_entries(run_dir, names)


def _input_error(run_dir: Path, inputs: Sequence[str | Path]) -> Optional[str]:
    """Why ``run_dir`` may not be written: it is one of ``inputs`` (the dataset) or lies in one."""
    out = run_dir.resolve()
    for given in inputs:
        if inside(out, Path(given).resolve()):
            return (f"run.dir {run_dir}: is the input {given} or lies in it (a run writes its checkpoints "
                    "there); choose a run.dir outside the dataset")
    return None


def _run_dir_error(run_dir: Path, resume: bool, overwrite: bool, inputs: Sequence[str | Path] = ()) -> Optional[str]:
    """What :func:`claim_run_dir` would refuse (and a run.dir in an input), found without creating or
    removing anything."""
    problem = _input_error(run_dir, inputs)
    if problem is not None:
        return problem
    existing = next(p for p in [run_dir, *run_dir.absolute().parents] if os.path.lexists(p))
    if not existing.is_dir():
        where = "is" if existing == run_dir else f"lies under {existing}, which is"
        return f"run.dir {run_dir}: {where} not a directory"
    return _earlier_run_error(run_dir, resume, overwrite) if existing == run_dir else None


def _decide(is_main: bool, check: Any) -> None:
    """Rank 0 runs ``check`` (returns a message or None) and broadcasts its verdict; every rank
    raises :class:`ConfigError` with it."""
    verdict: list[Any] = [check() if is_main else None]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise ConfigError(verdict[0])


def check_run_dir(run_dir: str | Path, resume: bool, overwrite: bool, is_main: bool,
                  inputs: Sequence[str | Path] = ()) -> None:
    """The checks of :func:`claim_run_dir` without the lock or any change, before the work starts
    (collective when a process group is up); ``inputs`` (the dataset) may not be run.dir or hold it."""
    _decide(is_main, lambda: _run_dir_error(Path(run_dir), resume, overwrite, inputs))


def claim_run_dir(run_dir: str | Path, resume: bool, overwrite: bool, is_main: bool) -> Optional[IO[str]]:
    """Lock ``run_dir`` and check or clear an earlier run in it (module docstring). Collective
    when a process group is up. Returns the lock's open file on rank 0 (keep it open for the
    job's life; closing it releases the lock), None elsewhere."""
    handle: Optional[IO[str]] = None
    verdict: list[Any] = [None]
    if is_main:
        try:
            path = Path(run_dir)
            path.mkdir(parents=True, exist_ok=True)
            handle = _lock(path)
            _check_earlier_run(path, resume, overwrite)
        except (ConfigError, OSError) as exc:
            if handle is not None:
                handle.close()
                handle = None
            verdict[0] = str(exc) if isinstance(exc, ConfigError) else f"run.dir {run_dir}: {exc}"
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise ConfigError(verdict[0])
    return handle


@dataclass(frozen=True)
class ClaimUndo:
    """What :func:`claim_run_dir` is about to change in ``run_dir`` (from :func:`note_before_claim`)."""

    run_dir: Path
    #: the folders the claim will make (``run_dir`` and missing ones above it), deepest first
    made: tuple[Path, ...]
    #: the lock file's bytes before the claim; None when there was no lock file
    lock_bytes: Optional[bytes]


def _regular_bytes(path: Path) -> Optional[bytes]:
    """The bytes of ``path`` when it is a regular file (not followed through a link), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read() if stat.S_ISREG(os.fstat(fd).st_mode) else None


def note_before_claim(run_dir: str | Path) -> ClaimUndo:
    """Record what a claim of ``run_dir`` changes, for :func:`undo_claim`."""
    path = Path(run_dir)
    made = tuple(p for p in [path, *path.absolute().parents] if not os.path.lexists(p))
    return ClaimUndo(path, made, _regular_bytes(path / LOCK_NAME))


def undo_claim(handle: Optional[IO[str]], undo: ClaimUndo) -> None:
    """Release the lock of a job that failed before it wrote anything, and put ``run_dir`` back as
    :func:`note_before_claim` found it: the lock's earlier bytes (written through the open lock,
    never through a path), or no lock when there was none; the folders the claim made removed.
    ``handle`` is :func:`claim_run_dir`'s result (None on other ranks, or when the claim failed)."""
    if handle is not None:
        with handle:
            handle.flush()
            if undo.lock_bytes is None:
                with contextlib.suppress(OSError):
                    os.unlink(undo.run_dir / LOCK_NAME)  # still held: no other trainer has it open
            else:
                os.ftruncate(handle.fileno(), 0)
                os.pwrite(handle.fileno(), undo.lock_bytes, 0)
    for folder in undo.made:
        with contextlib.suppress(OSError):
            os.rmdir(folder)
