"""``hytrec-prep``: the command line of data_prep.

    hytrec-prep INPUT OUTPUT [--config FILE] [--shard I/N] [--overwrite] [key=value ...]
    hytrec-prep --merge OUTPUT [SHARD_OUTPUT ...] [--overwrite]

INPUT is a Parquet/CSV file, a directory or a glob; ``movielens:DIR`` (or ``format=movielens``)
reads ``ratings.dat``/``movies.dat`` or RecBole ``*.inter``/``*.item`` from DIR, and
``completejourney:DIR`` Complete Journey's ``transactions.parquet``/``products.parquet``
(the formats: data_prep/sources.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from hytrec_torchrec.cli import enable_debug, entry_point, internal_error, report, user_path
from hytrec_torchrec.config import ConfigError, load_config, split_overrides

from .config import PrepConfig
from .errors import PrepInputError
from .merge import merge
from .prepare import prepare

__all__ = ["main", "parse_shard", "RAW_COLUMNS_HELP"]

#: the raw columns, for ``--help`` (docs/own_data.md has the full rules)
RAW_COLUMNS_HELP = """raw columns (rename with columns.NAME=yours, e.g. columns.user_id=customer):
  user_id, item_id     required; integers or strings
  timestamp            required; seconds since 1970 UTC (timestamp_unit=ms|us|ns), a Parquet
                       timestamp/date, or a date string read with timestamp_format='%Y-%m-%d %H:%M:%S'
                       (UTC unless the format has %z)
  behavior             optional; text such as click, add_to_cart, pay (absent: click)
  attribution_id, category_id   optional; integers or strings (absent: unknown)
guide: docs/own_data.md"""


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; ``"env"`` reads ``RANK``/``WORLD_SIZE``
    (set by torchrun/TorchX, so each process of a ``-j NxM`` job prepares its own shard)."""
    if text == "env":
        import os

        text = f"{os.environ.get('RANK', '0')}/{os.environ.get('WORLD_SIZE', '1')}"
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def _summary(meta: dict) -> str:
    lines = [
        f"rows_in={meta['rows_in']} events_out={meta['events_out']} users_out={meta['users_out']} "
        f"partitions={meta['num_partitions']} vocab={meta['vocab_sizes']}"
    ]
    for f in meta["filters"]:
        lines.append(f"  filter {f['name']}: users_removed={f['users_removed']} events_removed={f['events_removed']}")
    if meta["handling"]:
        lines.append(f"  handling: {json.dumps(meta['handling'])}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by the docs-commands test to check documented commands)."""
    ap = argparse.ArgumentParser(prog="hytrec-prep", description="Raw behaviour events -> prepared training data.",
                                 epilog=RAW_COLUMNS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("args", nargs="+", help="INPUT OUTPUT [key=value ...], or with --merge: OUTPUT [SHARD_OUTPUT ...]")
    ap.add_argument("--config", help="YAML PrepConfig (configs/prep/*.yaml)")
    ap.add_argument("--shard", type=parse_shard, default=(0, 1), help="I/N: process partitions p %% N == I")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier output of hytrec-prep (the dataset, or this shard's output)")
    ap.add_argument("--merge", action="store_true", help="merge shard outputs into OUTPUT/vocab and OUTPUT/meta.json")
    ap.add_argument("--debug", action="store_true", help="print the traceback of an error (also HYTREC_DEBUG=1)")
    return ap


@entry_point("hytrec-prep")
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (2 for bad input or config, 1 for an internal error;
    one line each, the traceback with ``--debug`` or ``HYTREC_DEBUG=1``)."""
    ap = build_parser()
    ns = ap.parse_intermixed_args(argv)
    if ns.debug:
        enable_debug()
    try:
        paths, overrides = split_overrides(ns.args)
        if ns.merge:
            folders = [user_path(a) for a in ns.args]  # every argument is a folder
            meta = merge(folders[0], folders[1:], overwrite=ns.overwrite)
            print(_summary(meta))
            return 0
        if len(paths) != 2:
            ap.error(f"expected INPUT OUTPUT, got {paths}")
        inp, out = paths
        cfg = load_config(PrepConfig, user_path(ns.config) if ns.config else None, overrides)
        meta = prepare(inp, out, cfg, shard=ns.shard, overwrite=ns.overwrite)
        print(_summary(meta))
        if ns.shard[1] > 1:
            print(f"shard {ns.shard[0]}/{ns.shard[1]} done; after all shards: hytrec-prep --merge {out}")
        return 0
    except (PrepInputError, ConfigError) as exc:
        return report("hytrec-prep", exc, 2, prefix="error: ")
    except OSError as exc:  # an output path that is a file, under a file, or not writable
        return report("hytrec-prep", exc, 2, prefix="error: ")
    except Exception as exc:  # noqa: BLE001 - one line unless --debug (hytrec_torchrec/cli.py)
        return internal_error("hytrec-prep", exc)


if __name__ == "__main__":
    sys.exit(main())
