"""The offline evaluation job: a checkpoint, a prepared dataset, a split → metrics per segment.

Every rank runs :func:`evaluate_checkpoint` (one process is a world of 1):

1. the job config and vocabulary sizes come from the checkpoint (``train_state.json``); the
   dataset must have the same table sizes and ID vocabularies (the shared check,
   :func:`~hytrec_torchrec.runtime.data_check.check_vocab`) — otherwise a
   :class:`VocabMismatchError` names both;
2. the evaluation split's loader is built; a split with no eligible user raises
   :class:`NoEligibleUsersError` with the eligibility counts;
3. the model is sharded for the *current* world size and the checkpoint loaded into it (DCP
   reshards whatever world size wrote it);
4. each batch's user embeddings are ranked against the full catalog, each rank scoring only its
   own rows of the row-wise sharded item table (:func:`~hytrec_torchrec.ranking.scoring.batch_target_ranks`);
5. per-example metrics are summed per segment in a ``torchmetrics.Metric`` and synced across ranks;
6. on a seeded sample of the evaluated examples, rank 0 computes the long-history diagnostics
   (:mod:`~hytrec_torchrec.evaluation.diagnostics`) on the unsharded model and broadcasts them.

The numbers do not depend on the world size (each user is one example, seen exactly once; ranks
are exact integers), which is tested (1 rank == 2 ranks).

Configuration: :class:`EvalConfig` (YAML ``--config`` and ``key=value`` overrides). Overrides whose
first key is a training-config section (``data.``, ``model.``, ``train.``, ...) change the
checkpoint's job config instead, e.g. ``data.max_len=200`` or ``data.batch_size=256``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from hytrec_torchrec.cli import first_line
from hytrec_torchrec.config import (
    ConfigError,
    apply_overrides,
    check_choice,
    check_range,
    from_dict,
    load_config,
    to_dict,
)
from hytrec_torchrec.data.config import DataConfig
from hytrec_torchrec.data.loader import load_shard, make_dataloader
from hytrec_torchrec.card import ModelCardError, check_model_card, check_vocab_file
from hytrec_torchrec.evaluation.diagnostics import (
    DiagnosticsConfig,
    ExampleSampler,
    checkpoint_access,
    collect_diagnostics,
    exported_access,
)
from hytrec_torchrec.evaluation.calibration import GateCalibration
from hytrec_torchrec.evaluation.segments import SegmentConfig, Segmenter
from hytrec_torchrec.ranking.metrics import DEFAULT_KS, SegmentedRankingMetric, metric_names
from hytrec_torchrec.evaluation.cascade import UlimStats
from hytrec_torchrec.ranking.ranks import ranked_catalog_sizes, ranks_from_scores, target_ranks
from hytrec_torchrec.ranking.ulim import category_ranks, most_frequent_category_ranks, ulim_ranks_distributed
from hytrec_torchrec.ranking.scoring import batch_ranks_and_gate, first_targets, history_items, item_blocks, unwrap
from hytrec_torchrec.runtime.config import describe_model
from hytrec_torchrec.runtime.data_check import VocabMismatchError, check_tables, check_vocab, pairs_fingerprint
from hytrec_torchrec.runtime.distributed import DistEnv, init_distributed
from hytrec_torchrec.runtime.restore import checkpoint_config, load_sharded

__all__ = [
    "EvalConfig",
    "ExportedModelError",
    "NoEligibleUsersError",
    "VocabMismatchError",
    "check_vocab",
    "check_exported_vocab",
    "evaluate_checkpoint",
    "evaluate_exported",
    "load_eval_config",
    "model_name",
]

log = logging.getLogger("hytrec.eval")

#: seconds between the progress lines of an evaluation (rank 0, logger ``hytrec.eval``)
PROGRESS_EVERY_S = 10.0

#: first keys of overrides that go to the checkpoint's job config (JobConfig sections).
JOB_SECTIONS = ("run", "data", "embeddings", "model", "optim", "train")


class ExportedModelError(RuntimeError):
    """An exported ``model.pt`` that torch cannot open (truncated, or not a hytrec-export file)."""


class NoEligibleUsersError(ValueError):
    """The evaluation split has no eligible user (message gives the counts)."""


@dataclass
class EvalConfig:
    """Offline evaluation settings.

    Attributes:
        split: stage to evaluate: ``test`` (leave-last-out: the last event) or ``valid``.
        ks: K of HR@K and NDCG@K.
        batch_size: evaluation batch size per rank (``None``: the checkpoint's ``data.batch_size``).
        max_batches: evaluate at most this many batches per rank (``None``: the whole split).
        remove_history: leave the items of each user's (truncated, ``data.max_len``) history out
            of the ranking. Default false: the published HSTU/SASRec protocol keeps them.
        allow_unchecked_vocab: evaluate a checkpoint whose ID vocabulary cannot be checked (no
            stored fingerprint, training data gone); metrics.json and report.md then say so.
        threads: intra-op CPU threads per process (``torch.set_num_threads``; ``None``: torch's
            default, or ``OMP_NUM_THREADS``). Set 1 when evaluating beside a training job on the
            same cores: oversubscribed OpenMP threads spin-wait (measured in docs/evaluation.md,
            "Threads").
        segments: segment thresholds and the optional side file (:class:`SegmentConfig`).
        plot_metrics: metrics drawn against the history-length bucket in the PNG plot.
        table_metrics: metrics of the per-segment Markdown table.
        diagnostics: long-history diagnostics on a sample of the evaluated users
            (:class:`~hytrec_torchrec.evaluation.diagnostics.DiagnosticsConfig`; ``users: 0`` disables).
    """

    split: str = "test"
    ks: List[int] = field(default_factory=lambda: list(DEFAULT_KS))
    batch_size: Optional[int] = None
    max_batches: Optional[int] = None
    remove_history: bool = False
    allow_unchecked_vocab: bool = False
    threads: Optional[int] = None
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    plot_metrics: List[str] = field(default_factory=lambda: ["hr@10", "ndcg@10"])
    table_metrics: List[str] = field(default_factory=lambda: ["hr@10", "ndcg@10", "hr@200", "mrr", "auc"])
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)

    def validate(self) -> None:
        check_choice("split", self.split, ("test", "valid"))
        if not self.ks:
            raise ConfigError("ks: at least one K is required")
        for i, k in enumerate(self.ks):
            check_range(f"ks[{i}]", k, 1)
        if self.batch_size is not None:
            check_range("batch_size", self.batch_size, 1)
        if self.max_batches is not None:
            check_range("max_batches", self.max_batches, 1)
        if self.threads is not None:
            check_range("threads", self.threads, 1)
        known = set(metric_names(self.ks))
        for key in ("plot_metrics", "table_metrics"):
            for i, m in enumerate(getattr(self, key)):
                if m not in known:
                    raise ConfigError(f"{key}[{i}]: {m!r} is not a computed metric ({sorted(known)})")


def load_eval_config(path: Optional[str], overrides: Sequence[str]) -> Tuple[EvalConfig, List[str]]:
    """``(EvalConfig, job-config overrides)`` from YAML plus ``key=value`` overrides.

    Overrides starting with a training-config section (``data.``, ``model.``, ...) are returned
    separately for the checkpoint's job config; the rest configure the evaluation.
    """
    job, own = [], []
    for o in overrides:
        (job if o.split("=", 1)[0].split(".", 1)[0] in JOB_SECTIONS else own).append(o)
    return load_config(EvalConfig, path, own), job


#: folder names that say nothing about the model (``runs/demo/train``, ``.../export``)
GENERIC_NAMES = frozenset({"train", "run", "runs", "checkpoints", "model", "models", "export", "eval", "out"})


def model_name(path: str | Path) -> str:
    """A short display name: the run directory name (``runs/ml1m/hytrec`` → ``hytrec``), with
    ``/step_N`` when a specific checkpoint is given; a generic folder name (``runs/demo/train``,
    ``runs/demo/export/model.pt``) becomes the architecture and the folder above it
    (``HyTRec TTTS (demo)``)."""
    p = Path(path).resolve()
    if p.is_file():  # an exported model.pt: its folder, and the card beside it
        card = p.parent / "model_card.json"
        folder = p.parent
        try:
            model = json.loads(card.read_text())["config"]["model"]
        except (OSError, ValueError, KeyError):
            return folder.name
        return f"{describe_model(model)} ({folder.parent.name}, exported)" if folder.name in GENERIC_NAMES \
            else folder.name
    step = ""
    if (p / "train_state.json").is_file() and p.parent.name == "checkpoints":
        p, step = p.parent.parent, f"/{p.name}"
    if p.name not in GENERIC_NAMES:
        return p.name + step
    try:
        cfg, _ = checkpoint_config(p)
        return f"{describe_model(to_dict(cfg.model))} ({p.parent.name}{step})"
    except Exception:  # noqa: BLE001 - a name is not worth failing for; the checks come later
        return p.name + step


def _sum_ints(values: List[int], device: torch.device) -> List[int]:
    if not (dist.is_initialized() and dist.get_world_size() > 1) or not values:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def _open_split(data_cfg: DataConfig, ecfg: EvalConfig, env: DistEnv, data_path: str | Path
                ) -> Tuple[Any, Dict[str, int]]:
    """This rank's loader of the evaluated split and the split's counts (summed over ranks).

    Raises:
        NoEligibleUsersError: when no user of the split has an eligible example.
        ConfigError: ``split: valid`` for a model trained with ``data.train_on_valid`` (its
            validation events were training targets).
    """
    if ecfg.split == "valid" and data_cfg.train_on_valid:
        raise ConfigError(
            "split: 'valid' is not held out for this model: it was trained with "
            "data.train_on_valid=true (every validation event was a training target); evaluate "
            "split=test, or override data.train_on_valid=false to score the validation events anyway")

    shard = load_shard(data_cfg, env.rank, env.world_size)
    loader = make_dataloader(data_cfg, env.rank, env.world_size, 0, ecfg.split, shard=shard)
    counts = loader.dataset.count_summary()
    if counts["users_eligible_total"] == 0:
        raise NoEligibleUsersError(
            f"{data_path}: split {data_cfg.split!r} stage {ecfg.split!r} has no eligible users "
            f"({counts['users_total']} users, {counts['users_ineligible_total']} ineligible with "
            f"data.min_history={data_cfg.min_history}; see docs/data_loader.md 'eligible')")
    return loader, counts


def _gather_examples(parts: Dict[str, List[torch.Tensor]]) -> Dict[str, np.ndarray]:
    """This rank's per-example columns concatenated, then gathered from every rank (collective
    under a process group): ``{column: [n_total] int64}``."""
    local = {c: (torch.cat(v) if v else torch.zeros(0, dtype=torch.int64)).to(torch.int64).numpy()
             for c, v in parts.items()}
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return local
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return {c: np.concatenate([g[c] for g in gathered]) for c in local}


def _accumulate(loader: Any, ecfg: EvalConfig, segmenter: Segmenter, metric: SegmentedRankingMetric,
                ranks_of: Callable[[Any], Any], sampler: Optional[ExampleSampler] = None,
                gate: Optional[GateCalibration] = None
                ) -> Tuple[Dict[str, Any], float, Dict[str, np.ndarray]]:
    """Feed ``ranks_of(batch)`` ([B] CPU ranks) of the valid examples of up to
    ``ecfg.max_batches`` batches into ``metric``; returns (synced results, seconds, every
    rank's evaluated examples ``{"user", "cutoff", "rank", "catalog": [n] int64}`` for
    :mod:`~hytrec_torchrec.evaluation.paired`). ``sampler`` is offered every evaluated example
    with its segment membership (diagnostics sample). ``ranks_of`` may return ``(ranks, gate
    probability [B], target in history [B])`` instead (:func:`batch_ranks_and_gate`); ``gate``
    then accumulates the gate's calibration."""
    n_batches = len(loader) if ecfg.max_batches is None else min(len(loader), ecfg.max_batches)
    t1 = time.perf_counter()
    it = iter(loader)
    parts: Dict[str, List[torch.Tensor]] = {c: [] for c in ("user", "cutoff", "rank", "catalog")}
    main = not dist.is_initialized() or dist.get_rank() == 0
    t_log, done = t1, 0
    for i in range(n_batches):
        now = time.perf_counter()
        if main and i and now - t_log >= PROGRESS_EVERY_S:  # rank 0: a line every PROGRESS_EVERY_S
            rate = done / (now - t1)
            log.info("batch %d/%d, %d examples, %.0f examples/s, about %.0f s left", i, n_batches, done, rate,
                     (n_batches - i) * (now - t1) / i)
            t_log = now
        batch = next(it)
        got = ranks_of(batch)
        ranks, prob, label = got if isinstance(got, tuple) else (got, None, None)
        keep = batch.valid.cpu()
        catalog = None
        if ecfg.remove_history:  # AUC: each example is ranked among fewer items
            values, lengths = history_items(batch)
            catalog = ranked_catalog_sizes(values.cpu(), lengths.cpu(), first_targets(batch).cpu(),
                                           metric.catalog_size + 2)[keep]
        member = segmenter.membership(batch)
        metric.update(ranks[keep], member[keep], catalog)
        if gate is not None and prob is not None and label is not None:
            gate.update(prob.cpu()[keep], label.cpu()[keep], member[keep])
        if sampler is not None:
            sampler.add(batch, member, keep)
        done += int(keep.sum())
        parts["user"].append(batch.user.cpu()[keep])
        parts["cutoff"].append(batch.cutoff.cpu()[keep])
        parts["rank"].append(ranks[keep])
        parts["catalog"].append(catalog if catalog is not None
                                else torch.full((int(keep.sum()),), metric.catalog_size, dtype=torch.int64))
    return metric.compute(), time.perf_counter() - t1, _gather_examples(parts)


def _result(results: Dict[str, Any], counts: Dict[str, int], catalog: int, segmenter: Segmenter,
            env: DistEnv, t_load: float, t_eval: float, vocab_check: Dict[str, Any],
            example_ranks: Dict[str, np.ndarray], diagnostics: Dict[str, Any], **head: Any) -> Dict[str, Any]:
    """The result layout shared by checkpoints and exported models (``head`` goes first:
    name, checkpoint, step, model); collective when a side file is used. ``diagnostics``: the
    result of :func:`~hytrec_torchrec.evaluation.diagnostics.collect_diagnostics`. ``example_ranks``
    (every evaluated example's user, cutoff, rank and catalog size, all ranks' together) is kept
    under that key for ``ranks.parquet``; ``metrics.json`` leaves it out."""
    side = dict(segmenter.side_counts)
    if side:
        cols = list(segmenter.missing_counts())
        missing = _sum_ints([segmenter.missing_counts()[c] for c in cols], env.device)
        side["users_missing"] = dict(zip(cols, missing))
    overall = results.pop("all")
    examples = int(overall["examples"])
    return {
        **head,
        "overall": overall,
        "segments": results,
        "counts": {
            "users_total": counts["users_total"],
            "users_eligible": counts["users_eligible_total"],
            "users_ineligible": counts["users_ineligible_total"],
            "examples_evaluated": examples,
            "examples_skipped_by_max_batches": counts["examples_total"] - examples,
            "catalog_size": catalog,
        },
        "vocab_check": vocab_check,
        "side_file": side,
        "timing": {"world_size": env.world_size, "threads": torch.get_num_threads(), "load_s": round(t_load, 3), "eval_s": round(t_eval, 3),
                   "examples_per_s": round(examples / t_eval, 1) if t_eval > 0 else math.nan},
        "diagnostics": diagnostics,
        "example_ranks": example_ranks,
    }


@torch.no_grad()
def evaluate_checkpoint(
    checkpoint: str | Path,
    data_path: str | Path,
    ecfg: EvalConfig,
    env: Optional[DistEnv] = None,
    job_overrides: Sequence[str] = (),
    name: Optional[str] = None,
) -> Dict[str, Any]:
    """Evaluate one checkpoint on ``data_path``; collective (every rank calls it).

    Returns (identical on every rank)::

        {"name", "checkpoint", "step", "model": {...}, "overall": {metric: value, "examples": n},
         "segments": {segment: {...}}, "counts": {...}, "side_file": {...}, "timing": {...},
         "diagnostics": {...}, "example_ranks": {"user", "cutoff", "rank", "catalog": [n] int64 arrays}}

    The diagnostics run on rank 0 on the checkpoint loaded once more, unsharded (every table
    gathered by DCP; the tower on this rank's device).
    """
    t0 = time.perf_counter()
    cfg, state = checkpoint_config(checkpoint, job_overrides)
    vocab_check = check_vocab(state, data_path, state["path"], ecfg.allow_unchecked_vocab)
    env = env or init_distributed(cfg.train.backend, cfg.train.device)
    data_cfg = replace(cfg.data, path=str(data_path))
    if ecfg.batch_size is not None:
        data_cfg = replace(data_cfg, batch_size=ecfg.batch_size)
    loader, counts = _open_split(data_cfg, ecfg, env, data_path)
    segmenter = Segmenter(ecfg.segments, data_path)
    model, _plan, cfg, state = load_sharded(state["path"], env, job_overrides)
    tower = unwrap(model)
    blocks = item_blocks(model)
    num_items = int(state["vocab_sizes"]["item"])
    catalog = num_items - 2
    metric = SegmentedRankingMetric(ecfg.ks, catalog, segmenter.names)
    t_load = time.perf_counter() - t0

    def ranks_of(batch: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        on_device = batch.to(env.device)
        ranks, prob, label = batch_ranks_and_gate(tower, on_device, blocks, num_items, ecfg.remove_history)
        return ranks.cpu(), prob, label

    ulim: Optional[UlimStats] = None
    if cfg.model.kind == "ulim":  # ULIM: p(category) × p(item | category), the cascade, next-category HR
        ulim = UlimStats(ecfg.ks, cfg.model.ulim.top_categories, catalog)
        ranks_of = functools.partial(_ulim_ranks, tower, blocks, ecfg.remove_history, ulim, env.device,
                                     cfg.model.temperature)

    sampler = ExampleSampler(ecfg.diagnostics, segmenter.names) if ecfg.diagnostics.users > 0 else None
    gate = GateCalibration(segmenter.names) if cfg.model.repeat and cfg.model.repeat_gate else None
    results, t_eval, examples = _accumulate(loader, ecfg, segmenter, metric, ranks_of, sampler, gate)
    diagnostics = collect_diagnostics(sampler, ecfg.diagnostics,
                                      lambda: checkpoint_access(state["path"], job_overrides, env.device,
                                                                ecfg.diagnostics.max_table_gb))
    m = cfg.model
    if ulim is not None:  # overall.next_category and overall.cascade (docs/evaluation.md, "ULIM")
        results["all"] = {**results["all"], **ulim.compute()}
    return _result(
        results, counts, catalog, segmenter, env, t_load, t_eval,
        name=name or model_name(checkpoint),
        checkpoint=str(state["path"]),
        step=int(state.get("step", -1)),
        model={"long_pattern": m.long_pattern, "short_len": m.short_len, "short_layers": m.short_layers,
               "embedding_dim": m.embedding_dim, "features": list(m.features),
               "max_len": data_cfg.max_len, "history_removed": ecfg.remove_history},
        vocab_check=vocab_check,
        example_ranks=examples,
        diagnostics=diagnostics,
        **({"repeat_gate": gate.compute()} if gate is not None else {}),
    )


def _ulim_ranks(model: Any, blocks: List[Any], remove_history: bool, stats: UlimStats, device: torch.device,
                temperature: float, batch: Any) -> torch.Tensor:
    """ULIM's full-catalog ranks of a batch's first targets (CPU ``[B]``), and its next-category
    and cascade numbers into ``stats``. Collective when distributed."""
    b = batch.to(device)
    user, logp, e, _ = model.ulim_outputs(b)
    targets = first_targets(b).to(torch.int64)
    bonus = model.repeat_bonus(b, user) if getattr(model, "repeat", None) is not None else None
    hist = history_items(b) if remove_history else None
    full, cascade, scored = ulim_ranks_distributed(logp, e, targets, blocks, model.item_category, temperature,
                                                   model.ulim_top_categories, bonus=bonus, history=hist)
    tcat = model.item_category[targets]
    cats = b.features["history_category"]
    mf = most_frequent_category_ranks(cats.values(), cats.lengths(), tcat, logp.shape[1])
    stats.update(b.valid, category_ranks(logp, tcat), mf, full, cascade, scored)
    return full.cpu()


# ---------------------------------------------------------------------- exported models
def _exported_vocab(model_dir: Path, table: str) -> Dict[str, Any]:
    """``vocab/<table>.json`` of an export, checked (:func:`~hytrec_torchrec.card.check_vocab_file`).

    Raises:
        FileNotFoundError: it is missing.
        ExportedModelError: it is not JSON, or a field has the wrong type or is out of range.
    """
    path = model_dir / "vocab" / f"{table}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: vocabulary of the exported model not found (hytrec-export writes it)")
    try:
        doc = json.loads(path.read_text())
        check_vocab_file(doc, table)
    except ValueError as exc:  # JSONDecodeError and ModelCardError
        raise ExportedModelError(f"{path}: {first_line(exc)}") from None
    return doc


def check_exported_vocab(model_file: str | Path, card: Dict[str, Any], data_path: str | Path) -> Dict[str, str]:
    """Raise :class:`VocabMismatchError` unless the exported model's vocabularies are the dataset's.

    Every table the model takes must have the same rows and the same raw ID → index pairs: the
    shared check (:func:`~hytrec_torchrec.runtime.data_check.check_tables`) with the fingerprints of
    the export's ``vocab/<table>.json``.

    Returns:
        ``{table: id_space}`` of the tables the model takes.
    """
    model_dir = Path(model_file).parent
    spaces: Dict[str, str] = {}
    sizes: Dict[str, Optional[int]] = {}
    fingerprints: Dict[str, str] = {}
    for table, spec in card["input_contract"]["values"].items():
        if table == "timestamp" or not spec.get("required"):
            continue
        ev = _exported_vocab(model_dir, table)
        sizes[table] = int(ev["table_rows"])
        fingerprints[table] = pairs_fingerprint(ev["raw"], ev["index"])
        spaces[table] = spec["id_space"]
    check_tables(f"exported model {model_file}", sizes, fingerprints, data_path,
                 source=f"of {model_dir / 'vocab'}/<table>.json")
    return spaces


@torch.no_grad()
def evaluate_exported(
    model_file: str | Path,
    data_path: str | Path,
    ecfg: EvalConfig,
    env: Optional[DistEnv] = None,
    job_overrides: Sequence[str] = (),
    name: Optional[str] = None,
) -> Dict[str, Any]:
    """Evaluate an exported TorchScript model (``hytrec-export``'s ``model.pt``) on ``data_path``.

    Every rank loads the whole (unsharded) model and evaluates its own users; the metric states
    are summed across ranks. Requests are built from the prepared batches exactly as a client
    would (raw integer IDs for ``raw_int64`` tables, dense indices for ``index`` tables), and the
    target's rank is computed from ``user_embedding`` and ``item_embeddings`` with the same
    pessimistic-tie rule as for checkpoints. Same result layout as :func:`evaluate_checkpoint`;
    the diagnostics (rank 0) use the exported tables and tower.
    """
    t0 = time.perf_counter()
    path = Path(model_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: exported model not found")
    extra = {"model_card.json": ""}
    try:
        model = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        card = json.loads(extra["model_card.json"])
    except (RuntimeError, ValueError) as exc:  # a zip reader or JSON error: cut short or not an export
        raise ExportedModelError(f"{path}: not a readable hytrec-export model (truncated or another file?): "
                                 f"{first_line(exc)}") from None
    try:
        check_model_card(card)
    except ModelCardError as exc:
        raise ExportedModelError(f"{path}: embedded model_card.json: {exc}") from None
    model.eval()
    spaces = check_exported_vocab(path, card, data_path)
    env = env or init_distributed("auto", "cpu")
    raw = apply_overrides(json.loads(json.dumps(card["config"])), list(job_overrides))
    data_raw = dict(raw.get("data", {}), path=str(data_path))
    if ecfg.batch_size is not None:
        data_raw["batch_size"] = ecfg.batch_size
    try:
        data_cfg = from_dict(DataConfig, data_raw, prefix="data")
    except ConfigError as exc:
        raise ConfigError(f"{path} (model_card.json config): {exc}") from exc
    loader, counts = _open_split(data_cfg, ecfg, env, data_path)
    # dense index -> value the model takes, per table
    to_input: Dict[str, torch.Tensor] = {}
    for table, space in spaces.items():
        rows = int(card["input_contract"]["values"][table]["table_rows"])
        if space == "raw_int64":
            v = pq.read_table(Path(data_path) / "vocab" / f"{table}.parquet", columns=["raw", "index"])
            ids = np.array([int(r) for r in v.column("raw").to_pylist()], dtype=np.int64)
            lut = np.full(rows, (ids.min() - 1) if len(ids) else -1, dtype=np.int64)  # 0/1: not in vocab
            lut[v.column("index").to_numpy()] = ids
            to_input[table] = torch.from_numpy(lut)
        else:
            to_input[table] = torch.arange(rows, dtype=torch.int64)
    segmenter = Segmenter(ecfg.segments, data_path)
    items = model.item_embeddings()
    num_items = int(items.shape[0])
    has_repeat = bool(card["config"].get("model", {}).get("repeat", False))
    is_ulim = card["config"].get("model", {}).get("kind", "hytrec") == "ulim"
    metric = SegmentedRankingMetric(ecfg.ks, num_items - 2, segmenter.names)
    t_load = time.perf_counter() - t0

    def ranks_of(batch: Any) -> torch.Tensor:
        lengths = batch.history_lengths().to(torch.int64)
        values = {t: to_input[t][batch.features[f"history_{t}"].values().to(torch.int64)] for t in spaces}
        values["timestamp"] = batch.timestamps.to(torch.int64)
        request = (values, {k: lengths for k in values}, batch.t_current.to(torch.int64))
        hist = history_items(batch) if ecfg.remove_history else None
        if is_ulim:  # ULIM's full ranking: the exported module's scores of every item
            return ranks_from_scores([(0, model.scores(*request))], first_targets(batch).to(torch.int64),
                                     history=hist)
        user = model.user_embedding(*request)
        bonus = model.repeat_bonus(*request, user) if has_repeat else None
        return target_ranks(user, first_targets(batch), [(0, 0, items)], num_items, history=hist, bonus=bonus)

    sampler = ExampleSampler(ecfg.diagnostics, segmenter.names) if ecfg.diagnostics.users > 0 else None
    results, t_eval, examples = _accumulate(loader, ecfg, segmenter, metric, ranks_of, sampler)
    diagnostics = collect_diagnostics(sampler, ecfg.diagnostics, lambda: exported_access(model, card, to_input))
    mcfg = card["config"].get("model", {})
    return _result(
        results, counts, num_items - 2, segmenter, env, t_load, t_eval,
        name=name or path.parent.name,
        checkpoint=str(path),
        step=int(card.get("checkpoint", {}).get("step", -1)),
        model={"long_pattern": mcfg.get("long_pattern"), "short_len": mcfg.get("short_len"),
               "short_layers": mcfg.get("short_layers", 1),
               "embedding_dim": mcfg.get("embedding_dim"), "features": mcfg.get("features"),
               "max_len": data_cfg.max_len, "history_removed": ecfg.remove_history, "exported": True,
               "table_storage": card.get("tables", {}).get("storage")},
        vocab_check={"sizes_checked": True, "item_vocab_checked": True, "how": "exported vocabulary"},
        example_ranks=examples,
        diagnostics=diagnostics,
    )
