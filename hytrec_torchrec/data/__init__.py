"""From a prepared directory (docs/data_format.md) to TorchRec jagged batches (docs/data_loader.md)."""

from hytrec_torchrec.data.batch import FEATURE_KEYS, HISTORY_KEYS, Batch
from hytrec_torchrec.data.config import DataConfig
from hytrec_torchrec.data.loader import BatchLoader, JaggedBatchDataset, RankShard, load_shard, make_dataloader
from hytrec_torchrec.data.reader import DatasetFormatError

__all__ = [
    "Batch",
    "BatchLoader",
    "DataConfig",
    "DatasetFormatError",
    "FEATURE_KEYS",
    "HISTORY_KEYS",
    "JaggedBatchDataset",
    "RankShard",
    "load_shard",
    "make_dataloader",
]
