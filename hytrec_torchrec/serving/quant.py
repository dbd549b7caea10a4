"""Embedding tables for serving: float32, or int8 row-wise quantized, both torch-only.

Int8 row-wise (the scheme of fbgemm's ``INT8`` rowwise tables, written here with plain torch ops):
each row ``w [D]`` is stored as ``q [D]`` uint8 plus a float32 ``scale`` and ``bias`` per row with
``bias = min(w)``, ``scale = (max(w) - min(w)) / 255`` and ``q = round((w - bias) / scale)``;
a lookup returns ``q * scale + bias``. The reconstruction error per element is at most
``scale / 2`` = ``(max(w) - min(w)) / 510``.

TorchRec's own quantized ``EmbeddingCollection`` is not used because its lookups are fbgemm
operators (``torch.ops.fbgemm.*``), which a process without fbgemm cannot run (docs/export.md).
"""

from typing import Final, Tuple

import torch
from torch import nn

__all__ = ["SCORE_BLOCK_ROWS", "quantize_rows", "dequantize_rows", "ServingTable"]

#: int8 rows converted to float32 at a time when scoring (a 4 MiB temporary at D = 64).
SCORE_BLOCK_ROWS = 16_384


def quantize_rows(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise int8 quantization of ``weight [V, D]`` float.

    Returns:
        ``(q [V, D] uint8, scale [V] float32, bias [V] float32)``; a constant row gets
        ``scale = 0`` and is reproduced exactly by its bias.
    """
    w = weight.detach().to(torch.float32)
    lo = w.min(dim=1).values
    hi = w.max(dim=1).values
    scale = (hi - lo) / 255.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round((w - lo.unsqueeze(1)) / safe.unsqueeze(1)).clamp_(0, 255).to(torch.uint8)
    return q, scale, lo


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``q [M, D]`` uint8, ``scale [M]``, ``bias [M]`` → float32 rows ``[M, D]``."""
    return q.to(torch.float32) * scale.unsqueeze(1) + bias.unsqueeze(1)


class ServingTable(nn.Module):
    """One embedding table, float32 or int8 row-wise, with ``lookup`` and ``rows``.

    Args:
        weight: ``[V, D]`` float trained table.
        int8: store it row-wise quantized (:func:`quantize_rows`).
    """

    quantized: Final[bool]
    block_rows: Final[int]

    def __init__(self, weight: torch.Tensor, int8: bool = False) -> None:
        super().__init__()
        self.quantized = int8
        self.block_rows = SCORE_BLOCK_ROWS
        self.num_rows = int(weight.shape[0])
        self.dim = int(weight.shape[1])
        if int8:
            q, scale, bias = quantize_rows(weight)
            self.register_buffer("weight", q)
            self.register_buffer("scale", scale)
            self.register_buffer("bias", bias)
        else:
            self.register_buffer("weight", weight.detach().to(torch.float32).contiguous().clone())
            self.register_buffer("scale", torch.zeros(0))
            self.register_buffer("bias", torch.zeros(0))

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """Rows of ``index [N]`` int64 (valid indices) → ``[N, D]`` float32."""
        if self.quantized:
            return dequantize_rows(self.weight[index], self.scale[index], self.bias[index])
        return self.weight[index]

    def rows(self) -> torch.Tensor:
        """The whole table as float32 ``[V, D]`` (dequantized for int8)."""
        if self.quantized:
            return dequantize_rows(self.weight, self.scale, self.bias)
        return self.weight

    @torch.jit.export
    def score(self, user: torch.Tensor) -> torch.Tensor:
        """Dot products ``user [B, D]`` float32 → ``[B, V]`` with every row: ``user @ rows().T``.

        For int8 the table is never dequantized as a whole: per block of ``block_rows``
        (:data:`SCORE_BLOCK_ROWS`) rows, ``u · (q·scale + bias) = (u · q)·scale + (Σ_d u_d)·bias``,
        so the only float32 temporary is one block ``[block_rows, D]``.

        Example::

            table = ServingTable(torch.randn(100_000, 64), int8=True)
            s = table.score(torch.randn(8, 64))   # [8, 100_000]
        """
        if not self.quantized:
            return user @ self.weight.t()
        out = user.new_empty(user.shape[0], self.num_rows)
        usum = user.sum(dim=1, keepdim=True)  # [B, 1]
        for a in range(0, self.num_rows, self.block_rows):
            b = min(a + self.block_rows, self.num_rows)
            dots = user @ self.weight[a:b].to(torch.float32).t()  # [B, b - a]
            out[:, a:b] = dots * self.scale[a:b] + usum * self.bias[a:b]
        return out
