"""Long-history diagnostics: does a trained tower use the events before its short window?

Computed by ``hytrec-eval`` on a seeded sample of the evaluated examples (``diagnostics.users``,
0 disables), overall and per evaluation segment, for any checkpoint or exported model. Only the
tower's public forward API is used — ``tower(features {name: [N, D_f]}, offsets [B+1],
timestamps [N] int64, t_current [B] int64) -> [B, D]`` — plus ``tower.short_len`` and
``tower.fusion.gate`` (the MoE gate's ``Linear``), so the numbers stay meaningful whatever the
branches are made of. With K = ``short_len``, the *far history* of an example is every history
event before its last K events; distances count back from the most recent history event
(``d = 1`` is the last event before the target, ``d = K + 1`` the most recent far event).

1. **Far-history swap** (``swap_sensitivity``, ``swap_top10_changed``, ``swap_top10_overlap``):
   the far history of each sampled example is replaced by the far history of another sampled
   example (its timestamps shifted so that its last event falls at the time of the replaced far
   history's last event, i.e. still before the kept K events; ``t_current`` unchanged). Reported:
   the mean of ``1 − cos(u, u_swap)``, the fraction of examples whose ordered top-10 over the
   catalog changes, and the mean fraction of the top-10 items that stay. Examples with at most
   K events are skipped and counted (``swap_skipped``).
2. **Influence and retention** (``influence``, ``retention``): the influence of the event at
   distance d is ``‖∂(r·u)/∂x_d‖`` — the gradient of the user embedding projected on a fixed
   Gaussian vector r with respect to that event's input embeddings ``x_d`` (all its feature
   embeddings together), root-mean-squared over ``projections`` vectors (an estimate of the
   Frobenius norm of the Jacobian ``∂u/∂x_d``), averaged over the examples with at least d
   events (histories cut to their last ``max_history`` events). ``retention(d)`` is the mean
   influence at d over the mean influence at K + 1 *on the same examples* (0 when both are 0).
   ``retention_after_500`` is ``retention(K + 500)``.
3. **Gate and long contribution** (``gate_mean``, ``long_contribution``,
   ``long_top10_changed``): the mean softmax weight of each MoE expert, and the mean of
   ``1 − cos(u, u_short)`` where ``u_short`` is computed from the last K events only (the far
   history removed).

``1 − cos`` is computed as ``½‖û − v̂‖²`` in float64 (exactly 0 for equal vectors).

Example (what :func:`~hytrec_torchrec.evaluation.evaluate.evaluate_checkpoint` does)::

    sampler = ExampleSampler(cfg, segmenter.names)
    for batch in loader:                              # the evaluation loop
        sampler.add(batch, segmenter.membership(batch), batch.valid)
    result = collect_diagnostics(sampler, cfg, lambda: checkpoint_access(path, (), device, cfg.max_table_gb))
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hytrec_torchrec.config import ConfigError, check_range, from_dict
from hytrec_torchrec.modules.config import TowerConfig
from hytrec_torchrec.modules.tower import HyTRecTower, scoring_vectors
from hytrec_torchrec.ops.jagged import lengths_to_offsets, pass_bounds
from hytrec_torchrec.runtime.restore import checkpoint_config, load_unsharded
from hytrec_torchrec.schema import TABLES, history_key

__all__ = [
    "TOP_K",
    "DiagnosticsConfig",
    "Example",
    "ExampleSampler",
    "TowerAccess",
    "checkpoint_access",
    "collect_diagnostics",
    "cosine_distance",
    "example_keys",
    "exported_access",
    "run_diagnostics",
]

log = logging.getLogger("hytrec.eval")

#: length of the recommendation lists compared by the swap (and the long-contribution) test.
TOP_K = 10
#: history tables carried by a sampled example (``Batch.features["history_<table>"]``).


@dataclass
class DiagnosticsConfig:
    """Long-history diagnostics settings (``diagnostics.*`` keys of the evaluation config).

    Attributes:
        users: evaluated examples sampled per model (0 disables the diagnostics).
        seed: seed of the sample, the swap partners and the projection vectors.
        distances: distances (events back from the most recent one) at which influence and
            retention are reported, besides K + 1 and K + 500 (K = the model's ``short_len``).
        max_history: each history is cut to its last ``max_history`` events for the gradients.
        projections: random projections of the user embedding per gradient (1–2 suffice).
        tokens_per_pass: history events per tower pass (a longer history runs alone).
        max_table_gb: a checkpoint is loaded once more, unsharded, on rank 0 for the diagnostics;
            when its tables (all rows, float32) would take more than this many GiB, the
            diagnostics are skipped with that reason instead.
    """

    users: int = 256
    seed: int = 0
    distances: List[int] = field(default_factory=lambda: [100, 200, 500, 1000, 2000])
    max_history: int = 2048
    projections: int = 1
    tokens_per_pass: int = 16384
    max_table_gb: float = 8.0

    def validate(self) -> None:
        check_range("users", self.users, 0)
        for i, d in enumerate(self.distances):
            check_range(f"distances[{i}]", d, 1)
        check_range("max_history", self.max_history, 1)
        check_range("projections", self.projections, 1)
        check_range("tokens_per_pass", self.tokens_per_pass, 1)
        check_range("max_table_gb", self.max_table_gb, 0.0)
        if len(set(self.distances)) != len(self.distances):
            raise ConfigError(f"distances: duplicate values in {self.distances}")


# ---------------------------------------------------------------------- sampling
def example_keys(user: np.ndarray, cutoff: np.ndarray, seed: int) -> np.ndarray:
    """Pseudo-random sort keys ``[B]`` uint64 of examples ``(user [B], cutoff [B])``.

    A fixed hash of (user, cutoff, seed) (splitmix64 finaliser), so the sample — the examples
    with the smallest keys — is the same whatever the world size and batch order."""
    with np.errstate(over="ignore"):
        x = (np.asarray(user, dtype=np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.asarray(cutoff, dtype=np.int64).astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)
             + np.uint64(seed % (1 << 63)) * np.uint64(0x94D049BB133111EB) + np.uint64(1))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


@dataclass
class Example:
    """One sampled evaluation example (CPU, NumPy).

    Attributes:
        key: sort key (:func:`example_keys`); user: dense user index; cutoff: untruncated history
        length; t_current: the target's time (s).
        ids: history table → ``[h]`` int64 dense indices (the model input history, oldest first).
        timestamps: ``[h]`` int64 seconds of the history events.
        segments: ``[S]`` bool membership in the evaluation segments (``Segmenter.names``).
    """

    key: int
    user: int
    cutoff: int
    t_current: int
    ids: Dict[str, np.ndarray]
    timestamps: np.ndarray
    segments: np.ndarray

    @property
    def length(self) -> int:
        """Events in the (truncated) history."""
        return int(self.timestamps.shape[0])


class ExampleSampler:
    """Keeps the ``cfg.users`` evaluated examples with the smallest :func:`example_keys`.

    Args:
        cfg: diagnostics settings (``users``, ``seed``).
        segment_names: the evaluation's segment names (columns of ``membership``).
    """

    def __init__(self, cfg: DiagnosticsConfig, segment_names: Sequence[str]) -> None:
        self.cfg = cfg
        self.segment_names = list(segment_names)
        self.examples: List[Example] = []

    def _threshold(self) -> Optional[int]:
        if len(self.examples) < self.cfg.users:
            return None
        return self.examples[-1].key

    def add(self, batch: Any, membership: torch.Tensor, keep: torch.Tensor) -> None:
        """Offer the examples of one (CPU) evaluation batch.

        Args:
            batch: :class:`~hytrec_torchrec.data.batch.Batch`.
            membership: ``[B, S]`` bool segment membership (``Segmenter.membership``).
            keep: ``[B]`` bool, the examples that are evaluated (``batch.valid``).
        """
        if self.cfg.users <= 0:
            return
        keep_np = keep.cpu().numpy().astype(bool)
        users = batch.user.cpu().numpy()
        cutoffs = batch.cutoff.cpu().numpy()
        keys = example_keys(users, cutoffs, self.cfg.seed)
        limit = self._threshold()
        chosen = [b for b in np.flatnonzero(keep_np) if limit is None or int(keys[b]) < limit]
        if not chosen:
            return
        offsets = batch.history_offsets().cpu().numpy()
        ts = batch.timestamps.cpu().numpy()
        tc = batch.t_current.cpu().numpy()
        member = membership.cpu().numpy().astype(bool)
        values = {t: batch.features[f"history_{t}"].values().cpu().numpy()
                  for t in TABLES if history_key(t) in batch.features.keys()}
        for b in chosen:
            a, e = int(offsets[b]), int(offsets[b + 1])
            self.examples.append(Example(
                key=int(keys[b]), user=int(users[b]), cutoff=int(cutoffs[b]), t_current=int(tc[b]),
                ids={t: v[a:e].astype(np.int64).copy() for t, v in values.items()},
                timestamps=ts[a:e].astype(np.int64).copy(), segments=member[b].copy()))
        self.examples.sort(key=lambda x: (x.key, x.user, x.cutoff))
        del self.examples[self.cfg.users:]

    def gather(self) -> List[Example]:
        """The sample over every rank, sorted by key, on rank 0 (``[]`` on the others).

        Collective under a process group: only the keys go to every rank, then each rank sends
        rank 0 just its examples that made the global sample."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return list(self.examples)
        keys: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(keys, [(x.key, x.user, x.cutoff) for x in self.examples])
        wanted = set(sorted(k for part in keys for k in part)[: self.cfg.users])
        mine = [x for x in self.examples if (x.key, x.user, x.cutoff) in wanted]
        parts: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
        if dist.get_rank() != 0:
            return []
        out = [x for part in parts for x in part]
        out.sort(key=lambda x: (x.key, x.user, x.cutoff))
        return out


# ---------------------------------------------------------------------- model access
@dataclass
class TowerAccess:
    """What the diagnostics need from a model.

    Attributes:
        tower: the user tower (eager :class:`~hytrec_torchrec.modules.tower.HyTRecTower` or its
            TorchScript form) in eval mode, on ``device``.
        features: the tower's input features (table names), in any order.
        lookup: ``(feature, [n] int64 dense indices on CPU) -> [n, D_f]`` float embeddings.
        items: ``[V, D]`` item vectors as scored (row i = item index i; rows 0, 1 never ranked).
        device: where the tower runs.
        notes: reasons why a part is unavailable (e.g. ``{"gate": "..."}``).
        repeat: the repeat path's head when the model has one (``model.repeat``):
            ``(user [B, D], items [N] int64 dense item indices, offsets [B+1], timestamps [N])
            -> (example [M], item [M], bonus [M])``, the score bonus of each history item. The
            top-10 lists of the swap and far-history-removed variants then rank the model's
            final scores (dot product + bonus), so they show the far history read by either path.
    """

    tower: nn.Module
    features: List[str]
    lookup: Callable[[str, torch.Tensor], torch.Tensor]
    items: torch.Tensor
    device: torch.device
    notes: Dict[str, str] = field(default_factory=dict)
    repeat: Optional[nn.Module] = None


#: item vectors larger than this stay on the CPU for the top-10 lists (bytes).
ITEMS_ON_DEVICE_MAX_BYTES = 1 << 30


def checkpoint_access(path: str, overrides: Sequence[str], device: torch.device,
                      max_table_gb: float = math.inf) -> TowerAccess:
    """A training checkpoint, loaded unsharded in this process (DCP gathers every table).

    The tables stay on the CPU (looked-up rows are moved to ``device``); the tower and (up to
    1 GiB) the item vectors go to ``device``.

    Raises:
        MemoryError: when the tables would take more than ``max_table_gb`` GiB (float32).
    """
    cfg, state = checkpoint_config(path, overrides)
    gib = sum(int(v) for v in state["vocab_sizes"].values()) * int(cfg.embeddings.dim) * 4 / 2**30
    if gib > max_table_gb:
        raise MemoryError(f"its tables take {gib:.1f} GiB unsharded, more than diagnostics.max_table_gb="
                          f"{max_table_gb:g}")
    model, cfg, _ = load_unsharded(path, overrides, device="cpu")
    tower = model.tower.net.to(device).eval()
    weights = {name: emb.weight.detach() for name, emb in model.embeddings.embeddings.items()}
    missing = [f for f in cfg.model.features if f not in weights]
    if missing or "item" not in weights:
        raise ValueError(f"no embedding table for features {missing or ['item']}")

    def lookup(feature: str, index: torch.Tensor) -> torch.Tensor:
        return weights[feature][index].to(device)

    items = scoring_vectors(weights["item"], bool(getattr(tower, "cosine", False)))
    if items.numel() * 4 <= ITEMS_ON_DEVICE_MAX_BYTES:
        items = items.to(device)
    repeat = model.repeat.to(device).eval() if model.repeat is not None else None
    return TowerAccess(tower, list(cfg.model.features), lookup, items, device, repeat=repeat)


def exported_access(model: Any, card: Dict[str, Any], to_input: Dict[str, torch.Tensor]) -> TowerAccess:
    """An exported TorchScript model (``hytrec-export``): its tower, tables and item vectors.

    Forward hooks cannot be put on a TorchScript module, so for the gate weights the tower is
    rebuilt in eager form from the model card's ``model`` config and the scripted tower's
    weights; when that fails (another version wrote the file) the scripted tower is used and the
    gate is reported unavailable.

    Args:
        model: the loaded ``HyTRecServing`` script module.
        card: its ``model_card.json``.
        to_input: table → ``[V]`` int64 map from dense index to the value the model takes.
    """
    tower: nn.Module = model.tower
    notes: Dict[str, str] = {}
    try:
        eager = HyTRecTower(from_dict(TowerConfig, card["config"]["model"], prefix="model"))
        saved = dict(model.tower.state_dict())  # a scripted state dict also holds non-persistent buffers
        buffers = dict(eager.named_buffers())
        extra = [key for key in saved if key not in eager.state_dict()]
        if any(key not in buffers for key in extra):
            raise ValueError(f"unexpected tower weights {[key for key in extra if key not in buffers]}")
        eager.load_state_dict({key: v for key, v in saved.items() if key not in extra}, strict=True)
        with torch.no_grad():
            for key in extra:
                buffers[key].copy_(saved[key])
        tower = eager.eval()
    except Exception as exc:  # noqa: BLE001 - any mismatch: fall back to the scripted tower
        notes["gate"] = f"exported model: the tower could not be rebuilt in eager form for a gate hook ({exc})"
    features = [str(f) for f in card["config"]["model"].get("features") or list(model.features)]
    inputs = {f: getattr(model.inputs, f) for f in features}

    def lookup(feature: str, index: torch.Tensor) -> torch.Tensor:
        return inputs[feature](to_input[feature][index])

    items = model.item_embeddings().detach()
    return TowerAccess(tower, features, lookup, items, torch.device("cpu"), notes,
                       repeat=getattr(model, "repeat", None))


# ---------------------------------------------------------------------- helpers
History = Tuple[Dict[str, np.ndarray], np.ndarray]  # (table -> [h] ids, [h] timestamps)


def cosine_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``1 − cos(u_b, v_b)`` ``[B]`` float64 of ``u, v [B, D]``, as ``½‖û − v̂‖²`` (exactly 0
    when the rows are equal; 1 when one row is 0 and the other is not)."""
    a = torch.nn.functional.normalize(u.double(), dim=-1, eps=1e-12)
    b = torch.nn.functional.normalize(v.double(), dim=-1, eps=1e-12)
    return 0.5 * ((a - b) ** 2).sum(-1)


def _passes(lengths: Sequence[int], budget: int) -> List[Tuple[int, int]]:
    """Consecutive ``[a, b)`` groups of sequences with at most ``budget`` events each (a longer
    sequence runs alone; :func:`~hytrec_torchrec.ops.jagged.pass_bounds`); none for no sequences."""
    if len(lengths) == 0:
        return []
    bounds = pass_bounds(lengths_to_offsets(torch.tensor(list(lengths), dtype=torch.int64)), budget)
    return list(zip(bounds[:-1], bounds[1:]))


def _pack(access: TowerAccess, hist: Sequence[History], t_current: Sequence[int], leaf: bool
          ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tower inputs of ``B`` histories: ``(features {f: [N, D_f]}, offsets [B+1], timestamps [N],
    t_current [B])`` on ``access.device``; ``leaf``: the features require gradients."""
    dev = access.device
    lengths = [len(ts) for _, ts in hist]
    offsets = torch.zeros(len(hist) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    feats: Dict[str, torch.Tensor] = {}
    for f in access.features:
        ids = torch.from_numpy(np.concatenate([h[f] for h, _ in hist]) if hist else np.zeros(0, np.int64))
        x = access.lookup(f, ids.to(torch.int64)).detach().float()
        feats[f] = x.requires_grad_(True) if leaf else x
    ts = torch.from_numpy(np.concatenate([t for _, t in hist]) if hist else np.zeros(0, np.int64))
    tc = torch.tensor(list(t_current), dtype=torch.int64, device=dev)
    return feats, offsets.to(dev), ts.to(torch.int64).to(dev), tc


@contextlib.contextmanager
def _gate_probe(tower: nn.Module, out: List[torch.Tensor], notes: Dict[str, str]) -> Iterator[None]:
    """Collect ``softmax(tower.fusion.gate(x))`` ``[B, E]`` of every tower call into ``out``."""
    handle = None
    if "gate" not in notes:
        gate = getattr(getattr(tower, "fusion", None), "gate", None)
        if gate is None:
            notes["gate"] = "the tower has no fusion.gate"
        else:
            try:
                handle = gate.register_forward_hook(
                    lambda _m, _i, o: out.append(torch.softmax(o.detach().float(), -1).cpu()))
            except RuntimeError as exc:  # TorchScript modules take no hooks
                notes["gate"] = f"no forward hook on the gate: {exc}"
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def _users(access: TowerAccess, hist: Sequence[History], t_current: Sequence[int], budget: int,
           groups: Optional[Sequence[Tuple[int, int]]] = None) -> torch.Tensor:
    """User embeddings ``[B, D]`` (on ``access.device``) of ``B`` histories, in token-bounded
    passes (or in the given ``[a, b)`` groups: variants of the same histories run in the same
    groups, so that an unchanged input gives bit-identical output)."""
    parts: List[torch.Tensor] = [torch.zeros(0, int(access.items.shape[1]), device=access.device)]
    with torch.no_grad():
        for a, b in (groups if groups is not None else _passes([len(t) for _, t in hist], budget)):
            parts.append(access.tower(*_pack(access, hist[a:b], t_current[a:b], False)).detach().float())
    return torch.cat(parts, 0)


def _bonus(access: TowerAccess, hist: Sequence[History], user: torch.Tensor
           ) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The repeat path's ``(example [M], item [M], bonus [M])`` for ``B`` histories and their
    ``user [B, D]``; None without the path."""
    if access.repeat is None:
        return None
    offsets = torch.zeros(len(hist) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor([len(ts) for _, ts in hist], dtype=torch.int64).cumsum(0)
    items = torch.from_numpy(np.concatenate([h["item"] for h, _ in hist]) if hist else np.zeros(0, np.int64))
    ts = torch.from_numpy(np.concatenate([t for _, t in hist]) if hist else np.zeros(0, np.int64))
    beh: Optional[torch.Tensor] = None
    if hist and all("behavior" in h for h, _ in hist):
        beh = torch.from_numpy(np.concatenate([h["behavior"] for h, _ in hist])).to(torch.int64).to(access.device)
    dev = access.device
    with torch.no_grad():
        # (example, item, bonus[, gate]): exported models before the gate return three
        out = access.repeat(user.to(dev), items.to(torch.int64).to(dev), offsets.to(dev),
                            ts.to(torch.int64).to(dev), False, beh)
        ex, item, value = out[0], out[1], out[2]
    return ex.cpu(), item.cpu(), value.detach().float().cpu()


def _topk(user: torch.Tensor, items: torch.Tensor, k: int,
          bonus: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """``[B, k]`` item indices (≥ 2) of the best scores ``user [B, D] @ items[2:].T`` (plus the
    repeat path's ``bonus`` of :func:`_bonus`), best first."""
    cat = items[2:]
    k = min(k, int(cat.shape[0]))
    out = []
    for a in range(0, int(user.shape[0]), 256):
        s = user[a:a + 256].to(cat.device) @ cat.t()
        if bonus is not None:
            ex, item, value = bonus
            mine = (ex >= a) & (ex < a + s.shape[0])
            s = s.index_put(((ex[mine] - a).to(s.device), (item[mine] - 2).to(s.device)),
                            value[mine].to(s.device), accumulate=True)
        out.append(torch.topk(s, k, dim=1).indices + 2)
    return torch.cat(out, 0).cpu() if out else torch.zeros(0, k, dtype=torch.int64)


def _swap_partners(eligible: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[n]`` partner index for each eligible index (never itself); needs ``n ≥ 2``."""
    n = len(eligible)
    shift = rng.integers(1, n, size=n)
    return eligible[(np.arange(n) + shift) % n]


def _far_swapped(own: History, donor: History, k: int) -> History:
    """``own`` with its events before the last ``k`` replaced by ``donor``'s (timestamps shifted
    so that the donor's last far event falls at ``own``'s last far event)."""
    (oi, ot), (di, dt) = own, donor
    no, nd = len(ot) - k, len(dt) - k
    shift = int(ot[no - 1]) - int(dt[nd - 1])
    ids = {t: np.concatenate([di[t][:nd], oi[t][no:]]) for t in oi}
    return ids, np.concatenate([dt[:nd] + shift, ot[no:]])


def _tail(h: History, n: int) -> History:
    """The last ``n`` events of a history (``n = 0``: none)."""
    ids, ts = h
    start = max(len(ts) - n, 0) if n > 0 else len(ts)
    return {t: v[start:] for t, v in ids.items()}, ts[start:]


def _influence(access: TowerAccess, hist: Sequence[History], t_current: Sequence[int],
               distances: Sequence[int], cfg: DiagnosticsConfig) -> np.ndarray:
    """``[B, len(distances)]`` influence of the event at each distance (NaN where the history is
    shorter), histories cut to their last ``cfg.max_history`` events."""
    cut = [_tail(h, cfg.max_history) for h in hist]
    dim = int(access.items.shape[1])
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    proj = torch.randn(cfg.projections, dim, generator=gen).to(access.device)
    out = np.full((len(hist), len(distances)), np.nan)
    with torch.enable_grad():
        for a, b in _passes([len(t) for _, t in cut], cfg.tokens_per_pass):
            feats, offsets, ts, tc = _pack(access, cut[a:b], t_current[a:b], True)
            inputs = [feats[f] for f in access.features]
            user = access.tower(feats, offsets, ts, tc)
            if not user.requires_grad:  # no history event in this pass: nothing to measure
                continue
            sq = torch.zeros(int(offsets[-1]), dtype=torch.float64, device=access.device)
            for p in range(cfg.projections):
                grads = torch.autograd.grad((user * proj[p]).sum(), inputs, retain_graph=p + 1 < cfg.projections,
                                            allow_unused=True)
                for g in grads:
                    if g is not None:
                        sq += (g.double() ** 2).sum(-1)
            norm = (sq / cfg.projections).sqrt().cpu().numpy()
            off = offsets.cpu().numpy()
            for i in range(b - a):
                n = int(off[i + 1] - off[i])
                for j, d in enumerate(distances):
                    if n >= d:
                        out[a + i, j] = norm[int(off[i + 1]) - d]
    return out


def _mean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def _summary(mask: np.ndarray, per: Dict[str, np.ndarray], distances: Sequence[int], k: int) -> Dict[str, Any]:
    """Means over the examples in ``mask [n]`` of the per-example arrays of :func:`run_diagnostics`."""
    swap_ok = mask & ~np.isnan(per["swap"])
    long_ok = mask & ~np.isnan(per["long"])
    out: Dict[str, Any] = {
        "users": int(mask.sum()),
        "swap_users": int(swap_ok.sum()),
        "swap_skipped": int((mask & per["short"]).sum()),
        "swap_sensitivity": _mean(per["swap"][mask]),
        "swap_top10_changed": _mean(per["swap_changed"][mask]),
        "swap_top10_overlap": _mean(per["swap_overlap"][mask]),
        "long_contribution": _mean(per["long"][mask]),
        "long_top10_changed": _mean(per["long_changed"][mask]),
        "long_users": int(long_ok.sum()),
    }
    gate = per.get("gate")
    out["gate_mean"] = ([float(v) for v in gate[mask].mean(0)] if gate is not None and mask.any() else None)
    infl = per["influence"]
    influence: Dict[str, float] = {}
    retention: Dict[str, float] = {}
    users: Dict[str, int] = {}
    for j, d in enumerate(distances):
        have = mask & ~np.isnan(infl[:, j])
        users[str(d)] = int(have.sum())
        if not have.any():
            continue
        influence[str(d)] = float(infl[have, j].mean())
        both = have & ~np.isnan(infl[:, 0])  # column 0: the reference distance K + 1
        if both.any():
            num, ref = float(infl[both, j].mean()), float(infl[both, 0].mean())
            retention[str(d)] = num / ref if ref > 0 else (0.0 if num == 0 else math.inf)
    out["influence"] = influence
    out["retention"] = retention
    out["retention_users"] = users
    out["retention_after_500"] = retention.get(str(k + 500), math.nan)
    return out


def run_diagnostics(access: TowerAccess, examples: Sequence[Example], segment_names: Sequence[str],
                    cfg: DiagnosticsConfig) -> Dict[str, Any]:
    """Every diagnostic on ``examples`` (one process; the tower in eval mode).

    Args:
        access: the model (:func:`checkpoint_access`, :func:`exported_access`, or built directly).
        examples: the sampled examples (:meth:`ExampleSampler.gather`); their ``segments`` columns
            follow ``segment_names``.
        segment_names: evaluation segment names; ``all`` is reported as ``overall``.
        cfg: settings.
    Returns:
        ``{"status": "ok", "users", "short_len", "has_long", "distances", "reference_distance",
        "distance_500", "notes", "overall": {...}, "segments": {name: {...}}, "time_s"}``; see
        the module docstring for the metrics of ``overall`` and each segment.
    """
    t0 = time.perf_counter()
    tower = access.tower
    was_training = tower.training
    tower.eval()
    k = int(getattr(tower, "short_len", 0))
    notes = dict(access.notes)
    n = len(examples)
    hist: List[History] = [(x.ids, x.timestamps) for x in examples]
    tc = [x.t_current for x in examples]
    lengths = np.array([x.length for x in examples], dtype=np.int64)
    budget = cfg.tokens_per_pass
    try:
        # 1. far-history swap; 3. without the far history. The examples with more than K events
        # run in the same groups of users in every variant (original, swapped, far history removed)
        per: Dict[str, Any] = {"short": lengths <= k}
        for key in ("swap", "swap_changed", "swap_overlap", "long", "long_changed"):
            per[key] = np.full(n, np.nan)
        eligible = np.flatnonzero(lengths > k)
        others = np.flatnonzero(lengths <= k)
        gates: List[torch.Tensor] = []  # 3. gate weights [*, E]: the `others`, then the `eligible`
        if len(others):
            with _gate_probe(tower, gates, notes):
                _users(access, [hist[i] for i in others], [tc[i] for i in others], budget)
        if len(eligible):
            own = [hist[i] for i in eligible]
            etc = [tc[i] for i in eligible]
            swapped: List[History] = []
            if len(eligible) >= 2:
                partner = _swap_partners(eligible, np.random.default_rng(cfg.seed))
                swapped = [_far_swapped(hist[i], hist[j], k) for i, j in zip(eligible, partner)]
            else:
                notes["swap"] = "fewer than 2 sampled examples have more than short_len events"
            sizes = [len(h[1]) for h in own]
            if swapped:
                sizes = [max(a, len(h[1])) for a, h in zip(sizes, swapped)]
            groups = list(_passes(sizes, budget))
            with _gate_probe(tower, gates, notes):
                u_ref = _users(access, own, etc, budget, groups)
            top_ref = _topk(u_ref, access.items, TOP_K, _bonus(access, own, u_ref))
            if swapped:
                u_swap = _users(access, swapped, etc, budget, groups)
                per["swap"][eligible] = cosine_distance(u_ref, u_swap).cpu().numpy()
                top_swap = _topk(u_swap, access.items, TOP_K, _bonus(access, swapped, u_swap))
                per["swap_changed"][eligible] = (top_swap != top_ref).any(1).double().numpy()
                per["swap_overlap"][eligible] = np.array(
                    [len(set(a.tolist()) & set(b.tolist())) / max(top_ref.shape[1], 1)
                     for a, b in zip(top_swap, top_ref)])
            tails = [_tail(h, k) for h in own]
            u_short = _users(access, tails, etc, budget, groups)
            per["long"][eligible] = cosine_distance(u_ref, u_short).cpu().numpy()
            top_short = _topk(u_short, access.items, TOP_K, _bonus(access, tails, u_short))
            per["long_changed"][eligible] = (top_short != top_ref).any(1).double().numpy()
        gate = torch.cat(gates, 0).numpy() if gates else None
        if gate is not None and gate.shape[0] != n:
            notes["gate"] = f"the gate ran {gate.shape[0]} times for {n} users (not once per user)"
        elif gate is not None:
            per["gate"] = np.empty_like(gate)
            per["gate"][np.concatenate([others, eligible])] = gate
        # 2. influence / retention (column 0: the reference distance K + 1)
        distances = sorted({k + 1, k + 500} | {int(d) for d in cfg.distances})
        distances.remove(k + 1)
        distances = [k + 1] + distances
        deepest = int(min(lengths.max(initial=0), cfg.max_history))
        distances = [d for d in distances if d <= deepest] or [k + 1]
        try:
            per["influence"] = _influence(access, hist, tc, distances, cfg)
        except RuntimeError as exc:  # e.g. a kernel without a backward pass
            notes["retention"] = f"gradient with respect to the input embeddings failed: {exc}"
            per["influence"] = np.full((n, len(distances)), np.nan)
    finally:
        tower.train(was_training)
    member = np.stack([x.segments for x in examples]) if n else np.zeros((0, len(segment_names)), bool)
    summaries: Dict[str, Any] = {}
    for s, name in enumerate(segment_names):
        mask = member[:, s]
        if name == "all" or mask.any():
            summaries[name] = _summary(mask, per, distances, k)
    overall = summaries.pop("all", None) or _summary(np.ones(n, bool), per, distances, k)
    return {
        "status": "ok",
        "users": n,
        "seed": cfg.seed,
        "short_len": k,
        "has_long": bool(getattr(tower, "has_long", True)),
        "repeat": access.repeat is not None,
        "max_history": cfg.max_history,
        "projections": cfg.projections,
        "reference_distance": k + 1,
        "distance_500": k + 500,
        "distances": distances,
        "notes": notes,
        "overall": overall,
        "segments": summaries,
        "time_s": round(time.perf_counter() - t0, 3),
    }


def collect_diagnostics(sampler: Optional[ExampleSampler], cfg: DiagnosticsConfig,
                        access: Callable[[], TowerAccess]) -> Dict[str, Any]:
    """Gather the sample on rank 0, run :func:`run_diagnostics` there and broadcast the result
    (collective; every rank returns the same dict).

    ``access`` is called on rank 0 only. Any failure to build the access or to run is recorded
    as ``{"status": "skipped", "reason": ...}`` (and logged) instead of failing the evaluation.
    """
    if sampler is None or cfg.users <= 0:
        return {"status": "disabled", "reason": "diagnostics.users is 0"}
    examples = sampler.gather()
    result: Dict[str, Any] = {}
    rank0 = not (dist.is_initialized() and dist.get_world_size() > 1) or dist.get_rank() == 0
    if rank0:
        if not examples:
            result = {"status": "skipped", "reason": "no evaluated example was sampled"}
        else:
            try:
                acc = access()
            except Exception as exc:  # noqa: BLE001 - recorded, the evaluation goes on
                log.warning("diagnostics skipped: the model cannot be opened for them: %s", exc)
                result = {"status": "skipped",
                          "reason": f"model not available for diagnostics: {type(exc).__name__}: {exc}"}
            else:
                try:
                    result = run_diagnostics(acc, examples, sampler.segment_names, cfg)
                except Exception as exc:  # noqa: BLE001
                    log.exception("diagnostics failed")
                    result = {"status": "skipped", "reason": f"diagnostics failed: {type(exc).__name__}: {exc}"}
    if dist.is_initialized() and dist.get_world_size() > 1:
        box: List[Any] = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    return result
