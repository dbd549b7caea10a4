"""``hytrec-eval``: offline evaluation of one or more models on a prepared dataset.

    hytrec-eval --checkpoint RUN_DIR|CHECKPOINT_DIR [--checkpoint ...] --data PREPARED_DIR \\
        --out OUT_DIR [--overwrite] [--config configs/eval/default.yaml] [key=value ...]

``--model EXPORT_DIR/model.pt`` (``hytrec-export``; repeatable, mixable with --checkpoint)
evaluates an exported TorchScript model: every rank holds the whole model and scores its users.
Writes OUT_DIR/metrics.json (overall and per segment: hr@K, ndcg@K for K in 1,10,50,100,200,500,
mrr, auc), OUT_DIR/report.md (Markdown tables) and OUT_DIR/length_buckets.png (metric against
history-length bucket, one line per model). Several --checkpoint arguments give one side-by-side
report. Long-history diagnostics (does the model use events older than its short window?) are
computed on rank 0 for a sample of the users (``diagnostics.users=256``, 0 disables; docs/evaluation.md). Runs on one process or under torchrun/TorchX (``launch/components.py:evaluate``): the item
table is row-wise sharded and every rank scores its own rows. Overrides: evaluation keys
(``split=valid``, ``max_batches=10``, ``threads=1`` beside a training job,
``segments.side_file=users.parquet``, ``segments.cold_start_max_history=10``) or the checkpoint's job config (``data.batch_size=256``).
``--out`` must be absent, empty, or (with ``--overwrite``) an earlier evaluation; a folder holding
anything else (a prepared dataset, the user's own files) is refused either way, and so is an --out
inside an input. The report is written beside --out and renamed onto it when complete, under a
lock, so an interrupted evaluation leaves the earlier one whole (hytrec_torchrec/outputs.py).
Exit codes: 0 ok, 1 internal error, 2 bad config/arguments (or an --out it will not write), 3 bad input (vocabulary mismatch, no
eligible users, bad side file, missing or malformed dataset, missing, damaged or unsafe checkpoint,
unreadable exported model). Errors are one line; ``--debug`` (or ``HYTREC_DEBUG=1``) prints the
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from hytrec_torchrec.cli import (enable_debug, entry_point, internal_error, plain, quiet_library_noise, report,
                                 require_stack, user_path)
from hytrec_torchrec.config import ConfigError
from hytrec_torchrec.files import unwritable_dir
from hytrec_torchrec.launcher import stop_when_launcher_exits
from hytrec_torchrec.outputs import OutputError, OutputLock, clear_stale_siblings, make_parents, remove_empty


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by the docs-commands test to check documented commands)."""
    parser = argparse.ArgumentParser(prog="hytrec-eval", description=plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=[], type=user_path,
                        help="run directory (its latest checkpoint) or checkpoint directory; repeatable")
    parser.add_argument("--model", action="append", default=[], type=user_path,
                        help="exported TorchScript model (hytrec-export); repeatable")
    parser.add_argument("--name", action="append", default=[],
                        help="display names, in --checkpoint order (default: run directory names)")
    parser.add_argument("--data", required=True, type=user_path, help="prepared dataset directory")
    parser.add_argument("--out", required=True, type=user_path, help="output directory for metrics.json, report.md, *.png")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier evaluation in --out (never a folder holding anything else)")
    parser.add_argument("--config", type=user_path, help="YAML evaluation config (configs/eval/default.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--allow-unchecked-vocab", action="store_true",
                        help="evaluate a checkpoint whose ID vocabulary cannot be checked (no stored fingerprint, "
                             "training data gone); the report says so")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error (also HYTREC_DEBUG=1)")
    return parser


@entry_point("hytrec-eval")
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # options may come between the overrides, as in hytrec-prep
    if args.debug:
        enable_debug()
    if args.allow_unchecked_vocab:
        args.overrides = list(args.overrides) + ["allow_unchecked_vocab=true"]
    if not args.checkpoint and not args.model:
        parser.error("give at least one --checkpoint or --model")
    n_models = len(args.checkpoint) + len(args.model)
    if args.name and len(args.name) != n_models:
        parser.error(f"--name given {len(args.name)} times for {n_models} --checkpoint/--model")
    bad_out = unwritable_dir(args.out)
    if bad_out:  # found now, not after the whole evaluation has run
        print(f"hytrec-eval: --out {args.out}: {bad_out}", file=sys.stderr)
        return 2

    quiet_library_noise()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hytrec").setLevel(logging.INFO)
    # after the logging setup: importing torchrec configures the root logger when none is
    if require_stack("hytrec-eval"):
        return 2
    # Imported here, after argument parsing and the stack check, so that --help and argument
    # errors answer without importing torch and torchrec (seconds).
    from hytrec_torchrec.evaluation.evaluate import load_eval_config
    from hytrec_torchrec.evaluation.report import check_out

    stop_when_launcher_exits("hytrec-eval")  # a rank of a killed local torchx job stops too

    try:
        ecfg, job_overrides = load_eval_config(args.config, list(args.overrides))
    except ConfigError as exc:
        return report("hytrec-eval", exc, 2, prefix="config error: ")
    # --out is checked, and locked by the process that writes it, before any work
    lock = OutputLock(args.out, "hytrec-eval")
    made: list[Path] = []  # folders above --out made for it: removed again if the evaluation fails
    try:
        check_out(args.out, args.overwrite, [args.data, *args.checkpoint, *args.model])
        if os.environ.get("RANK", "0") == "0":
            made = make_parents(args.out)
            lock.acquire()
            check_out(args.out, args.overwrite, [args.data, *args.checkpoint, *args.model])  # under the lock
            clear_stale_siblings(args.out, "hytrec-eval")  # the unfinished report of an interrupted run
    except (OutputError, OSError) as exc:
        lock.release()
        remove_empty(made)
        return report("hytrec-eval", exc, 2, prefix=f"--out {args.out}: " if isinstance(exc, OSError) else "")
    rc = 1
    try:
        rc = _evaluate(args, ecfg, job_overrides)
        return rc
    finally:
        lock.release()
        if rc != 0:
            remove_empty(made)


def _evaluate(args: argparse.Namespace, ecfg: Any, job_overrides: list[str]) -> int:
    """Evaluate every model and write the report (``--out`` checked and locked by the caller)."""
    import torch

    from hytrec_torchrec.data.reader import DatasetFormatError
    from hytrec_torchrec.evaluation.evaluate import (
        ExportedModelError,
        NoEligibleUsersError,
        VocabMismatchError,
        check_vocab,
        evaluate_checkpoint,
        evaluate_exported,
        model_name,
    )
    from hytrec_torchrec.evaluation.report import write_report
    from hytrec_torchrec.evaluation.segments import SideFileError
    from hytrec_torchrec.runtime.checkpoint import DamagedCheckpointError
    from hytrec_torchrec.runtime.distributed import DistEnv, init_distributed, shutdown_distributed
    from hytrec_torchrec.runtime.restore import checkpoint_config
    from hytrec_torchrec.runtime.safe_load import UnsafeCheckpointError

    if ecfg.threads is not None:
        torch.set_num_threads(ecfg.threads)
    names = args.name or [model_name(c) for c in args.checkpoint + args.model]
    if len(set(names)) != len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]

    env: Optional[DistEnv] = None
    results = []
    try:
        # cheap checks of every input before any process group or model is built
        first = None
        for ckpt in args.checkpoint:
            cfg, state = checkpoint_config(ckpt, job_overrides)
            check_vocab(state, args.data, state["path"], ecfg.allow_unchecked_vocab)
            first = first or cfg
        for m in args.model:
            if not Path(m).is_file():
                raise FileNotFoundError(f"{m}: exported model not found")
        if first is not None:
            env = init_distributed(first.train.backend, first.train.device)
        else:
            env = init_distributed("auto", "cpu")
        jobs = [("checkpoint", c) for c in args.checkpoint] + [("model", m) for m in args.model]
        for (kind, path), name in zip(jobs, names):
            run = evaluate_checkpoint if kind == "checkpoint" else evaluate_exported
            res = run(path, args.data, ecfg, env, job_overrides, name=name)
            results.append(res)
            if env.is_main:
                o = res["overall"]
                print(f"{name}: users={o['examples']} hr@10={o['hr@10']:.4f} ndcg@10={o['ndcg@10']:.4f} "
                      f"mrr={o['mrr']:.4f} auc={o['auc']:.4f} ({res['timing']['eval_s']:.1f} s)", flush=True)
    except (VocabMismatchError, NoEligibleUsersError, SideFileError, FileNotFoundError, DatasetFormatError,
            UnsafeCheckpointError, DamagedCheckpointError, ExportedModelError) as exc:
        shutdown_distributed()
        return report("hytrec-eval", exc, 3)
    except ConfigError as exc:
        shutdown_distributed()
        return report("hytrec-eval", exc, 2, prefix="config error: ")
    except Exception as exc:  # noqa: BLE001 - one line unless --debug (hytrec_torchrec/cli.py)
        shutdown_distributed()
        return internal_error("hytrec-eval", exc)
    if env is not None and env.is_main:
        try:
            paths = write_report(args.out, results, ecfg, args.data)
        except OSError as exc:  # the unfinished report is removed; an earlier one stays whole
            shutdown_distributed()
            return report("hytrec-eval", exc, 2, prefix=f"--out {args.out}: ")
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
