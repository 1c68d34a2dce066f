"""Figures a person would rather look at than read: the loss curve of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.figures import pyplot, save_figure


def plot_loss_curve(records: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Training loss (and eval loss when logged) against optimizer step, as a PNG."""
    plt = pyplot()
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", marker=".")
    if evals:
        ax.plot(*zip(*evals, strict=True), label="eval loss", marker="o")
    ax.set(xlabel="optimizer step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
