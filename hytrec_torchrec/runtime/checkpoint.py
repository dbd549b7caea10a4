"""Atomic, sharded, resumable checkpoints with ``torch.distributed.checkpoint`` (docs/design.md §5).

Layout of a run directory::

    RUN_DIR/checkpoints/step_00000120/      one complete checkpoint
        .metadata, __0_0.distcp, ...        DCP files: model (sharded tables, dense weights) and
                                            both optimizers' state
        rank_00000.pt ...                   per-rank state (RNG), loadable with weights_only=True
        train_state.json                    step, epoch, loader position, world size, vocab sizes
        manifest.json                       size and SHA-256 of every other file, written last
    RUN_DIR/checkpoints/latest              name of the newest complete checkpoint

Every rank writes into ``.tmp-step_N``; after a barrier rank 0 writes ``train_state.json`` and
writes ``manifest.json`` (size and SHA-256 of each file the ranks wrote), renames the directory to
``step_N`` (an atomic rename on one filesystem), then rewrites ``latest`` atomically. A crash while saving leaves only a ``.tmp-*`` directory, which is
ignored and removed by the next save: the last good checkpoint is never touched. Only the newest
``keep_last`` checkpoints are kept. Multi-node jobs need ``RUN_DIR`` on a shared filesystem.

DCP reshards on load, so a checkpoint written by W ranks loads on any world size (tables and
the row-wise optimizer state are re-split by the loading plan).

Sharded tables (and their fused optimizer state) are saved in the form the model's ``state_dict()``
gives them: ``DTensor`` where torchrec supports it, else the older ``ShardedTensor``
(:func:`~hytrec_torchrec.runtime.distributed.sharded_state_form`, ``HYTREC_SHARDED_STATE``). DCP
writes both as the same chunks of the same index, so a checkpoint written in either form loads into
a model of either form.

Verification: :func:`verify_checkpoint` compares every file with the manifest. A run directory
resolves to its newest checkpoint that verifies (:func:`latest_checkpoint` logs each damaged one it
skips: a truncated ``.distcp``, ``rank_*.pt`` or ``train_state.json``, a missing file); a checkpoint
named directly that does not verify raises :class:`DamagedCheckpointError`. Checkpoints written
before manifests existed have none and load unverified.

A checkpoint may come from someone else (docs/training.md, "Loading checkpoints from someone
else"): its index is checked by :mod:`~hytrec_torchrec.runtime.safe_load` with or without a
manifest, ``train_state.json`` by type and range (:func:`check_train_state`), ``latest`` must name
a ``step_N`` directory of the run itself, and ``rank_*.pt`` is read with ``weights_only=True``
(:func:`read_rank_state`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from hytrec_torchrec.cli import disk_full, first_line
from hytrec_torchrec.config import show_value
from hytrec_torchrec.files import file_sha256
from hytrec_torchrec.runtime.safe_load import SafeFileSystemReader, UnsafeCheckpointError, read_index

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "read_train_state", "verify_checkpoint",
           "check_train_state", "read_rank_state", "DamagedCheckpointError", "MANIFEST", "INDEX",
           "MAX_TABLE_ROWS", "MAX_WORLD_SIZE"]

_PREFIX = "step_"
MANIFEST = "manifest.json"
#: DCP's index file of a checkpoint directory
INDEX = ".metadata"
_log = logging.getLogger("hytrec.checkpoint")


class DamagedCheckpointError(RuntimeError):
    """A checkpoint directory whose files are missing, truncated or altered (or a run directory
    with no checkpoint that verifies); the message names the directory and the first bad file."""


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


def _drop_unfinished(tmp: Path, final: Path, exc: BaseException) -> None:
    """A save failed (Ctrl-C, a full disk): a single process removes its unfinished ``.tmp-step_N``
    (with several ranks the next save clears it), and a full disk that names no file names the
    checkpoint (raised from ``exc``)."""
    if _world() == 1:
        shutil.rmtree(tmp, ignore_errors=True)
    full = disk_full(exc)
    if isinstance(exc, Exception) and full is not None and full.filename is None:
        raise OSError(full.errno, os.strerror(full.errno), str(final)) from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def write_manifest(ckpt: Path) -> None:
    """Write ``ckpt/manifest.json``: ``{"files": {name: {"size": bytes, "sha256": hex}}}`` for every
    regular file in ``ckpt`` (the manifest itself excluded)."""
    files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(ckpt.iterdir()) if p.is_file() and p.name != MANIFEST}
    _write_atomic(ckpt / MANIFEST, json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True))


#: checkpoint dir -> the (name, size, mtime) of its files when this process last verified it: a
#: resume, an evaluation or an export opens one checkpoint several times (resolve, config, load),
#: and hashes it again only if a file changed since
_verified: dict[str, tuple] = {}


def _file_stats(path: Path) -> tuple:
    return tuple((p.name, st.st_size, st.st_mtime_ns) for p in sorted(path.iterdir()) if p.is_file()
                 for st in (p.stat(),))


def verify_checkpoint(path: str | Path) -> None:
    """Check a checkpoint directory against its manifest (sizes, then SHA-256 of each file; the
    hashes once per process while no file's size or modification time changes), and check its
    index (``.metadata``) with :func:`~hytrec_torchrec.runtime.safe_load.read_index` whether or not
    there is a manifest: an index that could run code is refused before anything is loaded.

    Raises:
        DamagedCheckpointError: naming the directory and the first missing, truncated or altered
            file (or an unreadable manifest / ``train_state.json``).
        UnsafeCheckpointError: the index names a class or an entry our checkpoints never hold.
    """
    path = Path(path)
    read_train_state(path)
    _verify_manifest(path)
    if (path / INDEX).is_file():
        read_index(str(path))


def _verify_manifest(path: Path) -> None:
    """The manifest part of :func:`verify_checkpoint` (nothing to do without a manifest)."""
    man = path / MANIFEST
    if not man.is_file():
        return  # written before manifests existed: nothing to verify against
    stats = _file_stats(path)
    key = str(path.resolve())
    if _verified.get(key) == stats:
        return
    try:
        files = json.loads(man.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DamagedCheckpointError(f"{path}: unreadable {MANIFEST} ({exc})") from None
    for name, want in sorted(files.items()):
        f = path / name
        if not f.is_file():
            raise DamagedCheckpointError(f"{path}: {name} is missing")
        size = f.stat().st_size
        if size != want["size"]:
            raise DamagedCheckpointError(f"{path}: {name} has {size} bytes, the manifest says {want['size']} "
                                         "(truncated or overwritten)")
        if file_sha256(f) != want["sha256"]:
            raise DamagedCheckpointError(f"{path}: {name} does not match its SHA-256 in the manifest (altered)")
    _verified[key] = stats


def _latest_named(root: Path) -> Optional[Path]:
    """The checkpoint ``root/latest`` names (None without a ``latest`` file).

    ``latest`` holds one name, ``step_`` and digits, of a directory (not a link) in ``root``: it
    may not lead outside the run.

    Raises:
        DamagedCheckpointError: ``latest`` is a link or holds anything else.
    """
    pointer = root / "latest"
    if not pointer.is_file() and not pointer.is_symlink():
        return None
    if pointer.is_symlink():
        raise DamagedCheckpointError(f"{pointer}: is a symbolic link, not the run's own pointer (refused)")
    name = pointer.read_text(errors="replace").strip()
    digits = name[len(_PREFIX):]
    if not (name.startswith(_PREFIX) and digits.isascii() and digits.isdigit()):
        raise DamagedCheckpointError(f"{pointer}: names {show_value(name)}, not a checkpoint of this run "
                                     f"({_PREFIX}N); refused")
    named = root / name
    if named.is_symlink():
        raise DamagedCheckpointError(f"{named}: is a symbolic link out of the run's checkpoints (refused)")
    return named


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The newest checkpoint of a run that verifies, or None when the run has none.

    Tries the one named by ``latest``, then every ``step_*`` directory newest first; each damaged
    one is skipped with a warning naming it and the reason.

    Raises:
        DamagedCheckpointError: the run has checkpoints but none of them verifies, or ``latest``
            names something other than a checkpoint directory of this run
            (:func:`_latest_named`).
    """
    root = checkpoint_root(run_dir)
    named = _latest_named(root)
    steps = sorted((p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and not p.is_symlink()), reverse=True)
    candidates = ([named] if named is not None and named.is_dir() else []) + [p for p in steps if p != named]
    damaged: list[str] = []
    for cand in candidates:
        if not (cand / "train_state.json").is_file():
            continue  # never completed (no train_state.json): not a checkpoint
        try:
            verify_checkpoint(cand)
        except DamagedCheckpointError as exc:
            damaged.append(str(exc))
            _log.warning("skipping damaged checkpoint %s; trying an older one", exc)
            continue
        if damaged:
            _log.warning("using %s instead of the newer damaged checkpoint(s)", cand)
        return cand
    if damaged:
        raise DamagedCheckpointError(f"{run_dir}: no checkpoint verifies ({damaged[0]})")
    return None


def read_train_state(path: str | Path) -> dict[str, Any]:
    """``train_state.json`` of a checkpoint directory, its fields checked by
    :func:`check_train_state`.

    Raises:
        FileNotFoundError: no ``train_state.json`` (not a complete checkpoint).
        DamagedCheckpointError: it is not valid JSON (truncated), or a field has the wrong type or
            is out of range.
    """
    f = Path(path) / "train_state.json"
    if not f.is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no train_state.json)")
    try:
        state = json.loads(f.read_text())
    except ValueError as exc:
        raise DamagedCheckpointError(f"{path}: train_state.json is not valid JSON ({exc}; truncated?)") from None
    try:
        check_train_state(state)
    except ValueError as exc:
        raise DamagedCheckpointError(f"{f}: {exc}") from None
    return state


#: the largest table a checkpoint may declare (rows): far above any real vocabulary; a bound on
#: nonsense, not on memory (resume, evaluation and export compare the sizes with the dataset's
#: before they build a model: runtime/data_check.py)
MAX_TABLE_ROWS = 2**36
#: the largest world size a checkpoint may declare
MAX_WORLD_SIZE = 2**20


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(key: str, value: Any, lo: int, hi: int) -> None:
    if not _is_int(value) or not lo <= value <= hi:
        raise ValueError(f"{key}: expected an integer in {lo}..{hi}, got {show_value(value)}")


def _check_mapping(key: str, value: Any, check_value: Callable[[str, Any], None]) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{key}: expected a mapping, got {show_value(value)}")
    for name, item in value.items():
        check_value(f"{key}.{name}", item)


def _check_fingerprint(key: str, value: Any) -> None:
    ok = isinstance(value, str) and (value == "absent" or (len(value) == 64 and all(
        c in "0123456789abcdef" for c in value)))
    if not ok:
        raise ValueError(f"{key}: expected a SHA-256 hex digest or 'absent', got {show_value(value)}")


def _check_type(key: str, value: Any, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        raise ValueError(f"{key}: expected {what}, got {show_value(value)}")


def check_train_state(state: Any) -> None:
    """Check the fields of a ``train_state.json`` by type and range (the checkpoint may come from
    someone else, and every field sizes or steers what is loaded).

    Required: ``step`` (integer >= 0), ``world_size`` (1..:data:`MAX_WORLD_SIZE`),
    ``vocab_sizes`` (table → rows, 2..:data:`MAX_TABLE_ROWS`). Optional: ``epoch`` and
    ``batch_in_epoch`` (integers >= 0), ``vocab_fingerprints`` (table → SHA-256 hex or
    ``"absent"``), ``data_path`` (string), ``config`` (mapping; its keys are checked where it is
    read), ``history`` (list of mappings), ``loss_log`` (list of ``[step, loss]``).

    Raises:
        ValueError: naming the first bad field.
    """
    _check_type("train_state", state, dict, "a JSON object")
    big = 2**62
    for key in ("step", "world_size", "vocab_sizes"):
        if key not in state:
            raise ValueError(f"{key}: required key is missing")
    _check_int("step", state["step"], 0, big)
    _check_int("world_size", state["world_size"], 1, MAX_WORLD_SIZE)
    _check_mapping("vocab_sizes", state["vocab_sizes"], lambda k, v: _check_int(k, v, 2, MAX_TABLE_ROWS))
    for key in ("epoch", "batch_in_epoch"):
        if key in state:
            _check_int(key, state[key], 0, big)
    if "vocab_fingerprints" in state:
        _check_mapping("vocab_fingerprints", state["vocab_fingerprints"], _check_fingerprint)
    if "data_path" in state:
        _check_type("data_path", state["data_path"], str, "a string")
    if "config" in state:
        _check_type("config", state["config"], dict, "a mapping")
        for section, value in state["config"].items():  # each key is checked where it is read
            _check_type(f"config.{section}", value, dict, "a mapping")
    if "history" in state:
        _check_type("history", state["history"], list, "a list")
        for i, row in enumerate(state["history"]):
            _check_type(f"history[{i}]", row, dict, "a mapping")
    if "loss_log" in state:
        _check_type("loss_log", state["loss_log"], list, "a list")
        for i, row in enumerate(state["loss_log"]):
            ok = (isinstance(row, list) and len(row) == 2 and _is_int(row[0])
                  and isinstance(row[1], (int, float)) and not isinstance(row[1], bool))
            if not ok:
                raise ValueError(f"loss_log[{i}]: expected [step, loss], got {show_value(row)}")


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
        model: the (DMP-wrapped) model; its ``state_dict()`` may hold DTensors or ShardedTensors.
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
    try:
        dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=str(tmp))
        torch.save(rank_state, tmp / f"rank_{_rank():05d}.pt")
    except BaseException as exc:
        _drop_unfinished(tmp, final, exc)
        raise
    _barrier()
    if _rank() == 0:
        state = dict(train_state, step=step, world_size=_world())
        try:
            _write_atomic(tmp / "train_state.json", json.dumps(state, indent=2, sort_keys=True))
            write_manifest(tmp)
        except BaseException as exc:
            _drop_unfinished(tmp, final, exc)
            raise
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
    verify_checkpoint(path)
    train_state = read_train_state(path)
    saved = set(read_index(str(path)).state_dict_metadata)  # refuses an index that could run code
    rank_file = path / f"rank_{_rank():05d}.pt"
    rank_state = read_rank_state(rank_file) if rank_file.is_file() else None  # refused before any load
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
    return train_state, rank_state


def _weights_only_detail(exc: BaseException) -> str:
    """The reason inside torch's long ``weights_only`` refusal (``Unsupported global: ...``), on
    one line."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def read_rank_state(rank_file: Path) -> dict[str, torch.Tensor]:
    """A ``rank_*.pt`` read with ``torch.load(weights_only=True)``: a mapping of names to tensors
    or integers whose ``torch`` entry is the CPU RNG state (a ``uint8`` vector).

    Raises:
        UnsafeCheckpointError: ``weights_only`` refuses the file (it names a class that could run
            code).
        DamagedCheckpointError: not a readable torch file, or not RNG states.
    """
    try:
        state = torch.load(rank_file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        detail = _weights_only_detail(exc)
        if "Unsupported global" in detail:
            raise UnsafeCheckpointError(f"{rank_file}: refused by torch.load(weights_only=True): it names a "
                                        f"global that could run code ({detail[:160]})") from None
        raise DamagedCheckpointError(f"{rank_file}: not a readable rank state ({detail[:160]})") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file; torch raises many types
        raise DamagedCheckpointError(f"{rank_file}: not a readable rank state ({type(exc).__name__}: "
                                     f"{first_line(exc)[:160]})") from None
    rng = state.get("torch") if isinstance(state, dict) else None
    ok = (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.dim() == 1 and all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or _is_int(v)) for k, v in state.items()))
    if not ok:
        raise DamagedCheckpointError(f"{rank_file}: not a rank state (expected {{'torch': uint8 tensor, ...}}, "
                                     f"got {show_value(state)})")
    return state
