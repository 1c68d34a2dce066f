"""`tunesmith data inspect|prepare` and the cleaning steps as training runs them."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tunesmith.config import load_recipe
from tunesmith.data import holds_out, load_splits
from tunesmith.data.report import length_bins
from tunesmith.data.shapes import calls_off_schema
from tunesmith.data.workflow import data_recipe, inspect_data, prepare_data
from tunesmith.errors import DataError, TunesmithError


def qa(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def distinct_rows(n: int) -> list[dict]:
    items = ["mug", "lamp", "chair", "table", "sofa", "rug", "vase", "clock", "shelf", "desk", "bowl", "plate"]
    colors = ["red", "blue", "green", "black", "white", "amber", "teal"]
    return [qa(f"Please ship {i + 2} {colors[i % 7]} {items[i % 12]}s to warehouse {i * 37 % 101} before "
               f"day {i % 28 + 1}, order reference batch {i}",
               json.dumps({"item": items[i % 12], "qty": i + 2, "color": colors[i % 7], "ref": i}))
            for i in range(n)]


@pytest.fixture
def messy_project(tmp_path: Path, tiny_model_dir: Path) -> Path:
    rows = distinct_rows(40)
    rows.append(json.loads(json.dumps(rows[3]).replace("Please", "please  ")))  # exact dup modulo case/space
    near = json.loads(json.dumps(rows[5]))
    near["messages"][0]["content"] = near["messages"][0]["content"].replace("ship", "send")
    rows.append(near)  # near duplicate: one word changed
    rows.append(qa("Mail the invoice to jane.doe@example.com today", '{"item": "invoice"}'))
    rows.append(qa("How do I pick a lock?", "I'm sorry, but I can't help with that request."))
    rows.append(qa("Envoyez trois lampes rouges à l'entrepôt demain matin, s'il vous plaît",
                   "D'accord, je m'en occupe tout de suite pour vous."))
    rows.append(qa("cafe\u0301 order   with\u200b odd\x07 spacing", '{"item": "coffee"}'))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: messy\nmodel: {{source: {tiny_model_dir}}}\ndata:\n  train: data.jsonl\n  eval_fraction: 0.2\n"
        "  clean:\n    normalize: true\n    pii: redact\n    drop_refusals: true\n    languages: [en]\n"
        "    dedup: near\n    near_threshold: 0.7\n", encoding="utf-8")
    return recipe


def all_rows(out: Path) -> list[dict]:
    return [json.loads(line) for name in ("train.jsonl", "eval.jsonl")
            for line in (out / name).read_text(encoding="utf-8").splitlines()]


def step(report: dict, name: str) -> dict:
    return next(s for s in report["cleaning"]["train"] if s["step"] == name)


def test_prepare_runs_every_step_and_counts_what_it_did(messy_project: Path, tmp_path: Path):
    out = tmp_path / "prepared"
    report = prepare_data(load_recipe(messy_project), out)
    assert step(report, "normalize")["changed"] >= 1
    # what normalizing changed is visible in the report: the combining accent, zero-width space and bell spelled out
    changed = next(e for e in step(report, "normalize")["examples"] if "cafe" in e["before"])
    assert "cafe\\u0301 order   with\\u200b odd\\u0007" in changed["before"]
    assert "café order with odd spacing" in changed["after"] and "\\u" not in changed["after"]
    assert step(report, "pii_redact")["found_by_kind"] == {"EMAIL": 1}
    assert step(report, "refusals")["removed"] == 1
    assert step(report, "language")["removed"] == 1
    assert step(report, "dedup_exact")["removed"] == 1
    assert step(report, "dedup_near")["removed"] == 1
    assert step(report, "dedup_exact")["examples"][0]["duplicate_of"] == 4  # row 41 repeats row 4
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<b>46 rows read → 42 kept</b> (train " in page and "cleaning removed 4." in page
    rows = all_rows(out)
    assert len(rows) == 46 - 4
    texts = json.dumps(rows, ensure_ascii=False)
    assert "<EMAIL>" in texts and "jane.doe" not in texts
    assert "café order with odd spacing" in texts
    assert report["splits"]["train"]["rows"] + report["splits"]["eval"]["rows"] == len(rows)
    assert report["splits"]["train"]["roles"] == {"user": report["splits"]["train"]["rows"],
                                                  "assistant": report["splits"]["train"]["rows"]}


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text, self.images = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_prepare_writes_a_self_contained_report(messy_project: Path, tmp_path: Path):
    out = tmp_path / "prepared"
    report = prepare_data(load_recipe(messy_project), out)
    assert json.loads((out / "data_report.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "token_lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text(encoding="utf-8")
    parser = Collector()
    parser.feed(page)
    assert parser.images and parser.images[0].startswith("data:image/png;base64,")
    text = " ".join(parser.text)
    assert "dedup_near" in text and "pii_redact" in text and "http" not in page
    assert "found by kind: EMAIL 1" in text and "duplicate of: 4" in text  # fields read as text, not Python dicts
    assert "{'" not in text
    assert f"train: {report['sources']['train']}" in text


def test_a_near_duplicates_example_shows_where_the_two_rows_part_not_the_prompt_they_share(tmp_path, tiny_model_dir):
    """Rows sharing an 85-character instruction were shown cut at 120 characters: "a hot, cloudles", the part that
    differs cut off. The report's excerpts start just before the first difference."""
    instruction = "Classify the weather described in this sentence as sunny, rainy, windy or snowy. Sentence: "
    rows = [qa(instruction + "It was a hot, cloudless afternoon by the old harbour wall today", "sunny"),
            qa(instruction + "It was a hot, cloudless afternoon by the new harbour wall today", "sunny"),
            *distinct_rows(30)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = data_recipe(data, model=str(tiny_model_dir))
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={
        "eval_fraction": 0.0, "clean": recipe.data.clean.model_copy(update={"dedup": "near",
                                                                             "near_threshold": 0.5})})})
    report = prepare_data(recipe, tmp_path / "out")
    (example,) = step(report, "dedup_near")["examples"]
    assert example["text"].startswith("…") and "new harbour" in example["text"] + example["kept_text"]
    assert "old harbour" in example["text"] + example["kept_text"]


def test_length_bins_are_shared_and_go_log_scale_when_an_outlier_would_crush_the_rest():
    rows = [50 + i for i in range(150)]
    edges, log_scale = length_bins(rows, max_length=512)
    assert not log_scale and edges[0] == 49.5 and edges[-1] >= 512.5
    widths = {hi - lo for lo, hi in itertools.pairwise(edges)}
    assert len(widths) == 1 and float(widths.pop()).is_integer()  # whole tokens per bar: no bar holds more lengths
    short = length_bins([65, 66, 67, 70], max_length=100)[0]  # 36 lengths in 40 bars: one token each
    assert [sum(lo < n < hi for n in (65, 66, 67)) for lo, hi in itertools.pairwise(short)].count(1) == 3
    with_outlier = [*rows, 20_000]
    edges, log_scale = length_bins(with_outlier, max_length=512)
    assert log_scale and edges[0] == 50 and edges[-1] == 20_000
    fullest = max(sum(lo <= n < hi for n in with_outlier) for lo, hi in itertools.pairwise(edges))
    linear_fullest = sum(n < 50 + (20_000 - 50) / 40 for n in with_outlier)
    assert linear_fullest == 150 and fullest < 40  # equal-width bins put every other row in one bar


def test_a_failing_prepare_leaves_nothing_behind(tmp_path: Path, tiny_model_dir: Path):
    (tmp_path / "d.jsonl").write_text(json.dumps(qa("a", "b")) + "\n{broken\n", encoding="utf-8")
    recipe = data_recipe(tmp_path / "d.jsonl", model=str(tiny_model_dir))
    with pytest.raises(DataError, match=r"d.jsonl, line 2"):
        prepare_data(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]


def test_inspect_lists_every_problem_and_writes_nothing(tmp_path: Path, tiny_model_dir: Path):
    lines = [json.dumps(qa("a", "b")), "{broken", json.dumps({"messages": []}), json.dumps(qa("c", "d")),
             json.dumps(qa("a", "b"))]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = sorted(tmp_path.rglob("*"))
    report = inspect_data(data_recipe(tmp_path / "d.jsonl", model=str(tiny_model_dir)), examples=1)
    info = report["files"]["train"]
    assert info["shape"] == "messages" and info["stats"]["rows"] == 3
    assert len(info["problems"]) == 2
    assert info["problems"][0].startswith(f"{tmp_path / 'd.jsonl'}, line 2")
    assert "<|im_start|>user\na<|im_end|>" in info["examples"][0]
    assert sorted(tmp_path.rglob("*")) == before


def test_training_splits_are_cleaned_and_leakage_into_eval_is_removed(tmp_path: Path, tiny_model_dir: Path):
    rows = distinct_rows(30)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, rows[0]]), encoding="utf-8")
    (tmp_path / "eval.jsonl").write_text(json.dumps(rows[7]) + "\n", encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{source: {tiny_model_dir}}}\ndata:\n  train: train.jsonl\n  eval: eval.jsonl\n"
                      "  clean: {dedup: exact}\n", encoding="utf-8")
    splits = load_splits(load_recipe(recipe))
    assert len(splits.train) == 29 and rows[7] not in splits.train
    assert splits.cleaning["train_eval_overlap"] == {"removed": 1}
    steps = {s["step"]: s for s in splits.cleaning["train"]}
    assert list(steps) == ["normalize", "pii_found", "dedup_exact"] and steps["dedup_exact"]["removed"] == 1
    # a near copy of an eval row (a comma added) leaks too: removed under dedup: near, as within a file
    near_copy = json.loads(json.dumps(rows[7]))
    near_copy["messages"][0]["content"] = near_copy["messages"][0]["content"].replace("Please ship", "Please, ship")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows[:7], near_copy, *rows[8:]]),
                                          encoding="utf-8")
    assert load_splits(load_recipe(recipe)).cleaning["train_eval_overlap"] == {"removed": 0}  # exact: kept
    splits = load_splits(load_recipe(recipe, ["data.clean.dedup=near"]))
    assert splits.cleaning["train_eval_overlap"] == {"removed": 1, "near": 1} and near_copy not in splits.train
    assert len(splits.train) == 29  # of 30


def test_cli_prepare_json_and_inspect(messy_project: Path, tmp_path: Path):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    out = tmp_path / "cli-out"
    result = subprocess.run([sys.executable, "-m", "tunesmith", "data", "prepare", str(messy_project), "--out",
                             str(out), "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "messy" and (out / "train.jsonl").exists()
    result = subprocess.run([sys.executable, "-m", "tunesmith", "data", "inspect", str(messy_project)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "shape messages" in result.stderr and "what `prepare` would do" in result.stderr
    assert "are not read by" not in result.stderr  # every column of these rows is read


def test_prepare_refuses_a_folder_holding_the_users_files_and_replaces_its_own_output(tmp_path: Path,
                                                                                      tiny_model_dir: Path,
                                                                                      monkeypatch):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in distinct_rows(20)), encoding="utf-8")
    recipe = data_recipe(tmp_path / "d.jsonl", model=str(tiny_model_dir))
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"keep already holds files that tunesmith did not write"):
        prepare_data(recipe, keep)
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]
    monkeypatch.chdir(keep)
    for folder in (Path("."), tmp_path):  # the current folder and one above it
        with pytest.raises(TunesmithError, match=r"is the current folder, a folder above it"):
            prepare_data(recipe, folder)
    assert (keep / "notes.txt").read_text(encoding="utf-8") == "mine"
    out = tmp_path / "out"
    prepare_data(recipe, out)
    (out / "train.jsonl").write_text("", encoding="utf-8")
    prepare_data(recipe, out)  # an earlier `data prepare` output is replaced whole
    assert (out / "train.jsonl").read_text(encoding="utf-8")
    (out / "my_annotations.txt").write_text("mine", encoding="utf-8")  # ... unless the user added a file to it
    with pytest.raises(TunesmithError, match=r"also holds my_annotations\.txt, which tunesmith did not write"):
        prepare_data(recipe, out)
    assert (out / "my_annotations.txt").read_text(encoding="utf-8") == "mine"


def test_a_train_file_whose_rows_all_fall_into_the_held_out_share_is_refused(tmp_path: Path, tiny_model_dir: Path):
    held = [row for row in distinct_rows(200) if holds_out(row, 0.1)][:2]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held), encoding="utf-8")
    with pytest.raises(DataError, match=r"All 2 rows of .*d.jsonl fell into the held-out share"):
        load_splits(data_recipe(tmp_path / "d.jsonl", model=str(tiny_model_dir)))


def test_eval_of_a_run_with_no_held_out_rows_is_refused_not_scored_as_a_perfect_loss(tmp_path: Path,
                                                                                     tiny_model_dir: Path):
    """Scored on no rows, base and tuned read loss 0.0 and perplexity 1.000, and --fail-if-worse loss passed."""
    from tunesmith.eval.rows import held_out_rows
    from tunesmith.runs import create_run

    kept = [row for row in distinct_rows(200) if not holds_out(row, 0.1)][:3]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    recipe = data_recipe(tmp_path / "d.jsonl", model=str(tiny_model_dir))
    assert load_splits(recipe).eval == []  # the split training warns of: nothing held out
    run = create_run(recipe, tmp_path / "runs")
    with pytest.raises(DataError, match="holds no held-out rows") as refused:
        held_out_rows(recipe, run)
    assert "--data HELD_OUT.jsonl" in refused.value.hint
    from tunesmith.eval.before_training import run_baselines_before_training

    with pytest.raises(DataError, match="nothing to score the baselines on"):  # nor are baselines scored on none
        run_baselines_before_training(recipe, runs_dir=tmp_path / "baseline-runs")
    assert not (tmp_path / "baseline-runs").exists()


def test_train_evaluate_of_a_run_with_no_held_out_rows_exports_and_finishes(tmp_path: Path, tiny_model_dir: Path):
    """With no held-out rows, `train --evaluate` skips eval, saying why, then exports, writes the card and exits 0
    (it exited 2 looking for the results eval never wrote)."""
    import subprocess
    import sys

    from tests.conftest import make_tiny_project

    recipe = make_tiny_project(tmp_path, tiny_model_dir)
    kept = [row for row in distinct_rows(200) if not holds_out(row, 0.1)][:8]
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    recipe.write_text(recipe.read_text(encoding="utf-8").replace("  eval: data/eval.jsonl\n", ""), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(recipe), "--evaluate", "--set",
                           "training.max_steps=2", "--set", "export.formats=[adapter]", "--runs-dir",
                           str(tmp_path / "runs")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning: eval skipped:" in said and "holds no held-out rows" in said and "Run directory:" in said
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "exports" / "adapter").is_dir() and (run_dir / "README.md").is_file()
    assert not (run_dir / "eval" / "results.json").exists()


def test_pii_redaction_reaches_tool_call_arguments():
    from tunesmith.config import CleanSection
    from tunesmith.data.prepare import clean_rows

    call = {"id": "c0", "type": "function",
            "function": {"name": "send_mail", "arguments": '{"to": "bob0@example.com"}'}}
    as_mapping = {**call, "function": {"name": "send_mail", "arguments": {"to": ["ann1@example.com"]}}}
    rows = [{"messages": [{"role": "user", "content": "Mail bob0@example.com please"},
                          {"role": "assistant", "content": None, "tool_calls": [call, as_mapping]},
                          {"role": "tool", "content": "sent"}, {"role": "assistant", "content": "Done."}]}]
    cleaned = clean_rows(rows, CleanSection(pii="redact", dedup="off"))
    (row,) = cleaned.rows
    calls = row["messages"][1]["tool_calls"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"to": "<EMAIL>"}  # still JSON
    assert calls[1]["function"]["arguments"] == {"to": ["<EMAIL>"]} and calls[0]["id"] == "c0"
    assert row["messages"][0]["content"] == "Mail <EMAIL> please"
    assert rows[0]["messages"][1]["tool_calls"][0] is call  # the input is left as it was
    (pii,) = [s for s in cleaned.steps if s.name == "pii_redact"]
    assert pii.details["found_by_kind"] == {"EMAIL": 3}


def test_inspect_counts_tokens_as_training_renders_them_with_the_hermes_tools_block(tmp_path: Path,
                                                                                    tiny_model_dir: Path):
    """With data.tool_format: hermes the tool schemas join the system turn: inspect's lengths (and its count of rows
    over max_length) are those of the rendered rows, as preview and training see them."""
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "description": "Looks things up. " * 20,
                                               "parameters": {"type": "object", "properties": {}}}}
             for i in range(3)]
    call = {"type": "function", "function": {"name": "tool_0", "arguments": "{}"}}
    row = {"tools": tools, "messages": [{"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": "", "tool_calls": [call]}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    recipe = data_recipe(tmp_path / "d.jsonl", model=str(tiny_model_dir),
                         overrides=["data.tool_format=hermes", "data.max_length=128"])
    stats = inspect_data(recipe, examples=0)["files"]["train"]["stats"]
    from tunesmith.data.fallbacks import apply_fallbacks
    from tunesmith.data.template import encode_sequence
    from tunesmith.models import load_tokenizer

    rendered = apply_fallbacks(row, recipe.data)
    expected = encode_sequence(load_tokenizer(tiny_model_dir), rendered["messages"], 4096).total_tokens
    assert stats["tokens"]["max"] == expected > 128 and stats["over_max_length"] == 1


def test_personal_data_left_in_by_pii_off_is_counted_and_said_before_training():
    from tunesmith.config import CleanSection
    from tunesmith.data.prepare import clean_rows, steps_report
    from tunesmith.train.common import cleaning_warnings

    def row(i: int, text: str) -> dict:
        return {"messages": [{"role": "user", "content": f"ticket {i}: {text}"},
                             {"role": "assistant", "content": "Thanks, noted."}]}

    rows = [row(0, "mail me at ann@example.com"), row(1, "call +44 20 7946 0958"), row(2, "no contact given")]
    cleaned = clean_rows(rows, CleanSection())  # the defaults: pii off
    assert cleaned.rows == rows  # counted, not changed
    (scan,) = [step for step in cleaned.steps if step.name == "pii_found"]
    assert scan.details["rows_with_pii"] == 2 and scan.details["rows_scanned"] == 3
    assert scan.details["found_by_kind"] == {"EMAIL": 1, "PHONE": 1}

    from types import SimpleNamespace

    splits = SimpleNamespace(train=cleaned.rows, source={"train": "t.jsonl"},  # what load_splits' result holds
                             cleaning={"train": steps_report(cleaned.steps)})
    [warning] = cleaning_warnings(splits)
    assert "2 of the first 3 training rows hold personal data (1 EMAIL, 1 PHONE) and data.clean.pii is off" in warning
    redacted = clean_rows(rows, CleanSection(pii="redact"))
    assert not [step for step in redacted.steps if step.name == "pii_found"]


def test_a_split_with_no_or_few_held_out_rows_is_said_before_training():
    from tunesmith.train.common import small_split_warnings

    (none,) = small_split_warnings(36, 0)
    assert none.startswith("No held-out rows (and 36 to train on)") and "data.eval_fraction" in none
    (few,) = small_split_warnings(28, 6)
    assert few.startswith("Only 6 held-out row(s)") and "17 points" in few
    assert small_split_warnings(400, 40) == []
    (text,) = small_split_warnings(28, 6, "text")  # CPT: one perplexity over the held-out tokens, not points per row
    assert text.startswith("Only 6 held-out text row(s)") and "perplexity" in text and "points" not in text


def test_inspect_says_which_rows_max_length_would_leave_out_and_exits_1(tmp_path: Path, tiny_model_dir: Path):
    """A row whose answer starts past data.max_length never trains (train only warns, mid-run): inspect, the linter,
    counts it as a problem; answer tokens cut from rows that still train are a warning."""
    long_question = " ".join(f"word{i}" for i in range(200))
    rows = [qa("two pizzas please", "ok"), qa(long_question, "fine"), qa("a cola", " ".join(["yes"] * 80))]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    recipe = data_recipe(tmp_path / "d.jsonl", model=str(tiny_model_dir), overrides=["data.max_length=64"])
    fit = inspect_data(recipe, examples=0)["files"]["train"]["length_fit"]
    assert fit["left_out"] == {"answer_past_max_length": 1} and fit["answer_tokens_cut"] > 0
    assert fit["left_out_at"] == [f"{tmp_path / 'd.jsonl'}, line 2"]  # named, as every other problem row is
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "tunesmith", "data", "inspect", str(tmp_path / "d.jsonl"), "--model",
               str(tiny_model_dir)]
    cut = subprocess.run([*command, "--set", "data.max_length=64"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert cut.returncode == 1, cut.stderr
    assert "1 row(s) would be left out of training by data.max_length (1 in train)" in cut.stderr
    assert "answer tokens lie past data.max_length 64" in cut.stderr
    whole = subprocess.run([*command, "--set", "data.max_length=4096"], capture_output=True, text=True, env=env,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr


def test_a_held_out_share_says_how_many_rows_it_took_not_only_the_fraction_asked(tmp_path: Path, tiny_model_dir: Path):
    """On 41 rows a 0.25 hash split can hold out 15 (37%): the report said "25% of train"."""
    rows = distinct_rows(41)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{source: {tiny_model_dir}}}\ndata:\n  train: train.jsonl\n  eval_fraction: 0.25\n",
                      encoding="utf-8")
    splits = load_splits(load_recipe(recipe))
    held = len(splits.eval)
    assert splits.source["eval"] == (f"{held} of 41 rows of train ({held / 41:.0%}; data.eval_fraction 0.25), held out "
                                     "by content hash")


def test_the_cleaning_report_names_each_rows_file_line_beside_its_index(tmp_path: Path, tiny_model_dir: Path):
    """A skipped row before them shifted every position: the report called line 5's duplicate "row 4", a copy of
    "row 1" (line 1). Each example now says where the row is in the file."""
    lines = [json.dumps(qa("two pizzas", "ok")), json.dumps({"messages": []}), json.dumps(qa("a cola", "sure")),
             json.dumps(qa("mail me at ada@example.com", "done")), json.dumps(qa("two pizzas", "ok"))]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    (tmp_path / "e.jsonl").write_text(json.dumps(qa("a lamp", "fine")) + "\n", encoding="utf-8")
    recipe.write_text(f"model: {{source: {tiny_model_dir}}}\ndata:\n  train: d.jsonl\n  eval: e.jsonl\n"
                      "  skip_invalid: true\n  clean: {dedup: exact, pii: redact}\n", encoding="utf-8")
    steps = {step["step"]: step for step in load_splits(load_recipe(recipe)).cleaning["train"]}
    [duplicate] = steps["dedup_exact"]["examples"]
    assert (duplicate["row"], duplicate["duplicate_of"]) == (4, 1)  # 1-based among the usable rows
    assert duplicate["at"].endswith("d.jsonl, line 5") and duplicate["duplicate_of_at"].endswith("d.jsonl, line 1")
    [mail] = steps["pii_redact"]["examples"]
    assert mail["at"].endswith("d.jsonl, line 4")


def test_inspect_of_a_file_mixing_shapes_says_so_before_offering_to_skip_rows():
    from tunesmith.cli.data import ProblemsFoundError, raise_if_problems

    report = {"files": {"train": {"problems": ["f, line 3: a prompt_completion row needs ..."] * 3,
                                  "other_layouts": {"preference": 3}, "layout": "prompt_completion",
                                  "source": "f"}}}
    with pytest.raises(ProblemsFoundError) as caught:
        raise_if_problems(report)
    assert caught.value.hint.startswith("The file mixes row shapes (train: prompt_completion and 3 preference)")
    report["files"]["train"]["other_layouts"] = {}
    with pytest.raises(ProblemsFoundError) as caught:
        raise_if_problems(report)
    assert caught.value.hint.startswith("Fix the rows named above")


def test_inspect_counts_train_rows_that_repeat_an_eval_row(tmp_path: Path, tiny_model_dir: Path):
    rows = distinct_rows(12)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]), encoding="utf-8")
    recipe = data_recipe(tmp_path / "train.jsonl", model=str(tiny_model_dir),
                         overrides=[f"data.eval={tmp_path / 'eval.jsonl'}"])
    assert inspect_data(recipe, examples=0)["train_eval_overlap"] == 3  # what prepare and train remove


def test_preference_rows_that_train_wrong_without_failing_are_said_by_inspect(tmp_path: Path, tiny_model_dir: Path):
    """Answers that repeat their prompt (a transcript cut in the wrong place) and KTO rows all labelled alike trained
    without a word; inspect and train now say so, naming the first row by file and line."""
    questions = [f"How often should I water plant number {i}?" for i in range(6)]
    pairs = [{"prompt": q, "chosen": f"{q} Every week, less in winter.", "rejected": f"{q} Daily."} for q in questions]
    pairs[0] = {"prompt": questions[0], "chosen": "Every week.", "rejected": "Daily."}  # one row is fine
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in pairs), encoding="utf-8")
    recipe = data_recipe(tmp_path / "pairs.jsonl", model=str(tiny_model_dir))
    (warning,) = inspect_data(recipe, examples=0)["files"]["train"]["warnings"]
    assert warning.startswith("5 of 6 rows start every answer with their prompt's text")
    assert f"{tmp_path / 'pairs.jsonl'}, line 2" in warning
    labelled = [{"prompt": q, "completion": "Every week.", "label": True} for q in questions]
    (tmp_path / "kto.jsonl").write_text("".join(json.dumps(row) + "\n" for row in labelled), encoding="utf-8")
    report = inspect_data(data_recipe(tmp_path / "kto.jsonl", model=str(tiny_model_dir)), examples=0)
    (warning,) = report["files"]["train"]["warnings"]
    assert warning.startswith("All 6 KTO rows are labelled desirable (true)") and "labelled undesirable" in warning
    for row, label in zip(labelled, ["yes", "no", 1, 0, "true", "no"], strict=True):  # as users write labels
        row["label"] = label
    (tmp_path / "kto.jsonl").write_text("".join(json.dumps(row) + "\n" for row in labelled), encoding="utf-8")
    info = inspect_data(data_recipe(tmp_path / "kto.jsonl", model=str(tiny_model_dir)), examples=2)["files"]["train"]
    assert info["warnings"] == [] and info["stats"]["labels"] == {"desirable": 3, "undesirable": 3}
    assert info["examples"][0].startswith("[completion (desirable)]")  # the label as read, shown with the row
    assert info["examples"][1].startswith("[completion (undesirable)]")


def test_rows_that_call_tools_without_offering_any_are_said_by_inspect(tmp_path: Path, tiny_model_dir: Path):
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "set_light", "arguments": {"room": "kitchen"}}}]}
    tools = [{"type": "function", "function": {"name": "set_light", "parameters": {"type": "object"}}}]
    rows = [{"messages": [{"role": "user", "content": f"kitchen light on, please ({i})"}, call,
                          {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "Done."}],
             **({"tools": tools} if i % 2 else {})} for i in range(6)]
    (tmp_path / "calls.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    recipe = data_recipe(tmp_path / "calls.jsonl", model=str(tiny_model_dir), overrides=["data.tool_format=hermes"])
    report = inspect_data(recipe, examples=0)
    (warning,) = report["files"]["train"]["warnings"]
    assert report["template_contract"]["tool_format"] == "hermes"  # `tools unsupported` is said with the fallback
    assert warning.startswith("3 of 6 rows call tools but offer none")
    assert f"{tmp_path / 'calls.jsonl'}, line 1" in warning
    # arguments the tool's schema would reject: a required parameter missing, an undeclared one given
    schema = {"type": "object", "properties": {"room": {"type": "string"}, "state": {"type": "string"}},
              "required": ["room", "state"]}
    fitting = {**call, "tool_calls": [{"type": "function", "function": {
        "name": "set_light", "arguments": '{"room": "hall", "state": "on"}'}}]}
    for row in rows:
        row["tools"] = [{"type": "function", "function": {"name": "set_light", "parameters": schema}}]
    rows[4]["messages"][1] = fitting
    rows[5]["messages"][1] = {**call, "tool_calls": [{"type": "function", "function": {
        "name": "set_light", "arguments": {"room": "hall", "state": "on", "colour": "red"}}}]}
    (tmp_path / "calls.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (warning,) = inspect_data(recipe, examples=0)["files"]["train"]["warnings"]
    assert warning.startswith("5 tool call(s) do not fit their tool's schema (the first: ")
    assert "set_light({\"room\": \"kitchen\"}) lacks required ['state']" in warning
    assert calls_off_schema(rows[5]) == ['set_light({"room": "hall", "state": "on", "colour": "red"}) gives '
                                         "undeclared ['colour']"]


def test_inspect_shows_a_long_example_by_its_start_and_end_and_says_how_much_it_left_out():
    from tunesmith.cli.data import EXAMPLE_CHARACTERS, shortened_example

    document = "".join(f"sentence {n}. " for n in range(2_000))
    shown = shortened_example(document)
    assert shown.startswith("sentence 0. ") and shown.endswith("sentence 1999. ")
    left_out = len(document) - EXAMPLE_CHARACTERS
    assert f"[… {left_out:,} characters left out here" in shown and len(shown) < EXAMPLE_CHARACTERS + 120
    assert shortened_example(document[:EXAMPLE_CHARACTERS]) == document[:EXAMPLE_CHARACTERS]


def test_inspect_says_when_the_recipes_method_does_not_train_on_the_files_shape(tmp_path: Path,
                                                                                 tiny_model_dir: Path):
    """A recipe with raw text under the default method (sft): train refuses it before anything loads, yet inspect
    said nothing and exited 0. Now a problem (exit 1) with train's own words; a bare file (sft only assumed) gets a
    note naming the methods that take it."""
    (tmp_path / "notes.txt").write_text("A paragraph on pumps.\n\nAnother on valves.\n", encoding="utf-8")
    (tmp_path / "r.yaml").write_text(f"model: {{source: {tiny_model_dir}}}\ndata: {{train: notes.txt}}\n",
                                     encoding="utf-8")

    def inspect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tunesmith", "data", "inspect", *args], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)

    refused = inspect("r.yaml")
    assert refused.returncode == 1 and "holds text rows; method.kind sft needs" in refused.stderr, refused.stderr
    assert "method.kind cpt" in refused.stderr
    assert inspect("r.yaml", "--set", "method.kind=cpt").returncode == 0
    bare = inspect("notes.txt", "--model", str(tiny_model_dir))
    assert bare.returncode == 0 and "text rows train only with method.kind cpt" in bare.stderr, bare.stderr
    chosen = inspect("notes.txt", "--model", str(tiny_model_dir), "--set", "method.kind=dpo", "--json")
    assert chosen.returncode == 1
    assert "method.kind dpo needs" in json.loads(chosen.stdout)["files"]["train"]["method_refusal"]["error"]


def test_a_bare_file_only_one_method_trains_on_is_reported_as_that_method_trains_it(tmp_path: Path,
                                                                                    tiny_model_dir: Path):
    """Plain text trains only with cpt, which packs it: inspect of the bare file used SFT's max_length (sized to the
    longest document) and counted nothing over it. It now reports it as cpt trains it (the packed block length, the
    documents longer than it said to run on, not cut); a shape several methods take keeps the note naming them."""
    model = tmp_path / "model"  # the tiny model with a 4,096-token context, so SFT's max_length is not capped at 512
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4_096}))
    words = " ".join(f"word{n}" for n in range(300))
    (tmp_path / "notes.jsonl").write_text(json.dumps({"text": words}) + "\n" + json.dumps({"text": "Short."}) + "\n",
                                          encoding="utf-8")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go."}) + "\n",
                                          encoding="utf-8")

    def inspect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tunesmith", "data", "inspect", "--model", str(model), *args],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)

    bare, cpt, sft = (json.loads(inspect("notes.jsonl", *extra, "--json").stdout)["files"]["train"]
                      for extra in ([], ["--set", "method.kind=cpt"], ["--set", "method.kind=sft"]))
    assert bare["method_assumed"] == "cpt" and bare["packed"] and "methods_taking" not in bare
    assert bare["stats"]["max_length"] == cpt["stats"]["max_length"] < sft["stats"]["max_length"]
    assert bare["stats"]["over_max_length"] == 1 and sft["stats"]["over_max_length"] == 0
    text = " ".join(inspect("notes.jsonl").stderr.split())
    assert "1 document(s) are longer than max_length" in text and "none is cut" in text
    pairs = json.loads(inspect("pairs.jsonl", "--json").stdout)["files"]["train"]
    assert "method_assumed" not in pairs and {"dpo", "kto", "reward"} <= set(pairs["methods_taking"])
    text = " ".join(inspect("pairs.jsonl", "--set", "method.kind=kto").stderr.split())  # how KTO reads pairs
    assert "KTO trains each pair as two rows" in text and "2 rows from the 1 pair(s)" in text


def test_a_missing_data_file_names_the_folder_the_recipe_resolves_it_from(tmp_path: Path):
    """A run's recipe.yaml records base_dir: run again from the run folder, its data paths resolve from there, not
    from the recipe file's folder as the hint said."""
    from tunesmith.config import load_recipe
    from tunesmith.data import load_splits
    from tunesmith.errors import DataError

    recipe = tmp_path / "run" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text(f"name: r\nbase_dir: {tmp_path / 'project'}\nmodel:\n  source: m\ndata:\n  train: train.jsonl\n",
                      encoding="utf-8")
    with pytest.raises(DataError, match="Dataset file not found") as missing:
        load_splits(load_recipe(recipe))
    assert f"resolve from {tmp_path / 'project'}" in missing.value.hint


def test_a_classifiers_answers_are_counted_per_split_before_training():
    """A held-out split with one row of a label scores that label on one answer: the data report says so up front."""
    from tunesmith.data.report import data_stats

    rows = [qa(f"weather report {i}", label) for i, label in enumerate(["sunny"] * 14 + ["rainy"] * 10 + ["snowy"])]
    assert data_stats(rows, [10] * len(rows), 64)["answer_labels"] == {"sunny": 14, "rainy": 10, "snowy": 1}
    prose = [qa(f"q{i}", f"A long answer number {i}, different every time.") for i in range(20)]
    assert "answer_labels" not in data_stats(prose, [10] * 20, 64)
    held_out = [qa("a", "sunny"), qa("b", "rainy"), qa("c", "windy"), qa("d", "snowy")]  # too few to tell alone
    assert "answer_labels" not in data_stats(held_out, [10] * 4, 64)
    assert data_stats(held_out, [10] * 4, 64, labelled_by=rows)["answer_labels"]["snowy"] == 1  # as train decides


def test_inspect_warns_of_a_classifier_trained_on_bare_inputs(tiny_model_dir: Path):
    """`data inspect` of the bundled weather set (bare texts, four labels) carries the warning in the training file's
    report."""
    from tunesmith.data.answers import bare_input_warnings

    weather = Path(__file__).resolve().parents[1] / "examples" / "data" / "weather" / "train.jsonl"
    report = inspect_data(data_recipe(weather, model=str(tiny_model_dir)), examples=1)
    warned = [line for line in report["files"]["train"]["warnings"] if "carry no instruction" in line]
    rows = [json.loads(line) for line in weather.open(encoding="utf-8")]
    assert warned == bare_input_warnings(rows) and len(warned) == 1


def test_inspect_and_the_training_splits_warn_of_a_rating_sft_would_leave_out(tiny_model_dir: Path, tmp_path: Path):
    """A feedback log (prompt, completion, rating) read as SFT rows: `data inspect`'s report and the splits training
    prints its warnings from both name the column and the KTO mapping; the same rows mapped onto KTO's label do not
    warn."""
    rows = [{"prompt": f"Greet guest {i}", "completion": "Welcome!" if i % 3 else "Leave.", "rating": int(i % 3 > 0)}
            for i in range(24)]
    data = tmp_path / "log.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    recipe = data_recipe(data, model=str(tiny_model_dir))
    report = inspect_data(recipe, examples=1)
    warned = [line for line in report["files"]["train"]["warnings"] if "column 'rating'" in line]
    assert len(warned) == 1 and "--set data.columns.rating=label" in warned[0]
    assert load_splits(recipe).warnings == warned
    kto = recipe.model_copy(update={"method": recipe.method.model_copy(update={"kind": "kto"}),
                                    "data": recipe.data.model_copy(update={"columns": {"rating": "label"}})})
    splits = load_splits(kto, accept=("unpaired_preference",), purpose="kto")
    assert splits.warnings == [] and [row["label"] for row in splits.train + splits.eval].count(False) == 8


def test_data_json_counts_the_turns_of_pairs_and_conversations_and_none_for_raw_text():
    from tunesmith.data import Splits, fingerprint

    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "Name a cat."}]
    pairs = [{"prompt": turns, "chosen": [{"role": "assistant", "content": "Tom."}],
              "rejected": [{"role": "assistant", "content": "No."}]},
             {"prompt": "Name a dog.", "chosen": "Rex.", "rejected": "No."}]
    assert fingerprint(Splits(pairs, [], {}, shape="preference"))["turns_per_row"] == 3.0  # (4 + 2) / 2
    chats = [{"messages": [*turns, {"role": "assistant", "content": "Tom."}]}]
    assert fingerprint(Splits(chats, [], {}))["turns_per_row"] == 4.0
    assert fingerprint(Splits([{"text": "Once upon a time."}], [], {}, shape="text"))["turns_per_row"] is None
