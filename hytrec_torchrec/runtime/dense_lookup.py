"""Sequence lookups for TorchRec's ``dense`` embedding kernel on CPU.

TorchRec's ``dense`` compute kernel keeps a shard's tables in one flat parameter of fbgemm's
``DenseTableBatchedEmbeddingBagsCodegen`` and leaves the optimizer to the caller: the embedding
gradient is an ordinary (dense) ``.grad``, so any ``torch.optim`` optimizer can step it. That is
the only way to train sharded tables with Adam on CPU, where fbgemm's fused kernels implement
only the Adagrad family and SGD. But fbgemm-gpu-cpu 1.8.0's CPU path of that module ignores
``PoolingMode.NONE``: asked for one row per ID (what an ``EmbeddingCollection`` needs), it
returns one pooled row per bag, and the sequence lookup fails later in TorchRec with a
``split_with_sizes`` shape error.

:func:`sequence_lookup` is that lookup written with plain torch indexing (an ``F.embedding``
over the flat weights viewed as rows), and :func:`patch_dense_sequence_lookups` points every
CPU, unpooled instance of the module inside a sharded model at it. Autograd gives the flat
weights a dense gradient of the shard's size (O(rows × dim) memory and time per step): right for
catalogs of thousands to a few million rows, not for 10M-row tables, which belong on the
``fused`` kernel.

Example::

    dmp = DistributedModelParallel(model, plan=plan, ...)   # a table planned with kernel "dense"
    patch_dense_sequence_lookups(dmp)                        # -> 1 (modules patched)
"""

from __future__ import annotations

import itertools
import types
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

__all__ = ["sequence_lookup", "patch_dense_sequence_lookups", "data_parallel_lookups"]


def sequence_lookup(
    weights: torch.Tensor,
    weights_offsets: torch.Tensor,
    D_offsets: torch.Tensor,
    indices: torch.Tensor,
    offsets: torch.Tensor,
) -> torch.Tensor:
    """One embedding row per ID from fbgemm's table-batched flat storage.

    Args:
        weights: [W] every table of the module, row-major: feature ``f``'s row ``r`` is
            ``weights[weights_offsets[f] + r * D : ... + D]``.
        weights_offsets: [F] start of each *feature*'s table in ``weights`` (features that share
            a table share the offset).
        D_offsets: [F + 1] cumulative embedding dims of the features; all dims must be equal.
        indices: [N] row IDs, feature-major: feature ``f``'s IDs of bag ``b`` are
            ``indices[offsets[f * B + b] : offsets[f * B + b + 1]]``.
        offsets: [F * B + 1] bag boundaries (B bags per feature).

    Returns:
        [N, D]: row ``i`` is the embedding of ``indices[i]`` in its feature's table, in the order
        of ``indices`` (what the unpooled GPU kernel returns).
    """
    num_features = int(weights_offsets.numel())
    dims = (D_offsets[1:] - D_offsets[:-1]).tolist()
    if len(dims) != num_features or len(set(dims)) != 1:
        raise ValueError(f"unpooled lookups need one embedding dim for every feature, got {dims}")
    dim = int(dims[0])
    if (offsets.numel() - 1) % num_features:
        raise ValueError(f"{offsets.numel() - 1} bags do not split over {num_features} features")
    bags = (offsets.numel() - 1) // num_features
    bounds = offsets[:: bags] if bags else offsets.new_zeros(num_features + 1)
    per_feature = (bounds[1:] - bounds[:-1]).long()
    feature = torch.repeat_interleave(torch.arange(num_features, device=indices.device), per_feature)
    first_row = torch.div(weights_offsets.long(), dim, rounding_mode="floor")
    rows = first_row[feature] + indices.long()
    return F.embedding(rows, weights.view(-1, dim))


def _unpooled_forward(
    self: torch.nn.Module,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: Optional[torch.Tensor] = None,
    feature_requires_grad: Optional[torch.Tensor] = None,
    batch_size_per_feature_per_rank: Optional[list[list[int]]] = None,
) -> torch.Tensor:
    if per_sample_weights is not None or batch_size_per_feature_per_rank is not None:
        raise NotImplementedError(
            "the CPU sequence lookup of the dense kernel takes no per-sample weights and no "
            "variable batch sizes"
        )
    return sequence_lookup(self.weights, self.weights_offsets, self.D_offsets, indices, offsets)


def _lookups(model: torch.nn.Module) -> list[torch.nn.Module]:
    """TorchRec's embedding lookups inside ``model``. Sharded modules keep them in a plain list
    (``_lookups``, not registered as submodules); data-parallel ones are wrapped in
    ``DistributedDataParallel``."""
    return [
        lookup
        for module in model.modules()
        for lookup in getattr(module, "_lookups", None) or ()
        if isinstance(lookup, torch.nn.Module)
    ]


def _all_modules(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Every module of ``model`` and of its lookups, each once."""
    seen: set[int] = set()
    for m in itertools.chain(model.modules(), *(lookup.modules() for lookup in _lookups(model))):
        if id(m) not in seen:
            seen.add(id(m))
            yield m


def patch_dense_sequence_lookups(model: torch.nn.Module) -> int:
    """Give every CPU, unpooled ``DenseTableBatchedEmbeddingBagsCodegen`` in ``model`` the
    :func:`sequence_lookup` forward. Returns how many modules were patched (0 when no table uses
    the ``dense`` kernel on CPU); patching twice is harmless."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        DenseTableBatchedEmbeddingBagsCodegen,
    )

    patched = 0
    for module in _all_modules(model):
        if (
            isinstance(module, DenseTableBatchedEmbeddingBagsCodegen)
            and module.pooling_mode == PoolingMode.NONE
            and module.weights.device.type == "cpu"
        ):
            module.forward = types.MethodType(_unpooled_forward, module)  # type: ignore[method-assign]
            patched += 1
    return patched


def data_parallel_lookups(model: torch.nn.Module) -> list[torch.nn.parallel.DistributedDataParallel]:
    """The ``DistributedDataParallel`` wrappers TorchRec puts around the lookups of
    ``data_parallel`` tables (replicated weights whose gradients are all-reduced, averaged by
    default). The trainer gives them the same summing comm hook as the tower's DDP."""
    return [m for m in _lookups(model) if isinstance(m, torch.nn.parallel.DistributedDataParallel)]
