"""TorchX components for hytrec_torchrec jobs.

Each function below is a TorchX component: its docstring is its ``--help``. They build on
``torchx.components.dist.ddp`` (torchrun under the hood), so ``-j NxM`` means N nodes × M
processes per node and the same component runs on ``local_cwd`` (CPU, gloo), Kubernetes or
Slurm (GPU, nccl) — see ``.torchxconfig``.

Examples::

    torchx run -s local_cwd launch/components.py:train --config configs/demo.yaml -j 1x2
    torchx run -s local_cwd launch/components.py:train --config configs/demo.yaml -j 2x1 \\
        train.max_steps=50
    torchx run -s local_cwd launch/components.py:prepare --input raw/ --output prepared/ -j 1x2
"""


from typing import Dict, List, Optional, Tuple

import torchx.specs as specs
from torchx.components.dist import ddp

#: Image for container schedulers (Kubernetes); how to build it: docs/launching.md ("Image").
DEFAULT_IMAGE = "ghcr.io/your-org/hytrec_torchrec:latest"


#: what a replica (one node of ``-j NxM``) asks for when ``--cpu`` / ``--memMB`` are not given:
#: per GPU on a GPU job (an 8-GPU node gets 80 CPUs and 800 GB, which fits the usual 96-CPU,
#: 1-2 TB nodes), per process on a CPU job
CPU_PER_GPU, MEM_MB_PER_GPU = 10, 100_000
CPU_PER_PROC, MEM_MB_PER_PROC = 2, 8_192


def resources(j: str, cpu: Optional[int], gpu: int, memMB: Optional[int]) -> Tuple[int, int]:
    """``(cpu, memMB)`` per replica: the given values, else the defaults above. (The torchx CLI
    passes an ``Optional[int]`` argument as a string: it is converted here.)"""
    procs = int(j.split("x")[-1])
    cpu = None if cpu in (None, "") else int(cpu)
    memMB = None if memMB in (None, "") else int(memMB)
    if cpu is None:
        cpu = CPU_PER_GPU * gpu if gpu > 0 else CPU_PER_PROC * procs
    if memMB is None:
        memMB = MEM_MB_PER_GPU * gpu if gpu > 0 else MEM_MB_PER_PROC * procs
    return cpu, memMB


def _sized(j: str, cpu: Optional[int], gpu: int, memMB: Optional[int]) -> Dict[str, int]:
    c, m = resources(j, cpu, gpu, memMB)
    return {"cpu": c, "memMB": m}


def _named_role(app: specs.AppDef, role: str) -> specs.AppDef:
    """Name the role after the job (``train/0`` in logs, ``train-0`` on Slurm/Kubernetes);
    ``ddp`` would name it after the module file (``cli``). Its command starts the ranks with
    ``hytrec-torchrun`` (``torchrun`` whose failure is one line and the failed rank's exit status,
    hytrec_torchrec/torchrun.py) instead of ``torchrun``."""
    r = app.roles[0]
    r.name = role
    if r.entrypoint == "bash" and len(r.args) == 2 and r.args[1].startswith("torchrun "):
        r.args[1] = "hytrec-torchrun " + r.args[1][len("torchrun "):]
    return app


def train(
    *overrides: str,
    config: str = "demo",
    j: str = "1x2",
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    name: str = "hytrec-train",
    max_retries: int = 0,
    rdzv_port: int = 29500,
    env: Optional[Dict[str, str]] = None,
    image: str = DEFAULT_IMAGE,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Train HyTRec with sharded embeddings (DistributedModelParallel) on N nodes × M processes.

    Resumes from the latest checkpoint in run.dir when there is one.

    Args:
        overrides: KEY=VALUE ... dotted job-config overrides after the options, e.g.
            train.max_steps=50 run.dir=runs/exp1; may be empty, whatever torchx's
            "(required)" says
        config: YAML job config, or a built-in config's name (demo, ml1m, ...)
        j: NxM: nodes × processes per node (1x2 = two local ranks)
        cpu: CPUs per replica (one node); default 10 per GPU, or 2 per process on CPU
        gpu: GPUs per replica (0 on CPU machines; nccl is chosen when CUDA is present)
        memMB: memory per replica in MB; default 100,000 per GPU, or 8,192 per process on CPU
        h: a registered named resource (overrides cpu/gpu/memMB)
        name: job name
        max_retries: restarts of the whole job on failure (resuming from the last checkpoint)
        rdzv_port: rendezvous port on the first node
        env: extra environment variables
        image: container image with hytrec_torchrec installed (Kubernetes; ignored by
            local_cwd and Slurm, which run in the current directory)
        mounts: volumes for run.dir and the data on Kubernetes, e.g.
            type=volume,src=hytrec-pvc,dst=/shared (torchx mount syntax)
    """
    app = ddp(
        "--config", config, *overrides,
        m="hytrec_torchrec.training.cli",
        j=j, gpu=gpu, h=h, name=name, **_sized(j, cpu, gpu, memMB),
        max_retries=max_retries, rdzv_port=rdzv_port, env=env, image=image, mounts=mounts,
    )
    return _named_role(app, "train")


def export(
    checkpoint: str,
    out: str,
    int8: bool = False,
    data: Optional[str] = None,
    max_tokens_per_pass: Optional[int] = None,
    overwrite: bool = False,
    j: str = "1x1",
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    name: str = "hytrec-export",
    env: Optional[Dict[str, str]] = None,
    image: str = DEFAULT_IMAGE,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Export a (sharded) training checkpoint for serving: TorchScript model.pt + vocabularies + model card.

    The checkpoint of any world size is gathered into one process (rank 0; other ranks exit).
    OUT/model.pt loads with torch.jit.load without hytrec_torchrec, TorchRec or fbgemm
    (docs/export.md).

    Args:
        checkpoint: run directory (its latest checkpoint) or a checkpoint directory
        out: output directory
        int8: row-wise int8 embedding tables instead of float32 (--int8 True)
        data: prepared dataset with the vocabularies (default: the checkpoint's data.path)
        max_tokens_per_pass: history events per tower pass when serving a batch (default 32768;
            0: the whole batch in one pass)
        overwrite: replace an earlier export in out (--overwrite True)
        j: NxM: keep 1x1 (export runs on one process)
        cpu: CPUs per replica (one node); default 10 per GPU, or 2 per process on CPU
        memMB: memory per replica in MB (the whole model is gathered in memory); default 100,000
            per GPU, or 8,192 per process on CPU
        h: a registered named resource (overrides cpu/memMB)
        name: job name
        env: extra environment variables
        image: container image with hytrec_torchrec installed (Kubernetes)
        mounts: volumes holding the checkpoint, the data and out on Kubernetes
    """
    args = ["--checkpoint", checkpoint, "--out", out]
    if int8:
        args.append("--int8")
    if overwrite:
        args.append("--overwrite")
    if data:
        args += ["--data", data]
    if max_tokens_per_pass is not None:
        args += ["--max-tokens-per-pass", str(max_tokens_per_pass)]
    app = ddp(
        *args,
        m="hytrec_torchrec.serving.cli",
        j=j, h=h, name=name, **_sized(j, cpu, 0, memMB), env=env, image=image, mounts=mounts,
    )
    return _named_role(app, "export")


def evaluate(
    *overrides: str,
    data: str,
    out: str,
    checkpoint: Optional[str] = None,
    model: Optional[str] = None,
    config: Optional[str] = None,
    names: Optional[str] = None,
    overwrite: bool = False,
    j: str = "1x2",
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    name: str = "hytrec-eval",
    rdzv_port: int = 29500,
    env: Optional[Dict[str, str]] = None,
    image: str = DEFAULT_IMAGE,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Evaluate checkpoints offline: HR@K, NDCG@K, MRR, AUC (K in 1,10,50,100,200,500), full catalog, per segment.

    Every rank scores all users against its own rows of the row-wise sharded item table (no
    rank holds the whole table). Writes OUT/metrics.json, OUT/report.md and
    OUT/length_buckets.png; several checkpoints give one side-by-side report (docs/evaluation.md).

    Args:
        overrides: KEY=VALUE ... dotted overrides after the options (may be empty): evaluation keys
            (split=valid, segments.side_file=users.parquet) or the checkpoint's job config
            (data.batch_size=256)
        data: prepared dataset directory to evaluate on
        out: output directory for the report
        checkpoint: run directory (its latest checkpoint) or checkpoint directory; several separated by commas
        model: exported TorchScript model.pt (hytrec-export); several separated by commas
        config: YAML evaluation config (configs/eval/default.yaml)
        names: display names, comma-separated, checkpoints first, then models (default: directory names)
        overwrite: replace an earlier evaluation in out (--overwrite True); a folder holding anything
            else is refused either way
        j: NxM: nodes × processes per node
        cpu: CPUs per replica (one node); default 10 per GPU, or 2 per process on CPU
        gpu: GPUs per replica
        memMB: memory per replica in MB; default 100,000 per GPU, or 8,192 per process on CPU
        h: a registered named resource (overrides cpu/gpu/memMB)
        name: job name
        rdzv_port: rendezvous port on the first node
        env: extra environment variables
        image: container image with hytrec_torchrec installed (Kubernetes)
        mounts: volumes holding the checkpoints, the data and out on Kubernetes
    """
    args = []
    for c in (checkpoint.split(",") if checkpoint else []):
        args += ["--checkpoint", c.strip()]
    for f in (model.split(",") if model else []):
        args += ["--model", f.strip()]
    for n in (names.split(",") if names else []):
        args += ["--name", n.strip()]
    args += ["--data", data, "--out", out]
    if overwrite:
        args.append("--overwrite")
    if config:
        args += ["--config", config]
    app = ddp(
        *args, *overrides,
        m="hytrec_torchrec.evaluation.cli",
        j=j, gpu=gpu, h=h, name=name, **_sized(j, cpu, gpu, memMB), rdzv_port=rdzv_port,
        env=env, image=image, mounts=mounts,
    )
    return _named_role(app, "evaluate")


def prepare(
    *overrides: str,
    input: str,
    output: str,
    config: Optional[str] = None,
    j: str = "1x1",
    cpu: Optional[int] = None,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    name: str = "hytrec-prepare",
    env: Optional[Dict[str, str]] = None,
) -> specs.AppDef:
    """Prepare raw events into a training dataset, as N×M independent hash-partitioned shards.

    Each process prepares the partitions p with p % WORLD_SIZE == RANK; the shards
    together equal an unsharded run. When all have finished, hytrec-prep --merge OUTPUT
    writes the combined meta.json (docs/data_prep.md).

    Args:
        overrides: KEY=VALUE ... dotted prep-config overrides after the options (may be empty),
            e.g. filters.min_user_events=5
        input: raw events: a Parquet/CSV file, a directory or a glob
        output: prepared dataset directory
        config: YAML prep config
        j: NxM shards: nodes × processes per node
        cpu: CPUs per replica (one node); default 10 per GPU, or 2 per process on CPU
        memMB: memory per replica in MB; default 100,000 per GPU, or 8,192 per process on CPU
        h: a registered named resource
        name: job name
        env: extra environment variables
    """
    args = [input, output, "--shard", "env"]
    if config:
        args += ["--config", config]
    app = ddp(
        *args, *overrides,
        m="hytrec_torchrec.data_prep.cli",
        j=j, h=h, name=name, **_sized(j, cpu, 0, memMB), env=env,
    )
    return _named_role(app, "prepare")
