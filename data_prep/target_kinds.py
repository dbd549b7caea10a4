"""A side file that says where each user's test target was last seen in the history.

For any prepared dataset and the ``leave_last_out`` split (test target = each user's last event,
its history = every event before it), each user gets one ``kind``:

* ``recent``: the target item is among the last ``window`` history events (the short branch sees it);
* ``far``: the item is in the history, but only before the last ``window`` events (only a model
  that reads the far history, or the repeat path, can know it);
* ``new``: the item is not in the history.

``hytrec-eval ... segments.side_file=OUT.parquet`` then reports ``kind=recent``, ``kind=far`` and
``kind=new`` as segments (on the *untruncated* history, so every model compared is split the same
way whatever its ``data.max_len``). The synthetic long-history generators write the same column
from their ground truth; this tool gives it for real data.

``--by category`` asks the same of the target's *category* (``recent``: a category of the last
``window`` events; ``far``: seen only before them; ``new``: never), the question the category
interests answer (docs/ulim.md); ``--by both`` writes ``ITEM_KIND/CATEGORY_KIND`` (``new/far``: a
new item of a category last seen beyond the window).

``python -m data_prep.target_kinds PREPARED OUT.parquet [--window 64] [--by item|category|both]``
prints the counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import PrepInputError

__all__ = ["target_kind", "target_kinds"]


def target_kind(items: np.ndarray, window: int) -> str:
    """``recent`` / ``far`` / ``new`` for one user's item sequence ``[n]`` (target = the last)."""
    if items.shape[0] < 2:
        return "new"
    target, history = items[-1], items[:-1]
    seen = np.flatnonzero(history == target)
    if seen.size == 0:
        return "new"
    distance = history.shape[0] - int(seen[-1])  # 1 = the most recent history event
    return "recent" if distance <= window else "far"


BY = ("item", "category", "both")


def target_kinds(prepared: str | Path, window: int = 64, by: str = "item") -> pa.Table:
    """``(user_id: raw string, kind)`` for every user of a prepared directory; ``by``: the kind of
    the target's item, of its category, or both joined by ``/``."""
    if by not in BY:
        raise PrepInputError(f"by={by!r}: one of {list(BY)}")
    d = Path(prepared)
    try:
        meta = json.loads((d / "meta.json").read_text())
        users = pq.read_table(d / "vocab" / "user.parquet", columns=["raw", "index"])
    except (OSError, ValueError) as exc:
        raise PrepInputError(f"{d}: not a prepared dataset ({exc})") from None
    raw_of = dict(zip(users.column("index").to_pylist(), users.column("raw").to_pylist()))
    out_user, out_kind = [], []
    for p in range(int(meta["num_partitions"])):
        part = pq.read_table(d / "sequences" / f"part-{p:05d}.parquet", columns=["user", "item", "category"])
        for u, items, cats in zip(part.column("user").to_pylist(), part.column("item").to_pylist(),
                                  part.column("category").to_pylist()):
            out_user.append(str(raw_of[u]))
            ik = target_kind(np.asarray(items, dtype=np.int64), window)
            ck = target_kind(np.asarray(cats, dtype=np.int64), window)
            out_kind.append(ik if by == "item" else ck if by == "category" else f"{ik}/{ck}")
    return pa.table({"user_id": pa.array(out_user, pa.string()), "kind": pa.array(out_kind, pa.string())})


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_prep.target_kinds",
                                 description="Side file: was each user's test target seen recently, far back, or never?")
    ap.add_argument("prepared")
    ap.add_argument("out")
    ap.add_argument("--window", type=int, default=64, help="events counted as recent (the short window K)")
    ap.add_argument("--by", choices=BY, default="item", help="the kind of the target's item, its category, or both")
    ns = ap.parse_args(argv)
    if ns.window < 1:
        print("error: --window must be at least 1", file=sys.stderr)
        return 2
    try:
        table = target_kinds(ns.prepared, ns.window, ns.by)
    except PrepInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, ns.out)
    counts = Counter(table.column("kind").to_pylist())
    print(f"{ns.out}: {table.num_rows} users; " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
