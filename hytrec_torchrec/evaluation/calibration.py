"""Calibration of the repeat gate (``model.repeat_gate``): its predicted probability that the
next item is one the user already has, against how often that is so, per segment and in
probability bins (a reliability table).

Each example adds its gate probability ``p`` and its label ``y`` (the target is in its history)
to every segment it belongs to. Per segment the report shows the mean of ``p`` (predicted) and of
``y`` (observed); over all examples, the expected calibration error
``ECE = Σ_bins n_bin / n · |mean p − mean y|`` over :data:`BINS` equal-width bins. Sums are
float64 and summed over ranks (collective under a process group).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.distributed as dist

__all__ = ["GateCalibration", "BINS"]

#: equal-width probability bins of the reliability table
BINS = 10


class GateCalibration:
    """Accumulates ``(p, y)`` per segment and per probability bin.

    Args:
        segments: segment names, in the order of the membership columns.
    """

    def __init__(self, segments: Sequence[str]) -> None:
        self.names = list(segments)
        s = len(self.names)
        self.seg = torch.zeros(s, 3, dtype=torch.float64)  # [S, (n, Σp, Σy)]
        self.bins = torch.zeros(BINS, 3, dtype=torch.float64)  # [BINS, (n, Σp, Σy)]

    def update(self, prob: torch.Tensor, label: torch.Tensor, member: torch.Tensor) -> None:
        """``prob [B]`` in [0, 1], ``label [B]`` bool, ``member [B, S]`` bool (valid examples only)."""
        p = prob.detach().to(torch.float64).cpu()
        y = label.to(torch.float64).cpu()
        m = member.to(torch.float64).cpu()
        self.seg += torch.stack([m.sum(0), (m * p[:, None]).sum(0), (m * y[:, None]).sum(0)], 1)
        b = (p * BINS).floor().clamp(0, BINS - 1).to(torch.int64)
        rows = torch.stack([torch.ones_like(p), p, y], 1)
        self.bins.index_add_(0, b, rows)

    def compute(self) -> Dict[str, object]:
        """``{"segments": {name: {"examples", "predicted", "observed"}}, "bins": [{"lo", "hi",
        "examples", "predicted", "observed"}], "ece", "examples"}`` over every rank."""
        seg, bins = self.seg.clone(), self.bins.clone()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(seg)
            dist.all_reduce(bins)

        def row(v: torch.Tensor) -> Dict[str, float]:
            n = float(v[0])
            return {"examples": int(n), "predicted": round(float(v[1]) / n, 4) if n else float("nan"),
                    "observed": round(float(v[2]) / n, 4) if n else float("nan")}

        out_bins: List[Dict[str, float]] = []
        for i in range(BINS):
            out_bins.append({"lo": i / BINS, "hi": (i + 1) / BINS, **row(bins[i])})
        total = float(bins[:, 0].sum())
        ece = float((bins[:, 1] - bins[:, 2]).abs().sum()) / total if total else float("nan")
        return {"segments": {n: row(seg[i]) for i, n in enumerate(self.names)},
                "bins": out_bins, "ece": round(ece, 4), "examples": int(total)}
