"""What every command-line tool shares: one-line errors, plain ``--help`` text.

Every ``hytrec-*`` entry point reports an expected failure (bad config, bad input, damaged
checkpoint) as one line ``PROG: message`` with its documented exit status, and any other exception
as one line ``PROG: internal error: Type: message`` with exit status 1. The traceback is printed
only with ``--debug`` or ``HYTREC_DEBUG=1`` (printed before the line for an expected failure,
which keeps its exit status; an unexpected exception then propagates as usual). :func:`plain`
turns a module docstring (reStructuredText roles and literals) into ``--help`` text.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import warnings

__all__ = ["DEBUG_ENV", "debug_enabled", "enable_debug", "report", "internal_error", "plain", "require_stack",
           "first_line", "quiet_library_noise"]

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


def report(prog: str, exc: BaseException, code: int, prefix: str = "") -> int:
    """Print ``PROG: [prefix]first line of exc`` to stderr (after its traceback under debug) and
    return ``code``."""
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
    print(f"{prog}: {prefix}{first_line(exc)}", file=sys.stderr, flush=True)
    return code


#: packages that scripts/setup.sh installs outside ``pip install .`` (fbgemm-gpu must be the CPU or
#: CUDA build that matches torch, so it cannot be an ordinary dependency)
SETUP_PACKAGES = ("torchrec", "fbgemm_gpu")


def internal_error(prog: str, exc: BaseException) -> int:
    """An unexpected exception: re-raised under debug, else one line and exit status 1. A missing
    torchrec / fbgemm-gpu is exit status 2 with a pointer to the setup script."""
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in SETUP_PACKAGES:
        return report(prog, exc, 2, prefix="the pinned stack is not installed (run scripts/setup.sh, or see "
                                          "README 'Install': pip install . leaves out torchrec and fbgemm-gpu): ")
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
