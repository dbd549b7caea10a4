"""The learning-rate schedule (training/schedule.py) against hand-computed multipliers.

That the trainer applies it to both the dense and the fused sparse optimizer is tested against an
unsharded reference in tests/test_train_distributed.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hytrec_torchrec.config import ConfigError
from hytrec_torchrec.runtime.config import load_job_config
from hytrec_torchrec.runtime.config import ScheduleConfig
from hytrec_torchrec.training.schedule import lr_multiplier

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _curve(total: int, **kw: object) -> list[float]:
    cfg = ScheduleConfig(**kw)  # type: ignore[arg-type]
    cfg.validate()
    return [lr_multiplier(s, total, cfg) for s in range(1, total + 1)]


def test_constant_is_one_after_warmup() -> None:
    assert _curve(5) == [1.0] * 5
    assert _curve(6, warmup_steps=4) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_decays_over_the_steps_after_warmup() -> None:
    got = _curve(6, name="cosine", warmup_steps=2, min_lr_ratio=0.2)
    # decay over steps 3..6: p = 1/4, 2/4, 3/4, 1
    want = [0.5, 1.0] + [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * p)) for p in (0.25, 0.5, 0.75, 1.0)]
    assert got == pytest.approx(want)
    assert got[-1] == pytest.approx(0.2)


def test_linear_with_a_short_decay_is_warmup_stable_decay() -> None:
    got = _curve(8, name="linear", warmup_steps=2, decay_steps=3)
    assert got == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 2 / 3, 1 / 3, 0.0])


def test_steps_outside_the_job_clamp() -> None:
    cfg = ScheduleConfig(name="linear", min_lr_ratio=0.5)
    assert lr_multiplier(10, 4, cfg) == pytest.approx(0.5)
    assert lr_multiplier(0, 4, cfg) == lr_multiplier(1, 4, cfg)


def test_warmup_longer_than_a_staged_job_is_allowed() -> None:
    cfg = load_job_config(str(DEMO), ["train.max_steps=10", "optim.schedule.warmup_steps=50"])
    assert lr_multiplier(10, 10, cfg.optim.schedule) == pytest.approx(0.2)


@pytest.mark.parametrize("overrides,needle", [
    (["optim.schedule.name=step"], "optim.schedule.name: 'step' is not one of"),
    (["optim.schedule.min_lr_ratio=1.5"], "optim.schedule.min_lr_ratio"),
    (["optim.schedule.warmup_steps=-1"], "optim.schedule.warmup_steps"),
    (["train.max_steps=10", "optim.schedule.name=cosine", "optim.schedule.decay_steps=11"],
     "optim.schedule.decay_steps: 11 is more than the job's 10 steps"),
])
def test_bad_schedule_names_the_key(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_job_config(str(DEMO), overrides)
