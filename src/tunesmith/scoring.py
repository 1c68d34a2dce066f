"""Task metrics that score a generated answer against the reference answer automatically.

Every metric maps (prediction, reference) to a dict of per-example scores, each a float in [0, 1]
where higher is better, so that base and tuned can be compared example by example (`eval/stats.py`).
The recipe's `eval.metrics` picks them by name; a user metric is named explicitly as
`module:function` or `path/to/file.py:function` (nothing else is imported from a string).

Evaluation scores with these, and GRPO's built-in rewards reuse them, so the module sits below both stages
(the layers in pyproject.toml), not inside either.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import importlib.util
import json
import math
import numbers
import re
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import DataError, TunesmithError

if TYPE_CHECKING:
    from tunesmith.config import Recipe

Scorer = Callable[[str, str], dict[str, Any]]
# A number as people write one: a sign, thousands separators, decimals, an exponent (`-1,024.5`, `3e-4`, `.5`).
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\d,])|[-+]?\.\d+")
# An answer that is a number: the number alone, or with a currency sign before it or a short unit after it
# (`42`, `$5.99`, `12.7 cm`, `98.6 °F`, `15%`).
NUMBER_ANSWER = re.compile(rf"[$€£¥]?\s?(?:{NUMBER.pattern})\s?(?:%|°?[^\W\d_]{{1,12}}(?:/[^\W\d_]{{1,6}})?)?\.?")
# The tags reasoning models (DeepSeek-R1, Qwen3, Nemotron, SmolLM3) write their thinking between, before the answer.
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def final_answer(generated: str) -> str:
    """The answer a generation gives after its reasoning: the text after the last `</think>`, stripped; '' for a
    generation that opens a `<think>` block it never closes (it ran out of tokens mid-thought: no answer); any other
    text as it is. A model prompted with an open `<think>` (DeepSeek-R1's template) writes no opening tag itself.

    The rule DeepSeek-R1's own chat template applies to earlier answers, and lm-evaluation-harness's
    `think_end_token` option to generations before scoring."""
    if THINK_CLOSE in generated:
        return generated.rsplit(THINK_CLOSE, 1)[1].strip()
    return "" if generated.lstrip().startswith(THINK_OPEN) else generated


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The answer as a JSON object: the whole text, else the first {...} in it that parses (a brace in prose is
    read past). An object cut off by the token limit (a string never closed, or the text ending inside it) gives
    None: the objects nested inside it are its values, not an answer (`{"item": {"name": "mug"}, "color": "blu`
    found `{"name": "mug"}` and was credited)."""
    text = text.strip()
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else None
    except json.JSONDecodeError:
        pass
    start = text.find("{")
    while start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(text, start)
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError as exc:
            if exc.msg.startswith("Unterminated string") or exc.pos >= len(text):  # JSON cut off: all after it is
                return None                                                       # inside it
        start = text.find("{", start + 1)  # not JSON (prose braces): read on
    return None


def json_fields_score(prediction: str, reference: str) -> dict[str, Any]:
    """`exact_match`: the whole answer is the reference object (parsed, so key order and spacing do not count;
    prose around it does); `json_valid`: the whole answer is JSON of the reference's kind (`json_valid_score`, the
    same as the metric of that name); per-field matches and `field_accuracy` read the answer's object, prose around
    it or not (`parse_json_object`)."""
    expected = parse_json_strict(reference)
    if not isinstance(expected, dict):
        raise DataError(f"json_fields compares JSON objects field by field, but a reference answer is not one: "
                        f"{reference[:120]!r}.", "Set eval.task_metric: auto, or choose eval.metrics that fit "
                        "the answers (exact_match, chrf, rouge_l).")
    got = parse_json_object(prediction)
    fields = {key: bool(got is not None and key in got and got[key] == value)
              for key, value in expected.items()}
    return {
        "exact_match": float(parse_json_strict(prediction) == expected),
        "json_valid": json_valid_score(prediction, reference)["json_valid"],
        "field_accuracy": sum(fields.values()) / max(len(fields), 1),
        "fields": fields,
    }


def exact_match_score(prediction: str, reference: str) -> dict[str, Any]:
    return {"exact_match": float(prediction.strip() == reference.strip())}


def contains_score(prediction: str, reference: str) -> dict[str, Any]:
    """The reference appears somewhere in the answer, ignoring case (answers wrapped in prose still count)."""
    return {"contains": float(reference.strip().casefold() in prediction.casefold())}


def json_valid_score(prediction: str, reference: str) -> dict[str, Any]:
    """The whole answer parses as JSON of the kind asked for: stricter than json_fields, which digs an object out
    of prose.

    The kind asked for is the reference's (object, array, string, number, boolean or null) when the reference is
    JSON, else an object or an array: RFC 8259 makes `0` and `"no"` JSON documents too, but a task that wants JSON
    wants a structure, and a GRPO reward that paid a bare `0` would teach the model to answer `0`.
    """
    value, expected = parse_json_strict(prediction), parse_json_strict(reference)
    if value is _INVALID:
        return {"json_valid": 0.0}
    wanted = {json_kind(expected)} if expected is not _INVALID else {"object", "array"}
    return {"json_valid": float(json_kind(value) in wanted)}


def json_kind(value: Any) -> str:
    """A parsed JSON value's type as RFC 8259 names it (object, array, string, number, boolean, null)."""
    if isinstance(value, bool):
        return "boolean"
    kinds = {dict: "object", list: "array", str: "string", int: "number", float: "number", type(None): "null"}
    return kinds[type(value)]


def label_accuracy_score(prediction: str, reference: str) -> dict[str, Any]:
    """The answer names the reference label (ignoring case, surrounding space, quotes and end punctuation).

    The pair is kept (`label`) so that `aggregate` gives the accuracy per label and `label_report` the
    confusion matrix; the mean of `label_accuracy` is the overall accuracy.
    """
    return {"label_accuracy": float(label_key(prediction) == label_key(reference)),
            "label": {"reference": reference.strip(), "predicted": prediction.strip()}}


def label_key(text: str) -> str:
    """What two spellings of one label share: `Billing.` and `"billing"` are both `billing`."""
    return text.strip().strip(LABEL_WRAPPING).strip().casefold()


def numeric_match_score(prediction: str, reference: str) -> dict[str, Any]:
    """1 when the last number in the answer equals the reference's number (its last, too) to a relative 1e-6:
    `The answer is 1,024.` matches `1024`, `12.70 cm` matches `12.7 cm` (exact_match tells the units apart).
    The last number, thousands separators dropped, as lm-evaluation-harness's GSM8K "flexible-extract" filter
    takes it. 0 when either holds no number."""
    got, expected = last_number(prediction), last_number(reference)
    matched = got is not None and expected is not None and math.isclose(got, expected, rel_tol=1e-6)
    return {"numeric_match": float(matched)}


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


ToolCall = tuple[str, Any]  # (function name, arguments as a JSON value)


def tool_calls_in(text: str) -> list[ToolCall]:
    """The tool calls written in `text`: every JSON object with a string `name` and `arguments` (or Llama 3.1's
    `parameters`), wherever it stands: inside `<tool_call>` tags (Hermes, Qwen), after `[TOOL_CALLS]` in a list
    (Mistral), or bare. Arguments given as a JSON string are read as JSON. Calls in the order written."""
    return [call for call, _, _ in tool_call_spans(text)]


def tool_call_spans(text: str) -> list[tuple[ToolCall, int, int]]:
    """`tool_calls_in`'s calls, each with the character span [start, end) of its JSON object in `text`."""
    decoder, found, index = json.JSONDecoder(), [], text.find("{")
    while index != -1:
        try:
            value, end = decoder.raw_decode(text, index)
        except ValueError:
            value, end = None, index + 1
        call = as_tool_call(value)
        if call is not None:
            found.append((call, index, end))
        index = text.find("{", end if call is not None else index + 1)
    return found


def as_tool_call(value: Any) -> ToolCall | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    key = "arguments" if "arguments" in value else "parameters" if "parameters" in value else None
    if key is None:
        return None
    arguments = value[key]
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    return value["name"], arguments


def tool_call_match_score(prediction: str, reference: str) -> dict[str, Any]:
    """`tool_call_match`: 1 when the answer makes exactly the reference's tool calls, each with the same function
    name and equal arguments (as JSON values: key order, spacing and 1 vs 1.0 do not matter; parallel calls in any
    order), BFCL's exact-match notion of a correct call (Patil et al., 2024, Berkeley Function-Calling
    Leaderboard); a reference without calls is matched by an answer without calls. `tool_name_match`: the same,
    comparing only the function names called. `tool_call_decision`: 1 when the answer calls a tool exactly when the
    reference does, whatever it calls (BFCL's relevance and irrelevance detection in one figure), which tells a
    model that calls wrongly from one that calls when it should answer in words."""
    got, expected = tool_calls_in(prediction), tool_calls_in(reference)
    names_match = sorted(name for name, _ in got) == sorted(name for name, _ in expected)
    return {"tool_call_match": float(names_match and same_calls(got, expected)), "tool_name_match": float(names_match),
            "tool_call_decision": float(bool(got) == bool(expected))}


def same_calls(got: list[ToolCall], expected: list[ToolCall]) -> bool:
    """Whether two lists of calls are the same calls in some order (arguments compared as JSON values)."""
    remaining = list(expected)
    for call in got:
        if call not in remaining:
            return False
        remaining.remove(call)
    return not remaining


def rouge_l_score(prediction: str, reference: str) -> dict[str, Any]:
    """ROUGE-L F-measure (longest common word subsequence), on lowercased Unicode words."""
    return {"rouge_l": _rouge_l_scorer().score(reference, prediction)["rougeL"].fmeasure}


def chrf_score(prediction: str, reference: str) -> dict[str, Any]:
    """sacrebleu's sentence chrF (character n-gram F-score), divided by 100 to lie in [0, 1]."""
    return {"chrf": _chrf().sentence_score(prediction, [reference]).score / 100}


SCORERS: dict[str, Scorer] = {
    "json_fields": json_fields_score, "exact_match": exact_match_score, "contains": contains_score,
    "json_valid": json_valid_score, "rouge_l": rouge_l_score, "chrf": chrf_score,
    "label_accuracy": label_accuracy_score, "numeric_match": numeric_match_score,
    "tool_call_match": tool_call_match_score, "tool_name_match": tool_call_match_score,
    "tool_call_decision": tool_call_match_score,
}
LIKELIHOOD_METRICS = ("loss", "perplexity")  # always measured, from the held-out loss; lower is better
REFERENCE_FREE_METRICS = ("json_valid", "regex", "json_schema")  # judge an answer alone, without its reference
LABEL_WRAPPING = "\"'`.!?;:,"
OTHER_LABEL = "(other)"  # the confusion matrix's column for answers outside the label set


def regex_scorer(pattern: str) -> Scorer:
    """1 when the whole answer matches the recipe's `eval.regex` (use (?s) to let `.` cross lines)."""
    compiled = re.compile(pattern)
    return lambda prediction, reference: {"regex": float(compiled.fullmatch(prediction.strip()) is not None)}


def json_schema_scorer(schema_file: Path, key: str = "eval.json_schema") -> Scorer:
    """1 when the whole answer is JSON that validates against the schema file the recipe's `key` names."""
    validator = load_schema_validator(schema_file, key)

    def score(prediction: str, reference: str) -> dict[str, Any]:
        value = parse_json_strict(prediction)
        return {"json_schema": float(value is not _INVALID and validator.is_valid(value))}

    return score


def load_schema_validator(schema_file: Path, key: str = "eval.json_schema") -> Any:
    """A jsonschema validator of the draft the schema declares; a missing or broken schema fails here, once, naming
    the recipe `key` that gave the file."""
    import jsonschema

    schema = read_json_schema(schema_file, key)
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise TunesmithError(f"{key}: {schema_file} is not a valid JSON Schema: {exc}".splitlines()[0],
                             "Fix the schema file: it must be JSON and a valid JSON Schema.") from None
    return validator_class(schema)


def read_json_schema(schema_file: Path, key: str) -> dict[str, Any]:
    """A JSON Schema file's object. Raises TunesmithError naming `key` (the recipe key or option that gave the
    file) where it is missing, a folder, not UTF-8, not JSON, or not an object."""
    from tunesmith.runs import read_json_object

    return read_json_object(schema_file, f"{key}: ", "a JSON Schema object",
                            "Give a JSON Schema file (an object, e.g. {\"type\": \"object\", \"properties\": "
                            "{...}}, saved as UTF-8); in a recipe, its path is relative to the recipe file.")


def user_scorer(spec: str, base_dir: Path) -> Scorer:
    """Wrap a user's function(prediction, reference) -> float | dict of floats as a scorer."""
    function = load_user_function(spec, base_dir)
    name = spec.rpartition(":")[2]

    def score(prediction: str, reference: str) -> dict[str, Any]:
        value = call_user_function(function, spec, "metric", prediction, reference)
        scores = value if isinstance(value, dict) else {name: value}
        if not all(_is_number(v) for v in scores.values()):
            raise TunesmithError(f"User metric {spec} returned {value!r}.",
                                 "Return a float, or a dict of floats (higher is better, ideally in [0, 1]).")
        return {key: float(v) for key, v in scores.items()}

    return score


def load_user_function(spec: str, base_dir: Path, role: str = "metric") -> Callable[..., Any]:
    """The function that `module:function` or `path/to/file.py:function` names (files resolve from base_dir; a
    module is looked for as a .py file there, beside the recipe, first: a user's test.py or code.py would otherwise
    be Python's own module of that name), checked to take (completion, reference) as the `role` ("metric" or
    "reward") is called.

    Raises TunesmithError naming the spec: no such file or module, no such function, another signature."""
    target, _, name = spec.rpartition(":")
    beside_recipe = base_dir / (target.replace(".", "/") + ".py")
    if target.endswith(".py") or beside_recipe.is_file():
        path = Path(target).expanduser() if target.endswith(".py") else beside_recipe
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise TunesmithError(f"User {role} {spec}: no such file {path}.",
                                 f"Relative paths resolve from {base_dir} (the recipe's folder; for compare, the "
                                 "current folder).")
        module_spec = importlib.util.spec_from_file_location(f"tunesmith_user_{role}_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        with user_code_errors(spec, role, str(path)):
            module_spec.loader.exec_module(module)
    else:
        try:
            with user_code_errors(spec, role, target, missing_is_ours=True):
                module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise TunesmithError(f"User {role} {spec}: cannot import {target!r} ({exc}), and {beside_recipe} does "
                                 "not exist.", "Install the module, or name a file: path/to/file.py:function (from "
                                               "the recipe's folder).") from None
    if not hasattr(module, name):
        functions = sorted(key for key, value in vars(module).items() if callable(value) and not key.startswith("_")
                           and getattr(value, "__module__", None) == module.__name__)
        close = difflib.get_close_matches(name, functions, n=1)
        raise TunesmithError(f"User {role} {spec}: {target} ({getattr(module, '__file__', None) or 'built in'}) has "
                             f"no function {name!r}." + (f" Did you mean {close[0]!r}?" if close else ""),
                             f"Its functions: {', '.join(functions) or 'none'}." if functions else
                             "Name a function the file defines: path/to/file.py:function.")
    function = getattr(module, name)
    if not callable(function):
        raise TunesmithError(f"User {role} {spec}: {name!r} in {target} is not a function (it is {function!r:.40}).",
                             f"Name a function defined as def {name}(completion: str, reference: str) -> float.")
    check_takes_completion_and_reference(function, spec, role)
    return function


@contextlib.contextmanager
def user_code_errors(spec: str, role: str, where: str, missing_is_ours: bool = False) -> Iterator[None]:
    """Running the user's module: a syntax error in it, or an import it cannot make, is the user's code failing
    (named with the file and line), not a tunesmith crash. With `missing_is_ours`, the module itself not being found
    passes through (the caller says where it looked)."""
    try:
        yield
    except SyntaxError as exc:
        raise TunesmithError(f"User {role} {spec}: {exc.filename or where}, line {exc.lineno}: {exc.msg}.",
                             "Fix the syntax error in that file.") from None
    except ModuleNotFoundError as exc:
        if missing_is_ours and exc.name == where:
            raise
        raise TunesmithError(f"User {role} {spec}: {where} imports {exc.name!r}, which is not installed.",
                             f"Install it into tunesmith's environment (pip install {exc.name}), or remove the "
                             "import.") from None
    except Exception as exc:
        raise TunesmithError(f"User {role} {spec}: importing {where} raised {type(exc).__name__}: {exc}.",
                             "Fix the module's top-level code (`tunesmith --debug COMMAND ...` shows the "
                             "traceback).") from exc


def check_takes_completion_and_reference(function: Callable[..., Any], spec: str, role: str) -> None:
    """Refuse, before any model loads, a function that cannot be called as f(completion, reference) (a reward with a
    `prompt` parameter: f(completion, reference, prompt=...))."""
    import inspect

    try:
        given = {"prompt": "prompt"} if role == "reward" and takes_prompt(function) else {}
        inspect.signature(function).bind("completion", "reference", **given)
    except TypeError:
        reward = role == "reward"
        prompt = " (a reward may also take `prompt`, the question's text, as a third)" if reward else ""
        wanted = "completion: str, reference: str, prompt: str" if reward and takes_prompt(function) else (
            "completion: str, reference: str")
        raise TunesmithError(f"User {role} {spec} takes {inspect.signature(function)}, but a {role} is called with "
                             f"two arguments: (completion, reference){prompt}.",
                             f"Define it as def {function.__name__}({wanted}) -> float"
                             + (" (reference is '' for prompts without answers)." if reward else ".")
                             + ("" if reward or not takes_prompt(function) else " Only GRPO rewards are given the "
                                "prompt: eval scores a GRPO run by its rewards (results.json `rewards`).")
                             ) from None
    except ValueError:  # a builtin without an inspectable signature: called as it is
        return


def takes_prompt(function: Callable[..., Any]) -> bool:
    """Whether a user function has a parameter named `prompt` (a GRPO reward that checks an answer against the
    question it answers: the sum a prompt asks for, a value it quotes)."""
    import inspect

    try:
        return "prompt" in inspect.signature(function).parameters
    except ValueError:  # a builtin without an inspectable signature
        return False


def call_user_function(function: Callable[..., Any], spec: str, role: str, completion: str, reference: str,
                       prompt: str | None = None) -> Any:
    """`function(completion, reference)`, with `prompt=` too where it is given; an exception in it is the user's
    code failing, said as such (with the completion it failed on), not a tunesmith crash."""
    try:
        return function(completion, reference, **({"prompt": prompt} if prompt is not None else {}))
    except Exception as exc:
        asked = f", prompt {prompt[:60]!r}" if prompt is not None else ""
        raise TunesmithError(f"User {role} {spec} raised {type(exc).__name__}: {exc} (on completion "
                             f"{completion[:60]!r}, reference {reference[:60]!r}{asked}).",
                             "Fix the function: call it on that completion and reference to see the error "
                             "(`tunesmith --debug COMMAND ...` shows the traceback).") from exc


def reward_number(value: Any, spec: str, completion: str, on: str = "completion") -> float:
    """A user reward's return value as a float: any real number (a bool counts 1/0; a numpy scalar or a one-element
    array or tensor is read with `.item()`). Raises TunesmithError naming `spec`, the value and the `on` text it was
    given (`on`: what that text is) for anything else, and for NaN or an infinity."""
    if not isinstance(value, numbers.Real) and callable(getattr(value, "item", None)):
        with contextlib.suppress(ValueError, RuntimeError, TypeError):  # more than one element: refused below
            value = value.item()
    if not isinstance(value, numbers.Real):
        raise TunesmithError(f"User reward {spec} returned {value!r:.80} ({type(value).__name__}) for {on} "
                             f"{completion[:60]!r}.", "A reward function returns one number per call (a float, an "
                             "int or a bool); a function that ends without `return` gives None.")
    if not math.isfinite(value):
        raise TunesmithError(f"User reward {spec} returned {value!r} for {on} {completion[:60]!r}.",
                             "A reward must be finite: a NaN drops the reward from the sum, an infinity makes "
                             "every advantage 0 and nothing trains.")
    return float(value)


def try_user_reward(spec: str, base_dir: Path, reference: str, prompt: str) -> None:
    """Call the user's reward once with a row's reference answer as the completion, as GRPO will call it (with the
    prompt where it asks for one): one that raises on it or returns no finite number is named before any model loads
    (`train` and `doctor` both ask this)."""
    function = load_user_function(spec, base_dir, "reward")
    value = call_user_function(function, spec, "reward", reference, reference,
                               prompt if takes_prompt(function) else None)
    reward_number(value, spec, reference, on="the first training row's reference answer")


def recipe_scorer(recipe: Recipe, metrics: list[str] | None = None) -> Scorer:
    """The scorer for `metrics` (default: the recipe's chosen metrics); paths resolve from the recipe's folder."""
    section = recipe.eval
    schema_file = recipe.resolve_path(section.json_schema) if section.json_schema else None
    chosen = section.chosen_metrics() if metrics is None else metrics
    return build_scorer(chosen, section.regex, schema_file, Path(recipe.base_dir))


def build_scorer(metrics: list[str], regex: str | None, schema_file: Path | None, base_dir: Path) -> Scorer:
    """One scorer for the chosen metrics; their scores merged into one dict per example.

    A composite metric's sub-score (json_fields' exact_match) gives way to a metric chosen by that name. Answer and
    reference are compared in Unicode's composed form (NFC, https://unicode.org/reports/tr15/), as the data stage
    writes training rows: `é` typed as e + U+0301 (macOS file names, some editors) is the `é` a model writes, for
    every metric, a user's included.
    """
    chosen = [m for m in metrics if m not in LIKELIHOOD_METRICS]
    scorers = [(name, pick_scorer(name, regex, schema_file, base_dir)) for name in chosen]

    def score(prediction: str, reference: str) -> dict[str, Any]:
        prediction, reference = unicodedata.normalize("NFC", prediction), unicodedata.normalize("NFC", reference)
        merged: dict[str, Any] = {}
        for name, scorer in scorers:
            merged.update({k: v for k, v in scorer(prediction, reference).items() if k == name or k not in chosen})
        return merged

    return score


def pick_scorer(name: str, regex: str | None, schema_file: Path | None, base_dir: Path) -> Scorer:
    if name == "regex":
        if not regex:  # an empty pattern matches only an empty answer: every real answer would score 0
            raise TunesmithError("The regex metric needs the pattern a whole answer must match.",
                                 "Set eval.regex in the recipe (`tunesmith compare`: --regex PATTERN).")
        return regex_scorer(regex)
    if name == "json_schema":
        if schema_file is None:
            raise TunesmithError("The json_schema metric needs the JSON Schema file to validate answers against.",
                                 "Set eval.json_schema in the recipe (`tunesmith compare`: --json-schema FILE, "
                                 "which also holds decoding to it).")
        return json_schema_scorer(schema_file)
    if name in SCORERS:
        return SCORERS[name]
    if ":" in name:
        return user_scorer(name, base_dir)
    raise TunesmithError(f"Unknown metric {name!r}.", f"Choose from {', '.join(metric_names())}, or module:function.")


def metric_names() -> list[str]:
    return [*LIKELIHOOD_METRICS, *SCORERS, "regex", "json_schema"]


def score_answers(scorer: Scorer, answers: list[str], references: list[str]) -> list[dict[str, Any]]:
    """Each answer scored against its reference (the lists pair up one to one); a reasoning model's generation is
    scored on its `final_answer`, the text after its reasoning."""
    return [scorer(final_answer(answer), reference) for answer, reference in zip(answers, references, strict=True)]


def aggregate(scores: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric score every example has (a user metric that returns other keys on some rows keeps
    only the shared ones), plus per-field accuracy for JSON tasks (each field over the examples whose reference
    has it) and per-label accuracy (recall of each reference label) for label_accuracy."""
    if not scores:
        return {}
    keys = [k for k, v in scores[0].items() if isinstance(v, float)
            and all(isinstance(s.get(k), float) for s in scores)]  # a user metric's keys may differ between rows
    summary = {k: round(sum(s[k] for s in scores) / len(scores), 4) for k in keys}
    if "fields" in scores[0]:  # each field over the examples whose reference has it (optional keys differ)
        for field in dict.fromkeys(name for s in scores for name in s.get("fields", {})):
            hits = [s["fields"][field] for s in scores if field in s.get("fields", {})]
            summary[f"field/{field}"] = round(sum(hits) / len(hits), 4)
    if "label" in scores[0]:
        for label, hits in sorted(hits_per_label(scores).items()):
            summary[f"label/{label}"] = round(sum(hits) / len(hits), 4)
    return summary


def hits_per_label(scores: list[dict[str, Any]]) -> dict[str, list[float]]:
    """label_accuracy's per-example hits, grouped by the reference label."""
    grouped: dict[str, list[float]] = {}
    for score in scores:
        grouped.setdefault(score["label"]["reference"], []).append(score["label_accuracy"])
    return grouped


def label_report(scores: dict[str, list[dict[str, Any]]], labels: list[str] | None = None) -> dict[str, Any]:
    """Per variant: accuracy per reference label and the confusion matrix (reference × predicted).

    `labels` is the training label set (data.json); answers that name none of them count as "(other)".
    Without it, the eval references make the set.
    """
    references = sorted({s["label"]["reference"] for variant in scores.values() for s in variant})
    known = list(dict.fromkeys([*(labels or []), *references]))
    by_key = {label_key(label): label for label in known}
    report: dict[str, Any] = {"labels": known, "per_label": {}, "confusion": {}}
    for name, variant in scores.items():
        confusion = {label: dict.fromkeys([*known, OTHER_LABEL], 0) for label in references}
        for score in variant:
            predicted = by_key.get(label_key(score["label"]["predicted"]), OTHER_LABEL)
            confusion[score["label"]["reference"]][predicted] += 1
        report["confusion"][name] = confusion
        report["per_label"][name] = {label: {"examples": len(hits), "correct": int(sum(hits)),
                                             "accuracy": round(sum(hits) / len(hits), 4)}
                                     for label, hits in sorted(hits_per_label(variant).items())}
    return report


def score_columns(scores: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-example scores as one list per metric (fields flattened to field/<name>), for paired statistics.

    Only scores every example has are kept: a comparison needs a value on both sides of each pair.
    """
    flat = [{**{k: v for k, v in s.items() if isinstance(v, float)},
             **{f"field/{k}": float(v) for k, v in s.get("fields", {}).items()}} for s in scores]
    if not flat:
        return {}
    return {key: [row[key] for row in flat] for key in flat[0] if all(key in row for row in flat)}


_INVALID = object()


def parse_json_strict(text: str) -> Any:
    """The whole answer as a JSON value, or _INVALID (None is a valid JSON value: null)."""
    try:
        return json.loads(text.strip())
    except json.JSONDecodeError:
        return _INVALID


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class _UnicodeWords:
    """Lowercased \\w+ words: rouge-score's own tokenizer drops every non-ASCII letter."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


@functools.cache
def _rouge_l_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeWords())


@functools.cache
def _chrf() -> Any:
    from sacrebleu.metrics import CHRF

    return CHRF()
