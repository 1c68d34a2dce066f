"""Figures a person would rather look at than read: the loss curve of a run, and a GRPO run's rewards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.figures import pyplot, save_figure

# What one point of each method's loss is (its y-axis): a per-token mean for the language-model losses, a mean over
# pairs or rows for the preference losses (TRL's trainers; the papers' names for them)
LOSS_UNITS = {
    "sft": "loss (nats per loss-carrying token)",
    "cpt": "loss (nats per token)",
    "dpo": "DPO loss per pair (method.loss_type; sigmoid: −log σ(β × log-ratio margin))",
    "simpo": "SimPO loss per pair: −log σ(β × length-normalised margin − γ)",
    "orpo": "ORPO loss per pair: answer NLL + λ × odds-ratio term",
    "kto": "KTO loss per row (desirable and undesirable weighted)",
    "reward": "reward-model loss per pair: −log σ(r_chosen − r_rejected)",
    "grpo": "GRPO policy loss (near 0 whether or not it learns; see rewards.png)",
}


def plot_loss_curve(records: list[dict[str, Any]], path: Path, title: str, method: str = "sft") -> Path | None:
    """Training loss (and eval loss when logged) against optimizer step, as a PNG, the y-axis saying what the
    `method`'s loss is (LOSS_UNITS). Where the replay anchor trained
    beside the task (`replay_term`: data.replay.weight x KL(base || tuned) on replay rows, which the logged loss
    includes), the task's own part and the anchor's are drawn apart. A log scale once the curve spans more than 20x,
    where a linear axis shows the last tenfold fall as flat."""
    plt = pyplot()
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    anchor = [(r["step"], r["replay_term"]) for r in records if "loss" in r and "replay_term" in r]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss" + (" (task + replay term)" if anchor else ""),
                marker=".")
    if anchor:
        task = [(r["step"], r["loss"] - r["replay_term"]) for r in records if "loss" in r and "replay_term" in r]
        ax.plot(*zip(*task, strict=True), label="task loss (train loss − replay term)", marker=".", linestyle="--")
        ax.plot(*zip(*anchor, strict=True), label="replay term (weight × KL to the base)", marker=".", linestyle=":")
    if evals:
        ax.plot(*zip(*evals, strict=True), label="held-out loss (data.eval, at that step)", marker="o")
    values = [value for _, value in train + evals + anchor]
    if min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set(xlabel="optimizer step", ylabel=LOSS_UNITS.get(method, "loss"), title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.text(0.01, -0.02, "Each point: the mean over the optimizer steps since the one before (training.logging_steps)."
             , fontsize=7, color="grey", ha="left", va="top")
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
