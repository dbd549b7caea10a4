"""``RUN_DIR/curves.png``: the training loss and the validation metrics against the step.

Written by rank 0 with every checkpoint, from what the checkpoint's ``train_state.json`` holds
(``loss_log``: ``[step, mean loss of rank 0 over the steps since the previous entry]``;
``history``: one validation record per validation), so a resumed run draws its whole curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence

__all__ = ["write_curves"]


def write_curves(path: str | Path, loss_log: Sequence[Sequence[float]], history: Sequence[Dict[str, Any]],
                 title: str = "") -> Path:
    """Draw the loss (left) and every validation metric but ``examples`` (right) into ``path``;
    ``title`` (the model's description and the run) heads the figure and is the PNG's Title text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if loss_log:
        steps, loss = zip(*[(int(s), float(v)) for s, v in loss_log])
        left.plot(steps, loss, color="tab:blue", lw=1.2)
    left.set(title="training loss (rank 0, mean per log interval)", xlabel="step", ylabel="loss")
    left.grid(alpha=0.3)
    metrics = sorted({k for h in history for k in h if k not in ("step", "examples")})
    for name in metrics:
        pts = [(int(h["step"]), float(h[name])) for h in history if name in h]
        right.plot(*zip(*pts), marker="o", ms=3, lw=1.2, label=name)
    right.set(title="validation", xlabel="step", ylabel="metric")
    right.grid(alpha=0.3)
    if metrics:
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=right.transAxes)
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    val_steps = sorted({int(h["step"]) for h in history})
    if metrics and len(val_steps) <= 8:  # a few validations: tick exactly where they were
        right.set_xticks(val_steps)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110, metadata={"Title": title} if title else None)  # the title as PNG text too
    plt.close(fig)
    return out
