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
import math
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torchrec import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor

from hytrec_torchrec.data.batch import Batch
from hytrec_torchrec.modules.config import TowerConfig
from hytrec_torchrec.modules.loss import log_q_from_counts, sampled_softmax_loss
from hytrec_torchrec.modules.tower import HyTRecTower
from hytrec_torchrec.training.sharding import EmbeddingsConfig, table_configs

__all__ = ["HyTRecModel", "UserTower", "RetrievalLoss"]

HISTORY_FEATURES: Tuple[str, ...] = ("item", "attribution", "category", "behavior")


class UserTower(nn.Module):
    """The HyTRec tower as one module taking the collection's output.

    Kept as a single leaf for TorchRec's train-pipeline tracer (which traces the model shallowly
    and must not trace into the tower's data-dependent jagged code).
    """

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.net = HyTRecTower(cfg)

    def forward(
        self,
        emb: Dict[str, JaggedTensor],
        offsets: torch.Tensor,
        timestamps: torch.Tensor,
        t_current: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """User embeddings [B, D] and the weighted load-balancing loss (0-d).

        Args:
            emb: the collection's output; ``history_<feature>`` values are [N, D].
            offsets: [B+1] history offsets; timestamps [N] int64; t_current [B] int64.
        """
        feats = {f: emb[f"history_{f}"].values() for f in HISTORY_FEATURES}
        return self.net.forward_with_aux(feats, offsets, timestamps, t_current)


class RetrievalLoss(nn.Module):
    """Sampled softmax over in-batch and uniform negatives with log-Q correction.

    In-batch negatives are other examples' targets, drawn in proportion to item frequency:
    log-Q = :func:`~hytrec_torchrec.modules.loss.log_q_from_counts` of the prepared data's item
    event counts. The shared uniform negatives are drawn uniformly over the
    catalog (indices 2..V-1): log-Q = −log(V − 2). See
    :func:`~hytrec_torchrec.modules.loss.sampled_softmax_loss` for the formula.

    Args:
        item_counts: [V] event count per item index.
    """

    def __init__(self, item_counts: torch.Tensor) -> None:
        super().__init__()
        all_items = torch.arange(item_counts.numel())
        self.register_buffer("item_log_q", log_q_from_counts(item_counts, all_items), persistent=False)
        self.neg_log_q = -math.log(max(int(item_counts.numel()) - 2, 1))

    def forward(
        self,
        user: torch.Tensor,
        targets: JaggedTensor,
        target_ids: torch.Tensor,
        negatives: JaggedTensor,
        negative_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            user: [B, D]; targets: jagged [T, D] with lengths [B]; target_ids [T];
            negatives: jagged [R, D]; negative_ids [R].
        """
        target_to_example = torch.repeat_interleave(
            torch.arange(user.shape[0], device=user.device), targets.lengths()
        )
        return sampled_softmax_loss(
            user=user,
            pos_ids=target_ids,
            pos_emb=targets.values(),
            target_to_example=target_to_example,
            pos_log_q=self.item_log_q[target_ids],
            neg_ids=negative_ids,
            neg_emb=negatives.values(),
            neg_log_q=self.neg_log_q,
        )


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
        self.tower = UserTower(tower_cfg)
        self.loss = RetrievalLoss(item_counts)
        self.num_items = int(vocab_sizes["item"])

    def user_embedding(self, batch: Batch) -> Tuple[torch.Tensor, Dict[str, JaggedTensor]]:
        """User embeddings [B, D] and the looked-up embeddings of every feature."""
        emb = self.embeddings(batch.features)
        offsets = batch.history_offsets().to(torch.int64)
        user, _ = self.tower(emb, offsets, batch.timestamps, batch.t_current)
        return user, emb

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Loss (sampled softmax + weighted load balancing) and detached outputs for one batch.

        Returns:
            ``(loss, out)`` with ``out``: ``loss`` (sampled softmax, detached), ``aux`` (load
            balancing, detached), ``tokens`` (0-d, history events in the batch).
        """
        return self.loss_from_embeddings(self.embeddings(batch.features), batch)

    def loss_from_embeddings(
        self, emb: Dict[str, JaggedTensor], batch: Batch
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """:meth:`forward` after the lookup: ``emb`` is the collection's output for ``batch``."""
        offsets = batch.history_offsets().to(torch.int64)  # KJT lengths are int32
        user, aux = self.tower(emb, offsets, batch.timestamps, batch.t_current)
        loss = self.loss(
            user,
            emb["target_item"],
            batch.features["target_item"].values(),
            emb["negative_item"],
            batch.features["negative_item"].values(),
        )
        out = {"loss": loss.detach(), "aux": aux.detach(), "tokens": offsets[-1]}
        return loss + aux, out
