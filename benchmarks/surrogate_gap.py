"""How far the all-position training surrogate is from the exact per-cutoff tower.

All-position training (``data.all_positions``, docs/training.md) computes one user embedding per
history row in one pass. For towers with TADN layers that pass is a surrogate: τ is taken against
the example's ``t_current`` for every row and h̄ is the running mean. Evaluation, export and
serving use the exact tower. This script takes a checkpoint and, for every example of a split,
computes both user embeddings for the same cutoff:

* ``exact``: :meth:`HyTRecTower.forward` (what the model is evaluated with);
* ``surrogate``: the last row of :meth:`HyTRecTower.forward_all_positions` (what training saw at
  that position),

ranks each example's target against the full catalog with each, and prints HR@10, NDCG@10, MRR
for both, the mean cosine between the two embeddings, and the share of examples whose rank
changes. For towers without TADN the two are equal (tests/test_all_positions.py), so the script
then measures float noise only. Single process, CPU. Usage::

    python benchmarks/surrogate_gap.py --checkpoint runs/ml1m/hytrec_apf --data runs/ml1m/prepared \\
        [--split test] [--batch 256] [--append benchmarks/results/surrogate_gap.txt]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hytrec_torchrec.config import from_dict, to_dict  # noqa: E402
from hytrec_torchrec.data.config import DataConfig  # noqa: E402
from hytrec_torchrec.data.loader import make_dataloader  # noqa: E402
from hytrec_torchrec.ranking.metrics import ranking_metrics  # noqa: E402
from hytrec_torchrec.ranking.ranks import target_ranks  # noqa: E402
from hytrec_torchrec.ranking.scoring import first_targets, item_blocks  # noqa: E402
from hytrec_torchrec.runtime.restore import load_unsharded  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    ap.add_argument("--data", required=True, help="prepared dataset directory")
    ap.add_argument("--split", default="test", choices=["valid", "test"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--append", default=None, help="append the JSON result line to this file")
    args = ap.parse_args(argv)

    model, cfg, state = load_unsharded(args.checkpoint)
    d = to_dict(cfg.data)
    d.update(path=args.data, batch_size=args.batch, num_workers=0, all_positions=False)
    data_cfg = from_dict(DataConfig, d)
    blocks = item_blocks(model)
    num_items = int(state["vocab_sizes"]["item"])
    tower = model.tower
    ranks = {"exact": [], "surrogate": []}
    cosines = []
    with torch.no_grad():
        for batch in make_dataloader(data_cfg, 0, 1, 0, args.split):
            emb = model.embeddings(batch.features)
            offsets = batch.history_offsets().to(torch.int64)
            exact, _ = tower(emb, offsets, batch.timestamps, batch.t_current)
            rows, _ = tower(emb, offsets, batch.timestamps, batch.t_current, True)
            lengths = offsets[1:] - offsets[:-1]
            surrogate = exact.clone()  # an empty history has no row: both are the empty-branch output
            has = lengths > 0
            surrogate[has] = rows[offsets[1:][has] - 1]
            keep = batch.valid
            targets = first_targets(batch)
            for name, user in (("exact", exact), ("surrogate", surrogate)):
                ranks[name].append(target_ranks(user, targets, blocks, num_items)[keep])
            cosines.append(torch.nn.functional.cosine_similarity(exact[keep], surrogate[keep], dim=1))
    catalog = num_items - 2
    out: dict = {"checkpoint": str(state["path"]), "split": args.split,
                 "pattern": cfg.model.long_pattern, "short_len": cfg.model.short_len}
    all_ranks = {k: torch.cat(v) for k, v in ranks.items()}
    for name, r in all_ranks.items():
        m = ranking_metrics(r, ks=(10,), catalog_size=catalog)
        out[name] = {k: round(m[k], 4) for k in ("hr@10", "ndcg@10", "mrr")}
    cos = torch.cat(cosines)
    out["examples"] = int(cos.numel())
    out["mean_cosine"] = round(float(cos.mean()), 4)
    out["rank_changed"] = round(float((all_ranks["exact"] != all_ranks["surrogate"]).float().mean()), 4)
    line = json.dumps(out)
    print(line)
    if args.append:
        with open(args.append, "a") as f:
            f.write(line + "\n")
    return out


if __name__ == "__main__":
    main()
