"""What every command-line tool shares: one-line errors, plain ``--help`` text.

Every ``hytrec-*`` entry point reports an expected failure (bad config, bad input, damaged
checkpoint) as one line ``PROG: message`` with its documented exit status, and any other exception
as one line ``PROG: internal error: Type: message`` with exit status 1. The traceback is printed
only with ``--debug`` or ``HYTREC_DEBUG=1`` (printed before the line for an expected failure,
which keeps its exit status; an unexpected exception then propagates as usual). :func:`plain`
turns a module docstring (reStructuredText roles and literals) into ``--help`` text.

Two failures are the same in every tool (:func:`entry_point` wraps each ``main``):

- Ctrl-C (SIGINT, ``KeyboardInterrupt``): one line ``PROG: interrupted ...`` and exit status
  :data:`EXIT_INTERRUPTED` (130, the shell's 128 + SIGINT); the staged output of the run is removed
  on the way out (hytrec_torchrec/outputs.py), an earlier output stays whole.
- A full disk or quota (``ENOSPC``, ``EDQUOT``) anywhere in the exception's chain: one line naming
  the path and exit status :data:`EXIT_DISK_FULL` (4), whatever status the tool's handler chose.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import traceback
import warnings
from typing import Callable, Iterator, Optional, Sequence

from hytrec_torchrec.outputs import DISK_FULL_ERRNOS

__all__ = ["DEBUG_ENV", "debug_enabled", "enable_debug", "report", "internal_error", "plain", "require_stack",
           "first_line", "quiet_library_noise", "entry_point", "disk_full", "EXIT_INTERRUPTED", "EXIT_DISK_FULL",
           "DISK_FULL_ERRNOS", "interrupted", "user_path"]

#: exit status after Ctrl-C (SIGINT): 128 + 2, what a shell reports for a process killed by it
EXIT_INTERRUPTED = 130
#: exit status when an output could not be written for lack of space or quota
EXIT_DISK_FULL = 4

DEBUG_ENV = "HYTREC_DEBUG"


def enable_debug() -> None:
    """``--debug``: tracebacks for every error in this process and the ranks it starts."""
    os.environ[DEBUG_ENV] = "1"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def first_line(exc: BaseException) -> str:
    """The first line of the exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the per-rank failures a torch.distributed.checkpoint
    ``CheckpointException`` wraps (its ``failures`` mapping), each once."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        failures = getattr(e, "failures", None)
        wrapped = list(failures.values()) if isinstance(failures, dict) else []
        todo += [e.__cause__, e.__context__, *[w for w in wrapped if isinstance(w, BaseException)]]


def disk_full(exc: BaseException) -> Optional[OSError]:
    """The ``ENOSPC``/``EDQUOT`` :class:`OSError` in ``exc``'s chain, or None."""
    return next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS), None)


def _report_disk_full(prog: str, exc: BaseException, full: OSError) -> int:
    where = full.filename if full.filename is not None else "an output"
    return report(prog, exc, EXIT_DISK_FULL, prefix="", line=(
        f"{where}: {os.strerror(full.errno)} (disk full or over quota); the unfinished output was removed "
        "and an earlier one left as it was: free some space and run again"))


def report(prog: str, exc: BaseException, code: int, prefix: str = "", line: Optional[str] = None) -> int:
    """Print ``PROG: [prefix]first line of exc`` (or ``line``) to stderr (after its traceback under
    debug) and return ``code``. A full disk anywhere in ``exc``'s chain is reported as such, with
    :data:`EXIT_DISK_FULL`, whatever ``code`` the caller chose."""
    full = disk_full(exc) if line is None else None
    if full is not None:
        return _report_disk_full(prog, exc, full)
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
    print(f"{prog}: {prefix}{first_line(exc) if line is None else line}", file=sys.stderr, flush=True)
    return code


def interrupted(prog: str, exc: KeyboardInterrupt) -> int:
    """Ctrl-C: one line (the traceback only under debug) and :data:`EXIT_INTERRUPTED`."""
    return report(prog, exc, EXIT_INTERRUPTED, line="interrupted (Ctrl-C); the unfinished output was removed "
                                                    "and an earlier one left as it was")


Main = Callable[[Optional[Sequence[str]]], int]


def entry_point(prog: str) -> Callable[[Main], Main]:
    """Decorate a tool's ``main(argv)``: Ctrl-C anywhere in it is :func:`interrupted`, and a full
    disk that escapes the tool's own handlers is one line and :data:`EXIT_DISK_FULL` (the tool's
    ``finally`` blocks and staged outputs have cleaned up by then)."""
    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: Optional[Sequence[str]] = None) -> int:
            try:
                return main(argv)
            except KeyboardInterrupt as exc:
                return interrupted(prog, exc)
            except OSError as exc:
                full = disk_full(exc)
                if full is None:
                    raise
                return _report_disk_full(prog, exc, full)
        return run
    return wrap


#: packages that scripts/setup.sh installs outside ``pip install .`` (fbgemm-gpu must be the CPU or
#: CUDA build that matches torch, so it cannot be an ordinary dependency)
SETUP_PACKAGES = ("torchrec", "fbgemm_gpu")


def internal_error(prog: str, exc: BaseException) -> int:
    """An unexpected exception: re-raised under debug, else one line and exit status 1. A missing
    torchrec / fbgemm-gpu is exit status 2 with a pointer to the setup script; a full disk is
    :data:`EXIT_DISK_FULL`."""
    full = disk_full(exc)
    if full is not None:
        return _report_disk_full(prog, exc, full)
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in SETUP_PACKAGES:
        return report(prog, exc, 2, prefix="the pinned stack is not installed (run scripts/setup.sh, or see "
                                          "docs/install.md: pip install . leaves out torchrec and fbgemm-gpu): ")
    if debug_enabled():
        raise exc
    named = f"{type(exc).__name__}: " if str(exc).strip() else ""  # an empty message prints the type alone
    return report(prog, exc, 1, prefix=f"internal error: {named}")


def require_stack(prog: str) -> int:
    """0 when torchrec and fbgemm-gpu import; else the one-line pointer to scripts/setup.sh and 2.
    Called by the tools that need them, after argument parsing (``--help`` stays fast)."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except ModuleNotFoundError as exc:
        return internal_error(prog, exc)
    return 0


_ROLE = re.compile(r":[a-z]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")


def user_path(text: str) -> str:
    """A path argument with a leading ``~`` expanded (``--out=~/eval`` is not expanded by the
    shell); every tool's path options use it as their argparse ``type``."""
    return os.path.expanduser(text)


def plain(doc: str | None) -> str:
    """``doc`` without reStructuredText markup: ``:func:`~a.b.f``` → ``f``, ````x```` → ``x``."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1), doc or "")
    return text.replace("``", "")


def quiet_library_noise() -> None:
    """Keep TorchRec/TorchScript deprecation and planner chatter out of CLI output.

    They are documented in docs/architecture.md ("Known warnings"); set ``PYTHONWARNINGS=default``
    and ``HYTREC_LOG=INFO`` to see them.
    """
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torchrec")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.distributed")
    level = os.environ.get("HYTREC_LOG", "WARNING").upper()
    for name in ("torchrec", "torch.distributed", "torch.fx", "fbgemm_gpu"):
        logging.getLogger(name).setLevel(getattr(logging, level, logging.WARNING))
