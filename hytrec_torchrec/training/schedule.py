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

Example (the config is :class:`~hytrec_torchrec.runtime.config.ScheduleConfig`, ``optim.schedule``)::

    >>> cfg = ScheduleConfig(name="cosine", warmup_steps=2, min_lr_ratio=0.1)
    >>> [round(lr_multiplier(s, 4, cfg), 3) for s in (1, 2, 3, 4)]
    [0.5, 1.0, 0.55, 0.1]
"""

from __future__ import annotations

import math

from hytrec_torchrec.runtime.config import ScheduleConfig

__all__ = ["lr_multiplier"]


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
