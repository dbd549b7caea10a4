"""The training job's configuration tree (``hytrec-train --config FILE [key=value ...]``).

YAML layout (every key optional except ``data.path``)::

    run:        {dir: runs/demo, seed: 0, log_every: 10, tensorboard: true, progress: true}
    data:       DataConfig            (hytrec_torchrec/data/config.py)
    embeddings: EmbeddingsConfig      (hytrec_torchrec/runtime/sharding.py)
    model:      TowerConfig           (hytrec_torchrec/modules/config.py)
    optim:      {lr: 1e-3, weight_decay: 0.01, betas: [0.9, 0.98], eps: 1e-8, grad_clip: 1.0}
    train:      {max_steps: 200, epochs: null, validate_every: 100, val_batches: 20,
                 checkpoint_every: 100, keep_last: 3, pipeline: sparse_dist, backend: auto}
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

from hytrec_torchrec.config import ConfigError, check_choice, check_range, from_dict, load_config, path_field, to_dict
from hytrec_torchrec.data.config import DataConfig
from hytrec_torchrec.modules.config import TowerConfig, fill_pre_memory_keys
from hytrec_torchrec.modules.registry import check_pattern
from hytrec_torchrec.runtime.sharding import EmbeddingsConfig

__all__ = ["SCHEDULES", "ScheduleConfig", "RunConfig", "OptimConfig", "TrainConfig", "JobConfig", "load_job_config",
           "parameter_changes", "FREE_ON_RESUME", "stored_config", "model_changes", "describe_model"]

#: ``model`` keys that change no parameter and may differ between a checkpoint and the job that
#: resumes or evaluates it; any other difference in ``model`` or ``embeddings.dim`` is refused.
FREE_ON_RESUME = frozenset({"dropout", "temperature", "softmax_group_waste", "repeat_rows", "tadn.impl",
                            "tadn.chunk_size", "fusion.load_balance_weight", "fusion.short_dropout"})


SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (``optim.schedule`` in the job config).

    Attributes:
        name: ``constant`` (default), ``cosine`` or ``linear`` decay.
        warmup_steps: steps of linear warm-up from ``lr / warmup_steps`` to ``lr``.
        decay_steps: length of the decay at the end of the run (``None``: every step after the
            warm-up decays).
        min_lr_ratio: the multiplier reached at the last step of a decay.
    """

    name: str = "constant"
    warmup_steps: int = 0
    decay_steps: Optional[int] = None
    min_lr_ratio: float = 0.0

    def validate(self) -> None:
        check_choice("name", self.name, SCHEDULES)
        check_range("warmup_steps", self.warmup_steps, 0)
        if self.decay_steps is not None:
            check_range("decay_steps", self.decay_steps, 1)
        check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)

    def check_total(self, total: int) -> None:
        """Raise ``ConfigError`` when the decay is longer than a job of ``total`` steps.

        A warm-up longer than the job is allowed: a job run in stages (resumed with a larger
        ``train.max_steps``) may stop during its warm-up.
        """
        if self.decay_steps is not None and self.decay_steps > total:
            raise ConfigError(
                f"optim.schedule.decay_steps: {self.decay_steps} is more than the job's "
                f"{total} steps"
            )



def _flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parameter_changes(saved: dict, current: dict) -> list[str]:
    """``"key: saved -> current"`` for every ``model.*`` key (except :data:`FREE_ON_RESUME`) and
    ``embeddings.dim`` whose value differs between two job configs given as plain dicts (the
    stored one already completed with :func:`~hytrec_torchrec.modules.config.fill_pre_memory_keys`)."""
    a = _flatten(saved.get("model", {}))
    b = _flatten(current.get("model", {}))
    diffs = [f"model.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
             if k not in FREE_ON_RESUME and a.get(k) != b.get(k)]
    da, db = saved.get("embeddings", {}).get("dim"), current.get("embeddings", {}).get("dim")
    if da != db:
        diffs.append(f"embeddings.dim: {da!r} -> {db!r}")
    return diffs


@dataclass
class RunConfig:
    """Where the run writes (checkpoints, TensorBoard, metrics) and logging.

    Attributes:
        dir: run directory; checkpoints under ``dir/checkpoints``, TensorBoard under ``dir/tb``.
        seed: seed of model initialisation and dropout (the loader has ``data.seed``).
        log_every: steps between progress/TensorBoard updates.
        tensorboard: write TensorBoard scalars on rank 0.
        progress: show progress on rank 0: a bar on a terminal, else (under TorchX, piped) a
            log line every ``log_every`` steps; false: the log lines only.
        overwrite: with ``train.resume: false``, clear an earlier run's outputs from ``dir``
            (``hytrec-train --overwrite``); without it such a ``dir`` is refused
            (:mod:`~hytrec_torchrec.training.rundir`).
    """

    dir: str = path_field("runs/default")
    seed: int = 0
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True
    overwrite: bool = False

    def validate(self) -> None:
        if not self.dir:
            raise ConfigError("dir: must not be empty")
        check_range("log_every", self.log_every, 1)


@dataclass
class OptimConfig:
    """Dense (tower) optimizer: AdamW, with gradient-norm clipping of the dense parameters.

    ``schedule`` (:class:`ScheduleConfig`) scales this ``lr``
    and ``embeddings.lr`` alike, step by step (warm-up, then constant, cosine or linear decay).
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    grad_clip: Optional[float] = 1.0
    repeat_lr_scale: float = 10.0
    """The repeat path's parameters (``model.repeat``) train at ``lr × repeat_lr_scale``: its
    scorer's output starts at zero and must reach score-sized values (about the range of ``u·v``)
    within a few hundred steps, which AdamW, moving a weight by at most about ``lr`` a step, does
    not give it at the tower's rate. 1 = one learning rate for every dense parameter."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def validate(self) -> None:
        check_range("lr", self.lr, 0.0, lo_open=True)
        check_range("repeat_lr_scale", self.repeat_lr_scale, 0.0, lo_open=True)
        check_range("weight_decay", self.weight_decay, 0.0)
        for i, b in enumerate(self.betas):
            check_range(f"betas[{i}]", b, 0.0, 1.0, hi_open=True)
        if self.grad_clip is not None:
            check_range("grad_clip", self.grad_clip, 0.0, lo_open=True)


@dataclass
class TrainConfig:
    """Training schedule.

    Attributes:
        max_steps: stop after this many optimizer steps (``None``: run ``epochs`` epochs).
        max_minutes: a wall-clock budget: the job also stops at the first time check (every 10
            steps, agreed across ranks) after this many minutes since it
            started or resumed, with a checkpoint. The learning-rate schedule still counts
            ``max_steps``/``epochs``. ``None`` (default): no budget. For comparisons at equal
            wall time.
        epochs: number of passes (each pass draws new cutoffs per user); ``None`` with
            ``max_steps`` set means as many epochs as the steps need.
        validate_every: steps between validations (0: only at the end).
        val_batches: validation batches per rank (``None``: the whole validation split).
        checkpoint_every: steps between checkpoints (0: only at the end).
        keep_last: checkpoints kept.
        pipeline: ``sparse_dist`` (TorchRec's TrainPipelineSparseDist, overlapping the input
            all-to-all with compute) or ``plain`` (a simple loop; easier to debug).
        backend: ``auto`` (nccl on CUDA, gloo on CPU), ``gloo`` or ``nccl``.
        resume: continue from ``run.dir``'s latest checkpoint when there is one.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: intra-op CPU threads per process; 0 (default): ``OMP_NUM_THREADS`` when set, else
            the process's cores divided by the local ranks (:mod:`~hytrec_torchrec.runtime.threads`).
        find_unused_parameters: DDP's flag for the dense modules; ``None`` (default): from the tower,
            False only when it gives every parameter a gradient on every batch
            (:func:`~hytrec_torchrec.runtime.known_warnings.ddp_find_unused_parameters`).
    """

    max_steps: Optional[int] = 200
    max_minutes: Optional[float] = None
    epochs: Optional[int] = None
    validate_every: int = 100
    val_batches: Optional[int] = 20
    checkpoint_every: int = 100
    keep_last: int = 3
    pipeline: str = "sparse_dist"
    backend: str = "auto"
    resume: bool = True
    device: str = "auto"
    threads: int = 0
    find_unused_parameters: Optional[bool] = None

    def validate(self) -> None:
        check_range("threads", self.threads, 0)
        if self.max_steps is None and self.epochs is None:
            raise ConfigError("max_steps: set max_steps or epochs")
        if self.max_steps is not None:
            check_range("max_steps", self.max_steps, 1)
        if self.epochs is not None:
            check_range("epochs", self.epochs, 1)
        if self.max_minutes is not None:
            check_range("max_minutes", self.max_minutes, 0.0, lo_open=True)
        check_range("validate_every", self.validate_every, 0)
        check_range("checkpoint_every", self.checkpoint_every, 0)
        check_range("keep_last", self.keep_last, 1)
        if self.val_batches is not None:
            check_range("val_batches", self.val_batches, 1)
        check_choice("pipeline", self.pipeline, ("sparse_dist", "plain"))
        check_choice("backend", self.backend, ("auto", "gloo", "nccl"))
        check_choice("device", self.device, ("auto", "cpu", "cuda"))


@dataclass
class JobConfig:
    """The whole training job."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    model: TowerConfig = field(default_factory=TowerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if not self.data.path:
            raise ConfigError("data.path: required (the prepared dataset directory)")
        check_pattern(self.model.long_pattern, "model.long_pattern")  # the letters of modules/registry.py
        if self.train.max_steps is not None and self.train.epochs is None:
            self.optim.schedule.check_total(self.train.max_steps)
        if self.data.train_on_valid and self.train.validate_every:
            raise ConfigError(
                f"train.validate_every: {self.train.validate_every} must be 0 when data.train_on_valid "
                "is true (the validation event is a training target, so nothing is held out to validate on)"
            )
        if self.model.short_len > self.data.max_len:
            raise ConfigError(
                f"model.short_len: {self.model.short_len} is longer than data.max_len ({self.data.max_len}); "
                "histories are cut to max_len, so the long branch would never see an event"
            )
        if self.model.embedding_dim != self.embeddings.dim:
            raise ConfigError(
                f"model.embedding_dim: {self.model.embedding_dim} must equal embeddings.dim "
                f"({self.embeddings.dim})"
            )
        if self.model.long_aux_weight > 0 and not self.data.all_positions:
            raise ConfigError(
                f"model.long_aux_weight: {self.model.long_aux_weight} needs data.all_positions: true (each "
                "history row's long-branch output predicts the events after it, which only all-position "
                "batches hold)"
            )


def load_job_config(path: Optional[str], overrides: list[str]) -> JobConfig:
    """Load a :class:`JobConfig` from YAML plus dotted ``key=value`` overrides."""
    return load_config(JobConfig, path, overrides)


def stored_config(state: dict) -> dict:
    """A copy of the job config a checkpoint's ``train_state`` holds, with the long-memory keys a
    checkpoint written before them lacks filled in as the tower it trained had them (paper form)."""
    stored = copy.deepcopy(state["config"])
    fill_pre_memory_keys(stored.setdefault("model", {}))
    return stored


def model_changes(state: dict, cfg: JobConfig) -> list[str]:
    """:func:`parameter_changes` between the checkpoint's stored
    config (:func:`stored_config`) and ``cfg``."""
    return parameter_changes(to_dict(from_dict(JobConfig, stored_config(state))), to_dict(cfg))


def describe_model(model: dict) -> str:
    """The architecture in a few words from a job config's ``model`` section: ``HyTRec TTTS`` (the
    paper's form), ``HyTRec TTT, long memory`` (gated-delta layers or the intent readout),
    ``short-only``, ``SASRec-like SS``, with ``+ repeat`` for the repeat path. Keys missing from an
    older config read as the paper's form."""
    pattern = str(model.get("long_pattern", ""))
    tadn = model.get("tadn") or {}
    memory = tadn.get("gating", "paper") == "gated_delta" or model.get("long_readout", "last") == "intent"
    if int(model.get("short_len", 1)) == 0:
        name = f"SASRec-like {pattern}"
    elif not pattern:
        name = "short-only"
    else:
        name = f"HyTRec {pattern}" + (", long memory" if memory else "")
    return name + (" + repeat" if model.get("repeat") else "")
