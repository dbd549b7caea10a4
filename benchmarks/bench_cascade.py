"""ULIM's served cascade against full-catalog scoring of the same module, at a large catalog.

    .venv/bin/python benchmarks/bench_cascade.py [--items 1000000] [--categories 1000]
        [--history 1000] [--top-categories 10] [--rounds 5] [--out benchmarks/results/cascade_cpu.txt]

A :class:`~hytrec_torchrec.serving.ulim.UlimServing` built from an untrained ULIM model (the
default tower with 16 interests and ULIM's head, D = 64; its weights drawn at random, with the
head's output layer away from zero) over a synthetic catalog of ``--items`` items in
``--categories`` categories (item i in category i mod C), float32 tables. One request of
``--history`` events, 1 thread: the latency of the answer through the cascade (``model(..., k)``)
and of the full ranking (``scores`` + top-k), alternating, median of ``--rounds``; the items each
way scores; and how many of the full ranking's top 200 the cascade returns (for an untrained model
this measures the mechanics, not the quality: docs/results.md has the trained numbers).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--categories", type=int, default=1000)
    p.add_argument("--history", type=int, default=1000)
    p.add_argument("--top-categories", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--out", default="benchmarks/results/cascade_cpu.txt")
    a = p.parse_args()
    from hytrec_torchrec.config import from_dict
    from hytrec_torchrec.modules import HyTRecTower, TowerConfig
    from hytrec_torchrec.modules.ulim import UlimHead
    from hytrec_torchrec.serving.idmap import Vocab
    from hytrec_torchrec.serving.ulim import UlimServing

    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = 64
    cfg = from_dict(TowerConfig, {"embedding_dim": d, "kind": "ulim", "interests": {"count": 16},
                                  "ulim": {"top_categories": a.top_categories}, "repeat": False})
    tower = HyTRecTower(cfg).eval()
    vc = a.categories + 2
    head = UlimHead(cfg.ulim, d, vc, cosine=False)
    torch.nn.init.normal_(head.mlp[2].weight, std=0.02)
    sizes = {"item": a.items + 2, "attribution": 4, "category": vc, "behavior": 4}
    vocabs = {f: Vocab(f, n, [str(i) for i in range(2, n)], np.arange(2, n, dtype=np.int64)) for f, n in sizes.items()}
    weights = {f: torch.randn(n, d) * 0.1 for f, n in sizes.items()}
    item_category = torch.cat([torch.ones(2, dtype=torch.int64), 2 + torch.arange(a.items) % a.categories])
    served = UlimServing(tower, weights, vocabs, list(cfg.features), a.history, head=head,
                         item_category=item_category, temperature=1.0, top_categories=a.top_categories).eval()
    g = torch.Generator().manual_seed(1)
    n = a.history
    items = torch.randint(2, a.items + 2, (n,), generator=g)
    values = {"item": items, "attribution": torch.full((n,), 2), "category": item_category[items],
              "behavior": torch.full((n,), 2), "timestamp": 1_000_000 + torch.arange(n) * 600}
    req = (values, {k: torch.tensor([n]) for k in values}, torch.tensor([1_000_000 + n * 600]))
    times = {"cascade": [], "full": [], "tower": []}
    with torch.no_grad():
        for _ in range(a.rounds):
            t = time.perf_counter()
            ids, top = served(*req, a.k)
            times["cascade"].append(time.perf_counter() - t)
            t = time.perf_counter()
            full = torch.topk(served.scores(*req), a.k, dim=1)
            times["full"].append(time.perf_counter() - t)
            t = time.perf_counter()
            served.user_parts(*req)
            times["tower"].append(time.perf_counter() - t)
        keep = torch.topk(served.category_log_probs(*req)[:, 2:], a.top_categories, dim=1).indices + 2
    scored = int(torch.isin(item_category[2:], keep[0]).sum())
    overlap = len(set(ids[0].tolist()) & set(full.indices[0].tolist())) / a.k
    load = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"# bench_cascade.py --items {a.items} --categories {a.categories} --history {a.history} "
             f"--top-categories {a.top_categories} --rounds {a.rounds} --k {a.k}: one request, 1 thread, "
             f"{platform.processor() or platform.machine()}, load average {load:.1f} at the end",
             "# untrained ULIM module (D 64, 16 interests); medians over rounds, cascade and full alternating", "",
             f"{'way':<10}{'latency ms':>12}{'after the tower ms':>20}{'items scored':>14}",
             f"{'cascade':<10}{med['cascade'] * 1e3:>12.1f}{(med['cascade'] - med['tower']) * 1e3:>20.1f}{scored:>14,}",
             f"{'full':<10}{med['full'] * 1e3:>12.1f}{(med['full'] - med['tower']) * 1e3:>20.1f}{a.items:>14,}",
             "", f"the tower alone (user_parts): {med['tower'] * 1e3:.1f} ms; full / cascade latency: "
             f"{med['full'] / med['cascade']:.1f}x, after the tower "
             f"{(med['full'] - med['tower']) / max(med['cascade'] - med['tower'], 1e-9):.1f}x; items scored: "
             f"{a.items / max(scored, 1):.0f}x fewer; cascade top-{a.k} ∩ full top-{a.k}: {overlap:.2f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
