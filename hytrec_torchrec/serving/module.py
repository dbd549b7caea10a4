"""The served model: plain tensors in, full-catalog top-K raw item IDs and scores out.

:class:`HyTRecServing` holds plain tables (:class:`~hytrec_torchrec.serving.quant.ServingTable`,
float32 or int8 row-wise), the ID maps (:class:`~hytrec_torchrec.serving.idmap.IdMap`), and the
trained :class:`~hytrec_torchrec.modules.tower.HyTRecTower`. Everything is TorchScript-scriptable
and uses only ``torch`` operators, so the scripted file loads with ``torch.jit.load`` in a process
that has neither this package, TorchRec nor fbgemm.

Request layout (B requests, N history events in total)::

    values  = {"item": [N] int64, "attribution": [N], "category": [N], "behavior": [N],
               "timestamp": [N] int64 seconds}        # each request's events, oldest first
    lengths = {same keys: [B] int64}                   # all equal: events per request
    request_time [B] int64 seconds                     # "t_current" of the request
    k: int                                             # results per request

    ids, scores = model(values, lengths, request_time, k)   # [B, k'] int64, [B, k'] float32

Large batches run through the tower in consecutive groups of requests holding at most
``max_tokens_per_pass`` (truncated) history events each, so that the activations stay in cache
(one large pass is slower: docs/export.md and benchmarks/results/serving_passes.txt). Each request's result does not depend on how the batch is grouped.

``k' = min(k, V_item - 2)``. Padding (0) and unknown (1) items are never returned. Histories
longer than ``max_len`` keep their last ``max_len`` events (as in training); an empty history is
allowed (the tower's answer for no events); unknown IDs use the unknown row (index 1). Malformed
input raises ``ValueError`` (``torch.jit.Error`` from a loaded file) naming the field.
"""

from typing import Dict, Final, List, Optional, Tuple

import torch
from torch import nn

from hytrec_torchrec.modules.repeat import RepeatHead
from hytrec_torchrec.modules.tower import NORM_EPS, HyTRecTower, scoring_vectors
from hytrec_torchrec.ops.jagged import pass_bounds  # re-exported: part of this module's API
from hytrec_torchrec.schema import REQUEST_KEYS
from hytrec_torchrec.serving import DEFAULT_MAX_TOKENS_PER_PASS
from hytrec_torchrec.serving.idmap import IdMap, Vocab
from hytrec_torchrec.serving.quant import ServingTable

#: request times and event timestamps are int64 seconds below this (2^40 s is beyond the year
#: 36,000; a millisecond clock of today is above it), so ``request_time - timestamp`` cannot overflow.
MAX_SECONDS = 1 << 40

__all__ = ["DEFAULT_MAX_TOKENS_PER_PASS", "FeatureInput", "HyTRecServing", "REQUEST_KEYS", "dtype_name",
           "pass_bounds", "truncate_rows"]

#: every key a request may carry (``timestamp`` is always required).


class FeatureInput(nn.Module):
    """One ID feature: request values → table indices → embeddings ``[N, D]``."""

    def __init__(self, vocab: Vocab, weight: torch.Tensor, int8: bool) -> None:
        super().__init__()
        if int(weight.shape[0]) != vocab.size:
            raise ValueError(f"table {vocab.feature}: {weight.shape[0]} rows, vocabulary size {vocab.size}")
        self.ids = IdMap(vocab)
        self.table = ServingTable(weight, int8)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``[N]`` int64 request values → ``[N, D]`` float32 embeddings."""
        return self.table.lookup(self.ids(values))


def dtype_name(t: torch.Tensor) -> str:
    """A readable dtype name for error messages (TorchScript prints dtypes as numbers)."""
    names: List[Tuple[torch.dtype, str]] = [
        (torch.int64, "int64"), (torch.int32, "int32"), (torch.int16, "int16"), (torch.int8, "int8"),
        (torch.uint8, "uint8"), (torch.float32, "float32"), (torch.float64, "float64"),
        (torch.float16, "float16"), (torch.bfloat16, "bfloat16"), (torch.bool, "bool"),
    ]
    for dtype, name in names:
        if t.dtype == dtype:
            return name
    return "another dtype"


def truncate_rows(lengths: torch.Tensor, max_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Packed rows to keep when every sequence keeps only its last ``max_len`` events.

    Args:
        lengths: ``[B]`` int64 sequence lengths of a packed batch.
    Returns:
        ``(rows [N'] int64 into the packed values, offsets [B+1] int64 of the kept sequences)``.
    """
    keep = lengths.clamp(max=max_len)
    starts = torch.cumsum(lengths, 0) - keep  # first kept packed row of every sequence
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
    offsets[1:] = torch.cumsum(keep, 0)
    n = int(offsets[-1])
    seg = torch.repeat_interleave(torch.arange(keep.numel(), device=lengths.device), keep, output_size=n)
    rows = starts[seg] + torch.arange(n, device=lengths.device) - offsets[:-1][seg]
    return rows, offsets


class HyTRecServing(nn.Module):
    """Serving module (see module docstring for the request layout).

    Args:
        tower: trained tower (copied by the caller; put in eval mode here).
        weights: table name → trained ``[V, D]`` weights; ``item`` and every tower feature.
        vocabs: table name → :class:`Vocab` for the same tables.
        features: the tower's input features in its order (``cfg.model.features``).
        max_len: history truncation of training (``cfg.data.max_len``).
        int8: row-wise int8 tables instead of float32.
        max_tokens_per_pass: history events per tower pass (a request is never split; one longer
            than this runs alone); 0 runs the whole batch in one pass.
        repeat: the trained repeat path (``model.repeat``; copied by the caller), or None.
    """

    max_len: Final[int]
    num_items: Final[int]
    max_tokens_per_pass: Final[int]
    max_seconds: Final[int]  # MAX_SECONDS (TorchScript reads no module-level int)

    def __init__(self, tower: HyTRecTower, weights: Dict[str, torch.Tensor], vocabs: Dict[str, Vocab],
                 features: List[str], max_len: int, int8: bool = False,
                 max_tokens_per_pass: int = DEFAULT_MAX_TOKENS_PER_PASS,
                 repeat: Optional[RepeatHead] = None) -> None:
        super().__init__()
        if max_tokens_per_pass < 0:
            raise ValueError(f"max_tokens_per_pass must be >= 0, got {max_tokens_per_pass}")
        self.max_tokens_per_pass = int(max_tokens_per_pass)
        self.max_seconds = MAX_SECONDS
        names = list(dict.fromkeys(["item"] + list(features)))
        if repeat is not None and repeat.cycles and repeat.cycle_behaviors.numel() > 0 and "behavior" not in names:
            names.append("behavior")  # the cycle features' purchase-like events (its IDs, not its embedding)
        if tower.has_interests and "category" not in names:
            names.append("category")  # the category interests read its IDs and embeddings
        self.inputs = nn.ModuleDict({f: FeatureInput(vocabs[f], weights[f], int8) for f in names})
        self.tower = tower.eval()
        self.repeat = repeat.eval() if repeat is not None else None
        for p in self.parameters():
            p.requires_grad_(False)
        self.features: List[str] = list(features)
        # the repeat path reads the history's item IDs even when the tower does not
        needed = list(features) + (["item"] if repeat is not None and "item" not in features else [])
        if "behavior" in names and "behavior" not in needed:
            needed.append("behavior")  # the cycle features read which events are purchase-like
        if tower.has_interests and "category" not in needed:
            needed.append("category")
        self.required: List[str] = needed + ["timestamp"]
        self.allowed: List[str] = list(REQUEST_KEYS)
        self.max_len = int(max_len)
        self.num_items = int(vocabs["item"].size)
        # cosine: 1 / max(|row|, eps) of every (dequantized) item row, computed once here so that
        # a request scores (u · r) / |r| without re-normalising the whole table; [V] or empty (dot)
        inv_norm = torch.zeros(0)
        if tower.cosine:
            rows = self.inputs["item"].table.rows()
            inv_norm = 1.0 / rows.norm(dim=1).clamp_min(NORM_EPS)
        self.register_buffer("item_inv_norm", inv_norm)

    def _check(self, values: Dict[str, torch.Tensor], lengths: Dict[str, torch.Tensor],
               request_time: torch.Tensor) -> torch.Tensor:
        """Validate a request; returns the common lengths ``[B]`` int64."""
        for key in values.keys():
            if key not in self.allowed:
                raise ValueError("values: unknown feature '" + key + "'; allowed: item, attribution, "
                                 "category, behavior, timestamp")
        for key in lengths.keys():
            if key not in values:
                raise ValueError("lengths['" + key + "'] given but values['" + key + "'] missing")
        for key in self.required:
            if key not in values:
                raise ValueError("values: missing feature '" + key + "' (required: "
                                 + ", ".join(self.required) + ")")
            if key not in lengths:
                raise ValueError("lengths: missing feature '" + key + "'")
        ref = lengths["timestamp"]
        for key, v in values.items():
            n = lengths[key]
            if v.dtype != torch.int64 or n.dtype != torch.int64:
                raise ValueError("values['" + key + "'] and lengths['" + key + "'] must be int64, got "
                                 + dtype_name(v) + " and " + dtype_name(n))
            if v.dim() != 1 or n.dim() != 1:
                raise ValueError("values['" + key + "'] and lengths['" + key + "'] must be 1-D")
            if n.numel() != ref.numel() or not bool(torch.equal(n, ref)):
                raise ValueError("lengths['" + key + "'] differs from lengths['timestamp']: every "
                                 "feature must have the same number of events per request")
            if bool((n < 0).any()):
                raise ValueError("lengths['" + key + "'] has a negative length")
            if int(n.sum()) != v.numel():
                raise ValueError("values['" + key + "'] has " + str(v.numel()) + " elements but lengths['"
                                 + key + "'] sum to " + str(int(n.sum())))
        if request_time.dtype != torch.int64 or request_time.dim() != 1:
            raise ValueError("request_time must be a 1-D int64 tensor [B], got " + dtype_name(request_time)
                             + " with " + str(request_time.dim()) + " dims")
        if request_time.numel() != ref.numel():
            raise ValueError("request_time has " + str(request_time.numel()) + " entries for "
                             + str(ref.numel()) + " requests")
        if ref.numel() == 0:
            raise ValueError("empty request batch: B = 0 (lengths['timestamp'] has no entries)")
        limit = self.max_seconds
        for name, t in (("request_time", request_time), ("values['timestamp']", values["timestamp"])):
            if t.numel() > 0 and (bool((t < 0).any()) or bool((t >= limit).any())):
                bad = t[(t < 0) | (t >= limit)][0]
                raise ValueError(name + ": " + str(int(bad)) + " is not seconds since 1970 in [0, 2^40) "
                                 "(milliseconds? divide by 1000)")
        return ref

    @torch.jit.export
    def user_embedding(self, values: Dict[str, torch.Tensor], lengths: Dict[str, torch.Tensor],
                       request_time: torch.Tensor) -> torch.Tensor:
        """User embeddings ``[B, D]`` float32 of a request batch (layout: module docstring)."""
        return self.user_parts(values, lengths, request_time)[0]

    @torch.jit.export
    def user_parts(self, values: Dict[str, torch.Tensor], lengths: Dict[str, torch.Tensor],
                   request_time: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`user_embedding` and the category interests the tower read: ``(user [B, D], tokens
        [B, M, D], valid [B, M], token_category [B, M] int64)`` (M = 0 without interests)."""
        n = self._check(values, lengths, request_time)
        rows, offsets = truncate_rows(n, self.max_len)
        bounds = pass_bounds(offsets, self.max_tokens_per_pass)
        parts: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for i in range(len(bounds) - 1):
            a, b = bounds[i], bounds[i + 1]
            start = offsets[a]
            part = rows[start:offsets[b]]
            emb: Dict[str, torch.Tensor] = {}
            category: Optional[torch.Tensor] = None
            for name, feature in self.inputs.items():
                if name in self.features or (name == "category" and self.tower.has_interests):
                    emb[name] = feature(values[name][part])
                if name == "category" and self.tower.has_interests:
                    category = feature.ids(values[name][part])
            out = self.tower.forward_parts(emb, offsets[a:b + 1] - start, values["timestamp"][part],
                                           request_time[a:b], category)
            parts.append((out[0], out[2], out[3], out[4]))
        if len(parts) == 1:
            return parts[0]
        return (torch.cat([p[0] for p in parts], 0), torch.cat([p[1] for p in parts], 0),
                torch.cat([p[2] for p in parts], 0), torch.cat([p[3] for p in parts], 0))

    @torch.jit.export
    def repeat_bonus(self, values: Dict[str, torch.Tensor], lengths: Dict[str, torch.Tensor],
                     request_time: torch.Tensor, user: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The repeat path's score bonus of each request's history items, ``(request [M] int64,
        item index [M] int64, bonus [M] float32)``, for the request batch and its ``user [B, D]``
        (:meth:`user_embedding`); empty when the model has no repeat path."""
        head = self.repeat
        if head is None:
            z = torch.zeros(0, dtype=torch.int64)
            return z, z, torch.zeros(0)
        n = self._check(values, lengths, request_time)
        rows, offsets = truncate_rows(n, self.max_len)
        items = self.inputs["item"].ids(values["item"][rows])
        behaviors: Optional[torch.Tensor] = None
        if head.cycles:
            # a loop over the ModuleDict (unrolled by TorchScript): indexing it with a key that is
            # absent (a model whose cycle features read no behaviour) would not compile
            for name, feature in self.inputs.items():
                if name == "behavior":
                    behaviors = feature.ids(values["behavior"][rows])
        out = head(user, items, offsets, values["timestamp"][rows], False, behaviors)
        return out[0], out[1], out[2]

    def _item_rows(self) -> torch.Tensor:
        """The stored item table ``[V, D]`` float32 (dequantized for int8, not normalised)."""
        return self.inputs["item"].table.rows()

    @torch.jit.export
    def item_embeddings(self) -> torch.Tensor:
        """The item vectors ``[V, D]`` float32 as scored (dequantized for int8, L2-normalised when
        the tower's ``similarity`` is cosine); row i = item index i."""
        return scoring_vectors(self._item_rows(), self.tower.cosine)

    @torch.jit.export
    def scores(self, values: Dict[str, torch.Tensor], lengths: Dict[str, torch.Tensor],
               request_time: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, V]`` of every item index; columns 0 (pad) and 1 (unknown) are ``-inf``.

        Equals ``user @ item_embeddings().T`` plus, with the repeat path, its bonus for the items
        of each request's history (:meth:`repeat_bonus`); under cosine the item norms are the ones cached at
        construction (``item_inv_norm [V]``), so a request never normalises the table, and an int8
        table is scored block by block (``ServingTable.score``), never dequantized whole.
        """
        user = self.user_embedding(values, lengths, request_time)
        if self.repeat is None:
            return self._final_scores(user, None)
        return self._final_scores(user, self.repeat_bonus(values, lengths, request_time, user))

    def _final_scores(self, user: torch.Tensor,
                      bonus: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``user [B, D]`` scored against every item row ``[B, V]``, plus the repeat path's ``bonus``
        ``(user row [P], item index [P], value [P])`` when given; columns 0 and 1 ``-inf``."""
        s = self.inputs["item"].table.score(user)  # int8: block by block, no dequantized table
        if self.tower.cosine:
            s = s * self.item_inv_norm
        if bonus is not None:
            s = s.index_put((bonus[0], bonus[1]), bonus[2], accumulate=True)
        s[:, :2] = float("-inf")
        return s

    @torch.jit.export
    def item_ids(self, index: torch.Tensor) -> torch.Tensor:
        """Item indices → raw item IDs (or the indices when the item ID space is ``index``)."""
        return self.inputs["item"].ids.to_raw(index)

    def forward(self, values: Dict[str, torch.Tensor], lengths: Dict[str, torch.Tensor],
                request_time: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items per request: ``(ids [B, k'] int64, scores [B, k'] float32)``, best first.

        ``k' = min(k, V_item - 2)``; ids are raw item IDs (item ID space ``raw_int64``) or item
        indices (``index``); see the module docstring for the inputs.
        """
        if k < 1:
            raise ValueError("k must be >= 1, got " + str(k))
        s = self.scores(values, lengths, request_time)
        top = torch.topk(s, min(k, self.num_items - 2), dim=1)
        return self.item_ids(top.indices), top.values
