"""The one exception type of ``data_prep``: bad input, with the file, row and column named."""

from __future__ import annotations

__all__ = ["PrepInputError", "bad_row"]


class PrepInputError(ValueError):
    """Malformed input. The message names the file and, where it applies, the row and column."""


def bad_row(path: str, row: int, column: str, problem: str, value: object, csv: bool) -> PrepInputError:
    """Build the error for one bad row.

    Args:
        path: input file.
        row: 1-based data row within the file (the header is not counted).
        column: the column name as it appears in the file.
        problem: what is wrong, e.g. ``"null ID"``.
        value: the offending value.
        csv: add the CSV line number (row + 1, for the header line).
    """
    where = f"row {row}" + (f" (line {row + 1})" if csv else "")
    return PrepInputError(f"{path}: {where}, column {column!r}: {problem} (value {value!r})")
