"""Evaluation report: ``metrics.json``, ``report.md`` and PNG plots in one output directory.

Several models (each a result of :func:`~hytrec_torchrec.evaluation.evaluate.evaluate_checkpoint`)
give one side-by-side report. ``metrics.json`` layout::

    {
      "split": "test", "data": "...", "ks": [1, 10, ...], "catalog_size": 3706,
      "overall": {...}, "segments": {...},        # the first model's, for one-model convenience
      "models": {NAME: {"overall": {"hr@10": ..., "ndcg@10": ..., "mrr": ..., "auc": ...,
                                    "examples": n},
                        "segments": {"cold_start": {...}, "len[10,20)": {...}, ...},
                        "counts": {...}, "side_file": {...}, "timing": {...},
                        "diagnostics": {...}, ...}},
      "diagnostics": {...},                        # the first model's, for one-model convenience
      "config": {...}                              # the EvalConfig used
    }

``diagnostics`` (per model): the long-history diagnostics of
:mod:`~hytrec_torchrec.evaluation.diagnostics` (``status`` ``ok``, ``skipped`` with a ``reason``,
or ``disabled``); ``report.md`` has a "Long-history diagnostics" section with one row per model.

``ranks.parquet``: every evaluated example's target rank per model (``model``, ``user``,
``cutoff``, ``rank``, ``catalog``), for paired comparisons across runs
(:mod:`~hytrec_torchrec.evaluation.paired`, ``hytrec-compare``). With several models,
``metrics.json`` has ``"paired"`` (each model against the first, on the ``plot_metrics``) and
``report.md`` a table of those differences with their paired standard errors.

Plots: ``length_buckets.png`` — each of ``plot_metrics`` against the history-length bucket, one
line per model (matplotlib, Agg backend; empty buckets are gaps).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hytrec_torchrec.config import to_dict
from hytrec_torchrec.evaluation.paired import EVAL_TOOL, RANKS_FILE, compare, dataset_identity, markdown, write_ranks
from hytrec_torchrec.outputs import (
    OutputError,
    check_apart,
    check_replaceable,
    marker_path,
    only_entries,
    read_marker,
    staged_dir,
)
from hytrec_torchrec.ranking.metrics import metric_names

__all__ = ["write_report", "markdown_report", "diagnostics_markdown", "plot_length_buckets", "check_out",
           "is_eval_output", "EVAL_ENTRIES"]

#: what hytrec-eval writes into ``--out``; an earlier evaluation holds nothing else
EVAL_ENTRIES = frozenset({marker_path(Path("."), EVAL_TOOL).name, "metrics.json", "report.md", "length_buckets.png",
                          RANKS_FILE})
_METRICS_KEYS = ("split", "data", "ks", "models")


def _is_eval_metrics(path: Path) -> bool:
    """Whether ``path`` is a regular file holding the JSON hytrec-eval writes as metrics.json."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and all(k in doc for k in _METRICS_KEYS) and isinstance(doc["models"], dict)


def is_eval_output(folder: Path) -> bool:
    """Whether ``folder`` is a complete earlier output of hytrec-eval: its marker's JSON says so
    (or, written before the marker, its metrics.json is hytrec-eval's) and it holds nothing else."""
    doc = read_marker(folder, EVAL_TOOL)
    if doc is not None and doc.get("state") != "complete":
        return False
    if doc is None and not _is_eval_metrics(folder / "metrics.json"):
        return False
    return only_entries(folder, EVAL_ENTRIES)


def _looks_prepared(folder: Path) -> bool:
    """Whether ``folder`` holds a prepared dataset (hytrec-prep's marker, or its meta.json)."""
    if (folder / ".hytrec-prep").exists():
        return True
    try:
        doc = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "partition_hash" in doc


def check_out(out: str | Path, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    """Raise :class:`OutputError` unless ``--out`` may be written: outside every input, and absent,
    empty or (with ``overwrite``) an earlier evaluation. A prepared dataset or a folder holding
    anything else is refused with or without ``overwrite``."""
    check_apart(out, inputs, option="--out")
    folder = Path(out)
    if folder.is_dir() and not folder.is_symlink() and _looks_prepared(folder):
        raise OutputError(f"--out {out}: holds a prepared dataset, not an evaluation; choose another folder")
    check_replaceable(folder, tool=EVAL_TOOL, kind="evaluation", overwrite=overwrite, recognise=is_eval_output)

#: one line per diagnostic number, shown above the diagnostics tables of report.md.
DIAGNOSTICS_HELP = [
    "- **swap sensitivity**: mean 1 − cos(u, u′) after replacing each user's history older than "
    "the last K events by another sampled user's (K = `short_len`); near 0 means the model ignores "
    "events older than the last K.",
    "- **top-10 changed**: fraction of users whose top-10 recommendations (ordered, full catalog) "
    "change under that swap; 0 means old events never change what is recommended. For a model "
    "with the repeat path (model `repeat` column: yes) the top-10 ranks its final scores, bonus "
    "included, so it also counts far history read by that path.",
    "- **skipped**: sampled users with at most K history events (nothing to swap or remove).",
    "- **long contribution**: mean 1 − cos(u, u without the events older than the last K): how much "
    "the far history moves the user embedding at all (0 for a model without a long branch); "
    "top-10 changed (no far history): how often removing it changes the top-10.",
    "- **gate**: mean softmax weight of each MoE fusion expert (E1, E2, …); one expert near 1 "
    "means the fusion sends almost every user to it.",
    "- **influence(d)**: size of the gradient of the user embedding with respect to the input "
    "embeddings of the event d events back (d = 1: the last event before the target).",
    "- **retention(d)** = influence(d) / influence(K+1) on the users with at least d events; "
    "retention after 500 events = retention(K+500); near 0 means the model has forgotten events "
    "that far back.",
]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return out


def _paired(results: Sequence[Dict[str, Any]], metrics: Sequence[str]) -> List[Dict[str, Any]]:
    """Each model after the first against the first (:func:`~hytrec_torchrec.evaluation.paired.compare`)."""
    if len(results) < 2:
        return []
    return compare([(r["name"], r["example_ranks"]) for r in results], metrics, record_unpaired=True)


def markdown_report(results: Sequence[Dict[str, Any]], ecfg: Any, data: str,
                    paired: Optional[List[Dict[str, Any]]] = None) -> str:
    """The Markdown report text (overall table, paired differences, per-segment table, counts,
    plot link); ``paired``: the rows of ``_paired(results, ecfg.plot_metrics)`` when already
    computed."""
    ks = list(ecfg.ks)
    overall_cols = metric_names(ks)
    lines = [f"# Offline evaluation: split `{ecfg.split}` of `{data}`", ""]
    catalog = results[0]["counts"]["catalog_size"] if results else 0
    removed = bool(results and results[0]["model"].get("history_removed"))
    lines += [f"Full-catalog ranking over {catalog} items (ties count against the target; history "
              f"items {'are removed from each ranking' if removed else 'are not removed'}). "
              "Metrics are means over evaluated users.", ""]
    unchecked = [r["name"] for r in results if not r.get("vocab_check", {}).get("item_vocab_checked", True)]
    if unchecked:
        lines += [f"**Warning: the ID vocabulary of {', '.join(unchecked)} was NOT checked against this "
                  "dataset (`--allow-unchecked-vocab`): if the IDs differ, every metric here is wrong.**", ""]
    lines += ["## Overall", ""]
    lines += _table(["model", "step", "users"] + overall_cols,
                    [[r["name"], r["step"], r["overall"]["examples"]] + [r["overall"][c] for c in overall_cols]
                     for r in results])
    if paired is None:
        paired = _paired(results, ecfg.plot_metrics)
    if paired:
        lines += ["", "## Paired differences", "", markdown(paired, ecfg.plot_metrics).rstrip("\n")]
    seg_cols = list(ecfg.table_metrics)
    lines += ["", "## Segments", ""]
    lines += [f"Thresholds: cold-start ≤ {ecfg.segments.cold_start_max_history} history events; "
              f"silent-old: first event ≥ {ecfg.segments.silent_old_min_age_days:g} days and last "
              f"history event ≥ {ecfg.segments.silent_old_min_gap_days:g} days before the target; "
              f"ultra-long ≥ {ecfg.segments.ultra_long_min_history} events; lengths are untruncated "
              "history lengths.", ""]
    rows = []
    names = list(results[0]["segments"]) if results else []
    for seg in names:
        for r in results:
            s = r["segments"][seg]
            rows.append([seg, r["name"], s["examples"]] + [s[c] for c in seg_cols])
    lines += _table(["segment", "model", "users"] + seg_cols, rows)
    lines += ["", "![metrics by history length](length_buckets.png)", ""]
    lines += gate_markdown(results)
    lines += ulim_markdown(results, ks)
    lines += diagnostics_markdown(results, ecfg.diagnostics.distances if hasattr(ecfg, "diagnostics") else ())
    lines += ["## Counts", ""]
    for r in results:
        c = r["counts"]
        lines.append(
            f"- **{r['name']}** (`{r['checkpoint']}`): {c['users_eligible']} eligible users of "
            f"{c['users_total']} ({c['users_ineligible']} ineligible), {c['examples_evaluated']} "
            f"evaluated, {c['examples_skipped_by_max_batches']} skipped by `max_batches`; "
            f"{r['timing']['world_size']} rank(s) × {r['timing']['threads']} thread(s), "
            f"{r['timing']['eval_s']:.1f} s "
            f"({r['timing']['examples_per_s']:.0f} users/s)")
        side = r.get("side_file") or {}
        if side:
            lines.append(
                f"  - side file `{side['file']}`: {side['rows']} rows, {side['unknown_users']} unknown "
                f"users (not in the dataset's user vocabulary; ignored; e.g. {side['unknown_examples']}), "
                f"evaluated users without a value: {side.get('users_missing', {})}")
    return "\n".join(lines) + "\n"


def ulim_markdown(results: Sequence[Dict[str, Any]], ks: Sequence[int]) -> List[str]:
    """ULIM's next-category HR against the most-frequent-category baseline and its cascade against
    full-catalog scoring (``overall.next_category`` / ``overall.cascade``); no lines without ULIM."""
    ulim = [r for r in results if "next_category" in r["overall"]]
    if not ulim:
        return []
    lines = ["## ULIM: next category and cascade", "",
             "Next-category HR@K of the pointer-generator against ordering the user's history categories by "
             "count (most frequent first); paired difference at K = 5 ± one paired standard error. Cascade: "
             "recall@K when only the items of the top categories are scored, against all items.", ""]
    rows = []
    for r in ulim:
        nc, cas = r["overall"]["next_category"], r["overall"]["cascade"]
        d = nc["hr@5_minus_most_frequent"]
        rows.append([r["name"], nc["hr@1"], nc["hr@5"], nc["hr@10"], nc["most_frequent_hr@1"],
                     nc["most_frequent_hr@5"], nc["most_frequent_hr@10"],
                     f"{d['diff']:+.4f} ± {d['se']:.4f} (z {d['z']:+.1f})"])
    lines += _table(["model", "hr@1", "hr@5", "hr@10", "freq hr@1", "freq hr@5", "freq hr@10", "hr@5 − freq"], rows)
    lines += [""]
    rows = []
    for r in ulim:
        cas = r["overall"]["cascade"]
        rows.append([r["name"], cas["top_categories"], round(cas["items_scored"]), cas["catalog"]]
                    + [f"{cas[f'cascade_recall@{k}']:.4f} / {cas[f'recall@{k}']:.4f}" for k in ks])
    lines += _table(["model", "top categories", "items scored", "catalog"] + [f"recall@{k} cascade / full" for k in ks],
                    rows)
    return lines + [""]


def gate_markdown(results: Sequence[Dict[str, Any]]) -> List[str]:
    """The repeat gate's calibration of every model that has one (``repeat_gate`` of a result,
    :mod:`~hytrec_torchrec.evaluation.calibration`): predicted against observed repeat rate per
    segment, and the expected calibration error; no lines when no model has a gate."""
    gated = [r for r in results if r.get("repeat_gate")]
    if not gated:
        return []
    lines = ["## Repeat gate calibration", "",
             "The gate's mean probability that the next item is one of the user's history items "
             "(predicted) against the share of examples whose target is (observed); ECE over 10 "
             "equal-width probability bins.", ""]
    rows = []
    for r in gated:
        g = r["repeat_gate"]
        rows.append(["all", r["name"], g["examples"], _overall_gate(g, "predicted"), _overall_gate(g, "observed"),
                     g["ece"]])
        for seg, v in g["segments"].items():
            if v["examples"] and seg != "all":  # "all" is the first row; empty segments say nothing
                rows.append([seg, r["name"], v["examples"], v["predicted"], v["observed"], ""])
    lines += _table(["segment", "model", "users", "predicted", "observed", "ECE"], rows)
    return lines + [""]


def _overall_gate(g: Dict[str, Any], key: str) -> float:
    """Mean of ``key`` over every example, from the reliability bins."""
    n = sum(b["examples"] for b in g["bins"])
    if not n:
        return math.nan
    return round(sum(b[key] * b["examples"] for b in g["bins"] if b["examples"]) / n, 4)


def _ret(group: Dict[str, Any], d: int) -> Any:
    """retention(d) of one diagnostics summary, NaN when not available."""
    return group.get("retention", {}).get(str(d), math.nan)


def diagnostics_markdown(results: Sequence[Dict[str, Any]], distances: Sequence[int] = ()) -> List[str]:
    """The "Long-history diagnostics" section of report.md (lines): what each number means, one
    row per model overall, each model's retention profile (K+1, K+500 and ``distances``), and the
    per-segment values. Models whose diagnostics were skipped or disabled get a line with the reason."""
    diags = [(r["name"], r.get("diagnostics") or {"status": "disabled", "reason": "not computed"})
             for r in results]
    lines = ["## Long-history diagnostics", ""]
    ok = [(n, d) for n, d in diags if d.get("status") == "ok"]
    for n, d in diags:
        if d.get("status") != "ok":
            lines.append(f"- **{n}**: {d.get('status')} ({d.get('reason', '')})")
    if not ok:
        return lines + [""]
    if len(ok) != len(diags):
        lines.append("")
    lines += ["On a seeded sample of evaluated users per model (`diagnostics.users`); K = the model's "
              "`short_len`; distances d count events back from the most recent one. See "
              "docs/evaluation.md, \"Long-history diagnostics\".", ""]
    lines += DIAGNOSTICS_HELP + [""]

    def gate(g: Any) -> str:
        return " / ".join(f"{v:.3f}" for v in g) if g else "–"

    rows = []
    for n, d in ok:
        o = d["overall"]
        rows.append([n, d["short_len"], "yes" if d.get("repeat") else "no", o["users"], o["swap_sensitivity"],
                     o["swap_top10_changed"], o["swap_skipped"], o["long_contribution"], o["long_top10_changed"],
                     gate(o["gate_mean"]), o["retention_after_500"]])
    lines += _table(["model", "K", "repeat", "users", "swap sensitivity", "top-10 changed (swap)",
                     "skipped (≤ K events)", "long contribution", "top-10 changed (no far history)", "gate",
                     "retention after 500"], rows)
    fixed = [int(x) for x in distances]
    header = ["model", "influence(K+1)", "retention(K+500)"] + [f"retention({x})" for x in fixed]
    rows = []
    for n, d in ok:
        o = d["overall"]
        rows.append([n, o["influence"].get(str(d["reference_distance"]), math.nan), _ret(o, d["distance_500"])]
                    + [_ret(o, x) for x in fixed])
    lines += ["", "Retention profile (users with at least d events; – : no sampled user that long):", ""]
    lines += _table(header, rows)
    rows = []
    names = [s for s in (results[0]["segments"] if results else {})]
    for seg in names:
        for n, d in ok:
            g = d["segments"].get(seg)
            if g:
                rows.append([seg, n, g["users"], g["swap_sensitivity"], g["swap_top10_changed"],
                             g["long_contribution"], gate(g["gate_mean"]), g["retention_after_500"]])
    if rows:
        lines += ["", "Per segment (sampled users in each):", ""]
        lines += _table(["segment", "model", "users", "swap sensitivity", "top-10 changed (swap)",
                         "long contribution", "gate", "retention after 500"], rows)
    notes = [(n, d["notes"]) for n, d in ok if d.get("notes")]
    for n, nd in notes:
        lines.append("")
        lines += [f"- **{n}**: {k} not available: {v}" for k, v in nd.items()]
    return lines + [""]


#: buckets with fewer evaluated examples are drawn grey and not joined to the line.
SMALL_BUCKET = 30


def plot_length_buckets(results: Sequence[Dict[str, Any]], metrics: Sequence[str], buckets: Sequence[str],
                        path: str | Path) -> Path:
    """PNG: each metric against the history-length bucket, one line per model.

    Only buckets with examples get a tick, labelled with the example count; HR@K points carry
    ±1 binomial standard error bars (``√(p(1−p)/n)``); buckets with fewer than
    :data:`SMALL_BUCKET` examples are grey, unjoined and marked ``small``, so that a 3-user bucket
    at 0 does not read as a result.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = {b: max(int(r["segments"][b]["examples"]) for r in results) if results else 0 for b in buckets}
    shown = [b for b in buckets if counts[b] > 0]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.4), squeeze=False)
    x = list(range(len(shown)))
    for ax, m in zip(axes[0], metrics):
        for r in results:
            n = [int(r["segments"][b]["examples"]) for b in shown]
            y = [float(r["segments"][b][m]) for b in shown]
            big = [i for i in x if n[i] >= SMALL_BUCKET]
            err = ([math.sqrt(max(y[i] * (1 - y[i]), 0.0) / n[i]) for i in big] if m.startswith("hr@") else None)
            line = ax.errorbar([x[i] for i in big], [y[i] for i in big], yerr=err, marker="o", ms=4, capsize=3,
                               label=r["name"])
            small = [i for i in x if 0 < n[i] < SMALL_BUCKET]
            if small:
                ax.plot([x[i] for i in small], [y[i] for i in small], "o", ms=4, color="0.6",
                        markeredgecolor=line[0].get_color())
        for i, b in enumerate(shown):
            if counts[b] < SMALL_BUCKET:
                ax.axvspan(i - 0.4, i + 0.4, color="0.93", zorder=0)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{b[3:]}\nn={counts[b]:,}" + ("\nsmall" if counts[b] < SMALL_BUCKET else "")
                            for b in shown], fontsize=7)
        ax.set_xlabel("history length (events before the target)")
        ax.set_ylabel(m)
        note = " (±1 binomial SE)" if m.startswith("hr@") else ""
        ax.set_title(f"{m} by history length{note}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: str | Path, results: Sequence[Dict[str, Any]], ecfg: Any, data: str) -> Dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, ``ranks.parquet`` and ``length_buckets.png`` beside
    ``out_dir`` and rename the folder onto it when all are written (hytrec_torchrec/outputs.py: the
    caller holds the lock and has checked ``out_dir`` with :func:`check_out`); returns the paths."""
    out = Path(out_dir)
    names = [r["name"] for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must differ in one report: {names}")
    paired = _paired(results, ecfg.plot_metrics)
    doc: Dict[str, Any] = {
        "split": ecfg.split,
        "data": str(data),
        "data_identity": dataset_identity(data),
        "ks": list(ecfg.ks),
        "catalog_size": results[0]["counts"]["catalog_size"] if results else None,
        "overall": results[0]["overall"] if results else {},
        "segments": results[0]["segments"] if results else {},
        "models": {r["name"]: {k: v for k, v in r.items() if k != "example_ranks"} for r in results},
        "paired": paired,
        "diagnostics": results[0].get("diagnostics") if results else None,
        "config": to_dict(ecfg),
    }
    files = {"metrics": "metrics.json", "report": "report.md", "plot": "length_buckets.png", "ranks": RANKS_FILE}
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(out, EVAL_TOOL, finish={"data": str(data)}) as work:
        write_ranks(work / files["ranks"], {r["name"]: r["example_ranks"] for r in results})
        (work / files["metrics"]).write_text(json.dumps(_json_safe(doc), indent=2) + "\n")
        (work / files["report"]).write_text(markdown_report(results, ecfg, str(data), paired))
        plot_length_buckets(results, ecfg.plot_metrics, ecfg.segments.bucket_names(), work / files["plot"])
    return {k: out / name for k, name in files.items()}
