"""examples/serve.py on a damaged export folder, and huge request batches (issue 43, "the one-line
contract": a damaged export read by serve.py; a cap and chunking for huge serving batches).

The export here is a stand-in, made in milliseconds: a scripted module with the exported model's
interface (``forward(values, lengths, request_time, k)``) whose scores depend on each request's own
history only, a model card and vocabulary files as hytrec-export writes them. The parity of chunked
and whole batches on a real export (same items, scores to float32 rounding) is
``tests/test_export.py::test_serve_chunks_equal_one_call``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ("item", "attribution", "category", "behavior")


def serve_module() -> ModuleType:
    """examples/serve.py, imported from its file."""
    spec = importlib.util.spec_from_file_location("hytrec_example_serve_faults", ROOT / "examples" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Scorer(torch.nn.Module):
    """Scores 8 items by a hash of each request's own history (no mixing across the batch)."""

    def forward(self, values: Dict[str, torch.Tensor], lengths: Dict[str, torch.Tensor],
                request_time: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        n = lengths["item"]
        owner = torch.repeat_interleave(torch.arange(n.numel()), n)
        total = torch.zeros(n.numel(), dtype=torch.int64).index_add_(0, owner, values["item"] * 7 + values["timestamp"])
        items = torch.arange(2, 10)
        scores = ((total[:, None] + request_time[:, None]) * items[None, :] % 97).to(torch.float32)
        top = torch.topk(scores, min(k, 8), dim=1)
        return items[top.indices] + 100, top.values


def _card() -> Dict[str, Any]:
    values: Dict[str, Any] = {f: {"required": f in ("item", "behavior"), "id_space": "raw_int64" if f == "item"
                                  else "index", "vocab_file": f"vocab/{f}.json", "table_rows": 10} for f in FEATURES}
    values["timestamp"] = {"required": True}
    return {"format": "hytrec-serving", "format_version": 1, "config": {}, "checkpoint": {"step": 2},
            "tables": {"storage": "float32"}, "input_contract": {"values": values}}


def _vocab(f: str) -> Dict[str, Any]:
    return {"table": f, "table_rows": 10, "raw": [str(100 + i) for i in range(2, 10)], "index": list(range(2, 10))}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve_export")
    torch.jit.script(_Scorer()).save(str(out / "model.pt"))
    (out / "model_card.json").write_text(json.dumps(_card()))
    (out / "vocab").mkdir()
    for f in FEATURES:
        (out / "vocab" / f"{f}.json").write_text(json.dumps(_vocab(f)))
    return out


def _damaged(export: Path, tmp: Path, damage: Callable[[Path], None]) -> Path:
    import shutil

    copy = tmp / "export"
    shutil.copytree(export, copy)
    damage(copy)
    return copy


def _edit(name: str, change: Callable[[Any], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        doc = json.loads((folder / name).read_text())
        change(doc)
        (folder / name).write_text(json.dumps(doc))
    return damage


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def _truncate(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:200])


def _set(*keys: str, value: Any) -> Callable[[Any], None]:
    def change(doc: Any) -> None:
        for k in keys[:-1]:
            doc = doc[k]
        doc[keys[-1]] = value
    return change


DAMAGES = [
    ("garbled card", _write("model_card.json", b"{\"format\": "), "model_card.json: not valid JSON"),
    ("card not an object", _write("model_card.json", b"[1, 2]"), "model_card.json: model card: expected a JSON object"),
    ("no input contract", _edit("model_card.json", lambda d: d.pop("input_contract")), "input_contract: expected a mapping"),
    ("required is a string", _edit("model_card.json", _set("input_contract", "values", "item", "required", value="yes")),
     "input_contract.values.item.required: expected true/false, got 'yes'"),
    ("id space unknown", _edit("model_card.json", _set("input_contract", "values", "behavior", "id_space", value=3)),
     "input_contract.values.behavior.id_space: expected one of"),
    ("vocab file outside", _edit("model_card.json", _set("input_contract", "values", "item", "vocab_file",
                                                         value="../../etc/passwd")),
     "input_contract.values.item.vocab_file: expected a relative path inside the export folder"),
    ("item not required", _edit("model_card.json", _set("input_contract", "values", "item", "required", value=False)),
     "input_contract.values.item: expected a required table"),
    ("vocab raw not strings", _edit("vocab/behavior.json", _set("raw", value=[1, 2])),
     "vocab/behavior.json: raw: expected a list of strings"),
    ("vocab missing", lambda folder: (folder / "vocab" / "category.json").unlink(), "category.json: No such file"),
    ("truncated model", _truncate("model.pt"), "model.pt: not a readable TorchScript file"),
    ("model is text", _write("model.pt", b"hello"), "model.pt: not a readable TorchScript file"),
]


@pytest.mark.parametrize("name,damage,needle", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_a_damaged_export_is_one_line_and_status_2(name: str, damage: Callable[[Path], None], needle: str,
                                                   export: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = _damaged(export, tmp_path, damage)
    assert serve_module().main(["--model-dir", str(folder)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("serve.py: ") and needle in lines[0], lines


def _requests(n: int) -> List[Dict[str, Any]]:
    return [{"request_time": 1_700_000_000 + r,
             "history": [{"item": 102 + (r + e) % 8, "behavior": "103", "timestamp": 1_699_000_000 + e}
                         for e in range(r % 5)]} for r in range(n)]


def test_a_big_batch_runs_in_chunks_with_the_answers_of_one_call(export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve = serve_module()
    client = serve.Client(export, max_batch=4)
    calls: List[int] = []
    model = client.model
    monkeypatch.setattr(client, "model", lambda values, lengths, times, k: calls.append(len(times)) or model(
        values, lengths, times, k))
    reqs = _requests(11)
    chunked = client.recommend(reqs, 3)
    assert calls == [4, 4, 3]
    client.max_batch = 100
    assert client.recommend(reqs, 3) == chunked and calls[-1] == 11
    assert serve.DEFAULT_MAX_BATCH >= 1 and serve.Client(export).max_batch == serve.DEFAULT_MAX_BATCH


def test_every_chunk_is_checked_before_the_first_call(export: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    reqs = _requests(9)
    reqs[7]["history"] = [{"item": "abc", "behavior": "103", "timestamp": 1}]
    (tmp_path / "req.json").write_text(json.dumps(reqs))
    serve = serve_module()
    assert serve.main(["--model-dir", str(export), "--requests", str(tmp_path / "req.json"), "--max-batch", "4"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "request 7, event 0, item: expected an integer, got 'abc'" in err  # numbered in the file
