"""Process-group setup and sharded-model construction shared by train, evaluate and export.

``init_distributed`` reads the torchrun/TorchX environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); without it, it starts a one-process gloo group
so the same code path (DMP, DCP) runs in a plain ``python`` process too.

Sharded tables appear in the model's ``state_dict()`` (and so in checkpoints) as ``DTensor``, the
form torch recommends, wherever the installed torchrec's ``ShardingEnv`` takes ``output_dtensor``
(:func:`dtensor_supported`), else as the deprecated ``ShardedTensor``. ``HYTREC_SHARDED_STATE``
(:data:`SHARDED_STATE_ENV`) picks the form: ``auto`` (default), ``dtensor`` or ``sharded_tensor``.
DCP stores both forms alike, so a checkpoint written in either loads into a model of either form.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from hytrec_torchrec.config import ConfigError
from hytrec_torchrec.runtime.dense_lookup import patch_dense_sequence_lookups
from hytrec_torchrec.runtime.known_warnings import filter_known_messages
from hytrec_torchrec.runtime.sharding import check_compute_kernels_device, make_planner, sharders

__all__ = ["DistEnv", "SHARDED_STATE_ENV", "SHARDED_STATE_FORMS", "dtensor_supported", "format_plan", "free_port",
           "init_distributed", "shard_model", "sharded_state_form", "shutdown_distributed"]

log = logging.getLogger(__name__)

#: environment variable that picks the form of sharded tables in state dicts and checkpoints
SHARDED_STATE_ENV = "HYTREC_SHARDED_STATE"
#: its values: ``auto`` (DTensor where torchrec supports it), ``dtensor``, ``sharded_tensor``
SHARDED_STATE_FORMS = ("auto", "dtensor", "sharded_tensor")


def free_port() -> int:
    """A currently free TCP port on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shutdown_distributed() -> None:
    """Tear the process group down so the process exits cleanly.

    Objects from the finished job (pipelines, awaitables, DDP reducers) can sit in reference
    cycles that hold gloo work with tensors; if they are only freed during interpreter
    finalisation the process aborts ("terminate called without an active exception", exit -6).
    So: collect them now, wait for every rank, then destroy the group while Python is alive.
    """
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    gc.collect()


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str = "auto", device: str = "auto") -> DistEnv:
    """Initialise (or reuse) the default process group.

    Args:
        backend: ``auto`` (nccl with CUDA, else gloo), ``gloo`` or ``nccl``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """
    if "RANK" not in os.environ and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    world = dist.get_world_size()
    return DistEnv(
        rank=dist.get_rank(),
        world_size=world,
        local_rank=local_rank,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
        device=dev,
        backend=backend,
    )


def dtensor_supported() -> bool:
    """Whether the installed torchrec can give sharded tables as ``DTensor`` (its ``ShardingEnv``
    takes ``output_dtensor``); feature-detected, not read from a version."""
    from torchrec.distributed.types import ShardingEnv

    return "output_dtensor" in inspect.signature(ShardingEnv.__init__).parameters


def sharded_state_form(requested: str | None = None) -> str:
    """The form sharded tables take: ``"dtensor"`` or ``"sharded_tensor"``.

    Args:
        requested: one of :data:`SHARDED_STATE_FORMS`; ``None`` reads :data:`SHARDED_STATE_ENV`
            (``auto`` when unset). ``auto`` is ``dtensor`` where :func:`dtensor_supported`.

    Raises:
        ConfigError: an unknown form, or ``dtensor`` where torchrec cannot give it (the message
            starts with :data:`SHARDED_STATE_ENV`; the CLIs report it as bad input).
    """
    form = (os.environ.get(SHARDED_STATE_ENV) or "auto") if requested is None else requested
    form = form.strip().lower()
    if form not in SHARDED_STATE_FORMS:
        raise ConfigError(f"{SHARDED_STATE_ENV}={form!r}: expected one of {list(SHARDED_STATE_FORMS)}")
    if form == "sharded_tensor":
        return form
    if dtensor_supported():
        return "dtensor"
    if form == "dtensor":
        raise ConfigError(f"{SHARDED_STATE_ENV}=dtensor: the installed torchrec's ShardingEnv has no "
                         "output_dtensor; use auto or sharded_tensor")
    return "sharded_tensor"


def _sharding_env(form: str) -> Any:
    """TorchRec's ``ShardingEnv`` over the default process group, giving tables in ``form``."""
    from torchrec.distributed.types import ShardingEnv

    pg = dist.GroupMember.WORLD
    if form == "dtensor":
        return ShardingEnv(dist.get_world_size(pg), dist.get_rank(pg), pg, output_dtensor=True)
    return ShardingEnv.from_process_group(pg)


def shard_model(
    model: torch.nn.Module,
    emb_cfg: Any,
    env: DistEnv,
    batch_size: int | None = None,
    find_unused_parameters: bool = True,
    state_form: str | None = None,
) -> tuple[Any, Any]:
    """Plan and apply sharding with ``DistributedModelParallel``.

    Raises ``ConfigError`` first for an unknown or unsupported ``state_form``
    (:func:`sharded_state_form`) or a compute kernel the device cannot run
    (:func:`~hytrec_torchrec.runtime.sharding.check_compute_kernels_device`).

    The model's ``EmbeddingCollection`` must be on the meta device (its optimizer already attached
    with ``apply_optimizer_in_backward`` if training); dense modules on ``env.device``.

    ``find_unused_parameters`` is DDP's flag for the dense modules (True: some batches may leave
    parameters without a gradient; training derives it from the tower config). The library
    messages of :mod:`~hytrec_torchrec.runtime.known_warnings` are dropped from here on.

    ``state_form`` is the form of the sharded tables in ``state_dict()`` (one of
    :data:`SHARDED_STATE_FORMS`; ``None``: from :data:`SHARDED_STATE_ENV`;
    :func:`sharded_state_form`).

    Returns:
        ``(dmp_model, plan)``.
    """
    from torchrec.distributed.model_parallel import (
        DefaultDataParallelWrapper,
        DistributedModelParallel,
    )

    filter_known_messages()
    form = sharded_state_form(state_form)
    check_compute_kernels_device(emb_cfg, env.device)
    planner = make_planner(
        emb_cfg,
        world_size=env.world_size,
        compute_device=env.device.type,
        local_world_size=env.local_world_size,
        batch_size=batch_size,
    )
    shs = sharders()
    plan = planner.collective_plan(model, shs, dist.GroupMember.WORLD)
    # Not a static graph: which tower parameters get gradients depends on the batch (e.g. a batch
    # whose histories all fit in the short window leaves the long branch empty).
    wrapper = DefaultDataParallelWrapper(static_graph=False, find_unused_parameters=find_unused_parameters)
    dmp = DistributedModelParallel(
        model, env=_sharding_env(form), device=env.device, plan=plan, sharders=shs,
        data_parallel_wrapper=wrapper,
    )

    patch_dense_sequence_lookups(dmp)  # CPU tables on the "dense" kernel (no-op otherwise)
    return dmp, plan


def format_plan(plan: Any) -> str:
    """One line per table shard: table, sharding type, kernel, shard offsets/sizes → rank."""
    lines = []
    for module_path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():
            shards = ps.sharding_spec.shards if ps.sharding_spec is not None else []
            where = "; ".join(
                f"rows {s.shard_offsets[0]}+{s.shard_sizes[0]} cols {s.shard_offsets[1]}+"
                f"{s.shard_sizes[1]} -> {s.placement}"
                for s in shards
            ) or f"ranks {ps.ranks}"
            lines.append(
                f"{module_path}.{table}: {ps.sharding_type} / {ps.compute_kernel}: {where}"
            )
    return "\n".join(lines)
