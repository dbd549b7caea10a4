"""The repeat gate end to end: a 2-rank job with the cycle features and the gate trains under
TorchRec's pipelined loop (``train.pipeline=sparse_dist``, which traces the model), its loss logs
the gate's cross-entropy, and the evaluation reports the gate's calibration, which equals a
per-example recomputation; the calibration accumulator against NumPy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hytrec_torchrec.config import from_dict, to_dict
from hytrec_torchrec.data.testing import random_sequences, write_prepared
from hytrec_torchrec.evaluation.calibration import BINS, GateCalibration
from hytrec_torchrec.runtime.config import JobConfig
from hytrec_torchrec.testing import fit_job, run_distributed


def test_calibration_equals_numpy() -> None:
    g = np.random.default_rng(0)
    p = g.random(200)
    y = g.random(200) < p
    member = g.random((200, 3)) < 0.5
    cal = GateCalibration(["a", "b", "c"])
    for a in range(0, 200, 64):  # in batches
        cal.update(torch.from_numpy(p[a:a + 64]), torch.from_numpy(y[a:a + 64]), torch.from_numpy(member[a:a + 64]))
    out = cal.compute()
    for i, name in enumerate("abc"):
        m = member[:, i]
        assert out["segments"][name] == {"examples": int(m.sum()), "predicted": round(float(p[m].mean()), 4),
                                         "observed": round(float(y[m].mean()), 4)}
    b = np.minimum((p * BINS).astype(int), BINS - 1)
    ece = sum(abs(p[b == k].sum() - y[b == k].sum()) for k in range(BINS)) / len(p)
    assert out["ece"] == round(float(ece), 4) and out["examples"] == 200
    assert sum(x["examples"] for x in out["bins"]) == 200


SEQUENCES = random_sequences(23, 60, 12, seed=4, min_events=3)


def _job(data: Path, run: Path, pipeline: str) -> dict:
    return to_dict(from_dict(JobConfig, {
        "run": {"dir": str(run), "seed": 1, "tensorboard": False, "progress": False},
        "data": {"path": str(data), "batch_size": 5, "num_negatives": 8, "max_len": 40,
                 "cutoffs_per_user": 2, "num_workers": 0, "seed": 2},
        "embeddings": {"dim": 16, "lr": 0.05, "init_std": 0.1},
        "model": {"embedding_dim": 16, "short_len": 4, "long_pattern": "T", "heads": 2, "short_heads": 2,
                  "fusion": {"num_experts": 2}, "repeat": True, "repeat_cycles": True, "repeat_gate": True,
                  "tadn": {"gating": "gated_delta", "chunk_size": 8}, "long_readout": "intent"},
        "train": {"max_steps": 3, "validate_every": 0, "checkpoint_every": 0, "val_batches": 1,
                  "pipeline": pipeline},
    }))


def test_a_gated_model_trains_pipelined_and_reports_its_calibration(tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "prep", SEQUENCES, num_items=12)
    run = tmp_path / "run"
    run_distributed(fit_job, 2, (_job(data, run, "sparse_dist"),))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 3 and summary["world_size"] == 2

    from hytrec_torchrec.evaluation.cli import main

    out = tmp_path / "eval"
    threads = torch.get_num_threads()  # `threads=1` sets the process's torch threads; later tests need them back
    try:
        rc = main(["--checkpoint", str(run), "--data", str(data), "--out", str(out), "data.batch_size=4", "threads=1"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    gate = next(iter(doc["models"].values()))["repeat_gate"]
    assert gate["examples"] == 23 and 0.0 <= gate["ece"] <= 1.0
    for seg in gate["segments"].values():
        assert seg["examples"] == 0 or 0.0 <= seg["predicted"] <= 1.0 and 0.0 <= seg["observed"] <= 1.0
    report = (out / "report.md").read_text()
    assert "## Repeat gate calibration" in report

    # the observed repeat rate, recomputed from the raw sequences: is each test target (the last
    # event) among the 40 history events before it (the test data's IDs are the table indices;
    # index 1, unknown, is never a history item of the repeat path)
    hits = [seq["item"][-1] >= 2 and seq["item"][-1] in set(seq["item"][-41:-1]) for seq in SEQUENCES.values()]
    observed = [b for b in gate["bins"] if b["examples"]]
    total = sum(b["examples"] for b in observed)
    assert total == 23
    assert sum(b["observed"] * b["examples"] for b in observed) / total == pytest.approx(np.mean(hits), abs=1e-3)
    assert not math.isnan(gate["ece"])


@pytest.mark.parametrize("scorer", ["additive", "mlp"])
def test_repeat_lr_scale_moves_the_repeat_path_faster(tmp_path: Path, scorer: str) -> None:
    """``optim.repeat_lr_scale``: AdamW's first steps move a weight by about lr each, so after 3
    steps the repeat path's zero-initialised weights (the bucket tables of the additive scorer,
    the output layer of the hidden-layer scorer) are about ``scale`` times further from zero than
    at scale 1, while the tower's parameters move alike."""
    from hytrec_torchrec.runtime.restore import load_unsharded

    data = write_prepared(tmp_path / "prep", SEQUENCES, num_items=12)
    moved = {}
    for scale in (1.0, 20.0):
        job = _job(data, tmp_path / f"run{scale:g}", "plain")
        job["model"]["repeat_scorer"] = scorer
        job["optim"]["repeat_lr_scale"] = scale
        job["optim"]["schedule"] = {"name": "constant", "warmup_steps": 0}
        run_distributed(fit_job, 1, (job,))
        model = load_unsharded(tmp_path / f"run{scale:g}")[0]
        zero_init = model.repeat.count.weight if scorer == "additive" else model.repeat.out.weight
        moved[scale] = (float(zero_init.abs().max()), float(model.tower.net.fusion.gate.weight.abs().mean()))
    assert 0 < moved[1.0][0] <= 3.5e-3 and moved[20.0][0] > 5 * moved[1.0][0]
    assert moved[20.0][1] == pytest.approx(moved[1.0][1], rel=0.05)
