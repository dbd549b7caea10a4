"""Per-batch full-catalog ranking of a (possibly sharded) model: shared by ``Trainer.validate``
and the offline evaluation job (:mod:`hytrec_torchrec.evaluation.evaluate`).

Example (every rank, inside ``torch.no_grad()``)::

    blocks = item_blocks(dmp_model)
    for batch in loader:
        ranks = batch_target_ranks(unwrap(dmp_model), batch, blocks, num_items)
        ranks = ranks[batch.valid]
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from hytrec_torchrec.data.batch import Batch
from hytrec_torchrec.modules.repeat import in_history
from hytrec_torchrec.modules.tower import scoring_vectors
from hytrec_torchrec.ranking.ranks import ItemBlock, local_item_blocks, target_ranks_distributed

__all__ = ["ITEM_TABLE_KEY", "unwrap", "item_blocks", "first_targets", "history_items", "batch_target_ranks",
           "batch_ranks_and_gate"]

#: state-dict key of the item table in a DMP-wrapped :class:`~hytrec_torchrec.model.HyTRecModel`.
ITEM_TABLE_KEY = "embeddings.embeddings.item.weight"


def unwrap(model: torch.nn.Module) -> Any:
    """The :class:`~hytrec_torchrec.model.HyTRecModel` inside DMP (and DDP), or ``model`` itself."""
    m: Any = getattr(model, "module", model)
    return m.module if isinstance(m, torch.nn.parallel.DistributedDataParallel) else m


def item_blocks(model: torch.nn.Module) -> List[ItemBlock]:
    """This rank's pieces of the item table (an equal row slice per rank when the table is
    data-parallel or unsharded: :func:`local_item_blocks`), rows as they enter a score
    (L2-normalised when the model's ``similarity`` is cosine)."""
    sd = model.state_dict()
    key = ITEM_TABLE_KEY if ITEM_TABLE_KEY in sd else ITEM_TABLE_KEY.replace("embeddings.", "", 1)
    cosine = bool(getattr(unwrap(model), "cosine", False))
    return [(r0, c0, scoring_vectors(w, cosine)) for r0, c0, w in local_item_blocks(sd[key])]


def first_targets(batch: Batch) -> torch.Tensor:
    """[B] the first target item of each example (the event at the cutoff)."""
    kjt = batch.features["target_item"]
    lengths = kjt.lengths()
    return kjt.values()[torch.cumsum(lengths, 0) - lengths]


def history_items(batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(item values [N], lengths [B])`` of the batch's (truncated) histories."""
    return batch.features["history_item"].values(), batch.history_lengths()


def batch_target_ranks(model: Any, batch: Batch, blocks: List[ItemBlock], num_items: int,
                       remove_history: bool = False) -> torch.Tensor:
    """[B] full-catalog rank (1 = best, ties pessimistic) of each example's first target.

    Collective when distributed: every rank calls it once per batch (the loaders yield the same
    number of batches on every rank). Includes eval padding examples; mask with ``batch.valid``.
    ``remove_history`` leaves the items of each example's (truncated) history out of its ranking.
    A model with the repeat path (``model.repeat``) adds its bonus to the history items' scores.
    """
    return batch_ranks_and_gate(model, batch, blocks, num_items, remove_history)[0]


def batch_ranks_and_gate(model: Any, batch: Batch, blocks: List[ItemBlock], num_items: int,
                         remove_history: bool = False
                         ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """:func:`batch_target_ranks` and, for a model with the repeat gate (``model.repeat_gate``),
    each example's gate probability ``[B]`` (the next item is one of the history's) and whether
    its first target is in its history ``[B]`` bool; None, None otherwise."""
    user, _ = model.user_embedding(batch)
    hist = history_items(batch) if remove_history else None
    head = getattr(model, "repeat", None)
    bonus = prob = label = None
    targets = first_targets(batch)
    if head is not None:
        bonus, gate = model.repeat_bonus_and_gate(batch, user)
        if getattr(head, "has_gate", False):
            prob = torch.sigmoid(gate)
            label = in_history(bonus, torch.arange(user.shape[0], device=user.device), targets.to(torch.int64))
    ranks = target_ranks_distributed(user, targets, blocks, num_items, history=hist, bonus=bonus)
    return ranks, prob, label
