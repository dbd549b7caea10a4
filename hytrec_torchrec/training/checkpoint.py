"""Atomic, sharded, resumable checkpoints with ``torch.distributed.checkpoint`` (SPEC §5).

Layout of a run directory::

    RUN_DIR/checkpoints/step_00000120/      one complete checkpoint
        .metadata, __0_0.distcp, ...        DCP files: model (sharded tables as ShardedTensor,
                                            dense weights) and both optimizers' state
        rank_00000.pt ...                   per-rank state (RNG), loadable with weights_only=True
        train_state.json                    step, epoch, loader position, world size, vocab sizes
    RUN_DIR/checkpoints/latest              name of the newest complete checkpoint

Every rank writes into ``.tmp-step_N``; after a barrier rank 0 writes ``train_state.json`` and
renames the directory to ``step_N`` (an atomic rename on one filesystem), then rewrites
``latest`` atomically. A crash while saving leaves only a ``.tmp-*`` directory, which is
ignored and removed by the next save: the last good checkpoint is never touched. Only the newest
``keep_last`` checkpoints are kept. Multi-node jobs need ``RUN_DIR`` on a shared filesystem.

DCP reshards on load, so a checkpoint written by W ranks loads on any world size (tables and
the row-wise optimizer state are re-split by the loading plan).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from hytrec_torchrec.training.safe_load import SafeFileSystemReader, read_index

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "read_train_state"]

_PREFIX = "step_"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The newest complete checkpoint of a run, or None.

    Reads ``latest``; falls back to the highest ``step_*`` directory holding a
    ``train_state.json`` (written last, so its presence marks a complete checkpoint).
    """
    root = checkpoint_root(run_dir)
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "train_state.json").is_file():
            return cand
    done = sorted(p for p in root.glob(f"{_PREFIX}*") if (p / "train_state.json").is_file())
    return done[-1] if done else None


def read_train_state(path: str | Path) -> dict[str, Any]:
    """``train_state.json`` of a checkpoint directory, with a clear error when absent."""
    f = Path(path) / "train_state.json"
    if not f.is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no train_state.json)")
    return json.loads(f.read_text())


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: Any,
    train_state: dict[str, Any],
    rank_state: dict[str, Any],
    keep_last: int = 3,
) -> Path:
    """Write one checkpoint collectively (every rank calls this) and return its path.

    Args:
        run_dir: the run directory (``run.dir``).
        step: global step number; names the directory.
        model: the (DMP-wrapped) model; its ``state_dict()`` may hold ShardedTensors.
        optimizer: the combined keyed optimizer (fused sparse + dense).
        train_state: JSON-serialisable state identical on all ranks (rank 0 writes it).
        rank_state: per-rank tensors/ints (e.g. RNG states), saved with ``torch.save`` and read
            back with ``weights_only=True``.
        keep_last: number of newest checkpoints to keep.
    """
    root = checkpoint_root(run_dir)
    name = f"{_PREFIX}{step:08d}"
    tmp = root / f".tmp-{name}"
    final = root / name
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=str(tmp))
    torch.save(rank_state, tmp / f"rank_{_rank():05d}.pt")
    _barrier()
    if _rank() == 0:
        state = dict(train_state, step=step, world_size=_world())
        _write_atomic(tmp / "train_state.json", json.dumps(state, indent=2, sort_keys=True))
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        _write_atomic(root / "latest", name)
        done = sorted(p for p in root.glob(f"{_PREFIX}*") if p.is_dir())
        for old in done[: max(0, len(done) - keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: Any | None
) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """Load a checkpoint collectively into ``model`` (and ``optimizer``), in place.

    Works on any world size: DCP reshards the saved tables onto the current plan.

    Returns:
        ``(train_state, rank_state)``; ``rank_state`` is None when the checkpoint was written by
        fewer ranks than the current world (the caller reseeds those ranks deterministically).
    """
    path = Path(path)
    train_state = read_train_state(path)
    saved = set(read_index(str(path)).state_dict_metadata)  # refuses an index that could run code
    state: dict[str, Any] = {"model": model.state_dict()}
    never_stepped: dict[str, Any] = {}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
        # A parameter that never had a gradient before the save (e.g. a branch's "empty" vector
        # when no history left that branch empty) has no lazily created optimizer state in the
        # checkpoint. Leave it out of the load and give it back an empty state afterwards, exactly
        # what an uninterrupted run has.
        opt_state = state["optim"]["state"]
        for key in list(opt_state):
            entries = opt_state[key]
            if isinstance(entries, dict) and entries and not any(
                    f"optim.state.{key}.{name}" in saved for name in entries):
                never_stepped[key] = opt_state.pop(key)
    dcp.load(state, checkpoint_id=str(path), storage_reader=SafeFileSystemReader(str(path)))
    model.load_state_dict(state["model"])
    if optimizer is not None:
        state["optim"]["state"].update(never_stepped)
        optimizer.load_state_dict(state["optim"])
        for key in never_stepped:
            optimizer.state[optimizer.params[key]].clear()
    rank_file = path / f"rank_{_rank():05d}.pt"
    rank_state = torch.load(rank_file, weights_only=True) if rank_file.is_file() else None
    return train_state, rank_state
