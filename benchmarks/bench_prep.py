"""Benchmark ``hytrec-prep``: throughput (events/s) and peak RSS on synthetic data and MovieLens-1M.

    python benchmarks/bench_prep.py [--work DIR] [--sizes 1000000 5000000 20000000] [--budgets 2048]
                                    [--ml1m] [--out benchmarks/results/prep.txt]

Each case runs ``hytrec-prep`` in a fresh subprocess under ``/usr/bin/time -v``; peak RSS is that
process's "Maximum resident set size" (prepare starts no child processes; the part-file writer is
a thread). Synthetic inputs are generated once into ``--work`` (outside the repo) and reused. The
machine's load average is recorded with each case because the cores may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(REPO))  # the checkout: data_prep/


def _run_timed(cmd: list[str]) -> tuple[float, int, float, str]:
    """(wall seconds, peak RSS in KiB, CPU percent, stdout) of ``cmd`` under /usr/bin/time -v."""
    t0 = time.time()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=REPO)
    wall = time.time() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    cpu = float(re.search(r"Percent of CPU this job got: (\d+)%", res.stderr).group(1))
    return wall, rss, cpu, res.stdout


def _prep(inp: str, out: Path, budget: int, label: str, events_hint: int) -> dict:
    if out.exists():
        shutil.rmtree(out)
    load = os.getloadavg()[0]
    cmd = [PY, "-m", "data_prep.cli", inp, str(out), f"memory_budget_mb={budget}"]
    wall, rss, cpu, _ = _run_timed(cmd)
    meta = json.loads((out / "meta.json").read_text())
    rows = meta["rows_in"]
    return {
        "case": label,
        "rows_in": rows,
        "budget_mb": budget,
        "partitions": meta["num_partitions"],
        "wall_s": round(wall, 2),
        "prepare_s": meta["timing_s"]["total"],
        "events_per_s_wall": int(rows / wall),
        "events_per_s_prepare": int(rows / meta["timing_s"]["total"]),
        "peak_rss_mb": round(rss / 1024),
        "cpu_pct": cpu,
        "load_avg_1m_before": round(load, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/hytrec-bench")
    ap.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 5_000_000, 20_000_000])
    ap.add_argument("--budgets", type=int, nargs="*", default=[2048])
    ap.add_argument("--ml1m", action="store_true", help="also MovieLens-1M (fetched into ~/.cache/hytrec)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "prep.txt"))
    ns = ap.parse_args()
    work = Path(ns.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    lines = [f"# bench_prep  {time.strftime('%Y-%m-%d %H:%M:%S')}  cpus={os.cpu_count()}  python={sys.version.split()[0]}"]
    for n in ns.sizes:
        src = work / f"syn{n}"
        if not (src / "synthetic.json").exists():
            wall, rss, cpu, out = _run_timed([PY, "-m", "data_prep.synthetic", "--events", str(n), "--out", str(src)])
            lines.append(f"generate {n:>10} events: {wall:.1f} s wall, peak RSS {rss // 1024} MB, cpu {cpu:.0f}%")
        for b in ns.budgets:
            r = _prep(str(src / "events"), work / f"prep{n}_{b}", b, f"synthetic {n}", n)
            rows.append(r)
            print(json.dumps(r), flush=True)
    if ns.ml1m:
        from data_prep.movielens import fetch_ml1m

        files = fetch_ml1m()
        for b in ns.budgets:
            r = _prep(f"movielens:{files['ml-1m.inter'].parent}", work / f"prep_ml1m_{b}", b, "ml-1m (RecBole atomic)", 0)
            rows.append(r)
            print(json.dumps(r), flush=True)
    hdr = ["case", "rows_in", "budget_mb", "partitions", "wall_s", "prepare_s", "events_per_s_wall",
           "events_per_s_prepare", "peak_rss_mb", "cpu_pct", "load_avg_1m_before"]
    lines.append(" | ".join(hdr))
    for r in rows:
        lines.append(" | ".join(str(r[h]) for h in hdr))
    text = "\n".join(lines) + "\n"
    with open(ns.out, "a") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
