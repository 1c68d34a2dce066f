"""Base vs tuned through the real train → eval path on a tiny llama: every metric, the paired comparison,
the HTML report, and the --fail-if-worse gate's exit codes from the real command line."""

import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from tests.conftest import make_tiny_project
from tunesmith.config import load_recipe
from tunesmith.eval import run_eval
from tunesmith.runs import create_run
from tunesmith.train import run_training

METRICS = ["loss", "perplexity", "exact_match", "contains", "regex", "json_valid", "json_schema", "json_fields",
           "rouge_l", "chrf", "team_metrics.py:has_braces"]
EVAL_SETTINGS = """  metrics: [{metrics}]
  regex: '(?s)\\{{.*\\}}'
  json_schema: order.schema.json
"""
USER_METRIC = """def has_braces(prediction, reference):
    return float(prediction.startswith("{") and prediction.endswith("}"))
"""
SCHEMA = {"type": "object", "required": ["item"], "properties": {"item": {"type": "string"}}}


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("compare")
    recipe_file = make_tiny_project(root, tiny_model_dir)
    recipe_file.write_text(recipe_file.read_text() + EVAL_SETTINGS.format(metrics=", ".join(METRICS)))
    (root / "team_metrics.py").write_text(USER_METRIC)
    (root / "order.schema.json").write_text(json.dumps(SCHEMA))
    recipe = load_recipe(recipe_file, ["training.max_steps=24"])  # enough for the loss and chrF to move
    run = create_run(recipe, root / "runs")
    run_training(recipe, run)
    run_eval(recipe, run)
    return run


@pytest.fixture(scope="module")
def results(evaluated_run):
    return json.loads((evaluated_run.eval_dir / "results.json").read_text())


def test_every_chosen_metric_is_compared_with_an_interval(results):
    expected = {"loss", "perplexity", "exact_match", "contains", "regex", "json_valid", "json_schema",
                "field_accuracy", "field/item", "rouge_l", "chrf", "has_braces"}
    assert expected <= set(results["comparison"])
    for name, entry in results["comparison"].items():
        assert entry["delta"] == pytest.approx(entry["tuned"] - entry["base"], abs=2e-4), name
        if name in ("loss", "perplexity"):
            assert entry["ci95"] is None and not entry["higher_is_better"]
            continue
        low, high = entry["ci95"]
        assert low <= entry["delta"] + 1e-4 and entry["delta"] - 1e-4 <= high, name
        assert entry["wins"] + entry["losses"] + entry["ties"] == results["examples"] == 12
        assert 0 <= entry["base"] <= 1 and 0 <= entry["tuned"] <= 1


def test_summaries_and_per_example_scores_stay_readable(results):
    assert results["metrics"] == METRICS
    for variant in ("base", "tuned"):
        assert {"loss", "perplexity", "exact_match", "field_accuracy", "field/item", "chrf"} <= set(results[variant])
        assert all(len(scores) == 12 for scores in results["per_example"][variant].values())
    assert results["tuned"]["loss"] < results["base"]["loss"]
    assert results["comparison"]["chrf"]["tuned"] == pytest.approx(results["tuned"]["chrf"], abs=1e-4)
    assert results["comparison"]["chrf"]["delta"] > 0  # the tuned model writes answers closer to the reference


class ReportText(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_is_self_contained_and_shows_outputs_and_numbers(evaluated_run, results):
    document = (evaluated_run.eval_dir / "report.html").read_text()
    parser = ReportText()
    parser.feed(document)
    text = "".join(parser.text)
    for sample in results["samples"][:3]:
        assert sample["prompt"] in text and sample["reference"] in text and sample["base"] in text
    for name in ("chrf", "exact_match", "has_braces"):
        entry = results["comparison"][name]
        interval = ("(no example differs)" if entry["wins"] == entry["losses"] == 0  # every example tied
                    else f"[{entry['ci95'][0]:+.4f}, {entry['ci95'][1]:+.4f}]")
        assert f"{entry['delta']:+.4f}" in text and interval in text
    assert parser.urls and all(url.startswith("data:image/png;base64,") for url in parser.urls)
    assert "http://" not in document and "https://" not in document


def tunesmith_eval(run, *gate: str) -> subprocess.CompletedProcess:
    args = [arg for rule in gate for arg in ("--fail-if-worse", rule)]
    return subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(run.path), *args], capture_output=True,
                          text=True, timeout=300, cwd=run.path.parent)


def test_gate_passes_when_tuned_is_better(evaluated_run):
    result = tunesmith_eval(evaluated_run, "loss", "chrf:0.01")
    assert result.returncode == 0, result.stderr
    assert "ok: loss" in result.stderr and "ok: chrf" in result.stderr
    assert "95% CI" in result.stderr  # the terminal table's comparison columns


def test_gate_exits_3_when_tuned_misses_a_required_improvement(evaluated_run, results):
    loss = results["comparison"]["loss"]
    demand = loss["delta"] - 0.05  # ask for 0.05 more loss reduction than tuning achieved
    result = tunesmith_eval(evaluated_run, f"loss:{demand:.4f}")
    assert result.returncode == 3, result.stderr
    message = " ".join(result.stderr.split())
    assert loss["delta"] < 0  # tuning lowered the loss: it missed the demand, it is not worse than base
    assert (f"NOT ENOUGH: loss base {loss['base']:.4f}, tuned {loss['tuned']:.4f}, delta {loss['delta']:+.4f}"
            in message)
    margin = float(f"{demand:.4f}")
    assert f"margin {margin:g}: tuned must beat base by {-margin:g}" in message and "Traceback" not in result.stderr
    assert f"Look at {evaluated_run.eval_dir / 'report.html'}" in message


def test_a_margin_a_0_to_1_metric_can_never_meet_is_refused(evaluated_run):
    result = tunesmith_eval(evaluated_run, "chrf:5")
    assert result.returncode == 2, result.stderr
    assert "chrf lies between 0 and 1, so a margin of 5 can never trip" in " ".join(result.stderr.split())


def test_gate_exits_2_and_lists_metrics_for_an_unknown_one(evaluated_run):
    result = tunesmith_eval(evaluated_run, "rouge")
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert "unknown metric 'rouge'" in message and "rouge_l" in message and "has_braces" in message


def test_a_near_miss_or_a_bad_margin_is_refused_before_eval_runs(evaluated_run):
    results_file = evaluated_run.eval_dir / "results.json"
    written = results_file.stat().st_mtime_ns
    plain = ["--set", "eval.metrics=[exact_match, chrf]"]  # no user metric: a near miss cannot be one of its keys
    for rule, said in (("exatc_match", "did you mean 'exact_match'?"), ("chrf:0.o1", "the margin '0.o1' is not"),
                       ("chrf:abc", "--fail-if-worse chrf:abc: the margin 'abc'")):  # `:abc:` was shown as an emoji
        result = subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(evaluated_run.path), *plain,
                                 "--fail-if-worse", rule], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert said in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
    assert results_file.stat().st_mtime_ns == written  # refused before any model loaded: eval never ran


def test_names_only_eval_can_tell_are_left_to_the_check_after_it():
    from tunesmith.eval.gate import check_rule_names, parse_gate_rule

    check_rule_names([parse_gate_rule(name) for name in ("probe/arithmetic", "reward/format", "arc_easy/acc",
                                                         "field/item", "exact_match:0.02", "probes")], False)
    check_rule_names([parse_gate_rule("exact_matches")], True)  # a user metric may return that key
    with pytest.raises(Exception, match="did you mean 'exact_match'"):
        check_rule_names([parse_gate_rule("exact_matches")], False)


def test_a_prompts_file_compare_cannot_read_gets_a_hint_compare_can_follow(tmp_path):
    """The loaders' hints name a recipe's keys (`--set data.columns...`), which `compare` does not take."""
    from tunesmith.errors import DataError
    from tunesmith.eval.compare import load_prompts

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="cannot tell the dataset shape") as refused:
        load_prompts(prompts)
    assert "--set" not in refused.value.hint and "Rename the file's columns" in refused.value.hint


@pytest.mark.parametrize(("layout", "name"), [("orders-run/exports/adapter", "orders-run"),
                                              ("orders-run/adapter", "orders-run"), ("my-lora", "my-lora")])
def test_an_adapter_folder_is_named_after_its_run_not_its_parent_folder(tmp_path, tiny_model_dir, layout, name):
    """RUN/exports/adapter was a column headed "exports"."""
    from tunesmith.eval.compare import adapter_source

    folder = tmp_path / layout
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    assert adapter_source(folder).name == name


def test_compare_scores_runs_by_the_metrics_their_own_eval_chose(tmp_path):
    """compare scored a labels run by exact_match and chrF, not the label_accuracy its eval chose."""
    import json

    from tunesmith.eval.compare import runs_own_metrics

    runs = []
    for name, metrics in (("a", ["loss", "perplexity", "exact_match", "label_accuracy"]),
                          ("b", ["loss", "exact_match", "label_accuracy", "team.py:f", "regex"])):
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "eval" / "results.json").write_text(json.dumps({"metrics": metrics}), encoding="utf-8")
        runs.append(tmp_path / name)
    assert runs_own_metrics(runs) == ["exact_match", "label_accuracy"]
    (tmp_path / "c" / "eval").mkdir(parents=True)
    (tmp_path / "c" / "eval" / "results.json").write_text(json.dumps({"metrics": ["chrf"]}), encoding="utf-8")
    assert runs_own_metrics([*runs, tmp_path / "c"]) is None  # they disagree: the defaults
    assert runs_own_metrics([runs[0], tmp_path / "adapter-folder"]) is None  # not an evaluated run
