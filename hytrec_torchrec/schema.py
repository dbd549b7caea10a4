"""The names the package agrees on, spelled once: ID tables, batch features, request keys.

A prepared dataset has one vocabulary per ID table plus ``user``; a batch's KeyedJaggedTensor has
one history feature per table and the target and negative items, which are features of the item
table (so scoring is tied to the input item embeddings); a serving request carries the tables'
raw IDs and the event times. Metric names come from the metric definitions themselves
(:func:`hytrec_torchrec.ranking.metrics.metric_names`). Imports nothing, so every layer may use it.

Adding an ID table here adds its vocabulary, its history feature, its embedding table and its
request key; the data preparation, the tower's ``features`` and the serving contract follow.
"""

from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["TABLES", "VOCABS", "TIMESTAMP", "HISTORY_KEYS", "TARGET_KEY", "NEGATIVE_KEY", "FEATURE_KEYS",
           "TABLE_FEATURES", "REQUEST_KEYS", "history_key"]

#: the ID tables, in the order of the batch features, the embedding tables and the prepared rows
TABLES: Tuple[str, ...] = ("item", "attribution", "category", "behavior")
#: the vocabularies of a prepared dataset: every table, and the users
VOCABS: Tuple[str, ...] = TABLES + ("user",)
#: event times (seconds) in prepared rows and serving requests
TIMESTAMP = "timestamp"


def history_key(table: str) -> str:
    """The batch feature holding a history's IDs of ``table``."""
    return f"history_{table}"


HISTORY_KEYS: Tuple[str, ...] = tuple(history_key(t) for t in TABLES)
TARGET_KEY = "target_item"
NEGATIVE_KEY = "negative_item"
#: the KeyedJaggedTensor keys of a training/evaluation batch, in order
FEATURE_KEYS: Tuple[str, ...] = HISTORY_KEYS + (TARGET_KEY, NEGATIVE_KEY)
#: embedding table -> the batch features it embeds
TABLE_FEATURES: Dict[str, Tuple[str, ...]] = {
    t: (history_key(t),) + ((TARGET_KEY, NEGATIVE_KEY) if t == "item" else ()) for t in TABLES
}
#: the keys of a serving request's ``values``
REQUEST_KEYS: Tuple[str, ...] = TABLES + (TIMESTAMP,)
