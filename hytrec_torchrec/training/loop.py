"""The training job: sharded HyTRec model, TorchRec train pipeline, validation, checkpoints.

Run through ``hytrec-train --config FILE [key=value ...]`` (one process) or TorchX/torchrun
(many). Every rank:

1. reads ``meta.json`` of the prepared dataset and builds :class:`~hytrec_torchrec.model.HyTRecModel`
   with its ``EmbeddingCollection`` on the meta device;
2. attaches the fused sparse optimizer (``apply_optimizer_in_backward``), plans and shards the
   tables with ``DistributedModelParallel`` (plan logged on rank 0), and combines the fused
   optimizer with the dense AdamW (gradient-norm clipped) in one keyed optimizer, whose learning
   rates follow ``optim.schedule`` step by step (:mod:`~hytrec_torchrec.training.schedule`);
3. resumes from ``run.dir``'s latest checkpoint when there is one (exactly: model, optimizers,
   loader position, RNG);
4. trains with ``TrainPipelineSparseDist`` (or a plain loop), validating (HR@10, NDCG@10 over the
   full catalog, computed shard by shard) and checkpointing periodically.

Loss semantics across ranks: each rank's loss is its local sum of per-example losses divided by
the *global* batch size, and dense gradients are all-reduced with SUM (a DDP comm hook), so the
update equals that of one process minimising the mean loss over the union of the ranks' batches
(embedding gradients are summed across ranks by the backward all-to-all). In-batch negatives
stay local to each rank's batch.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from hytrec_torchrec.config import ConfigError, to_dict
from hytrec_torchrec.data.batch import Batch
from hytrec_torchrec.data.loader import load_shard, make_dataloader
from hytrec_torchrec.data.reader import FEATURES, read_meta, vocab_fingerprint
from hytrec_torchrec.model import HyTRecModel
from hytrec_torchrec.ranking.metrics import ranking_metrics
from hytrec_torchrec.ranking.ranks import all_gather_rows, local_pieces
from hytrec_torchrec.ranking.scoring import batch_target_ranks, item_blocks
from hytrec_torchrec.runtime.checkpoint import latest_checkpoint, load_checkpoint, read_train_state, save_checkpoint
from hytrec_torchrec.runtime.config import JobConfig, describe_model, model_changes
from hytrec_torchrec.runtime.data_check import check_vocab
from hytrec_torchrec.runtime.dense_lookup import data_parallel_lookups
from hytrec_torchrec.runtime.distributed import DistEnv, format_plan, init_distributed, shard_model
from hytrec_torchrec.runtime.factory import build_model
from hytrec_torchrec.runtime.known_warnings import ddp_find_unused_parameters
from hytrec_torchrec.runtime.sharding import (
    check_compute_kernels_device,
    check_sparse_optimizer_device,
    sparse_optimizer,
)
from hytrec_torchrec.runtime.threads import set_threads
from hytrec_torchrec.training.curves import write_curves
from hytrec_torchrec.training.rundir import check_run_dir, claim_run_dir, note_before_claim, undo_claim
from hytrec_torchrec.training.schedule import lr_multiplier

__all__ = ["Trainer", "train", "NonFiniteLossError"]

log = logging.getLogger("hytrec.train")

# steps between the checks of train.max_minutes (each check is one tiny all-reduce, and a pause of
# the input pipeline as at a validation)
TIME_CHECK_EVERY = 10


def _whole_tensor(value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A state-dict entry whole, on the CPU: a sharded table (``ShardedTensor`` or ``DTensor``,
    :func:`~hytrec_torchrec.ranking.ranks.local_pieces`) assembled from every rank's pieces
    (collective: each piece is held by one rank, so a sum of the zero-filled tables is exact), any
    other entry copied."""
    pieces = local_pieces(value)
    if pieces is None:
        plain = value.to_local() if isinstance(value, DTensor) else value
        return plain.detach().cpu().clone()
    whole = torch.zeros(tuple(value.size()), dtype=value.dtype, device=device)
    for r0, c0, w in pieces:
        whole[r0 : r0 + w.shape[0], c0 : c0 + w.shape[1]] = w.detach()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(whole)
    return whole.cpu()


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the step and batch."""


def _sum_allreduce_hook(state, bucket):  # type: ignore[no-untyped-def]
    """DDP comm hook: all-reduce SUM (DDP's default divides by world size).

    Left unannotated on purpose: DDP rejects hooks whose ``bucket`` annotation is not the
    ``dist.GradBucket`` class, and postponed annotations would make it a string.
    """
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def _rng_state() -> Dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _is_repeat_param(name: str) -> bool:
    """A parameter of the model's repeat path (``model.repeat``), by its name under DMP/DDP."""
    return name.startswith("repeat.") or ".repeat." in name


class Trainer:
    """Owns the sharded model, optimizer and loaders of one training job.

    Args:
        cfg: the job config.
        env: process placement (``init_distributed()`` when None).
    """

    def __init__(self, cfg: JobConfig, env: Optional[DistEnv] = None) -> None:
        self.cfg = cfg
        self.env = env or init_distributed(cfg.train.backend, cfg.train.device)
        # run.dir is checked before the dataset is read and the model built (claimed in fit())
        check_run_dir(cfg.run.dir, cfg.train.resume, cfg.run.overwrite, self.env.is_main, inputs=[cfg.data.path])
        threads_line = set_threads(cfg.train.threads, self.env.local_world_size)
        check_sparse_optimizer_device(cfg.embeddings, self.env.device)
        check_compute_kernels_device(cfg.embeddings, self.env.device)  # again in shard_model
        self.meta = read_meta(cfg.data.path)
        if self.env.is_main:  # after the checks, so that a bad job's stderr is its one error line
            log.info(threads_line)
        self.vocab_sizes = {k: int(v) for k, v in self.meta.vocab_sizes.items()}
        catalog = self.vocab_sizes["item"] - 2  # indices 0, 1: padding and unknown
        if cfg.data.num_negatives > catalog:
            raise ConfigError(f"data.num_negatives: {cfg.data.num_negatives} draws per batch from a catalog of "
                              f"{catalog} known items ({cfg.data.path}); use -1 for the exact softmax over the "
                              "whole catalog, or fewer")
        model = build_model(cfg, self.vocab_sizes, self.env.device, torch.device("meta"))
        opt_cls, opt_kwargs = sparse_optimizer(cfg.embeddings)
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

        apply_optimizer_in_backward(opt_cls, model.embeddings.parameters(), opt_kwargs)
        find_unused = ddp_find_unused_parameters(cfg.train.find_unused_parameters, cfg.model)
        self.model, self.plan = shard_model(model, cfg.embeddings, self.env, cfg.data.batch_size,
                                            find_unused_parameters=find_unused)
        ddp = getattr(self.model, "_dmp_wrapped_module", None)
        if isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
            ddp.register_comm_hook(None, _sum_allreduce_hook)
        for table_ddp in data_parallel_lookups(self.model):  # data_parallel tables
            table_ddp.register_comm_hook(None, _sum_allreduce_hook)
        self.optimizer = self._make_optimizer()
        # the configured learning rate of every param group (fused sparse, data-parallel tables,
        # dense AdamW); the schedule scales these, so they are never read back from a checkpoint
        self._base_lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        self._total = 0
        self.shard = load_shard(cfg.data, self.env.rank, self.env.world_size)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[Dict[str, Any]] = []
        self.loss_log: list[list[float]] = []  # [step, rank 0's mean loss since the previous entry]
        self.step_losses: list[float] = []  # this rank's sampled-softmax loss per step
        self._tb: Any = None

    # ------------------------------------------------------------------ setup
    def _make_optimizer(self) -> Any:
        from torchrec.optim.clipping import GradientClipping, GradientClippingOptimizer
        from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        o = self.cfg.optim
        dense_params = dict(in_backward_optimizer_filter(self.model.named_parameters()))
        # tables on the "dense" kernel (data_parallel) have ordinary gradients: step them with the
        # configured embedding optimizer, unclipped like the fused tables
        table_params = {n: dense_params.pop(n) for n in list(dense_params) if n.startswith("embeddings.")}
        parts: list[tuple[str, Any]] = [("sparse", self.model.fused_optimizer)]
        self._lazy: list[Any] = []  # optimizers whose state appears on their first step
        if table_params:
            opt_cls, opt_kwargs = sparse_optimizer(self.cfg.embeddings)
            tables = KeyedOptimizerWrapper(table_params, lambda params: opt_cls(params, **opt_kwargs))
            parts.append(("tables", tables))
            self._lazy.append(tables)
        # the repeat path's parameters in a group of their own at lr × optim.repeat_lr_scale
        fast = {id(p) for n, p in dense_params.items() if _is_repeat_param(n)} if o.repeat_lr_scale != 1.0 else set()

        def adamw(params: Any) -> torch.optim.AdamW:
            params = list(params)
            groups = [{"params": [p for p in params if id(p) not in fast]}]
            if fast:
                groups.append({"params": [p for p in params if id(p) in fast], "lr": o.lr * o.repeat_lr_scale})
            return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)

        self._dense_inner = KeyedOptimizerWrapper(dense_params, adamw)
        self._lazy.append(self._dense_inner)
        dense: Any = self._dense_inner
        if o.grad_clip is not None:
            dense = GradientClippingOptimizer(dense, GradientClipping.NORM, max_gradient=o.grad_clip)
        return CombinedOptimizer(parts + [("dense", dense)])

    def plan_text(self) -> str:
        return format_plan(self.plan)

    def global_batch_size(self) -> int:
        return self.cfg.data.batch_size * self.env.world_size

    def _train_loader(self, epoch: int) -> Any:
        return make_dataloader(self.cfg.data, self.env.rank, self.env.world_size, epoch,
                               "train", shard=self.shard)

    # ------------------------------------------------------------------ checkpoint
    def save(self) -> Path:
        state = {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "vocab_sizes": self.vocab_sizes,
            "data_path": str(self.cfg.data.path),
            # the vocabularies themselves, so an evaluation can check its dataset's IDs even
            # after the training data has moved
            "vocab_fingerprints": self._vocab_fingerprints(),
            "config": to_dict(self.cfg),
            "history": self.history,
            "loss_log": self.loss_log,
        }
        if self.env.is_main:
            write_curves(Path(self.cfg.run.dir) / "curves.png", self.loss_log, self.history,
                         title=f"{describe_model(state['config']['model'])}: {self.cfg.run.dir}, step {self.step}")
        return save_checkpoint(self.cfg.run.dir, self.step, self.model, self.optimizer, state,
                               _rng_state(), keep_last=self.cfg.train.keep_last)

    def _vocab_fingerprints(self) -> Dict[str, str]:
        if not hasattr(self, "_fingerprints"):
            self._fingerprints = {t: vocab_fingerprint(self.cfg.data.path, t) for t in FEATURES}
        return self._fingerprints

    def maybe_resume(self, path: Optional[Path] = None) -> bool:
        """Load ``path`` (or the run's latest checkpoint); returns whether one was loaded."""
        path = path or (latest_checkpoint(self.cfg.run.dir) if self.cfg.train.resume else None)
        if path is None:
            return False
        saved = read_train_state(path)
        if "config" in saved:  # a model config that differs would load weights into other layers
            changes = model_changes(saved, self.cfg)
            if changes:
                raise ConfigError(f"{path}: this job's model differs from the checkpoint's in "
                                  f"{'; '.join(changes)}; resume with the checkpoint's values or start a new "
                                  "run.dir")
        # the dataset must be the one the checkpoint was trained on: same table sizes and the same
        # raw ID -> row vocabularies (the check evaluation and export run too)
        check_vocab(saved, self.cfg.data.path, path)
        # AdamW (and a plain optimizer over data_parallel tables) creates its state lazily on the
        # first step; DCP loads in place, so materialise the state first (a dummy zero-gradient
        # step; the parameters it touches are overwritten by the load right after).
        for opt in self._lazy:
            opt.init_state()
            opt.zero_grad(set_to_none=True)
        state, rank_state = load_checkpoint(path, self.model, self.optimizer)
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        self.loss_log = [list(x) for x in state.get("loss_log", [])]
        if int(state["world_size"]) == self.env.world_size and rank_state is not None:
            self.batch_in_epoch = int(state["batch_in_epoch"])
            _set_rng_state(rank_state)
        else:
            # A different world size changes which users each rank reads: restart the epoch's
            # data at the same fraction of the epoch, and reseed dropout deterministically.
            old = int(state["world_size"])
            self.batch_in_epoch = int(state["batch_in_epoch"]) * old // self.env.world_size
            torch.manual_seed(self.cfg.run.seed * 1_000_003 + self.step * 101 + self.env.rank)
        if self.env.is_main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step,
                     self.epoch, self.batch_in_epoch)
        return True

    def full_state_dict(self) -> Dict[str, torch.Tensor]:
        """The whole model state (sharded tables gathered) on rank 0; empty on other ranks.

        Collective: every rank must call it. Keys are those of the unsharded
        :class:`~hytrec_torchrec.model.HyTRecModel` (DMP/DDP prefixes removed).
        """
        out: Dict[str, torch.Tensor] = {}
        for key, value in self.model.state_dict().items():
            tensor = _whole_tensor(value, self.env.device)
            if self.env.is_main:
                out[key.replace("module.", "")] = tensor
        return out

    def _unwrapped(self) -> HyTRecModel:
        """The HyTRecModel inside DMP (and DDP), sharing the sharded modules."""
        m: Any = self.model.module
        return m.module if isinstance(m, torch.nn.parallel.DistributedDataParallel) else m

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, max_batches: Optional[int] = None) -> Dict[str, float]:
        """HR@10 and NDCG@10 (plus MRR) on the validation split, full catalog, all ranks."""
        self.model.eval()
        loader = make_dataloader(self.cfg.data, self.env.rank, self.env.world_size, 0, "valid",
                                 shard=self.shard)
        n = len(loader) if max_batches is None else min(len(loader), max_batches)
        blocks = item_blocks(self.model)
        ranks = []
        it = iter(loader)
        for _ in range(n):
            batch = next(it).to(self.env.device)
            r = batch_target_ranks(self._unwrapped(), batch, blocks, self.vocab_sizes["item"])
            ranks.append(r[batch.valid])
        self.model.train()
        local = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64)
        allr, _ = all_gather_rows(local)
        catalog = self.vocab_sizes["item"] - 2
        met = ranking_metrics(allr, ks=(10,), catalog_size=catalog)
        return {"hr@10": met["hr@10"], "ndcg@10": met["ndcg@10"], "mrr": met["mrr"],
                "examples": float(allr.numel())}

    # ------------------------------------------------------------------ training
    def _batches(self, positions: "collections.deque[tuple[int, int]]") -> Iterator[Batch]:
        """Training batches from the resume position on, across epochs, forever.

        The train pipeline reads a few batches ahead, so the position of each yielded batch is
        queued in ``positions`` and popped when its step completes: the saved loader position is
        always that of the last *trained* batch.
        """
        epoch, skip = self.epoch, self.batch_in_epoch
        while True:
            loader = self._train_loader(epoch)
            for i, batch in enumerate(loader):
                if i < skip:
                    continue
                positions.append((epoch, i))
                yield batch
            epoch, skip = epoch + 1, 0

    def _total_steps(self) -> int:
        t = self.cfg.train
        if t.max_steps is not None and t.epochs is None:
            return t.max_steps
        per_epoch = len(self._train_loader(0))
        total = per_epoch * int(t.epochs or 1)
        return min(total, t.max_steps) if t.max_steps is not None else total

    def _scale_loss(self, model: torch.nn.Module) -> Any:
        """Forward returning the loss scaled to (local sum) / (global batch size)."""
        world = self.env.world_size

        def fwd(batch: Batch) -> Any:
            loss, out = model(batch)
            return loss / world, out

        return fwd

    def _next_boundary(self, total: int) -> int:
        """The next step at which training pauses (validation, checkpoint, a time check under
        ``train.max_minutes``, or the end)."""
        t = self.cfg.train
        cands = [total]
        time_every = TIME_CHECK_EVERY if t.max_minutes is not None else 0
        for every in (t.validate_every, t.checkpoint_every, time_every):
            if every:
                cands.append((self.step // every + 1) * every)
        return min(cands)

    def _out_of_time(self, started: float) -> bool:
        """Whether ``train.max_minutes`` have passed since ``started`` (``time.perf_counter()``)
        on any rank: every rank calls this at the same steps and gets the same answer."""
        budget = self.cfg.train.max_minutes
        if budget is None:
            return False
        late = torch.tensor([float(time.perf_counter() - started >= 60.0 * budget)],
                            device=self.env.device)
        if self.env.world_size > 1:
            dist.all_reduce(late, op=dist.ReduceOp.MAX)
        return bool(late.item() > 0)

    def lr_multiplier(self, step: int) -> float:
        """``optim.schedule``'s multiplier for optimizer step ``step`` (1-based) of this job."""
        return lr_multiplier(step, self._total, self.cfg.optim.schedule)

    def _set_lrs(self, step: int) -> None:
        """Set every param group's lr for optimizer step ``step``. The fused sparse optimizer
        hands its lr to the fbgemm kernel in ``zero_grad()``, which both the pipeline and the
        plain loop call before the backward that applies the sparse update."""
        f = self.lr_multiplier(step)
        for g, base in zip(self.optimizer.param_groups, self._base_lrs):
            g["lr"] = base * f

    def _segment(self, batches: Iterator[Batch]) -> Iterator[Dict[str, torch.Tensor]]:
        """Train on every batch of ``batches``, yielding each step's outputs.

        With ``train.pipeline=sparse_dist`` a fresh ``TrainPipelineSparseDist`` runs the segment
        and is drained and detached at its end, so no input all-to-all is in flight while
        validation or checkpointing issue their own collectives.
        """
        fwd = self._scale_loss(self.model)
        if self.cfg.train.pipeline == "sparse_dist":
            from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

            pipeline = TrainPipelineSparseDist(self.model, self.optimizer, self.env.device,
                                               execute_all_batches=True, custom_model_fwd=fwd)
            try:
                while True:
                    self._set_lrs(self.step + 1)  # fit() advances self.step after each yield
                    try:
                        out = pipeline.progress(batches)
                    except StopIteration:
                        break
                    yield out
            finally:
                pipeline.detach()
            return
        for batch in batches:
            batch = batch.to(self.env.device)
            self._set_lrs(self.step + 1)
            self.optimizer.zero_grad()
            loss, out = fwd(batch)
            loss.backward()
            self.optimizer.step()
            yield out

    def _claim(self) -> None:
        """Claim run.dir (the lock, kept open for the job's life against a second trainer) and
        resume from its latest checkpoint; a failure on the way leaves run.dir as it was."""
        cfg = self.cfg
        undo = note_before_claim(cfg.run.dir)
        self._run_lock = None
        try:
            self._run_lock = claim_run_dir(cfg.run.dir, cfg.train.resume, cfg.run.overwrite, self.env.is_main)
            self.maybe_resume()
        except BaseException:
            if self.env.is_main:
                undo_claim(self._run_lock, undo)
            self._run_lock = None
            raise

    def fit(self) -> Dict[str, Any]:
        """Train until ``train.max_steps``/``train.epochs``; returns the final summary."""
        cfg = self.cfg
        env = self.env
        total = self._total_steps()
        cfg.optim.schedule.check_total(total)  # before the claim, which may clear an earlier run
        self._claim()
        self._total = total
        finished = self.step >= total
        if finished and env.is_main:
            log.info("%s is already at step %d of %d: nothing to train (raise train.max_steps to continue, "
                     "or start again with train.resume=false --overwrite)", cfg.run.dir, self.step, total)
        if env.is_main:
            Path(cfg.run.dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.run.dir) / "sharding_plan.txt").write_text(self.plan_text() + "\n")
            log.info("sharding plan:\n%s", self.plan_text())
            if cfg.run.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(cfg.run.dir) / "tb"))
        bar = None
        # a bar only on a terminal: under torchx/torchrun the output is piped and prefixed per rank,
        # which breaks a redrawn bar into fragments, so log lines every run.log_every steps instead
        if env.is_main and cfg.run.progress and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc="train", dynamic_ncols=True,
                       mininterval=1.0)
        positions: collections.deque[tuple[int, int]] = collections.deque()
        batches = self._batches(positions)
        self.model.train()
        t_last = started = time.perf_counter()
        tokens = 0
        last_val: Dict[str, float] = {}
        out_of_time = False
        while self.step < total and not out_of_time:
            boundary = self._next_boundary(total)
            for out in self._segment(itertools.islice(batches, boundary - self.step)):
                self.step += 1
                epoch, index = positions.popleft()
                self.epoch, self.batch_in_epoch = epoch, index + 1
                loss_v = float(out["loss"])
                self.step_losses.append(loss_v)
                if not math.isfinite(loss_v):
                    raise NonFiniteLossError(
                        f"rank {env.rank}: loss is {loss_v} at step {self.step} (epoch "
                        f"{self.epoch}, batch {self.batch_in_epoch - 1} of the epoch); stopped "
                        f"without saving — the last good checkpoint in {cfg.run.dir}/checkpoints "
                        "is intact"
                    )
                tokens += int(out["tokens"])
                if self.step % cfg.run.log_every == 0 or self.step == boundary:
                    since = self.step - (int(self.loss_log[-1][0]) if self.loss_log else 0)
                    window = self.step_losses[-max(min(since, len(self.step_losses)), 1):]
                    self.loss_log.append([self.step, sum(window) / len(window)])
                    now = time.perf_counter()
                    tps = tokens * env.world_size / max(now - t_last, 1e-9)
                    t_last, tokens = now, 0
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss_v:.4f}", tok_s=f"{tps:,.0f}")
                    elif env.is_main:  # no bar (run.progress: false, e.g. batch jobs): a log line
                        log.info("step %d/%d loss %.4f %.0f tok/s lr x%.3g", self.step, total,
                                 loss_v, tps, self.lr_multiplier(self.step))
                    if self._tb is not None:
                        self._tb.add_scalar("train/lr_multiplier", self.lr_multiplier(self.step),
                                            self.step)
                        self._tb.add_scalar("train/loss", loss_v, self.step)
                        self._tb.add_scalar("train/tokens_per_s", tps, self.step)
                if bar is not None:
                    bar.update(1)
            out_of_time = self._out_of_time(started)
            end = self.step >= total or out_of_time
            if out_of_time and env.is_main:
                log.info("train.max_minutes=%g reached at step %d of %d: stopping with a checkpoint",
                         cfg.train.max_minutes, self.step, total)
            due = bool(cfg.train.validate_every) and self.step % cfg.train.validate_every == 0
            if (due or end) and not cfg.data.train_on_valid:  # train_on_valid: nothing held out
                last_val = self.validate(cfg.train.val_batches)
                self.history.append({"step": self.step, **last_val})
                if env.is_main:
                    msg = " ".join(f"{k}={v:.4f}" for k, v in last_val.items() if k != "examples")
                    (bar.write if bar is not None else print)(f"[step {self.step}] valid {msg}")
                    if self._tb is not None:
                        for k, v in last_val.items():
                            self._tb.add_scalar(f"valid/{k}", v, self.step)
                t_last = time.perf_counter()
            if (cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0) or end:
                self.save()
                t_last = time.perf_counter()
        if bar is not None:
            bar.close()
        if self._tb is not None:
            self._tb.close()
        done = Path(cfg.run.dir) / "summary.json"
        if finished and done.exists():  # a rerun of a finished job trains nothing: its summary stays
            return json.loads(done.read_text())
        if finished and self.history:  # a rerun of a finished job: its last validation, not an empty one
            last_val = {k: v for k, v in self.history[-1].items() if k != "step"}
        summary = {"step": self.step, "epoch": self.epoch, "valid": last_val,
                   "world_size": env.world_size,
                   "wall_seconds": round(time.perf_counter() - started, 1),
                   "stopped_by": "max_minutes" if out_of_time else "steps"}
        if env.is_main:
            done.write_text(json.dumps(summary, indent=2))
        return summary


def train(cfg: JobConfig) -> Dict[str, Any]:
    """Run one training job (every rank calls this)."""
    return Trainer(cfg).fit()
