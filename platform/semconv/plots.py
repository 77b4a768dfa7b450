"""Plots shared by stages: a bare matplotlib figure and the fine-tuning loss curve.

Here, below every stage, so that ``finetune`` draws its ``model/train_curve.png`` and ``evaluate``
its ``report/training_curve.png`` with one function and neither imports the other. Figures use
matplotlib's object API on an Agg canvas, so no global pyplot state is touched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def figure(width: float = 6.4, height: float = 3.6) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas (``fig.savefig`` works, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def curve(train: dict[str, Any], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of a loss list; steps from ``<prefix>_steps`` when it matches."""
    values = train.get(key)
    if not isinstance(values, list) or not values:
        return [], []
    if isinstance(values[0], dict):  # [{"step": s, "loss": v}, ...]
        steps = [float(v.get("step", i + 1)) for i, v in enumerate(values)]
        vals = [next((float(x) for k, x in v.items() if k != "step" and isinstance(x, (int, float))), math.nan)
                for v in values]
        return steps, vals
    steps = train.get(key.replace("_loss", "_steps"))
    if not isinstance(steps, list) or len(steps) != len(values):
        steps = list(range(1, len(values) + 1))
    return [float(s) for s in steps], [float(v) for v in values]


def plot_training(train: dict[str, Any], path: Path) -> bool:
    """Train and held-out loss by step (``train_metrics.json``) as a PNG; False when there is none."""
    fig = figure()
    ax = fig.add_subplot()
    drawn = False
    for key in ("train_loss", "eval_loss"):
        steps, values = curve(train, key)
        if steps:
            ax.plot(steps, values, marker="o" if key == "eval_loss" else None, markersize=3, label=key)
            drawn = True
    if not drawn:
        return False
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy on the label")
    ax.set_title("LoRA fine-tuning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True
