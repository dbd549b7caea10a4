"""Input formats of ``hytrec-prep``, by name: the registry every way of reading INPUT goes through.

File formats stream from disk in batches (:mod:`.readers`): ``parquet``, ``csv``, or ``auto`` (by
file extension). Dataset formats load a public dataset's folder into in-memory tables already in
the raw schema (docs/data_format.md): ``movielens`` (GroupLens ``ratings.dat``/``movies.dat`` or
RecBole ``*.inter``/``*.item``) and ``completejourney`` (``transactions.parquet`` +
``products.parquet``). Either is chosen with ``format=NAME`` or an INPUT of the form ``NAME:DIR``.

A new dataset is a module with a loader ``(folder) -> list[Source]`` and one line in
:data:`DATASETS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Tuple

from hytrec_torchrec.config import ConfigError

from .completejourney import FILES as CJ_FILES
from .completejourney import load_completejourney
from .movielens import movielens_sources
from .readers import Source

__all__ = ["DATASETS", "FILE_FORMATS", "formats", "split_format"]

#: formats read from files by :mod:`.readers`
FILE_FORMATS: Tuple[str, ...] = ("auto", "parquet", "csv")


def completejourney_sources(directory: str | Path) -> list[Source]:
    """Complete Journey's transactions (``DIR/transactions.parquet`` + ``products.parquet``)."""
    return [Source(name=str(Path(directory) / CJ_FILES[0]), kind="table", table=load_completejourney(directory))]


#: dataset formats: name -> loader of a dataset folder into raw-schema sources
DATASETS: Dict[str, Callable[[str], list[Source]]] = {
    "movielens": movielens_sources,
    "completejourney": completejourney_sources,
}


def formats() -> Tuple[str, ...]:
    """Every value ``format`` may take."""
    return FILE_FORMATS + tuple(DATASETS)


def split_format(input_spec: str, fmt: str) -> Tuple[str, str]:
    """``(path, format)`` of an INPUT: ``NAME:DIR`` names a dataset format (it wins over
    ``format``); anything else is a path read as ``fmt``. Raises ``ConfigError`` for an unknown
    ``fmt``."""
    name, sep, rest = input_spec.partition(":")
    if sep and name in DATASETS:
        return rest, name
    if fmt not in formats():
        raise ConfigError(f"format: {fmt!r} is not a known format (one of {', '.join(formats())})")
    return input_spec, fmt
