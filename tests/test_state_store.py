"""The state store (hytrec_torchrec/serving/store.py, docs/export.md "State store"): a user's kept
state put into ``SQLiteStateStore`` and read back answers exactly as the state in memory; unknown
users are ``None``; a state of another model is refused on put and on get (naming the file and the
user); states survive a new store object on the same file; a process killed with SIGKILL while
putting loses no acknowledged put and leaves an intact file; ``examples/serve.py --state-db`` runs
the event → get → update → put → answer loop torch-only, and its answer after two runs equals the
model's answer on the whole history.

A tiny stateful module (D = 8, the default tower with every parameter moved off its initial value),
built as in tests/test_serving_state.py."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from hytrec_torchrec.serving.idmap import Vocab
from hytrec_torchrec.serving.store import (SQLiteStateStore, StateStore, concat_states, decode_state, encode_state,
                                           split_state)

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000
V = 40  # item table rows
NC, NB, NA = 6, 5, 5  # category, behaviour, attribution table rows
Request = Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor]


def _vocabs() -> Dict[str, Vocab]:
    def vocab(name: str, size: int) -> Vocab:
        return Vocab(name, size, [str(i) for i in range(2, size)], np.arange(2, size))
    return {"item": vocab("item", V), "attribution": vocab("attribution", NA), "category": vocab("category", NC),
            "behavior": vocab("behavior", NB)}


def _serving(seed: int = 0):
    """The tiny stateful module of tests/test_serving_state.py (item and category features, the
    default tower with every parameter moved off its initial value, max_len 1,024)."""
    from tests.test_serving_state import _serving as stateful_serving

    return stateful_serving(seed=seed)


def _histories(lengths: List[int], seed: int = 0) -> Request:
    """Packed histories of known raw IDs, each user's clock increasing."""
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    values = {"item": torch.randint(2, 14, (n,), generator=g), "category": torch.randint(2, NC, (n,), generator=g),
              "behavior": torch.randint(2, NB, (n,), generator=g), "timestamp": torch.empty(n, dtype=torch.int64)}
    start = 0
    for length in lengths:
        values["timestamp"][start:start + length] = T0 + torch.cumsum(torch.randint(1, 20_000, (length,), generator=g), 0)
        start += length
    lens = torch.tensor(lengths, dtype=torch.int64)
    last = T0 + 20_000 * max(lengths + [1]) + 3_600
    return values, {k: lens.clone() for k in values}, torch.full((len(lengths),), last, dtype=torch.int64)


@pytest.fixture(scope="module")
def served():
    return _serving()


@pytest.fixture(scope="module")
def states(served) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """Three users (37, 0 and 9 events) fed in one update: their state and request times."""
    values, lens, t = _histories([37, 0, 9])
    with torch.no_grad():
        state = served.update(served.init_state(3), values, lens)
    return state, t


def _fp(served) -> int:
    return int(served.init_state(1)["fingerprint"][0])


def _scores(served, state: Dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return served.state_scores(state, t)


def test_round_trip_is_exact(served, states, tmp_path: Path) -> None:
    state, t = states
    store = SQLiteStateStore(tmp_path / "s.db", _fp(served))
    assert isinstance(store, StateStore)
    for i, one in enumerate(split_state(state)):
        store.put(f"user-{i}", one)
    got = store.get(["user-2", "user-0", "user-1"])
    assert all(s is not None for s in got)
    back = concat_states([got[1], got[2], got[0]])
    assert back.keys() == state.keys()
    for key in state:
        assert back[key].dtype == state[key].dtype and torch.equal(back[key], state[key]), key
    want = _scores(served, state, t)
    assert float(want[:, 2:].std()) > 0.05  # the scores differ between items: the comparison can fail
    assert torch.equal(_scores(served, back, t), want)
    # one user alone, as the serving loop reads it (batch of 1 against batch of 1: a batch of 3
    # rounds differently)
    assert torch.equal(_scores(served, got[0], t[2:]), _scores(served, split_state(state)[2], t[2:]))
    torch.testing.assert_close(_scores(served, got[0], t[2:]), want[2:], atol=1e-5, rtol=0)
    # a put replaces: the newest state is the one read back
    store.put("user-0", split_state(state)[2])
    assert torch.equal(store.get(["user-0"])[0]["events"], state["events"][2:])
    assert len(store) == 3
    store.close()


def test_unknown_user_is_none(served, states, tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "s.db", _fp(served))
    assert store.get(["nobody"]) == [None]
    store.put("someone", split_state(states[0])[0])
    got = store.get(["nobody", "someone", "nobody"])
    assert got[0] is None and got[2] is None and got[1] is not None
    assert store.get([]) == []
    # more users than one SELECT takes
    many = store.get([f"u{i}" for i in range(1_200)] + ["someone"])
    assert len(many) == 1_201 and many[-1] is not None and all(s is None for s in many[:-1])


def test_state_of_another_model_refused(served, states, tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    one = split_state(states[0])[0]
    other_fp = _fp(served) + 1
    # put: a state whose fingerprint is not the store's model's
    with pytest.raises(ValueError, match="fingerprint"):
        SQLiteStateStore(path, other_fp).put("alice", one)
    # get: a file written for one model, read by another
    SQLiteStateStore(path, _fp(served)).put("alice", one)
    with pytest.raises(ValueError) as err:
        SQLiteStateStore(path, other_fp).get(["alice"])
    assert str(path) in str(err.value) and "'alice'" in str(err.value) and "another model" in str(err.value)
    # more than one user in a put, a user ID that is not a string
    with pytest.raises(ValueError, match="one user"):
        SQLiteStateStore(path, _fp(served)).put("bob", states[0])
    with pytest.raises(ValueError, match="strings"):
        SQLiteStateStore(path, _fp(served)).put(7, one)  # type: ignore[arg-type]
    # a damaged blob: named, not loaded
    db = sqlite3.connect(str(path))
    db.execute("UPDATE states SET state = ? WHERE user_id = 'alice'", (b"garbage",))
    db.commit()
    db.close()
    with pytest.raises(ValueError, match="'alice'.*not a stored state"):
        SQLiteStateStore(path, _fp(served)).get(["alice"])


def test_survives_a_restart(served, states, tmp_path: Path) -> None:
    state, t = states
    path = tmp_path / "s.db"
    first = SQLiteStateStore(path, _fp(served))
    for i, one in enumerate(split_state(state)):
        first.put(str(i), one)
    del first  # not closed: the process moves on without a clean shutdown
    again = SQLiteStateStore(path, _fp(served))
    back = concat_states(again.get(["0", "1", "2"]))  # type: ignore[arg-type]
    assert torch.equal(_scores(served, back, t), _scores(served, state, t))
    # and the loop continues from the reloaded state as from the original
    values, lens, _ = _histories([5, 5, 5], seed=3)
    with torch.no_grad():
        assert torch.equal(_scores(served, served.update(back, values, lens), t + 10**6),
                           _scores(served, served.update(state, values, lens), t + 10**6))


def test_blob_is_safe_and_compact(served, states) -> None:
    from hytrec_torchrec.serving.state import state_bytes_per_user

    one = split_state(states[0])[0]
    blob = encode_state(one)
    raw = state_bytes_per_user(served)
    assert raw < len(blob) < raw + 1_000 * len(one)  # the tensors' bytes plus a header per key
    # a row sliced from a batch does not carry the batch's storage
    sliced = encode_state({k: v[0:1] for k, v in states[0].items()})
    assert len(sliced) == len(blob)
    back = decode_state(blob)
    assert all(torch.equal(back[k], one[k]) for k in one)
    with pytest.raises(ValueError, match="not a stored state"):
        decode_state(b"PK\x03\x04 not really a zip")


KILL_CHILD = textwrap.dedent("""
    import sys, torch
    from hytrec_torchrec.serving.store import SQLiteStateStore
    path, base_file, fp = sys.argv[1], sys.argv[2], int(sys.argv[3])
    base = torch.load(base_file, weights_only=True)
    store = SQLiteStateStore(path, fp)
    print("ready", flush=True)
    i = 0
    while True:
        state = dict(base)
        state["last_ts"] = base["last_ts"] + i  # each user's state is told apart by it
        store.put(f"user-{i}", state)
        print(i, flush=True)  # acknowledged: put returned
        i += 1
""")


def test_kill_loses_no_acknowledged_put(served, states, tmp_path: Path) -> None:
    """A process putting states in a loop, killed with SIGKILL mid-run: every user it reported as
    stored is in the file and loads, and SQLite's integrity check passes."""
    base = split_state(states[0])[0]
    base_file = tmp_path / "base.pt"
    torch.save(base, base_file)
    path = tmp_path / "kill.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(path), str(base_file), str(_fp(served))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    acked: List[int] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 300
        first = child.stdout.readline()
        assert first.strip() == "ready", first + (child.stderr.read() if child.stderr else "")
        while len(acked) < 40 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acked.append(int(line))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        # lines written before the kill are acknowledged puts as well
        acked += [int(line) for line in child.stdout.read().split() if line.strip()]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(acked) >= 40 and acked == list(range(len(acked)))
    db = sqlite3.connect(str(path))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    store = SQLiteStateStore(path, _fp(served))
    got = store.get([f"user-{i}" for i in acked])
    for i, state in zip(acked, got):
        assert state is not None, f"acknowledged user-{i} lost"
        assert int(state["last_ts"][0]) == int(base["last_ts"][0]) + i
        assert all(torch.equal(state[k], base[k]) for k in base if k != "last_ts")
    # the stored rows are whole states: one answers as the state it was made from
    t = states[1][:1]
    want = dict(base)
    want["last_ts"] = base["last_ts"] + acked[-1]
    assert torch.equal(_scores(served, got[-1], t), _scores(served, want, t))
    assert len(store) >= len(acked)  # the put in flight at the kill may or may not have landed


def _export_dir(served, out: Path, stateful: bool = True) -> Path:
    """A minimal export folder of the tiny module, as ``hytrec-export --stateful`` lays it out: the
    scripted ``model.pt``, ``vocab/*.json`` and a model card."""
    from hytrec_torchrec.serving.export import input_contract, write_vocab_json

    out.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(served), str(out / "model.pt"))
    vocabs = _vocabs()
    files = {name: str(write_vocab_json(out, v).relative_to(out)) for name, v in vocabs.items()}
    card = {"format": "hytrec-serving", "format_version": 1, "config": {}, "files": {"vocab": files},
            "input_contract": input_contract(vocabs, ["item", "category", "behavior"], 1024, 8),  # repeat cycles read behaviour
            "checkpoint": {"step": 0}, "tables": {"storage": "float32"},
            "stateful": {"fingerprint": _fp(served)} if stateful else None}
    (out / "model_card.json").write_text(json.dumps(card))
    return out


def _events(values: Dict[str, torch.Tensor], lo: int, hi: int) -> List[Dict[str, object]]:
    return [{"item": str(int(values["item"][i])), "category": str(int(values["category"][i])),
             "attribution": "2", "behavior": str(int(values["behavior"][i])),
             "timestamp": int(values["timestamp"][i])} for i in range(lo, hi)]


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", str(ROOT / "examples" / "serve.py"), *args, "--check-torch-only"],
                          capture_output=True, text=True, timeout=600)


def test_serve_example_state_loop(served, tmp_path: Path) -> None:
    """``examples/serve.py --state-db``, torch-only (``python -I``): two runs, each with new events of
    a user; the second run's answer comes from the stored state and equals the model's answer on the
    user's whole history."""
    export = _export_dir(served, tmp_path / "export")
    values, lens, t = _histories([30, 12], seed=5)
    db = tmp_path / "states.db"
    now = int(t[0])
    first = [{"user": "alice", "request_time": now, "history": _events(values, 0, 20)},
             {"user": 42, "request_time": now, "history": _events(values, 30, 42)}]
    second = [{"user": "alice", "request_time": now, "history": _events(values, 20, 30)},
              {"user": "nobody", "request_time": now, "history": []}]
    answers = []
    for i, reqs in enumerate((first, second)):
        (tmp_path / f"r{i}.json").write_text(json.dumps(reqs))
        res = _serve("--model-dir", str(export), "--state-db", str(db), "--requests", str(tmp_path / f"r{i}.json"),
                     "--k", "5")
        assert res.returncode == 0, res.stderr
        answers.append([json.loads(line) for line in res.stdout.splitlines()])
    assert [(a["user"], a["events"]) for a in answers[0]] == [("alice", 20), ("42", 12)]
    assert [(a["user"], a["events"]) for a in answers[1]] == [("alice", 30), ("nobody", 0)]
    # alice's answer after the second run = the model on her whole history (30 events) at once
    whole = {k: v[:30] for k, v in values.items()}
    n = torch.tensor([30])
    with torch.no_grad():
        ids, scores = served(whole, {k: n for k in whole}, t[:1], 5)
    assert answers[1][0]["items"] == [str(i) for i in ids[0].tolist()]
    assert answers[1][0]["scores"] == pytest.approx(scores[0].tolist(), abs=1e-4)
    # the file holds the three users, readable by the package's store
    store = SQLiteStateStore(db, _fp(served))
    assert len(store) == 3 and all(s is not None for s in store.get(["alice", "42", "nobody"]))
    # demo requests (two arrivals per user) run too
    demo = _serve("--model-dir", str(export), "--state-db", str(tmp_path / "demo.db"), "--num", "2")
    assert demo.returncode == 0, demo.stderr
    assert [json.loads(line)["user"] for line in demo.stdout.splitlines()] == ["demo-0", "demo-1", "demo-2"] * 2
    # a stateless export and a request without a user: one line, exit status 2
    stateless = _export_dir(served, tmp_path / "stateless", stateful=False)
    res = _serve("--model-dir", str(stateless), "--state-db", str(db))
    assert res.returncode == 2 and "stateful is null" in res.stderr, res.stderr
    (tmp_path / "nouser.json").write_text(json.dumps([{"request_time": now, "history": []}]))
    res = _serve("--model-dir", str(export), "--state-db", str(db), "--requests", str(tmp_path / "nouser.json"))
    assert res.returncode == 2 and "request 0: expected a 'user'" in res.stderr, res.stderr


def test_a_locked_file_fails_the_put_and_leaves_the_store_usable(served, states, tmp_path: Path) -> None:
    """Another writer holds the lock: ``put`` waits ``timeout`` and raises, stores nothing and opens
    no transaction; readers are not blocked (WAL); once the lock is gone, ``put`` works."""
    path = tmp_path / "s.db"
    one = split_state(states[0])[0]
    store = SQLiteStateStore(path, _fp(served), timeout=0.2)
    store.put("old", one)
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.put("new", one)
    assert store.get(["old", "new"])[1] is None and store.get(["old"])[0] is not None
    other.execute("ROLLBACK")
    other.close()
    store.put("new", one)
    assert store.get(["new"])[0] is not None
