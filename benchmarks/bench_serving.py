"""Serving latency of the exported TorchScript model on CPU, and file sizes (float32 vs int8).

The model is the paper configuration (configs/model/hytrec.yaml: D=64, long TTTS, short K=64,
4 experts) with random weights (latency does not depend on trained values), max_len 10,000 and a
synthetic catalog: 100,000 items, 10,000 attribution IDs, 1,000 categories, 9 behaviours. Each
variant is scripted, saved, loaded back with ``torch.jit.load`` and called as a server would:
``model(values, lengths, request_time, k=100)`` under ``torch.no_grad``, after warm-up calls
(the TorchScript profiling executor optimises during the first calls). Every request in a batch
has the same history length.

    python benchmarks/bench_serving.py --out benchmarks/results/serving.txt
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from hytrec_torchrec.config import load_config
from hytrec_torchrec.modules.config import TowerConfig
from hytrec_torchrec.modules.tower import HyTRecTower
from hytrec_torchrec.serving.export import example_request
from hytrec_torchrec.serving.idmap import Vocab
from hytrec_torchrec.serving.module import DEFAULT_MAX_TOKENS_PER_PASS, HyTRecServing

REPO = Path(__file__).resolve().parents[1]
SIZES = {"item": 100_002, "attribution": 10_002, "category": 1_002, "behavior": 11}
BEHAVIORS = ["click", "redirect", "activation", "wakeup", "product_click", "stay", "collect",
             "add_to_cart", "pay"]


def synthetic_vocabs() -> Dict[str, Vocab]:
    """Integer raw IDs 1,000,000 + 3·index for every table but behaviour (names: index space)."""
    vocabs: Dict[str, Vocab] = {}
    for name, size in SIZES.items():
        index = np.arange(2, size, dtype=np.int64)
        raw = BEHAVIORS if name == "behavior" else [str(1_000_000 + 3 * i) for i in index.tolist()]
        vocabs[name] = Vocab(name, size, raw, index)
    return vocabs


def build(int8: bool, dim: int, vocabs: Dict[str, Vocab],
          max_tokens_per_pass: int = DEFAULT_MAX_TOKENS_PER_PASS) -> HyTRecServing:
    """The benchmark serving module (random weights)."""
    cfg = load_config(TowerConfig, REPO / "configs" / "model" / "hytrec.yaml", [f"embedding_dim={dim}"])
    torch.manual_seed(0)
    tower = HyTRecTower(cfg).eval()
    weights = {n: torch.randn(s, dim) * 0.1 for n, s in SIZES.items()}
    return HyTRecServing(tower, weights, vocabs, list(cfg.features), max_len=10_000, int8=int8,
                         max_tokens_per_pass=max_tokens_per_pass)


def save_load(module: HyTRecServing, path: Path) -> Tuple[torch.jit.ScriptModule, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(module).save(str(path))
        return torch.jit.load(str(path)), path.stat().st_size


def measure(models: List[torch.jit.ScriptModule], vocabs: Dict[str, Vocab], batch: int, length: int,
            budget_s: float, k: int) -> List[Tuple[float, float, int]]:
    """(p50 ms, p99 ms, calls) of one request shape for each model; several models are called in
    turn, call by call, so that they share the machine's load."""
    request = example_request(vocabs, [length] * batch, seed=length + batch)
    times: List[List[float]] = [[] for _ in models]
    with torch.no_grad():
        for model in models:
            for _ in range(3):
                model(*request, k)
        start = time.perf_counter()
        while len(times[0]) < 5 or (time.perf_counter() - start < budget_s * len(models)
                                     and len(times[0]) < 200):
            for model, out in zip(models, times):
                t0 = time.perf_counter()
                model(*request, k)
                out.append(time.perf_counter() - t0)
    result = []
    for out in times:
        q = np.percentile(np.array(out) * 1e3, [50, 99])
        result.append((float(q[0]), float(q[1]), len(out)))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="write the table here too")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--lengths", type=int, nargs="+", default=[100, 1000, 10_000])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--budget", type=float, default=6.0, help="seconds of calls per shape (min 5 calls)")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--no-one-pass", dest="one_pass", action="store_false",
                   help="skip the one-pass (max_tokens_per_pass=0) float32 comparison")
    p.add_argument("--machine", default="shared 2-core machine (other jobs running): treat as rough numbers",
                   help="machine description for the results header")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"# serving latency, torch {torch.__version__}, CPU threads={args.threads}, D={args.dim}, "
             f"catalog {SIZES['item'] - 2} items, k={args.k}",
             f"# {args.machine}; load average at start: " + "%.1f %.1f %.1f" % os.getloadavg(), ""]
    rows: List[str] = []
    sizes: Dict[str, int] = {}
    vocabs = synthetic_vocabs()
    with tempfile.TemporaryDirectory() as tmp:
        # "1pass": the whole batch in one tower pass (max_tokens_per_pass=0), the behaviour before
        # token-budgeted passes; measured on batches > 1 only (identical for one request),
        # interleaved call by call with the default float32 model.
        variants = [("float32", False, DEFAULT_MAX_TOKENS_PER_PASS), ("float32-1pass", False, 0),
                    ("int8", True, DEFAULT_MAX_TOKENS_PER_PASS)]
        models: Dict[str, torch.jit.ScriptModule] = {}
        for tag, int8, tokens in variants:
            if tag.endswith("1pass") and not args.one_pass:
                continue
            models[tag], size = save_load(build(int8, args.dim, vocabs, tokens), Path(tmp) / f"{tag}.pt")
            if not tag.endswith("1pass"):
                sizes[tag] = size
        groups = [["float32", "float32-1pass"] if args.one_pass else ["float32"], ["int8"]]
        for group in groups:
            for length in args.lengths:
                for batch in args.batches:
                    tags = group[:1] if batch == 1 else group
                    stats = measure([models[t] for t in tags], vocabs, batch, length, args.budget, args.k)
                    for tag, (p50, p99, calls) in zip(tags, stats):
                        row = (f"{tag:13s} history {length:6d} batch {batch:3d}   p50 {p50:9.1f} ms   "
                               f"p99 {p99:9.1f} ms   ({calls} calls)")
                        print(row, flush=True)
                        rows.append(row)
    lines += rows + ["", "# file size of model.pt (tables + code)"]
    for tag, size in sizes.items():
        lines.append(f"{tag:8s} {size / 2**20:8.1f} MiB")
    lines.append(f"int8/float32 size ratio {sizes['int8'] / sizes['float32']:.2f}")
    lines.append("# load average at end: %.1f %.1f %.1f" % os.getloadavg())
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
