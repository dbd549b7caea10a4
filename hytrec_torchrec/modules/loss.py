"""Sampled softmax with log-Q correction over in-batch and uniform negatives."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["sampled_softmax_loss", "shared_negatives_loss", "catalog_softmax_loss", "log_q_from_counts",
           "uniform_log_q"]


def log_q_from_counts(counts: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-item log-probability of in-batch sampling, ``log(count_i / Σ counts)`` for ``ids``.

    Items with count 0 are treated as count 1 (so the log is finite).
    """
    c = counts.to(torch.float64).clamp(min=1.0)
    return (c[ids].log() - c.sum().log()).to(torch.float32)


def uniform_log_q(num_items: int) -> float:
    """Per-draw log-probability of a uniform negative over the real items of a ``num_items``-row
    table (indices 2..V-1; rows 0 and 1 are padding and unknown): ``−log(V − 2)``."""
    return -math.log(max(num_items - 2, 1))


def sampled_softmax_loss(
    user: torch.Tensor,
    pos_ids: torch.Tensor,
    pos_emb: torch.Tensor,
    target_to_example: torch.Tensor,
    pos_log_q: torch.Tensor,
    neg_ids: Optional[torch.Tensor] = None,
    neg_emb: Optional[torch.Tensor] = None,
    neg_log_q: float = 0.0,
    temperature: float = 1.0,
    in_batch: bool = True,
    example_bonus: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    r"""Sampled softmax over in-batch and shared uniform negatives, with log-Q correction.

    Shapes: ``user [B, D]``; targets ``pos_ids [T]``, ``pos_emb [T, D]``,
    ``target_to_example [T]`` (example of each target; several targets may share an example),
    ``pos_log_q [T]`` = log p_in(pos_id) under the in-batch (frequency) distribution (see
    :func:`log_q_from_counts`); uniform negatives ``neg_ids [R]``, ``neg_emb [R, D]`` drawn from
    the uniform distribution with per-draw log-probability ``neg_log_q`` (= −log(num_items)).

    For target ``t`` of example ``e = target_to_example[t]`` with user vector ``u_e``, the
    candidate logits are (τ = temperature)::

        in-batch  j ∈ {0..T-1}:  s_tj = u_e·p_j / τ − log(T · p_in(pos_id_j))
        uniform   r ∈ {0..R-1}:  z_tr = u_e·n_r / τ − (log R + neg_log_q)

    (each subtracted term is the log of the item's expected count among the sampled candidates).
    Candidate ``j ≠ t`` is masked (logit −∞) when ``pos_id_j`` is any positive id of example
    ``e`` (accidental hit, including the example's other positives); uniform ``r`` is masked when
    ``neg_id_r`` is any positive id of example ``e``. The positive is candidate ``j = t``. Loss::

        L = mean_t [ −s_tt + logsumexp_j,r(s_tj, z_tr over unmasked candidates) ]

    ``in_batch=False`` drops the in-batch candidates: each target is scored against its own
    positive, ``s_t = u_e·p_t / τ`` (no correction; ``pos_log_q`` is unused), and the uniform
    negatives only. With the whole catalog as negatives (``data.num_negatives: -1``: ``R = V − 2``,
    ``neg_log_q = −log(V − 2)``, so the correction is 0) this is the exact softmax cross-entropy
    over the catalog, the example's other positives masked.

    ``example_bonus [B, T + R]`` (the repeat path, :mod:`~hytrec_torchrec.modules.repeat`) is added
    to the scores, before the temperature: column ``j < T`` is in-batch candidate ``pos_ids[j]``,
    column ``T + r`` uniform negative ``neg_ids[r]``, for the example's user.
    """
    t = pos_ids.shape[0]
    u = user[target_to_example] / temperature  # [T, D]
    eb: Optional[torch.Tensor] = None
    if example_bonus is not None:
        eb = example_bonus[target_to_example] / temperature  # [T, T + R]
    if in_batch:
        logits = u @ pos_emb.t() - (math.log(t) + pos_log_q).unsqueeze(0)  # [T, T]
        if eb is not None:
            logits = logits + eb[:, :t]
    else:  # only the positive: a [T, T] matrix whose off-diagonal is masked below
        pos = (u * pos_emb).sum(-1)  # [T]
        if eb is not None:
            pos = pos + eb[:, :t].diagonal()
        logits = torch.full((t, t), float("-inf"), dtype=pos.dtype, device=pos.device)
        logits = logits.diagonal_scatter(pos)
    same_id = pos_ids.unsqueeze(1) == pos_ids.unsqueeze(0)  # [T, T]: id_i == id_j
    # example_has[e, j]: example e has a positive with id pos_ids[j]
    example_has = torch.zeros(user.shape[0], t, dtype=torch.bool, device=user.device)
    example_has = example_has.index_put((target_to_example,), same_id, accumulate=True) if t > 0 else example_has
    hit = example_has[target_to_example]  # [T, T]
    eye = torch.eye(t, dtype=torch.bool, device=user.device)
    logits = logits.masked_fill(hit & ~eye, float("-inf"))
    parts = [logits]
    if neg_ids is not None and neg_emb is not None and neg_ids.numel() > 0:
        r = neg_ids.shape[0]
        z = u @ neg_emb.t() - (math.log(r) + neg_log_q)  # [T, R]
        if eb is not None:
            z = z + eb[:, t:]
        neg_same = pos_ids.unsqueeze(1) == neg_ids.unsqueeze(0)  # [T, R]
        neg_has = torch.zeros(user.shape[0], r, dtype=torch.bool, device=user.device)
        neg_has = neg_has.index_put((target_to_example,), neg_same, accumulate=True)
        z = z.masked_fill(neg_has[target_to_example], float("-inf"))
        parts.append(z)
    all_logits = torch.cat(parts, dim=1)
    return (torch.logsumexp(all_logits, dim=1) - logits.diagonal()).mean()


def shared_negatives_loss(
    user: torch.Tensor,
    pos_ids: torch.Tensor,
    pos_emb: torch.Tensor,
    neg_ids: torch.Tensor,
    neg_emb: torch.Tensor,
    neg_log_q: float,
    temperature: float = 1.0,
    pos_bonus: Optional[torch.Tensor] = None,
    neg_bonus: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    r"""Sampled softmax of one positive per row against uniform negatives shared by all rows.

    Used by all-position training, where the rows are every history position of a batch
    (``P`` in the tens of thousands), so the ``[P, P]`` in-batch matrix of
    :func:`sampled_softmax_loss` would not fit; the negatives are uniform only.

    Shapes: ``user [P, D]``, ``pos_ids [P]``, ``pos_emb [P, D]``, ``neg_ids [R]``,
    ``neg_emb [R, D]`` drawn uniformly with per-draw log-probability ``neg_log_q``. Logits::

        positive:  s_p  = u_p·e_p / τ
        negative:  z_pr = u_p·n_r / τ − (log R + neg_log_q)    (masked when n_r == pos_ids[p])

        L = mean_p [ −s_p + logsumexp(s_p, z_p·) ]

    The repeat path's ``pos_bonus [P]`` and ``neg_bonus [P, R]`` are added to the scores before
    the temperature. Returns 0 (with a graph) when ``P == 0``.
    """
    if user.shape[0] == 0:
        return (user * 0.0).sum()
    u = user / temperature
    pos = (u * pos_emb).sum(-1, keepdim=True)  # [P, 1]
    z = u @ neg_emb.t() - (math.log(max(neg_ids.shape[0], 1)) + neg_log_q)  # [P, R]
    if pos_bonus is not None:
        pos = pos + pos_bonus.unsqueeze(1) / temperature
    if neg_bonus is not None:
        z = z + neg_bonus / temperature
    z = z.masked_fill(pos_ids.unsqueeze(1) == neg_ids.unsqueeze(0), float("-inf"))
    return (torch.logsumexp(torch.cat([pos, z], dim=1), dim=1) - pos.squeeze(1)).mean()


def catalog_softmax_loss(
    user: torch.Tensor,
    pos_ids: torch.Tensor,
    catalog_emb: torch.Tensor,
    temperature: float = 1.0,
    bonus: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    r"""Exact softmax cross-entropy of each row's positive over the whole catalog.

    The fast path of :func:`shared_negatives_loss` when the negatives are every known item in
    order (``data.num_negatives: -1``): the positive is then one of the catalog's columns, so one
    fused ``F.cross_entropy`` over ``[P, V − 2]`` logits replaces the mask, the concatenation and
    the log-sum-exp over ``[P, V − 1]`` (about 2× less time on CPU for ML-1M sizes, and one large
    temporary instead of several). ``tests/test_all_positions.py`` checks that the two agree.

    Shapes: ``user [P, D]``, ``pos_ids [P]`` item indices in ``2..V-1``, ``catalog_emb [V − 2, D]``
    (row ``j`` = item ``j + 2``). Logits ``u_p·c_j / τ``; ``L = mean_p [−logit_p,pos + lse_j]``.
    ``bonus`` (the repeat path: unique ``(row [M], item [M], value [M])`` triples, items in
    ``2..V-1``) adds ``value / τ`` to logit ``(row, item)``. Returns 0 (with a graph) when ``P == 0``.
    """
    if user.shape[0] == 0:
        return (user * 0.0).sum()
    logits = (user / temperature) @ catalog_emb.t()  # [P, V-2]
    if bonus is not None:
        logits = logits.index_put((bonus[0], bonus[1] - 2), bonus[2] / temperature, accumulate=True)
    return F.cross_entropy(logits, pos_ids - 2)
