"""Reading checkpoints that may come from someone else without running their code.

``torch.distributed.checkpoint`` keeps a checkpoint's index in ``.metadata``, which its file
reader loads with a plain ``pickle.load``: a crafted file runs any command when it is opened.
:class:`SafeFileSystemReader` is that reader with a restricted unpickler that rebuilds only the
classes a checkpoint index is made of (:data:`ALLOWED`) and refuses every other global with
:class:`UnsafeCheckpointError`. Every reader of our checkpoints (resume, evaluation, export, the
optimizer-state check) goes through it; the tensors themselves are read with
``torch.load(weights_only=True)`` by DCP, ``rank_*.pt`` with ``weights_only=True`` and
``train_state.json`` is JSON.

An index of allowed classes can still ask for a full unpickle: DCP's default load planner reads
an entry declared as ``BytesStorageMetadata`` with ``torch.load(weights_only=False)``. Our
checkpoints hold tensors only, so :func:`check_index` refuses an index with any entry that is
not a tensor (a bytes entry is refused already by the unpickler), a storage entry naming a file
outside the checkpoint directory, or a stream transform (compression; we write none). The check
lives in :meth:`SafeFileSystemReader.read_metadata`, so it holds with or without a manifest and
before DCP reads any data.

What is *not* safe to load from an untrusted source: an exported ``model.pt`` (TorchScript code
runs when called; docs/export.md).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

__all__ = ["ALLOWED", "SafeFileSystemReader", "UnsafeCheckpointError", "check_index", "read_index",
           "safe_unpickle"]

#: DCP index classes our checkpoints are made of (``BytesStorageMetadata`` is not: module docstring)
_DCP_METADATA = {"Metadata", "TensorStorageMetadata", "ChunkStorageMetadata",
                 "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"}
_BYTES_ENTRY = "BytesStorageMetadata"
_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}

#: module → names the checkpoint-index unpickler may rebuild.
ALLOWED: dict[str, set[str]] = {
    "torch.distributed.checkpoint.metadata": _DCP_METADATA,
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch": {"Size"} | _DTYPES,
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice", "complex"},
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint index names a class outside :data:`ALLOWED` (it could run code)."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if name == _BYTES_ENTRY:
            raise UnsafeCheckpointError("declares a bytes entry (BytesStorageMetadata), which DCP loads with a "
                                        "full unpickle that could run code; our checkpoints hold tensors only "
                                        "(refused)")
        raise UnsafeCheckpointError(f"refers to {module}.{name}, which a checkpoint index never holds "
                                    "(refused: unpickling it could run code)")


def safe_unpickle(data: bytes) -> Any:
    """``pickle.loads`` that rebuilds only :data:`ALLOWED` globals."""
    return _Restricted(io.BytesIO(data)).load()


def _plain_file_name(name: Any) -> bool:
    """Whether ``name`` names a file directly inside the checkpoint directory."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name)


def check_index(metadata: Metadata) -> None:
    """Refuse a checkpoint index that asks for more than tensors read from its own directory.

    Raises:
        UnsafeCheckpointError: an entry that is not a tensor (e.g. a bytes entry, loaded with a
            full unpickle), a storage entry whose file is not a plain name inside the checkpoint
            directory, or one with a stream transform.
    """
    entries = metadata.state_dict_metadata
    if not isinstance(entries, dict):
        raise UnsafeCheckpointError(f"holds a {type(entries).__name__} of entries, not a mapping")
    for fqn, entry in entries.items():
        if not isinstance(entry, TensorStorageMetadata):
            raise UnsafeCheckpointError(f"entry {str(fqn)[:80]!r} is a {type(entry).__name__}, not a tensor; our "
                                        "checkpoints hold tensors only (refused: DCP could unpickle it)")
    storage = metadata.storage_data
    for where in (storage.values() if isinstance(storage, dict) else ()):
        path = getattr(where, "relative_path", None)
        if not _plain_file_name(path):
            raise UnsafeCheckpointError(f"a storage entry names {str(path)[:80]!r}, not a file of the checkpoint "
                                        "directory (refused)")
        if getattr(where, "transform_descriptors", None):
            raise UnsafeCheckpointError(f"a storage entry of {path} has stream transforms "
                                        f"{list(where.transform_descriptors)[:3]}; our checkpoints have none "
                                        "(refused)")


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with ``.metadata`` loaded by :func:`safe_unpickle` and checked by
    :func:`check_index`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            data = f.read()
        try:
            metadata = safe_unpickle(data)
        except UnsafeCheckpointError as exc:
            raise UnsafeCheckpointError(f"{path}: {exc}") from None
        except Exception as exc:  # truncated or not a pickle at all
            raise UnsafeCheckpointError(f"{path}: not a readable checkpoint index ({type(exc).__name__}: "
                                        f"{exc})") from None
        if not isinstance(metadata, Metadata):
            raise UnsafeCheckpointError(f"{path}: holds a {type(metadata).__name__}, not a checkpoint index")
        try:
            check_index(metadata)
        except UnsafeCheckpointError as exc:
            raise UnsafeCheckpointError(f"{path}: {exc}") from None
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def read_index(path: str) -> Metadata:
    """A checkpoint directory's index through :class:`SafeFileSystemReader`, read before
    ``dcp.load`` so that a refused index is reported as :class:`UnsafeCheckpointError` itself
    (DCP would wrap it in a per-rank ``CheckpointException``)."""
    return SafeFileSystemReader(path).read_metadata()
