"""Learning-rate schedule shared by the dense AdamW and the fused sparse optimizer.

One multiplier per optimizer step scales every learning rate of the job (``optim.lr`` for the
tower, ``embeddings.lr`` for the tables), so the two optimizers warm up and decay together. The
multiplier is a pure function of the step, which is what makes a resumed job exact: the step is
in the checkpoint, the schedule is not.

Shape of the multiplier ``f(s)`` for optimizer step ``s = 1 .. total``::

    warm-up     s <= W                   f = s / W
    plateau     W < s <= S               f = 1
    decay       S < s <= total           p = (s - S) / (total - S)
                                         cosine: f = m + (1 - m) * (1 + cos(pi * p)) / 2
                                         linear: f = 1 - (1 - m) * p

with ``W = warmup_steps``, ``m = min_lr_ratio`` and ``S = total - decay_steps`` (``S = W`` when
``decay_steps`` is unset, i.e. the decay fills the whole run after warm-up; a short
``decay_steps`` gives a warm-up / stable / decay schedule whose plateau can be extended by
resuming with a larger ``train.max_steps``). ``constant`` is warm-up then ``f = 1``.

Example::

    >>> cfg = ScheduleConfig(name="cosine", warmup_steps=2, min_lr_ratio=0.1)
    >>> [round(lr_multiplier(s, 4, cfg), 3) for s in (1, 2, 3, 4)]
    [0.5, 1.0, 0.55, 0.1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from hytrec_torchrec.config import ConfigError, check_choice, check_range

__all__ = ["SCHEDULES", "ScheduleConfig", "lr_multiplier"]

SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (``optim.schedule`` in the job config).

    Attributes:
        name: ``constant`` (default), ``cosine`` or ``linear`` decay.
        warmup_steps: steps of linear warm-up from ``lr / warmup_steps`` to ``lr``.
        decay_steps: length of the decay at the end of the run (``None``: every step after the
            warm-up decays).
        min_lr_ratio: the multiplier reached at the last step of a decay.
    """

    name: str = "constant"
    warmup_steps: int = 0
    decay_steps: Optional[int] = None
    min_lr_ratio: float = 0.0

    def validate(self) -> None:
        check_choice("name", self.name, SCHEDULES)
        check_range("warmup_steps", self.warmup_steps, 0)
        if self.decay_steps is not None:
            check_range("decay_steps", self.decay_steps, 1)
        check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)

    def check_total(self, total: int) -> None:
        """Raise ``ConfigError`` when the decay is longer than a job of ``total`` steps.

        A warm-up longer than the job is allowed: a job run in stages (resumed with a larger
        ``train.max_steps``) may stop during its warm-up.
        """
        if self.decay_steps is not None and self.decay_steps > total:
            raise ConfigError(
                f"optim.schedule.decay_steps: {self.decay_steps} is more than the job's "
                f"{total} steps"
            )


def lr_multiplier(step: int, total: int, cfg: ScheduleConfig) -> float:
    """Multiplier of every base learning rate for optimizer step ``step`` (1-based) of ``total``.

    Steps past ``total`` keep the last step's value.
    """
    s = min(max(step, 1), max(total, 1))
    w = cfg.warmup_steps
    if w and s <= w:
        return s / w
    if cfg.name == "constant":
        return 1.0
    start = w if cfg.decay_steps is None else max(w, total - cfg.decay_steps)
    if s <= start or total <= start:
        return 1.0
    p = (s - start) / (total - start)
    m = cfg.min_lr_ratio
    if cfg.name == "cosine":
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * p))
    return 1.0 - (1.0 - m) * p
