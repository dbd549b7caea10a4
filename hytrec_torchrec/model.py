"""The trainable model: TorchRec ID embeddings feeding the HyTRec tower, scored by dot product.

``HyTRecModel`` owns one ``EmbeddingCollection`` (item, attribution, category, behavior tables;
target and negative items are features on the item table, so scoring is tied to the input item
embeddings) and one :class:`~hytrec_torchrec.modules.tower.HyTRecTower`. ``forward(batch)``
returns ``(loss, outputs)`` as TorchRec's train pipelines expect.

Example::

    embeddings = build_embeddings(emb_cfg, vocab_sizes, device)   # hytrec_torchrec.runtime.factory
    model = HyTRecModel(tower_cfg, embeddings, item_counts)
    loss, out = model(batch)          # batch: hytrec_torchrec.data.batch.Batch
    loss.backward()

The model is handed its built ``EmbeddingCollection`` (as TorchRec's two-tower example is): the
tables and their initialisation are the runtime's (``hytrec_torchrec/runtime/factory.py``), which
builds them on the meta device for ``DistributedModelParallel`` to shard and materialise.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor

from hytrec_torchrec.data.batch import Batch
from hytrec_torchrec.modules.config import TowerConfig
from hytrec_torchrec.modules.loss import (
    catalog_softmax_loss,
    log_q_from_counts,
    sampled_softmax_loss,
    shared_negatives_loss,
    uniform_log_q,
)
from hytrec_torchrec.modules.repeat import RepeatBonus, RepeatHead, dense_bonus, find_pairs, lookup_bonus
from hytrec_torchrec.modules.tower import HyTRecTower, scoring_vectors
from hytrec_torchrec.modules.ulim import UlimHead
from hytrec_torchrec.ops.jagged import last_index, segment_ids, split_tail
from hytrec_torchrec.schema import TABLES, history_key

__all__ = ["HyTRecModel", "UserTower", "RetrievalLoss", "AllPositionsLoss", "next_event_rows"]



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
        all_positions: bool = False,
        last_rows: int = 0,
        category: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """User embeddings [B, D] (or [N, D], one per history row, with ``all_positions``, only
        the last ``last_rows`` rows of each history computed when > 0; see
        :meth:`~hytrec_torchrec.modules.tower.HyTRecTower.rows_and_long`), the weighted
        load-balancing loss (0-d), with ``all_positions`` the long branch's output per row
        ``[N, D]`` (``[0, D]`` otherwise), and the category interests read per user or row
        (``tokens [R, M, D]``, ``valid [R, M]``, ``token_category [R, M]``; M = 0 without them).

        Args:
            emb: the collection's output; ``history_<feature>`` values are [N, D].
            offsets: [B+1] history offsets; timestamps [N] int64; t_current [B] int64.
            category: [N] int64 category index of each history row (read by the category
                interests, ``model.interests.count`` > 0; None otherwise).
        """
        feats = {f: emb[history_key(f)].values() for f in TABLES}
        if all_positions:
            return self.net.rows_parts(feats, offsets, timestamps, t_current, last_rows, category)
        user, balance, tokens, valid, token_cat = self.net.forward_parts(feats, offsets, timestamps, t_current,
                                                                          category)
        return user, balance, user.new_zeros(0, user.shape[1]), tokens, valid, token_cat


def next_event_rows(offsets: torch.Tensor, num_history: int) -> torch.Tensor:
    """Row of each history position's target in ``[history rows; example targets]`` ``[N]``.

    Position ``r`` of a history predicts row ``r + 1`` (the next history event), and the last
    position of example ``b`` predicts its target, row ``num_history + b``. ``offsets [B+1]``.

    Example: offsets ``[0, 2, 3]`` (histories of 2 and 1 events) → ``[1, 3, 4]``.
    """
    idx = torch.arange(1, num_history + 1, device=offsets.device)
    lengths = offsets[1:] - offsets[:-1]
    has = torch.nonzero(lengths > 0).flatten()
    return idx.index_copy(0, last_index(offsets)[has], num_history + has)


class RetrievalLoss(nn.Module):
    """Sampled softmax over in-batch and uniform negatives with log-Q correction.

    In-batch negatives are other examples' targets, drawn in proportion to item frequency:
    log-Q = :func:`~hytrec_torchrec.modules.loss.log_q_from_counts` of the prepared data's item
    event counts. The shared uniform negatives are drawn uniformly over the
    catalog (indices 2..V-1): log-Q = −log(V − 2). See
    :func:`~hytrec_torchrec.modules.loss.sampled_softmax_loss` for the formula.

    Args:
        item_counts: [V] event count per item index.
        cosine: L2-normalise the item rows (``similarity: cosine``; the tower normalises the user).
        temperature: logits are scores / temperature.
        in_batch: use other examples' targets as negatives; ``False`` when the uniform negatives
            are the whole catalog (``data.num_negatives: -1``), which makes the loss the exact
            softmax (in-batch candidates would count items twice).
    """

    def __init__(self, item_counts: torch.Tensor, cosine: bool = False, temperature: float = 1.0,
                 in_batch: bool = True) -> None:
        super().__init__()
        self.in_batch = in_batch
        all_items = torch.arange(item_counts.numel())
        self.register_buffer("item_log_q", log_q_from_counts(item_counts, all_items), persistent=False)
        self.neg_log_q = uniform_log_q(int(item_counts.numel()))
        self.cosine = cosine
        self.temperature = temperature

    def forward(
        self,
        user: torch.Tensor,
        targets: JaggedTensor,
        target_ids: torch.Tensor,
        negatives: JaggedTensor,
        negative_ids: torch.Tensor,
        bonus: Optional[RepeatBonus] = None,
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            user: [B, D]; targets: jagged [T, D] with lengths [B]; target_ids [T];
            negatives: jagged [R, D]; negative_ids [R]; bonus: the repeat path's per-example
            bonus (:class:`~hytrec_torchrec.modules.repeat.RepeatHead`), or None.
        """
        target_to_example = torch.repeat_interleave(
            torch.arange(user.shape[0], device=user.device), targets.lengths()
        )
        example_bonus = None
        if bonus is not None:
            example_bonus = dense_bonus(bonus, user.shape[0], torch.cat([target_ids, negative_ids]))
        return sampled_softmax_loss(
            user=user,
            pos_ids=target_ids,
            pos_emb=scoring_vectors(targets.values(), self.cosine),
            target_to_example=target_to_example,
            pos_log_q=self.item_log_q[target_ids],
            neg_ids=negative_ids,
            neg_emb=scoring_vectors(negatives.values(), self.cosine),
            neg_log_q=self.neg_log_q,
            temperature=self.temperature,
            in_batch=self.in_batch,
            example_bonus=example_bonus,
        )


class AllPositionsLoss(nn.Module):
    """Loss of all-position training (``data.all_positions``, docs/training.md): every history
    row is scored against its next event (:func:`next_event_rows`) and the batch's uniform
    negatives, with log-Q = −log(V − 2)
    (:func:`~hytrec_torchrec.modules.loss.shared_negatives_loss`). No state.

    Args:
        num_items: V, rows of the item table.
        cosine, temperature: as :class:`RetrievalLoss`.
        whole_catalog: the negatives are every known item in order (``data.num_negatives: -1``);
            the loss is then computed by the equal but faster
            :func:`~hytrec_torchrec.modules.loss.catalog_softmax_loss`.
    """

    def __init__(self, num_items: int, cosine: bool = False, temperature: float = 1.0,
                 whole_catalog: bool = False) -> None:
        super().__init__()
        self.neg_log_q = uniform_log_q(num_items)
        self.num_items = num_items
        self.cosine = cosine
        self.temperature = temperature
        self.whole_catalog = whole_catalog

    def forward(
        self,
        user_rows: torch.Tensor,
        offsets: torch.Tensor,
        history: JaggedTensor,
        history_ids: torch.Tensor,
        targets: JaggedTensor,
        target_ids: torch.Tensor,
        negatives: JaggedTensor,
        negative_ids: torch.Tensor,
        bonus: Optional[RepeatBonus] = None,
        last_rows: int = 0,
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            user_rows: [N, D], one user embedding per history row; offsets: [B+1];
            history: jagged item embeddings [N, D] and history_ids [N]; targets: jagged [B, D]
            (one per example) and target_ids [B]; negatives: jagged [R, D], negative_ids [R];
            bonus: the repeat path's bonus per history row, or None.
            last_rows: M > 0 supervises only the last M rows of each history
                (``data.supervised_rows``; every pair of ``bonus`` must be on one of them).
        """
        n = user_rows.shape[0]
        rows = next_event_rows(offsets, n)
        if last_rows > 0:
            select = split_tail(offsets, last_rows)[2]
            rows = rows[select]
            user_rows = user_rows[select]
            if bonus is not None:  # the bonus's query rows, renumbered among the selected rows
                where = torch.full((n,), -1, dtype=torch.int64, device=select.device)
                where[select] = torch.arange(select.shape[0], device=select.device)
                query = where[bonus[0]]
                if bool((query < 0).any()):
                    raise ValueError("repeat bonus on a row that is not supervised (model.repeat_rows "
                                     "must not exceed data.supervised_rows)")
                bonus = (query, bonus[1], bonus[2])
            n = user_rows.shape[0]
        pos_ids = torch.cat([history_ids, target_ids], 0)[rows]
        negs = scoring_vectors(negatives.values(), self.cosine)
        if self.whole_catalog:  # the positive is a catalog column: its embedding is not needed
            if not torch.equal(negative_ids, torch.arange(2, self.num_items, device=negative_ids.device)):
                raise ValueError(f"whole-catalog loss needs the negatives 2..{self.num_items - 1} in order, "
                                 f"got {negative_ids.numel()} ids (data.num_negatives must be -1)")
            return catalog_softmax_loss(user_rows, pos_ids, negs, self.temperature, bonus)
        pos_emb = scoring_vectors(torch.cat([history.values(), targets.values()], 0)[rows], self.cosine)
        pos_bonus = neg_bonus = None
        if bonus is not None:
            pos_bonus = lookup_bonus(bonus, torch.arange(n, device=pos_ids.device), pos_ids)
            neg_bonus = dense_bonus(bonus, n, negative_ids)
        return shared_negatives_loss(user_rows, pos_ids, pos_emb, negative_ids, negs, self.neg_log_q,
                                     self.temperature, pos_bonus=pos_bonus, neg_bonus=neg_bonus)


def future_rows(offsets: torch.Tensor, num_history: int, steps: int) -> List[torch.Tensor]:
    """``[N]`` rows, in ``[history rows; example targets]``, of the events 1 .. ``steps`` after each
    history row (the first is :func:`next_event_rows`), −1 past the example's target; one
    gather per step."""
    nxt = next_event_rows(offsets, num_history)
    b = offsets.numel() - 1
    ext = torch.cat([nxt, torch.full((b,), -1, dtype=torch.int64, device=nxt.device)])  # a target has no next
    out = [nxt]
    for _ in range(steps - 1):
        cur = out[-1]
        out.append(torch.where(cur >= 0, ext[cur.clamp(min=0)], cur))
    return out


class LongAuxLoss(nn.Module):
    """The long branch's own loss (``model.long_aux_weight``, all-position training): each history
    row's long-branch output predicts each of the W events after the row's next target (rows
    ``r + 2 .. r + W + 1`` of its history, the example's target included), by a sampled softmax
    against the batch's shared uniform negatives with log-Q (−log(V − 2)); accidental hits among
    the negatives are not masked. Rows whose long branch has no memory yet (the first K of a
    history) are left out. No state; a module so that TorchRec's pipeline tracer keeps it a leaf.

    Args:
        num_items: V, rows of the item table; window: W; short_len: K.
        cosine, temperature: as the retrieval loss.
    """

    def __init__(self, num_items: int, window: int, short_len: int, cosine: bool, temperature: float) -> None:
        super().__init__()
        self.neg_log_q = uniform_log_q(num_items)
        self.window = int(window)
        self.short_len = int(short_len)
        self.cosine = cosine
        self.temperature = temperature

    def forward(self, long_rows: torch.Tensor, offsets: torch.Tensor, history_ids: torch.Tensor,
                history_emb: torch.Tensor, target_ids: torch.Tensor, target_emb: torch.Tensor,
                negative_ids: torch.Tensor, negative_emb: torch.Tensor) -> torch.Tensor:
        """Scalar loss: ``long_rows [N, D]``, ``offsets [B+1]``, history ``[N]`` ids and ``[N, D]``
        embeddings, example targets ``[B]`` / ``[B, D]``, negatives ``[R]`` / ``[R, D]``."""
        n = int(history_ids.shape[0])
        start = offsets[:-1][segment_ids(offsets, n)] if n > 0 else offsets[:0]
        has_memory = torch.arange(n, device=offsets.device) - start >= self.short_len
        rows = torch.nonzero(has_memory).squeeze(1)
        if rows.numel() == 0:
            return (long_rows * 0.0).sum()
        u = scoring_vectors(long_rows[rows], self.cosine) / self.temperature  # [P, D]
        negs = scoring_vectors(negative_emb, self.cosine)
        z = u @ negs.t() - (math.log(max(int(negative_ids.shape[0]), 1)) + self.neg_log_q)  # [P, R]
        lse_neg = torch.logsumexp(z, dim=1)  # [P]
        all_emb = scoring_vectors(torch.cat([history_emb, target_emb], 0), self.cosine)
        losses: List[torch.Tensor] = []
        for fut_all in future_rows(offsets, n, self.window + 1)[1:]:  # 2 .. W + 1 events ahead
            fut = fut_all[rows]
            ok = fut >= 0
            if not bool(ok.any()):
                break
            pos = (u[ok] * all_emb[fut[ok]]).sum(-1)
            losses.append(torch.logaddexp(pos, lse_neg[ok]) - pos)
        if not losses:
            return (long_rows * 0.0).sum()
        return torch.cat(losses).mean()


class NextCategory(nn.Module):
    """The category of each supervised row's target (ULIM's training target): per example its first
    target item's category, or in all-position training each history row's next event's (the last
    row's: the example's target item's), from ``item_category [V]``. No state; a module so that
    TorchRec's pipeline tracer keeps it a leaf."""

    def forward(self, history_category: torch.Tensor, target_ids: torch.Tensor, target_lengths: torch.Tensor,
                item_category: torch.Tensor, offsets: torch.Tensor, all_positions: bool) -> torch.Tensor:
        """``[N]`` (all positions) or ``[B]`` int64 category indices."""
        targets = target_ids.to(torch.int64)
        if all_positions:
            n = int(history_category.shape[0])
            cats = torch.cat([history_category.to(torch.int64), item_category[targets]])
            return cats[next_event_rows(offsets, n)]
        tlen = target_lengths.to(torch.int64)
        return item_category[targets[torch.cumsum(tlen, 0) - tlen]]


class RepeatGateLoss(nn.Module):
    """Binary cross-entropy of the repeat gate (``model.repeat_gate``): for each supervised user
    row, is its next item one of the row's history items. No state; a module so that TorchRec's
    pipeline tracer treats it as a leaf (it has data-dependent shapes)."""

    def forward(self, query: torch.Tensor, item: torch.Tensor, gate: torch.Tensor, offsets: torch.Tensor,
                history_ids: torch.Tensor, target_ids: torch.Tensor, target_lengths: torch.Tensor,
                all_positions: bool) -> torch.Tensor:
        """Scalar loss.

        Args:
            query, item: ``[M]`` the repeat path's pairs (user row, history item).
            gate: ``[Q]`` gate logits, one per user row (examples, or history rows with
                ``all_positions``).
            offsets: ``[B+1]``; history_ids ``[N]``; target_ids ``[T]`` with ``target_lengths [B]``.
            all_positions: rows are history rows and each one's target is its next event; only
                the rows that get pairs (the repeat path's rows) are supervised.
        """
        if all_positions:
            n = int(history_ids.shape[0])
            ids = torch.cat([history_ids, target_ids], 0).to(torch.int64)[next_event_rows(offsets, n)]
            rows = torch.unique(query)
            want = ids[rows]
        else:
            rows = torch.repeat_interleave(torch.arange(gate.shape[0], device=gate.device),
                                           target_lengths.to(torch.int64))
            want = target_ids.to(torch.int64)
        if rows.numel() == 0:
            return (gate * 0.0).sum()
        label = find_pairs(query, item, rows, want)[1].to(gate.dtype)
        return F.binary_cross_entropy_with_logits(gate[rows], label)


class HyTRecModel(nn.Module):
    """Embeddings + HyTRec tower (+ the repeat path, ``model.repeat``) + sampled-softmax loss.

    Args:
        tower_cfg: tower configuration (``model:`` section).
        embeddings: the built tables (item, attribution, category, behavior; rows from the prepared
            dataset's ``meta.json``), on the meta device when DMP will shard them.
        item_counts: [V_item] event count per item index (log-Q correction of in-batch negatives);
            V_item is the item table's rows.
        all_positions: in training mode, supervise every history position (``data.all_positions``;
            docs/training.md); evaluation mode always scores one user embedding per example.
        supervised_rows: with ``all_positions``, M > 0 supervises only the last M positions of
            each history (``data.supervised_rows``); the repeat path then pairs at most those.
        whole_catalog_negatives: the batches' uniform negatives are every known item
            (``data.num_negatives: -1``); the per-example loss then leaves out in-batch negatives
            and is the exact softmax.
        cycle_behaviors: ``[V_behavior]`` bool, the purchase-like behaviour indices of the repeat
            path's cycle features (``data.cycle_behaviors``); None = every event counts.
        item_category: ``[V_item]`` int64, each item's category (``model.kind: ulim``; the
            factory's :func:`~hytrec_torchrec.runtime.factory.read_item_categories`); None otherwise.
        num_categories: rows of the category table (``model.kind: ulim``).
    """

    def __init__(
        self,
        tower_cfg: TowerConfig,
        embeddings: EmbeddingCollection,
        item_counts: torch.Tensor,
        all_positions: bool = False,
        whole_catalog_negatives: bool = False,
        supervised_rows: int = 0,
        cycle_behaviors: Optional[torch.Tensor] = None,
        item_category: Optional[torch.Tensor] = None,
        num_categories: int = 0,
    ) -> None:
        super().__init__()
        self.all_positions = all_positions
        self.supervised_rows = int(supervised_rows)
        self.embeddings = embeddings
        num_items = int(item_counts.numel())
        self.tower = UserTower(tower_cfg)
        self.cosine = tower_cfg.similarity == "cosine"
        self.loss = RetrievalLoss(item_counts, self.cosine, tower_cfg.temperature,
                                  in_batch=not whole_catalog_negatives)
        self.all_positions_loss = AllPositionsLoss(num_items, self.cosine, tower_cfg.temperature,
                                                   whole_catalog=whole_catalog_negatives)
        self.num_items = num_items
        repeat_rows = tower_cfg.repeat_rows
        if self.supervised_rows > 0:  # only supervised rows get pairs
            repeat_rows = min(repeat_rows, self.supervised_rows) if repeat_rows > 0 else self.supervised_rows
        self.repeat = (RepeatHead(tower_cfg.embedding_dim, train_rows=repeat_rows, cycles=tower_cfg.repeat_cycles,
                                  gate=tower_cfg.repeat_gate, cycle_behaviors=cycle_behaviors,
                                  scorer=tower_cfg.repeat_scorer, hidden=tower_cfg.repeat_hidden)
                       if tower_cfg.repeat else None)
        self.gate_weight = float(tower_cfg.repeat_gate_weight) if tower_cfg.repeat_gate else 0.0
        self.long_aux_weight = float(tower_cfg.long_aux_weight) if all_positions else 0.0
        self.long_aux = (LongAuxLoss(num_items, tower_cfg.long_aux_window, tower_cfg.short_len, self.cosine,
                                     tower_cfg.temperature)
                         if self.long_aux_weight > 0 else None)
        self.gate_loss = RepeatGateLoss() if tower_cfg.repeat and tower_cfg.repeat_gate and self.gate_weight > 0 else None
        # ULIM: next-category prediction and one user embedding per category (model.kind: ulim)
        self.ulim: Optional[UlimHead] = None
        self.category_weight = 0.0
        self.ulim_top_categories = int(tower_cfg.ulim.top_categories)
        if tower_cfg.kind == "ulim":
            if item_category is None or num_categories < 3:
                raise ValueError("model.kind: ulim needs each item's category and the category table's size")
            self.ulim = UlimHead(tower_cfg.ulim, tower_cfg.embedding_dim, num_categories, self.cosine)
            self.category_weight = float(tower_cfg.ulim.category_weight)
        self.next_category = NextCategory()
        self.register_buffer("item_category", item_category.to(torch.int64) if item_category is not None
                             else torch.zeros(0, dtype=torch.int64), persistent=False)

    def user_embedding(self, batch: Batch) -> Tuple[torch.Tensor, Dict[str, JaggedTensor]]:
        """User embeddings [B, D] and the looked-up embeddings of every feature."""
        emb = self.embeddings(batch.features)
        offsets = batch.history_offsets().to(torch.int64)
        user = self.tower(emb, offsets, batch.timestamps, batch.t_current, category=self._category(batch))[0]
        return user, emb

    def ulim_outputs(self, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, JaggedTensor]]:
        """ULIM at evaluation: ``(user [B, D], log p(category) [B, V_c], e [B, V_c, D])`` (every
        category's user embedding) and the looked-up embeddings."""
        assert self.ulim is not None
        emb = self.embeddings(batch.features)
        offsets = batch.history_offsets().to(torch.int64)
        user, _, _, tokens, valid, token_cat = self.tower(emb, offsets, batch.timestamps, batch.t_current,
                                                          category=self._category(batch))
        logp = self.ulim.category_log_probs(user, tokens, valid, token_cat)
        cats = torch.arange(logp.shape[1], device=user.device).unsqueeze(0).expand(user.shape[0], -1)
        e = self.ulim.category_users(user, cats, tokens, valid, token_cat)
        return user, logp, e, emb

    def _category(self, batch: Batch) -> Optional[torch.Tensor]:
        """The history's category indices ``[N]`` int64 when the tower reads interests, else None."""
        if not self.tower.net.has_interests:
            return None
        return batch.features[history_key("category")].values().to(torch.int64)

    def repeat_bonus(self, batch: Batch, user: torch.Tensor, all_positions: bool = False) -> Optional[RepeatBonus]:
        """The repeat path's bonus of the batch's history items for ``user`` ([B, D], or [N, D]
        per history row with ``all_positions``); None without ``model.repeat``."""
        if self.repeat is None:
            return None
        return self.repeat_bonus_and_gate(batch, user, all_positions)[0]

    def repeat_bonus_and_gate(self, batch: Batch, user: torch.Tensor, all_positions: bool = False
                              ) -> Tuple[RepeatBonus, torch.Tensor]:
        """:meth:`repeat_bonus` and the repeat gate's logit per user row (``[B]`` or ``[N]``; zeros
        without ``model.repeat_gate``). Needs ``model.repeat``."""
        assert self.repeat is not None
        offsets = batch.history_offsets().to(torch.int64)
        q, it, v, gate = self.repeat(user, batch.features["history_item"].values().to(torch.int64), offsets,
                                     batch.timestamps, all_positions,
                                     batch.features["history_behavior"].values().to(torch.int64))
        return (q, it, v), gate

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
        target_ids = batch.features["target_item"].values()
        out_extra: Dict[str, torch.Tensor] = {}
        long_loss: Optional[torch.Tensor] = None
        cat_loss: Optional[torch.Tensor] = None
        if self.all_positions and self.training:
            rows, aux, long_rows, tokens, valid, token_cat = self.tower(
                emb, offsets, batch.timestamps, batch.t_current, True, self.supervised_rows, self._category(batch))
            bonus, gate = self.repeat_bonus_and_gate(batch, rows, True) if self.repeat is not None else (None, None)
            scored_rows = rows
            if self.ulim is not None:  # each row scored with its next event's category's embedding
                nxt = self.next_category(batch.features[history_key("category")].values(), target_ids,
                                         batch.features["target_item"].lengths(), self.item_category, offsets, True)
                scored_rows, cat_loss = self.ulim(rows, tokens, valid, token_cat, nxt)
                out_extra["category_loss"] = cat_loss.detach()
            loss = self.all_positions_loss(
                scored_rows, offsets, emb["history_item"], batch.features["history_item"].values(),
                emb["target_item"], target_ids,
                emb["negative_item"], batch.features["negative_item"].values(),
                bonus=bonus,
                last_rows=self.supervised_rows,
            )
            if self.long_aux is not None:
                long_loss = self.long_aux(long_rows, offsets, batch.features["history_item"].values(),
                                          emb["history_item"].values(), target_ids, emb["target_item"].values(),
                                          batch.features["negative_item"].values(), emb["negative_item"].values())
                out_extra["long_aux_loss"] = long_loss.detach()
        else:
            user, aux, _, tokens, valid, token_cat = self.tower(emb, offsets, batch.timestamps, batch.t_current,
                                                                category=self._category(batch))
            bonus, gate = self.repeat_bonus_and_gate(batch, user) if self.repeat is not None else (None, None)
            scored = user
            if self.ulim is not None:  # scored with its target's category's embedding (one target each)
                tcat = self.next_category(batch.features[history_key("category")].values(), target_ids,
                                          batch.features["target_item"].lengths(), self.item_category, offsets, False)
                scored, cat_loss = self.ulim(user, tokens, valid, token_cat, tcat)
                out_extra["category_loss"] = cat_loss.detach()
            loss = self.loss(
                scored,
                emb["target_item"],
                target_ids,
                emb["negative_item"],
                batch.features["negative_item"].values(),
                bonus=bonus,
            )
        out = {"loss": loss.detach(), "aux": aux.detach(), "tokens": offsets[-1], **out_extra}
        total = loss + aux
        if cat_loss is not None:
            total = total + self.category_weight * cat_loss
        if long_loss is not None:
            total = total + self.long_aux_weight * long_loss
        if self.gate_loss is not None and bonus is not None and gate is not None:
            gate_loss = self.gate_loss(bonus[0], bonus[1], gate, offsets, batch.features["history_item"].values(),
                                       target_ids, batch.features["target_item"].lengths(),
                                       self.all_positions and self.training)
            out["gate_loss"] = gate_loss.detach()
            total = total + self.gate_weight * gate_loss
        return total, out
