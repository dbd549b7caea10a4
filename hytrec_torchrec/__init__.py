"""HyTRec on TorchRec: long-sequence recommender library."""

__version__ = "0.1.0"
