"""Where a served user's state lives between requests (docs/export.md, "State store").

A model exported with ``hytrec-export --stateful`` answers from a kept per-user state
(:mod:`hytrec_torchrec.serving.state`): ``Dict[str, Tensor]``, every tensor with the users on
dim 0. A :class:`StateStore` keeps one such state per user (``B = 1``) under a string key; the
serving loop is::

    state = store.get([user])[0] or model.init_state(1)     # None: a user never seen
    state = model.update(state, values, lengths)             # the user's new events
    store.put(user, state)                                   # durable once it returns
    ids, scores = model.score_state(state, request_time, k)

:class:`SQLiteStateStore` is the embedded default (Python's ``sqlite3``, one row per user, WAL
journal, ``synchronous=FULL``). An external key-value store implements the same two methods with
:func:`encode_state` / :func:`decode_state` as the value format.

This module imports the standard library and ``torch`` only: ``examples/serve.py`` loads it by its
path in a process without hytrec_torchrec, TorchRec or fbgemm (keep it beside the example).
"""

import abc
import io
import sqlite3
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

__all__ = ["State", "StateStore", "SQLiteStateStore", "BLOB_FORMAT", "encode_state", "decode_state",
           "state_fingerprint", "split_state", "concat_states"]

#: a state: key -> tensor with the users on dim 0 (``fingerprint [B]`` int64 among the keys)
State = Dict[str, torch.Tensor]
#: version of the value format (:func:`encode_state`), stored in every row
BLOB_FORMAT = 1
#: user IDs per ``SELECT ... IN (...)`` (below SQLite's default limit of host parameters)
_GET_CHUNK = 500


def encode_state(state: State) -> bytes:
    """One user's state as bytes: ``torch.save`` of the dict (a zip of the tensors' raw little-endian
    bytes, a few hundred bytes of header per key). Each tensor is copied first, so a row sliced from
    a batch (``v[i:i+1]``) does not drag the batch's whole storage along."""
    buf = io.BytesIO()
    torch.save({str(k): v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, buf)
    return buf.getvalue()


def decode_state(blob: bytes) -> State:
    """The state of :func:`encode_state`, read with ``torch.load(weights_only=True)`` (tensors and
    plain containers only; no code runs).

    Raises:
        ValueError: not a dict of tensors (damaged or foreign bytes).
    """
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, pickle or storage errors are one message
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"not a stored state ({type(exc).__name__}: {first})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ValueError(f"not a stored state: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def state_fingerprint(state: State) -> int:
    """The model fingerprint of a one-user state (``state["fingerprint"] [1]`` int64).

    Raises:
        ValueError: no fingerprint, or a state of more or fewer than one user.
    """
    fp = state.get("fingerprint")
    if fp is None or fp.dtype != torch.int64 or fp.dim() != 1 or fp.numel() != 1:
        got = "none" if fp is None else f"{list(fp.shape)} {fp.dtype}"
        raise ValueError(f"a stored state is one user's: expected state['fingerprint'] of shape [1] int64, got {got}")
    return int(fp[0])


def split_state(state: State) -> List[State]:
    """A state of B users → B one-user states (each tensor ``[1, ...]``, copied)."""
    b = int(state["fingerprint"].shape[0])
    return [{k: v[i:i + 1].clone() for k, v in state.items()} for i in range(b)]


def concat_states(states: Sequence[State]) -> State:
    """One-user (or any) states → one state of all their users, key by key (``torch.cat`` on dim 0)."""
    if not states:
        raise ValueError("concat_states: no states")
    return {k: torch.cat([s[k] for s in states]) for k in states[0]}


class StateStore(abc.ABC):
    """Per-user states of one model, keyed by user ID (a string).

    Contract, for every implementation:

    * ``get(user_ids)`` returns, in order, each user's last stored state (``Dict[str, Tensor]``,
      every tensor ``[1, ...]``) or ``None`` for a user with no state; it raises ``ValueError`` for
      a stored state of another model (its fingerprint is not :attr:`fingerprint`), naming the store
      and the user, rather than answer from it;
    * ``put(user_id, state)`` replaces the user's state atomically (a reader sees the old state or
      the new one, never a mix) and is durable once it returns: a crash of the process (or, where
      the backend promises it, of the machine) right after it returned loses nothing;
    * a state put must be one user's and of this store's model (``ValueError`` otherwise).

    Concurrent updates of one user are the caller's to serialise (route a user to one worker):
    ``get`` → ``update`` → ``put`` is not a transaction.
    """

    def __init__(self, fingerprint: int) -> None:
        #: the model fingerprint every stored state must carry (``int(model.init_state(1)["fingerprint"][0])``)
        self.fingerprint = int(fingerprint)

    @abc.abstractmethod
    def get(self, user_ids: Sequence[str]) -> List[Optional[State]]:
        """Each user's state (tensors ``[1, ...]``) or ``None``, in the order of ``user_ids``."""

    @abc.abstractmethod
    def put(self, user_id: str, state: State) -> None:
        """Store one user's state (tensors ``[1, ...]``); durable when it returns."""

    def close(self) -> None:
        """Release the store's resources (nothing by default)."""

    def _check_put(self, user_id: str, state: State) -> None:
        if not isinstance(user_id, str) or not user_id:
            raise ValueError(f"user IDs are non-empty strings, got {user_id!r}")
        fp = state_fingerprint(state)
        if fp != self.fingerprint:
            raise ValueError(f"user {user_id!r}: the state's fingerprint {fp} is not this store's model's "
                             f"{self.fingerprint}; not stored")


class SQLiteStateStore(StateStore):
    """The embedded default: one SQLite file, table ``states(user_id TEXT PRIMARY KEY, fingerprint
    INTEGER, format INTEGER, state BLOB, updated_at REAL)``, one row per user, the state as one
    :func:`encode_state` blob.

    The file runs in WAL mode with ``synchronous=FULL``: each :meth:`put` is one transaction whose
    commit is fsynced before it returns, so an acknowledged put survives a killed process and a power
    loss (as far as the disk honours fsync). Several processes may share the file (SQLite locks
    it; one writer at a time, readers never block).

    Args:
        path: the database file (created with its table if missing).
        fingerprint: the model's (``int(model.init_state(1)["fingerprint"][0])``; the model card's
            ``stateful.fingerprint``).
        timeout: seconds to wait for another writer's lock.
    """

    def __init__(self, path: Union[str, Path], fingerprint: int, timeout: float = 30.0) -> None:
        super().__init__(fingerprint)
        self.path = Path(path)
        try:
            # isolation_level=None: no implicit transactions; put() opens and commits its own
            self._db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ValueError(f"{self.path}: could not switch to WAL mode (journal_mode {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS states (user_id TEXT PRIMARY KEY, fingerprint INTEGER "
                             "NOT NULL, format INTEGER NOT NULL, state BLOB NOT NULL, updated_at REAL NOT NULL)")
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path}: not a usable state store ({exc})") from None

    def get(self, user_ids: Sequence[str]) -> List[Optional[State]]:
        """Each user's state or ``None`` (see :class:`StateStore`).

        Raises:
            ValueError: a stored state of another model or format, or a damaged blob, naming the file
                and the user.
        """
        ids = [str(u) for u in user_ids]
        rows: Dict[str, State] = {}
        for start in range(0, len(ids), _GET_CHUNK):
            chunk = sorted(set(ids[start:start + _GET_CHUNK]))
            marks = ",".join("?" * len(chunk))
            query = f"SELECT user_id, fingerprint, format, state FROM states WHERE user_id IN ({marks})"
            for user, fp, fmt, blob in self._db.execute(query, chunk):
                rows[user] = self._decode(user, int(fp), int(fmt), bytes(blob))
        return [rows.get(u) for u in ids]

    def _decode(self, user: str, fp: int, fmt: int, blob: bytes) -> State:
        where = f"{self.path}: user {user!r}"
        if fp != self.fingerprint:
            raise ValueError(f"{where}: the stored state is of another model (fingerprint {fp}, this model's "
                             f"{self.fingerprint}); states do not outlive the model that made them: start the "
                             "user again with init_state (a new store file per deploy)")
        if fmt != BLOB_FORMAT:
            raise ValueError(f"{where}: stored state format {fmt}, this code reads {BLOB_FORMAT}")
        try:
            state = decode_state(blob)
            inner = state_fingerprint(state)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if inner != fp:
            raise ValueError(f"{where}: the blob's fingerprint {inner} is not its row's {fp} (damaged row)")
        return state

    def put(self, user_id: str, state: State) -> None:
        """Replace ``user_id``'s state in one transaction, committed (and fsynced) on return.

        Raises:
            ValueError: not one user's state, or a state of another model.
        """
        self._check_put(user_id, state)
        blob = encode_state(state)
        self._db.execute("BEGIN IMMEDIATE")  # waits up to `timeout` for another writer
        try:
            self._db.execute("INSERT OR REPLACE INTO states (user_id, fingerprint, format, state, updated_at) "
                             "VALUES (?, ?, ?, ?, ?)", (user_id, self.fingerprint, BLOB_FORMAT, blob, time.time()))
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # a failed insert or commit: leave no transaction open
                self._db.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        """Users with a stored state (of any model)."""
        return int(self._db.execute("SELECT COUNT(*) FROM states").fetchone()[0])

    def close(self) -> None:
        """Close the connection (the file stays consistent whether or not this runs)."""
        self._db.close()
