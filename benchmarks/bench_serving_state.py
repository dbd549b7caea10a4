"""Serving from a kept state against a full recompute, CPU, batch 1, 1 thread.

The default tower (configs/model/hytrec.yaml: D = 64, TTT gated delta, intent readout, time inputs,
K = 64, the repeat path with cycle features and the mlp scorer) with random weights, the catalog of
``bench_serving.py`` (100,000 items), the scripted :class:`StatefulServing` saved and loaded back as a
server would. For every history length L it times, call by call in turn so that they share the
machine's load:

* ``request``: ``score_state(state, request_time, k=100)`` on a state that has read L events;
* ``update``: ``update(state, one new event)`` on that state (the state is not kept, so every call
  appends to the same L events);
* ``recompute``: ``forward(values, lengths, request_time, k=100)`` on the L events (not at 100k: the
  stateless path is measured in bench_serving.py up to 10k).

The state is built before timing by updates of 1,000 events. The repeat table keeps M = 1,024
items per user (``--repeat-items``); max_len is 100,000 so that the recompute truncates nothing.

    python benchmarks/bench_serving_state.py --out benchmarks/results/serving_state_cpu.txt
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from hytrec_torchrec.config import load_config
from hytrec_torchrec.modules.config import TowerConfig
from hytrec_torchrec.modules.repeat import RepeatHead
from hytrec_torchrec.modules.tower import HyTRecTower
from hytrec_torchrec.serving.export import example_request
from hytrec_torchrec.serving.idmap import Vocab
from hytrec_torchrec.serving.state import StatefulServing, state_bytes_per_user

REPO = Path(__file__).resolve().parents[1]
SIZES = {"item": 100_002, "attribution": 10_002, "category": 1_002, "behavior": 11}
Request = Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor]


def vocabs() -> Dict[str, Vocab]:
    """Integer raw IDs 1,000,000 + 3·index for every table."""
    return {name: Vocab(name, size, [str(1_000_000 + 3 * i) for i in range(2, size)], np.arange(2, size))
            for name, size in SIZES.items()}


def build(repeat_items: int, max_len: int) -> StatefulServing:
    """The benchmark module (random weights; the repeat scorer's zero output layer made random)."""
    cfg = load_config(TowerConfig, REPO / "configs" / "model" / "hytrec.yaml", [])
    torch.manual_seed(0)
    tower = HyTRecTower(cfg).eval()
    repeat = RepeatHead(cfg.embedding_dim, cycles=True, scorer="mlp", hidden=cfg.repeat_hidden).eval()
    with torch.no_grad():
        for p in repeat.parameters():
            p.normal_(0.0, 0.1)
    weights = {n: torch.randn(s, cfg.embedding_dim) * 0.1 for n, s in SIZES.items()}
    return StatefulServing(tower, weights, vocabs(), list(cfg.features), max_len=max_len, repeat=repeat,
                           repeat_items=repeat_items)


def history(length: int, seed: int) -> Request:
    """One user's history of ``length`` events over 5,000 distinct items (repeats included)."""
    values, lengths, t = example_request(vocabs(), [length], seed=seed)
    g = np.random.default_rng(seed)
    values["item"] = torch.from_numpy(1_000_000 + 3 * g.integers(2, 5_002, size=length)).to(torch.int64)
    values["timestamp"] = torch.from_numpy(1_700_000_000 + np.sort(g.integers(0, 86_400 * 365, size=length)))
    return values, lengths, torch.full((1,), 1_700_000_000 + 86_400 * 366, dtype=torch.int64)


def feed(model: torch.jit.ScriptModule, request: Request, piece: int = 1000) -> Dict[str, torch.Tensor]:
    values, lengths, _ = request
    n = int(lengths["timestamp"][0])
    state = model.init_state(1)
    for a in range(0, n, piece):
        b = min(n, a + piece)
        state = model.update(state, {k: v[a:b] for k, v in values.items()},
                             {k: torch.tensor([b - a]) for k in values})
    return state


def time_calls(calls: Dict[str, Callable[[], object]], budget_s: float, min_calls: int = 5,
               max_calls: int = 200) -> Dict[str, List[float]]:
    """Milliseconds of every call of each callable, called in turn after 3 warm-up calls each."""
    out: Dict[str, List[float]] = {name: [] for name in calls}
    for fn in calls.values():
        for _ in range(3):
            fn()
    start = time.perf_counter()
    while True:
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            out[name].append((time.perf_counter() - t0) * 1e3)
        n = len(next(iter(out.values())))
        if n >= max_calls or (n >= min_calls and time.perf_counter() - start > budget_s):
            return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serving_state_cpu.txt")
    parser.add_argument("--lengths", default="1000,10000,100000")
    parser.add_argument("--repeat-items", type=int, default=1024)
    parser.add_argument("--budget-s", type=float, default=20.0, help="seconds of timed calls per length")
    args = parser.parse_args()
    torch.set_num_threads(1)
    module = build(args.repeat_items, max_len=100_000)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        torch.jit.script(module).save(f"{tmp}/model.pt")
        model = torch.jit.load(f"{tmp}/model.pt")
    lines = [
        "# bench_serving_state.py: kept-state request / one-event update / full recompute, batch 1,",
        f"# 1 thread, k = 100, 100,000 items, default tower D = 64 (TTT, intent, repeat mlp + cycles), "
        f"M = {args.repeat_items}, torch {torch.__version__}",
        "# machine: the 2-core development machine SHARED with long-running trainings; the benchmark ran",
        "# under nice -n 19, so absolute times are inflated and noisy; compare columns within a row.",
        f"# state bytes per user: {state_bytes_per_user(module)}",
        "# ms per call: p50 (p90) [calls]",
        f"{'history':>8} | {'request from state':>22} | {'update, 1 event':>22} | {'full recompute':>22}",
    ]
    print("\n".join(lines), flush=True)
    with torch.no_grad():
        for length in [int(x) for x in args.lengths.split(",")]:
            request = history(length + 1, seed=length)
            values, lengths, t = request
            past = ({k: v[:length] for k, v in values.items()}, {k: torch.tensor([length]) for k in values}, t)
            new = ({k: v[length:] for k, v in values.items()}, {k: torch.tensor([1]) for k in values})
            state = feed(model, past)
            calls: Dict[str, Callable[[], object]] = {
                "request": lambda: model.score_state(state, t, 100),
                "update": lambda: model.update(state, new[0], new[1]),
            }
            if length <= 10_000:
                calls["recompute"] = lambda: model(past[0], past[1], t, 100)
            times = time_calls(calls, args.budget_s)
            cells = []
            for name in ("request", "update", "recompute"):
                if name not in times:
                    cells.append(f"{'not run':>22}")
                    continue
                ms = sorted(times[name])
                p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
                cells.append(f"{statistics.median(ms):>9.2f} ({p90:>7.2f}) [{len(ms):>3}]")
            line = f"{length:>8} | " + " | ".join(cells)
            print(line, flush=True)
            lines.append(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
