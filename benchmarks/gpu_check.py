"""On a CUDA machine: check the guarded GPU delta-rule path (fla ``chunk_gdn2``) against the
chunkwise torch form (on CUDA) and the recurrent reference (small cases), then measure
forward+backward tokens/s at a 5k history.

    python benchmarks/gpu_check.py [--out tower_gpu_check.txt]
"""

import argparse
import sys
import time
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hytrec_torchrec.config import from_dict  # noqa: E402
from hytrec_torchrec.modules import HyTRecTower, TowerConfig  # noqa: E402
from hytrec_torchrec.modules.branches import LongBranch  # noqa: E402
from bench_tower import branch_config  # noqa: E402
from hytrec_torchrec.ops.tadn import (  # noqa: E402
    delta_rule,
    delta_rule_chunked,
    delta_rule_recurrent,
    resolve_impl,
)
from hytrec_torchrec.ops.tadn.gpu import delta_rule_gpu, gpu_kernel_available  # noqa: E402

LINES: List[str] = []
OUT_PATH: List[Path] = []
T_START = time.time()


def emit(s: str) -> None:
    s = f"[{time.time() - T_START:6.1f}s] {s}" if s else s
    print(s, flush=True)
    LINES.append(s)
    if OUT_PATH:  # keep the file current so a timed-out run still leaves its results
        OUT_PATH[0].write_text("\n".join(LINES) + "\n")


def inputs(lengths, h, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    off = torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0).cuda()
    q = torch.randn(n, h, d, generator=gen)
    k = F.normalize(torch.randn(n, h, d, generator=gen), dim=-1)
    v = torch.randn(n, h, d, generator=gen)
    beta = torch.rand(n, h, generator=gen)
    g = torch.rand(n, h, generator=gen)
    g[0::3] = 0.0
    g[1::3] = 1.0
    ts = [t.cuda().to(dtype).requires_grad_(True) for t in (q, k, v, g * beta, beta)]
    return ts, off


def fwd_bwd(fn, ts, off, cot):
    for t in ts:
        t.grad = None
    o = fn(*ts, off)
    if isinstance(o, tuple):  # the torch forms return (o, final_state)
        o = o[0]
    grads = torch.autograd.grad(o, ts, cot)
    return [o.detach().float()] + [g.float() for g in grads]


def compare(name, a, b):
    labels = ["o", "dq", "dk", "dv", "d_erase", "d_write"]
    errs = []
    for lab, x, y in zip(labels, a, b):
        err = (x - y).abs().max().item()
        rel = err / max(y.abs().max().item(), 1e-12)
        errs.append(f"{lab} {err:.2e} (rel {rel:.1e})")
    emit(f"{name}: max|diff| " + ", ".join(errs))


def timed(fn, reps=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="")
    p.add_argument("--skip-correctness", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--batches", default="8,32")
    args = p.parse_args()
    if args.out:
        OUT_PATH.append(Path(args.out))
    batches = [int(x) for x in args.batches.split(",")]
    emit(f"# gpu_check {time.strftime('%Y-%m-%d %H:%M:%S')} torch {torch.__version__} "
         f"{torch.cuda.get_device_name()} kernel_available={gpu_kernel_available()} "
         f"resolve_impl(auto)={resolve_impl('auto', torch.device('cuda'))}")
    try:
        import fla  # type: ignore

        emit(f"# fla {getattr(fla, '__version__', '?')} at {Path(fla.__file__).parent}")
    except Exception as exc:  # noqa: BLE001
        emit(f"# fla import failed: {exc!r}")

    h, d = 2, 32
    if not args.skip_correctness:
        correctness(h, d)
    if not args.skip_throughput:
        throughput(h, d, batches)


def correctness(h: int, d: int) -> None:
    """Small mixed lengths vs recurrent (fp32), then long mixed lengths vs chunked."""
    small = [1, 63, 64, 65, 200, 0, 7]
    ts, off = inputs(small, h, d, torch.float32)
    cot = torch.randn(sum(small), h, d, device="cuda")
    ref = fwd_bwd(delta_rule_recurrent, ts, off, cot)
    chk = fwd_bwd(lambda *a: delta_rule_chunked(*a, chunk_size=64), ts, off, cot)
    gpu = fwd_bwd(delta_rule_gpu, ts, off, cot)
    compare("fp32 lengths 1,63,64,65,200,0,7  chunked(cuda) vs recurrent", chk, ref)
    compare("fp32 lengths 1,63,64,65,200,0,7  gpu(fla)      vs recurrent", gpu, ref)
    torch.backends.cuda.matmul.allow_tf32 = False
    big = [5000, 3000, 1, 64, 4097, 12000]
    ts, off = inputs(big, h, d, torch.float32, seed=1)
    cot = torch.randn(sum(big), h, d, device="cuda")
    chk = fwd_bwd(lambda *a: delta_rule_chunked(*a, chunk_size=64), ts, off, cot)
    gpu = fwd_bwd(delta_rule_gpu, ts, off, cot)
    compare("fp32 lengths 5000,3000,1,64,4097,12000  gpu(fla) vs chunked(cuda)", gpu, chk)
    ts16, _ = inputs(big, h, d, torch.bfloat16, seed=1)
    g16 = fwd_bwd(delta_rule_gpu, ts16, off, cot.bfloat16())
    compare("bf16 inputs, same lengths  gpu(fla) vs fp32 chunked(cuda)", g16, chk)



def throughput(h: int, d: int, batches: List[int]) -> None:
    """fwd+bwd tokens/s at L = 5000: op, long branches, full tower."""
    emit("")
    emit("## fwd+bwd throughput at L=5000 (median of 10 after 3 warm-ups; tokens/s = B*L/time)")
    length = 5000
    for b in batches:
        for dtype in (torch.float32, torch.bfloat16):
            for impl in ("chunked", "gpu"):
                ts, off = inputs([length] * b, h, d, dtype, seed=2)

                def run(ts=ts, off=off, impl=impl):
                    o, _ = delta_rule(*ts, off, 64, impl)
                    o.backward(torch.ones_like(o))

                t = timed(run)
                emit(f"op  delta_rule impl={impl:8s} {str(dtype):15s} B={b:3d} H={h} d={d}: "
                     f"{t * 1e3:8.2f} ms  {b * length / t:12.0f} tokens/s")
    for b in batches:
        for pattern in ("TTTS", "SSSS"):
            for impl in ("chunked", "gpu"):
                if pattern == "SSSS" and impl == "gpu":
                    continue
                torch.manual_seed(0)
                dim = 64
                br = LongBranch(branch_config(dim, pattern, 2, impl)).cuda()
                off = (torch.arange(b + 1, dtype=torch.int64) * length).cuda()
                x = torch.randn(b * length, dim, device="cuda", requires_grad=True)
                tau = torch.rand(b * length, device="cuda")
                ts = torch.arange(b * length, dtype=torch.int64, device="cuda")

                def run(br=br, x=x, off=off, tau=tau, ts=ts):
                    br(x, off, tau, ts).sum().backward()

                t = timed(run)
                emit(f"long branch {pattern} (D=64, 2 heads) impl={impl:8s} fp32 B={b:3d}: "
                     f"{t * 1e3:8.2f} ms  {b * length / t:12.0f} tokens/s")
    for b in batches:
        for impl in ("chunked", "gpu"):
            cfg = from_dict(TowerConfig, dict(embedding_dim=64, tadn=dict(impl=impl)))
            tower = HyTRecTower(cfg).cuda()
            off = (torch.arange(b + 1, dtype=torch.int64) * length).cuda()
            feats = {f: torch.randn(b * length, 64, device="cuda", requires_grad=True) for f in cfg.features}
            tsx = torch.randint(1_700_000_000, 1_700_100_000, (b * length,), device="cuda")
            tc = torch.full((b,), 1_700_100_000, device="cuda")

            def run(tower=tower, feats=feats, off=off, tsx=tsx, tc=tc):
                u, aux = tower.forward_with_aux(feats, off, tsx, tc)
                (u.sum() + aux).backward()

            t = timed(run)
            emit(f"full tower (default cfg: D=64, TTTS, K=64, 4 experts) impl={impl:8s} fp32 B={b:3d}: "
                 f"{t * 1e3:8.2f} ms  {b * length / t:12.0f} tokens/s")


if __name__ == "__main__":
    main()
