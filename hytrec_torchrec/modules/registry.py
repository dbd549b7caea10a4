"""The long branch's layers, by the letter that names them in ``model.long_pattern``.

Each entry builds one token mixer from the tower config with keyword calls; the branch wraps it in
a pre-norm residual :class:`~hytrec_torchrec.modules.layers.Block` and calls it as ``layer(x, ctx)``
with a :class:`~hytrec_torchrec.modules.layers.SeqContext` (rows ``x [N, D]`` in, ``[N, D]`` out,
or ``[B, D]`` with ``ctx.last_only``). A new layer type is its mixer class and one entry in
:data:`LAYERS`; the config accepts every letter listed here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, NamedTuple

from torch import nn

from hytrec_torchrec.modules.layers import SoftmaxMixer, TADNMixer
from hytrec_torchrec.modules.memory import GatedDeltaMixer

if TYPE_CHECKING:  # typing only: modules/config.py imports this module to check the pattern
    from hytrec_torchrec.modules.config import TowerConfig

__all__ = ["LAYERS", "Layer", "build_layer", "layer_letters"]


class Layer(NamedTuple):
    """One registered layer: what it is, and how it is built from the tower config."""

    description: str
    build: Callable[["TowerConfig"], nn.Module]


def memory_layer(cfg: TowerConfig) -> nn.Module:
    """``T``: a linear-time memory layer, the gated delta rule or the paper's TADN (``tadn.gating``)."""
    t = cfg.tadn
    if t.gating == "gated_delta":
        return GatedDeltaMixer(dim=cfg.embedding_dim, heads=cfg.heads, chunk_size=t.chunk_size, key_dim=t.key_dim)
    return TADNMixer(dim=cfg.embedding_dim, heads=cfg.heads, alpha=t.alpha, learn_alpha=t.learn_alpha,
                     temporal_gate=t.temporal_gate, chunk_size=t.chunk_size, impl=t.impl)


def softmax_layer(cfg: TowerConfig) -> nn.Module:
    """``S``: causal softmax attention over the whole long part (O(L²))."""
    return SoftmaxMixer(dim=cfg.embedding_dim, heads=cfg.heads, group_waste=cfg.softmax_group_waste,
                        dropout=cfg.dropout, window=0, max_distance=cfg.position_bias,
                        time_buckets=cfg.time_bias)


#: pattern letter -> layer
LAYERS: Dict[str, Layer] = {
    "T": Layer("long memory (gated delta rule, or TADN with tadn.gating: paper)", memory_layer),
    "S": Layer("causal softmax attention", softmax_layer),
}


def layer_letters() -> str:
    """The letters ``long_pattern`` may use, with what each builds (for error messages)."""
    return ", ".join(f"{letter} ({layer.description})" for letter, layer in LAYERS.items())


def build_layer(letter: str, cfg: TowerConfig) -> nn.Module:
    """The token mixer for ``letter`` (``ValueError`` naming the known letters for another)."""
    if letter not in LAYERS:
        raise ValueError(f"unknown layer letter {letter!r} in pattern {cfg.long_pattern!r}; use {layer_letters()}")
    return LAYERS[letter].build(cfg)
