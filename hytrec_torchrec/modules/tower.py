"""The HyTRec tower: jagged per-feature embeddings → user embedding ``[B, D]``.

Pipeline: combine feature embeddings into tokens ``h [N, D]`` (sum, or concat + projection);
split each history into long part (all but the last K events) and short part (the last K, or
with ``short_layers`` L > 1 the last L·(K−1)+1 that the stacked sliding windows reach);
long part → :class:`LongBranch` (TADN/softmax pattern, temporal decay τ from timestamps);
short part → :class:`ShortBranch`; both → :class:`MoEFusion`. Pure PyTorch (no torchrec), and
TorchScript-scriptable (``torch.jit.script(tower)``).
"""


from typing import Dict, Final, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hytrec_torchrec.modules.branches import LongBranch, ShortBranch
from hytrec_torchrec.modules.config import TowerConfig
from hytrec_torchrec.modules.fusion import MoEFusion
from hytrec_torchrec.modules.interests import CategoryInterests, InterestReadout
from hytrec_torchrec.modules.layers import temporal_decay
from hytrec_torchrec.modules.memory import IntentReadout
from hytrec_torchrec.ops.jagged import last_index, next_event_times, segment_ids, split_tail

__all__ = ["FeatureCombiner", "HyTRecTower", "score", "scoring_vectors", "NORM_EPS"]

#: epsilon of the L2 normalisation of user and item vectors under ``similarity: cosine``.
NORM_EPS: Final[float] = 1e-6


def scoring_vectors(x: torch.Tensor, cosine: bool) -> torch.Tensor:
    """Rows of ``x [M, D]`` as they enter a score: unchanged (dot) or L2-normalised (cosine).

    Applied to item rows wherever items are scored (training losses, evaluation, serving); the
    tower applies it to its own output."""
    if cosine:
        return F.normalize(x, dim=-1, eps=1e-6)  # NORM_EPS (TorchScript cannot read the global)
    return x


class FeatureCombiner(nn.Module):
    """``sum``: ``h = Σ_f e_f`` (all ``[N, D]``); ``concat``: ``h = W [e_1; …; e_F] + b``."""

    concat: Final[bool]

    def __init__(self, features: List[str], dims: List[int], dim: int, mode: str) -> None:
        super().__init__()
        self.features = features
        self.concat = mode == "concat"
        if not self.concat and any(d != dim for d in dims):
            raise ValueError(f"feature_combine=sum needs every feature {dim} wide, got {dims}")
        self.proj = nn.Linear(sum(dims), dim) if self.concat else nn.Identity()

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        parts: List[torch.Tensor] = []
        for name in self.features:
            if name not in features:
                raise KeyError("missing feature " + name)
            parts.append(features[name])
        if self.concat:
            return self.proj(torch.cat(parts, dim=-1))
        h = parts[0]
        for p in parts[1:]:
            h = h + p
        return h


class HyTRecTower(nn.Module):
    """User tower. See module docstring; build from a :class:`TowerConfig`.

    Args:
        cfg: tower configuration.
        feature_dims: width of each feature's embedding (default: all ``cfg.embedding_dim``).
    """

    has_long: Final[bool]
    has_short: Final[bool]
    cosine: Final[bool]
    next_query: Final[bool]
    long_intent: Final[bool]
    long_residual: Final[bool]
    has_copy: Final[bool]
    long_detach: Final[bool]
    long_input_grad: Final[bool]
    has_interests: Final[bool]

    def __init__(self, cfg: TowerConfig, feature_dims: Optional[Dict[str, int]] = None) -> None:
        super().__init__()
        d = cfg.embedding_dim
        dims = [int((feature_dims or {}).get(f, d)) for f in cfg.features]
        self.combine = FeatureCombiner(list(cfg.features), dims, d, cfg.feature_combine)
        self.short_len = cfg.short_len
        self.has_long = len(cfg.long_pattern) > 0
        self.has_short = cfg.short_len > 0
        self.decay_period = float(cfg.tadn.decay_period)
        self.load_balance_weight = float(cfg.fusion.load_balance_weight)
        # branch dropout of the short branch's output in training (fusion.short_dropout)
        self.short_dropout = float(cfg.fusion.short_dropout) if self.has_long and self.has_short else 0.0
        # training: the fusion reads the long branch's output without its gradient
        self.long_detach = bool(cfg.fusion.long_detach) and self.has_long
        # model.long_input_grad: false = the long branch reads the event embeddings detached
        self.long_input_grad = bool(cfg.long_input_grad)
        t = cfg.tadn
        self.long = LongBranch(cfg) if self.has_long else nn.Identity()
        # the long branch is read with the short branch's output (its intent readout)
        self.long_intent = self.has_long and cfg.long_readout == "intent"
        self.short = ShortBranch(cfg) if self.has_short else nn.Identity()
        # rows the short branch reads: the last K, or its receptive field when it has several layers
        self.short_input = self.short.receptive_field if isinstance(self.short, ShortBranch) else 0
        # far_copy: a soft pointer over the far events' embeddings, added to the user embedding
        self.has_copy = cfg.far_copy and self.has_short
        self.copy = (IntentReadout(d, cfg.heads, t.chunk_size, t.key_dim, copy=True)
                     if self.has_copy else nn.Identity())
        self.copy_scale = nn.Parameter(torch.ones(())) if self.has_copy else None
        # fusion.long residual: the MoE fuses the short branch alone; the long branch is added to its
        # output through a per-channel scale that starts at 0 (the tower starts as short-only)
        self.long_residual = self.has_long and self.has_short and cfg.fusion.long == "residual"
        self.long_scale = nn.Parameter(torch.zeros(d)) if self.long_residual else None
        # interests by category: the top categories' tokens read with the short branch's output,
        # fused as one more branch (between the long and the short branch's outputs)
        self.has_interests = cfg.interests.count > 0 and self.has_short
        self.interests = (CategoryInterests(cfg.interests, d, cfg.heads, t.key_dim)
                          if self.has_interests else nn.Identity())
        self.interest_read = InterestReadout(d, cfg.heads) if self.has_interests else nn.Identity()
        n_branches = (int(self.has_long and not self.long_residual) + int(self.has_short)
                      + int(self.has_interests))
        self.fusion = MoEFusion(n_branches, d, cfg.fusion.num_experts, cfg.fusion.hidden_dim or d)
        self.dim = d
        self.cosine = cfg.similarity == "cosine"
        # time_query "next": softmax queries measure time gaps from the event they predict
        self.next_query = cfg.time_bias > 0 and cfg.time_query == "next"

    def forward(self, features: Dict[str, torch.Tensor], offsets: torch.Tensor, timestamps: torch.Tensor,
                t_current: torch.Tensor, category: Optional[torch.Tensor] = None) -> torch.Tensor:
        """features: name → ``[N, D_f]`` packed rows; offsets ``[B+1]`` int64; timestamps ``[N]``
        int64 seconds; t_current ``[B]`` int64 seconds; ``category [N]`` int64 category indices
        (needed with ``interests.count`` > 0, which also reads ``features["category"]``). Returns
        the user embedding ``[B, D]``."""
        return self.forward_with_aux(features, offsets, timestamps, t_current, category)[0]

    def _interest_inputs(self, features: Dict[str, torch.Tensor],
                         category: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(category embeddings [N, D], category indices [N])`` for the interests; a clear error
        when either is missing."""
        if category is None:
            raise ValueError("interests.count > 0 needs the history's category indices (category)")
        if "category" not in features:
            raise KeyError("missing feature category (the interests read its embeddings)")
        return features["category"], category

    def _split(self, offsets: torch.Tensor, n: int,
               device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(head_rows, head_offsets, tail_rows, tail_offsets)`` of :func:`split_tail` at
        ``short_len``; without a short branch every one of the ``n`` rows is a head row and the
        tail is empty."""
        if self.has_short:
            return split_tail(offsets, self.short_len)
        rows = torch.arange(n, device=device)
        return rows, offsets, rows[:0], torch.zeros_like(offsets)

    def _fuse(self, branches: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Branch outputs ``[long,] [short]`` (each ``[B, D]``) → ``(user [B, D], balance)``: the
        MoE over all of them, or with ``fusion.long: residual`` the MoE over the short branch plus
        ``long_scale ⊙ long`` (``long_scale [D]``). In training, ``fusion.short_dropout`` of the
        rows get zeros for the short branch's output."""
        if self.training and self.long_detach and self.has_long:  # the long branch's output is the first
            branches = [branches[0].detach()] + branches[1:]
        if self.training and self.short_dropout > 0.0:  # the short branch's output is the last
            short = branches[-1]
            keep = torch.rand(short.shape[0], 1, device=short.device) >= self.short_dropout
            branches = branches[:-1] + [short * keep.to(short.dtype)]
        scale = self.long_scale
        if self.long_residual and scale is not None:
            user, balance = self.fusion(branches[1:])
            return user + scale * branches[0], balance
        return self.fusion(branches)

    @torch.jit.export
    def forward_with_aux(self, features: Dict[str, torch.Tensor], offsets: torch.Tensor,
                         timestamps: torch.Tensor, t_current: torch.Tensor,
                         category: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward`, also returning the weighted load-balancing loss (0-d).

        The user embedding is L2-normalised when ``similarity`` is cosine (:func:`scoring_vectors`)."""
        parts = self.forward_parts(features, offsets, timestamps, t_current, category)
        return parts[0], parts[1]

    def _long_input(self, h: torch.Tensor, head_rows: torch.Tensor) -> torch.Tensor:
        """The long branch's input rows ``h[head_rows]`` ``[N_long, D]``, detached from the
        embeddings under ``long_input_grad: false``."""
        x = h[head_rows]
        return x if self.long_input_grad else x.detach()

    def _no_interests(self, r: int, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Empty interest outputs for ``r`` users or rows: ``[R, 0, D]``, ``[R, 0]`` bool, ``[R, 0]`` int64."""
        return (like.new_zeros(r, 0, self.dim), torch.zeros(r, 0, dtype=torch.bool, device=like.device),
                torch.zeros(r, 0, dtype=torch.int64, device=like.device))

    @torch.jit.export
    def forward_parts(self, features: Dict[str, torch.Tensor], offsets: torch.Tensor,
                      timestamps: torch.Tensor, t_current: torch.Tensor, category: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward_with_aux` and the category interests it read: ``(user [B, D], balance,
        tokens [B, M, D], valid [B, M], token_category [B, M] int64)`` (M = 0 without interests)."""
        h = self.combine(features)
        n = h.shape[0]
        head_rows, head_off, tail_rows, tail_off = self._split(offsets, n, h.device)
        # the time of each history's last event: the intent readout's and the copy path's query time
        t_last = timestamps[last_index(offsets)] if n > 0 else t_current
        branches: List[torch.Tensor] = []
        nt: Optional[torch.Tensor] = None
        if self.next_query:
            nt = next_event_times(timestamps, offsets, t_current)
        short_out: Optional[torch.Tensor] = None
        if self.has_short:
            if self.short_input > self.short_len:  # several short layers: their receptive field
                _, _, tail_rows, tail_off = split_tail(offsets, self.short_input)
            sq: Optional[torch.Tensor] = None
            if nt is not None:
                sq = nt[tail_rows]
            short_out = self.short(h[tail_rows], tail_off, timestamps[tail_rows], sq)
        if self.has_long:
            seg = segment_ids(offsets, n)
            tau = temporal_decay(timestamps, t_current, seg, self.decay_period, h.dtype)
            lq: Optional[torch.Tensor] = None
            if nt is not None:  # head row m feeds the prediction made K rows later
                lq = nt[head_rows + self.short_len] if self.has_short else nt
            branches.append(self.long(self._long_input(h, head_rows), head_off, tau[head_rows], timestamps[head_rows], lq,
                                      short_out, t_last))
        tokens, valid, token_cat = self._no_interests(offsets.numel() - 1, h)
        if self.has_interests and short_out is not None:
            cat_emb, cat = self._interest_inputs(features, category)
            tokens, valid, token_rows = self.interests(h, cat_emb, cat, offsets, timestamps)
            token_cat = cat[token_rows] if n > 0 else token_rows
            branches.append(self.interest_read(short_out, tokens, valid))
        if short_out is not None:
            branches.append(short_out)
        user, balance = self._fuse(branches)
        scale = self.copy_scale
        if self.has_copy and short_out is not None and scale is not None:
            user = user + scale * self.copy(h[head_rows], head_off, timestamps[head_rows], short_out, t_last)
        return scoring_vectors(user, self.cosine), balance * self.load_balance_weight, tokens, valid, token_cat

    def forward_all_positions(self, features: Dict[str, torch.Tensor], offsets: torch.Tensor,
                              timestamps: torch.Tensor, t_current: torch.Tensor,
                              last_rows: int = 0, category: Optional[torch.Tensor] = None
                              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`rows_and_long` without the long branch's rows."""
        user, balance, _ = self.rows_and_long(features, offsets, timestamps, t_current, last_rows, category)
        return user, balance

    def rows_and_long(self, features: Dict[str, torch.Tensor], offsets: torch.Tensor,
                      timestamps: torch.Tensor, t_current: torch.Tensor,
                      last_rows: int = 0, category: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`rows_parts` without the interests."""
        parts = self.rows_parts(features, offsets, timestamps, t_current, last_rows, category)
        return parts[0], parts[1], parts[2]

    def rows_parts(self, features: Dict[str, torch.Tensor], offsets: torch.Tensor,
                   timestamps: torch.Tensor, t_current: torch.Tensor,
                   last_rows: int = 0, category: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One user embedding per history row ``[N, D]`` (all-position training) and the weighted
        load-balancing loss (0-d); inputs as :meth:`forward`.

        Row ``r`` of a history is the user embedding for the prefix ending at ``r`` (its target is
        the next event): the short branch sees the K rows ending at ``r`` (sliding window), the
        long branch's output for the prefix ending at ``r - K`` (the learned empty vector when
        ``r < K``), both fused per row. Exact (equal to :meth:`forward` on that prefix) for towers
        without TADN layers. With TADN it is a training surrogate: τ is taken against the
        example's ``t_current`` for every row, and h̄ is the running mean
        (:meth:`LongBranch.forward_rows`). No row depends on a later row in either case.

        ``last_rows`` M > 0 (``data.supervised_rows``): only the last M rows of each history get
        their embedding, equal to the rows computed without it; every other row is 0. The short
        branch then runs on the rows the last M need (M + its receptive field − 1), the fusion on
        the M rows; the long branch still scans every row (its memory needs them).

        Returns ``(user [N, D], balance, long [N, D])``: ``long`` is the long branch's output for
        every row (the prefix ending K rows earlier, the learned empty vector before that), with
        its gradient (the auxiliary loss's input, ``model.long_aux_weight``); ``[0, D]`` without a
        long branch; then the category interests of every row (all rows, also with ``last_rows``):
        ``tokens [N, M, D]``, ``valid [N, M]``, ``token_category [N, M]`` int64 (M = 0 without them).
        """
        h = self.combine(features)
        n = h.shape[0]
        nt: Optional[torch.Tensor] = None
        if self.next_query:
            nt = next_event_times(timestamps, offsets, t_current)
        sel_rows: Optional[torch.Tensor] = None  # the rows computed, when not every row
        if last_rows > 0:
            sel_rows = split_tail(offsets, last_rows)[2]
        branches: List[torch.Tensor] = []
        long_all = h.new_zeros(0, self.dim)
        # the short branch's output at every row (0 where it is not computed)
        short_rows: Optional[torch.Tensor] = None
        short_sel: Optional[torch.Tensor] = None
        if self.has_short:
            if sel_rows is not None:  # the rows the last M rows read: their receptive fields
                _, _, sub_rows, sub_off = split_tail(offsets, last_rows + self.short_input - 1)
                sq: Optional[torch.Tensor] = None
                if nt is not None:
                    sq = nt[sub_rows]
                sub_out = self.short.forward_rows(h[sub_rows], sub_off, timestamps[sub_rows], sq)
                _, _, keep, _ = split_tail(sub_off, last_rows)
                short_sel = sub_out[keep]
                short_rows = h.new_zeros(n, self.dim).index_copy(0, sel_rows, short_sel)
            else:
                short_rows = self.short.forward_rows(h, offsets, timestamps, nt)
                short_sel = short_rows
        head_rows, head_off, _, _ = self._split(offsets, n, h.device)
        if self.has_long:
            seg = segment_ids(offsets, n)
            tau = temporal_decay(timestamps, t_current, seg, self.decay_period, h.dtype)
            lq: Optional[torch.Tensor] = None
            if nt is not None:  # head row m feeds the prediction made K rows later
                lq = nt[head_rows + self.short_len]
            intent_rows: Optional[torch.Tensor] = None
            t_query: Optional[torch.Tensor] = None
            if self.long_intent and short_rows is not None:  # the prediction K rows later reads row m
                intent_rows = short_rows[head_rows + self.short_len]
                t_query = timestamps[head_rows + self.short_len]
            rows = self.long.forward_rows(self._long_input(h, head_rows), head_off, tau[head_rows], timestamps[head_rows], lq,
                                          intent_rows, t_query)
            # head row m of a history feeds the prefix ending K rows later
            long_out = self.long.empty.unsqueeze(0).expand(n, self.dim)
            long_out = long_out.index_copy(0, head_rows + self.short_len, rows)
            long_all = long_out
            branches.append(long_out if sel_rows is None else long_out[sel_rows])
        tokens, valid, token_cat = self._no_interests(n, h)
        if self.has_interests and short_sel is not None:
            cat_emb, cat = self._interest_inputs(features, category)
            tokens, valid, token_rows = self.interests.forward_rows(h, cat_emb, cat, offsets, timestamps)
            token_cat = cat[token_rows] if n > 0 else token_rows
            sel_tokens, sel_valid = tokens, valid
            if sel_rows is not None:
                sel_tokens, sel_valid = tokens[sel_rows], valid[sel_rows]
            branches.append(self.interest_read(short_sel, sel_tokens, sel_valid))
        if short_sel is not None:
            branches.append(short_sel)
        user, balance = self._fuse(branches)
        if self.has_copy and short_rows is not None and self.copy_scale is not None:
            reader = self.copy.forward_rows(h[head_rows], head_off, timestamps[head_rows],
                                            short_rows[head_rows + self.short_len],
                                            timestamps[head_rows + self.short_len])
            copied = h.new_zeros(n, self.dim).index_copy(0, head_rows + self.short_len, reader)
            user = user + self.copy_scale * (copied if sel_rows is None else copied[sel_rows])
        user = scoring_vectors(user, self.cosine)
        if sel_rows is not None:
            user = h.new_zeros(n, self.dim).index_copy(0, sel_rows, user)
        return user, balance * self.load_balance_weight, long_all, tokens, valid, token_cat


def score(user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Dot-product scores ``[B, M]`` of user embeddings ``[B, D]`` against items ``[M, D]``."""
    return user @ items.t()
