"""Paired comparison of models evaluated on the same examples (per-example target ranks).

Two models' metrics on one test split are means over the *same* users, so their difference has a
much smaller standard error than either mean: per example ``d_i = m_B(i) − m_A(i)`` (``m`` the
per-example metric of :func:`~hytrec_torchrec.ranking.metrics.per_example_metrics`), the
difference is ``mean(d)`` and its standard error ``std(d) / √n`` (sample std, ``ddof=1``), the
paired-sample (CLT) standard error; ``z = mean(d) / se``. For HR@K the counts of examples that
only B hits and only A hits (the discordant pairs of McNemar's test) come with it.

``hytrec-eval`` writes every evaluated example's rank to ``OUT/ranks.parquet`` (columns
``model``, ``user``, ``cutoff``, ``rank``, ``catalog``; one row per example and model), so runs
evaluated separately can be compared afterwards::

    hytrec-compare runs/ml1m/eval_sasrec runs/ml1m/eval_hytrec:hytrec_tb4020/step_00004020 \\
        --metrics hr@10 ndcg@10

The first argument is the baseline; ``DIR:MODEL`` picks one model of a multi-model report
(default: every model in DIR, in the file's order). Examples are matched on ``(user, cutoff)``;
runs that evaluated different example sets (another dataset, split or ``max_batches``) are an
error, not a silent intersection, and so are runs of different datasets (``data_identity`` in
``metrics.json``, or for evaluations written before it, their ``data`` fields) whose examples
happen to match. An unfinished evaluation (its ``.hytrec-eval`` marker is not complete) is refused.
``--json`` and ``--plot`` may not lie inside an evaluation compared, and replace an existing file
only with ``--overwrite`` (hytrec_torchrec/outputs.py).

A paired standard error covers the evaluation's noise for two *fixed* trained models; a model
trained again with another seed moves by more than that. With ``--seeds`` the runs are pairs of
trainings, one pair per seed (``BASE_1 MODEL_1 BASE_2 MODEL_2 ...``): each seed's paired
difference ``D_s`` is reported, and over the S seeds their mean with the standard error
``sd(D_s) / √S`` (:func:`over_seeds`), which counts the training's noise too::

    hytrec-compare --seeds E:short_s0 E:default_s0 E:short_s1 E:default_s1 E:short_s2 E:default_s2 --metrics hr@10

Example::

    >>> import numpy as np
    >>> a = np.array([1, 20, 3, 40]); b = np.array([1, 2, 30, 4])
    >>> row = paired_difference(a, b, np.full(4, 100), np.full(4, 100), ["hr@10"])["hr@10"]
    >>> row["diff"], row["b_only"], row["a_only"]
    (0.25, 2, 1)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hytrec_torchrec.cli import enable_debug, entry_point, internal_error, plain, report, user_path
from hytrec_torchrec.files import unwritable_dir
from hytrec_torchrec.outputs import OutputError, OutputLock, check_apart, incomplete_reason, write_file_staged

__all__ = ["RANKS_FILE", "EVAL_TOOL", "PairingError", "write_ranks", "read_ranks", "align", "paired_difference",
           "compare", "over_seeds", "dataset_identity", "main"]

#: the tool whose output folders hold ranks.parquet (its marker: ``.hytrec-eval``)
EVAL_TOOL = "hytrec-eval"

#: per-example ranks of every model of one ``hytrec-eval`` run, beside ``metrics.json``.
RANKS_FILE = "ranks.parquet"
RANK_COLUMNS = ("user", "cutoff", "rank", "catalog")


class PairingError(ValueError):
    """The compared runs did not evaluate the same examples, or a ranks file is missing/bad."""


def write_ranks(path: str | Path, tables: Dict[str, Dict[str, np.ndarray]]) -> Path:
    """Write ``{model: {"user", "cutoff", "rank", "catalog": [n] int64}}`` as one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names: List[str] = []
    cols: Dict[str, List[np.ndarray]] = {c: [] for c in RANK_COLUMNS}
    for name, t in tables.items():
        n = len(t["rank"])
        names += [name] * n
        for c in RANK_COLUMNS:
            cols[c].append(np.asarray(t[c], dtype=np.int64))
    arrays = {"model": pa.array(names, pa.string())}
    for c in RANK_COLUMNS:
        arrays[c] = pa.array(np.concatenate(cols[c]) if cols[c] else np.zeros(0, np.int64), pa.int64())
    path = Path(path)
    pq.write_table(pa.table(arrays), path)
    return path


def read_ranks(out_dir: str | Path) -> Dict[str, Dict[str, np.ndarray]]:
    """``{model: {column: [n] int64}}`` from ``out_dir/ranks.parquet``, models in file order.

    Raises:
        PairingError: no ranks file (an evaluation from before ranks were written: run
            ``hytrec-eval`` again) or a file without the expected columns.
    """
    import pyarrow.parquet as pq

    unfinished = incomplete_reason(Path(out_dir), EVAL_TOOL)
    if unfinished:
        raise PairingError(unfinished)
    path = Path(out_dir) / RANKS_FILE
    if not path.is_file():
        raise PairingError(f"{path}: no per-example ranks; evaluate the model again with hytrec-eval, "
                           "which writes them beside metrics.json")
    table = pq.read_table(path)
    missing = [c for c in ("model",) + RANK_COLUMNS if c not in table.column_names]
    if missing:
        raise PairingError(f"{path}: columns {missing} missing (has {table.column_names})")
    model = np.asarray(table.column("model").to_pylist(), dtype=object)
    cols = {c: table.column(c).to_numpy().astype(np.int64) for c in RANK_COLUMNS}
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for name in dict.fromkeys(model.tolist()):  # first-appearance order
        sel = model == name
        out[str(name)] = {c: v[sel] for c, v in cols.items()}
    return out


def dataset_identity(root: str | Path) -> Optional[str]:
    """SHA-256 naming a prepared dataset by content: its ``meta.json`` (without the timing and
    shard fields, which differ between equal runs) and the bytes of its vocabulary files; None
    when the folder has no readable ``meta.json``."""
    root = Path(root)
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    digest = hashlib.sha256()
    kept = {k: v for k, v in meta.items() if k not in ("timing_s", "merged_from_shards")}
    digest.update(json.dumps(kept, sort_keys=True).encode())
    vocab = root / "vocab"
    for f in sorted(vocab.glob("*.parquet")) if vocab.is_dir() else []:
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _data_of(directory: str) -> Tuple[Optional[str], Optional[str]]:
    """``(data, data_identity)`` of an evaluation folder's ``metrics.json`` (None where absent)."""
    try:
        doc = json.loads((Path(directory) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    data, ident = doc.get("data"), doc.get("data_identity")
    return (data if isinstance(data, str) else None), (ident if isinstance(ident, str) else None)


def check_same_data(directories: Sequence[str]) -> None:
    """Raise :class:`PairingError` when two evaluations were of different datasets: their
    ``data_identity`` differ, or (one written before it) their ``data`` fields differ."""
    seen = [(d, *_data_of(d)) for d in directories]
    seen = [s for s in seen if s[1] is not None or s[2] is not None]
    for d, data, ident in seen[1:]:
        d0, data0, ident0 = seen[0]
        differ = ident != ident0 if ident and ident0 else data != data0
        if differ:
            raise PairingError(f"{d0} and {d} evaluated different datasets ({data0} and {data}, per their "
                               "metrics.json): compare evaluations of one dataset")


def align(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray], name_a: str = "A",
          name_b: str = "B") -> Tuple[np.ndarray, np.ndarray]:
    """Index arrays ``(ia, ib)`` such that ``a[...][ia]`` and ``b[...][ib]`` are the same examples
    (matched on ``(user, cutoff)``) in the same order.

    Raises:
        PairingError: the two example sets differ (counts of examples only in each), or one of
            them lists an example twice.
    """
    keys = []
    for t, name in ((a, name_a), (b, name_b)):
        k = np.stack([t["user"], t["cutoff"]], axis=1)
        if len(np.unique(k, axis=0)) != len(k):
            raise PairingError(f"{name}: the same (user, cutoff) example appears more than once")
        keys.append(k)
    order = [np.lexsort((k[:, 1], k[:, 0])) for k in keys]
    ka, kb = keys[0][order[0]], keys[1][order[1]]
    if not np.array_equal(ka, kb):
        sa = {tuple(r) for r in ka.tolist()}
        sb = {tuple(r) for r in kb.tolist()}
        raise PairingError(
            f"{name_a} and {name_b} evaluated different examples ({len(sa - sb)} only in {name_a}, "
            f"{len(sb - sa)} only in {name_b}, {len(sa & sb)} in both): compare evaluations of one "
            "dataset, split and max_batches")
    return order[0], order[1]


def _z(diff: float, se: float) -> float:
    """diff / se; 0 for no difference and no spread, NaN for a difference without a spread."""
    return diff / se if se > 0 else (0.0 if diff == 0 else math.nan)


def paired_difference(rank_a: np.ndarray, rank_b: np.ndarray, catalog_a: np.ndarray, catalog_b: np.ndarray,
                      metrics: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Per metric: ``a`` and ``b`` (means), ``diff`` = b − a, ``se`` (paired), ``z``, ``n``, and
    ``b_only`` / ``a_only``: examples where B's value is above A's / below it (for HR@K the
    examples only B / only A hits). Inputs: aligned ``[n]`` ranks and catalog sizes."""
    ks = sorted({int(m.split("@")[1]) for m in metrics if "@" in m}) or [1]
    # torch and the metrics are imported here, not at the top, so that ``hytrec-compare --help``
    # answers at once (importing torch takes seconds)
    import torch

    from hytrec_torchrec.ranking.metrics import per_example_metrics

    va = per_example_metrics(torch.from_numpy(np.asarray(rank_a)), ks, torch.from_numpy(np.asarray(catalog_a)))
    vb = per_example_metrics(torch.from_numpy(np.asarray(rank_b)), ks, torch.from_numpy(np.asarray(catalog_b)))
    out: Dict[str, Dict[str, float]] = {}
    for m in metrics:
        if m not in va:
            raise PairingError(f"metrics: unknown metric {m!r} (use hr@K, ndcg@K, mrr, auc)")
        a, b = va[m].numpy(), vb[m].numpy()
        d = b - a
        n = len(d)
        diff = float(d.mean()) if n else math.nan
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        z = _z(diff, se)
        out[m] = {"a": float(a.mean()) if n else math.nan, "b": float(b.mean()) if n else math.nan,
                  "diff": diff, "se": se, "z": z, "n": n,
                  "b_only": int((d > 0).sum()), "a_only": int((d < 0).sum())}
    return out


def compare(models: Sequence[Tuple[str, Dict[str, np.ndarray]]], metrics: Sequence[str],
            record_unpaired: bool = False) -> List[Dict[str, object]]:
    """Each model after the first against the first: ``[{"model", "baseline", metric: {...}}]``.

    With ``record_unpaired`` a model whose examples differ from the baseline's gets
    ``{"model", "baseline", "error": message}`` instead of stopping the comparison (the report
    of a multi-model ``hytrec-eval`` run, whose checkpoints may select different eligible users)."""
    (base_name, base), rows = models[0], []
    for name, t in models[1:]:
        try:
            ia, ib = align(base, t, base_name, name)
        except PairingError as exc:
            if not record_unpaired:
                raise
            rows.append({"model": name, "baseline": base_name, "error": str(exc)})
            continue
        res = paired_difference(base["rank"][ia], t["rank"][ib], base["catalog"][ia], t["catalog"][ib], metrics)
        rows.append({"model": name, "baseline": base_name, **res})
    return rows


def over_seeds(rows: Sequence[Dict[str, object]], metrics: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Per metric, over S >= 2 rows of :func:`compare`, each one seed's pair of trainings:
    ``diff`` = the mean of the per-seed paired differences ``D_s``, ``se`` = ``sd(D_s) / √S``
    (sample std, ``ddof=1``: the training's and the evaluation's noise together), ``z`` =
    diff / se, ``seeds`` = S, ``within_se`` = the root mean square of the per-seed paired standard
    errors (the evaluation's noise alone), ``min`` / ``max`` of the ``D_s``.

    Raises:
        PairingError: fewer than two rows, or a row that could not be paired.
    """
    if len(rows) < 2:
        raise PairingError(f"--seeds: need at least two seeds (pairs of runs), got {len(rows)}")
    out: Dict[str, Dict[str, float]] = {}
    for m in metrics:
        cells = []
        for r in rows:
            if "error" in r:
                raise PairingError(f"--seeds: {r['model']} is not paired with {r['baseline']}: {r['error']}")
            cell = r[m]
            assert isinstance(cell, dict)
            cells.append(cell)
        d = np.array([c["diff"] for c in cells], dtype=float)
        s = len(d)
        se = float(d.std(ddof=1) / math.sqrt(s))
        diff = float(d.mean())
        out[m] = {"diff": diff, "se": se, "z": _z(diff, se),
                  "seeds": s, "within_se": float(math.sqrt(np.mean([c["se"] ** 2 for c in cells]))),
                  "min": float(d.min()), "max": float(d.max())}
    return out


def markdown_seeds(rows: Sequence[Dict[str, object]], summary: Dict[str, Dict[str, float]],
                   metrics: Sequence[str]) -> str:
    """A Markdown table of the per-seed rows and their :func:`over_seeds` summary."""
    lines = ["Paired differences per seed (each row one pair of trainings; ± the paired standard error "
             "of that pair's evaluation):", "", "| pair | model − baseline | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for i, r in enumerate(rows):
        cells = []
        for m in metrics:
            v = r[m]
            assert isinstance(v, dict)
            cells.append(f"{v['b']:.4f} − {v['a']:.4f} = {v['diff']:+.4f} ± {v['se']:.4f}")
        lines.append(f"| {i + 1} | {r['model']} − {r['baseline']} | " + " | ".join(cells) + " |")
    s = next(iter(summary.values()))["seeds"]
    lines += ["", f"Over the {s} seeds: the mean difference ± its standard error over seeds (sd / √{s}; "
              "the training's noise and the evaluation's), z, the range of the seeds' differences, and "
              "the paired standard error of one seed (the evaluation's noise alone, root mean square):", "",
              "| metric | mean difference | z | range over seeds | one seed's paired se |", "|---|---|---|---|---|"]
    for m in metrics:
        v = summary[m]
        lines.append(f"| {m} | {v['diff']:+.4f} ± {v['se']:.4f} | {v['z']:+.1f} | {v['min']:+.4f} … "
                     f"{v['max']:+.4f} | {v['within_se']:.4f} |")
    return "\n".join(lines) + "\n"


def markdown(rows: Sequence[Dict[str, object]], metrics: Sequence[str]) -> str:
    """A Markdown table of :func:`compare`'s rows: per metric ``b − a ± se (z)``."""
    if not rows:
        return ""
    lines = [f"Paired differences against `{rows[0]['baseline']}` (same examples; ± one paired "
             "standard error; z = difference / se; for HR@K, examples only the model hits / only "
             "the baseline hits):", "",
             "| model | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | not paired: {r['error']} |" + " |" * (len(metrics) - 1))
            continue
        cells = []
        for m in metrics:
            v = r[m]
            assert isinstance(v, dict)
            cell = f"{v['b']:.4f} − {v['a']:.4f} = {v['diff']:+.4f} ± {v['se']:.4f} (z {v['z']:+.1f})"
            if m.startswith("hr@"):
                cell += f", {v['b_only']} vs {v['a_only']}"
            cells.append(cell)
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_differences(rows: Sequence[Dict[str, object]], metrics: Sequence[str], path: str | Path) -> Path:
    """PNG: one panel per metric, a bar per model with its paired difference from the baseline and
    ±1.96 paired standard errors (a bar whose whiskers cross 0 is not a significant difference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paired = [r for r in rows if "error" not in r]
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(3.2, 1.1 * len(paired) + 1.6) * len(metrics), 3.8),
                             squeeze=False)
    for ax, m in zip(axes[0], metrics):
        diffs = [float(r[m]["diff"]) for r in paired]  # type: ignore[index]
        errs = [1.96 * float(r[m]["se"]) for r in paired]  # type: ignore[index]
        x = list(range(len(paired)))
        colours = ["tab:green" if d - e > 0 else "tab:red" if d + e < 0 else "0.6" for d, e in zip(diffs, errs)]
        ax.bar(x, diffs, yerr=errs, capsize=4, color=colours)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels([str(r["model"]) for r in paired], rotation=20, ha="right", fontsize=8)
        ax.set_title(m, fontsize=10)
        ax.set_ylabel("paired difference (±1.96 SE)")
        ax.grid(alpha=0.3, axis="y")
    baseline = str(paired[0]["baseline"]) if paired else "baseline"
    # the baseline once above all panels (a long model name in every panel's title ran into the next)
    fig.suptitle(textwrap.fill(f"model − {baseline}, paired on the same examples", width=110), fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def by_history_length(models: Sequence[Tuple[str, Dict[str, np.ndarray]]], edges: Sequence[int]
                      ) -> List[Tuple[str, List[Tuple[str, Dict[str, np.ndarray]]]]]:
    """The models' examples split into history-length buckets ``len[a,b)`` (the last one open,
    ``len[a,inf)``; ``cutoff`` is the untruncated history length, as hytrec-eval's segments use):
    ``[(bucket name, models restricted to it)]``. Every model is cut by its own ``cutoff`` column,
    so paired examples stay paired."""
    # imported here: segments imports torch, and ``hytrec-compare --help`` must answer at once
    from hytrec_torchrec.evaluation.segments import length_bucket_names

    if not edges:
        return []
    bounds = list(edges) + [None]
    out = []
    for name, lo, hi in zip(length_bucket_names(edges), bounds[:-1], bounds[1:]):
        part = []
        for model, t in models:
            keep = t["cutoff"] >= lo
            if hi is not None:
                keep &= t["cutoff"] < hi
            part.append((model, {c: v[keep] for c, v in t.items()}))
        out.append((name, part))
    return out


def by_side_file(models: Sequence[Tuple[str, Dict[str, np.ndarray]]], side_file: str, data: str,
                 column: str = "kind", user_column: str = "user_id"
                 ) -> List[Tuple[str, List[Tuple[str, Dict[str, np.ndarray]]]]]:
    """The models' examples split by a user-level column of a side file (raw user IDs, mapped to
    indices through ``data``'s ``vocab/user.parquet``; e.g. ``data_prep.target_kinds``' ``kind``):
    ``[("COLUMN=VALUE", models restricted to its users)]`` in sorted value order; users absent
    from the side file are in no bucket.

    Raises:
        PairingError: the side file or the user vocabulary cannot be read, or lacks a column.
    """
    import pyarrow.parquet as pq

    try:
        side = pq.read_table(side_file)
        vocab = pq.read_table(Path(data) / "vocab" / "user.parquet", columns=["raw", "index"])
    except Exception as exc:  # pyarrow raises several types for a missing or bad file
        raise PairingError(f"--side-file {side_file} / --data {data}: {exc}") from None
    for c in (user_column, column):
        if c not in side.column_names:
            raise PairingError(f"--side-file {side_file}: no column {c!r} (columns: {side.column_names})")
    index_of = dict(zip((str(r) for r in vocab.column("raw").to_pylist()), vocab.column("index").to_pylist()))
    value_of = {index_of[str(u)]: str(v) for u, v in zip(side.column(user_column).to_pylist(),
                                                           side.column(column).to_pylist()) if str(u) in index_of}
    out = []
    for value in sorted(set(value_of.values())):
        users = np.array(sorted(i for i, v in value_of.items() if v == value), dtype=np.int64)
        part = [(model, {c: v[np.isin(t["user"], users)] for c, v in t.items()}) for model, t in models]
        out.append((f"{column}={value}", part))
    return out


def _split_arg(arg: str) -> Tuple[str, Optional[str]]:
    """``DIR`` -> ``(DIR, None)``; ``DIR:MODEL`` -> ``(DIR, MODEL)``."""
    if not Path(arg).is_dir() and ":" in arg:
        directory, model = arg.rsplit(":", 1)
        return directory, model
    return arg, None


def _load_arg(arg: str) -> List[Tuple[str, Dict[str, np.ndarray]]]:
    """``DIR`` (every model in DIR/ranks.parquet) or ``DIR:MODEL`` (one)."""
    directory, model = _split_arg(arg)
    tables = read_ranks(directory)
    if model is None:
        return list(tables.items())
    if model not in tables:
        raise PairingError(f"{directory}/{RANKS_FILE}: no model {model!r} (has {list(tables)})")
    return [(model, tables[model])]


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by the docs-commands test to check documented commands)."""
    parser = argparse.ArgumentParser(
        prog="hytrec-compare", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Paired differences between models evaluated by hytrec-eval on the same examples "
                    "(the first model is the baseline). " + plain((__doc__ or "").split("\n\n")[1]))
    parser.add_argument("runs", nargs="+", type=user_path, help="hytrec-eval output directories, DIR or DIR:MODEL")
    parser.add_argument("--metrics", nargs="+", default=["hr@10", "ndcg@10", "hr@50", "hr@200", "mrr"],
                        help="per-example metrics to compare: hr@K, ndcg@K (K any cutoff), mrr "
                             "(default: %(default)s)")
    parser.add_argument("--json", type=user_path, help="also write the comparison as JSON to this file")
    parser.add_argument("--plot", type=user_path, help="also draw the differences with ±1.96 SE into this PNG")
    parser.add_argument("--length-buckets", nargs="+", type=int, metavar="EDGE",
                        help="also compare within history-length buckets [E1,E2), ..., [En,inf) of "
                             "the untruncated history (e.g. 1 200 500 1000)")
    parser.add_argument("--side-file", type=user_path,
                        help="also compare within the user groups of a side file's column (e.g. the "
                             "kinds of python -m data_prep.target_kinds; raw user IDs)")
    parser.add_argument("--side-column", default="kind", help="the side file's group column (default %(default)s)")
    parser.add_argument("--data", type=user_path,
                        help="the prepared dataset whose user vocabulary maps the side file's raw IDs "
                             "(default: the data recorded in the first evaluation's metrics.json)")
    parser.add_argument("--seeds", action="store_true",
                        help="the runs are pairs of trainings, one pair per seed, in order: BASE_1 MODEL_1 "
                             "BASE_2 MODEL_2 ... (DIR:MODEL each); report each seed's paired difference and "
                             "their mean with its standard error over seeds (which counts the training's "
                             "noise, not only the evaluation's); not with --length-buckets, --side-file, --plot")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --json or --plot file (never one inside a compared evaluation)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (also HYTREC_DEBUG=1)")
    return parser


def check_outputs(args: argparse.Namespace) -> None:
    """Raise :class:`OutputError` unless ``--json`` and ``--plot`` may be written: outside every
    compared evaluation, not a folder nor under a file, an existing file only with ``--overwrite``."""
    inputs = [_split_arg(a)[0] for a in args.runs]
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if not path:
            continue
        check_apart(path, inputs, option=option)
        bad = unwritable_dir(Path(path).parent)
        if bad or Path(path).is_dir() or Path(path).is_symlink():
            raise OutputError(f"{option} {path}: {bad or 'is a folder or a symbolic link, not a file'}")
        if Path(path).exists() and not args.overwrite:
            raise OutputError(f"{option} {path}: exists (use --overwrite to replace it)")
    if args.json and args.plot and Path(args.json).resolve() == Path(args.plot).resolve():
        raise OutputError(f"--json and --plot are the same file {args.json}")


def _write_outputs(args: argparse.Namespace, doc: object, rows: Sequence[Dict[str, object]]) -> None:
    """``--json`` and ``--plot``, each under its lock, written beside and renamed into place."""
    if args.json:
        with OutputLock(args.json, "hytrec-compare"):
            text = json.dumps(doc, indent=2) + "\n"
            write_file_staged(args.json, "hytrec-compare", lambda tmp: Path(tmp).write_text(text))
    if args.plot:
        with OutputLock(args.plot, "hytrec-compare"):
            write_file_staged(args.plot, "hytrec-compare", lambda tmp: plot_differences(rows, args.metrics, tmp))


def _main_seeds(args: argparse.Namespace, models: Sequence[Tuple[str, Dict[str, np.ndarray]]]) -> int:
    """``--seeds``: consecutive models are one seed's (baseline, model) pair; print and write the
    per-seed rows and :func:`over_seeds`. Raises :class:`PairingError` for a bad pairing."""
    if args.length_buckets or args.side_file or args.plot:
        raise PairingError("--seeds does not combine with --length-buckets, --side-file or --plot")
    if len(models) % 2:
        raise PairingError(f"--seeds: the runs must be pairs (BASE_1 MODEL_1 BASE_2 MODEL_2 ...), got "
                           f"{len(models)} models: {[n for n, _ in models]}")
    rows = [compare(models[i:i + 2], args.metrics)[0] for i in range(0, len(models), 2)]
    summary = over_seeds(rows, args.metrics)
    print(markdown_seeds(rows, summary, args.metrics), end="")
    try:
        _write_outputs(args, {"seeds": rows, "over_seeds": summary}, rows)
    except (OutputError, OSError) as exc:
        return report("hytrec-compare", exc, 2)
    return 0


@entry_point("hytrec-compare")
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # options may come between the runs, as in hytrec-prep
    if args.debug:
        enable_debug()
    try:
        check_outputs(args)
    except OutputError as exc:
        return report("hytrec-compare", exc, 2)
    try:
        models: List[Tuple[str, Dict[str, np.ndarray]]] = []
        for arg in args.runs:
            models += _load_arg(arg)
        check_same_data(list(dict.fromkeys(_split_arg(a)[0] for a in args.runs)))
        if len(models) < 2:
            raise PairingError(f"need at least two models, got {[n for n, _ in models]}")
        names = [n for n, _ in models]
        if len(set(names)) != len(names):
            models = [(f"{n}#{i + 1}", t) for i, (n, t) in enumerate(models)]
        if args.seeds:
            return _main_seeds(args, models)
        rows = compare(models, args.metrics)
        edges = args.length_buckets or []
        if any(b <= a for a, b in zip(edges, edges[1:])) or any(e < 0 for e in edges):
            raise PairingError(f"--length-buckets: edges must be >= 0 and increasing, got {edges}")
        groups = by_history_length(models, edges)
        if args.side_file:
            data = args.data or _data_of(_split_arg(args.runs[0])[0])[0]
            if not data:
                raise PairingError("--side-file needs --data (the first evaluation records no data path)")
            groups += by_side_file(models, args.side_file, data, args.side_column)
        buckets = [(name, part, len(part[0][1]["rank"])) for name, part in groups]
        bucket_rows = [(name, n, compare(part, args.metrics) if n > 1 else []) for name, part, n in buckets]
    except PairingError as exc:
        return report("hytrec-compare", exc, 3)
    except Exception as exc:  # noqa: BLE001 - one line unless --debug (hytrec_torchrec/cli.py)
        return internal_error("hytrec-compare", exc)
    print(markdown(rows, args.metrics), end="")
    for name, n, brows in bucket_rows:
        print(f"\n### {name}: {n} examples\n")
        print(markdown(brows, args.metrics) if brows else "too few examples to pair\n", end="")
    doc = rows if not bucket_rows else {"all": rows, "buckets": {name: brows for name, _, brows in bucket_rows}}
    try:
        _write_outputs(args, doc, rows)
    except (OutputError, OSError) as exc:
        return report("hytrec-compare", exc, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
