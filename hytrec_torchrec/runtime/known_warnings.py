"""Library messages that say nothing about a hytrec job, dropped at the logger or warning that
raises them (not by silencing whole libraries), and shown again with ``HYTREC_LOG=INFO`` or
``HYTREC_LOG=DEBUG``.

========================================================  ===========================================
message (start)                                            why it does not apply
========================================================  ===========================================
``The topology was constructed directly rather than via``  TorchRec's planner asks for
``TopologyFactory.create_topology()`` (logger              ``TopologyFactory``; ``make_planner`` builds
``torchrec.distributed.planner.types``)                    the ``Topology`` from the job's own
                                                           device, world and memory settings
``There is a known issue with TorchRec's dense tensor``    about dry runs with unmaterialised dense
(``...planner.storage_reservations``)                      tensors; hytrec plans with the dense
                                                           modules materialised on their device
``is_fx_tracing will return true for both``                torch.fx's note to library authors,
(``torch.fx._symbolic_trace``)                             triggered inside TorchRec's modules
``find_unused_parameters=True was specified in DDP``       a HyTRec tower leaves parameters without a
(a ``UserWarning`` of DDP's reducer)                       gradient on some batches only; the flag
                                                           costs 1% of a step (benchmarks/results/
                                                           ddp_unused_cpu.txt), see
                                                           :func:`ddp_find_unused_parameters`
========================================================  ===========================================
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Optional

__all__ = ["KnownMessages", "ddp_find_unused_parameters", "filter_known_messages", "LOGGER_MESSAGES"]

#: logger name -> the starts of its messages that are dropped
LOGGER_MESSAGES: dict[str, tuple[str, ...]] = {
    "torchrec.distributed.planner.types": (
        "The topology was constructed directly rather than via TopologyFactory",),
    "torchrec.distributed.planner.storage_reservations": (
        "There is a known issue with TorchRec's dense tensor size calculation",),
    "torch.fx._symbolic_trace": ("is_fx_tracing will return true for both",),
}
_DDP_UNUSED = r"find_unused_parameters=True was specified in DDP constructor"


def _shown() -> bool:
    """Whether the user asked to see library messages (``HYTREC_LOG=INFO`` or ``DEBUG``)."""
    return os.environ.get("HYTREC_LOG", "").upper() in ("INFO", "DEBUG")


class KnownMessages(logging.Filter):
    """Drops records whose message starts with one of ``starts``."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        if _shown():
            return True
        return not str(record.getMessage()).startswith(self.starts)


def filter_known_messages() -> None:
    """Attach :class:`KnownMessages` to each logger of :data:`LOGGER_MESSAGES` (once) and ignore
    DDP's unused-parameters warning; idempotent."""
    for name, starts in LOGGER_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, KnownMessages) for f in logger.filters):
            logger.addFilter(KnownMessages(starts))
    if not _shown():
        warnings.filterwarnings("ignore", message=_DDP_UNUSED, category=UserWarning)


def ddp_find_unused_parameters(setting: Optional[bool], model_cfg: Any) -> bool:
    """DDP's ``find_unused_parameters`` for a tower config: ``setting`` when given; when None
    (``train.find_unused_parameters: null``, the default), False only for towers that give every dense parameter a gradient on every batch
    (no short branch, no repeat path, no far copy and no long-branch auxiliary loss: the
    SASRec-like towers); True otherwise, because a HyTRec tower leaves parameters without a
    gradient on some batches (its long branch on a batch whose histories fit the short window,
    the short branch's "empty" vector in all-position training) and DDP without the flag fails
    on such a batch."""
    if setting is not None:
        return setting
    every_parameter = (model_cfg.short_len == 0 and not model_cfg.repeat and not model_cfg.far_copy
                       and model_cfg.long_aux_weight == 0)
    return not every_parameter
