"""Figures a person would rather look at than read: the loss curve of a run, and a GRPO run's rewards."""

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


def plot_reward_curve(records: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """An on-policy run's mean reward per step (TRL's `reward`, the weighted sum) and each reward's own mean
    (`rewards/<name>/mean`), as a PNG; None when nothing was logged. GRPO's loss sits near zero whether or not it
    learns, so this is the curve that shows progress."""
    names = sorted({key for record in records for key in record
                    if key.startswith("rewards/") and key.endswith("/mean")})
    series = {"reward (weighted sum)": "reward", **{name.split("/")[1]: name for name in names}}
    points = {label: [(r["step"], r[key]) for r in records if key in r] for label, key in series.items()}
    points = {label: values for label, values in points.items() if values}
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, values in points.items():
        ax.plot(*zip(*values, strict=True), label=label, marker=".")
    ax.set(xlabel="optimizer step", ylabel="mean reward", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
