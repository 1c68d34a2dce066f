"""Evaluation stage: base vs tuned on held-out examples."""

from tunesmith.eval.evaluate import run_eval

__all__ = ["run_eval"]
