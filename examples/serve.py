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

IDs of ``raw_int64`` features and times are integers (``123``, ``"123"`` and ``123.0`` are the same
ID). Exit status: 0 answered; 1 ``--check-torch-only`` found a forbidden import; 2 a bad argument,
export directory or request (one line naming the request, event and field).
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

FEATURES = ("item", "attribution", "category", "behavior")
INT64 = 1 << 63


class RequestError(ValueError):
    """A request that cannot be answered; the message names the request, event and field."""


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

    def __init__(self, model_dir: Path) -> None:
        for name in ("model_card.json", "model.pt"):
            if not (model_dir / name).is_file():
                raise RequestError(f"--model-dir {model_dir}: no {name} (not a hytrec-export directory)")
        self.card = json.loads((model_dir / "model_card.json").read_text())
        try:
            self.model = torch.jit.load(str(model_dir / "model.pt"), map_location="cpu")
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise RequestError(f"{model_dir / 'model.pt'}: not a readable TorchScript file (truncated?): "
                               f"{first}") from None
        self.model.eval()
        contract = self.card["input_contract"]["values"]
        self.space = {f: contract[f]["id_space"] for f in FEATURES}
        self.required = [f for f in FEATURES if contract[f]["required"]]
        self.vocab: Dict[str, Dict[str, Any]] = {}
        for f in FEATURES:
            self.vocab[f] = json.loads((model_dir / contract[f]["vocab_file"]).read_text())
        self.to_index = {f: dict(zip(v["raw"], v["index"])) for f, v in self.vocab.items()}
        self.item_raw = dict(zip(self.vocab["item"]["index"], self.vocab["item"]["raw"]))

    def encode(self, feature: str, raw: Any, where: str) -> Tuple[int, bool]:
        """One raw ID → the value the model takes, and whether it is known."""
        if self.space[feature] == "raw_int64":
            value = as_int(raw, where)
            return value, str(value) in self.to_index[feature]
        index = self.to_index[feature].get(str(raw))
        return (1, False) if index is None else (int(index), True)

    def batch(self, requests: List[Dict[str, Any]]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor],
                                                             torch.Tensor, List[int]]:
        """Requests → (values, lengths, request_time, unknown-ID count per request)."""
        cols: Dict[str, List[int]] = {f: [] for f in self.required}
        cols["timestamp"] = []
        lengths: List[int] = []
        unknown: List[int] = []
        if not isinstance(requests, list) or not requests:
            raise RequestError(f"requests: expected a non-empty JSON list of requests, got "
                               f"{type(requests).__name__ if requests else 'an empty list'}")
        times: List[int] = []
        for r, req in enumerate(requests):
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
        """Top-k items (raw IDs as strings) and scores for each request."""
        values, lengths, times, unknown = self.batch(requests)
        with torch.no_grad():
            try:
                ids, scores = self.model(values, lengths, times, k)
            except torch.jit.Error as exc:  # the model's own check: "builtins.ValueError: <message>"
                raise RequestError(str(exc).strip().splitlines()[-1].replace("builtins.ValueError: ", "")) from None
        out = []
        for row in range(len(requests)):
            if self.space["item"] == "raw_int64":
                items = [str(i) for i in ids[row].tolist()]
            else:
                items = [self.item_raw[i] for i in ids[row].tolist()]
            out.append({"items": items, "scores": [round(s, 6) for s in scores[row].tolist()],
                        "unknown_ids": unknown[row]})
        return out


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


def read_requests(path: Path) -> Any:
    """The parsed requests file; a missing file or broken JSON is a :class:`RequestError`."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise RequestError(f"--requests {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"--requests {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                           f"{exc.msg})") from None


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, type=Path, help="hytrec-export output directory")
    parser.add_argument("--requests", type=Path, help="JSON list of requests (default: demo requests)")
    parser.add_argument("--k", type=int, default=10, help="results per request")
    parser.add_argument("--num", type=int, default=4, help="number of demo requests")
    parser.add_argument("--check-torch-only", action="store_true",
                        help="fail if hytrec_torchrec, torchrec or fbgemm_gpu got imported")
    args = parser.parse_args(argv)
    if args.k < 1 or args.num < 1:
        parser.error(f"--k and --num must be >= 1, got {args.k} and {args.num}")
    try:
        client = Client(args.model_dir)
        requests = read_requests(args.requests) if args.requests else demo_requests(client, args.num)
        start = time.perf_counter()
        answers = client.recommend(requests, args.k)
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
