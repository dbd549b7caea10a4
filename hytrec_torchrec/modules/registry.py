"""The long branch's layers, by the letter that names them in ``model.long_pattern``.

Each entry builds one token mixer from the tower config with keyword calls; the branch wraps it in
a pre-norm residual :class:`~hytrec_torchrec.modules.layers.Block` and calls it as ``layer(x, ctx)``
with a :class:`~hytrec_torchrec.modules.layers.SeqContext` (rows ``x [N, D]`` in, ``[N, D]`` out,
or ``[B, D]`` with ``ctx.last_only``). A new layer type is its mixer class and one entry in
:data:`LAYERS`; a job config accepts every letter listed here (:func:`check_pattern`).
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple

from torch import nn

from hytrec_torchrec.config import ConfigError
from hytrec_torchrec.modules.config import TowerConfig
from hytrec_torchrec.modules.layers import SoftmaxMixer, TADNMixer
from hytrec_torchrec.modules.memory import GatedDeltaMixer

__all__ = ["LAYERS", "Layer", "build_layer", "check_pattern", "layer_letters"]


class Layer(NamedTuple):
    """One registered layer: what it is, and how it is built from the tower config."""

    description: str
    build: Callable[[TowerConfig], nn.Module]


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


def check_pattern(pattern: str, key: str = "long_pattern") -> None:
    """``ConfigError`` naming ``key`` when ``pattern`` has a letter no layer is registered under.
    Called when a job config is loaded (``runtime/config.py``) and when a branch is built."""
    bad = sorted(set(pattern) - set(LAYERS))
    if bad:
        raise ConfigError(f"{key}: {pattern!r} has letters {bad}; use {layer_letters()}")


def build_layer(letter: str, cfg: TowerConfig) -> nn.Module:
    """The token mixer for ``letter`` (``ConfigError`` naming the known letters for another)."""
    check_pattern(letter, "long_pattern")
    return LAYERS[letter].build(cfg)
