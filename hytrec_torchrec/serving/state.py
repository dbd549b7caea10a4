"""Serving from a kept state: answer a request from what earlier requests left, not the history.

:class:`StatefulServing` is a :class:`~hytrec_torchrec.serving.module.HyTRecServing` (every
stateless method is still there) with four more TorchScript methods::

    state = model.init_state(B)                         # B new users (empty histories)
    state = model.update(state, values, lengths)        # append each user's newest events
    ids, scores = model.score_state(state, request_time, k)
    s = model.state_scores(state, request_time)         # [B, V], as scores() of the whole history

``values`` / ``lengths`` have the layout of the stateless methods (raw IDs, int64 seconds, each
user's new events oldest first, ``lengths[key] [B]`` may be 0). A state is a ``Dict[str, Tensor]``
whose tensors all have the users as dim 0, so states of several users are concatenated (or one
row taken) key by key. What it holds (docs/export.md, "Serving from a kept state"):

* ``fingerprint [B]`` int64: the model's fingerprint (weights, tables, state layout); a state of
  another model is refused with ``ValueError``;
* ``events [B]``, ``last_ts [B]``: events seen, the last one's timestamp;
* ``ring_ts [B, R]``, ``ring.<feature> [B, R]``: the last R events (table indices, right-aligned)
  that the short branch reads, R its receptive field (``short_len`` for one layer);
* ``long.<i> [B, H, dk, dv]``: the memory of gated-delta layer i of the long branch, which has
  read every event but the last ``short_len``; ``long_last_ts [B]`` the last of them;
  ``long_out [B, D]`` the branch's output (``long_readout: last``) or ``reader [B, H, dk, dv]``
  the intent readout's memory (``intent``); ``copy [B, H, dk, dv]`` the far-copy memory;
* ``repeat [B, M, 10]`` int64: per item of the history (at most M, the least recently seen evicted
  first) what the repeat head reads (:data:`REPEAT_COLUMNS`).

Only long branches of gated-delta layers have a finite state: a softmax layer (``S`` in
``model.long_pattern``) attends over every earlier event and the paper's TADN (``tadn.gating:
paper``) reads the whole sequence's mean and the request time, so such models are refused
(:func:`state_unsupported`). The state never truncates: the stateless methods keep the last
``max_len`` events of a request, the state every event it was given.
"""

import hashlib
from typing import Dict, Final, List, Optional, Tuple

import torch

from hytrec_torchrec.modules.layers import SoftmaxMixer, TADNMixer
from hytrec_torchrec.modules.repeat import CycleStats, RepeatHead
from hytrec_torchrec.modules.tower import HyTRecTower, scoring_vectors
from hytrec_torchrec.ops.jagged import (
    jagged_to_padded_1d,
    last_index,
    lengths_to_offsets,
    next_event_times,
    segment_ids,
)
from hytrec_torchrec.serving import DEFAULT_MAX_TOKENS_PER_PASS
from hytrec_torchrec.serving.idmap import Vocab
from hytrec_torchrec.serving.module import HyTRecServing

__all__ = ["StatefulServing", "state_unsupported", "state_bytes_per_user", "STATE_FORMAT", "REPEAT_COLUMNS"]

#: version of the state's layout; part of the fingerprint, so states of another layout are refused.
STATE_FORMAT = 1
#: the columns of ``state["repeat"] [B, M, 10]`` (int64), one row per kept history item: its index
#: (0 = free slot), occurrences, event number and timestamp of its last occurrence, whether that was
#: a cycle event (0/1), its cycle events, and event number and timestamp of the first and the last
#: of them.
REPEAT_COLUMNS = ("item", "count", "last_pos", "last_ts", "last_is_cycle", "cycles", "first_cycle_pos",
                  "first_cycle_ts", "last_cycle_pos", "last_cycle_ts")


def state_unsupported(tower: HyTRecTower) -> List[str]:
    """Why ``tower`` cannot be served from a kept state (empty when it can): one sentence per reason,
    naming the config key."""
    reasons: List[str] = []
    if tower.has_interests:
        reasons.append("model.interests.count > 0: the category interests are not kept in the state yet "
                       "(docs/ulim.md); serve the model statelessly")
    if not tower.has_long:
        return reasons
    mixers = [blk.mixer for blk in tower.long.blocks]
    pattern = "".join("S" if isinstance(m, SoftmaxMixer) else "T" for m in mixers)
    if "S" in pattern:
        reasons.append(f"model.long_pattern {pattern!r} has softmax (S) layers: a softmax layer attends over "
                       "every earlier event, so its state grows with the history; serve it statelessly or "
                       "use T layers only")
    if any(isinstance(m, TADNMixer) for m in mixers):
        reasons.append("model.tadn.gating: paper: TADN reads the mean of the whole sequence and the time of "
                       "the request, so no finite state continues it; use tadn.gating: gated_delta")
    return reasons


def _memory_shape(heads: int, key_dim: int, head_dim: int) -> List[int]:
    return [heads, key_dim, head_dim]


def _fingerprint(module: torch.nn.Module, layout: str) -> int:
    """Signed 64-bit digest of ``layout`` and every tensor of ``module.state_dict()``."""
    h = hashlib.sha256(layout.encode())
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        t = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little", signed=True)


class StatefulServing(HyTRecServing):
    """:class:`HyTRecServing` with the kept-state methods (module docstring).

    Args: those of :class:`HyTRecServing`, and
        repeat_items: M, the history items a state keeps for the repeat path per user (the least
            recently seen is evicted first); 0 = ``max_len`` (a history of at most ``max_len``
            events never evicts).

    Raises:
        ValueError: the tower has no finite state (:func:`state_unsupported`), naming the key.
    """

    max_len: Final[int]
    num_items: Final[int]
    max_tokens_per_pass: Final[int]
    max_seconds: Final[int]
    ring: Final[int]
    short_len: Final[int]
    repeat_items: Final[int]
    has_long: Final[bool]
    has_short: Final[bool]
    long_last: Final[bool]
    long_intent: Final[bool]
    has_copy: Final[bool]
    reads_head: Final[bool]
    num_blocks: Final[int]
    ring_features: List[str]
    float_keys: List[str]
    state_shapes: Dict[str, List[int]]

    def __init__(self, tower: HyTRecTower, weights: Dict[str, torch.Tensor], vocabs: Dict[str, Vocab],
                 features: List[str], max_len: int, int8: bool = False,
                 max_tokens_per_pass: int = DEFAULT_MAX_TOKENS_PER_PASS,
                 repeat: Optional[RepeatHead] = None, repeat_items: int = 0) -> None:
        reasons = state_unsupported(tower)
        if reasons:
            raise ValueError("serving from a kept state: " + "; ".join(reasons))
        if repeat_items < 0:
            raise ValueError(f"repeat_items must be >= 0, got {repeat_items}")
        super().__init__(tower, weights, vocabs, features, max_len, int8=int8,
                         max_tokens_per_pass=max_tokens_per_pass, repeat=repeat)
        self.has_long = bool(tower.has_long)
        self.has_short = bool(tower.has_short)
        self.long_intent = bool(tower.long_intent)
        self.long_last = self.has_long and not self.long_intent
        self.has_copy = bool(tower.has_copy)
        self.reads_head = self.has_long or self.has_copy  # some part reads the events before the last K
        self.short_len = int(tower.short_len) if self.has_short else 0
        self.ring = int(tower.short_input) if self.has_short else 0
        self.repeat_items = (int(repeat_items) if repeat_items > 0 else int(max_len)) if repeat is not None else 0
        d = int(tower.dim)
        # per-user shape of every state tensor; float32 keys listed apart (the others are int64)
        shapes: Dict[str, List[int]] = {"fingerprint": [], "events": [], "last_ts": [], "long_last_ts": [],
                                        "ring_ts": [self.ring]}
        self.ring_features: List[str] = list(self.features) if self.has_short else []
        for name in self.ring_features:
            shapes["ring." + name] = [self.ring]
        floats: List[str] = []
        self.num_blocks = 0
        if self.has_long:
            for blk in tower.long.blocks:
                m = blk.mixer
                shapes["long." + str(self.num_blocks)] = _memory_shape(m.heads, m.key_dim, m.head_dim)
                floats.append("long." + str(self.num_blocks))
                self.num_blocks += 1
            if self.long_intent:
                r = tower.long.reader
                shapes["reader"] = _memory_shape(r.heads, r.key_dim, r.head_dim)
                floats.append("reader")
            else:
                shapes["long_out"] = [d]
                floats.append("long_out")
        if self.has_copy:
            c = tower.copy
            shapes["copy"] = _memory_shape(c.heads, c.key_dim, c.head_dim)
            floats.append("copy")
        if repeat is not None:
            shapes["repeat"] = [self.repeat_items, len(REPEAT_COLUMNS)]
        self.state_shapes = shapes
        self.float_keys = floats
        layout = f"hytrec-state-{STATE_FORMAT}:ring={self.ring}:k={self.short_len}:m={self.repeat_items}"
        self.register_buffer("state_fingerprint", torch.tensor([_fingerprint(self, layout)], dtype=torch.int64))

    # ---------------------------------------------------------------- state handling

    @torch.jit.export
    def init_state(self, batch_size: int) -> Dict[str, torch.Tensor]:
        """The state of ``batch_size`` new users (empty histories): zeros, and the fingerprint."""
        if batch_size < 1:
            raise ValueError("init_state: batch_size must be >= 1, got " + str(batch_size))
        state: Dict[str, torch.Tensor] = {}
        for key, shape in self.state_shapes.items():
            dtype = torch.float32 if key in self.float_keys else torch.int64
            state[key] = torch.zeros([batch_size] + shape, dtype=dtype)
        state["fingerprint"] = self.state_fingerprint.expand(batch_size).clone()
        return state

    def _check_state(self, state: Dict[str, torch.Tensor]) -> int:
        """Validate a state; returns its number of users B."""
        if "fingerprint" not in state:
            raise ValueError("state: no 'fingerprint'; make states with init_state and update")
        fp = state["fingerprint"]
        if fp.dtype != torch.int64 or fp.dim() != 1 or fp.numel() == 0:
            raise ValueError("state['fingerprint'] must be a non-empty 1-D int64 tensor [B]")
        if bool((fp != self.state_fingerprint).any()):
            raise ValueError("state: made by another model (or state format): its fingerprint "
                             + str(int(fp[fp != self.state_fingerprint][0])) + " is not this model's "
                             + str(int(self.state_fingerprint[0])) + "; start the user again with init_state")
        b = fp.numel()
        for key, shape in self.state_shapes.items():
            if key not in state:
                raise ValueError("state: missing '" + key + "'")
            want = [b] + shape
            if list(state[key].shape) != want:
                raise ValueError("state['" + key + "'] has shape " + str(list(state[key].shape)) + ", expected "
                                 + str(want))
            dtype = torch.float32 if key in self.float_keys else torch.int64
            if state[key].dtype != dtype:
                raise ValueError("state['" + key + "'] has the wrong dtype")
        return b

    # ---------------------------------------------------------------- update

    @torch.jit.export
    def update(self, state: Dict[str, torch.Tensor], values: Dict[str, torch.Tensor],
               lengths: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The state after appending each user's newest events (``values`` / ``lengths``: the request
        layout, ``lengths[key] [B]``, 0 allowed). ``state`` itself is not changed."""
        b = self._check_state(state)
        if "timestamp" in lengths and lengths["timestamp"].numel() != b:
            raise ValueError("update: lengths['timestamp'] has " + str(lengths["timestamp"].numel())
                             + " entries for a state of " + str(b) + " users")
        n = self._check(values, lengths, torch.zeros(b, dtype=torch.int64))
        idx: Dict[str, torch.Tensor] = {}
        for name, feature in self.inputs.items():
            if name in values:
                idx[name] = feature.ids(values[name])
        ts = values["timestamp"]
        out: Dict[str, torch.Tensor] = {}
        for key, value in state.items():
            out[key] = value
        if self.ring > 0 or self.reads_head:
            self._advance_tower(state, out, idx, ts, n)
        if self.repeat is not None:
            out["repeat"] = self._advance_repeat(state, idx, ts, n)
        old = state["events"]
        out["events"] = old + n
        if ts.numel() > 0:
            out["last_ts"] = torch.where(n > 0, ts[last_index(lengths_to_offsets(n))], state["last_ts"])
        return out

    def _advance_tower(self, state: Dict[str, torch.Tensor], out: Dict[str, torch.Tensor],
                       idx: Dict[str, torch.Tensor], ts: torch.Tensor, n: torch.Tensor) -> None:
        """Ring and memories after the new events (``idx``: table indices ``[N]``, ``ts [N]``,
        ``n [B]`` per user), written into ``out``."""
        b = n.numel()
        r = self.ring
        old = state["events"]
        ring_len = old.clamp(max=r)
        # each user's ring events followed by its new ones ("combined" rows, packed)
        comb_len = ring_len + n
        comb_off = lengths_to_offsets(comb_len)
        total = int(comb_off[-1])
        seg = segment_ids(comb_off, total)
        j = torch.arange(total) - comb_off[:-1][seg]
        from_ring = j < ring_len[seg]
        new_off = lengths_to_offsets(n)
        src = torch.where(from_ring, seg * r + (r - ring_len[seg]) + j, b * r + new_off[:-1][seg] + j - ring_len[seg])
        comb_ts = torch.cat([state["ring_ts"].reshape(-1), ts])[src]
        comb: Dict[str, torch.Tensor] = {}
        for name in self.ring_features:
            comb[name] = torch.cat([state["ring." + name].reshape(-1), idx[name]])[src]
        if r > 0:  # the new ring: the last R combined rows, right-aligned
            keep = j >= (comb_len - r)[seg]
            dest = (seg * r + r - comb_len[seg] + j)[keep]
            out["ring_ts"] = torch.zeros(b * r, dtype=torch.int64).index_copy(0, dest, comb_ts[keep]).view(b, r)
            for name in self.ring_features:
                out["ring." + name] = torch.zeros(b * r, dtype=torch.int64).index_copy(
                    0, dest, comb[name][keep]).view(b, r)
        if not self.reads_head:
            return
        # the rows that leave the short window now: events max(old-K, 0) .. max(old+n-K, 0) - 1
        k = self.short_len
        before = (old - k).clamp(min=0)
        after = (old + n - k).clamp(min=0)
        first = old - ring_len  # event number of combined row 0
        h_idx: Dict[str, torch.Tensor] = {}
        if self.has_short:
            rows = torch.nonzero((j >= (before - first)[seg]) & (j < (after - first)[seg])).flatten()
            h_ts = comb_ts[rows]
            for name in self.ring_features:
                h_idx[name] = comb[name][rows]
        else:  # no short branch: every new event enters the long branch
            h_ts = ts
            h_idx = idx
        count = after - before
        off = lengths_to_offsets(count)
        if int(off[-1]) == 0:
            return
        emb: Dict[str, torch.Tensor] = {}
        for name, feature in self.inputs.items():
            if name in self.features:
                emb[name] = feature.table.lookup(h_idx[name])
        h = self.tower.combine(emb)
        gap = self._gaps(h_ts, off, count, before, state["long_last_ts"])
        ends = last_index(off)
        moved = count > 0
        if self.has_long:
            memories: List[torch.Tensor] = []
            for i in range(self.num_blocks):
                memories.append(state["long." + str(i)])
            x, finals = self.tower.long.step_rows(h, off, gap, memories)
            for i in range(self.num_blocks):
                out["long." + str(i)] = finals[i]
            if self.long_intent:
                out["reader"] = self.tower.long.reader.write(x, off, gap, state["reader"])
            if self.long_last:
                out["long_out"] = torch.where(moved.unsqueeze(1), x[ends], state["long_out"])
        if self.has_copy:
            out["copy"] = self.tower.copy.write(h, off, gap, state["copy"])
        out["long_last_ts"] = torch.where(moved, h_ts[ends], state["long_last_ts"])

    def _gaps(self, ts: torch.Tensor, off: torch.Tensor, count: torch.Tensor, before: torch.Tensor,
              last_ts: torch.Tensor) -> torch.Tensor:
        """Seconds from each new long row (``ts [N_l]``, ``off [B+1]``, ``count [B]``) to its previous
        event ``[N_l]`` int64: within the new rows as ``previous_gap``; a user's first new row measures
        from ``last_ts [B]`` when ``before [B]`` events are in the memory already, else 0."""
        prev = torch.cat([ts[:1], ts[:-1]])
        gap = (ts - prev).clamp(min=0)
        users = torch.nonzero(count > 0).flatten()
        firsts = off[:-1][users]
        cont = torch.where(before[users] > 0, (ts[firsts] - last_ts[users]).clamp(min=0), torch.zeros_like(firsts))
        return gap.index_copy(0, firsts, cont)

    def _advance_repeat(self, state: Dict[str, torch.Tensor], idx: Dict[str, torch.Tensor],
                        ts: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """The repeat table ``[B, M, 10]`` after the new events, one event position at a time
        (vectorised over users). A new item takes a free slot or the least recently seen item's."""
        table = state["repeat"].clone()
        b = n.numel()
        head = self.repeat
        if head is None or ts.numel() == 0:
            return table
        behaviors: Optional[torch.Tensor] = None
        if head.cycles and "behavior" in idx:  # idx holds the model's tables only
            behaviors = idx["behavior"]
        cycle = head._cycle_mask(behaviors, ts.numel(), ts.device).to(torch.int64)
        off = lengths_to_offsets(n)
        width = int(n.max())
        items = jagged_to_padded_1d(idx["item"], off, width)
        times = jagged_to_padded_1d(ts, off, width)
        cycles = jagged_to_padded_1d(cycle, off, width)
        users = torch.arange(b)
        old = state["events"]
        fresh = torch.zeros(b, 10, dtype=torch.int64)  # len(REPEAT_COLUMNS)
        for t in range(width):
            item = items[:, t]
            use = (n > t) & (item >= 2)  # padding (0) and unknown (1) items are never paired
            if not bool(use.any()):
                continue
            pos = old + t
            tt = times[:, t]
            c = cycles[:, t]
            match = table[:, :, 0] == item.unsqueeze(1)
            found = match.any(1)
            age = torch.where(table[:, :, 0] == 0, torch.full_like(table[:, :, 2], -1), table[:, :, 2])
            slot = torch.where(found, match.to(torch.int64).argmax(1), age.argmin(1))
            was = table[users, slot]
            row = torch.where(found.unsqueeze(1), was, fresh)
            first_cycle = (row[:, 5] == 0) & (c > 0)
            new = torch.stack([item, row[:, 1] + 1, pos, tt, c, row[:, 5] + c,
                               torch.where(first_cycle, pos, row[:, 6]), torch.where(first_cycle, tt, row[:, 7]),
                               torch.where(c > 0, pos, row[:, 8]), torch.where(c > 0, tt, row[:, 9])], 1)
            table[users, slot] = torch.where(use.unsqueeze(1), new, was)
        return table

    # ---------------------------------------------------------------- answers

    @torch.jit.export
    def state_user_embedding(self, state: Dict[str, torch.Tensor], request_time: torch.Tensor) -> torch.Tensor:
        """User embeddings ``[B, D]`` from a state (equal to :meth:`user_embedding` of the history the
        state was given, when it is at most ``max_len`` events); ``request_time [B]`` int64 seconds."""
        b = self._check_state(state)
        if request_time.dtype != torch.int64 or request_time.dim() != 1 or request_time.numel() != b:
            raise ValueError("request_time must be a 1-D int64 tensor with one entry per state user ("
                             + str(b) + ")")
        if bool((request_time < 0).any()) or bool((request_time >= self.max_seconds).any()):
            raise ValueError("request_time: not seconds since 1970 in [0, 2^40) (milliseconds? divide by 1000)")
        events = state["events"]
        t_last = torch.where(events > 0, state["last_ts"], request_time)
        short_out: Optional[torch.Tensor] = None
        if self.has_short:
            r = self.ring
            ring_len = events.clamp(max=r)
            off = lengths_to_offsets(ring_len)
            total = int(off[-1])
            seg = segment_ids(off, total)
            flat = seg * r + r - ring_len[seg] + torch.arange(total) - off[:-1][seg]
            ts = state["ring_ts"].reshape(-1)[flat]
            emb: Dict[str, torch.Tensor] = {}
            for name, feature in self.inputs.items():
                if name in self.features:
                    emb[name] = feature.table.lookup(state["ring." + name].reshape(-1)[flat])
            qts: Optional[torch.Tensor] = None
            if self.tower.next_query:
                qts = next_event_times(ts, off, request_time)
            short_out = self.tower.short(self.tower.combine(emb), off, ts, qts)
        branches: List[torch.Tensor] = []
        since_long = t_last - state["long_last_ts"]
        if self.has_long:
            empty = self.tower.long.empty.unsqueeze(0).expand(b, self.tower.dim)
            answer = empty
            if self.long_intent:
                if short_out is not None:
                    answer = self.tower.long.out_norm(
                        self.tower.long.reader.read(state["reader"], short_out, since_long))
            if self.long_last:
                answer = state["long_out"]
            branches.append(torch.where((events > self.short_len).unsqueeze(1), answer, empty))
        if short_out is not None:
            branches.append(short_out)
        user = self.tower._fuse(branches)[0]
        if self.has_copy:
            scale = self.tower.copy_scale
            if short_out is not None and scale is not None:
                user = user + scale * self.tower.copy.read(state["copy"], short_out, since_long)
        return scoring_vectors(user, self.tower.cosine)

    @torch.jit.export
    def state_repeat_bonus(self, state: Dict[str, torch.Tensor], user: torch.Tensor
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The repeat path's bonus of every kept history item, ``(user [P] int64, item index [P]
        int64, bonus [P] float32)``, for ``user [B, D]`` (:meth:`state_user_embedding`); empty
        without a repeat path."""
        head = self.repeat
        if head is None:
            z = torch.zeros(0, dtype=torch.int64)
            return z, z, torch.zeros(0)
        self._check_state(state)
        table = state["repeat"]
        kept = torch.nonzero(table[:, :, 0] >= 2)  # [P, 2]: (user, slot) of every kept item
        who, slot = kept[:, 0], kept[:, 1]
        rec = table[who, slot]  # [P, 10]
        query = state["events"][who] - 1  # event number of the last event (the query row)
        t_query = state["last_ts"][who]
        stats: Optional[CycleStats] = None
        if head.cycles:
            stats = (rec[:, 4] > 0, rec[:, 5], query - rec[:, 8], t_query - rec[:, 9], rec[:, 8] - rec[:, 6],
                     rec[:, 9] - rec[:, 7])
        f = head.stat_features(rec[:, 1], query - rec[:, 2], t_query - rec[:, 3], stats)
        bonus = head.bonus_and_gate(user, who, f)[0]
        return who, rec[:, 0], bonus

    @torch.jit.export
    def state_scores(self, state: Dict[str, torch.Tensor], request_time: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, V]`` from a state, as :meth:`scores` of the whole history (columns 0 and 1
        ``-inf``)."""
        user = self.state_user_embedding(state, request_time)
        if self.repeat is None:
            return self._final_scores(user, None)
        return self._final_scores(user, self.state_repeat_bonus(state, user))

    @torch.jit.export
    def score_state(self, state: Dict[str, torch.Tensor], request_time: torch.Tensor,
                    k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items per state user: ``(ids [B, k'] int64, scores [B, k'] float32)``, best first,
        as :meth:`forward` (``k' = min(k, V_item - 2)``)."""
        if k < 1:
            raise ValueError("k must be >= 1, got " + str(k))
        s = self.state_scores(state, request_time)
        top = torch.topk(s, min(k, self.num_items - 2), dim=1)
        return self.item_ids(top.indices), top.values


def state_bytes_per_user(module: StatefulServing) -> int:
    """Bytes of one user's state of ``module`` (every key's per-user shape; int64 and float32)."""
    total = 0
    for key, shape in module.state_shapes.items():
        size = 1
        for s in shape:
            size *= int(s)
        total += size * (4 if key in module.float_keys else 8)
    return total
