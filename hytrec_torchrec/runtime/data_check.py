"""Data meets model in one place: does a prepared dataset fit a model's tables?

:func:`check_tables` is the one check: the dataset's table sizes (``meta.json``) and vocabulary
fingerprints (SHA-256 of every ``raw → index`` pair, :func:`~hytrec_torchrec.data.reader.vocab_fingerprint`)
must be the model's. Equal sizes are not enough: a dataset prepared from other raw IDs can have
the same sizes and map every ID to another row. Every tool that brings a dataset together with a
model runs it before it loads any weights:

* a checkpoint, through :func:`check_vocab` (the fingerprints stored in ``train_state.json``):
  a resume (``hytrec-train`` with ``train.resume``), an evaluation (``hytrec-eval --checkpoint``)
  and an export (``hytrec-export``, its vocabularies from ``--data`` or the checkpoint's
  ``data.path``);
* an exported model served on a dataset (``hytrec-eval --model M --data D``), with the
  fingerprints of the export's ``vocab/<table>.json`` (:func:`pairs_fingerprint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import pyarrow.parquet as pq

from hytrec_torchrec.data.reader import pairs_fingerprint, read_meta, vocab_fingerprint
from hytrec_torchrec.schema import TABLES

__all__ = ["VocabMismatchError", "check_tables", "check_vocab", "pairs_fingerprint"]


class VocabMismatchError(ValueError):
    """Checkpoint and dataset vocabularies differ (message names both)."""


def check_tables(model: str, sizes: Mapping[str, Optional[int]], fingerprints: Mapping[str, str],
                 data_path: str | Path, source: str) -> None:
    """Raise :class:`VocabMismatchError` unless the dataset has the model's tables.

    Args:
        model: what the tables belong to, for messages (``checkpoint RUN/checkpoints/step_N``).
        sizes: table → rows the model has (None: unknown, a mismatch); each must equal the
            dataset's ``meta.json``. Only these tables are compared.
        fingerprints: table → SHA-256 of the vocabulary the model was trained with; each must
            equal the dataset's (tables left out are not compared).
        data_path: the prepared dataset.
        source: where ``fingerprints`` come from, for messages.

    Raises:
        VocabMismatchError: naming the model, the dataset and the first difference.
        DatasetFormatError: the dataset has no readable ``meta.json``.
    """
    have = {k: int(v) for k, v in read_meta(data_path).vocab_sizes.items()}
    tables = [t for t in TABLES if t in sizes]
    bad = [t for t in tables if sizes.get(t) != have.get(t)]
    if bad:
        raise VocabMismatchError(
            f"vocabulary mismatch: {model} was trained with table sizes "
            f"{ {t: sizes.get(t) for t in tables} } but dataset {data_path} (meta.json) has "
            f"{ {t: have.get(t) for t in tables} } (first difference: {bad[0]}); use "
            "a dataset prepared with the training vocabularies (hytrec-prep vocab_from=...)")
    for t in TABLES:
        if t in fingerprints and vocab_fingerprint(data_path, t) != fingerprints[t]:
            raise VocabMismatchError(
                f"vocabulary mismatch: the {t} vocabulary of dataset {data_path} differs from the one "
                f"{model} was trained with (same size, different IDs; fingerprint {source})")


def _check_against_training_data(train_path: str, data_path: str | Path) -> None:
    """Raise :class:`VocabMismatchError` unless the item vocabularies of both datasets are equal."""
    a, b = Path(train_path).resolve(), Path(data_path).resolve()
    if a == b:
        return
    ra = pq.read_table(a / "vocab" / "item.parquet", columns=["raw", "index"])
    rb = pq.read_table(b / "vocab" / "item.parquet", columns=["raw", "index"])
    if not ra.equals(rb):
        raise VocabMismatchError(
            f"vocabulary mismatch: item vocabulary of dataset {data_path} differs from that "
            f"of the checkpoint's training dataset {train_path} (same size, different IDs)")


def check_vocab(ckpt_state: Dict[str, Any], data_path: str | Path, ckpt_path: str | Path,
                allow_unchecked: bool = False) -> Dict[str, Any]:
    """Raise :class:`VocabMismatchError` unless the dataset fits the checkpoint.

    Table sizes (item, attribution, category, behavior) must be equal, and so must the ID
    vocabularies (same sizes with a different ID order would silently use the wrong rows): by the
    fingerprints the checkpoint stores (``vocab_fingerprints``, written since they existed), else
    against the checkpoint's training dataset when it is still readable. When neither is possible
    the pair is refused unless ``allow_unchecked`` (``hytrec-eval --allow-unchecked-vocab``), and
    the result then says so.

    Args:
        ckpt_state: the checkpoint's ``train_state.json``.
        data_path: the prepared dataset.
        ckpt_path: the checkpoint directory (for messages).
        allow_unchecked: accept a vocabulary that cannot be checked.

    Returns:
        ``{"sizes_checked": True, "item_vocab_checked": bool, "how": "fingerprint" |
        "training data" | "unchecked"}``.

    Raises:
        VocabMismatchError: naming the checkpoint, the dataset and the first difference.
        DatasetFormatError: the dataset has no readable ``meta.json``.
    """
    saved = ckpt_state.get("vocab_sizes", {})
    sizes = {t: (int(saved[t]) if t in saved else None) for t in TABLES}
    stored = ckpt_state.get("vocab_fingerprints") or {}
    check_tables(f"checkpoint {ckpt_path}", sizes, stored, data_path, source="stored in the checkpoint")
    if stored:
        return {"sizes_checked": True, "item_vocab_checked": True, "how": "fingerprint"}
    train_path = ckpt_state.get("data_path")
    if train_path and Path(train_path, "vocab", "item.parquet").is_file():
        _check_against_training_data(train_path, data_path)
        return {"sizes_checked": True, "item_vocab_checked": True, "how": "training data"}
    if not allow_unchecked:
        raise VocabMismatchError(
            f"cannot check the ID vocabulary: checkpoint {ckpt_path} stores no vocabulary fingerprint and "
            f"its training dataset {train_path} is not readable; use that dataset, or (hytrec-eval) pass "
            "--allow-unchecked-vocab if you know the IDs match (the report will say they were not checked)")
    return {"sizes_checked": True, "item_vocab_checked": False, "how": "unchecked"}
