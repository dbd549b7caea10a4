"""Benchmark: TADN delta rule (naive vs chunkwise [vs GPU kernel]) and long branches (TTTS hybrid
vs softmax-only SSSS of the same width/depth) — forward and forward+backward time vs history length.

All methods are measured side by side: for every length, each repeat round runs every method once
(rotating the order), and the median over rounds is reported. Ratios taken inside one run are
what count on a shared machine.

    python benchmarks/bench_tower.py --out benchmarks/results/tower_cpu.txt
    python benchmarks/bench_tower.py --device cuda --impls chunked,gpu --out tower_gpu.txt

Shapes: batch B sequences of equal length L, H heads of width d (model width D = H·d for the
branches). "naive" is the token-by-token reference; at lengths above --naive-max-len it is not run
and its time is extrapolated linearly from the longest measured length (labelled "extrap").
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hytrec_torchrec.config import from_dict  # noqa: E402
from hytrec_torchrec.modules.branches import LongBranch  # noqa: E402
from hytrec_torchrec.modules.config import TowerConfig  # noqa: E402
from hytrec_torchrec.ops.tadn import delta_rule  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def op_case(impl: str, b: int, length: int, h: int, d: int, device: torch.device, dtype: torch.dtype):
    """Return fn(backward: bool) running the delta rule with ``impl`` on fresh-grad inputs."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    n = b * length
    offsets = (torch.arange(b + 1, dtype=torch.int64) * length).to(device)
    q = torch.randn(n, h, d, generator=gen).to(device, dtype)
    k = F.normalize(torch.randn(n, h, d, generator=gen), dim=-1).to(device, dtype)
    v = torch.randn(n, h, d, generator=gen).to(device, dtype)
    beta = torch.rand(n, h, generator=gen).to(device, dtype)
    erase = (torch.rand(n, h, generator=gen).to(device, dtype) * beta)
    leaves = [t.requires_grad_(True) for t in (q, k, v, erase, beta)]

    def run(backward: bool) -> None:
        for t in leaves:
            t.grad = None
        if backward:
            o, _ = delta_rule(*leaves, offsets, 64, impl)
            o.backward(torch.ones_like(o))
        else:
            with torch.no_grad():
                delta_rule(*leaves, offsets, 64, impl)

    return run


def gemm_floor_case(b: int, length: int, h: int, d: int, device: torch.device, dtype: torch.dtype,
                    chunk: int = 64):
    """Return fn(backward) running ONLY the dense matmuls the chunkwise form cannot avoid.

    Per chunk of C rows (dk = dv = d): K·Kᵀ, T·[aK | bV] (the UT transform applied, with T given),
    Kᵀ·[W | U], Q·Kᵀ, (QKᵀ)·[W | U] and Q·S, each at full (not triangular) cost, with autograd
    through just these six products. No triangular inverse, state recurrence, masking, gating or
    layout work is included, so any chunkwise implementation built from these matmuls is slower:
    naive/floor bounds the speed-up such an implementation can reach on this machine.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    nc = b * length // chunk

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_(True)

    qc, kc = leaf(h, nc, chunk, d), leaf(h, nc, chunk, d)
    tri, rhs = leaf(h, nc, chunk, chunk), leaf(h, nc, chunk, 2 * d)
    h0 = leaf(h, nc, d, d)
    leaves = [qc, kc, tri, rhs, h0]
    # Output gradients given as contiguous tensors (a .sum() would hand the matmul backward
    # stride-0 gradients and time their copies too).
    grads = [torch.randn(*shape, generator=gen).to(device, dtype) for shape in
             ((h, nc, chunk, chunk), (h, nc, d, 2 * d), (h, nc, chunk, 2 * d), (h, nc, chunk, d))]

    def run(backward: bool) -> None:
        for t in leaves:
            t.grad = None
        with torch.set_grad_enabled(backward):
            kt = kc.transpose(-1, -2)
            kk = kc @ kt
            sol = tri @ rhs
            ktsol = kt @ sol
            qk = qc @ kt
            qsol = qk @ sol
            qh = qc @ h0
            if backward:
                torch.autograd.backward([kk, ktsol, qsol, qh], grads)

    return run


def branch_config(dim: int, pattern: str, heads: int, impl: str, gated: bool = False) -> TowerConfig:
    """The long branch measured here: FFN ×2, no dropout, α 0.5 fixed, chunks of 64; ``gated``: the
    gated-delta layers with time inputs and the intent readout, else the paper's TADN."""
    return from_dict(TowerConfig, dict(
        embedding_dim=dim, long_pattern=pattern, heads=heads, ffn_mult=2, dropout=0.0, softmax_group_waste=0.25,
        position_bias=0, time_bias=0, long_readout="intent" if gated else "last", long_time_inputs=gated,
        tadn=dict(alpha=0.5, learn_alpha=False, temporal_gate=True, chunk_size=64, impl=impl, key_dim=0,
                  gating="gated_delta" if gated else "paper")))


def branch_case(spec: str, impl: str, b: int, length: int, h: int, d: int, device: torch.device,
                dtype: torch.dtype):
    """Return fn(backward) running a LongBranch (width H·d) on [B·L, D] rows.

    ``spec`` is a pattern (``TTTS``: the paper's TADN layers, last-row readout) or ``gd-PATTERN``:
    gated-delta layers, time inputs and the intent readout (queried with a random ``[B, D]``)."""
    torch.manual_seed(0)
    dim = h * d
    gd = spec.startswith("gd-")
    pattern = spec[3:] if gd else spec
    branch = LongBranch(branch_config(dim, pattern, h, impl, gd)).to(device, dtype)
    offsets = (torch.arange(b + 1, dtype=torch.int64) * length).to(device)
    x = torch.randn(b * length, dim, device=device, dtype=dtype, requires_grad=True)
    tau = torch.rand(b * length, device=device, dtype=dtype)
    ts = torch.arange(b * length, dtype=torch.int64, device=device) * 60  # one event a minute
    intent = torch.randn(b, dim, device=device, dtype=dtype) if gd else None
    t_query = (ts[offsets[1:] - 1] + 60) if gd else None

    def call() -> torch.Tensor:
        return branch(x, offsets, tau, ts, None, intent, t_query)

    def run(backward: bool) -> None:
        x.grad = None
        branch.zero_grad(set_to_none=True)
        if backward:
            call().sum().backward()
        else:
            with torch.no_grad():
                call()

    return run


def time_once(fn: Callable[[bool], None], backward: bool, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn(backward)
    sync(device)
    return time.perf_counter() - t0


def interleaved_medians(cases: Dict[str, Callable[[bool], None]], rounds: int, device: torch.device,
                        modes: Sequence[bool] = (False, True)) -> Dict[str, Dict[str, float]]:
    """Time ``cases`` side by side: one warm-up call each (with backward), then ``rounds`` rounds
    that run every case once per mode (``False`` = forward only, ``True`` = forward+backward),
    rotating which case goes first each round. Returns ``{name: {"fwd"|"fwdbwd": median s}}``."""
    names = list(cases)
    for name in names:  # warm-up
        cases[name](True)
    times: Dict[str, Dict[str, List[float]]] = {
        n: {("fwdbwd" if m else "fwd"): [] for m in modes} for n in names
    }
    for r in range(rounds):
        rot = names[r % len(names):] + names[: r % len(names)]
        for name in rot:
            for m in modes:
                times[name]["fwdbwd" if m else "fwd"].append(time_once(cases[name], m, device))
    return {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="1024,2048,3072,4096,8192,12288")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--naive-max-len", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--impls", default="naive,chunked", help="delta-rule impls: naive,chunked,gpu; gemm-floor = only the chunkwise "
                   "form's matmuls (a lower bound on any chunkwise implementation's time)")
    p.add_argument("--branches", default="TTTS,SSSS,gd-TTT", help="long-branch patterns ('' for none); gd-PATTERN = "
                   "gated-delta layers + time inputs + intent readout")
    p.add_argument("--branch-impl", default="auto", help="delta-rule impl inside branches")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave default)")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    lengths = [int(x) for x in args.lengths.split(",")]
    impls = [x for x in args.impls.split(",") if x]
    patterns = [x for x in args.branches.split(",") if x]
    b, h, d = args.batch, args.heads, args.head_dim
    lines: List[str] = []

    def emit(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    emit(f"# bench_tower  {time.strftime('%Y-%m-%d %H:%M:%S')}  torch {torch.__version__}  device {device}"
         f"{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}  "
         f"threads {torch.get_num_threads()}  {platform.machine()}")
    emit(f"# B={b} H={h} d={d} (branch width D={h * d}) dtype={args.dtype} repeats={args.repeats} "
         f"(median; methods interleaved per round)  cmd: {' '.join(sys.argv)}")
    methods: List[str] = [f"tadn-{i}" for i in impls] + [f"branch-{pt}" for pt in patterns]
    results: Dict[str, Dict[int, Dict[str, float]]] = {m: {} for m in methods}
    measured_naive_max = 0
    for length in lengths:
        cases: Dict[str, Callable[[bool], None]] = {}
        for i in impls:
            if i == "naive" and length > args.naive_max_len:
                continue
            if i == "gemm-floor":
                cases["tadn-gemm-floor"] = gemm_floor_case(b, length, h, d, device, dtype)
            else:
                cases[f"tadn-{i}"] = op_case("recurrent" if i == "naive" else i, b, length, h, d, device,
                                             dtype)
        for pt in patterns:
            cases[f"branch-{pt}"] = branch_case(pt, args.branch_impl, b, length, h, d, device, dtype)
        names = list(cases)
        reps = args.repeats if length <= 4096 else max(3, args.repeats // 2)
        medians = interleaved_medians(cases, reps, device)
        for name in names:
            results[name][length] = medians[name]
            if name == "tadn-naive":
                measured_naive_max = max(measured_naive_max, length)
        row = "  ".join(
            f"{n}: fwd {results[n][length]['fwd'] * 1e3:9.1f} ms  fwd+bwd {results[n][length]['fwdbwd'] * 1e3:9.1f} ms"
            for n in names
        )
        emit(f"L={length:6d}  {row}")
        del cases

    if "tadn-naive" in results and measured_naive_max:
        base = results["tadn-naive"][measured_naive_max]
        for length in lengths:
            if length not in results["tadn-naive"]:
                scale = length / measured_naive_max
                results["tadn-naive"][length] = {k: v * scale for k, v in base.items()}
                results["tadn-naive"][length]["extrap"] = 1.0

    emit("")
    emit("## times (ms; 'x' = extrapolated linearly from the longest measured length, not measured)")
    header = f"{'method':>16} {'mode':>8} " + " ".join(f"{lng:>10d}" for lng in lengths)
    emit(header)
    for m in methods:
        for mode in ("fwd", "fwdbwd"):
            cells = []
            for lng in lengths:
                r = results[m].get(lng)
                if r is None:
                    cells.append(f"{'-':>10}")
                else:
                    mark = "x" if r.get("extrap") else " "
                    cells.append(f"{r[mode] * 1e3:9.1f}{mark}")
            emit(f"{m:>16} {mode:>8} " + " ".join(cells))

    emit("")
    emit("## tokens/s (fwd+bwd, B·L / time)")
    for m in methods:
        cells = []
        for lng in lengths:
            r = results[m].get(lng)
            cells.append(f"{'-':>10}" if r is None or r.get("extrap") else f"{b * lng / r['fwdbwd']:10.0f}")
        emit(f"{m:>16}          " + " ".join(cells))

    emit("")
    emit("## ratios")

    def ratio(a: str, c: str, lng: int, mode: str) -> Optional[float]:
        ra, rc = results.get(a, {}).get(lng), results.get(c, {}).get(lng)
        if ra is None or rc is None:
            return None
        return ra[mode] / rc[mode]

    for lng in lengths:
        parts = []
        for num, den, label in (
            ("tadn-naive", "tadn-chunked", "naive/chunked"),
            ("tadn-naive", "tadn-gemm-floor", "naive/gemm-floor (ceiling for any chunkwise form)"),
            ("tadn-chunked", "tadn-gemm-floor", "chunked/gemm-floor"),
            ("tadn-chunked", "tadn-gpu", "chunked/gpu"),
            ("branch-SSSS", "branch-TTTS", "SSSS/TTTS"),
            ("branch-gd-TTT", "branch-TTTS", "gd-TTT/TTTS"),
            ("branch-SSSS", "branch-gd-TTT", "SSSS/gd-TTT"),
            ("branch-gd-TTTS", "branch-TTTS", "gd-TTTS/TTTS"),
        ):
            for mode in ("fwd", "fwdbwd"):
                val = ratio(num, den, lng, mode)
                if val is not None:
                    ex = " (naive extrapolated)" if num == "tadn-naive" and results[num][lng].get("extrap") else ""
                    parts.append(f"{label} {mode} {val:6.1f}x{ex}")
        emit(f"L={lng:6d}  " + "; ".join(parts))

    emit("")
    emit("## growth: time(L) / time(L_ref) (linear scaling would equal L/L_ref)")
    ref = 3072 if 3072 in lengths else lengths[0]
    for m in methods:
        r0 = results[m].get(ref)
        if r0 is None or r0.get("extrap"):
            continue
        cells = []
        for lng in lengths:
            r = results[m].get(lng)
            if r is not None and not r.get("extrap"):
                cells.append(f"{lng}/{ref}: {r['fwdbwd'] / r0['fwdbwd']:.2f} (fwd {r['fwd'] / r0['fwd']:.2f})")
        emit(f"{m:>16}  " + "  ".join(cells))

    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
