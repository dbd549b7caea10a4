"""Checkpoint → serving directory: TorchScript model, vocabularies, model card.

``export_checkpoint(checkpoint, out)`` writes::

    OUT/model.pt            TorchScript HyTRecServing (torch-only; model_card.json embedded)
    OUT/model_card.json     config, versions, validation metrics, input contract, tolerances
    OUT/vocab/<table>.json  raw ID ↔ index per table (for string IDs and for reading results)
    OUT/model.pt2           only if torch.export succeeds (it does not for this model; the
                            card's ``torch_export`` entry records the error)
    OUT/.hytrec-export      the marker of hytrec_torchrec/outputs.py (JSON: tool, state)

Example::

    card = export_checkpoint("runs/demo/train", "runs/demo/export", int8=False)
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import platform
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow.parquet as pq
import torch

from hytrec_torchrec.files import file_sha256, unwritable_dir
from hytrec_torchrec.outputs import (
    OutputError,
    OutputLock,
    clear_stale_siblings,
    only_entries,
    parents_made,
    staged_dir,
)
from hytrec_torchrec.runtime.data_check import check_vocab
from hytrec_torchrec.runtime.restore import checkpoint_config, config_dict, load_unsharded
from hytrec_torchrec.schema import TABLES
from hytrec_torchrec.serving.idmap import Vocab
from hytrec_torchrec.serving.module import DEFAULT_MAX_TOKENS_PER_PASS, HyTRecServing
from hytrec_torchrec.serving.ulim import UlimServing
from hytrec_torchrec.serving.state import StatefulServing, state_bytes_per_user

__all__ = ["export_checkpoint", "find_prepared", "read_vocabs", "build_serving", "example_request",
           "input_contract", "ExportError"]

log = logging.getLogger("hytrec.export")

#: documented int8 tolerance (docs/export.md; checked by tests/test_export.py).
INT8_SCORE_TOLERANCE = ("max |score_int8 - score_fp32| <= 0.05 * max |score_fp32| for 9 requests in 10 "
                        "(median <= 0.02); some histories more, never seen above 0.25")


class ExportError(RuntimeError):
    """An export input is missing or inconsistent; the message names the file."""


def find_prepared(state: Dict[str, Any], data: Optional[str | Path] = None) -> Path:
    """The prepared dataset the checkpoint was trained on (its vocabularies are exported).

    Tries ``data`` when given, else ``train_state["data_path"]`` as written (absolute, or relative
    to the current directory), then relative to the directory the job ran in (derived from the
    checkpoint path and the config's relative ``run.dir``).

    Raises:
        ExportError: naming every path tried.
    """
    if data is not None:
        candidates = [Path(data)]
    else:
        raw = Path(str(state.get("data_path") or state["config"]["data"]["path"]))
        candidates = [raw]
        run_dir = str(state.get("config", {}).get("run", {}).get("dir", ""))
        ckpt = Path(state["path"]).resolve()
        if not raw.is_absolute() and run_dir and not Path(run_dir).is_absolute():
            depth = len(Path(run_dir).parts)
            run_abs = ckpt.parent.parent  # RUN/checkpoints/step_N
            if len(run_abs.parents) >= depth:
                candidates.append(run_abs.parents[depth - 1] / raw)
    for c in candidates:
        if (c / "vocab").is_dir():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise ExportError(f"prepared dataset with vocab/ not found (tried {tried}); pass --data DIR")


def read_vocabs(prepared: Path, sizes: Dict[str, int]) -> Dict[str, Vocab]:
    """Every table's :class:`Vocab` from ``PREPARED/vocab/<table>.parquet``.

    Raises:
        ExportError: a file is missing or lists an index outside the checkpoint's table.
    """
    out: Dict[str, Vocab] = {}
    for name in TABLES:
        path = prepared / "vocab" / f"{name}.parquet"
        if not path.is_file():
            raise ExportError(f"{path}: vocabulary file missing")
        t = pq.read_table(path, columns=["raw", "index"])
        raw = [str(r) for r in t.column("raw").to_pylist()]
        index = t.column("index").to_numpy().astype(np.int64)
        size = int(sizes[name])
        if index.size and (index.min() < 2 or index.max() >= size):
            raise ExportError(f"{path}: index outside 2..{size - 1} (table size in the checkpoint); "
                              "was the checkpoint trained on this dataset?")
        out[name] = Vocab(name, size, raw, index)
    return out


def build_serving(model: torch.nn.Module, features: List[str], max_len: int,
                  vocabs: Dict[str, Vocab], int8: bool = False,
                  max_tokens_per_pass: int = DEFAULT_MAX_TOKENS_PER_PASS, stateful: bool = False,
                  repeat_items: int = 0) -> HyTRecServing:
    """The eager :class:`HyTRecServing` of an unsharded ``HyTRecModel`` (its weights copied).

    With ``stateful`` a :class:`~hytrec_torchrec.serving.state.StatefulServing` (the kept-state
    methods besides; ``repeat_items``: the items per user its repeat table keeps, 0 = ``max_len``);
    a model without a finite state raises ``ValueError`` naming the config key."""
    weights = {n: e.weight.detach().to("cpu", torch.float32) for n, e in model.embeddings.embeddings.items()}
    tower = copy.deepcopy(model.tower.net).to("cpu").eval()
    repeat = copy.deepcopy(model.repeat).to("cpu").eval() if getattr(model, "repeat", None) is not None else None
    if getattr(model, "ulim", None) is not None:  # ULIM: answered through the cascade
        if stateful:
            raise ValueError("serving from a kept state: model.kind: ulim reads the category interests, which "
                             "the state does not keep yet; export it without --stateful")
        return UlimServing(tower, weights, vocabs, features, max_len, head=copy.deepcopy(model.ulim).to("cpu"),
                           item_category=model.item_category.to("cpu"), temperature=model.loss.temperature,
                           top_categories=model.ulim_top_categories, int8=int8,
                           max_tokens_per_pass=max_tokens_per_pass, repeat=repeat).eval()
    if stateful:
        return StatefulServing(tower, weights, vocabs, features, max_len, int8=int8,
                               max_tokens_per_pass=max_tokens_per_pass, repeat=repeat,
                               repeat_items=repeat_items).eval()
    return HyTRecServing(tower, weights, vocabs, features, max_len, int8, max_tokens_per_pass, repeat=repeat).eval()


def check_state_smoke(serving: StatefulServing, scripted: torch.jit.ScriptModule,
                      request: Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor]) -> None:
    """The kept-state answer of ``request`` (one update from new users), scripted against eager and
    against the stateless answer of the same module; ``ExportError`` when they disagree."""
    values, lengths, t = request
    b = int(t.numel())
    with torch.no_grad():
        want = serving.scores(values, lengths, t)
        eager = serving.state_scores(serving.update(serving.init_state(b), values, lengths), t)
        got = scripted.state_scores(scripted.update(scripted.init_state(b), values, lengths), t)
    for name, s in (("eager", eager), ("scripted", got)):
        if not torch.allclose(s[:, 2:], want[:, 2:], atol=1e-5, rtol=1e-5):
            raise ExportError(f"the {name} kept-state answer disagrees with the full recompute on a smoke request")


def example_request(vocabs: Dict[str, Vocab], lengths: List[int], t0: int = 1_700_000_000,
                    seed: int = 0) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor]:
    """A well-formed request of known IDs (values, lengths, request_time) for smoke checks."""
    g = np.random.default_rng(seed)
    n = int(sum(lengths))
    values: Dict[str, torch.Tensor] = {}
    for name, v in vocabs.items():
        ids = v.int_ids()
        pool = ids if ids is not None else v.index
        if len(pool) == 0:
            pool = np.array([1], dtype=np.int64)
        values[name] = torch.from_numpy(g.choice(pool, size=n).astype(np.int64))
    values["timestamp"] = torch.from_numpy(t0 + np.sort(g.integers(0, 86_400 * 30, size=n))).to(torch.int64)
    lens = torch.tensor(lengths, dtype=torch.int64)
    return values, {k: lens.clone() for k in values}, torch.full((len(lengths),), t0 + 86_400 * 31)


def input_contract(vocabs: Dict[str, Vocab], features: List[str], max_len: int, dim: int,
                   cosine: bool = False) -> Dict[str, Any]:
    """The exact input/output contract of the exported ``forward`` (written to the model card)."""
    similarity = ("cosine similarity: dot products of the L2-normalised user and item vectors, in [-1, 1]"
                  if cosine else "dot products user · item")
    vals: Dict[str, Any] = {}
    for name in TABLES:
        space = vocabs[name].id_space()
        vals[name] = {
            "dtype": "int64", "shape": "[N]", "required": name in features,
            "id_space": space, "vocab_file": f"vocab/{name}.json", "table_rows": vocabs[name].size,
            "meaning": ("raw integer ID as in the raw events; IDs not in the vocabulary use the unknown row"
                        if space == "raw_int64" else
                        "dense index from vocab/" + name + ".json (raw IDs are not all integers); "
                        "0 = padding, 1 = unknown; values outside [0, table_rows) use the unknown row"),
        }
    vals["timestamp"] = {"dtype": "int64", "shape": "[N]", "required": True,
                         "meaning": "event time in seconds since the epoch, each request's events oldest first"}
    return {
        "signature": ("forward(values: Dict[str, Tensor], lengths: Dict[str, Tensor], "
                      "request_time: Tensor, k: int) -> Tuple[Tensor, Tensor]"),
        "values": vals,
        "lengths": ("Dict with the same keys as values; each [B] int64 events per request; all "
                    "equal; sum == values[key].numel()"),
        "request_time": "[B] int64 seconds: the time the recommendation is for (t_current of training)",
        "k": "int >= 1; k' = min(k, table_rows(item) - 2) results per request",
        "returns": {
            "ids": "[B, k'] int64, best first: raw item IDs (item id_space raw_int64) or item indices (index)",
            "scores": "[B, k'] float32 " + similarity + ", descending",
        },
        "rules": {
            "history_order": "events of a request must be ordered oldest first, as in training",
            "max_len": max_len,
            "long_history": f"a history longer than max_len={max_len} keeps its last {max_len} events",
            "empty_history": "length 0 is allowed; the answer is the tower's output for no events",
            "unknown_ids": "map to the unknown row (index 1); map ids yourself (vocab files) to count them",
            "excluded_results": "padding (0) and unknown (1) items are never returned; history items are not removed",
            "unused_features": "features the model does not use may be omitted; if given they are validated",
            "errors": ("malformed input raises ValueError inside the model (torch.jit.Error when loaded "
                       "from the file) naming the field: unknown or missing key, non-int64 dtype, "
                       "non-1-D tensor, lengths that differ between features, negative lengths, "
                       "lengths not summing to the values, request_time of the wrong size, k < 1"),
        },
        "other_methods": {
            "user_embedding(values, lengths, request_time)": f"[B, {dim}] float32 user embeddings"
                                                             + (" (L2-normalised)" if cosine else ""),
            "scores(values, lengths, request_time)": "[B, table_rows(item)] float32, columns 0 and 1 = -inf",
            "item_embeddings()": f"[table_rows(item), {dim}] float32 as scored (dequantized for int8"
                                 + (", L2-normalised)" if cosine else ")"),
            "item_ids(index)": "item indices -> ids as returned by forward",
        },
    }


def _versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("hytrec_torchrec", "torchrec", "fbgemm_gpu_cpu", "fbgemm_gpu"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def write_vocab_json(out: Path, vocab: Vocab) -> Path:
    """``OUT/vocab/<table>.json``: raw IDs (strings) and their dense indices."""
    path = out / "vocab" / f"{vocab.feature}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"table": vocab.feature, "id_space": vocab.id_space(), "table_rows": vocab.size,
           "pad_index": 0, "unknown_index": 1, "raw": vocab.raw,
           "index": [int(i) for i in vocab.index.tolist()]}
    path.write_text(json.dumps(doc))
    return path


def try_torch_export(serving: HyTRecServing, request: Tuple[Any, ...], path: Path) -> Dict[str, Any]:
    """Try ``torch.export.export`` of ``serving``; save ``path`` (.pt2) on success.

    Returns:
        ``{"ok": bool, "file": name or None, "error": "Type: first lines" or None}``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(serving, request, strict=False)
        torch.export.save(ep, str(path))
        return {"ok": True, "file": path.name, "error": None}
    except Exception as exc:  # noqa: BLE001 - any failure is recorded, export goes on
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        msg = f"{type(exc).__name__}: " + " | ".join(lines[:3])
        return {"ok": False, "file": None, "error": msg[:1500]}


TOOL = "hytrec-export"
#: what an export directory holds (its marker ``.hytrec-export`` included); ``--overwrite``
#: replaces a folder holding these and nothing else, whose model card is an export's
EXPORT_ENTRIES = (f".{TOOL}", "model.pt", "model.pt2", "model_card.json", "vocab")


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is an earlier export, recognised by content: its ``model_card.json`` (a
    regular file) says ``"format": "hytrec-serving"`` and it holds nothing but export entries."""
    card = folder / "model_card.json"
    try:
        if card.is_symlink() or not card.is_file():
            return False
        doc = json.loads(card.read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(doc, dict) and doc.get("format") == "hytrec-serving"
            and only_entries(folder, EXPORT_ENTRIES, dirs={"vocab"}))


def check_export_dir(out: Path, overwrite: bool) -> None:
    """Refuse an output path an export must not write into (before anything is loaded).

    Raises:
        ExportError: ``out`` is a file; or a non-empty directory without ``overwrite``; or, with
            ``overwrite``, a directory holding anything besides an earlier export's entries
            (:data:`EXPORT_ENTRIES`), which are named: nothing is removed then.
    """
    bad = unwritable_dir(out)
    if bad:
        raise ExportError(f"--out {out}: {bad}")
    if out.is_symlink():
        raise ExportError(f"--out {out}: a symbolic link; give the real folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ExportError(f"--out {out}: not empty; pass --overwrite to replace the export there")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_ENTRIES)
    if foreign:
        raise ExportError(f"--out {out}: holds {foreign} besides an export; --overwrite replaces only an "
                          "export's files, so nothing was removed")
    if not is_export(out):
        raise ExportError(f"--out {out}: its files are named like an export's but it has no hytrec-export "
                          "model card (or a link among them); --overwrite replaces only an export, so nothing "
                          "was removed")


def export_checkpoint(checkpoint: str | Path, out: str | Path, int8: bool = False,
                      data: Optional[str | Path] = None, pt2: bool = True,
                      max_tokens_per_pass: int = DEFAULT_MAX_TOKENS_PER_PASS,
                      overwrite: bool = False, allow_unchecked_vocab: bool = False,
                      stateful: bool = False, repeat_items: int = 0) -> Dict[str, Any]:
    """Export a training checkpoint (run dir or checkpoint dir, any world size) for serving.

    Args:
        checkpoint: ``RUN_DIR`` (latest checkpoint) or ``RUN_DIR/checkpoints/step_N``.
        out: output directory: absent or empty, or an earlier export with ``overwrite``
            (:func:`check_export_dir`). Under its lock, the export is written beside it
            (``.OUT.hytrec-export-tmp-PID``) and renamed into place when complete, so a failed
            export leaves ``out`` as it was (hytrec_torchrec/outputs.py).
        int8: row-wise int8 tables (docs/export.md) instead of float32.
        data: prepared dataset holding the vocabularies (default: the one the job trained on).
        pt2: also try ``torch.export`` to ``model.pt2``.
        max_tokens_per_pass: history events per tower pass in a served batch (0: whole batch);
            see :class:`~hytrec_torchrec.serving.module.HyTRecServing`.
        overwrite: replace an earlier export in ``out``.
        allow_unchecked_vocab: export a checkpoint whose ID vocabularies cannot be checked against
            ``data`` (no stored fingerprint, training data gone); otherwise refused
            (:func:`~hytrec_torchrec.runtime.data_check.check_vocab`).
        stateful: export a :class:`~hytrec_torchrec.serving.state.StatefulServing` (the kept-state
            methods besides the stateless ones; docs/export.md "Serving from a kept state"); a model
            without a finite state (softmax long layers, the paper's TADN) is refused.
        repeat_items: with ``stateful``, the history items a state keeps per user for the repeat
            path (0 = ``max_len``).

    Returns:
        The model card (also written to ``OUT/model_card.json``).

    Raises:
        VocabMismatchError: the dataset's vocabularies are not the checkpoint's (nothing written).
    """
    final = Path(out)
    check_export_dir(final, overwrite)
    options = dict(int8=int8, data=data, pt2=pt2, max_tokens_per_pass=max_tokens_per_pass,
                   allow_unchecked_vocab=allow_unchecked_vocab, stateful=stateful, repeat_items=repeat_items)
    try:
        with parents_made(final), OutputLock(final, TOOL):
            check_export_dir(final, overwrite)  # again, under the lock
            clear_stale_siblings(final, TOOL)
            with staged_dir(final, TOOL) as tmp:
                card = _export_into(tmp, checkpoint, **options)
    except OutputError as exc:
        raise ExportError(str(exc)) from None
    log.info("exported %s -> %s (%s tables)", card["checkpoint"]["path"], final, card["tables"]["storage"])
    return card


def _export_into(out: Path, checkpoint: str | Path, int8: bool, data: Optional[str | Path], pt2: bool,
                 max_tokens_per_pass: int, allow_unchecked_vocab: bool, stateful: bool = False,
                 repeat_items: int = 0) -> Dict[str, Any]:
    """The export of ``checkpoint`` written into the fresh folder ``out``; returns the model card."""
    started = time.monotonic()
    stage = lambda what: log.info("export: %s (%.1f s)", what, time.monotonic() - started)  # noqa: E731 - progress
    _, state = checkpoint_config(checkpoint)
    prepared = find_prepared(state, data)
    # the vocabularies exported must be the ones the model was trained with (the check resume
    # and evaluation run): same sizes are not enough, other IDs would map to the wrong rows
    vocab_check = check_vocab(state, prepared, state["path"], allow_unchecked=allow_unchecked_vocab)
    sizes = {k: int(v) for k, v in state["vocab_sizes"].items()}
    vocabs = read_vocabs(prepared, sizes)
    model, cfg, state = load_unsharded(state["path"])
    stage(f"checkpoint loaded, step {state.get('step')}")
    features = list(cfg.model.features)
    try:
        serving = build_serving(model, features, cfg.data.max_len, vocabs, int8, max_tokens_per_pass,
                                stateful=stateful, repeat_items=repeat_items)
    except ValueError as exc:
        raise ExportError(f"--stateful: {exc}") from None
    stage(f"serving module built ({'int8' if int8 else 'float32'} tables, vocabularies of {prepared})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation warning (docs/export.md)
        scripted = torch.jit.script(serving)
    stage("TorchScript compiled")
    request = example_request(vocabs, [5, 0, 3])
    with torch.no_grad():
        want = serving(*request, 10)
        got = scripted(*request, 10)
    if not torch.equal(want[0], got[0]) or not torch.allclose(want[1], got[1], atol=1e-5, rtol=0):
        raise ExportError("scripted model disagrees with the eager serving module on a smoke request")
    state_card: Optional[Dict[str, Any]] = None
    if isinstance(serving, StatefulServing):
        check_state_smoke(serving, scripted, request)
        state_card = {"repeat_items": serving.repeat_items, "bytes_per_user": state_bytes_per_user(serving),
                      "fingerprint": int(serving.state_fingerprint[0]),
                      "keys": {k: list(v) for k, v in serving.state_shapes.items()}}
    pt2_result = (try_torch_export(serving, request + (10,), out / "model.pt2") if pt2
                  else {"ok": False, "file": None, "error": "not attempted (--no-pt2)"})
    stage("smoke request checked" + (f"; torch.export {'ok' if pt2_result['ok'] else 'not possible'}" if pt2 else ""))
    vocab_files = {n: str(write_vocab_json(out, v).relative_to(out)) for n, v in vocabs.items()}
    history = list(state.get("history", []))
    card: Dict[str, Any] = {
        "format": "hytrec-serving", "format_version": 1,
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": {"model": "model.pt", "model_pt2": pt2_result["file"], "vocab": vocab_files},
        "checkpoint": {"path": str(Path(state["path"]).resolve()), "step": state.get("step"),
                       "epoch": state.get("epoch"), "world_size": state.get("world_size")},
        "prepared_data": str(prepared.resolve()),
        "vocab_check": vocab_check,
        "tables": {
            "storage": "int8_rowwise" if int8 else "float32",
            "rows": sizes, "dim": int(cfg.embeddings.dim),
            "int8_tolerance": INT8_SCORE_TOLERANCE if int8 else None,
        },
        "max_tokens_per_pass": max_tokens_per_pass,
        "validation": {"history": history, "last": history[-1] if history else None},
        "versions": _versions(),
        # required = what the module checks for: the tower's features, plus item (the repeat path's
        # history items) and behavior (its cycle features) where the repeat path reads them
        "input_contract": input_contract(vocabs, [f for f in serving.required if f != "timestamp"],
                                         cfg.data.max_len, int(cfg.model.embedding_dim),
                                         cfg.model.similarity == "cosine"),
        "torch_export": pt2_result,
        "stateful": state_card,
        "config": config_dict(cfg),
    }
    extra = {"model_card.json": json.dumps(card)}
    torch.jit.save(scripted, str(out / "model.pt"), _extra_files=extra)
    card["files"]["model_sha256"] = file_sha256(out / "model.pt")
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    stage(f"model.pt written ({(out / 'model.pt').stat().st_size / 1e6:.1f} MB)")
    return card
