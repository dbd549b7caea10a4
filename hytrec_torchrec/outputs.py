"""Writing outputs: the one mechanism every tool uses (``hytrec-prep``, ``hytrec-eval``,
``hytrec-compare``).

An output is a folder (or a single file) a tool writes. The rules, in the order a tool applies them:

1. **Check everything before anything changes.** :func:`check_apart` refuses an output that is an
   input, holds one or lies inside one; :func:`classify` says what the output path holds now
   (nothing, an empty folder, an earlier output of this tool, or something else).
2. **A lock per output.** :class:`OutputLock` creates ``.NAME.hytrec-lock`` beside the output with
   ``O_CREAT | O_EXCL | O_NOFOLLOW``, so a second run into the same output refuses with one line
   instead of clearing the first one's live work, and a symbolic link planted at the lock's path is
   never followed. A lock left by a process that no longer runs (same host) is taken over.
3. **Write beside the target, rename into place.** :func:`staged_dir` yields a temporary sibling
   ``.NAME.TOOL-tmp-PID`` whose marker says ``"state": "writing"``; only when the tool has written
   everything is the marker set to ``"complete"`` and the folder renamed onto the target (the
   earlier output is moved aside first and removed after). An interrupted run leaves the earlier
   output whole and its own sibling visibly incomplete; readers refuse a folder whose marker is not
   complete (:func:`incomplete_reason`).
4. **Replace only what the tool made**, recognised by the marker's *content* (a JSON object naming
   the tool), never by a file name alone; entries are never followed through symbolic links.
5. **Never write into an input** (rule 1).
6. **A full disk names the output.** A write that fails with ``ENOSPC``/``EDQUOT`` and no file
   name is re-raised naming the output (:func:`naming_disk_full`); the staged sibling is removed
   as for any other failure.

``--overwrite`` means the same in every tool: replace an earlier output of this tool. A folder
that holds anything else is refused with or without it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

__all__ = ["OutputError", "OutputLock", "marker_path", "read_marker", "write_marker", "classify", "check_apart",
           "check_replaceable", "staged_dir", "replace_with", "incomplete_reason", "clear_stale_siblings",
           "write_file_staged", "inside", "only_entries", "parents_made", "make_parents",
           "remove_empty", "remove_tree", "ABSENT", "EMPTY", "OURS",
           "FOREIGN", "LOCK_SUFFIX", "DISK_FULL_ERRNOS", "naming_disk_full"]

#: what :func:`classify` returns
ABSENT, EMPTY, OURS, FOREIGN = "absent", "empty", "ours", "foreign"
LOCK_SUFFIX = ".hytrec-lock"
#: the errno values of a full disk or an exhausted quota
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class OutputError(ValueError):
    """An output that the tool will not write (exit status 2 in every tool): it is an input, it holds
    something the tool did not write, it is locked by another run, or it is a symbolic link."""


def _abs(path: str | Path) -> Path:
    """``path`` made absolute without resolving symbolic links (the last component stays itself)."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both already resolved)."""
    return path == folder or folder in path.parents


def marker_path(folder: Path, tool: str) -> Path:
    """The marker file of ``tool``'s output folder: ``FOLDER/.TOOL`` (e.g. ``.hytrec-prep``)."""
    return folder / f".{tool}"


def read_marker(folder: Path, tool: str) -> Optional[dict]:
    """The marker's JSON object when ``folder`` carries a marker written by ``tool`` (a regular file,
    not a link, holding a JSON object whose ``tool`` is ``tool``); None otherwise."""
    path = marker_path(folder, tool)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("tool") == tool else None


def write_marker(folder: Path, tool: str, state: str, **extra: object) -> None:
    """Write ``tool``'s marker into ``folder`` with ``state`` (``writing``, ``complete``, ...)."""
    doc = {"tool": tool, "state": state, **extra}
    tmp = folder / f".{tool}.tmp"
    tmp.write_text(json.dumps(doc, sort_keys=True) + "\n")
    os.replace(tmp, marker_path(folder, tool))


def incomplete_reason(folder: Path, tool: str) -> Optional[str]:
    """Why a reader should refuse ``folder``: its ``tool`` marker says the output is not complete
    (a run was interrupted, or shards are not merged yet); None when there is no such marker."""
    doc = read_marker(folder, tool)
    if doc is None or doc.get("state") == "complete":
        return None
    return (f"{folder}: an incomplete output of {tool} (state {doc.get('state')!r}: the run was interrupted "
            "or has not finished); run it again")


def classify(target: Path, recognise: Callable[[Path], bool]) -> str:
    """What ``target`` holds: :data:`ABSENT`, :data:`EMPTY` (an empty real folder), :data:`OURS`
    (``recognise(target)`` says the tool wrote it) or :data:`FOREIGN` (anything else, a symbolic
    link or a file included)."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return ABSENT
    if not stat.S_ISDIR(st.st_mode):
        return FOREIGN
    if not any(os.scandir(target)):
        return EMPTY
    return OURS if recognise(target) else FOREIGN


def only_entries(folder: Path, allowed: Iterable[str], dirs: Iterable[str] = ()) -> bool:
    """Whether ``folder`` holds nothing but ``allowed`` names, of which ``dirs`` are real folders
    (not links) and the rest regular files."""
    allowed, dirs = set(allowed), set(dirs)
    for entry in os.scandir(folder):
        if entry.name not in allowed:
            return False
        want_dir = entry.name in dirs
        if entry.is_symlink() or (entry.is_dir(follow_symlinks=False) != want_dir):
            return False
    return True


def check_replaceable(target: Path, tool: str, kind: str, overwrite: bool,
                      recognise: Callable[[Path], bool]) -> str:
    """Raise :class:`OutputError` unless ``tool`` may write ``target``: absent, an empty folder, or
    (with ``overwrite``) an earlier output of ``tool``. Returns :func:`classify`'s answer."""
    what = classify(target, recognise)
    if what == OURS and not overwrite:
        raise OutputError(f"{target}: output directory exists and is not empty: it holds an earlier {kind} "
                          "(use --overwrite to replace it)")
    if what == FOREIGN:
        if os.path.islink(target):
            raise OutputError(f"{target}: the output is a symbolic link; give the real folder")
        if not os.path.isdir(target):
            raise OutputError(f"{target}: exists and is not a directory")
        names = sorted(os.listdir(target))
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        if overwrite:
            raise OutputError(f"{target}: --overwrite only replaces a folder written by {tool} (an earlier {kind}), "
                              f"and {tool} did not write this one ({shown}); choose another folder")
        raise OutputError(f"{target}: output directory exists and is not empty, and {tool} did not write this one "
                          f"({shown}); choose another folder (--overwrite only replaces an earlier {kind})")
    return what


def check_apart(output: str | Path, inputs: Iterable[str | Path], option: str = "the output") -> None:
    """Raise :class:`OutputError` when ``output`` is one of ``inputs``, holds one, or lies inside an
    input folder (writing or replacing it would change an input)."""
    out = Path(output).resolve()
    for given in inputs:
        inp = Path(given).resolve()
        if inside(out, inp) or inside(inp, out):
            raise OutputError(f"{output}: {option} and the input {given} are the same or nested; "
                              "choose an output outside every input")


def make_parents(target: str | Path) -> list[Path]:
    """Make the missing folders above ``target``; returns them, deepest first."""
    above = _abs(target).parent
    made = [p for p in [above, *above.parents] if not os.path.lexists(p)]
    above.mkdir(parents=True, exist_ok=True)
    return made


def remove_empty(folders: Iterable[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is still empty: what a failed run made."""
    for p in folders:
        with contextlib.suppress(OSError):
            os.rmdir(p)


@contextlib.contextmanager
def parents_made(target: str | Path) -> Iterator[None]:
    """Make the folders above ``target`` that are missing; if the block fails, remove those of them
    that are still empty (a failed run leaves no trace)."""
    made = make_parents(target)
    try:
        yield
    except BaseException:
        remove_empty(made)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """``with OutputLock(target, tool):`` holds ``.NAME.hytrec-lock`` beside ``target`` (created
    with ``O_EXCL | O_NOFOLLOW``); raises :class:`OutputError` when another live run holds it."""

    def __init__(self, target: str | Path, tool: str) -> None:
        self.target = _abs(target)
        self.tool = tool
        self.path = self.target.parent / f".{self.target.name}{LOCK_SUFFIX}"
        self.token = {"tool": tool, "pid": os.getpid(), "host": socket.gethostname()}
        self.held = False

    def _create(self) -> bool:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.token) + "\n")
        return True

    def _holder(self) -> Optional[dict]:
        """The lock's content, or None when it is not a readable lock of ours (a link, garbage)."""
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode):
                return None
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and isinstance(doc.get("pid"), int) else None

    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lock (the folder above ``target`` must exist), waiting up to ``wait_s`` seconds
        for a live holder to let go (for locks held a moment only); else raise :class:`OutputError`."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._try_acquire()
            except OutputError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)

    def _try_acquire(self) -> None:
        if self._create():
            self.held = True
            return
        holder = self._holder()
        if holder is None:
            raise OutputError(f"{self.target}: {self.path} exists and is not a lock of a hytrec tool; "
                              "remove it if nothing is writing this output")
        stale = holder.get("host") == self.token["host"] and not _pid_alive(holder["pid"])
        if stale:
            print(f"{self.tool}: {self.target}: taking over the lock of process {holder['pid']}, which no "
                  "longer runs", file=sys.stderr)
            if self._holder() == holder:  # not a lock another run has just taken over
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            if self._create():
                self.held = True
                return
            holder = self._holder() or holder
        raise OutputError(f"{self.target}: another run ({holder.get('tool')} pid {holder.get('pid')} on "
                          f"{holder.get('host')}) is writing this output; wait for it to end, or remove "
                          f"{self.path} if it no longer runs")

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        if self.held and self._holder() == self.token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.held = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def naming_disk_full(path: str | Path) -> Iterator[None]:
    """Re-raise a full-disk :class:`OSError` of the block that names no file as one naming ``path``
    (a writer such as ``write()`` or a library often gives the errno alone)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS and exc.filename is None:
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
        raise


def _sibling(target: Path, tool: str, what: str) -> Path:
    return target.parent / f".{target.name}.{tool}-{what}-{os.getpid()}"


def remove_tree(path: Path) -> None:
    """Remove a folder the tool made (or a file, or a link: unlinked, never followed)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def clear_stale_siblings(target: Path, tool: str) -> None:
    """Remove the temporary siblings ``.NAME.TOOL-tmp-*`` of interrupted runs into ``target``
    (call while holding its lock): only folders whose marker is ``tool``'s and not complete."""
    target = _abs(target)
    prefix = f".{target.name}.{tool}-tmp-"
    if not target.parent.is_dir():
        return
    for entry in os.scandir(target.parent):
        path = Path(entry.path)
        if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
            continue
        if incomplete_reason(path, tool) is not None:
            print(f"{tool}: {target}: removing {path.name}, the unfinished output of an interrupted run",
                  file=sys.stderr)
            shutil.rmtree(path)


def replace_with(staged: Path, target: Path, tool: str) -> None:
    """Move the finished ``staged`` folder onto ``target``: an earlier output (already checked to be
    replaceable) is renamed aside, then removed once the new one is in place."""
    old = _sibling(target, tool, "old")
    had = os.path.lexists(target)
    if had:
        os.rename(target, old)
    try:
        os.rename(staged, target)
    except OSError:
        if had:
            os.rename(old, target)
        raise
    if had:
        remove_tree(old)


@contextlib.contextmanager
def staged_dir(target: str | Path, tool: str, finish: Optional[dict] = None) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``target`` (marker ``writing``) to write the output into;
    when the block ends without an exception the marker becomes ``complete`` (plus ``finish``) and
    the folder replaces ``target``; on an exception the sibling is removed and ``target`` is left as
    it was. The caller holds ``target``'s :class:`OutputLock` and has checked it is replaceable."""
    target = _abs(target)
    tmp = _sibling(target, tool, "tmp")
    remove_tree(tmp)  # a folder of an earlier process with this pid
    os.mkdir(tmp)
    try:
        with naming_disk_full(target):
            write_marker(tmp, tool, "writing")
            yield tmp
            write_marker(tmp, tool, "complete", **(finish or {}))
            replace_with(tmp, target, tool)
    except BaseException:
        remove_tree(tmp)
        raise


def write_file_staged(target: str | Path, tool: str, write: Callable[[Path], object]) -> None:
    """Write one file: ``write(tmp)`` fills a temporary sibling, which then replaces ``target``
    (so an interrupted run leaves the earlier file whole). Keeps ``target``'s extension on the
    temporary name (writers such as matplotlib choose the format by it)."""
    target = _abs(target)
    tmp = target.parent / f".{target.stem}.{tool}-tmp-{os.getpid()}{target.suffix}"
    try:
        with naming_disk_full(target):
            write(tmp)
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
