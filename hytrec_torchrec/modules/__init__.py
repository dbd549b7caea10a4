"""HyTRec tower modules (pure PyTorch, no torchrec import)."""

from hytrec_torchrec.modules.config import FusionConfig, TADNConfig, TowerConfig
from hytrec_torchrec.modules.loss import log_q_from_counts, sampled_softmax_loss
from hytrec_torchrec.modules.tower import HyTRecTower, score

__all__ = [
    "TowerConfig",
    "TADNConfig",
    "FusionConfig",
    "HyTRecTower",
    "score",
    "sampled_softmax_loss",
    "log_q_from_counts",
]
