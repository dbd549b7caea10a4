"""Embedding tables, their sharding constraints and the TorchRec planner (docs/design.md §5).

The four ID tables (item, attribution, category, behavior) live in one TorchRec
``EmbeddingCollection``. Per-table sharding type and compute kernel come from the YAML config
(:class:`EmbeddingsConfig`); the planner (``EmbeddingShardingPlanner``) places the shards, and
``DistributedModelParallel`` applies the plan. The sparse optimizer is fused into the backward
pass of the embedding kernels (``apply_optimizer_in_backward``), so embedding gradients are never
materialised; ``data_parallel`` tables (replicated, ``dense`` kernel) are the exception: their
gradients are ordinary tensors, all-reduced, and the trainer steps them with the same configured
optimizer (:mod:`~hytrec_torchrec.runtime.dense_lookup` makes their lookup work on CPU).

Example::

    cfg = EmbeddingsConfig(dim=64)
    tables = table_configs(cfg, {"item": 3708, "attribution": 2, "category": 20, "behavior": 11})
    planner = make_planner(cfg, world_size=2, compute_device="cpu")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from hytrec_torchrec.config import ConfigError, check_choice, check_range
from hytrec_torchrec.runtime.known_warnings import filter_known_messages
from hytrec_torchrec.schema import TABLE_FEATURES, TABLES

SHARDING_TYPES = (
    "row_wise",
    "column_wise",
    "table_wise",
    "table_row_wise",
    "table_column_wise",
    "data_parallel",
)
COMPUTE_KERNELS = ("fused", "dense", "fused_uvm", "fused_uvm_caching")
SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd", "adam")

#: the fused optimizers fbgemm's CPU embedding kernels implement (``adam`` needs CUDA, or every
#: table on ``data_parallel``: :func:`check_sparse_optimizer_device`).
CPU_SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")

#: compute kernels that cannot serve an ``EmbeddingCollection`` on CPU
#: (:func:`check_compute_kernels_device`).
CPU_UNUSABLE_KERNELS = ("fused_uvm", "fused_uvm_caching")


@dataclass
class TableConfig:
    """Sharding of one embedding table.

    Attributes:
        sharding_type: one of ``row_wise``, ``column_wise``, ``table_wise``, ``table_row_wise``,
            ``table_column_wise``, ``data_parallel``; ``None`` lets the planner choose.
        compute_kernel: ``fused`` (optimizer fused into backward; default), ``dense`` (the only
            kernel for ``data_parallel``; trained by ``embeddings.optimizer`` as a plain torch
            optimizer), or ``fused_uvm``/``fused_uvm_caching`` (CUDA only:
            :func:`check_compute_kernels_device`); ``None`` lets the planner choose.
        min_partition: smallest column-shard width for column-wise sharding.
    """

    sharding_type: Optional[str] = None
    compute_kernel: Optional[str] = "fused"
    min_partition: Optional[int] = None

    def validate(self) -> None:
        if self.sharding_type is not None:
            check_choice("sharding_type", self.sharding_type, SHARDING_TYPES)
        if self.compute_kernel is not None:
            check_choice("compute_kernel", self.compute_kernel, COMPUTE_KERNELS)
        dp = self.sharding_type == "data_parallel"
        if self.compute_kernel is not None and dp != (self.compute_kernel == "dense"):
            raise ConfigError(
                f"compute_kernel: {self.compute_kernel!r} with sharding_type "
                f"{self.sharding_type!r}: TorchRec runs data_parallel tables, and only them, on "
                "the 'dense' kernel; set both (sharding_type: data_parallel, compute_kernel: dense) "
                "or neither"
            )
        if self.min_partition is not None:
            check_range("min_partition", self.min_partition, 1)


def _default_tables() -> dict[str, TableConfig]:
    return {
        "item": TableConfig(sharding_type="row_wise"),
        "attribution": TableConfig(sharding_type="row_wise"),
        "category": TableConfig(sharding_type="table_wise"),
        "behavior": TableConfig(sharding_type="table_wise"),
    }


@dataclass
class EmbeddingsConfig:
    """Embedding tables and the fused sparse optimizer.

    Attributes:
        dim: embedding dimension of every table (the tower's model width).
        tables: per-table sharding constraints, keyed by table name
            (``item``, ``attribution``, ``category``, ``behavior``).
        optimizer: sparse optimizer: ``rowwise_adagrad`` (default), ``adagrad``, ``sgd``,
            ``adam`` (fbgemm has no fused CPU Adam: on CPU every table must be ``data_parallel``;
            :func:`check_sparse_optimizer_device`). Fused into the backward of sharded tables;
            a plain torch optimizer over ``data_parallel`` tables.
        lr: sparse learning rate.
        eps: optimizer epsilon (Adagrad family and Adam).
        weight_decay: sparse weight decay.
        init_std: standard deviation of the normal initialisation of every table (row 0, the
            padding row, is zeroed at init).
        hbm_cap_gb / ddr_cap_gb: per-rank memory the planner may use (``None``: TorchRec default
            for the device).
    """

    dim: int = 64
    tables: dict[str, TableConfig] = field(default_factory=_default_tables)
    optimizer: str = "rowwise_adagrad"
    lr: float = 0.05
    eps: float = 1e-8
    weight_decay: float = 0.0
    init_std: float = 0.02
    hbm_cap_gb: Optional[float] = None
    ddr_cap_gb: Optional[float] = None

    def validate(self) -> None:
        check_range("dim", self.dim, 1)
        check_choice("optimizer", self.optimizer, SPARSE_OPTIMIZERS)
        check_range("lr", self.lr, 0.0, lo_open=True)
        check_range("eps", self.eps, 0.0)
        check_range("init_std", self.init_std, 0.0, lo_open=True)
        for name in self.tables:
            if name not in TABLES:
                raise ConfigError(f"tables.{name}: unknown table (valid: {list(TABLES)})")
        for name in TABLES:
            self.tables.setdefault(name, _default_tables()[name])


def table_configs(cfg: EmbeddingsConfig, vocab_sizes: dict[str, int]) -> list[Any]:
    """TorchRec ``EmbeddingConfig`` list for the four tables.

    Args:
        cfg: embeddings config.
        vocab_sizes: rows per table (from the prepared dataset's ``meta.json``; includes the
            padding row 0 and the unknown row 1).
    """
    from torchrec import EmbeddingConfig

    missing = [t for t in TABLES if t not in vocab_sizes]
    if missing:
        raise ValueError(f"vocab_sizes lacks tables {missing}")
    return [
        EmbeddingConfig(
            name=name,
            embedding_dim=cfg.dim,
            num_embeddings=int(vocab_sizes[name]),
            feature_names=list(TABLE_FEATURES[name]),
        )
        for name in TABLES
    ]


def sparse_optimizer(cfg: EmbeddingsConfig) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """Optimizer class and kwargs to fuse into the embedding backward.

    Returns TorchRec's row-wise Adagrad for ``rowwise_adagrad``; DMP maps the class onto the
    matching fbgemm fused kernel (``EXACT_ROWWISE_ADAGRAD`` etc.), and the same class runs as a
    plain optimizer on an unsharded model, which is what the parity tests compare against.
    """
    if cfg.optimizer == "rowwise_adagrad":
        from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

        return RowWiseAdagrad, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adam":
        return torch.optim.Adam, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    return torch.optim.SGD, {"lr": cfg.lr, "weight_decay": cfg.weight_decay}


def check_sparse_optimizer_device(cfg: EmbeddingsConfig, device: torch.device) -> None:
    """Raise ``ConfigError`` (key ``embeddings.optimizer``) when a table would need a fused
    optimizer that has no kernel on ``device``.

    fbgemm's CPU table-batched embeddings implement only the Adagrad family and SGD. Tables on
    ``data_parallel`` (the ``dense`` kernel) take any optimizer on any device: their gradients
    are ordinary tensors and the trainer steps them with ``embeddings.optimizer``
    (:mod:`~hytrec_torchrec.runtime.dense_lookup`). So ``adam`` on CPU needs every table on
    ``data_parallel``; otherwise the job would fail deep inside sharding with an assertion.
    """
    if device.type != "cpu" or cfg.optimizer in CPU_SPARSE_OPTIMIZERS:
        return
    fused = sorted(n for n, t in cfg.tables.items() if t.sharding_type != "data_parallel")
    if fused:
        raise ConfigError(
            f"embeddings.optimizer: {cfg.optimizer!r} has no fused fbgemm kernel on CPU "
            f"(CPU supports {list(CPU_SPARSE_OPTIMIZERS)}); tables {fused} use a fused kernel: "
            "set embeddings.tables.<table>.sharding_type=data_parallel for them (replicated, any "
            "optimizer), train on CUDA, or pick one of those"
        )


def check_compute_kernels_device(cfg: EmbeddingsConfig, device: torch.device) -> None:
    """Raise ``ConfigError`` (key ``embeddings.tables.<table>.compute_kernel``) for a kernel that
    cannot look up an ``EmbeddingCollection`` on ``device``: on CPU, ``fused_uvm`` and
    ``fused_uvm_caching`` (they need CUDA unified memory). The ``dense`` kernel (the one TorchRec
    gives ``data_parallel`` tables) runs on CPU through
    :func:`~hytrec_torchrec.runtime.dense_lookup.patch_dense_sequence_lookups`, which
    :func:`~hytrec_torchrec.runtime.distributed.shard_model` applies. Checked before planning, for
    training, evaluation and export alike.
    """
    if device.type != "cpu":
        return
    for name, t in cfg.tables.items():
        if t.compute_kernel in CPU_UNUSABLE_KERNELS:
            raise ConfigError(
                f"embeddings.tables.{name}.compute_kernel: {t.compute_kernel!r} cannot run an "
                "EmbeddingCollection on CPU (the uvm kernels need CUDA unified memory); use "
                "'fused', or train on CUDA"
            )


def parameter_constraints(cfg: EmbeddingsConfig) -> dict[str, Any]:
    """Planner ``ParameterConstraints`` per table from the config."""
    from torchrec.distributed.planner import ParameterConstraints

    out: dict[str, Any] = {}
    for name, t in cfg.tables.items():
        kwargs: dict[str, Any] = {}
        if t.sharding_type is not None:
            kwargs["sharding_types"] = [t.sharding_type]
        if t.compute_kernel is not None:
            kwargs["compute_kernels"] = [t.compute_kernel]
        if t.min_partition is not None:
            kwargs["min_partition"] = t.min_partition
        out[name] = ParameterConstraints(**kwargs)
    return out


def make_planner(
    cfg: EmbeddingsConfig,
    world_size: int,
    compute_device: str,
    local_world_size: Optional[int] = None,
    batch_size: Optional[int] = None,
) -> Any:
    """An ``EmbeddingShardingPlanner`` honouring the per-table constraints.

    Args:
        world_size: total ranks.
        compute_device: ``"cpu"`` or ``"cuda"``.
        local_world_size: ranks per host (defaults to ``world_size``).
        batch_size: per-rank batch size, used by the planner's cost model.
    """
    filter_known_messages()  # the planner's TopologyFactory and dense-estimate notes
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology

    topo_kwargs: dict[str, Any] = {
        "world_size": world_size,
        "compute_device": compute_device,
        "local_world_size": local_world_size or world_size,
    }
    if cfg.hbm_cap_gb is not None:
        topo_kwargs["hbm_cap"] = int(cfg.hbm_cap_gb * 1024**3)
    if cfg.ddr_cap_gb is not None:
        topo_kwargs["ddr_cap"] = int(cfg.ddr_cap_gb * 1024**3)
    kwargs: dict[str, Any] = {
        "topology": Topology(**topo_kwargs),
        "constraints": parameter_constraints(cfg),
    }
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    return EmbeddingShardingPlanner(**kwargs)


def sharders() -> list[Any]:
    """The module sharders DMP uses (only the ``EmbeddingCollection`` one)."""
    from torchrec.distributed.embedding import EmbeddingCollectionSharder

    return [EmbeddingCollectionSharder()]
