"""The offline planner view: shards cover every table exactly and their memory is accounted."""

from __future__ import annotations

from pathlib import Path

from hytrec_torchrec.runtime.config import load_job_config
from hytrec_torchrec.training.plan import format_memory, main, plan_job

ROOT = Path(__file__).resolve().parents[1]
VOCAB = {"item": 100_000, "attribution": 500_000, "category": 200, "behavior": 8}


def test_industrial_plan_on_16_ranks_covers_tables() -> None:
    cfg = load_job_config(str(ROOT / "configs" / "industrial.yaml"), [])
    shards = plan_job(cfg, VOCAB, world_size=16, local_world_size=8, device="cuda")
    for table, rows in VOCAB.items():
        mine = [s for s in shards if s.table == table]
        assert sum(s.rows for s in mine) == rows, table
        assert all(s.cols == cfg.embeddings.dim for s in mine)
    for table in ("item", "attribution"):
        mine = [s for s in shards if s.table == table]
        assert {s.sharding_type for s in mine} == {"row_wise"}
        assert sorted(s.rank for s in mine) == list(range(16))
    for s in shards:  # fp32 weights alone; the estimate adds optimizer state and buffers
        assert s.hbm_bytes >= s.rows * s.cols * 4
    text = format_memory(shards, 16)
    assert "| 15 |" in text and "row_wise" in text


def test_plan_cli_needs_vocab_without_dataset(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--config", str(ROOT / "configs" / "industrial.yaml"), "--world-size", "2"]) == 2
    assert "pass --vocab" in capsys.readouterr().err
