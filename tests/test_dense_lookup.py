"""The CPU sequence lookup of TorchRec's ``dense`` kernel (runtime/dense_lookup.py) equals a
per-table ``nn.Embedding`` lookup, in values and gradients, on fbgemm's own flat storage.
(End to end, data-parallel tables train like the unsharded model: test_train_distributed.py.)"""

from __future__ import annotations

import pytest
import torch

from hytrec_torchrec.runtime.dense_lookup import patch_dense_sequence_lookups, sequence_lookup


def _module(specs: list[tuple[int, int]], feature_table_map: list[int]) -> torch.nn.Module:
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        DenseTableBatchedEmbeddingBagsCodegen,
    )

    tbe = DenseTableBatchedEmbeddingBagsCodegen(specs, feature_table_map=feature_table_map,
                                                pooling_mode=PoolingMode.NONE, use_cpu=True)
    with torch.no_grad():
        tbe.weights.copy_(torch.randn(tbe.weights.shape, generator=torch.Generator().manual_seed(0)))
    return tbe


def test_patched_dense_kernel_returns_one_row_per_id_with_exact_gradients() -> None:
    # tables of 10 and 7 rows; features 0 -> table 0, features 1 and 2 share table 1; 2 bags each
    specs, ftm = [(10, 4), (7, 4)], [0, 1, 1]
    tbe = _module(specs, ftm)
    ids = [[1, 9, 3], [], [4, 0], [6], [6, 6], [2]]  # bags feature-major: (f0,b0), (f0,b1), (f1,b0), ...
    indices = torch.tensor([i for bag in ids for i in bag])
    offsets = torch.tensor([0] + [sum(len(b) for b in ids[: k + 1]) for k in range(len(ids))])
    assert patch_dense_sequence_lookups(torch.nn.Sequential(tbe)) == 1

    out = tbe(indices, offsets)
    # reference: each table as its own nn.Embedding, cut from the flat storage
    tables, start = [], 0
    for rows, dim in specs:
        tables.append(torch.nn.Parameter(tbe.weights.detach()[start : start + rows * dim].view(rows, dim).clone()))
        start += rows * dim
    per_feature = [indices[offsets[2 * f] : offsets[2 * f + 2]] for f in range(3)]
    want = torch.cat([tables[ftm[f]][per_feature[f]] for f in range(3)])
    assert out.shape == (9, 4)
    torch.testing.assert_close(out, want, atol=0, rtol=0)

    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weight).sum().backward()
    (want * weight).sum().backward()
    grads = torch.cat([t.grad.reshape(-1) for t in tables])
    torch.testing.assert_close(tbe.weights.grad, grads, atol=1e-6, rtol=0)
    assert tables[1].grad[6].abs().sum() > 0  # the repeated ID accumulated (3 uses)


def test_sequence_lookup_edge_cases() -> None:
    tbe = _module([(5, 2)], [0])
    empty = sequence_lookup(tbe.weights, tbe.weights_offsets, tbe.D_offsets,
                            torch.zeros(0, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    assert empty.shape == (0, 2)
    with pytest.raises(ValueError, match="one embedding dim for every feature"):
        sequence_lookup(torch.zeros(13), torch.tensor([0, 5]), torch.tensor([0, 1, 3]),
                        torch.tensor([0]), torch.tensor([0, 1, 1]))
    with pytest.raises(NotImplementedError, match="per-sample weights"):
        patch_dense_sequence_lookups(tbe)
        tbe(torch.tensor([1]), torch.tensor([0, 1]), per_sample_weights=torch.ones(1))
