"""Open a training checkpoint outside the training job (evaluation, export).

A checkpoint directory (``RUN_DIR/checkpoints/step_N``) carries its job config and vocabulary
sizes in ``train_state.json``, so nothing else is needed to rebuild the model:

* :func:`load_unsharded` loads it into a plain single-process :class:`HyTRecModel` (DCP
  gathers the sharded tables; no process group is needed) — what export uses;
* :func:`load_sharded` builds the sharded model on the *current* world size and loads the
  checkpoint into it (DCP reshards) — what distributed evaluation uses.

Example::

    model, cfg, state = load_unsharded("runs/demo/train")   # run dir: its latest checkpoint
    user, _ = model.user_embedding(batch)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.distributed.checkpoint as dcp

from hytrec_torchrec.config import ConfigError, apply_overrides, from_dict, to_dict
from hytrec_torchrec.model import HyTRecModel
from hytrec_torchrec.runtime.checkpoint import latest_checkpoint, read_train_state, verify_checkpoint
from hytrec_torchrec.runtime.config import JobConfig, model_changes, stored_config
from hytrec_torchrec.runtime.distributed import DistEnv, init_distributed, shard_model
from hytrec_torchrec.runtime.factory import build_model
from hytrec_torchrec.runtime.safe_load import SafeFileSystemReader, read_index

__all__ = ["resolve_checkpoint", "checkpoint_config", "load_unsharded", "load_sharded"]


def resolve_checkpoint(path: str | Path) -> Path:
    """A complete checkpoint directory from a checkpoint dir or a run dir (its latest).

    Raises:
        FileNotFoundError: naming ``path`` when it is neither.
        DamagedCheckpointError: a checkpoint dir that does not match its manifest, or a run dir
            none of whose checkpoints does (a run dir falls back to its newest intact one).
    """
    p = Path(path)
    if (p / "train_state.json").is_file():
        verify_checkpoint(p)
        return p
    if (p / "checkpoints").is_dir():
        latest = latest_checkpoint(p)
        if latest is not None:
            return latest
        raise FileNotFoundError(f"{p}: run directory without a complete checkpoint")
    raise FileNotFoundError(
        f"{p}: not a checkpoint (no train_state.json) nor a run directory (no checkpoints/)"
    )


def checkpoint_config(path: str | Path, overrides: Sequence[str] = ()) -> Tuple[JobConfig, Dict[str, Any]]:
    """``(job config, train_state)`` of a checkpoint; ``overrides`` are dotted ``key=value``."""
    ckpt = resolve_checkpoint(path)
    state = read_train_state(ckpt)
    if "config" not in state:
        raise ValueError(f"{ckpt}/train_state.json has no 'config' (written by an older version)")

    raw = apply_overrides(stored_config(state), list(overrides))
    try:
        cfg = from_dict(JobConfig, raw)
        changes = model_changes(state, cfg)
    except ConfigError as exc:
        raise ConfigError(f"{ckpt / 'train_state.json'}: {exc}") from exc
    if changes:  # the weights would load into other layers, or not at all
        raise ConfigError(f"{ckpt}: the overrides change the model the checkpoint holds: {'; '.join(changes)}")
    state["path"] = str(ckpt)
    return cfg, state


def _vocab_sizes(state: Dict[str, Any]) -> Dict[str, int]:
    return {k: int(v) for k, v in state["vocab_sizes"].items()}


def load_unsharded(
    path: str | Path, overrides: Sequence[str] = (), device: str | torch.device = "cpu"
) -> Tuple[HyTRecModel, JobConfig, Dict[str, Any]]:
    """The checkpoint's model as one unsharded :class:`HyTRecModel` in eval mode.

    Works in a plain process (no ``torch.distributed`` group) whatever world size wrote it.

    Returns:
        ``(model, cfg, train_state)``; ``train_state["path"]`` is the checkpoint directory.
    """
    cfg, state = checkpoint_config(path, overrides)
    dev = torch.device(device)
    model = build_model(cfg, _vocab_sizes(state), dev)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("loss.")}
    wrapped = {"model": sd}
    read_index(state["path"])  # refuses an index that could run code, before DCP opens it
    dcp.load(wrapped, checkpoint_id=state["path"], storage_reader=SafeFileSystemReader(state["path"]), no_dist=True)
    missing, unexpected = model.load_state_dict(wrapped["model"], strict=False)
    bad = [m for m in missing if not m.startswith("loss.")]
    if bad or unexpected:
        raise ValueError(f"{state['path']}: state mismatch, missing={bad} unexpected={unexpected}")
    model.eval()
    return model, cfg, state


def load_sharded(
    path: str | Path,
    env: Optional[DistEnv] = None,
    overrides: Sequence[str] = (),
) -> Tuple[torch.nn.Module, Any, JobConfig, Dict[str, Any]]:
    """The checkpoint's model sharded over the current process group (collective).

    Every rank calls it. The tables are planned for the current world size and DCP reshards the
    saved shards onto that plan, so a checkpoint from W ranks loads on any world size.

    Returns:
        ``(dmp_model, plan, cfg, train_state)``; the model is in eval mode.
    """
    cfg, state = checkpoint_config(path, overrides)
    env = env or init_distributed(cfg.train.backend, cfg.train.device)
    model = build_model(cfg, _vocab_sizes(state), env.device, torch.device("meta"))
    dmp, plan = shard_model(model, cfg.embeddings, env, cfg.data.batch_size)
    wrapped = {"model": {k: v for k, v in dmp.state_dict().items() if not k.startswith("loss.")}}
    read_index(state["path"])  # refuses an index that could run code, before DCP opens it
    dcp.load(wrapped, checkpoint_id=state["path"], storage_reader=SafeFileSystemReader(state["path"]))
    dmp.load_state_dict(wrapped["model"], strict=False)
    dmp.eval()
    return dmp, plan, cfg, state


def config_dict(cfg: JobConfig) -> Dict[str, Any]:
    """The config as plain data (for model cards and reports)."""
    return to_dict(cfg)
