"""run.json, the contract between stages (issue 14): the data stage saves the rows it trained on and held out,
the train stage records its artifact and its base; eval scores the saved rows from the run alone, so a moved run
or an edited source file changes nothing, and other rows are scored only with `eval --data FILE`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.conftest import ORDERS, make_tiny_project
from tunesmith.config import Recipe, load_recipe
from tunesmith.data import Splits, fingerprint, load_splits
from tunesmith.errors import TunesmithError
from tunesmith.eval import run_eval
from tunesmith.eval.rows import held_out_rows, rows_from_file
from tunesmith.manifest import BaseModelRecord, RunManifest, TrainRecord, weights_signature
from tunesmith.runs import Run, create_run, open_run, record_stage
from tunesmith.train import run_training

NOTICE = "data/eval.jsonl changed since training; scoring the rows saved in the run"


@dataclass
class Trained:
    project: Path
    run: Run
    model_source: str  # as the recipe wrote it: relative to the project, so only run.json finds it once moved
    results: dict[str, Any]  # eval in place, right after training


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> Trained:
    root = tmp_path_factory.mktemp("manifest")
    project = root / "project"
    recipe_path = make_tiny_project(project, tiny_model_dir, train_rows=24, eval_rows=6)
    source = os.path.relpath(tiny_model_dir, project)
    recipe_path.write_text(recipe_path.read_text().replace(f"source: {tiny_model_dir}", f"source: {source}"))
    recipe = load_recipe(recipe_path, ["training.max_steps=2", "eval.max_new_tokens=4"])
    run = create_run(recipe, root / "runs")
    run_training(recipe, run)
    results = json.loads(run_eval(run.load_recipe(), run).read_text())
    return Trained(project, run, source, results)


def without_timings(results: dict[str, Any]) -> dict[str, Any]:
    """results.json minus the wall-clock figures (seconds, seconds per answer), the ones two identical evals may
    differ in."""
    timings = ("seconds", "seconds_per_answer")
    return {key: ({k: v for k, v in value.items() if k not in timings} if isinstance(value, dict) else value)
            for key, value in results.items()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_json_records_data_and_train_stages(trained, tiny_model_dir):
    run = trained.run
    manifest = RunManifest.model_validate_json(run.manifest_file.read_text())
    assert json.loads(run.manifest_file.read_text())["version"] == 1
    data, train = manifest.data, manifest.train
    assert (data.train.path, data.eval.path, data.eval.rows, data.shape) == (
        "data/train.jsonl", "data/eval.jsonl", 6, "messages")
    assert data.train.sha256 == sha256(run.path / "data/train.jsonl")
    assert data.eval.sha256 == sha256(run.path / "data/eval.jsonl")
    assert data.eval_from == "eval"
    for split in ("train", "eval"):
        source = data.sources[split]
        assert source.path == f"data/{split}.jsonl"
        assert source.resolved == str(trained.project / "data" / f"{split}.jsonl")
        assert source.sha256 == sha256(trained.project / "data" / f"{split}.jsonl")
    assert (train.artifact, train.path, train.method, train.adapter) == ("adapter", "adapter", "sft", "lora")
    assert train.base_model.source == trained.model_source
    assert train.base_model.path == str(tiny_model_dir.resolve())
    assert run.base_model() == tiny_model_dir.resolve()
    assert train.base_model.weights == weights_signature(tiny_model_dir)


def run_on_a_copy_of_its_base(trained: Trained, tmp_path: Path) -> tuple[Run, Path]:
    """A copy of the trained run whose run.json names a copy of its base, which a test may then change."""
    base = Path(shutil.copytree(trained.run.manifest().train.base_model.path, tmp_path / "base"))
    copy = Run(Path(shutil.copytree(trained.run.path, tmp_path / "run")))
    manifest = copy.manifest()
    manifest.train.base_model.path = str(base)
    copy.manifest_file.write_text(manifest.model_dump_json(), encoding="utf-8")
    return copy, base


def test_a_base_folder_written_again_with_other_weights_is_refused(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    copy, base = run_on_a_copy_of_its_base(trained, tmp_path)
    assert copy.base_model() == base
    (base / "pytorch_model.bin").write_bytes(b"another tool's download, which transformers does not load here")
    (base / "tokenizer_config.json").write_text((base / "tokenizer_config.json").read_text() + "\n")
    assert copy.base_model() == base
    weights = next(base.glob("*.safetensors"))
    tensors = load_file(weights)
    names = sorted(tensors)  # the same tensors saved again in two shards, with other metadata: the same weights
    weights.unlink()
    save_file({k: tensors[k] for k in names[::2]}, base / "model-00001-of-00002.safetensors", metadata={"a": "b"})
    save_file({k: tensors[k] for k in names[1::2]}, base / "model-00002-of-00002.safetensors")
    assert copy.base_model() == base
    for shard in base.glob("model-0000*.safetensors"):
        shard.unlink()
    name = max(tensors, key=lambda key: tensors[key].numel())
    tensors[name] = tensors[name] + 1e-3  # what a merge or another fine-tune saved over the folder does
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(TunesmithError, match="not the one run trained on") as refused:
        copy.base_model()
    assert "model.source" in refused.value.hint


def test_a_gone_base_is_resolved_again_at_the_recorded_commit_and_checked(trained, tmp_path, capsys):
    copy, base = run_on_a_copy_of_its_base(trained, tmp_path)
    snapshot = Path(shutil.move(base, tmp_path / "snapshots" / "abc123"))
    manifest = copy.manifest()
    manifest.train.base_model.commit = "abc123"
    copy.manifest_file.write_text(manifest.model_dump_json(), encoding="utf-8")
    asked: list[tuple[str, str | None]] = []

    def resolve(source: str, revision: str | None) -> Path:
        asked.append((source, revision))
        return snapshot

    assert copy.base_model(resolve) == snapshot
    assert asked == [(trained.model_source, "abc123")]
    assert f"is gone; using {snapshot}" in capsys.readouterr().err
    other = Path(shutil.move(snapshot, tmp_path / "snapshots" / "def456"))
    with pytest.raises(TunesmithError, match=r"at commit abc123; .* is commit def456"):
        copy.base_model(lambda source, revision: other)
    with pytest.raises(TunesmithError, match="is gone"):
        copy.base_model()


def test_saved_rows_are_the_rows_training_used(trained):
    run = trained.run
    saved_train = [json.loads(line) for line in (run.path / "data/train.jsonl").read_text().splitlines()]
    recorded = json.loads((run.path / "data.json").read_text())["train_sha256"]
    assert fingerprint(Splits(saved_train, [], {}))["train_sha256"] == recorded
    assert run.eval_rows() == load_splits(run.load_recipe()).eval


def test_moved_run_evaluates_to_identical_numbers_without_its_project(trained, tmp_path, capsys):
    """The run is moved and the project (data files, and the folder the relative model.source was read from) goes
    away: eval reads the rows and the base from run.json alone."""
    moved = Path(shutil.move(trained.run.path, tmp_path / "elsewhere" / trained.run.path.name))
    gone = Path(shutil.move(trained.project, trained.project.with_name("project-moved-away")))
    try:
        run = open_run(moved)
        results = json.loads(run_eval(run.load_recipe(), run).read_text())
    finally:
        shutil.move(gone, trained.project)
        shutil.move(moved, trained.run.path)
    assert results["rows_from"] == "run"
    assert without_timings(results) == without_timings(trained.results)
    assert "data/eval.jsonl is gone since training; scoring the rows saved in the run" in capsys.readouterr().err


def export_hashes(run: Run) -> dict[str, str]:
    """sha256 of what `export merged, gguf` wrote: the merged weights and the GGUF file."""
    from tunesmith.export.stage import export_formats

    written = export_formats(run.load_recipe(), run, ["merged", "gguf"], quant="F32", verify=False).written
    return {"merged": sha256(written["merged"] / "model.safetensors"), "gguf": sha256(written["gguf"])}


def test_moved_run_exports_merges_and_chats_to_identical_bytes(trained, tmp_path):
    """Exports, merge and chat of a moved run (project gone) read the base from run.json: the same bytes."""
    from tunesmith.chat import ChatSession, load_chat_model
    from tunesmith.merge import run_merge

    in_place = export_hashes(trained.run)
    manifest = trained.run.manifest()
    assert {name: record.path for name, record in manifest.exports.items()} == {
        "merged": "exports/merged", "gguf": "exports/gguf/tiny.F32.gguf"}  # relative: they move with the run
    assert manifest.exports["gguf"].bytes == (trained.run.path / "exports/gguf/tiny.F32.gguf").stat().st_size
    assert manifest.eval.results["held_out"] == "eval/results.json"
    reply_in_place = ChatSession(*load_chat_model(str(trained.run.path)), max_new_tokens=4).reply("Hi", print)
    moved = Path(shutil.move(trained.run.path, tmp_path / "elsewhere" / trained.run.path.name))
    gone = Path(shutil.move(trained.project, trained.project.with_name("project-moved-away")))
    try:
        run = open_run(moved)
        shutil.rmtree(run.exports_dir)
        assert export_hashes(run) == in_place
        merged = run_merge([moved], tmp_path / "merged")
        assert sha256(merged / "model.safetensors") == in_place["merged"]
        assert ChatSession(*load_chat_model(str(moved)), max_new_tokens=4).reply("Hi", print) == reply_in_place
    finally:
        shutil.move(gone, trained.project)
        shutil.move(moved, trained.run.path)


def test_edited_source_file_changes_nothing_and_is_reported(trained):
    from tunesmith.cli import app

    eval_file = trained.project / "data" / "eval.jsonl"
    original = eval_file.read_bytes()
    rows = [json.loads(line) for line in original.decode().splitlines()]
    for row in rows:
        row["messages"][-1]["content"] = json.dumps({"edited": "after training"})
    eval_file.write_text("".join(json.dumps(row) + "\n" for row in rows[:4]))
    try:
        result = CliRunner().invoke(app, ["eval", str(trained.run.path), "--json"])
    finally:
        eval_file.write_bytes(original)
    assert result.exit_code == 0, result.output
    assert without_timings(json.loads(result.stdout)) == without_timings(trained.results)
    assert NOTICE in " ".join(result.stderr.split())


def test_unchanged_source_file_gives_no_notice(trained, capsys):
    held_out_rows(trained.run.load_recipe(), trained.run)
    assert "since training" not in capsys.readouterr().err


def test_eval_data_file_scores_those_rows_and_says_so(trained, tmp_path):
    from tunesmith.cli import app

    other = tmp_path / "other.jsonl"
    lines = (ORDERS / "train.jsonl").read_text(encoding="utf-8").splitlines()[100:103]
    other.write_text("\n".join(lines) + "\n", encoding="utf-8")
    own_results = (trained.run.eval_dir / "results.json").read_text()

    result = CliRunner().invoke(app, ["eval", str(trained.run.path), "--data", str(other), "--json"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["rows_from"] == f"file:{other.resolve()}"
    assert document["examples"] == 3
    references = [json.loads(line)["messages"][-1]["content"] for line in lines]
    assert [sample["reference"] for sample in document["samples"]] == references
    written = trained.run.eval_dir / "data-other" / "results.json"
    assert json.loads(written.read_text())["rows_from"] == document["rows_from"]
    assert (trained.run.eval_dir / "results.json").read_text() == own_results  # the held-out results stay
    table = CliRunner().invoke(app, ["eval", str(trained.run.path), "--data", str(other)])
    assert "base vs tuned on 3 examples of other.jsonl" in " ".join(table.output.split())  # not "held-out"


def test_eval_data_file_holding_training_rows_is_warned_about(trained, tmp_path, capsys):
    trained_rows = trained.run.train_rows()
    new = {"messages": [{"role": "user", "content": "A row nobody trained on."},
                        {"role": "assistant", "content": "{}"}]}
    other = tmp_path / "mixed.jsonl"
    other.write_text("".join(json.dumps(row) + "\n" for row in [*trained_rows[:2], new]), encoding="utf-8")
    rows = held_out_rows(trained.run.load_recipe(), trained.run, data_file=other)
    assert len(rows.rows) == 3
    said = " ".join(capsys.readouterr().err.split())
    assert f"2 of the 3 rows in {other.resolve()} are rows this run trained on" in said
    held_out = tmp_path / "held-out.jsonl"
    held_out.write_text(json.dumps(new) + "\n", encoding="utf-8")
    held_out_rows(trained.run.load_recipe(), trained.run, data_file=held_out)
    assert "trained on" not in capsys.readouterr().err


def test_rows_from_file_are_shaped_as_the_data_stage_shapes_them(tmp_path):
    """A --data file gets the recipe's system prompt and fallbacks: the same rows as the data stage's eval split."""
    recipe_path = make_tiny_project(tmp_path, tmp_path / "no-model-needed", train_rows=8, eval_rows=5)
    recipe = load_recipe(recipe_path, ["data.system_prompt=Answer in JSON.", "data.system_fallback=merge"])
    rows = rows_from_file(recipe, tmp_path / "data" / "eval.jsonl", ("messages", "prompt_completion"), "evaluation")
    assert rows == load_splits(recipe).eval
    assert rows[0]["messages"][0]["role"] == "user" and "Answer in JSON." in rows[0]["messages"][0]["content"]


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_plain_text_preference_rows_from_file_are_scored_in_the_chat_format_they_trained_in(tmp_path, method):
    """String pairs (and KTO's unpaired rows) train through the chat template (data.formats.as_chat_preference):
    --data must give eval the same rows as the run's own held-out split, not plain text."""
    pairs = [{"prompt": f"Ask {i}", "chosen": f"Polite answer {i}.", "rejected": f"Rude answer {i}."}
             for i in range(12)]
    rows = pairs if method == "dpo" else [
        {"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"} for p in pairs
        for key in ("chosen", "rejected")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]), encoding="utf-8")
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[8:]), encoding="utf-8")
    (tmp_path / "recipe.yaml").write_text(
        f"model:\n  source: unused\nmethod:\n  kind: {method}\n"
        "data:\n  train: train.jsonl\n  eval: eval.jsonl\n  system_prompt: Be kind.\n", encoding="utf-8")
    recipe = load_recipe(tmp_path / "recipe.yaml")
    shapes = ("preference", "unpaired_preference")
    from_file = rows_from_file(recipe, tmp_path / "eval.jsonl", shapes, "evaluation")
    assert from_file == load_splits(recipe, accept=shapes).eval
    assert from_file[0]["prompt"] == [{"role": "system", "content": "Be kind."},
                                      {"role": "user", "content": rows[8]["prompt"]}]


def old_run(tmp_path: Path) -> tuple[Recipe, Run]:
    recipe = load_recipe(make_tiny_project(tmp_path, tmp_path / "no-model-needed", train_rows=8, eval_rows=5))
    return recipe, create_run(recipe, tmp_path / "runs")


def test_run_without_run_json_falls_back_to_the_recipe(tmp_path):
    recipe, run = old_run(tmp_path)
    held_out = held_out_rows(recipe, run)
    assert (held_out.rows_from, held_out.rows) == ("recipe", load_splits(recipe).eval)
    assert run.eval_rows() is None
    with pytest.raises(TunesmithError, match="records no trained model"):
        run.base_model()
    assert run.base_model(lambda source, revision: tmp_path) == tmp_path


def test_rows_edited_inside_the_run_are_refused(trained, tmp_path):
    copy = Run(Path(shutil.copytree(trained.run.path, tmp_path / "copy")))
    saved = copy.path / "data" / "eval.jsonl"
    saved.write_text(saved.read_text().replace("{", "{ ", 1))
    with pytest.raises(TunesmithError, match="changed after training"):
        copy.eval_rows()


def test_record_stage_merges_sections_and_refuses_what_is_not_a_stage(tmp_path):
    _, run = old_run(tmp_path)
    record_stage(run, "exports", {"merged": {"path": "exports/merged", "bytes": 10}})
    record_stage(run, "eval", {"results": {"held_out": "eval/results.json"}})
    manifest = run.manifest()
    assert manifest.exports["merged"].path == "exports/merged" and manifest.exports["merged"].bytes == 10
    assert manifest.eval.results == {"held_out": "eval/results.json"}
    assert manifest.data is None and manifest.train is None
    with pytest.raises(TunesmithError, match="'evaluation'"):
        record_stage(run, "evaluation", {})
    with pytest.raises(ValidationError, match="relative to the run"):
        TrainRecord(artifact="adapter", path=str(run.path / "adapter"), method="sft", adapter="lora",
                    base_model=BaseModelRecord(source="x", path="/x"))
    run.manifest_file.write_text(json.dumps({"version": 2}))
    with pytest.raises(TunesmithError, match="manifest version 2"):
        run.manifest()


def test_runs_list_says_what_each_run_is_and_how_far_it_got(trained, tmp_path):
    from tunesmith.cli import app

    runs_dir = trained.run.path.parent
    stopped = create_run(trained.run.load_recipe(), runs_dir)  # set up, then stopped after a checkpoint at step 4
    (stopped.checkpoints_dir / "checkpoint-4").mkdir(parents=True)
    result = CliRunner().invoke(app, ["runs", "list", str(runs_dir), "--json"])
    assert result.exit_code == 0, result.output
    rows = {Path(row["run"]).name: row for row in json.loads(result.stdout)}
    done = rows[trained.run.path.name]
    assert done["status"] == "trained" and done["method"] == "sft lora" and done["steps"] == 2
    metric = done["metric"]
    assert metric and done["tuned"] == trained.results["tuned"][metric]
    assert rows[stopped.path.name]["status"] == "stopped (checkpoint at step 4)"
    assert rows[stopped.path.name]["steps"] == 4  # no step logged: the newest checkpoint says how far it got
    # a sweep's runs (one folder down) and a run that holds only baselines are listed as what they are
    combination = shutil.copytree(trained.run.path, runs_dir / "sweep-tiny-20261206-010000" / "lr=1e-3")
    (combination.parent / "sweep.json").write_text("{}", encoding="utf-8")
    baselines = create_run(trained.run.load_recipe(), runs_dir)
    (baselines.path / "baseline").mkdir()
    (baselines.path / "baseline" / "results.json").write_text("{}", encoding="utf-8")
    rows = {Path(row["run"]).name: row for row in json.loads(CliRunner().invoke(
        app, ["runs", "list", str(runs_dir), "--json"]).stdout)}
    assert rows["lr=1e-3"]["status"] == "trained" and rows[baselines.path.name]["status"] == "baselines only"
    table = CliRunner().invoke(app, ["runs", "list", str(runs_dir)])
    assert "sweep-tiny-20261206-010000/lr=1e-3" in table.output.replace("\n", "") or "lr=1e-3" in table.output
    shown = CliRunner().invoke(app, ["runs", "list", str(tmp_path / "nowhere")])  # main() prints it, exit 2
    assert isinstance(shown.exception, TunesmithError) and "nowhere is not a folder" in str(shown.exception)
    one = CliRunner().invoke(app, ["runs", "list", str(trained.run.path)])  # a run given where its folder goes
    assert isinstance(one.exception, TunesmithError) and "is a run, not a folder of runs" in str(one.exception)
    assert f"tunesmith runs list {runs_dir}" in one.exception.hint


def test_open_run_says_what_a_folder_is_when_it_is_not_a_run(tmp_path):
    from tunesmith.runs import open_run

    with pytest.raises(TunesmithError, match="does not exist"):
        open_run(tmp_path / "runs" / "typo-20261205-101500")
    merged = tmp_path / "combined"
    merged.mkdir()
    (merged / "merge.json").write_text("{}", encoding="utf-8")
    (merged / "adapter_config.json").write_text("{}", encoding="utf-8")  # a combined adapter
    with pytest.raises(TunesmithError, match="written by `tunesmith merge`") as info:
        open_run(merged)
    assert f"training.init_from: {merged}" in info.value.hint
    with pytest.raises(TunesmithError, match=r"not a tunesmith run directory \(no recipe.yaml\)"):
        open_run(tmp_path)


def test_runs_list_and_diff_carry_the_forgetting_probes(tmp_path):
    from tunesmith.eval.forgetting import accuracies
    from tunesmith.results import EvalResults
    from tunesmith.runs import run_summary

    _, run = old_run(tmp_path)
    probes = [{"category": "reasoning"}] * 16
    results = EvalResults(examples=4, task_metric="exact_match", metrics=["exact_match"], base={"exact_match": 0.0},
                          tuned={"exact_match": 0.25},
                          probes={"count": 16, "margin": 0.05, "perplexity_margin": 0.05, "regression": True,
                                  "base": {**accuracies(probes, [1.0] * 16), "perplexity": 17.0},
                                  "tuned": {**accuracies(probes, [1.0] * 15 + [0.0]), "perplexity": 17.1}})
    run.eval_dir.mkdir(parents=True, exist_ok=True)
    (run.eval_dir / "results.json").write_text(results.model_dump_json(), encoding="utf-8")
    summary = run_summary(run)
    assert (summary["probe_accuracy"], summary["regression"]) == (0.9375, True)


def test_the_model_card_shows_the_train_rows_hash_runs_diff_compares(trained):
    from tunesmith.card import write_model_card

    card = write_model_card(trained.run).read_text(encoding="utf-8")
    saved = trained.run.manifest().data.train.sha256  # data/train.jsonl's bytes, as run.json records them
    assert f"data/train.jsonl: `{saved[:16]}…`" in card
    # 2 steps of a 24-row epoch: the card says how much of the data training went through, not only what carries loss
    data, train = (json.loads((trained.run.path / name).read_text()) for name in ("data.json", "train.json"))
    per_epoch, seen = data["trained"]["train"]["loss_tokens"], train["throughput"]["loss_tokens"]
    assert 0 < seen < per_epoch
    assert (f"rows that carry loss: 24 of 24, {per_epoch:,} loss tokens of" in card
            and f"training went through {seen:,} loss tokens, {seen / per_epoch:.2f} epochs" in card)


def test_runs_diff_shows_the_held_out_loss_and_readable_numbers(tmp_path):
    """`runs diff` printed 1.4215764999389648 and Python's None, and left out the eval loss that differed."""
    from tunesmith.cli.runs import diff_cell
    from tunesmith.results import EvalResults
    from tunesmith.runs import diff_runs

    runs = []
    for index, loss in enumerate((1.4017, 1.2662)):
        _, run = old_run(tmp_path / str(index))
        results = EvalResults(examples=4, task_metric="exact_match", metrics=["exact_match", "loss"],
                              base={"exact_match": 0.0, "loss": 2.0}, tuned={"exact_match": 0.25 * (index + 1),
                                                                             "loss": loss})
        run.eval_dir.mkdir(parents=True, exist_ok=True)
        (run.eval_dir / "results.json").write_text(results.model_dump_json(), encoding="utf-8")
        runs.append(run)
    assert diff_runs(*runs)["outcomes"]["eval_loss"] == (1.4017, 1.2662)
    assert diff_runs(*runs)["outcomes"]["tuned"] == (0.25, 0.5)
    from tunesmith.cli import app

    table = CliRunner().invoke(app, ["runs", "diff", str(runs[0].path), str(runs[1].path)])
    assert "tuned exact_match" in table.output  # the score named by its metric, the JSON's keys kept
    assert [diff_cell(value) for value in (1.4215764999389648, None, 3, "lora")] == ["1.422", "—", "3", "lora"]


def test_env_json_names_the_commit_of_a_tunesmith_run_from_a_checkout():
    """env.json said only "tunesmith": "0.1.0": two runs of one version from different code looked the same to
    `runs diff`. From a git checkout the commit (and whether it had changes) is recorded."""
    import subprocess

    from tests.conftest import REPO
    from tunesmith.runs import environment_snapshot

    source = environment_snapshot()["tunesmith_source"]
    if not (REPO / ".git").exists():
        assert source is None
        return
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert source["commit"] == head and isinstance(source["modified"], bool)


def test_every_stage_renders_with_the_template_training_saved_not_the_base_folder_edited_since(trained, tmp_path):
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.models.tuned import run_tokenizer

    copy, base = run_on_a_copy_of_its_base(trained, tmp_path)
    trained_with = run_tokenizer(copy).chat_template
    edited = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"
    (base / "chat_template.jinja").write_text(edited, encoding="utf-8")
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert load_tokenizer(base).chat_template == edited  # the base's own now renders otherwise
    assert run_tokenizer(copy).chat_template == trained_with == (copy.adapter_dir / "chat_template.jinja").read_text()


def test_eval_refuses_to_set_what_training_already_acted_on(trained):
    for key, hint in (("data.eval=other.jsonl", "--data FILE"), ("model.source=other", "Train a new run"),
                      ("method.kind=dpo", "Train a new run"), ("training.lr=1", "Train a new run"),
                      ("adapter.r=4", "Train a new run")):
        with pytest.raises(TunesmithError, match=f"--set {key.partition('=')[0]}: the run was trained") as refused:
            trained.run.load_recipe([key])
        assert hint in refused.value.hint
    recipe = trained.run.load_recipe(["training.device=cpu", "eval.max_new_tokens=3", "data.system_prompt=Hi"])
    assert (recipe.training.device, recipe.eval.max_new_tokens) == ("cpu", 3)


def test_a_gguf_is_checked_on_the_runs_own_prompts_and_on_the_fixed_ones_where_they_are_gone(trained, tmp_path,
                                                                                            capsys):
    from tunesmith.export.gguf import run_conversations

    conversations = run_conversations(trained.run)
    assert [messages for messages, _ in conversations] == [row["messages"][:-1] for row in trained.run.eval_rows()]
    copy = Run(Path(shutil.copytree(trained.run.path, tmp_path / "copy")))
    (copy.path / "data" / "eval.jsonl").unlink()  # a run shared without its held-out rows
    assert run_conversations(copy) == []
    assert "verifying on the fixed prompts only" in capsys.readouterr().err


def test_an_output_file_that_is_a_stream_is_written_into_and_a_link_is_replaced_not_followed(tmp_path):
    """`-o /dev/stdout` replaced the link /dev/stdout with a file (as root, for every later process), and `-o /dev/full`
    replaced the device and reported success: a stream is written into (a pipe nobody reads is an error, not a hang),
    the disk's refusal names the file; a link in a run directory is replaced, never written through (a README.md
    linked to ~/.bashrc in a run copied from elsewhere)."""
    import errno
    import subprocess
    import sys
    import threading

    from tunesmith.runs import atomic_write_text

    target = tmp_path / "bashrc"
    target.write_text("mine")
    link = tmp_path / "README.md"
    link.symlink_to(target)
    atomic_write_text(link, "card")
    assert not link.is_symlink() and link.read_text() == "card" and target.read_text() == "mine"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as nobody:
        atomic_write_text(fifo, "into the void")
    assert nobody.value.errno == errno.ENXIO and nobody.value.filename == str(fifo)
    received: list[bytes] = []
    linked = tmp_path / "stdout"  # as /dev/stdout -> /proc/self/fd/1 names the pipe a shell set up
    linked.symlink_to(fifo)
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    while not received and reader.is_alive():  # until the reader has the pipe open
        try:
            atomic_write_text(linked, "through the pipe")
            break
        except OSError:
            continue
    reader.join(timeout=30)
    assert received == [b"through the pipe"] and fifo.is_fifo() and linked.is_symlink()
    log = tmp_path / "all.log"  # `... -o /dev/stdout >> all.log`: appended to, the earlier lines kept
    log.write_text("earlier\n")
    code = ("from pathlib import Path; from tunesmith.runs import atomic_write_text; print('first', flush=True); "
            "atomic_write_text(Path('/dev/stdout'), 'script\\n')")
    with log.open("a") as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, timeout=120)
    assert log.read_text() == "earlier\nfirst\nscript\n"
    if Path("/dev/full").is_char_device():
        with pytest.raises(OSError) as refused:
            atomic_write_text(Path("/dev/full"), "x")
        assert refused.value.errno == errno.ENOSPC and refused.value.filename == "/dev/full"
        assert Path("/dev/full").is_char_device()