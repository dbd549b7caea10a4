"""Helpers for the data_prep tests: small inputs written on the fly (nothing binary is committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.config import PrepConfig
from data_prep.synthetic import SynthParams, generate
from hytrec_torchrec.config import load_config

#: filters tight enough that every one of them removes something on the small synthetic data
ACTIVE_FILTERS = [
    "filters.scalper_min_events=300",
    "filters.inactive_days=90",
    "filters.min_user_events=25",
    "filters.max_user_events=400",
]


def small_synthetic(tmp: Path, events: int = 20_000, seed: int = 3) -> Path:
    """A small synthetic dataset (histories up to 600) with extra duplicates and timestamp ties."""
    out = tmp / f"syn{seed}"
    generate(SynthParams(events=events, seed=seed, max_len=600, p_scalper=0.02, chunk_events=7_000), out)
    # add exact duplicates and same-timestamp different-item ties to the first file
    f = sorted((out / "events").glob("*.parquet"))[0]
    t = pq.read_table(f)
    rng = np.random.default_rng(seed)
    dup_rows = rng.choice(t.num_rows, 300, replace=False)
    tie = t.take(pa.array(rng.choice(t.num_rows, 300, replace=False)))
    tie = tie.set_column(1, "item_id", pa.array(rng.integers(100_000, 100_500, tie.num_rows)))
    pq.write_table(pa.concat_tables([t, t.take(pa.array(dup_rows)), tie]), f)
    return out / "events"


def cfg(*overrides: str) -> PrepConfig:
    """A PrepConfig from defaults plus overrides; ``min_time=0`` first, because the hand-written
    inputs of these tests use small relative clocks (1000, 1001, ...)."""
    return load_config(PrepConfig, None, ["min_time=0", *overrides])
