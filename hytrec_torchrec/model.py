"""The trainable model: TorchRec ID embeddings feeding the HyTRec tower, scored by dot product.

``HyTRecModel`` owns one ``EmbeddingCollection`` (item, attribution, category, behavior tables;
target and negative items are features on the item table, so scoring is tied to the input item
embeddings) and one :class:`~hytrec_torchrec.modules.tower.HyTRecTower`. ``forward(batch)``
returns ``(loss, outputs)`` as TorchRec's train pipelines expect.

Example::

    model = HyTRecModel(tower_cfg, emb_cfg, vocab_sizes, item_counts)
    loss, out = model(batch)          # batch: hytrec_torchrec.data.batch.Batch
    loss.backward()

Distributed training builds the collection on the meta device and lets
``DistributedModelParallel`` shard and materialise it (hytrec_torchrec/training/loop.py).
"""

from __future__ import annotations

import functools
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torchrec import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor

from hytrec_torchrec.data.batch import Batch
from hytrec_torchrec.modules.config import TowerConfig
from hytrec_torchrec.modules.loss import sampled_softmax_loss
from hytrec_torchrec.modules.tower import HyTRecTower
from hytrec_torchrec.training.sharding import EmbeddingsConfig, table_configs

__all__ = ["HyTRecModel", "item_log_probs", "tower_inputs"]

HISTORY_FEATURES: Tuple[str, ...] = ("item", "attribution", "category", "behavior")


def item_log_probs(counts: torch.Tensor) -> torch.Tensor:
    """Log sampling probability of each item as an in-batch negative.

    In-batch negatives are other examples' targets, so an item is drawn in proportion to how often
    it is a target, estimated by its event count in the prepared data (``vocab/item.parquet``).
    Rows with count 0 (padding, unknown, unseen) get the smallest positive count so the log is
    finite.

    Args:
        counts: [V] event count per item index.
    Returns:
        [V] float32 log-probabilities.
    """
    c = counts.to(torch.float64).clamp_min(1.0)
    return (c / c.sum()).log().to(torch.float32)


def tower_inputs(
    emb: Dict[str, JaggedTensor],
) -> Dict[str, torch.Tensor]:
    """Per-feature jagged history embeddings [N, D] from the collection's output."""
    return {f: emb[f"history_{f}"].values() for f in HISTORY_FEATURES}


class HyTRecModel(nn.Module):
    """Embeddings + HyTRec tower + sampled-softmax loss.

    Args:
        tower_cfg: tower configuration (``model:`` section).
        emb_cfg: embedding tables configuration (``embeddings:`` section).
        vocab_sizes: rows per table, from the prepared dataset's ``meta.json``.
        item_counts: [V_item] event count per item index (log-Q correction of in-batch negatives).
        embedding_device: device of the embedding tables; ``meta`` when DMP will shard them.
    """

    def __init__(
        self,
        tower_cfg: TowerConfig,
        emb_cfg: EmbeddingsConfig,
        vocab_sizes: Dict[str, int],
        item_counts: torch.Tensor,
        embedding_device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        tables = table_configs(emb_cfg, vocab_sizes)
        init = functools.partial(nn.init.normal_, mean=0.0, std=emb_cfg.init_std)
        for t in tables:
            t.init_fn = init
        self.embeddings = EmbeddingCollection(tables=tables, device=embedding_device)
        self.tower = HyTRecTower(tower_cfg)
        self.register_buffer("item_log_q", item_log_probs(item_counts), persistent=False)
        self.num_items = int(vocab_sizes["item"])
        self.tower_cfg = tower_cfg

    def user_embedding(self, batch: Batch) -> Tuple[torch.Tensor, Dict[str, JaggedTensor]]:
        """User embeddings [B, D] and the looked-up embeddings of every feature."""
        emb = self.embeddings(batch.features)
        user = self.tower(
            tower_inputs(emb), batch.history_offsets(), batch.timestamps, batch.t_current
        )
        return user, emb

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Loss and detached outputs for one batch.

        Returns:
            ``(loss, out)`` with ``out``: ``loss`` (scalar, detached), ``user`` [B, D] detached,
            ``target_emb`` [T, D] detached, ``num_targets`` (scalar), ``tokens`` (history events).
        """
        emb = self.embeddings(batch.features)
        user = self.tower(
            tower_inputs(emb), batch.history_offsets(), batch.timestamps, batch.t_current
        )
        target = emb["target_item"]
        neg = emb["negative_item"]
        target_lengths = target.lengths()
        target_to_example = torch.repeat_interleave(
            torch.arange(user.shape[0], device=user.device), target_lengths
        )
        loss = sampled_softmax_loss(
            user=user,
            pos_ids=batch.features["target_item"].values(),
            pos_emb=target.values(),
            pos_to_example=target_to_example,
            neg_ids=batch.features["negative_item"].values(),
            neg_emb=neg.values(),
            item_log_q=self.item_log_q,
            num_items=self.num_items,
            cfg=self.tower_cfg,
        )
        aux = self.tower.aux_loss() if hasattr(self.tower, "aux_loss") else None
        total = loss if aux is None else loss + aux
        out = {
            "loss": loss.detach(),
            "user": user.detach(),
            "tokens": batch.features["history_item"].values().new_tensor(
                batch.features["history_item"].values().numel()
            ),
        }
        return total, out
