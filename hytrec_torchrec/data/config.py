"""Loader configuration: which prepared directory, which split, how examples and batches are made.

See ``docs/data_loader.md`` for the meaning of every field and the exact example/split rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from hytrec_torchrec.config import ConfigError, check_choice, check_range, path_field

__all__ = ["DataConfig", "SPLITS", "STAGES"]

SPLITS = ("leave_last_out", "time")
STAGES = ("train", "valid", "test")


@dataclass
class DataConfig:
    """Everything ``make_dataloader`` needs.

    Attributes:
        path: prepared directory written by ``hytrec-prep`` (docs/data_format.md).
        split: ``leave_last_out`` (test = last event, valid = second last, train before) or
            ``time`` (global cut at ``split_time``; see docs/data_loader.md).
        split_time: seconds since epoch; required for ``split=time``, unused otherwise.
        train_on_valid: training also uses the validation event as a target (the training region
            ends one event later), as generative-recommenders' ML-1M recipe trains on every
            event but each user's last. The validation split is then no longer held out, so the
            trainer does not validate (``train.validate_every`` must be 0). Test is unchanged.
        max_len: history truncation, keeps the most recent ``max_len`` events.
        num_targets: m, positives per example: the event at the cutoff and the next m-1 events
            (fewer only where the split's region ends).
        cutoffs_per_user: training cutoffs per user per epoch (stratified uniform over the user's
            eligible positions); 0 = every eligible position. With ``all_positions`` it counts
            windows instead (0 = every window).
        all_positions: training objective: every position of an example's history window is a
            target (history event j+1 for position j, the example's target for the last one),
            as SASRec and HSTU train, instead of one target per example. Training cutoffs then
            tile each user's training region from its end in windows of ``max_len`` events, so
            one epoch supervises every training event once. Validation and test are unchanged
            (one exact cutoff per user). Needs ``num_targets: 1`` and ``min_history <= 1``.
            docs/training.md says where this is exact and where it approximates HyTRec.
        supervised_rows: with ``all_positions``, M > 0 supervises only the last M positions of
            each window and tiles training cutoffs every M events instead of every ``max_len``:
            every training event is still a target once per epoch, now with up to ``max_len``
            events of context before it (the long branch and the repeat path read them), and a
            batch of B windows holds B·M targets from B users. 0 = every position of a window;
            M >= ``max_len`` is the same (a window holds at most ``max_len`` rows) and is read as
            0, so lowering ``max_len`` below a config's M needs no second override.
        min_history: smallest history length (events before the cutoff) an example may have.
            0 allows empty histories (cold-start examples with no history at all).
        batch_size: examples per batch (B).
        num_negatives: R uniform negatives per batch (drawn with replacement) over known item
            indices 2..V-1; ``-1``: every known item, every batch (R = V - 2; the log-Q
            correction is then 0, the per-example loss leaves out in-batch negatives, and both
            losses are the exact softmax over the catalog; sensible for catalogs of thousands
            of items, e.g. MovieLens).
        group_window: length grouping: examples are shuffled, then sorted by history length within
            windows of ``group_window * batch_size`` examples and cut into batches; 0 = no
            grouping (batches are plain shuffled chunks).
        num_workers: DataLoader worker processes (0 = build batches in the calling process).
        seed: base seed; cutoffs, order and negatives are deterministic in (seed, epoch, rank).
        drop_last: training only: drop the last incomplete batch of each rank.
        shuffle: training only: shuffle examples and batch order (eval stages never shuffle).
        pin_memory: pin batches in the DataLoader (only useful with a CUDA device).
        cycle_behaviors: raw behaviour IDs (``behavior`` column) that are purchase-like: the repeat
            path's cycle features (``model.repeat_cycles``) measure an item's cycle between these
            and tell them from the other (view-like) events. Empty = every event counts.
    """

    path: str = path_field("")
    split: str = "leave_last_out"
    split_time: Optional[int] = None
    train_on_valid: bool = False
    max_len: int = 10000
    num_targets: int = 1
    cutoffs_per_user: int = 4
    all_positions: bool = False
    supervised_rows: int = 0
    min_history: int = 1
    batch_size: int = 32
    num_negatives: int = 128
    group_window: int = 64
    num_workers: int = 0
    seed: int = 0
    drop_last: bool = True
    shuffle: bool = True
    pin_memory: bool = False
    cycle_behaviors: List[str] = field(default_factory=list)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid key."""
        if not self.path:
            raise ConfigError("path: required (the prepared dataset directory)")
        check_choice("split", self.split, SPLITS)
        if self.split == "time":
            if self.split_time is None:
                raise ConfigError("split_time: required when split is 'time'")
            check_range("split_time", self.split_time, 0)
        check_range("max_len", self.max_len, 1)
        check_range("num_targets", self.num_targets, 1)
        check_range("cutoffs_per_user", self.cutoffs_per_user, 0)
        check_range("min_history", self.min_history, 0)
        check_range("supervised_rows", self.supervised_rows, 0)
        if self.supervised_rows >= self.max_len:  # every row of a window: the same as 0
            self.supervised_rows = 0
        if self.supervised_rows and not self.all_positions:
            raise ConfigError(f"supervised_rows: {self.supervised_rows} needs all_positions: true "
                              "(it chooses which positions of an all-position window are targets)")
        if self.all_positions and self.num_targets != 1:
            raise ConfigError(f"num_targets: {self.num_targets} must be 1 when all_positions is true "
                              "(every history position already has its next event as target)")
        if self.all_positions and self.min_history > 1:
            raise ConfigError(f"min_history: {self.min_history} must be 0 or 1 when all_positions is true "
                              "(every position of a window is supervised, the first with 1 event of history)")
        check_range("batch_size", self.batch_size, 1)
        check_range("num_negatives", self.num_negatives, -1)
        check_range("group_window", self.group_window, 0)
        check_range("num_workers", self.num_workers, 0)
        check_range("seed", self.seed, 0)
        for i, b in enumerate(self.cycle_behaviors):
            if not isinstance(b, str) or not b:
                raise ConfigError(f"cycle_behaviors[{i}]: need a non-empty behaviour ID string, got {b!r}")
