"""Helpers to run a function on N gloo ranks in fresh processes (as TorchRec's own tests do).

Example::

    def _body(rank: int, world_size: int, out_dir: str) -> None:
        ...  # torch.distributed is initialised here (gloo, CPU)

    run_distributed(_body, world_size=2, args=(str(tmp_path),))

The function must be importable (module level) because processes are spawned. An exception
on any rank fails the call with that rank's traceback.
"""

from __future__ import annotations

import os
import traceback
from typing import Any, Callable, Sequence

import torch.distributed as dist
import torch.multiprocessing as mp

from hytrec_torchrec.config import from_dict
from hytrec_torchrec.runtime.config import JobConfig
from hytrec_torchrec.runtime.distributed import free_port, init_distributed, shutdown_distributed
from hytrec_torchrec.training.loop import Trainer

__all__ = ["fit_job", "run_distributed"]


def _worker(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: Sequence[Any],
    errors: Any,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        fn(rank, world_size, *args)
        shutdown_distributed()
    except BaseException:  # noqa: BLE001 - forwarded to the parent
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(
    fn: Callable[..., Any], world_size: int, args: Sequence[Any] = (), timeout_s: float = 600
) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned gloo processes."""
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, fn, tuple(args), errors))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout_s)
    for p in procs:
        if p.is_alive():
            p.kill()
    if not errors.empty():
        rank, tb = errors.get()
        raise RuntimeError(f"rank {rank} failed:\n{tb}")
    bad = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"ranks exited abnormally (rank, exitcode): {bad}")


def fit_job(rank: int, world_size: int, cfg_dict: dict) -> None:
    """Train one job on this gloo rank: a ``run_distributed`` body.

    ``cfg_dict`` is a :class:`~hytrec_torchrec.runtime.config.JobConfig` as a plain dict
    (``to_dict``), so it pickles into the spawned processes::

        run_distributed(fit_job, 2, (to_dict(job_config),))
    """
    Trainer(from_dict(JobConfig, cfg_dict), init_distributed("gloo", "cpu")).fit()
