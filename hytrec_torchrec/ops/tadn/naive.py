"""The TADN delta rule one token at a time: the reference the chunked and GPU forms are tested
against (slow, obviously correct). Rule, shapes and state convention: :mod:`hytrec_torchrec.ops.tadn`."""


from typing import List, Optional, Tuple

import torch

from hytrec_torchrec.ops.tadn.chunk import check_inputs

__all__ = ["delta_rule_recurrent"]


def delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, erase: torch.Tensor,
                         write: torch.Tensor, offsets: torch.Tensor, initial_state: Optional[torch.Tensor] = None,
                         output_final_state: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The recurrence one token at a time, all sequences advanced together.

    Args:
        q, k: ``[N, H, dk]``; v: ``[N, H, dv]``; erase, write: ``[N, H]``; offsets: ``[B+1]`` int64;
        initial_state: ``[B, H, dk, dv]`` (``Sᵀ`` per sequence) or None (zero).
    Returns:
        ``(o [N, H, dv], final_state [B, H, dk, dv] or None)`` with ``o_t = S_t q_t`` and
        ``S_t = S_{t-1} (I - erase_t k_t k_tᵀ) + write_t v_t k_tᵀ``; an empty sequence's final
        state is its initial state.
    """
    check_inputs(q, k, v, erase, write, offsets, initial_state)
    n, h, dk = q.shape
    dv = v.shape[-1]
    b = offsets.numel() - 1
    init = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state
    if n == 0:
        return v.new_zeros(0, h, dv), (init if output_final_state else None)
    lengths = offsets[1:] - offsets[:-1]
    order = torch.argsort(lengths, descending=True, stable=True)  # longest first
    steps = torch.arange(int(lengths.max()), device=q.device)
    live = lengths[order].unsqueeze(0) > steps.unsqueeze(1)  # [T, B]: sequence still running at t
    rows = (offsets[:-1][order].unsqueeze(0) + steps.unsqueeze(1))[live]  # time-major row order
    counts: List[int] = live.sum(1).tolist()
    # One gather + split (its backward is a single concatenation), not a gather per step.
    qs, ks, vs = (torch.split(x[rows], counts) for x in (q, k, v))
    as_, bs = (torch.split(x[rows], counts) for x in (erase, write))
    S = init[order[:counts[0]]].transpose(-1, -2)  # [m, H, dv, dk], sorted order
    finals: List[torch.Tensor] = []  # states of the sequences that end, in sorted order from the back
    outs: List[torch.Tensor] = []
    for t, m in enumerate(counts):
        if m < S.shape[0]:  # sequences m.. ended at the previous step
            finals.append(S[m:])
        k_t, v_t, q_t = ks[t], vs[t], qs[t]  # [m, H, d]
        a_t = as_[t][..., None]  # [m, H, 1]
        b_t = bs[t][..., None]
        S = S[:m]
        # S (I - a k kᵀ) + b v kᵀ  ==  S + (b v - a S k) kᵀ   (elementwise products: tiny matmuls
        # are slow on a busy CPU, and this is the literal rank-1 update)
        Sk = (S * k_t.unsqueeze(-2)).sum(-1)  # [m, H, dv]
        S = S + (b_t * v_t - a_t * Sk).unsqueeze(-1) * k_t.unsqueeze(-2)
        outs.append((S * q_t.unsqueeze(-2)).sum(-1))  # S q
    o = v.new_zeros(n, h, dv).index_copy(0, rows, torch.cat(outs))
    if not output_final_state:
        return o, None
    ended = torch.cat([S] + finals[::-1]).transpose(-1, -2)  # sorted order, non-empty sequences
    return o, init.index_copy(0, order[:counts[0]], ended)
