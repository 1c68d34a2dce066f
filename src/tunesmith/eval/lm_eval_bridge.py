"""lm-evaluation-harness tasks on base and tuned (`eval.lm_eval`), folded into eval/results.json.

The harness is optional (`pip install tunesmith[eval]`). Its model wrapper (HFLM) is handed the model
eval already loaded, so base (adapter switched off) and tuned cost no second load. Tasks come from a
folder of the harness's task YAMLs, by default tunesmith's bundled local task; a relative `data_files`
in a task YAML is resolved from that YAML's folder, so a task and its data can travel together
without the Hugging Face Hub. Built-in harness tasks are looked up only when a name is not in the folder.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import TunesmithError
from tunesmith.eval.stats import compare_metric

BUNDLED_TASKS = Path(__file__).resolve().parent / "lm_eval_tasks"
SKIPPED_KEYS = ("alias", "name", "sample_len", "samples")


@dataclass(frozen=True)
class HarnessTasks:
    """The recipe's tasks, found and read before any model loads: the harness's TaskManager and one spec each."""

    include: Path
    manager: Any
    specs: list[Any]


def require_lm_eval() -> None:
    """Fail before any model loads when the harness is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise TunesmithError("eval.lm_eval needs lm-evaluation-harness, which is not installed.",
                             "pip install 'tunesmith[eval]' (or lm-eval>=0.4.13), or remove eval.lm_eval "
                             "from the recipe.") from None


def prepare_tasks(recipe: Any) -> HarnessTasks:
    """Check the harness is installed and every task name is known (a typo fails here, not after generating)."""
    require_lm_eval()
    settings = recipe.eval.lm_eval
    include = recipe.resolve_path(settings.include_path) if settings.include_path else BUNDLED_TASKS
    return HarnessTasks(include, *load_tasks(include, settings.tasks))


def lm_eval_results(variants: dict[str, tuple[Any, Any]], tokenizer: Any, recipe: Any,
                    tasks: HarnessTasks) -> dict[str, Any]:
    """Run the recipe's tasks on every variant; per-task scores and, with a base, paired comparisons."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    settings = recipe.eval.lm_eval
    results: dict[str, Any] = {"tasks": list(settings.tasks), "include_path": str(tasks.include),
                               "limit": settings.limit}
    per_doc: dict[str, dict[str, list[float]]] = {}
    for name, (model, context) in variants.items():
        started = time.monotonic()
        with context(), torch.no_grad():
            output = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size),
                                     tasks=tasks.specs, task_manager=tasks.manager, limit=settings.limit,
                                     num_fewshot=settings.num_fewshot, log_samples=True, bootstrap_iters=0)
        results[name] = {**task_scores(output["results"]), "seconds": round(time.monotonic() - started, 1)}
        per_doc[name] = doc_scores(output.get("samples") or {})
    if "base" in per_doc and "tuned" in per_doc:
        results["comparison"] = {key: compare_metric(per_doc["base"][key], per_doc["tuned"][key])
                                 for key in per_doc["tuned"] if key in per_doc["base"]}
    return results


def load_tasks(include: Path, names: list[str]) -> tuple[Any, list[Any]]:
    """A TaskManager over the folder (built-in tasks only when a name needs them) and one spec per name."""
    from lm_eval.tasks import TaskManager

    if not include.is_dir():
        raise TunesmithError(f"eval.lm_eval.include_path: no such folder {include}.",
                             "Give a folder of lm-eval task YAMLs, relative to the recipe file.")
    manager = TaskManager(include_path=str(include), include_defaults=False)
    if any(name not in manager.task_index for name in names):
        manager = TaskManager(include_path=str(include), include_defaults=True)
    unknown = [name for name in names if name not in manager.task_index]
    local = sorted(TaskManager(include_path=str(include), include_defaults=False).task_index)
    if unknown:
        raise TunesmithError(f"eval.lm_eval.tasks: unknown task {', '.join(map(repr, unknown))}.",
                             f"Tasks in {include}: {', '.join(local) or 'none'}.")
    say_where_the_data_comes_from([name for name in names if name not in local])
    return manager, [task_spec(manager, name) for name in names]


def say_where_the_data_comes_from(indexed: list[str]) -> None:
    """Tasks of lm-eval's own index read their datasets from the Hugging Face Hub: refused where the Hub is switched
    off (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE), said otherwise (offline, they fail once the answers exist)."""
    if not indexed:
        return
    from tunesmith.eval.decoding import progress

    if any(os.environ.get(flag, "").lower() in ("1", "true", "yes") for flag in ("HF_HUB_OFFLINE",
                                                                                  "HF_DATASETS_OFFLINE")):
        raise TunesmithError(f"eval.lm_eval.tasks: {', '.join(indexed)} come from lm-eval's own index and read their "
                             "datasets from the Hugging Face Hub, which HF_HUB_OFFLINE / HF_DATASETS_OFFLINE switch "
                             "off.", "Use tasks of a local folder (eval.lm_eval.include_path; tunesmith_general_mc is "
                                     "bundled), or unset the offline flag.")
    progress(f"note: lm-eval tasks {', '.join(indexed)} read their datasets from the Hugging Face Hub (or its cache); "
             "without the network they fail once the answers are generated (the other results are kept)")


def task_spec(manager: Any, name: str) -> str | dict[str, Any]:
    """A task's full config with local data files made absolute; groups, tags and Python tasks by name."""
    entry = manager.task_index[name]
    if entry.yaml_path is None or entry.kind.name != "TASK":
        return name
    config = load_task_yaml(Path(entry.yaml_path))
    kwargs = config.get("dataset_kwargs") or {}
    if "data_files" in kwargs:
        config["dataset_kwargs"] = {**kwargs, "data_files": absolute_files(kwargs["data_files"],
                                                                           Path(entry.yaml_path).parent)}
    return config


def load_task_yaml(path: Path) -> dict[str, Any]:
    """The harness's own YAML reading (includes, !function tags).

    lm-eval 0.4.13 keeps it in the private module lm_eval.tasks._yaml_loader; the one place that knows.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=True)


def absolute_files(files: Any, folder: Path) -> Any:
    """data_files as str, list or dict of them, with each relative path that exists under `folder` made absolute."""
    if isinstance(files, dict):
        return {split: absolute_files(value, folder) for split, value in files.items()}
    if isinstance(files, list):
        return [absolute_files(value, folder) for value in files]
    path = Path(str(files))
    local = folder / path
    return str(local) if not path.is_absolute() and "://" not in str(files) and local.exists() else files


def task_scores(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{"task/metric": value}: numeric scores only, the filter suffix dropped when it is `none`."""
    scores = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if key in SKIPPED_KEYS or metric.endswith("_stderr") or not _is_number(value):
                continue
            label = metric if filter_name in ("", "none") else f"{metric},{filter_name}"
            scores[f"{task}/{label}"] = round(float(value), 4)
    return scores


def doc_scores(samples: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    """Per-document scores of each task's metrics, in document order (so base and tuned pair up), one column per
    filter, named as `task_scores` names the task's scores: lm-eval logs a sample per document and filter
    (gsm8k's strict-match and flexible-extract), which must not pool into one column of twice the documents."""
    columns: dict[str, list[float]] = {}
    for task, docs in samples.items():
        by_filter: dict[str, list[dict[str, Any]]] = {}
        for doc in docs:
            by_filter.setdefault(str(doc.get("filter") or "none"), []).append(doc)
        for filter_name, kept in by_filter.items():
            ordered = sorted(kept, key=lambda doc: doc["doc_id"])
            for metric in ordered[0].get("metrics", []):
                values = [doc.get(metric) for doc in ordered]
                label = metric if filter_name == "none" else f"{metric},{filter_name}"
                if all(_is_number(v) for v in values):
                    columns[f"{task}/{label}"] = [float(v) for v in values]
    return columns


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and value == value  # NaN is not a score
