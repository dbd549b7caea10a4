"""What the long memory and the repeat path cost: training and evaluation time of the default
tower against its short-only ablation, side by side in one run.

    .venv/bin/python benchmarks/bench_cost.py [--max-len 2048] [--steps 4] [--rounds 3]
        [--out benchmarks/results/cost_cpu.txt]

Two gloo ranks × 1 thread, as `torchx run -j 1x2` trains. A synthetic prepared set is written
whose users all have ``max_len + 1`` events (items drawn from a power law over the catalog, so
most history items are distinct: the repeat path's worst case, one pair per event). Every model
variant gets its own :class:`~hytrec_torchrec.training.loop.Trainer` in the same process group,
and the variants take turns: ``--rounds`` rounds, each timing ``--steps`` training steps of every
variant on the same batches (order rotated every round), so that load from other work on the
machine falls on all of them alike. Reported per variant: the median over rounds of history
tokens/s (both ranks) and its ratio to the short-only ablation's.

* **training**: the long-history recipe's objective, every position of each window a target
  (``data.all_positions``), ``--batch`` windows per rank, the plain loop;
* **evaluation**: one user embedding per history (the last row) and the repeat path's bonus over
  its items, without gradients, in eval mode. The full-catalog product that follows is the same
  for every variant (same width, same catalog) and is left out, so the ratio is the upper bound of
  what a whole evaluation costs relative to short-only.

Variants: ``default`` (TowerConfig's defaults), ``short_only`` (``long_pattern: ""``, the same
repeat path), ``repeat_080d593`` (the default with the repeat path before its cycle features:
``repeat_cycles: false``, ``repeat_scorer: additive``) and ``no_repeat`` (the default without the
repeat path), ``interests`` (the default reading its 16 top categories, ``model.interests``) and
``short_interests`` (short-only with them). Every item belongs to one of ``--categories`` categories
(item index modulo the count), so a history holds as many categories as Complete Journey's
commodities (about 300). ``--variants`` times a subset (the baseline always runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from hytrec_torchrec.config import from_dict
from hytrec_torchrec.data.testing import power_law_arrays, write_prepared_arrays
from hytrec_torchrec.testing import run_distributed

VARIANTS: Dict[str, Dict[str, Any]] = {
    "default": {},
    "short_only": {"long_pattern": ""},
    "repeat_080d593": {"repeat_cycles": False, "repeat_scorer": "additive"},
    "no_repeat": {"repeat": False},
    "interests": {"interests": {"count": 16}},
    "short_interests": {"long_pattern": "", "interests": {"count": 16}},
}
BASELINE = "short_only"


def _job(data: Path, run: Path, model: Dict[str, Any], max_len: int, batch: int) -> Dict[str, Any]:
    """The job of one variant: the default tower's config with ``model`` overrides."""
    return {
        "run": {"dir": str(run), "seed": 0, "tensorboard": False, "progress": False},
        "data": {"path": str(data), "batch_size": batch, "num_negatives": 256, "max_len": max_len,
                 "all_positions": True, "num_workers": 0, "seed": 0},
        "embeddings": {"dim": 64},
        "model": dict(model),
        "train": {"max_steps": 10**6, "validate_every": 0, "checkpoint_every": 0, "pipeline": "plain"},
    }


def _timed(fn: Any) -> float:
    torch.distributed.barrier()
    t = time.perf_counter()
    fn()
    torch.distributed.barrier()
    return time.perf_counter() - t


def _body(rank: int, world: int, jobs: Dict[str, Dict[str, Any]], steps: int, rounds: int, out: str,
          eval_repeats: int) -> None:
    from hytrec_torchrec.data.loader import make_dataloader
    from hytrec_torchrec.runtime.config import JobConfig
    from hytrec_torchrec.runtime.distributed import init_distributed
    from hytrec_torchrec.training.loop import Trainer

    torch.set_num_threads(1)
    env = init_distributed("gloo", "cpu")
    trainers = {name: Trainer(from_dict(JobConfig, job), env) for name, job in jobs.items()}
    first = next(iter(trainers.values()))
    loader = iter(make_dataloader(first.cfg.data, rank, world, 0, "train", shard=first.shard))
    batches = [next(loader) for _ in range(steps + 1)]
    tokens = torch.tensor([sum(int(b.history_lengths().sum()) for b in batches[1:])], dtype=torch.float64)
    torch.distributed.all_reduce(tokens)

    def train(trainer: Trainer) -> None:
        trainer.model.train()
        for _ in trainer._segment(iter(batches[1:])):
            pass

    def evaluate(trainer: Trainer) -> None:
        hy = trainer._unwrapped()
        hy.eval()
        with torch.no_grad():
            for _ in range(eval_repeats):  # short-only's pass is ~0.1 s: repeat it so noise does not rule
                for b in batches[1:]:
                    user, _ = hy.user_embedding(b)
                    hy.repeat_bonus(b, user)

    for trainer in trainers.values():  # warm-up: one step and one evaluation batch each
        trainer.model.train()
        for _ in trainer._segment(iter(batches[:1])):
            pass
        hy = trainer._unwrapped()
        hy.eval()
        with torch.no_grad():
            hy.repeat_bonus(batches[0], hy.user_embedding(batches[0])[0])
    names = list(trainers)
    times: Dict[str, Dict[str, List[float]]] = {n: {"train": [], "eval": []} for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name]["train"].append(_timed(lambda: train(trainers[name])))
            times[name]["eval"].append(_timed(lambda: evaluate(trainers[name])))
    if rank == 0:
        torch.save({"tokens": float(tokens), "times": times}, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2, help="windows per rank and step")
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--eval-repeats", type=int, default=10, help="passes over the batches per timed evaluation")
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--categories", type=int, default=300, help="categories of the catalog (item mod count)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    p.add_argument("--out", default="benchmarks/results/cost_cpu.txt")
    a = p.parse_args()
    chosen = [BASELINE] + [v for v in a.variants.split(",") if v and v != BASELINE]
    for v in chosen:
        if v not in VARIANTS:
            p.error(f"--variants: unknown variant {v!r}; one of {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        users = 2 * a.batch * (a.steps + 1) * 2
        offsets, cols = power_law_arrays(users, a.max_len + 1, a.items, seed=1, min_events=a.max_len + 1)
        cols["category"] = 2 + cols["item"] % a.categories
        data = write_prepared_arrays(Path(tmp) / "data", offsets, cols, a.items, num_categories=a.categories + 2)
        jobs = {name: _job(data, Path(tmp) / name, VARIANTS[name], a.max_len, a.batch) for name in chosen}
        res_path = Path(tmp) / "res.pt"
        load = os.getloadavg()[0]
        run_distributed(_body, 2, (jobs, a.steps, a.rounds, str(res_path), a.eval_repeats))
        res = torch.load(res_path, weights_only=True)
    tok = res["tokens"]
    eval_tok = tok * a.eval_repeats
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in res["times"].items()}
    base = med[BASELINE]
    lines = [
        f"# bench_cost.py --max-len {a.max_len} --batch {a.batch} --steps {a.steps} --rounds {a.rounds} "
        f"--eval-repeats {a.eval_repeats} --categories {a.categories} --variants {','.join(chosen)}: "
        f"2 gloo ranks x 1 thread, {platform.processor() or platform.machine()}, load average {load:.1f} at start",
        f"# {int(tok):,} history tokens per timed block (both ranks); median over rounds; variants take turns",
        "",
        f"{'variant':<16}{'train tok/s':>12}{'x short-only':>14}{'eval tok/s':>12}{'time x short-only':>19}",
    ]
    for name in chosen:
        m = med[name]
        lines.append(f"{name:<16}{tok / m['train']:>12,.0f}{base['train'] / m['train']:>14.2f}"
                     f"{eval_tok / m['eval']:>12,.0f}{m['eval'] / base['eval']:>19.2f}")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).write_text(text)
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
