"""Intra-op CPU threads of a training process: the cores it may use, shared by its local ranks.

torch starts one intra-op thread per physical core whatever else runs there, so two ranks on one
machine, or one rank beside other work, oversubscribe the cores (issue 44 measured a single
process 14x slower under load with torch's default than with 1 thread). Training therefore sets
``torch.set_num_threads`` itself, from the first of:

1. ``train.threads`` when it is not 0;
2. ``OMP_NUM_THREADS`` when it is set (note that ``torchrun`` sets it to 1 for every rank of a
   job with more than one process per node when it is unset);
3. the cores this process may run on (its CPU affinity, capped by a cgroup v2 CPU quota), divided
   by the local ranks (``LOCAL_WORLD_SIZE``), at least 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional

import torch

__all__ = ["available_cores", "choose_threads", "set_threads"]

_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def _cgroup_quota(path: Path = _CGROUP_CPU_MAX) -> Optional[int]:
    """Whole CPUs allowed by a cgroup v2 quota (``"200000 100000"`` -> 2), None without one."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def available_cores(cgroup_cpu_max: Path = _CGROUP_CPU_MAX) -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_cpu_max)
    return max(1, min(cores, quota) if quota is not None else cores)


def choose_threads(configured: int, local_world_size: int, environ: Mapping[str, str],
                   cores: int) -> tuple[int, str]:
    """``(threads, where the number comes from)`` by the rules of the module docstring."""
    if configured > 0:
        return configured, "train.threads"
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    ranks = max(1, local_world_size)
    return max(1, cores // ranks), f"{cores} cores / {ranks} local rank{'s' if ranks > 1 else ''}"


def set_threads(configured: int, local_world_size: int) -> str:
    """Set torch's intra-op threads for training; returns the one log line that says so."""
    threads, source = choose_threads(configured, local_world_size, os.environ, available_cores())
    torch.set_num_threads(threads)
    return (f"intra-op threads: {threads} per process ({source}; set train.threads=N or "
            "OMP_NUM_THREADS=N to choose)")
