"""``hytrec-train --config FILE [key=value ...]``: run (or resume) a training job.

Run under TorchX/torchrun for several ranks; a plain invocation is a one-rank job (gloo on CPU).
Every config value can be overridden with a dotted ``key=value`` argument, e.g.
``data.path=/data/prepared train.max_steps=50 run.dir=runs/exp1``.

Exit status: 0 done; 1 internal error; 2 config error, or a damaged or unsafe checkpoint to resume
from; 3 bad input data (missing or malformed prepared dataset, a dataset whose vocabularies are
not the checkpoint's on resume) or a non-finite loss. Errors are one
line; ``--debug`` (or ``HYTREC_DEBUG=1``) prints the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from hytrec_torchrec.cli import (enable_debug, entry_point, internal_error, plain, quiet_library_noise, report,
                                 require_stack, user_path)
from hytrec_torchrec.config import ConfigError
from hytrec_torchrec.launcher import stop_when_launcher_exits


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by the docs-commands test to check documented commands)."""
    parser = argparse.ArgumentParser(prog="hytrec-train", description=plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=user_path, help="YAML job config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--overwrite", action="store_true",
                        help="with train.resume=false, clear an earlier run's outputs from run.dir (run.overwrite=true)")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error (also HYTREC_DEBUG=1)")
    return parser


@entry_point("hytrec-train")
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # options may come between the overrides, as in hytrec-prep
    if args.debug:
        enable_debug()
    if args.overwrite:
        args.overrides = list(args.overrides) + ["run.overwrite=true"]
    quiet_library_noise()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hytrec").setLevel(logging.INFO)
    # after the logging setup: importing torchrec configures the root logger when none is
    if require_stack("hytrec-train"):
        return 2
    # Imported after argument parsing and the stack check: --help answers without torch (seconds).
    from hytrec_torchrec.data.reader import DatasetFormatError
    from hytrec_torchrec.runtime.checkpoint import DamagedCheckpointError
    from hytrec_torchrec.runtime.config import load_job_config
    from hytrec_torchrec.runtime.data_check import VocabMismatchError
    from hytrec_torchrec.runtime.distributed import shutdown_distributed
    from hytrec_torchrec.runtime.safe_load import UnsafeCheckpointError
    from hytrec_torchrec.training.loop import NonFiniteLossError, Trainer

    stop_when_launcher_exits("hytrec-train")  # a rank of a killed local torchx job stops too

    prog = "hytrec-train"
    try:
        # ConfigError: a bad key or value, or a setting this machine cannot run (adam on CPU).
        cfg = load_job_config(args.config, list(args.overrides))
        trainer = Trainer(cfg)
        summary = trainer.fit()
    except ConfigError as exc:
        return report(prog, exc, 2, prefix="config error: ")
    except (UnsafeCheckpointError, DamagedCheckpointError) as exc:
        return report(prog, exc, 2)
    except (NonFiniteLossError, DatasetFormatError, VocabMismatchError) as exc:
        return report(prog, exc, 3)
    except Exception as exc:  # noqa: BLE001 - one line unless --debug (hytrec_torchrec/cli.py)
        return internal_error(prog, exc)
    if trainer.env.is_main:
        print(json.dumps({"final": summary}, indent=None))
    del trainer
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
