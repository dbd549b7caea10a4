"""Stop a rank whose local launcher is gone.

``torchx run -s local_cwd`` starts ``torchrun`` in a new session, and ``torchrun`` starts the ranks;
``torchx`` waits for the job and stops it on Ctrl-C or SIGTERM. After ``kill -9`` of the ``torchx``
process nothing stops them: ``torchrun`` and the ranks go on writing into the run directory, and a
rerun then shares it with them. :func:`stop_when_launcher_exits` closes that gap: in a rank of a
local torchx job it starts a daemon thread that ends the rank (one line on stderr, exit status
:data:`LAUNCHER_GONE_EXIT`) once the ``torchx`` process that launched it, or the ``torchrun``
between them, has exited. ``torchrun`` then sees a failed worker and ends too.

Only local torchx jobs are watched (``TORCHX_JOB_ID`` starts with ``local``): a local ``torchx run``
always waits for its job, so its exit while ranks run means it was killed. A plain ``torchrun``
started by hand (or under ``nohup``) and every cluster scheduler are left alone. Linux only
(``/proc``); elsewhere it does nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable, Optional

__all__ = ["LAUNCHER_GONE_EXIT", "parent_of", "stop_when_launcher_exits"]

#: exit status of a rank stopped because its launcher is gone (docs/launching.md)
LAUNCHER_GONE_EXIT = 1


def parent_of(pid: int) -> Optional[int]:
    """The parent pid of ``pid`` from ``/proc/PID/stat``, or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces; fields after it are plain
    rest = stat.rsplit(")", 1)[-1].split()
    try:
        return int(rest[1])
    except (IndexError, ValueError):
        return None


def stop_when_launcher_exits(prog: str, poll_s: float = 2.0,
                             exit_fn: Callable[[int], None] = os._exit) -> bool:
    """In a rank of a local torchx job, watch the launcher chain and exit when it breaks.

    Args:
        prog: the tool's name for the message (``hytrec-train``).
        poll_s: seconds between checks.
        exit_fn: called with :data:`LAUNCHER_GONE_EXIT` (``os._exit``: the rank's other threads and
            its process group are in an unknown state, so no cleanup runs).

    Returns:
        True when a watcher thread was started.
    """
    if not os.environ.get("TORCHX_JOB_ID", "").startswith("local") or not os.path.isdir("/proc"):
        return False
    runner = os.getppid()
    torchx = parent_of(runner)
    if torchx is None or torchx <= 1:
        return False

    def gone() -> Optional[str]:
        if os.getppid() != runner:
            return f"torchrun (pid {runner})"
        if parent_of(runner) != torchx:
            return f"torchx (pid {torchx})"
        return None

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            who = gone()
            if who is not None:
                rank = os.environ.get("RANK", "?")
                print(f"{prog}: rank {rank} stops: {who}, which launched this local job, has exited "
                      "(killed?)", file=sys.stderr, flush=True)
                exit_fn(LAUNCHER_GONE_EXIT)
                return

    threading.Thread(target=watch, name="hytrec-launcher-watch", daemon=True).start()
    return True
