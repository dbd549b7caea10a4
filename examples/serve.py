"""Answer recommendation requests with an exported HyTRec model, using torch only.

This file imports nothing but the standard library and ``torch``: it is what a serving process
without hytrec_torchrec, TorchRec or fbgemm installed does with the output of ``hytrec-export``.

    python examples/serve.py --model-dir runs/demo/export                 # demo requests
    python examples/serve.py --model-dir runs/demo/export --requests reqs.json --k 20

A requests file is a JSON list of requests::

    [{"request_time": 1700000000,
      "history": [{"item": 123, "attribution": 7, "category": 3, "behavior": "click",
                   "timestamp": 1699990000}, ...]},          # oldest event first
     ...]

Raw IDs of features whose ID space is ``index`` (e.g. behaviour names) are mapped to indices with
the exported ``vocab/<table>.json``; unknown ones go to index 1 and are counted. The answer is one
JSON line per request: ``{"items": [...], "scores": [...], "unknown_ids": n}``.

With ``--state-db PATH`` and an export made with ``hytrec-export --stateful``, the model answers from
each user's kept state instead of the whole history (docs/export.md, "State store"): a request is
``{"user": "u1", "request_time": ..., "history": [...]}`` whose ``history`` holds only the events that
arrived since the user's last request; for each request, in order, the user's state is read from
the SQLite file (or started empty), updated with the new events, stored (durably) and scored. The
answer line adds ``"user"`` and ``"events"`` (events in the state). The store is
``hytrec_torchrec/serving/store.py`` (standard library and torch only), loaded by its path too::

    python examples/serve.py --model-dir runs/demo/export_stateful --state-db states.db --requests events.json

IDs of ``raw_int64`` features and times are integers (``123``, ``"123"`` and ``123.0`` are the same
ID). A batch of more than ``--max-batch`` requests (default 256) goes through the model in
consecutive chunks of that many, so its score matrix stays ``max-batch × items``; the answers are
those of one call (the same items; scores equal up to float32 rounding). Exit status: 0 answered; 1 ``--check-torch-only`` found a forbidden import; 2 a
bad argument, request (one line naming the request, event and field) or export directory (a
missing, garbled or mistyped model card or vocabulary file, one line naming the file and field; a
truncated ``model.pt``); 130 interrupted (Ctrl-C).

The model card and vocabulary files are checked by ``hytrec_torchrec/card.py``, the checks
``hytrec-eval --model`` runs; that file imports the standard library only and is loaded here by its
path (``../hytrec_torchrec/card.py``), so the package itself is not imported.
"""

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Tuple

import torch

FEATURES = ("item", "attribution", "category", "behavior")
INT64 = 1 << 63


#: requests per model call (``--max-batch``)
DEFAULT_MAX_BATCH = 256
CARD_CHECKS = Path(__file__).resolve().parents[1] / "hytrec_torchrec" / "card.py"
STATE_STORE = Path(__file__).resolve().parents[1] / "hytrec_torchrec" / "serving" / "store.py"


class RequestError(ValueError):
    """A request that cannot be answered; the message names the request, event and field."""


def load_by_path(name: str, path: Path, why: str) -> ModuleType:
    """The module in ``path``, loaded from its file (not as part of the package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise RequestError(f"{path}: not found (serve.py {why} with it; keep it beside the example)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def card_checks() -> ModuleType:
    """``hytrec_torchrec/card.py``, loaded from its file (not as part of the package)."""
    return load_by_path("hytrec_card_checks", CARD_CHECKS, "checks exports")


def state_store_module() -> ModuleType:
    """``hytrec_torchrec/serving/store.py`` (standard library and torch only), loaded from its file."""
    return load_by_path("hytrec_state_store", STATE_STORE, "keeps user states")


def read_json(path: Path, what: str) -> Any:
    """The JSON document at ``path``; unreadable or broken JSON is a :class:`RequestError`."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise RequestError(f"{what} {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"{what} {path}: not valid JSON ({exc})") from None


def as_int(value: Any, where: str) -> int:
    """A JSON integer ID or time: an int, an integral float (``123.0``) or a decimal string, in int64."""
    if isinstance(value, bool):
        raise RequestError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise RequestError(f"{where}: expected an integer, got {value!r}")
        value = int(value)
    elif isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise RequestError(f"{where}: expected an integer, got {value!r}") from None
    elif not isinstance(value, int):
        raise RequestError(f"{where}: expected an integer, got {type(value).__name__}")
    if not -INT64 <= value < INT64:
        raise RequestError(f"{where}: {value} does not fit in int64")
    return value


class Client:
    """Loads ``model.pt``, the model card and the vocabularies from an export directory."""

    def __init__(self, model_dir: Path, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        for name in ("model_card.json", "model.pt"):
            if not (model_dir / name).is_file():
                raise RequestError(f"--model-dir {model_dir}: no {name} (not a hytrec-export directory)")
        checks = card_checks()
        self.max_batch = max_batch
        self.card = self._checked(checks, model_dir / "model_card.json", checks.check_model_card)
        contract = self.card["input_contract"]["values"]
        self.required = [f for f in FEATURES if f in contract and contract[f]["required"]]
        if "item" not in self.required:
            raise RequestError(f"{model_dir / 'model_card.json'}: input_contract.values.item: expected a required "
                               "table (the model ranks items)")
        self.space = {f: contract[f]["id_space"] for f in self.required}
        self.vocab: Dict[str, Dict[str, Any]] = {}
        for f in FEATURES:
            path = model_dir / contract.get(f, {}).get("vocab_file", f"vocab/{f}.json")
            self.vocab[f] = self._checked(checks, path, lambda doc, f=f: checks.check_vocab_file(doc, f))
        self.to_index = {f: dict(zip(v["raw"], v["index"])) for f, v in self.vocab.items()}
        self.item_raw = dict(zip(self.vocab["item"]["index"], self.vocab["item"]["raw"]))
        self.model = self._load_model(model_dir / "model.pt")
        self.card_path = model_dir / "model_card.json"

    @staticmethod
    def _checked(checks: ModuleType, path: Path, check: Any) -> Any:
        """The JSON at ``path`` after ``check`` (a card check): a bad field names the file."""
        doc = read_json(path, "export file")
        try:
            check(doc)
        except checks.ModelCardError as exc:
            raise RequestError(f"{path}: {exc}") from None
        return doc

    @staticmethod
    def _load_model(path: Path) -> torch.jit.ScriptModule:
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any damage is the same one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RequestError(f"{path}: not a readable TorchScript file (truncated?): {first}") from None
        model.eval()
        return model

    def encode(self, feature: str, raw: Any, where: str) -> Tuple[int, bool]:
        """One raw ID → the value the model takes, and whether it is known."""
        if self.space[feature] == "raw_int64":
            value = as_int(raw, where)
            return value, str(value) in self.to_index[feature]
        index = self.to_index[feature].get(str(raw))
        return (1, False) if index is None else (int(index), True)

    def batch(self, requests: List[Dict[str, Any]], first: int = 0) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor],
                                                             torch.Tensor, List[int]]:
        """Requests → (values, lengths, request_time, unknown-ID count per request); errors number
        the requests from ``first``."""
        cols: Dict[str, List[int]] = {f: [] for f in self.required}
        cols["timestamp"] = []
        lengths: List[int] = []
        unknown: List[int] = []
        if not isinstance(requests, list) or not requests:
            raise RequestError(f"requests: expected a non-empty JSON list of requests, got "
                               f"{type(requests).__name__ if requests else 'an empty list'}")
        times: List[int] = []
        for r, req in enumerate(requests, start=first):
            if not isinstance(req, dict) or not isinstance(req.get("history"), list) or "request_time" not in req:
                raise RequestError(f"request {r}: expected an object with 'request_time' and a 'history' list")
            times.append(as_int(req["request_time"], f"request {r}, request_time"))
            n_unknown = 0
            for e, event in enumerate(req["history"]):
                if not isinstance(event, dict):
                    raise RequestError(f"request {r}, event {e}: expected an object, got {type(event).__name__}")
                for f in self.required + ["timestamp"]:
                    if f not in event:
                        raise RequestError(f"request {r}, event {e}: missing '{f}'")
                for f in self.required:
                    value, known = self.encode(f, event[f], f"request {r}, event {e}, {f}")
                    cols[f].append(value)
                    n_unknown += int(not known)
                cols["timestamp"].append(as_int(event["timestamp"], f"request {r}, event {e}, timestamp"))
            lengths.append(len(req["history"]))
            unknown.append(n_unknown)
        values = {k: torch.tensor(v, dtype=torch.int64) for k, v in cols.items()}
        lens = torch.tensor(lengths, dtype=torch.int64)
        return values, {k: lens for k in values}, torch.tensor(times, dtype=torch.int64), unknown

    def recommend(self, requests: List[Dict[str, Any]], k: int) -> List[Dict[str, Any]]:
        """Top-k items (raw IDs as strings) and scores for each request, at most ``max_batch``
        requests per model call; every request is checked before the first call."""
        if not isinstance(requests, list) or not requests:
            self.batch(requests)  # the one-line error of an empty or non-list body
        starts = range(0, len(requests), self.max_batch)
        chunks = [self.batch(requests[start:start + self.max_batch], start) for start in starts]
        return [answer for chunk in chunks for answer in self._answer(chunk, k)]

    def _answer(self, chunk: Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor, List[int]],
                k: int) -> List[Dict[str, Any]]:
        """One model call: the answers of a chunk made by :meth:`batch`."""
        values, lengths, times, unknown = chunk
        with torch.no_grad():
            try:
                ids, scores = self.model(values, lengths, times, k)
            except torch.jit.Error as exc:  # the model's own check: "builtins.ValueError: <message>"
                raise RequestError(model_message(exc)) from None
        return [self._answer_row(ids, scores, row, unknown[row]) for row in range(len(unknown))]

    def _answer_row(self, ids: torch.Tensor, scores: torch.Tensor, row: int, unknown: int) -> Dict[str, Any]:
        """Row ``row`` of a model answer (``ids``, ``scores [B, k']``) as raw item IDs and scores."""
        if self.space["item"] == "raw_int64":
            items = [str(i) for i in ids[row].tolist()]
        else:
            items = [self.item_raw[i] for i in ids[row].tolist()]
        return {"items": items, "scores": [round(s, 6) for s in scores[row].tolist()], "unknown_ids": unknown}

    def open_store(self, path: Path) -> Any:
        """The ``SQLiteStateStore`` at ``path`` for this model (a ``--stateful`` export only)."""
        if not self.card.get("stateful") or not hasattr(self.model, "init_state"):
            raise RequestError(f"--state-db: {self.card_path}: stateful is null: the model keeps no state; "
                               "export it with hytrec-export --stateful")
        fingerprint = int(self.model.init_state(1)["fingerprint"][0])
        try:
            return state_store_module().SQLiteStateStore(path, fingerprint)
        except ValueError as exc:
            raise RequestError(f"--state-db {exc}") from None

    def recommend_from_state(self, store: Any, requests: List[Dict[str, Any]], k: int) -> List[Dict[str, Any]]:
        """For each request in order (``user``, ``request_time``, ``history`` = the user's new events):
        get the user's state (or an empty one) → update → put → top-k from the state. Every request
        is checked before the first model call."""
        if not isinstance(requests, list) or not requests:
            self.batch(requests)  # the one-line error of an empty or non-list body
        users: List[str] = []
        for r, req in enumerate(requests):
            user = req.get("user") if isinstance(req, dict) else None
            if isinstance(user, bool) or not isinstance(user, (str, int)) or str(user) == "":
                raise RequestError(f"request {r}: expected a 'user' ID (a non-empty string or an integer) with "
                                   f"--state-db, got {user!r}")
            users.append(str(user))
        batches = [self.batch([req], r) for r, req in enumerate(requests)]
        out = []
        with torch.no_grad():
            for r, (user, (values, lengths, times, unknown)) in enumerate(zip(users, batches)):
                try:
                    state = store.get([user])[0]
                except ValueError as exc:
                    raise RequestError(f"request {r}: {exc}") from None
                try:
                    if state is None:
                        state = self.model.init_state(1)
                    state = self.model.update(state, values, lengths)
                    store.put(user, state)  # durable from here on
                    ids, scores = self.model.score_state(state, times, k)
                except torch.jit.Error as exc:
                    raise RequestError(f"request {r}: {model_message(exc)}") from None
                answer = {"user": user, "events": int(state["events"][0])}
                answer.update(self._answer_row(ids, scores, 0, unknown[0]))
                out.append(answer)
        return out


def model_message(exc: Exception) -> str:
    """The message of the model's own check (``builtins.ValueError: <message>``)."""
    return str(exc).strip().splitlines()[-1].replace("builtins.ValueError: ", "")


def demo_requests(client: Client, num: int, seed: int = 0) -> List[Dict[str, Any]]:
    """Random requests of known IDs, plus one with an unknown item and one with no history."""
    rng = random.Random(seed)
    now = 1_700_000_000
    reqs: List[Dict[str, Any]] = []
    for i in range(num):
        n = rng.randint(1, 300)
        times = sorted(now - rng.randint(0, 90 * 86_400) for _ in range(n))
        history = [{f: rng.choice(client.vocab[f]["raw"] or ["0"]) for f in FEATURES} for _ in range(n)]
        for event, t in zip(history, times):
            event["timestamp"] = t
        reqs.append({"request_time": now, "history": history})
    reqs[0]["history"][-1]["item"] = "987654321987"  # not in the vocabulary → unknown row
    reqs.append({"request_time": now, "history": []})
    return reqs


def demo_arrivals(client: Client, num: int, seed: int = 0) -> List[Dict[str, Any]]:
    """The demo requests as two arrivals per user (``demo-<i>``): the first half of each history,
    then the rest, so the second answer comes from a state that was stored and read back."""
    reqs = demo_requests(client, num, seed)
    first = [{"user": f"demo-{i}", "request_time": r["request_time"], "history": r["history"][:len(r["history"]) // 2]}
             for i, r in enumerate(reqs)]
    rest = [{"user": f"demo-{i}", "request_time": r["request_time"], "history": r["history"][len(r["history"]) // 2:]}
            for i, r in enumerate(reqs)]
    return first + rest


def read_requests(path: Path) -> Any:
    """The parsed requests file; a missing file or broken JSON is a :class:`RequestError`."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise RequestError(f"--requests {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"--requests {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                           f"{exc.msg})") from None


def serve(args: argparse.Namespace) -> int:
    """Answer the requests of ``args``; returns the exit status."""
    try:
        client = Client(args.model_dir.expanduser(), max_batch=args.max_batch)
        store = client.open_store(args.state_db.expanduser()) if args.state_db else None
        demo = demo_arrivals if store is not None else demo_requests
        requests = read_requests(args.requests.expanduser()) if args.requests else demo(client, args.num)
        start = time.perf_counter()
        if store is None:
            answers = client.recommend(requests, args.k)
        else:
            try:
                answers = client.recommend_from_state(store, requests, args.k)
            finally:
                store.close()
    except RequestError as exc:
        print(f"serve.py: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    for answer in answers:
        print(json.dumps(answer))
    print(f"# {len(requests)} requests in {elapsed * 1000:.1f} ms", file=sys.stderr)
    if args.check_torch_only:
        loaded = sorted(m for m in ("hytrec_torchrec", "torchrec", "fbgemm_gpu") if m in sys.modules)
        if loaded:
            print(f"# not torch-only: {loaded} imported", file=sys.stderr)
            return 1
    return 0


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, type=Path, help="hytrec-export output directory")
    parser.add_argument("--requests", type=Path, help="JSON list of requests (default: demo requests)")
    parser.add_argument("--k", type=int, default=10, help="results per request")
    parser.add_argument("--num", type=int, default=4, help="number of demo requests")
    parser.add_argument("--check-torch-only", action="store_true",
                        help="fail if hytrec_torchrec, torchrec or fbgemm_gpu got imported")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help=f"requests per model call; a larger batch runs in chunks (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--state-db", type=Path,
                        help="with a --stateful export: answer from each user's kept state, stored in this SQLite "
                             "file; a request's history is the user's new events")
    args = parser.parse_args(argv)
    if args.k < 1 or args.num < 1 or args.max_batch < 1:
        parser.error(f"--k, --num and --max-batch must be >= 1, got {args.k}, {args.num} and {args.max_batch}")
    try:
        return serve(args)
    except KeyboardInterrupt:
        print("serve.py: interrupted (Ctrl-C); answers not printed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
