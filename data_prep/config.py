"""The ``PrepConfig`` dataclass: every knob of ``hytrec-prep``, validated on load.

Loaded with :func:`hytrec_torchrec.config.load_config` from a YAML file (``configs/prep/*.yaml``)
plus ``key=value`` overrides; unknown keys and bad values raise ``ConfigError`` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hytrec_torchrec.config import ConfigError, check_choice, check_range, path_field

__all__ = ["ColumnMap", "Filters", "PrepConfig", "RAW_COLUMNS", "REQUIRED_COLUMNS"]

#: canonical raw-schema column names (docs/design.md §3.1)
RAW_COLUMNS = ("user_id", "item_id", "timestamp", "behavior", "attribution_id", "category_id")
REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")


@dataclass
class ColumnMap:
    """Name of each raw-schema column in the input files (``null`` = the column is absent)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    behavior: Optional[str] = "behavior"
    attribution_id: Optional[str] = "attribution_id"
    category_id: Optional[str] = "category_id"

    def validate(self) -> None:
        for name in REQUIRED_COLUMNS:
            if not getattr(self, name):
                raise ConfigError(f"{name}: a required column needs a non-empty name")


@dataclass
class Filters:
    """The filters of docs/design.md §3.2, applied in this order, each counted in ``meta.json``."""

    #: drop repeated (user, item, timestamp, behavior) events, keeping the first in input order
    drop_duplicates: bool = True
    #: scalper accounts: at least ``scalper_min_events`` events and a pay share <= ``scalper_max_pay_ratio``
    #: (only applicable when the input has a behaviour column; otherwise reported as not applicable)
    scalper_min_events: Optional[int] = 5000
    scalper_max_pay_ratio: float = 0.001
    #: users whose last event is more than this many days before the dataset end (null = off)
    inactive_days: Optional[float] = None
    #: cold users: fewer than this many events after the filters above
    min_user_events: int = 5
    #: keep only the most recent N events of a user (null = keep everything); counted, not silent
    max_user_events: Optional[int] = None

    def validate(self) -> None:
        if self.scalper_min_events is not None:
            check_range("scalper_min_events", self.scalper_min_events, 1)
        check_range("scalper_max_pay_ratio", self.scalper_max_pay_ratio, 0.0, 1.0)
        if self.inactive_days is not None:
            check_range("inactive_days", self.inactive_days, 0.0, lo_open=True)
        check_range("min_user_events", self.min_user_events, 1)
        if self.max_user_events is not None:
            check_range("max_user_events", self.max_user_events, 1)


@dataclass
class PrepConfig:
    """Configuration of one ``hytrec-prep`` run."""

    #: input format: ``auto`` (by file extension), ``parquet``, ``csv``, or a dataset format
    #: (``movielens``, ``completejourney``): data_prep/sources.py, checked when the input is read
    format: str = "auto"
    columns: ColumnMap = field(default_factory=ColumnMap)
    #: CSV only: field delimiter (one character)
    csv_delimiter: str = ","
    #: string timestamps: ``null`` = integer (or float) seconds; otherwise a strptime format
    timestamp_format: Optional[str] = None
    #: unit of integer and float timestamps (and of integer strings): ``s``, ``ms``, ``us`` or ``ns``
    #: since 1970; converted to seconds (typed Parquet timestamps carry their own unit)
    timestamp_unit: str = "s"
    #: plausible event times, seconds since 1970: a time before ``min_time`` (default 1990-01-01)
    #: or more than ``max_future_s`` after the moment prep runs is a bad row (``on_bad_rows``), so
    #: one millisecond value among seconds cannot move the dataset's end (and with it
    #: ``filters.inactive_days``). ``min_time: 0`` accepts relative clocks that start at 0.
    min_time: int = 631_152_000
    max_future_s: int = 86_400
    #: what to do with a row with a null ID, a bad or a negative timestamp: ``error`` stops with the
    #: file, row and column; ``skip`` drops it and counts it under ``handling`` in meta.json
    on_bad_rows: str = "error"
    filters: Filters = field(default_factory=Filters)
    #: memory budget of the whole process in MiB; decides the number of hash partitions
    memory_budget_mb: int = 2048
    #: number of hash partitions (= output part files); 0 = derived from the budget
    num_partitions: int = 0
    #: rows per input record batch; 0 = derived from the budget
    batch_rows: int = 0
    #: re-use the item/attribution/category/behavior vocabularies of this prepared directory
    #: (IDs not in them map to the unknown bucket, index 1, and are counted); users are always new
    vocab_from: Optional[str] = path_field(None)
    #: Parquet compression of the output part files
    compression: str = "lz4"
    #: where spill files go (default: inside the unfinished output; DIR: a fresh folder of the run
    #: under DIR); removed at the end
    spill_dir: Optional[str] = path_field(None)

    def validate(self) -> None:
        check_choice("on_bad_rows", self.on_bad_rows, ("error", "skip"))
        check_choice("timestamp_unit", self.timestamp_unit, ("s", "ms", "us", "ns"))
        check_range("min_time", self.min_time, 0)
        check_range("max_future_s", self.max_future_s, 0)
        check_choice("compression", self.compression, ("zstd", "snappy", "gzip", "lz4", "none"))
        if len(self.csv_delimiter) != 1:
            raise ConfigError(f"csv_delimiter: {self.csv_delimiter!r} must be one character")
        check_range("memory_budget_mb", self.memory_budget_mb, 1)
        check_range("num_partitions", self.num_partitions, 0, 100_000)
        check_range("batch_rows", self.batch_rows, 0)
