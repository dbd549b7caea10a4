"""Typed configuration of the HyTRec tower (loaded with :func:`hytrec_torchrec.config.from_dict`).

Baselines are configs of the same code (examples in ``configs/model/*.yaml``):

* HyTRec (default): the long-memory tower, ``long_pattern: TTT`` with ``tadn.gating:
  gated_delta``, ``long_time_inputs``, ``long_readout: intent``, the repeat path (``repeat``), and
  ``short_len: 64`` (docs/tower.md, "The default tower").
* HyTRec as in the paper: ``long_pattern: TTTS``, ``tadn.gating: paper``, ``long_readout: last``,
  ``long_time_inputs: false``, ``repeat: false`` (``configs/model/hytrec_paper.yaml``).
* SASRec-like softmax-only: ``long_pattern: SSSS`` (``short_len: 0`` = no short branch, the long
  branch then sees the whole history).
* TADN-only: ``long_pattern: TTTT``, ``short_len: 0``.
* Short-only: ``long_pattern: ""`` (events before the last ``short_len`` are ignored).
* Plain DeltaNet: ``tadn.temporal_gate: false`` (g ≡ 1, erase = write = β).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from hytrec_torchrec.config import ConfigError, check_choice, check_range
from hytrec_torchrec.schema import TABLES

__all__ = ["TADNConfig", "FusionConfig", "InterestConfig", "UlimConfig", "TowerConfig", "FEATURES", "fill_pre_memory_keys"]

FEATURES = TABLES  # the ID tables a tower may read


@dataclass
class TADNConfig:
    """Temporal-Aware Delta Network layer settings."""

    decay_period: float = 7 * 86400.0
    """T in τ_t = exp(−(t_current − t_t)/T), seconds."""
    alpha: float = 0.5
    """α in g_t = α·[σ(·) ⊙ τ_t] + (1−α)·g_static; initial value when ``learn_alpha``."""
    learn_alpha: bool = False
    temporal_gate: bool = True
    """False gives plain DeltaNet: g ≡ 1 (erase = write = β)."""
    chunk_size: int = 64
    impl: str = "auto"
    """auto | chunked | recurrent | gpu (gpu and auto fall back to chunked without the kernel)."""
    gating: str = "gated_delta"
    """paper: the paper's TADN (erase g·β with the temporal gate g, write β; reads τ relative to the
    request time and the sequence mean). gated_delta: the gated delta rule with a learned decay
    driven by the gap to the previous event (:class:`~hytrec_torchrec.modules.memory.GatedDeltaMixer`;
    exact in all-position training). decay_period, alpha, learn_alpha, temporal_gate and impl apply
    to ``paper`` only."""
    key_dim: int = 0
    """Key/query width per head of ``gated_delta`` layers and of the intent readout; 0 = the head
    width (embedding_dim / heads). Wider keys hold more associations before writes interfere."""

    def validate(self) -> None:
        check_range("decay_period", self.decay_period, 0.0, lo_open=True)
        check_range("alpha", self.alpha, 0.0, 1.0)
        if self.learn_alpha and not (0.0 < self.alpha < 1.0):
            raise ConfigError(f"alpha: {self.alpha!r} must be strictly inside (0, 1) when learn_alpha is true")
        check_range("chunk_size", self.chunk_size, 1, 1024)
        check_choice("impl", self.impl, ("auto", "chunked", "recurrent", "gpu"))
        check_choice("gating", self.gating, ("paper", "gated_delta"))
        check_range("key_dim", self.key_dim, 0, 1024)


@dataclass
class FusionConfig:
    """Mixture-of-experts fusion of the branch outputs."""

    num_experts: int = 4
    hidden_dim: int = 0
    """Expert MLP hidden width; 0 means embedding_dim."""
    load_balance_weight: float = 0.01
    long: str = "concat"
    """How the long branch joins: ``concat`` (an input of the MoE beside the short branch, the
    paper's form) or ``residual`` (the MoE fuses the short branch alone and the long branch is
    added to its output through a per-channel scale that starts at 0, so an untrained long
    branch changes nothing and the tower starts as its own short-only ablation)."""
    long_detach: bool = False
    """Training only: the fusion reads the long branch's output without its gradient, so the
    fused loss does not train the long branch; it then learns only from its own loss
    (``model.long_aux_weight``), against the "greedy learner" effect where a network leans on the
    branch that learns fastest. Evaluation and serving are unchanged."""
    short_dropout: float = 0.0
    """Training only: the fraction of examples (rows) whose short-branch output is replaced by
    zeros before the fusion, so the fusion has to predict those from the long branch alone (branch
    dropout, as modality dropout keeps a multi-input network from leaning on one input). The long
    branch's intent readout still reads the short branch. 0 = off; evaluation never drops."""

    def validate(self) -> None:
        check_range("num_experts", self.num_experts, 1)
        check_range("short_dropout", self.short_dropout, 0.0, 1.0, hi_open=True)
        check_choice("long", self.long, ("concat", "residual"))
        check_range("hidden_dim", self.hidden_dim, 0)
        check_range("load_balance_weight", self.load_balance_weight, 0.0)


@dataclass
class InterestConfig:
    """Interests by category (:mod:`~hytrec_torchrec.modules.interests`): the top ``count``
    categories of each history, each read as one token from its own subsequence, attended by the
    short branch's output and fused as one more branch. Needs a short branch and category ids."""

    count: int = 0
    """M: the categories each prediction reads (by recency-weighted count); 0 = off."""
    memory: str = "delta"
    """The long-term interest of a category: ``delta`` (a gated-delta memory over its whole
    subsequence) or ``mean`` (a time-decayed mean of its rows, the cheap form)."""
    recent: int = 8
    """Rows of a category's subsequence in its short-term interest (their mean)."""
    half_life: float = 64.0
    """Events: a category's weight in the recency-weighted count halves every ``half_life`` events."""
    mean_period: float = 30 * 86400.0
    """Seconds: the ``mean`` memory's decay, ``exp(−Δt / mean_period)`` between a category's events."""
    chunk_size: int = 16
    """Rows per chunk of the ``delta`` memory's chunked scan. Category subsequences are short (a few
    to a few hundred rows) and every one is padded to whole chunks, so chunks of the long branch's
    64 rows would be mostly padding (measured: 4.7× slower per request on Complete Journey)."""

    def validate(self) -> None:
        check_range("interests.count", self.count, 0, 256)
        check_choice("interests.memory", self.memory, ("delta", "mean"))
        check_range("interests.recent", self.recent, 1, 4096)
        check_range("interests.half_life", self.half_life, 0.0, lo_open=True)
        check_range("interests.mean_period", self.mean_period, 0.0, lo_open=True)
        check_range("interests.chunk_size", self.chunk_size, 1, 1024)


@dataclass
class UlimConfig:
    """ULIM's head (``model.kind: ulim``, :mod:`~hytrec_torchrec.modules.ulim`): next-category
    prediction and one user embedding per category."""

    top_categories: int = 10
    """Kc: the cascade scores only the items of each user's Kc most probable categories."""
    category_weight: float = 1.0
    """Weight of the next-category loss (−log p(category of the target)) beside the item loss."""
    pointer: bool = True
    """PGIN's pointer over the history's top categories; false = the generator alone."""
    hidden: int = 0
    """Hidden width of the per-category user embedding's MLP; 0 = embedding_dim."""

    def validate(self) -> None:
        check_range("ulim.top_categories", self.top_categories, 1)
        check_range("ulim.category_weight", self.category_weight, 0.0)
        check_range("ulim.hidden", self.hidden, 0, 8192)


@dataclass
class TowerConfig:
    """The HyTRec tower: input combination, long/short branches, fusion."""

    kind: str = "hytrec"
    """``hytrec``: one user embedding scored against the whole catalog. ``ulim``: the same tower
    (with ``interests``) plus ULIM's head: a pointer-generator predicts the next category and each
    category gets its own user embedding; evaluation ranks items by p(category) × p(item | category)
    and reports the cascade over the top ``ulim.top_categories`` (docs/ulim.md)."""
    embedding_dim: int = 64
    features: List[str] = field(default_factory=lambda: list(FEATURES))
    feature_combine: str = "sum"
    """sum (all feature embeddings are embedding_dim wide) | concat (concat + linear projection)."""
    short_len: int = 64
    """K: the short branch sees the last K events, the long branch the rest; 0 disables the short branch."""
    short_heads: int = 2
    short_layers: int = 1
    """Softmax layers in the short branch (docs/design.md §4: 1). Each attends over a sliding window of
    ``short_len`` rows, so with L layers the branch output for the last event depends on its last
    L·(K−1)+1 events (the receptive field), which :meth:`HyTRecTower.forward` feeds it; the long
    branch still takes everything before the last K. L > 1 is a documented extension
    (docs/tower.md "Deeper short branch"), not part of the paper's design."""
    long_pattern: str = "TTT"
    """One letter per long-branch layer: T = TADN, S = causal softmax; empty disables the branch.
    The paper's form is ``TTTS`` (3 TADN : 1 softmax)."""
    long_readout: str = "intent"
    """How the long branch's answer is read: ``last`` (the paper's form: the final layer's output at
    the last long row, K events before the query, computed without the current intent) or
    ``intent`` (:class:`~hytrec_torchrec.modules.memory.IntentReadout`: a gated-delta memory over
    the long branch's rows, queried with the short branch's output and the time since the last
    long event; needs a short branch). With ``intent`` every long layer runs on every row, so an
    S layer in ``long_pattern`` then costs O(L²); use T layers only for linear cost."""
    long_checkpoint: bool = False
    """Training: activation checkpointing of the long branch, block by block (each block's
    activations are recomputed in the backward pass instead of kept), so that very long histories
    fit in memory at about one more forward pass of the branch (benchmarks/bench_memory.py)."""
    long_input_grad: bool = True
    """Whether the long branch's gradient reaches the event embeddings it reads (the tables and the
    feature combiner). ``False``: it reads them detached, so the tables are trained by the target
    side and the short branch only; the long branch's own parameters still learn."""
    long_time_inputs: bool = True
    """Add a learned embedding of the log-bucketed gap to the previous event (64 buckets) to every
    long-branch input row: time for the long layers, exact in all-position training."""
    far_copy: bool = False
    """A repeat path in embedding space: a gated-delta memory written with the embeddings of the
    events before the last K (keys from them, values the embeddings themselves), read with the
    short branch's output, and the answer (a weighted mix of far events' embeddings) added to the
    user embedding with a learned scale, so a far item's own embedding reaches its score directly
    (:class:`~hytrec_torchrec.modules.memory.IntentReadout` with ``copy``). Needs a short branch;
    works with or without the long branch. O(L) per history, exact in all-position training."""
    repeat: bool = True
    """The repeat path (:mod:`~hytrec_torchrec.modules.repeat`): a learned score bonus for the
    items already in the history, from how often, how many events ago and how long ago each was
    last seen, switched by the user embedding. Changes the score of history items in training,
    evaluation and serving alike; O(L) per request."""
    repeat_cycles: bool = True
    """Cycle features in the repeat path: whether the item's last occurrence was a cycle event
    (purchase-like; ``data.cycle_behaviors``), how many cycle events it had, the time since the
    last one, and that elapsed time over the item's own mean gap between cycle events, in events
    and in seconds (quarter-octave buckets, so "due again" is learnable). O(L) per request after
    one sort; exact in all-position training. Read only with ``repeat: true``."""
    repeat_scorer: str = "mlp"
    """How the repeat path turns a pair's bucket embeddings into its score: ``additive`` (their
    sum) or ``mlp`` (their sum through one hidden layer of ``repeat_hidden`` units, so that one
    feature can change what another means: an elapsed/gap ratio of 1 says "due" for an item bought
    on a regular cycle and little for one bought at random)."""
    repeat_hidden: int = 32
    """Hidden width of the ``mlp`` repeat scorer."""
    repeat_gate: bool = False
    """A repeat/explore gate in the repeat path: the probability that the next item is one of the
    history's, from the user embedding and the strongest repeat evidence, trained with its own
    binary cross-entropy target (weight ``repeat_gate_weight``); its logit shifts every history
    item's score through a learned scale (docs/tower.md, "The repeat path")."""
    repeat_gate_weight: float = 0.1
    """Weight of the gate's binary cross-entropy in the training loss (``repeat_gate``)."""
    long_aux_weight: float = 0.0
    """All-position training: weight of an auxiliary loss on the long branch's output alone, which
    predicts each of the ``long_aux_window`` events after a row's next target (sampled softmax
    against the batch's negatives, a dense all-action loss as PinnerFormer's), so the long memory
    has a training signal of its own. 0 = off."""
    long_aux_window: int = 8
    """W, the future events each row's long-branch output predicts (``long_aux_weight``)."""
    repeat_rows: int = 1024
    """All-position training with ``repeat``: only the last ``repeat_rows`` rows of each window get
    the bonus, so its pairs grow as ``repeat_rows · L`` (linear in the window length L); windows of
    up to 1,024 events give it to every row. 0 = every row of any window (pairs grow as L²/2: cheap
    for L ≈ 1,000, too many for 10k-event windows)."""
    heads: int = 2
    ffn_mult: int = 2
    dropout: float = 0.0
    position_bias: int = 0
    """M > 0: every softmax layer (long-branch S layers and the short branch) adds a learned
    per-head bias for the query-key distance (distances >= M share one); 0 = no position signal
    beyond causality and the TADN recurrence."""
    time_bias: int = 0
    """B > 0: every softmax layer adds a learned per-head bias for the time gap between the query's
    and the key's events, in B log-scale buckets of √2 (``time_gap_bucket``: 1 min → 11, 1 day →
    32, 1 year → 49; gaps past the last bucket share it); 0 = softmax layers see no time.
    Costs a ``[B, H, L, L]`` bias per softmax layer (measured: benchmarks/results/time_bias_cpu.txt):
    for windows of hundreds of events, not 10k."""
    time_query: str = "event"
    """Which time the time-gap bias measures from, for query row i (used when ``time_bias`` > 0):
    ``event`` = the row's own event (gap t_i − t_j); ``next`` = the time of the event the row's
    output predicts, t_{i+1}, and for the last row ``t_current`` (the request time; offline, the
    target's timestamp), as HSTU's relative time bias does. With ``next`` the user embedding
    depends on how long ago each history event was at request time, not at the last event."""
    softmax_group_waste: float = 0.25
    """Softmax layers pad per group of similar lengths; max padding fraction within a group."""
    similarity: str = "dot"
    """dot | cosine: scores are ``u·e`` or, with cosine, ``û·ê`` (user and item vectors L2-normalised,
    as generative-recommenders trains SASRec and HSTU); training, evaluation and serving agree."""
    temperature: float = 1.0
    """Training logits are scores / temperature (generative-recommenders uses 0.05 with cosine)."""
    tadn: TADNConfig = field(default_factory=TADNConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    interests: InterestConfig = field(default_factory=InterestConfig)
    ulim: UlimConfig = field(default_factory=UlimConfig)

    def validate(self) -> None:
        check_range("embedding_dim", self.embedding_dim, 1)
        if not self.features:
            raise ConfigError("features: at least one feature is required")
        for i, f in enumerate(self.features):
            check_choice(f"features[{i}]", f, FEATURES)
        if len(set(self.features)) != len(self.features):
            raise ConfigError(f"features: duplicate names in {self.features}")
        check_choice("feature_combine", self.feature_combine, ("sum", "concat"))
        check_range("short_len", self.short_len, 0)
        check_range("short_heads", self.short_heads, 1)
        check_range("short_layers", self.short_layers, 1)
        if not self.long_pattern and self.short_len == 0:
            raise ConfigError("long_pattern: empty pattern and short_len 0 leave the tower with no branch")
        check_choice("long_readout", self.long_readout, ("last", "intent"))
        if self.long_readout == "intent" and self.long_pattern and self.short_len == 0:
            raise ConfigError("long_readout: intent reads the long memory with the short branch's output; "
                              "it needs short_len > 0 (without a short branch set long_readout: last)")
        if self.fusion.long == "residual" and self.long_pattern and self.short_len == 0:
            raise ConfigError("fusion.long: residual adds the long branch to the short branch's fusion; "
                              "it needs short_len > 0 (without a short branch set fusion.long: concat)")
        if self.far_copy and self.short_len == 0:
            raise ConfigError("far_copy: the copy path is read with the short branch's output; it needs short_len > 0")
        check_choice("kind", self.kind, ("hytrec", "ulim"))
        if self.kind == "ulim" and self.interests.count == 0:
            raise ConfigError("kind: ulim reads the history's category interests (its pointer and its "
                              "per-category embeddings); set model.interests.count > 0")
        if self.interests.count > 0 and self.short_len == 0:
            raise ConfigError("interests.count: the category interests are read with the short branch's output; "
                              "they need short_len > 0")
        check_range("repeat_rows", self.repeat_rows, 0)
        check_range("repeat_gate_weight", self.repeat_gate_weight, 0.0)
        check_range("long_aux_weight", self.long_aux_weight, 0.0)
        check_range("long_aux_window", self.long_aux_window, 1, 1024)
        if self.long_aux_weight > 0 and not (self.long_pattern and self.short_len > 0):
            raise ConfigError("long_aux_weight: the auxiliary loss trains the long branch's output before the "
                              "fusion; it needs a long branch and a short branch (long_pattern and short_len > 0)")
        if self.fusion.long_detach and not self.long_pattern:
            raise ConfigError("fusion.long_detach: stops the fused loss's gradient into the long branch; "
                              "it needs a long branch (long_pattern)")
        check_choice("repeat_scorer", self.repeat_scorer, REPEAT_SCORERS)
        check_range("repeat_hidden", self.repeat_hidden, 1, 1024)
        if self.repeat_gate and not self.repeat:
            raise ConfigError("repeat_gate: part of the repeat path; it needs repeat: true")
        check_range("heads", self.heads, 1)
        if self.embedding_dim % self.heads:
            raise ConfigError(f"heads: embedding_dim {self.embedding_dim} is not divisible by heads {self.heads}")
        if self.short_len > 0 and self.embedding_dim % self.short_heads:
            raise ConfigError(
                f"short_heads: embedding_dim {self.embedding_dim} is not divisible by short_heads {self.short_heads}"
            )
        check_range("ffn_mult", self.ffn_mult, 1)
        check_range("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        check_range("softmax_group_waste", self.softmax_group_waste, 0.0)
        check_range("position_bias", self.position_bias, 0)
        check_range("time_bias", self.time_bias, 0, 128)
        check_choice("time_query", self.time_query, ("event", "next"))
        check_choice("similarity", self.similarity, ("dot", "cosine"))
        check_range("temperature", self.temperature, 0.0, lo_open=True)


#: values of ``model.repeat_scorer``: how the bucket embeddings of a repeat pair become its features
REPEAT_SCORERS = ("additive", "mlp")

#: the values of the long-memory keys that every tower had before they existed (the paper's form)
PRE_MEMORY_KEYS = {"long_readout": "last", "long_time_inputs": False, "far_copy": False, "repeat": False,
                   "repeat_cycles": False, "repeat_gate": False, "repeat_scorer": "additive"}
PRE_MEMORY_TADN_KEYS = {"gating": "paper", "key_dim": 0}


def fill_pre_memory_keys(model: dict) -> List[str]:
    """Fill, in place, the long-memory keys missing from a stored ``model`` config dict with the
    values the tower had before they existed, so that a checkpoint written then rebuilds the same
    tower whatever today's defaults are. Returns the dotted keys it filled."""
    filled = []
    for key, value in PRE_MEMORY_KEYS.items():
        if key not in model:
            model[key] = value
            filled.append(key)
    tadn = model.setdefault("tadn", {})
    for key, value in PRE_MEMORY_TADN_KEYS.items():
        if key not in tadn:
            tadn[key] = value
            filled.append("tadn." + key)
    return filled
