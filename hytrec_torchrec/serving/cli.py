"""``hytrec-export --checkpoint DIR --out DIR [--int8]``: export a training checkpoint for serving.

Writes ``OUT/model.pt`` (TorchScript; loads with ``torch.jit.load`` without this package,
TorchRec or fbgemm), ``OUT/vocab/<table>.json`` and ``OUT/model_card.json`` (config, versions,
validation metrics, the exact input contract of ``forward``). ``--checkpoint`` is a run directory
(its latest checkpoint) or one checkpoint directory; a checkpoint of any world size is gathered
into one process. See docs/export.md.

Under TorchX/torchrun with several ranks only rank 0 exports; the others exit at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from hytrec_torchrec.cli import (enable_debug, entry_point, internal_error, plain, quiet_library_noise, report,
                                 require_stack, user_path)
from hytrec_torchrec.config import ConfigError
from hytrec_torchrec.launcher import stop_when_launcher_exits
from hytrec_torchrec.serving import DEFAULT_MAX_TOKENS_PER_PASS

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by the docs-commands test to check documented commands)."""
    parser = argparse.ArgumentParser(prog="hytrec-export", description=plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=user_path, help="run directory or checkpoint directory")
    parser.add_argument("--out", required=True, type=user_path,
                        help="output directory: created, or empty, or an earlier export with --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in --out (only its model.pt, model.pt2, "
                             "model_card.json and vocab/; any other entry there is an error)")
    parser.add_argument("--int8", action="store_true", help="row-wise int8 embedding tables")
    parser.add_argument("--data", default=None, type=user_path,
                        help="prepared dataset with the vocabularies (default: the checkpoint's data.path)")
    parser.add_argument("--allow-unchecked-vocab", action="store_true",
                        help="export a checkpoint whose ID vocabularies cannot be checked against the dataset "
                             "(no stored fingerprint, training data gone); the model card says so")
    parser.add_argument("--no-pt2", action="store_true", help="do not try torch.export (model.pt2)")
    parser.add_argument("--max-tokens-per-pass", type=int, default=DEFAULT_MAX_TOKENS_PER_PASS,
                        help="history events per tower pass when serving a batch (default "
                             "%(default)s; 0 = the whole batch in one pass)")
    parser.add_argument("--stateful", action="store_true",
                        help="add the kept-state methods (init_state, update, score_state; docs/export.md "
                             "'Serving from a kept state'); refused for models without a finite state")
    parser.add_argument("--repeat-items", type=int, default=0,
                        help="with --stateful: history items a state keeps per user for the repeat path, "
                             "least recently seen evicted first (default 0 = data.max_len)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (also HYTREC_DEBUG=1)")
    return parser


@entry_point("hytrec-export")
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit status (0 ok, 1 internal error, 2 bad input, 3 a
    dataset whose vocabularies are not the checkpoint's; one line, the traceback with ``--debug``
    or ``HYTREC_DEBUG=1``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        enable_debug()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    quiet_library_noise()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hytrec").setLevel(logging.INFO)
    # after the logging setup: importing torchrec configures the root logger when none is
    if require_stack("hytrec-export"):
        return 2
    # Imported after argument parsing and the stack check: --help answers without torch (seconds).
    from hytrec_torchrec.runtime.checkpoint import DamagedCheckpointError
    from hytrec_torchrec.runtime.data_check import VocabMismatchError
    from hytrec_torchrec.runtime.safe_load import UnsafeCheckpointError
    from hytrec_torchrec.serving.export import ExportError, export_checkpoint

    stop_when_launcher_exits("hytrec-export")  # a rank of a killed local torchx job stops too

    try:
        card = export_checkpoint(args.checkpoint, args.out, int8=args.int8, data=args.data,
                                 pt2=not args.no_pt2, max_tokens_per_pass=args.max_tokens_per_pass,
                                 overwrite=args.overwrite, allow_unchecked_vocab=args.allow_unchecked_vocab,
                                 stateful=args.stateful, repeat_items=args.repeat_items)
    except VocabMismatchError as exc:
        return report("hytrec-export", exc, 3)
    except (OSError, ExportError, ConfigError, ValueError, UnsafeCheckpointError,
            DamagedCheckpointError) as exc:
        return report("hytrec-export", exc, 2)
    except Exception as exc:  # noqa: BLE001 - one line unless --debug (hytrec_torchrec/cli.py)
        return internal_error("hytrec-export", exc)
    summary = {
        "out": args.out, "tables": card["tables"]["storage"], "step": card["checkpoint"]["step"],
        "validation": card["validation"]["last"], "pt2": card["torch_export"]["ok"],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
