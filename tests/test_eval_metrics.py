"""Metrics, paired statistics, the regression gate and the HTML report, on hand-made inputs (fast, no model)."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from tunesmith.config import EvalSection, validate_recipe
from tunesmith.errors import RecipeError, TunesmithError
from tunesmith.eval.gate import GateRule, check_gate, is_worse, parse_gate_rule, raise_if_worse
from tunesmith.eval.html_report import mark_changes, render_report
from tunesmith.eval.stats import compare_metric, compare_variants, paired_bootstrap_ci, wins_losses_ties
from tunesmith.results import Comparison, EvalResults
from tunesmith.scoring import (
    aggregate,
    build_scorer,
    chrf_score,
    contains_score,
    exact_match_score,
    json_schema_scorer,
    json_valid_score,
    regex_scorer,
    rouge_l_score,
    score_columns,
    user_scorer,
)

SCHEMA = {"type": "object", "required": ["item", "qty"],
          "properties": {"item": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}


@pytest.fixture
def schema_file(tmp_path):
    path = tmp_path / "order.schema.json"
    path.write_text(json.dumps(SCHEMA))
    return path


# --- metrics -------------------------------------------------------------------------------------------------

def test_exact_match_ignores_surrounding_space_only():
    assert exact_match_score(" yes\n", "yes") == {"exact_match": 1.0}
    assert exact_match_score("Yes", "yes") == {"exact_match": 0.0}


def test_every_metric_compares_composed_and_decomposed_accents_alike():
    """A reference file written in NFD (e + U+0301: macOS, some editors) against the NFC a model writes: eval's
    --data rows are not cleaned, so a right answer scored 0 (a newcomer's trial: json_fields 0.33 for Zoë/Orléans)."""
    import unicodedata

    composed = '{"name": "Zoë", "city": "Orléans", "when": "2026-05-01"}'
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    metrics = ["json_fields", "exact_match", "label_accuracy", "chrf"]
    scores = build_scorer(metrics, None, None, base_dir=None)(composed, decomposed)
    assert (scores["exact_match"], scores["field_accuracy"], scores["label_accuracy"]) == (1.0, 1.0, 1.0)
    assert scores["chrf"] == build_scorer(["chrf"], None, None, base_dir=None)(composed, composed)["chrf"]
    assert exact_match_score(composed, decomposed)["exact_match"] == 0.0  # the metric alone: the scorer normalizes


def test_contains_is_case_insensitive_and_fails_when_absent():
    assert contains_score("The answer is PARIS.", "paris") == {"contains": 1.0}
    assert contains_score("The answer is Lyon.", "paris") == {"contains": 0.0}


def test_regex_must_match_the_whole_answer():
    scorer = regex_scorer(r"\d{3}-\d{4}")
    assert scorer("555-1234", "") == {"regex": 1.0}
    assert scorer("call 555-1234", "") == {"regex": 0.0}
    assert scorer("555-12345", "") == {"regex": 0.0}


def test_json_valid_needs_the_whole_answer_to_parse():
    assert json_valid_score('{"a": 1}', "") == {"json_valid": 1.0}
    assert json_valid_score("[1, 2]", "") == {"json_valid": 1.0}
    # Without a JSON reference a bare value is not what a JSON task asks for (a reward paying it is easily gamed).
    assert [json_valid_score(text, "")["json_valid"] for text in ("null", "0", '"no"', "true")] == [0.0] * 4
    # With one, the answer must be JSON of the reference's kind.
    assert json_valid_score("42", "7") == {"json_valid": 1.0}
    assert json_valid_score('{"a": 1}', "[1]") == {"json_valid": 0.0}
    assert json_valid_score("1", "true") == {"json_valid": 0.0}
    assert json_valid_score("null", "null") == {"json_valid": 1.0}
    assert json_valid_score('Sure: {"a": 1}', "") == {"json_valid": 0.0}
    assert json_valid_score('{"a": 1', "") == {"json_valid": 0.0}


def test_json_schema_accepts_valid_and_rejects_invalid_json(schema_file):
    scorer = json_schema_scorer(schema_file)
    assert scorer('{"item": "pen", "qty": 2}', "") == {"json_schema": 1.0}
    assert scorer('{"item": "pen", "qty": 0}', "") == {"json_schema": 0.0}  # below minimum
    assert scorer('{"item": "pen"}', "") == {"json_schema": 0.0}  # missing required field
    assert scorer('{"item": "pen", "qty": 2', "") == {"json_schema": 0.0}  # not JSON at all


def test_json_schema_file_problems_are_user_errors(tmp_path):
    with pytest.raises(TunesmithError, match="no such file"):
        json_schema_scorer(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": 12}')
    with pytest.raises(TunesmithError, match="not a valid JSON Schema"):
        json_schema_scorer(broken)


def test_json_fields_scores_each_field_and_aggregates_per_field():
    scorer = build_scorer(["json_fields"], None, None, base_dir=None)
    reference = '{"item": "pen", "qty": 2}'
    scores = [scorer('{"item": "pen", "qty": 3}', reference), scorer('{"item": "pen", "qty": 2}', reference)]
    assert scores[0]["field_accuracy"] == 0.5 and scores[0]["exact_match"] == 0.0
    summary = aggregate(scores)
    assert summary["field/item"] == 1.0 and summary["field/qty"] == 0.5 and summary["exact_match"] == 0.5
    columns = score_columns(scores)
    assert columns["field/qty"] == [0.0, 1.0] and "fields" not in columns
    # optional keys: each field over the rows whose reference has it (it was taken from the first row alone, and a
    # row without the field counted as a miss)
    optional = [scorer(answer, answer) for answer in ('{"item": "mug", "note": "gift"}', '{"item": "pen"}',
                                                      '{"item": "cup", "size": "L"}')]
    summary = aggregate(optional)
    assert (summary["field/item"], summary["field/note"], summary["field/size"]) == (1.0, 1.0, 1.0)
    assert summary["field_accuracy"] == 1.0
    # exact_match is the whole answer: an object wrapped in prose matches field by field, not exactly (it read the
    # first object found, so it said 1.0 beside json_valid's 0.0)
    wrapped = build_scorer(["json_fields", "json_valid"], None, None, base_dir=None)(
        'Sure: {"item": "pen", "qty": 2} hope this helps', reference)
    assert (wrapped["exact_match"], wrapped["json_valid"], wrapped["field_accuracy"]) == (0.0, 0.0, 1.0)
    assert scorer('{ "qty": 2, "item": "pen" }', reference)["exact_match"] == 1.0  # key order and spacing: the same
    # json_fields' json_valid is the json_valid metric's (the whole answer is JSON), whichever metrics are chosen: it
    # said "an object was found somewhere" under task_metric json_fields and "the whole answer parses" under auto
    alone = scorer('Sure: {"item": "pen", "qty": 2}', reference)
    assert alone["json_valid"] == 0.0 and alone["field_accuracy"] == 1.0
    # an answer cut off by the token limit: the object nested inside it is one of its values, not the answer
    cut = scorer('{"order": {"item": "pen", "qty": 2}, "note": "ship it to', reference)
    assert (cut["json_valid"], cut["field_accuracy"]) == (0.0, 0.0)
    assert scorer('{draft} then {"item": "pen", "qty": 2}', reference)["field_accuracy"] == 1.0  # a later object
    assert scorer('I use the "{" key. {"item": "pen", "qty": 2}', reference)["field_accuracy"] == 1.0  # stray brace


def test_rouge_l_is_one_for_identical_zero_for_disjoint_and_reads_unicode():
    assert rouge_l_score("the cat sat", "the cat sat")["rouge_l"] == pytest.approx(1.0)
    assert rouge_l_score("dogs bark", "the cat sat")["rouge_l"] == 0.0
    assert 0 < rouge_l_score("the cat sat down", "the cat sat")["rouge_l"] < 1
    assert rouge_l_score("größe über", "größe über")["rouge_l"] == pytest.approx(1.0)


def test_chrf_is_normalised_to_unit_interval():
    assert chrf_score("hello world", "hello world")["chrf"] == pytest.approx(1.0)
    partial = chrf_score("hello wrld", "hello world")["chrf"]
    assert 0 < partial < 1
    assert chrf_score("zzzz", "hello world")["chrf"] == pytest.approx(0.0, abs=0.05)


def test_a_chosen_metric_wins_over_a_composite_sub_score():
    """json_fields compares parsed objects; exact_match chosen by name compares the text."""
    scorer = build_scorer(["json_fields", "exact_match"], None, None, base_dir=None)
    scores = scorer('{"qty": 2, "item": "pen"}', '{"item": "pen", "qty": 2}')
    assert scores["exact_match"] == 0.0 and scores["field_accuracy"] == 1.0


def test_user_metric_from_a_file_returns_float_or_dict(tmp_path):
    (tmp_path / "my_metrics.py").write_text(
        "def length_ratio(prediction, reference):\n"
        "    return min(len(prediction), len(reference)) / max(len(prediction), len(reference), 1)\n"
        "def two(prediction, reference):\n"
        "    return {'starts_same': prediction[:1] == reference[:1], 'short': len(prediction) < 5}\n"
        "def broken(prediction, reference):\n"
        "    return 'high'\n")
    assert user_scorer("my_metrics.py:length_ratio", tmp_path)("abcd", "ab") == {"length_ratio": 0.5}
    assert user_scorer("my_metrics.py:two", tmp_path)("abc", "xbc") == {"starts_same": 0.0, "short": 1.0}
    with pytest.raises(TunesmithError, match="returned 'high'"):
        user_scorer("my_metrics.py:broken", tmp_path)("a", "b")
    with pytest.raises(TunesmithError, match="no function 'nope'"):
        user_scorer("my_metrics.py:nope", tmp_path)
    with pytest.raises(TunesmithError, match="no such file"):
        user_scorer("missing.py:f", tmp_path)


def test_user_metric_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "team_metrics_mod.py").write_text(
        "def first_word(p, r):\n    return float(p.split()[:1] == r.split()[:1])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scorer = build_scorer(["exact_match", "team_metrics_mod:first_word"], None, None, base_dir=tmp_path)
    assert scorer("red car", "red bike") == {"exact_match": 0.0, "first_word": 1.0}
    with pytest.raises(TunesmithError, match="cannot import"):
        build_scorer(["no_such_module_xyz:f"], None, None, base_dir=tmp_path)


# --- recipe --------------------------------------------------------------------------------------------------

def recipe_with_eval(eval_section: dict):
    return validate_recipe({"data": {"train": "t.jsonl"}, "eval": eval_section})


def test_recipe_metrics_default_to_auto_and_the_older_task_metric_still_works():
    assert EvalSection().task_metric == "auto"
    assert EvalSection().chosen_metrics("labels") == ["loss", "perplexity", "exact_match", "label_accuracy"]
    assert EvalSection().chosen_metrics() == ["loss", "perplexity"]  # auto without a known answer kind
    assert EvalSection(task_metric="json_fields").chosen_metrics("free_text") == ["loss", "perplexity", "json_fields"]
    assert EvalSection(task_metric="none").chosen_metrics() == ["loss", "perplexity"]
    chosen = recipe_with_eval({"metrics": ["chrf", "regex", "x.py:f"], "regex": "a+"}).eval.chosen_metrics()
    assert chosen == ["chrf", "regex", "x.py:f"]


@pytest.mark.parametrize(("section", "message"), [
    ({"metrics": ["exact_mach"]}, "unknown 'exact_mach'"),
    ({"metrics": ["regex"]}, "eval.regex is not set"),
    ({"metrics": ["json_schema"]}, "eval.json_schema is not set"),
    ({"metrics": ["regex"], "regex": "(unclosed"}, "not a valid regular expression"),
])
def test_recipe_names_unusable_metric_settings(section, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        recipe_with_eval(section)


# --- statistics ----------------------------------------------------------------------------------------------

def synthetic_pairs(n: int, seed: int, true_delta: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Paired scores whose population mean difference is exactly `true_delta`."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, n)
    noise = rng.choice([-0.2, 0.2], n)  # mean 0
    return base, base + true_delta + noise


def test_bootstrap_interval_covers_the_true_difference_about_95_percent_of_the_time():
    covered = 0
    for seed in range(40):
        base, tuned = synthetic_pairs(200, seed)
        low, high = paired_bootstrap_ci(base, tuned, resamples=1000)
        covered += low <= 0.1 <= high
    assert covered >= 34  # 95% nominal; 34/40 leaves room for sampling noise


def test_bootstrap_interval_narrows_with_more_examples():
    widths = []
    for n in (25, 100, 400, 1600):
        low, high = paired_bootstrap_ci(*synthetic_pairs(n, seed=1))
        widths.append(high - low)
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < widths[0] / 4  # width falls like 1/sqrt(n): 8x less at 64x the data


def test_bootstrap_of_identical_scores_is_zero_and_seeded():
    scores = [0.0, 1.0, 1.0, 0.5]
    assert paired_bootstrap_ci(scores, scores) == (0.0, 0.0)
    base, tuned = synthetic_pairs(50, seed=3)
    assert paired_bootstrap_ci(base, tuned, seed=7) == paired_bootstrap_ci(base, tuned, seed=7)
    assert paired_bootstrap_ci(base, tuned, seed=7) != paired_bootstrap_ci(base, tuned, seed=8)


def test_bootstrap_handles_more_examples_than_one_memory_chunk():
    base, tuned = synthetic_pairs(5000, seed=4)
    low, high = paired_bootstrap_ci(base, tuned, resamples=500)
    assert low < 0.1 < high and high - low < 0.02


def test_wins_losses_ties_and_compare_metric():
    base, tuned = [1.0, 0.0, 0.5, 1.0], [1.0, 1.0, 0.25, 1.0]
    assert wins_losses_ties(base, tuned) == {"wins": 1, "losses": 1, "ties": 2}
    entry = compare_metric(base, tuned)
    assert entry["base"] == 0.625 and entry["tuned"] == 0.8125 and entry["delta"] == 0.1875
    assert entry["ci95"][0] <= entry["delta"] <= entry["ci95"][1] and entry["higher_is_better"]


def test_compare_variants_marks_loss_lower_is_better():
    comparison = compare_variants({"chrf": [0.1, 0.2]}, {"chrf": [0.3, 0.4]}, {"loss": 2.0, "perplexity": 7.389},
                                  {"loss": 1.5, "perplexity": 4.482})
    assert comparison["loss"] == {"base": 2.0, "tuned": 1.5, "delta": -0.5, "ci95": None, "higher_is_better": False}
    assert comparison["chrf"]["delta"] == 0.2 and comparison["chrf"]["wins"] == 2


# --- gate ----------------------------------------------------------------------------------------------------

def test_parse_gate_rule():
    assert parse_gate_rule("exact_match") == GateRule("exact_match", 0.0)
    assert parse_gate_rule("chrf:0.05") == GateRule("chrf", 0.05)
    assert parse_gate_rule("loss:-0.1") == GateRule("loss", -0.1)
    assert parse_gate_rule("field/item") == GateRule("field/item", 0.0)


def comparison(base: float, tuned: float, higher_is_better: bool = True) -> Comparison:
    return Comparison(base=base, tuned=tuned, delta=tuned - base, higher_is_better=higher_is_better)


def test_is_worse_respects_direction_and_margin():
    score = comparison(0.50, 0.45)
    assert is_worse(score, 0.0) and is_worse(score, 0.04) and not is_worse(score, 0.06)
    loss = comparison(1.0, 1.2, higher_is_better=False)
    assert is_worse(loss, 0.1) and not is_worse(loss, 0.3)
    assert not is_worse(comparison(1.0, 0.8, higher_is_better=False), 0.0)
    assert is_worse(comparison(0.5, 0.55), -0.1)  # negative margin: must improve


def test_check_gate_reports_verdicts_and_unknown_metrics():
    results = EvalResults.model_validate({"examples": 4, "task_metric": "exact_match", "tuned": {}, "comparison": {
        "exact_match": {"base": 0.5, "tuned": 0.25, "delta": -0.25, "ci95": [-0.5, 0.0], "higher_is_better": True},
        "loss": {"base": 2.0, "tuned": 1.0, "delta": -1.0, "ci95": None, "higher_is_better": False}}})
    verdicts = check_gate(results, [GateRule("loss"), GateRule("exact_match", 0.1)])
    assert [v.passed for v in verdicts] == [True, False]
    assert re.search(r"exact_match base 0\.5000, tuned 0\.2500, delta -0\.2500.*margin 0\.1", verdicts[1].message)
    with pytest.raises(TunesmithError, match=r"tuned 0\.2500") as failed:
        raise_if_worse(verdicts)
    assert failed.value.exit_code == 3
    with pytest.raises(TunesmithError, match="unknown metric 'rouge'") as unknown:
        check_gate(results, [GateRule("rouge")])
    assert unknown.value.exit_code == 2 and "exact_match, loss" in unknown.value.hint
    with pytest.raises(TunesmithError, match=r"unknown metric 'exact_mach'; did you mean 'exact_match'\?"):
        check_gate(results, [GateRule("exact_mach")])
    with pytest.raises(TunesmithError, match=r"'probes' \(this eval ran no forgetting probes: eval.probes is off\)"):
        check_gate(results, [GateRule("probes")])
    with pytest.raises(TunesmithError, match="needs a base"):
        check_gate(EvalResults(examples=0, task_metric="loss", tuned={}), [GateRule("loss")])
    with pytest.raises(TunesmithError, match=r"exact_match:abc: the margin 'abc' is not a number") as margin:
        check_gate(results, [parse_gate_rule("exact_match:abc")])
    assert margin.value.exit_code == 2
    against = results.model_copy(update={"against": {"name": "lr-3e-4", "path": "runs/lr-3e-4"}})
    against = EvalResults.model_validate(against.model_dump())
    (other,) = check_gate(against, [GateRule("exact_match", 0.1)])  # --against: the other run plays the base
    assert "exact_match lr-3e-4 0.5000, tuned 0.2500" in other.message


def test_results_json_keys_are_checked_where_they_are_written(tmp_path):
    from tunesmith.eval.rows import save_results
    from tunesmith.results import read_results
    from tunesmith.runs import Run

    run = Run(tmp_path)

    good = {"examples": 2, "task_metric": "exact_match", "metrics": ["exact_match"],
            "base": {"exact_match": 0.0}, "tuned": {"exact_match": 0.5}}
    assert read_results(save_results(run, run.eval_dir / "results.json", good)).headline_metric() == "exact_match"
    assert run.manifest().eval.results == {"held_out": "eval/results.json"}  # run.json records what eval wrote
    with pytest.raises(TunesmithError, match="contract"):  # a misspelt key fails in the writer, not in a reader
        save_results(run, run.eval_dir / "data-x" / "results.json", {**good, "tunned": {"exact_match": 0.5}})
    assert not (run.eval_dir / "data-x").exists() and set(run.manifest().eval.results) == {"held_out"}
    (tmp_path / "old.json").write_text('{"version": 99, "examples": 1, "task_metric": "x", "tuned": {}}')
    with pytest.raises(TunesmithError, match="version 99"):
        read_results(tmp_path / "old.json")


# --- HTML report ---------------------------------------------------------------------------------------------

class TextAndLinks(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]

    def handle_data(self, data):
        self.text.append(data)


def parse_html(document: str) -> TextAndLinks:
    parser = TextAndLinks()
    parser.feed(document)
    return parser


def test_html_report_shows_numbers_and_escaped_outputs():
    results = {
        "examples": 2, "task_metric": "exact_match", "base": {"exact_match": 0.0}, "tuned": {"exact_match": 0.5},
        "per_example": {"base": {"exact_match": [0.0, 0.0]}, "tuned": {"exact_match": [1.0, 0.0]}},
        "comparison": {"exact_match": {"base": 0.0, "tuned": 0.5, "delta": 0.5, "ci95": [0.0, 1.0], "wins": 1,
                                       "losses": 0, "ties": 1, "higher_is_better": True}},
        "bootstrap": {"resamples": 2000},
        "samples": [{"prompt": "2+2?", "reference": "4", "base": "<script>5</script>", "tuned": "4"},
                    {"prompt": "see https://example.com", "reference": "b", "base": "a", "tuned": "c"}],
    }
    document = render_report(results, chart_png=b"\x89PNG fake")
    parsed = parse_html(document)
    text = "".join(parsed.text)
    assert "script" not in parsed.tags and "<script>5</script>" in text  # escaped, shown as text
    for expected in ("+0.5000", "[+0.0000, +1.0000]", "2+2?", "0.0000 → 1.0000", "2000 resamples"):
        assert expected in text
    assert parsed.urls and all(url.startswith("data:image/png;base64,") for url in parsed.urls)
    assert "class='better'" in document  # the interval is not below 0 and the first example improved


def test_the_report_and_chart_lead_with_the_task_gain_and_what_forgetting_cost(tmp_path):
    """A newcomer's chart showed exact match 0.10 → 1.00 and nothing of the probes falling 1.00 → 0.71, and the page put
    that REGRESSION below every table: both now lead with it. Perplexity 17.39 → 17.48 (+0.5%, no interval) was red."""
    from matplotlib.image import imread

    from tunesmith.eval.html_report import verdict_class
    from tunesmith.eval.report import PROBES_LABEL, change_label, plot_base_vs_tuned

    results = {
        "examples": 30, "task_metric": "auto", "metrics": ["loss", "exact_match"],
        "base": {"loss": 1.25, "exact_match": 0.1}, "tuned": {"loss": 0.003, "exact_match": 1.0},
        "comparison": {"exact_match": {"base": 0.1, "tuned": 1.0, "delta": 0.9, "ci95": [0.8, 1.0], "wins": 27,
                                       "losses": 0, "ties": 3, "higher_is_better": True}},
        "probes": {"count": 48, "margin": 0.05, "perplexity_margin": 0.05, "rows": [], "lost": [],
                   "base": {"accuracy": 1.0}, "tuned": {"accuracy": 0.7083},
                   "comparison": {"probe_accuracy": {"base": 1.0, "tuned": 0.7083, "delta": -0.2917,
                                                     "ci95": [-0.4167, -0.1667], "higher_is_better": True}},
                   "regression": True, "reasons": ["probe accuracy fell 0.292 (1.000 → 0.708)"]},
    }
    document = render_report(results, None)
    body = document[document.index("<body>"):]
    headline = body[:body.index("</table>")]
    assert "Task (exact_match): 0.1000 → 1.0000, +0.9000, 95% CI [+0.8000, +1.0000]: better." in headline
    assert "<tr class='worse'><td><b>General prompts (forgetting probes): 1.0000 → 0.7083, REGRESSION" in headline
    kept = {**results, "probes": {**results["probes"], "regression": False, "tuned": {"accuracy": 0.98}}}
    assert "no regression beyond the 0.05 margin" in render_report(kept, None)
    assert verdict_class({"base": 17.386, "tuned": 17.478, "delta": 0.092, "ci95": None,
                          "higher_is_better": False}) == ""  # +0.5%: within the margin, not "worse"
    worse_loss = {"base": 1.25, "tuned": 2.0, "delta": 0.75, "ci95": None, "higher_is_better": False}
    assert verdict_class(worse_loss) == "worse"
    assert change_label(results["comparison"]["exact_match"], [0.1, 1.0]) == "+0.90\n[+0.80, +1.00]"

    def red_pixels(chart: object) -> int:  # the regressed probes bar is drawn in #d62728
        pixels = imread(chart)[..., :3]
        return int(((abs(pixels[..., 0] - 0.839) < 0.02) & (abs(pixels[..., 1] - 0.153) < 0.02)).sum())

    assert red_pixels(plot_base_vs_tuned(results, tmp_path / "chart.png")) > 1000
    assert red_pixels(plot_base_vs_tuned(kept, tmp_path / "kept.png")) == 0
    assert PROBES_LABEL.startswith("general prompts")


def test_the_loss_curve_draws_the_task_and_the_replay_anchor_apart_on_a_log_scale_when_it_spans_decades(
        tmp_path, monkeypatch):
    """The logged loss includes data.replay.weight x KL: 66% of a final 0.0063 was the anchor, drawn as "train loss"
    on a linear axis that showed the last tenfold fall as flat."""
    from tunesmith.figures import pyplot
    from tunesmith.train.plots import plot_loss_curve

    records = [{"step": step, "loss": loss, "replay_kl": term / 4, "replay_term": term}
               for step, loss, term in ((1, 1.445, 0.0018), (10, 0.0631, 0.0034), (30, 0.0063, 0.0042))]
    drawn: dict[str, object] = {}
    plt = pyplot()
    original = plt.subplots

    def keep(*args: object, **kwargs: object) -> object:
        fig, ax = original(*args, **kwargs)
        drawn["ax"] = ax
        return fig, ax

    monkeypatch.setattr(plt, "subplots", keep)  # to read the axes the curve was drawn on
    assert plot_loss_curve(records, tmp_path / "loss.png", "t") is not None
    ax = drawn["ax"]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines["task loss (train loss − replay term)"] == pytest.approx([1.4432, 0.0597, 0.0021])
    assert lines["replay term (weight × KL to the base)"] == [0.0018, 0.0034, 0.0042]
    assert ax.get_yscale() == "log"
    assert ax.get_ylabel() == "loss (nats per loss-carrying token)"
    assert plot_loss_curve([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], tmp_path / "flat.png", "t", "dpo")
    assert drawn["ax"].get_ylabel().startswith("DPO loss per pair")  # a pair's loss, not a token's


def test_mark_changes_highlights_only_new_words():
    assert mark_changes("the red car", "the blue car") == "the <mark>blue</mark> car"
    assert mark_changes("same", "same") == "same"
    assert mark_changes("", "<b>") == "<mark>&lt;b&gt;</mark>"


def test_example_rows_are_coloured_only_when_scores_move_one_way():
    from tunesmith.eval.html_report import row_class

    assert row_class([[[0.0], [1.0]], [[0.5], [0.5]]]) == "better"
    assert row_class([[[1.0], [0.0]], [[0.5], [0.5]]]) == "worse"
    assert row_class([[[1.0], [0.0]], [[0.2], [0.5]]]) == ""  # mixed
    assert row_class([[[0.3], [0.3]]]) == ""


def test_train_checks_a_user_metric_file_before_training(tmp_path, tiny_model_dir):
    """eval.metrics names a user function: a missing or broken file stops train before the model loads, not after
    training when eval first scores."""
    import subprocess
    import sys

    from tests.conftest import make_tiny_project

    recipe = make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=2)
    done = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(recipe), "--evaluate", "--runs-dir",
                           str(tmp_path / "runs"), "--set", "eval.metrics=[missing.py:f]"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "User metric missing.py:f: no such file" in " ".join(done.stderr.split())
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # nothing trained, no run directory left behind


def test_train_evaluate_says_where_each_export_went(tmp_path, tiny_model_dir):
    """`train --evaluate` exported the adapter without a word about it."""
    import json
    import subprocess
    import sys

    from tests.conftest import make_tiny_project

    recipe = make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=2)
    done = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(recipe), "--evaluate", "--runs-dir",
                           str(tmp_path / "runs"), "--set", "training.max_steps=2", "--set", "eval.probes=false",
                           "--set", "export.formats=[adapter]"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    record = json.loads((run / "run.json").read_text())["exports"]["adapter"]
    assert f"Exported adapter: {run / record['path']}" in " ".join(done.stderr.split())
    assert done.stdout.splitlines() == [str(run)]  # stdout is not a terminal: `RUN=$(tunesmith train ...)` works


def test_tables_show_scores_to_four_decimals_and_costs_to_what_they_mean():
    """A mean token count or a wall time is not shown to 4 decimals beside the scores (12.3456 tokens reads as
    precision eval does not have); an int stays an int, a missing score is a dash."""
    from tunesmith.results import score_text

    assert score_text("exact_match", 0.5) == "0.5000" and score_text("exact_match", None) == "—"
    assert score_text("answer_tokens", 12.3456) == "12.3" and score_text("prompt_tokens", 1234.56) == "1,234.6"
    assert score_text("seconds", 83.04) == "83.0" and score_text("seconds_per_answer", 0.04567) == "0.0457"
    assert score_text("examples", 80) == "80" and score_text("label", "yes") == "yes"


def test_an_eval_without_the_base_is_not_titled_base_vs_tuned():
    alone = render_report({"examples": 3, "task_metric": "exact_match", "tuned": {"exact_match": 0.5}}, None)
    assert "<h1>tuned on 3 held-out examples</h1>" in alone
    both = render_report({"examples": 3, "task_metric": "exact_match", "tuned": {"exact_match": 0.5},
                          "base": {"exact_match": 0.25}}, None)
    assert "<h1>base vs tuned on 3 held-out examples</h1>" in both


def test_an_optional_field_gets_its_comparison_over_the_rows_that_have_it():
    """A field only some references have was shown with its means but no delta, interval or tally, left out of the
    HTML table and unknown to --fail-if-worse: a regression of field/size 0.80 -> 0.00 could not be seen."""
    from tunesmith.eval.evaluate import optional_field_comparisons

    scorer = build_scorer(["json_fields"], None, None, base_dir=None)
    references = ['{"item": "mug", "size": "L"}', '{"item": "pen"}', '{"item": "cup", "size": "M"}']
    base = [scorer(answer, ref) for answer, ref in zip(references, references, strict=True)]  # all right
    tuned = [scorer(answer, ref) for answer, ref in zip(['{"item": "mug", "size": "S"}', '{"item": "pen"}',
                                                         '{"item": "cup"}'], references, strict=True)]
    compared = optional_field_comparisons(base, tuned)
    assert list(compared) == ["field/size"]  # field/item is in every row: per_example compares it
    size = compared["field/size"]
    assert (size["base"], size["tuned"], size["delta"], size["examples"]) == (1.0, 0.0, -1.0, 2)
    assert (size["wins"], size["losses"], size["ties"]) == (0, 2, 0)
    assert aggregate(tuned)["field/size"] == size["tuned"]  # the table's mean is the comparison's


def test_an_answer_the_token_limit_cuts_inside_a_character_ends_at_the_last_whole_character(tokenizer_dir):
    """A byte-level tokenizer spells a CJK character in several tokens; an answer stopped by max_new_tokens between
    them decoded to a trailing U+FFFD, shown in the report (`…アニューグ�`) and scored as text."""
    from transformers import AutoTokenizer

    from tunesmith.models.generation import without_cut_character

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer("東京へ", add_special_tokens=False)["input_ids"]
    cut = tokenizer.decode(ids[:-1])  # the last character's final byte never generated
    assert cut.endswith("\ufffd") and without_cut_character(cut) == "東京"
    assert without_cut_character(" 東京へ \n") == "東京へ"


def test_eval_steps_logs_the_held_out_loss_during_training_and_draws_it(tmp_path, tiny_model_dir, monkeypatch):
    """training.eval_steps: 3 over 7 steps: the eval split's loss at steps 3, 6 and the last, falling as the tiny
    model learns the orders, drawn in loss.png beside the training loss; the run's final loss stays the training
    loss. Other methods refuse the key before anything loads."""
    from tests.conftest import make_tiny_project
    from tunesmith import api
    from tunesmith.figures import pyplot

    recipe = make_tiny_project(tmp_path, tiny_model_dir, train_rows=32, eval_rows=6)
    axes: list[object] = []
    plt = pyplot()
    original = plt.subplots

    def keep(*args: object, **kwargs: object) -> object:
        fig, ax = original(*args, **kwargs)
        axes.append(ax)
        return fig, ax

    monkeypatch.setattr(plt, "subplots", keep)  # to read the axes the curves were drawn on
    run = api.train(recipe, ["training.max_steps=7", "training.eval_steps=3", "training.logging_steps=1"],
                    runs_dir=tmp_path / "runs")
    evals = [(record["step"], record["eval_loss"]) for record in run.read_metrics() if "eval_loss" in record]
    assert [step for step, _ in evals] == [3, 6, 7] and evals[-1][1] < evals[0][1]
    drawn = {line.get_label(): list(line.get_ydata()) for ax in axes for line in ax.get_lines()}
    assert drawn["held-out loss (data.eval, at that step)"] == [loss for _, loss in evals] and "train loss" in drawn
    assert (run.plots_dir / "loss.png").is_file()
    logged = [record["loss"] for record in run.read_metrics() if "loss" in record]
    assert json.loads((run.path / "train.json").read_text(encoding="utf-8"))["final_loss"] == pytest.approx(logged[-1])
    with pytest.raises(TunesmithError, match=r"training\.eval_steps works with method\.kind sft"):
        api.train(recipe, ["training.eval_steps=3", "method.kind=cpt"], runs_dir=tmp_path / "runs")
