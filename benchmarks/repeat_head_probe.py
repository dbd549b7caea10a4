"""The repeat path alone: what its features and scorer can learn, without the tower.

Trains only a :class:`~hytrec_torchrec.modules.repeat.RepeatHead` plus one learned bias per item
(a popularity prior standing in for the catalog scores ``u·v``) with the exact softmax over the
whole catalog, on every position of the last ``--rows`` rows of each training history, and
reports HR@10 of the test target (each history's last event; the validation and test events are
left out of training, as ``split: leave_last_out``) per target kind of a segments side file.

This isolates "can the repeat path rank a due re-purchase" from the tower and its recipe: a
minute or two on CPU per scorer, where a full training takes ten or more. It is a diagnostic,
not a model: there is no user embedding (the intent term sees a zero vector).

    python benchmarks/repeat_head_probe.py --data runs/longhist/replenishment/prepared \\
        --segments runs/longhist/replenishment/raw/segments.parquet --cycle-behaviors pay \\
        --scorer additive mlp --out benchmarks/results/repeat_head_probe.txt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from hytrec_torchrec.modules.repeat import REPEAT_SCORERS, RepeatHead

Seq = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # items, behaviours, timestamps (each [L])


def _read(data: Path, segments: Path) -> Tuple[List[Seq], List[str], Dict[str, int], int]:
    """Histories of the prepared dataset, each user's kind, the behaviour vocabulary, item vocab size."""
    seq = pq.read_table(data / "sequences").to_pydict()
    users = pq.read_table(data / "vocab" / "user.parquet").to_pydict()
    raw_user = dict(zip(users["index"], users["raw"]))
    seg = pq.read_table(segments).to_pydict()
    kind_of = {str(u): str(k) for u, k in zip(seg["user_id"], seg["kind"])}
    beh = pq.read_table(data / "vocab" / "behavior.parquet").to_pydict()
    items = pq.read_table(data / "vocab" / "item.parquet", columns=["index"]).column("index")
    seqs = [(torch.tensor(i), torch.tensor(b), torch.tensor(t))
            for i, b, t in zip(seq["item"], seq["behavior"], seq["timestamp"])]
    kinds = [kind_of.get(str(raw_user[u]), "unknown") for u in seq["user"]]
    return seqs, kinds, dict(zip(beh["raw"], beh["index"])), int(max(items.to_pylist())) + 1


def _pack(seqs: List[Seq], idx: List[int], drop: int) -> Tuple[torch.Tensor, ...]:
    """Histories ``idx`` without their last ``drop`` events, packed: items, behaviours, timestamps
    ``[N]`` and offsets ``[B+1]``."""
    parts = [(s[0][:-drop], s[1][:-drop], s[2][:-drop]) for s in (seqs[k] for k in idx)]
    lengths = torch.tensor([len(p[0]) for p in parts])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]),
            offsets)


def _logits(bias: torch.Tensor, queries: int, bonus: Tuple[torch.Tensor, ...],
            keep: Optional[torch.Tensor] = None, where: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[Q, V]`` item bias plus the repeat bonus of each query's history items."""
    q, item, value = bonus
    if keep is not None and where is not None:
        q, item, value = where[q[keep]], item[keep], value[keep]
    return bias.unsqueeze(0).expand(queries, -1).index_put((q, item), value, accumulate=True)


def probe(seqs: List[Seq], kinds: List[str], num_items: int, cycle_mask: Optional[torch.Tensor], scorer: str,
          cycles: bool, steps: int, rows: int, batch: int, lr: float, seed: int) -> Dict[str, Tuple[float, int]]:
    """Train one head and return ``{kind: (HR@10, n)}`` on the test targets."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = RepeatHead(8, train_rows=rows, cycles=cycles, cycle_behaviors=cycle_mask, scorer=scorer)
    bias = torch.nn.Parameter(torch.zeros(num_items))
    opt = torch.optim.Adam([*head.parameters(), bias], lr=lr)
    for _ in range(steps):
        items, beh, ts, off = _pack(seqs, rng.integers(0, len(seqs), batch).tolist(), drop=2)
        n = items.shape[0]
        q, it, v, _ = head(torch.zeros(n, 8), items, off, ts, True, beh)
        # supervised rows: the last `rows` of each history but its last (it has no next event)
        sup = torch.zeros(n, dtype=torch.bool)
        for a, b in zip(torch.maximum(off[:-1], off[1:] - rows).tolist(), off[1:].tolist()):
            sup[a:b - 1] = True
        r = torch.nonzero(sup).squeeze(1)
        where = torch.full((n,), -1, dtype=torch.int64)
        where[r] = torch.arange(r.numel())
        logits = _logits(bias, r.numel(), (q, it, v), keep=where[q] >= 0, where=where)
        loss = F.cross_entropy(logits, items[r + 1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    hits: Dict[str, List[float]] = {}
    with torch.no_grad():
        for s in range(0, len(seqs), 64):
            idx = list(range(s, min(s + 64, len(seqs))))
            items, beh, ts, off = _pack(seqs, idx, drop=1)
            q, it, v, _ = head(torch.zeros(len(idx), 8), items, off, ts, False, beh)
            logits = _logits(bias, len(idx), (q, it, v))
            logits[:, :2] = float("-inf")  # padding and unknown items
            top = logits.topk(10, 1).indices
            target = torch.stack([seqs[k][0][-1] for k in idx])
            for j, k in enumerate(idx):
                hits.setdefault(kinds[k], []).append(float(bool((top[j] == target[j]).any())))
    return {k: (float(np.mean(h)), len(h)) for k, h in sorted(hits.items())}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a hytrec-prep output folder")
    ap.add_argument("--segments", type=Path, required=True, help="segments side file (user_id, kind)")
    ap.add_argument("--scorer", nargs="+", default=list(REPEAT_SCORERS), choices=REPEAT_SCORERS)
    ap.add_argument("--no-cycles", action="store_true", help="leave out the cycle features")
    ap.add_argument("--cycle-behaviors", nargs="*", default=[], help="raw purchase-like behaviour IDs")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rows", type=int, default=256, help="supervised rows per history")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    seqs, kinds, behaviors, num_items = _read(a.data, a.segments)
    mask: Optional[torch.Tensor] = None
    if a.cycle_behaviors:
        unknown = [b for b in a.cycle_behaviors if b not in behaviors]
        if unknown:
            ap.error(f"--cycle-behaviors: {unknown} not in {a.data / 'vocab' / 'behavior.parquet'}")
        mask = torch.zeros(max(behaviors.values()) + 1, dtype=torch.bool)
        mask[[behaviors[b] for b in a.cycle_behaviors]] = True
    lines = [f"# python benchmarks/repeat_head_probe.py --data {a.data} --segments {a.segments} "
             f"--cycle-behaviors {' '.join(a.cycle_behaviors)} --steps {a.steps} --rows {a.rows} --batch {a.batch} "
             f"--lr {a.lr}{' --no-cycles' if a.no_cycles else ''}",
             f"# {len(seqs)} histories; HR@10 of the last event per kind (n); the repeat head + an item bias only",
             "scorer    seed  seconds  " + "  ".join(f"{k:>16}" for k in sorted(set(kinds)))]
    print("\n".join(lines), flush=True)
    for scorer in a.scorer:
        for seed in a.seeds:
            t0 = time.perf_counter()
            res = probe(seqs, kinds, num_items, mask, scorer, not a.no_cycles, a.steps, a.rows, a.batch, a.lr, seed)
            line = (f"{scorer:<9} {seed:>4} {time.perf_counter() - t0:>8.0f}  "
                    + "  ".join(f"{res[k][0]:>9.3f} ({res[k][1]:>4})" for k in sorted(res)))
            print(line, flush=True)
            lines.append(line)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
