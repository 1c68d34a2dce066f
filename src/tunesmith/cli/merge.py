"""`tunesmith merge` and `tunesmith push`: thin commands over tunesmith.merge and tunesmith.export.hub.

cli/app.py registers them on the app (`app.command()(merge)`), so they read like its other commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from tunesmith.cli.common import SHOW, err, print_json
from tunesmith.errors import TunesmithError, shell_arg


def merge(inputs: Annotated[list[str], typer.Argument(
              metavar="RUN_OR_ADAPTER...", help="Run directories, PEFT adapter folders or full checkpoint folders.")],
          out: Annotated[Path, typer.Option("--out", help="Folder to write (replaced atomically if it exists).")],
          method: Annotated[str | None, typer.Option(
              help="Several adapters: linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune. Several "
                   "models: linear, slerp, task_arithmetic, ties, dare_linear, dare_ties, magnitude_prune. "
                   "Default: cat for adapters (their exact weighted sum), linear for models; leave out for one "
                   "adapter.")] = None,
          weights: Annotated[str | None, typer.Option(
              help="One weight per input, comma-separated (default: equal, summing to 1).")] = None,
          density: Annotated[float | None, typer.Option(
              help="Fraction of entries ties/dare/magnitude_prune keep, in (0, 1]; those methods need it.")] = None,
          dtype: Annotated[str, typer.Option(help="Saved weights: fp32, fp16 or bf16 (merging is always fp32).")
                           ] = "fp32",
          base: Annotated[str | None, typer.Option(
              help="Base model (folder, alias or Hub id): overrides what the inputs name; task-vector model "
                   "merges need it when the inputs are bare checkpoints.")] = None,
          into_base: Annotated[bool, typer.Option(
              "--into-base", help="Several adapters: also merge the combined adapter into the base.")] = False,
          max_shard_size: Annotated[str, typer.Option(help="Split safetensors into shards of at most this size.")
                                    ] = "5GB",
          seed: Annotated[int, typer.Option(min=0, help="Seed of dare's random drops.")] = 0,
          tolerance: Annotated[float, typer.Option(
              help="Largest max |logit difference| allowed between the fp32 merge and base+adapter.")] = 1e-2,
          as_json: Annotated[bool, typer.Option("--json", help="Print merge.json on stdout.")] = False) -> None:
    """Merge an adapter into its base, several adapters into one, or several fine-tuned models into one.

    Writes OUT/merge.json with the method, inputs, weights and the verification numbers.

    Example: tunesmith merge runs/quickstart-20261123-101500 --out merged --dtype bf16

    Example: tunesmith merge runs/a-1 runs/b-1 --method ties --weights 0.5,0.5 --density 0.7 --out combined

    Example: tunesmith merge ckpt-math ckpt-code --method slerp --out slerped --max-shard-size 2GB
    """
    from tunesmith.merge import run_merge

    path = run_merge(inputs, out, method, parse_weights(weights), density, dtype, base, into_base,
                     max_shard_size, seed, tolerance)
    record = json.loads((path / "merge.json").read_text(encoding="utf-8"))
    report_merge(record, path)
    if as_json:
        print_json(record)


def parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise TunesmithError(f"--weights {text!r} is not a comma-separated list of numbers.",
                             "For example --weights 0.7,0.3.") from None


FAR_FROM_THE_SUM = 0.25  # a combined adapter this far (relative) from the weighted sum of its inputs gets a note
WHY_NOT_THE_SUM = {
    "linear": "linear weights the A and B factors separately, so their product gains cross terms of the inputs",
    "ties": "ties trims small entries and drops those whose sign disagrees, by design",
    "dare_linear": "dare drops entries at random and rescales the rest, by design",
    "dare_ties": "dare drops entries at random and ties drops disagreeing signs, by design",
    "magnitude_prune": "magnitude_prune drops the small entries, by design",
}


def far_from_the_sum_note(method: str, check: dict[str, Any], path: Path) -> str:
    """Say what a large distance from the weighted sum means (a multiple of it, when that is what it is), and how
    to choose between methods."""
    error, scale = check["relative_delta_error"], check.get("scale_to_sum", 1.0)
    why = WHY_NOT_THE_SUM.get(method, f"{method} does not add the inputs' weight changes")
    if check.get("error_after_scale", 1.0) < FAR_FROM_THE_SUM / 2 and abs(scale - 1) > FAR_FROM_THE_SUM:
        why = (f"they are {scale:.2f} x that sum (within {check['error_after_scale']:.1%}): the inputs' LoRA A "
               "matrices are alike (trained from the same seed's initialisation), so linear, which weights A and B "
               "by √wᵢ each, adds the B's at √wᵢ·Σ√wⱼ instead of wᵢ" if method == "linear"
               else f"they are {scale:.2f} x that sum (within {check['error_after_scale']:.1%})")
    return (f"note: the combined adapter's weight changes are {error:.0%} away from the weighted sum of the inputs' "
            f"({why}). `cat` (the default) gives the exact sum and `svd` the nearest at the inputs' rank; which "
            "method answers best is for held-out rows to say: tunesmith compare --prompts eval.jsonl "
            f"{shell_arg(path)} OTHER_MERGE ...")


def report_merge(record: dict[str, Any], path: Path) -> None:
    """The verification numbers in one or two lines each."""
    check = record["verification"]
    into = check.get("into_base", check if "max_abs_logit_diff" in check else None)
    if "relative_delta_error" in check:
        err.print(f"combined adapter ({record['method']}, rank {check['rank']}): |ΔW − Σ wᵢΔWᵢ| / |Σ wᵢΔWᵢ| = "
                  f"{check['relative_delta_error']:.3g}", **SHOW)
        if check["relative_delta_error"] > FAR_FROM_THE_SUM:
            err.print(escape(far_from_the_sum_note(record["method"], check, path)), **SHOW)
    if into:
        err.print(f"merged vs base+adapter on {into['prompts']} prompts: max |logit diff| "
                  f"{into['max_abs_logit_diff']:.2e} (fp32), {into['max_abs_logit_diff_after_cast']:.2e} as "
                  f"{into['dtype']} (top-1 agreement {into['top1_agreement_after_cast']:.1%})", **SHOW)
    for row in check.get("agreement_with_inputs", []):
        err.print(f"vs {escape(row['input'])}: top-1 agreement {row['top1_agreement']:.1%}, mean |logit diff| "
                  f"{row['mean_abs_logit_diff']:.3g}", **SHOW)
    err.print(f"Merged into {escape(str(path))}", **SHOW)


def push(source: Annotated[Path, typer.Argument(metavar="RUN_OR_FOLDER",
                                                help="A run directory, or any folder to upload as it is.")],
         repo_id: Annotated[str, typer.Argument(metavar="REPO_ID", help="user/name or org/name on the Hub.")],
         private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
         what: Annotated[str | None, typer.Option(
             "--what", "--format", help="From a run: adapter (default), merged or gguf (the format `tunesmith "
                                        "export` wrote).")] = None,
         dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be uploaded, and where; send "
                                                                  "nothing (no token needed).")] = False) -> None:
    """Upload a run's adapter, merged model or GGUF files (or any folder) to a Hugging Face Hub repository.

    Needs a token with write access: `hf auth login`, or HF_TOKEN in the environment.

    Example: tunesmith push runs/quickstart-20261123-101500 me/quickstart-lora --private

    Example: tunesmith push runs/quickstart-20261123-101500 me/quickstart-gguf --what gguf
    """
    from tunesmith.export.hub import push_to_hub, upload_plan

    if dry_run:
        plan = upload_plan(source, repo_id, what)
        for file in plan["files"]:
            err.print(f"{file['path_in_repo']}  ({file['bytes']:,} bytes, from {escape(file['from'])})", **SHOW)
        err.print(f"Would upload {len(plan['files'])} file(s), {plan['bytes']:,} bytes, to {escape(repo_id)} "
                  "(a dry run: nothing sent).", **SHOW)
        return
    url = push_to_hub(source, repo_id, private=private, what=what)
    err.print(f"Uploaded to {escape(url)}", **SHOW)
