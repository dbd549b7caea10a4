"""File helpers that preparation, training and serving share (and so none of them owns).

:func:`file_sha256` hashes a file in 1 MiB blocks (checkpoint manifests, exported model cards);
:func:`remove_entries` removes named entries of a folder, a directory tree or a file each, for the
tools that clear only what they wrote (``hytrec-train --overwrite``; hytrec-prep, hytrec-eval and
hytrec-compare write through :mod:`hytrec_torchrec.outputs`);
:func:`unwritable_dir` says why an output folder cannot be made (``hytrec-export``, ``hytrec-eval``).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Iterable, Optional

__all__ = ["file_sha256", "remove_entries", "unwritable_dir"]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_entries(folder: Path, names: Iterable[str]) -> None:
    """Remove ``folder/name`` for each name: a directory with its contents, anything else (a file,
    a symbolic link, even one to a directory) by unlinking it. The caller has checked the names."""
    for name in sorted(names):
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()


def unwritable_dir(path: str | Path) -> Optional[str]:
    """Why the folder ``path`` cannot be made or written into: it is a file (``exists and is not a
    directory``), or the nearest existing path above it is a file; None otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return "exists and is not a directory"
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    return None if above.is_dir() else f"{above} is a file, not a directory"
