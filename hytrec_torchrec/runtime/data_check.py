"""Data meets model in one place: does a prepared dataset fit a checkpoint?

Every tool that brings a dataset together with a training checkpoint calls :func:`check_vocab`
before it loads any weights: a resume (``hytrec-train`` with ``train.resume``), an evaluation
(``hytrec-eval --checkpoint``) and an export (``hytrec-export``, its vocabularies from
``--data`` or the checkpoint's ``data.path``). Equal table sizes are not enough: a dataset
prepared from other raw IDs can have the same sizes and map every ID to another row, so the
vocabularies are compared too, by the SHA-256 fingerprints the checkpoint stores
(``vocab_fingerprints`` in ``train_state.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pyarrow.parquet as pq

from hytrec_torchrec.data.reader import read_meta, vocab_fingerprint
from hytrec_torchrec.schema import TABLES

__all__ = ["VocabMismatchError", "check_vocab"]


class VocabMismatchError(ValueError):
    """Checkpoint and dataset vocabularies differ (message names both)."""


def _check_sizes(ckpt_state: Dict[str, Any], data_path: str | Path, ckpt_path: str | Path) -> None:
    """Raise :class:`VocabMismatchError` unless every table has the checkpoint's size."""
    meta = read_meta(data_path)
    have = {k: int(v) for k, v in meta.vocab_sizes.items()}
    want = {k: int(v) for k, v in ckpt_state.get("vocab_sizes", {}).items()}
    bad = [t for t in TABLES if want.get(t) != have.get(t)]
    if bad:
        raise VocabMismatchError(
            f"vocabulary mismatch: checkpoint {ckpt_path} was trained with table sizes "
            f"{ {t: want.get(t) for t in TABLES} } but dataset {data_path} (meta.json) has "
            f"{ {t: have.get(t) for t in TABLES} } (first difference: {bad[0]}); use "
            "a dataset prepared with the training vocabularies (hytrec-prep vocab_from=...)")


def _check_fingerprints(stored: Dict[str, str], data_path: str | Path, ckpt_path: str | Path) -> None:
    """Raise :class:`VocabMismatchError` unless every stored fingerprint matches the dataset's."""
    for t in TABLES:
        if t in stored and vocab_fingerprint(data_path, t) != stored[t]:
            raise VocabMismatchError(
                f"vocabulary mismatch: the {t} vocabulary of dataset {data_path} differs from the one "
                f"checkpoint {ckpt_path} was trained with (same size, different IDs; fingerprint "
                "stored in the checkpoint)")


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
    _check_sizes(ckpt_state, data_path, ckpt_path)
    stored = ckpt_state.get("vocab_fingerprints")
    if stored:
        _check_fingerprints(stored, data_path, ckpt_path)
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
