"""`run_doctor`: every check for this machine, a model and a recipe, in one report, in seconds.

Order: versions (no imports), the accelerator, then the model (access, tokenizer, chat template), then the
recipe's data. A missing model stops only the checks that need its files; everything else still runs.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import Recipe, load_recipe
from tunesmith.doctor.accelerator import accelerator_checks
from tunesmith.doctor.access import Source, access_checks, classify_source, local_model_dir
from tunesmith.doctor.distributed import distributed_checks
from tunesmith.doctor.model_checks import SECTION as MODEL_SECTION
from tunesmith.doctor.model_checks import model_checks
from tunesmith.doctor.recipe import recipe_checks
from tunesmith.doctor.report import Check, DoctorReport
from tunesmith.doctor.versions import version_checks
from tunesmith.errors import RecipeError, TunesmithError, shell_arg


def run_doctor(model: str | None = None, recipe_path: Path | None = None, sets: list[str] | None = None,
               probe_seconds: float = 0.3) -> DoctorReport:
    """Check versions, the accelerator and what several processes can use, then `model` (or the recipe's model),
    then the recipe's data.

    `model` overrides the recipe's model.source; `sets` are the recipe's --set overrides. A recipe that does
    not load raises RecipeError (a usage error), as `train` would.
    """
    if sets and recipe_path is None:
        raise RecipeError("--set overrides a recipe key, and no --recipe was given.", "Add --recipe RECIPE.")
    recipe = load_recipe(recipe_path, sets) if recipe_path is not None else None
    if recipe is not None and model:
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"source": model})})
    checks = version_checks() + accelerator_checks(Path(recipe.runs_dir) if recipe else None, probe_seconds)
    checks += distributed_checks(recipe)
    source = model or (recipe.model.source if recipe else None)
    if source is not None:
        checks += source_checks(source, recipe)
    if recipe is not None:
        checks += recipe_checks(recipe)
    return DoctorReport(checks=checks)


def source_checks(text: str, recipe: Recipe | None) -> list[Check]:
    """Access, then the tokenizer and template checks when the model's files are on this machine."""
    base_dir = Path(recipe.base_dir) if recipe else Path.cwd()
    revision = recipe.model.revision if recipe else None
    checks = access_checks(text, revision, base_dir)
    source = classify_source(text, base_dir)
    model_dir = local_model_dir(source, revision)
    if model_dir is not None:
        return checks + model_checks(model_dir, recipe_template(recipe))
    if checks[-1].status == "fail":
        return checks  # the access check already says what to do first
    return [*checks, Check(name="tokenizer", section=MODEL_SECTION, status="warn",
                           detail="the model's files are not on this machine yet, so its tokenizer and chat template "
                                  "were not checked (doctor never downloads weights)", fix=fetch_hint(source))]


def recipe_template(recipe: Recipe | None) -> str | None:
    """The recipe's model.chat_template text; None without one (a template file that cannot be read is the
    recipe's template-fit check's failure)."""
    from tunesmith.models.templates import recipe_chat_template

    try:
        return recipe_chat_template(recipe) if recipe is not None else None
    except TunesmithError:
        return None


def fetch_hint(source: Source) -> str:
    """How to put the config and tokenizer (not the weights) here, so that doctor can read them."""
    if source.kind == "embedded":
        return f"tunesmith models pull {source.text}"
    if source.kind == "gguf":
        return f"tunesmith models import {shell_arg(source.path)}"
    return (f"hf download {source.text} --include '*.json' --include 'tokenizer*' --include '*.jinja' "
            "(config and tokenizer only), then run doctor again.")
