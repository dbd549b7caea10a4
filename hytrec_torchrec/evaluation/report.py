"""Evaluation report: ``metrics.json``, ``report.md`` and PNG plots in one output directory.

Several models (each a result of :func:`~hytrec_torchrec.evaluation.evaluate.evaluate_checkpoint`)
give one side-by-side report. ``metrics.json`` layout::

    {
      "split": "test", "data": "...", "ks": [1, 10, ...], "catalog_size": 3706,
      "overall": {...}, "segments": {...},        # the first model's, for one-model convenience
      "models": {NAME: {"overall": {"hr@10": ..., "ndcg@10": ..., "mrr": ..., "auc": ...,
                                    "examples": n},
                        "segments": {"cold_start": {...}, "len[10,20)": {...}, ...},
                        "counts": {...}, "side_file": {...}, "timing": {...}, ...}},
      "config": {...}                              # the EvalConfig used
    }

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

__all__ = ["write_report", "markdown_report", "plot_length_buckets"]


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
    from hytrec_torchrec.evaluation.paired import compare

    if len(results) < 2:
        return []
    return compare([(r["name"], r["example_ranks"]) for r in results], metrics, record_unpaired=True)


def markdown_report(results: Sequence[Dict[str, Any]], ecfg: Any, data: str,
                    paired: Optional[List[Dict[str, Any]]] = None) -> str:
    """The Markdown report text (overall table, paired differences, per-segment table, counts,
    plot link); ``paired``: the rows of ``_paired(results, ecfg.plot_metrics)`` when already
    computed."""
    ks = list(ecfg.ks)
    overall_cols = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr", "auc"]
    lines = [f"# Offline evaluation: split `{ecfg.split}` of `{data}`", ""]
    catalog = results[0]["counts"]["catalog_size"] if results else 0
    removed = bool(results and results[0]["model"].get("history_removed"))
    lines += [f"Full-catalog ranking over {catalog} items (ties count against the target; history "
              f"items {'are removed from each ranking' if removed else 'are not removed'}). "
              "Metrics are means over evaluated users.", ""]
    lines += ["## Overall", ""]
    lines += _table(["model", "step", "users"] + overall_cols,
                    [[r["name"], r["step"], r["overall"]["examples"]] + [r["overall"][c] for c in overall_cols]
                     for r in results])
    if paired is None:
        paired = _paired(results, ecfg.plot_metrics)
    if paired:
        from hytrec_torchrec.evaluation.paired import markdown

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
    lines += ["", "![metrics by history length](length_buckets.png)", "", "## Counts", ""]
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


def plot_length_buckets(results: Sequence[Dict[str, Any]], metrics: Sequence[str], buckets: Sequence[str],
                        path: str | Path) -> Path:
    """PNG: each metric against the history-length bucket, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.0), squeeze=False)
    x = list(range(len(buckets)))
    for ax, m in zip(axes[0], metrics):
        for r in results:
            y = [r["segments"][b][m] if r["segments"][b]["examples"] else float("nan") for b in buckets]
            ax.plot(x, y, marker="o", label=r["name"])
        ax.set_xticks(x)
        ax.set_xticklabels([b[3:] for b in buckets], rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("history length (events before the target)")
        ax.set_ylabel(m)
        ax.set_title(f"{m} by history length")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: str | Path, results: Sequence[Dict[str, Any]], ecfg: Any, data: str) -> Dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, ``ranks.parquet`` and ``length_buckets.png`` under ``out_dir``."""
    from hytrec_torchrec.config import to_dict
    from hytrec_torchrec.evaluation.paired import RANKS_FILE, write_ranks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [r["name"] for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must differ in one report: {names}")
    paired = _paired(results, ecfg.plot_metrics)
    doc: Dict[str, Any] = {
        "split": ecfg.split,
        "data": str(data),
        "ks": list(ecfg.ks),
        "catalog_size": results[0]["counts"]["catalog_size"] if results else None,
        "overall": results[0]["overall"] if results else {},
        "segments": results[0]["segments"] if results else {},
        "models": {r["name"]: {k: v for k, v in r.items() if k != "example_ranks"} for r in results},
        "paired": paired,
        "config": to_dict(ecfg),
    }
    paths = {"metrics": out / "metrics.json", "report": out / "report.md", "plot": out / "length_buckets.png",
             "ranks": out / RANKS_FILE}
    write_ranks(paths["ranks"], {r["name"]: r["example_ranks"] for r in results})
    paths["metrics"].write_text(json.dumps(_json_safe(doc), indent=2) + "\n")
    paths["report"].write_text(markdown_report(results, ecfg, str(data), paired))
    plot_length_buckets(results, ecfg.plot_metrics, ecfg.segments.bucket_names(), paths["plot"])
    return paths
