"""Reading checkpoints that may come from someone else without running their code.

``torch.distributed.checkpoint`` keeps a checkpoint's index in ``.metadata``, which its file
reader loads with a plain ``pickle.load``: a crafted file runs any command when it is opened.
:class:`SafeFileSystemReader` is that reader with a restricted unpickler that rebuilds only the
classes a checkpoint index is made of (:data:`ALLOWED`) and refuses every other global with
:class:`UnsafeCheckpointError`. Every reader of our checkpoints (resume, evaluation, export, the
optimizer-state check) goes through it; the tensors themselves are read with
``torch.load(weights_only=True)`` by DCP, ``rank_*.pt`` with ``weights_only=True`` and
``train_state.json`` is JSON.

What is *not* safe to load from an untrusted source: an exported ``model.pt`` (TorchScript code
runs when called; docs/export.md).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

__all__ = ["ALLOWED", "SafeFileSystemReader", "UnsafeCheckpointError", "read_index", "safe_unpickle"]

_DCP_METADATA = {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                 "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"}
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
        raise UnsafeCheckpointError(f"refers to {module}.{name}, which a checkpoint index never holds "
                                    "(refused: unpickling it could run code)")


def safe_unpickle(data: bytes) -> Any:
    """``pickle.loads`` that rebuilds only :data:`ALLOWED` globals."""
    return _Restricted(io.BytesIO(data)).load()


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with ``.metadata`` loaded by :func:`safe_unpickle`."""

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
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def read_index(path: str) -> Metadata:
    """A checkpoint directory's index through :class:`SafeFileSystemReader`, read before
    ``dcp.load`` so that a refused index is reported as :class:`UnsafeCheckpointError` itself
    (DCP would wrap it in a per-rank ``CheckpointException``)."""
    return SafeFileSystemReader(path).read_metadata()
