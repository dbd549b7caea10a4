"""``hytrec-torchrun``: ``torchrun`` whose failure is one line and the failed rank's exit status.

The TorchX components (``launch/components.py``) start their ranks through this instead of
``torchrun`` (same arguments). When a rank fails, plain ``torchrun`` raises ``ChildFailedError``
and prints a 60-line traceback and summary after the rank's own one-line error, and exits with
status 1 whatever the rank's was. This prints one line naming the first failed rank and its
status, and exits with that status (2 = bad config or arguments, 3 = bad input data or a damaged
checkpoint; a rank killed by a signal gives 1), so ``torchx run`` reports the tools' documented
exit codes. Everything else is ``torchrun``'s own behaviour.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

__all__ = ["main", "exit_status"]


def exit_status(rank_exitcode: int) -> int:
    """The status to exit with for a failed rank's exit code (negative = killed by a signal)."""
    return rank_exitcode if 0 < rank_exitcode < 128 else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(list(argv) if argv is not None else None)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()  # the root cause: the earliest failure
        print(f"hytrec-torchrun: rank {rank} (local rank {failure.local_rank}) exited with status "
              f"{failure.exitcode}; its own message is above", file=sys.stderr, flush=True)
        return exit_status(failure.exitcode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
