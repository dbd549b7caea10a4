"""Loading checkpoints that may come from someone else (issue 43, "Loading checkpoints").

The fields of ``train_state.json`` are checked by type and range, ``checkpoints/latest`` may not
lead outside its run, a ``rank_*.pt`` that ``weights_only`` refuses is an
:class:`UnsafeCheckpointError` (one line, exit status 2 in ``hytrec-train``: tests/bad_inputs),
and a checkpoint index may hold tensor entries read from its own directory only. Small
hand-made checkpoint folders; no model is trained here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from hytrec_torchrec.runtime.checkpoint import (
    DamagedCheckpointError,
    check_train_state,
    latest_checkpoint,
    read_rank_state,
    read_train_state,
)
from hytrec_torchrec.runtime.safe_load import UnsafeCheckpointError, check_index, safe_unpickle

GOOD: Dict[str, Any] = {
    "step": 2, "epoch": 0, "batch_in_epoch": 2, "world_size": 1, "data_path": "prepared",
    "vocab_sizes": {"item": 30, "attribution": 7, "category": 5, "behavior": 11, "user": 18},
    "vocab_fingerprints": {"item": "a" * 64, "behavior": "absent"},
    "config": {}, "history": [{"step": 2, "hr@10": 0.25}], "loss_log": [[2, 2.0]],
}


def _checkpoint(root: Path, name: str, state: Dict[str, Any]) -> Path:
    ckpt = root / "checkpoints" / name
    ckpt.mkdir(parents=True)
    (ckpt / "train_state.json").write_text(json.dumps(state))
    return ckpt


def test_a_well_formed_train_state_passes(tmp_path: Path) -> None:
    check_train_state(GOOD)
    assert read_train_state(_checkpoint(tmp_path, "step_00000002", GOOD))["step"] == 2


@pytest.mark.parametrize("field,value,needle", [
    ("step", -1, "step: expected an integer in 0.."),
    ("step", "2", "step: expected an integer"),
    ("world_size", 0, "world_size: expected an integer in 1.."),
    ("world_size", True, "world_size: expected an integer"),
    ("vocab_sizes", {"item": 10**15}, "vocab_sizes.item: expected an integer in 2.."),
    ("vocab_sizes", {"item": 1.5}, "vocab_sizes.item: expected an integer"),
    ("vocab_sizes", [30], "vocab_sizes: expected a mapping"),
    ("vocab_fingerprints", {"item": "x" * 10**6}, "vocab_fingerprints.item: expected a SHA-256"),
    ("batch_in_epoch", None, "batch_in_epoch: expected an integer"),
    ("data_path", 3, "data_path: expected a string"),
    ("config", [], "config: expected a mapping"),
    ("config", {"model": 5}, "config.model: expected a mapping"),
    ("history", [1], "history[0]: expected a mapping"),
    ("loss_log", [[1, "nan"]], "loss_log[0]: expected [step, loss]"),
])
def test_train_state_fields_are_checked(tmp_path: Path, field: str, value: Any, needle: str) -> None:
    ckpt = _checkpoint(tmp_path, "step_00000002", dict(GOOD, **{field: value}))
    with pytest.raises(DamagedCheckpointError, match=r"train_state.json: " + needle.replace("[", r"\[")) as info:
        read_train_state(ckpt)
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)


def test_a_missing_required_field_is_named(tmp_path: Path) -> None:
    state = {k: v for k, v in GOOD.items() if k != "vocab_sizes"}
    with pytest.raises(DamagedCheckpointError, match="vocab_sizes: required key is missing"):
        read_train_state(_checkpoint(tmp_path, "step_00000002", state))


@pytest.mark.parametrize("pointer", ["../../elsewhere/step_00000002", "/tmp/step_00000002", "step_2/../x", ""])
def test_latest_may_not_point_outside_its_run(tmp_path: Path, pointer: str) -> None:
    run = tmp_path / "run"
    _checkpoint(run, "step_00000002", GOOD)
    (run / "checkpoints" / "latest").write_text(pointer)
    with pytest.raises(DamagedCheckpointError, match="latest: names .* not a checkpoint of this run"):
        latest_checkpoint(run)


def test_latest_and_step_links_do_not_lead_out(tmp_path: Path) -> None:
    run, other = tmp_path / "run", tmp_path / "other"
    target = _checkpoint(other, "step_00000009", GOOD)
    _checkpoint(run, "step_00000002", GOOD)
    (run / "checkpoints" / "step_00000009").symlink_to(target)
    assert latest_checkpoint(run) == run / "checkpoints" / "step_00000002"  # the link is not a checkpoint
    (run / "checkpoints" / "latest").write_text("step_00000009")
    with pytest.raises(DamagedCheckpointError, match="symbolic link"):
        latest_checkpoint(run)
    (run / "checkpoints" / "latest").unlink()
    (run / "checkpoints" / "latest").symlink_to(other / "checkpoints" / "step_00000009")
    with pytest.raises(DamagedCheckpointError, match="latest: is a symbolic link"):
        latest_checkpoint(run)


class _TouchOnLoad:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def test_an_unsafe_rank_file_is_refused_without_running_it(tmp_path: Path) -> None:
    rank = tmp_path / "rank_00000.pt"
    torch.save({"torch": _TouchOnLoad(tmp_path / "PWNED")}, rank)
    refused = r"rank_00000.pt: refused by torch.load\(weights_only=True\): it names a global"
    with pytest.raises(UnsafeCheckpointError, match=refused):
        read_rank_state(rank)
    assert not (tmp_path / "PWNED").exists()
    torch.save({"torch": [1, 2]}, rank)
    with pytest.raises(DamagedCheckpointError, match="not a rank state"):
        read_rank_state(rank)
    rank.write_bytes(b"not a torch file")
    with pytest.raises(DamagedCheckpointError, match="not a readable rank state"):
        read_rank_state(rank)
    torch.save({"torch": torch.get_rng_state()}, rank)
    assert torch.equal(read_rank_state(rank)["torch"], torch.get_rng_state())


def _index(entry: Any, info: _StorageInfo) -> Metadata:
    return Metadata(state_dict_metadata={"model.w": entry}, storage_data={MetadataIndex("model.w"): info})


def _tensor_entry() -> TensorStorageMetadata:
    return TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size([2]),
                                 [ChunkStorageMetadata(torch.Size([0]), torch.Size([2]))])


def test_an_index_holds_tensors_read_from_its_own_folder_only() -> None:
    import pickle

    check_index(_index(_tensor_entry(), _StorageInfo("__0_0.distcp", 0, 8)))
    with pytest.raises(UnsafeCheckpointError, match="declares a bytes entry"):
        safe_unpickle(pickle.dumps(_index(BytesStorageMetadata(), _StorageInfo("x.distcp", 0, 8))))
    with pytest.raises(UnsafeCheckpointError, match="is a BytesStorageMetadata, not a tensor"):
        check_index(_index(BytesStorageMetadata(), _StorageInfo("__0_0.distcp", 0, 8)))
    for name in ("../outside.distcp", "/etc/passwd", "", ".."):
        with pytest.raises(UnsafeCheckpointError, match="not a file of the checkpoint directory"):
            check_index(_index(_tensor_entry(), _StorageInfo(name, 0, 8)))
    with pytest.raises(UnsafeCheckpointError, match="stream transforms"):
        check_index(_index(_tensor_entry(), _StorageInfo("__0_0.distcp", 0, 8, ["zstd/1"])))


def _card() -> Dict[str, Any]:
    item = {"dtype": "int64", "required": True, "id_space": "raw_int64", "table_rows": 30}
    return {"format": "hytrec-serving", "format_version": 1, "config": {"model": {}, "data": {}},
            "input_contract": {"values": {"item": item, "timestamp": {"required": True}}},
            "checkpoint": {"step": 2}, "tables": {"storage": "float32"}}


@pytest.mark.parametrize("path,value,needle", [
    (("format_version",), 2, "format: expected 'hytrec-serving' version 1"),
    (("config",), "x", "config: expected a mapping"),
    (("config", "model"), [], "config.model: expected a mapping"),
    (("input_contract", "values"), None, "input_contract.values: expected a mapping"),
    (("input_contract", "values", "item", "table_rows"), 10**12, "item.table_rows: expected an integer in 2.."),
    (("input_contract", "values", "item", "table_rows"), "30", "item.table_rows: expected an integer"),
    (("input_contract", "values", "item", "id_space"), "pickle", "item.id_space: expected one of"),
    (("input_contract", "values", "item", "required"), "yes", "item.required: expected true/false"),
    (("checkpoint", "step"), -3, "checkpoint.step: expected an integer >= 0"),
    (("tables", "storage"), "int4", "tables.storage: expected one of"),
])
def test_model_card_fields_are_checked(path: tuple, value: Any, needle: str) -> None:
    from hytrec_torchrec.card import ModelCardError, check_model_card

    check_model_card(_card())
    card = _card()
    node = card
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ModelCardError, match=needle.replace("(", r"\(")):
        check_model_card(card)


def test_exported_vocab_files_are_checked() -> None:
    from hytrec_torchrec.card import ModelCardError, check_vocab_file

    check_vocab_file({"table_rows": 5, "raw": ["7", "9"], "index": [2, 4]}, "item")
    for doc, needle in [({"table_rows": 5, "raw": ["7"], "index": [5]}, "index: expected integers in 2..4"),
                        ({"table_rows": 5, "raw": [7], "index": [2]}, "raw: expected a list of strings"),
                        ({"table_rows": 5, "raw": ["7"], "index": [2, 3]}, "index: expected a list of 1"),
                        ({"table_rows": -1, "raw": [], "index": []}, "table_rows: expected an integer")]:
        with pytest.raises(ModelCardError, match=needle):
            check_vocab_file(doc, "item")
