"""Campaign plots (matplotlib, Agg backend): fitness over steps; score vs accuracy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_campaign(
    run: Path, history: list[dict], evaluator, expr, formula: str, combine: str = "table"
) -> None:
    """Write ``fitness.png`` and ``heldout_scatter.png`` into the run folder (the proxy's
    layers combined as ``combine`` says)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["best"] for h in history], label="best")
    ax.plot(steps, [h["median"] for h in history], label="median")
    ax.set_xlabel("step")
    ax.set_ylabel("Spearman@topk (search split)")
    ax.set_title(run.name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run / "fitness.png", dpi=100)
    plt.close(fig)

    scores = evaluator.scores(expr, combine)
    idx = evaluator.heldout
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(scores[idx], evaluator.accuracy[idx], s=10, alpha=0.7)
    rho = evaluator.report(expr, "heldout", combine)["spearman@topk"]
    ax.set_xlabel("proxy score")
    ax.set_ylabel("measured top-1 (%)")
    short = formula if len(formula) < 70 else formula[:67] + "..."
    ax.set_title(f"held-out: Spearman@topk = {rho:.3f}\n{short}", fontsize=8)
    ax.set_ylim(max(0.0, float(np.min(evaluator.accuracy[idx])) - 1), None)
    fig.tight_layout()
    fig.savefig(run / "heldout_scatter.png", dpi=100)
    plt.close(fig)
