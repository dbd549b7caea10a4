"""Checks of an exported model's card and vocabulary files before ``hytrec-eval --model`` or
``examples/serve.py`` use them.

``model_card.json`` (embedded in ``model.pt``) and ``vocab/<table>.json`` are JSON written by
``hytrec-export`` (docs/export.md); an edited or foreign export could hold any JSON there. Every
field the evaluation or the serving example reads is checked here by type and range, so a bad one
is a one-line :class:`ModelCardError` naming the field instead of an internal error deep in the
evaluation or a request.

This module imports the standard library only and nothing of the package: ``examples/serve.py``
(torch only, no hytrec_torchrec installed) loads this very file by its path.
"""

from __future__ import annotations

import reprlib
from pathlib import PurePosixPath
from typing import Any, Dict

__all__ = ["CARD_FORMAT", "ID_SPACES", "MAX_TABLE_ROWS", "ModelCardError", "check_model_card",
           "check_vocab_file"]

#: ``format`` and ``format_version`` of the cards this version reads
CARD_FORMAT = ("hytrec-serving", 1)
#: how a table's IDs reach the model (``serving/idmap.py``)
ID_SPACES = ("raw_int64", "index")
#: the largest table a card may declare (rows), as for checkpoints
MAX_TABLE_ROWS = 2**36
_STORAGE = ("float32", "int8_rowwise")


class ModelCardError(ValueError):
    """A model card or exported vocabulary field of the wrong type or out of range."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 8, 8, 60, 60


def show_value(value: Any) -> str:
    """A value for an error message, shortened (a huge list or string is never formatted whole)."""
    return _SHORT.repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _need(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ModelCardError(f"{key}: expected {expected}, got {show_value(value)}")


def _mapping(parent: Dict[str, Any], key: str, where: str) -> Dict[str, Any]:
    value = parent.get(key)
    _need(isinstance(value, dict), f"{where}{key}", "a mapping", value)
    return value


def _check_value_spec(table: str, spec: Any) -> None:
    key = f"input_contract.values.{table}"
    _need(isinstance(spec, dict), key, "a mapping", spec)
    _need(isinstance(spec.get("required", False), bool), f"{key}.required", "true/false", spec.get("required"))
    if table == "timestamp" or not spec.get("required"):
        return
    _need(spec.get("id_space") in ID_SPACES, f"{key}.id_space", f"one of {list(ID_SPACES)}", spec.get("id_space"))
    vocab_file = spec.get("vocab_file", f"vocab/{table}.json")
    _need(isinstance(vocab_file, str) and _inside_export(vocab_file), f"{key}.vocab_file",
          "a relative path inside the export folder", vocab_file)
    rows = spec.get("table_rows")
    _need(_is_int(rows) and 2 <= rows <= MAX_TABLE_ROWS, f"{key}.table_rows",
          f"an integer in 2..{MAX_TABLE_ROWS}", rows)


def _inside_export(path: str) -> bool:
    """Whether ``path`` is relative and stays inside the export folder (no ``..``)."""
    parts = PurePosixPath(path).parts
    return bool(parts) and not PurePosixPath(path).is_absolute() and ".." not in parts and "\\" not in path


def check_model_card(card: Any) -> None:
    """Check the fields of a model card that ``hytrec-eval --model`` reads.

    ``format``/``format_version`` (:data:`CARD_FORMAT`), ``config`` (a mapping; its ``model`` and
    ``data`` sections mappings too, rebuilt by the typed config loader later), ``input_contract.values``
    (per table: ``required`` true/false; for a required table ``id_space`` in :data:`ID_SPACES`,
    ``table_rows`` in 2..:data:`MAX_TABLE_ROWS` and ``vocab_file``, when given, a relative path
    inside the export), ``checkpoint.step`` (an integer >= 0 or
    null) and ``tables.storage`` (``float32`` or ``int8_rowwise``).

    Raises:
        ModelCardError: naming the first bad field.
    """
    _need(isinstance(card, dict), "model card", "a JSON object", card)
    fmt = (card.get("format"), card.get("format_version"))
    _need(fmt == CARD_FORMAT and _is_int(fmt[1]), "format", f"{CARD_FORMAT[0]!r} version {CARD_FORMAT[1]}", fmt)
    config = _mapping(card, "config", "")
    for section in ("model", "data"):
        if section in config:
            _mapping(config, section, "config.")
    values = _mapping(_mapping(card, "input_contract", ""), "values", "input_contract.")
    for table, spec in values.items():
        _check_value_spec(str(table), spec)
    step = card.get("checkpoint", {}).get("step") if isinstance(card.get("checkpoint"), dict) else None
    _need(step is None or (_is_int(step) and step >= 0), "checkpoint.step", "an integer >= 0", step)
    storage = card.get("tables", {}).get("storage") if isinstance(card.get("tables"), dict) else None
    _need(storage in _STORAGE, "tables.storage", f"one of {list(_STORAGE)}", storage)


def check_vocab_file(doc: Any, table: str) -> None:
    """Check an exported ``vocab/<table>.json``: ``table_rows`` in 2..:data:`MAX_TABLE_ROWS`, and
    ``raw`` (strings) and ``index`` (integers in 2..table_rows-1) lists of one length.

    Raises:
        ModelCardError: naming the first bad field.
    """
    _need(isinstance(doc, dict), f"vocab/{table}.json", "a JSON object", doc)
    rows = doc.get("table_rows")
    _need(_is_int(rows) and 2 <= rows <= MAX_TABLE_ROWS, "table_rows", f"an integer in 2..{MAX_TABLE_ROWS}", rows)
    raw, index = doc.get("raw"), doc.get("index")
    _need(isinstance(raw, list) and all(isinstance(r, str) for r in raw), "raw", "a list of strings", raw)
    _need(isinstance(index, list) and len(index) == len(raw), "index", f"a list of {len(raw)} integers", index)
    _need(all(_is_int(i) and 2 <= i < rows for i in index), "index", f"integers in 2..{rows - 1}", index)
