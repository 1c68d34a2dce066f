"""What the training answers look like, so that eval scores them with metrics that fit.

`classify_answers` reads the answer of every row (a `messages` row's last assistant turn, its tool calls written
as `<tool_call>` blocks by `answer_text`; for other shapes the last text `answer_texts` finds) and sorts the set
into one of six kinds:

- `tool_calls`: some answers call tools (`scoring.tool_calls_in` finds a call): scored by tool_call_match (the
  right functions with the right arguments), tool_name_match, tool_call_decision (calls exactly when the reference
  does) and chrF (for the answers in words);
- `json`: every answer parses, as a whole, as a JSON object (arrays, numbers and strings do not count);
- `labels`: a small closed set of short values, each repeated: at most MAX_LABELS distinct values, on
  average at least MIN_REPEATS rows per value, and every value one line of at most MAX_LABEL_CHARS
  characters (a classifier's answers);
- `numbers`: otherwise, every answer a number, alone or with a currency sign or a short unit (`42`, `12.7 cm`,
  `$5.99`; `scoring.NUMBER_ANSWER`): scored by numeric_match (is the number right) and exact_match, not by
  character overlap, which gives `24` most of the credit of `42`;
- `short`: otherwise, every answer one short line (at most MAX_SHORT_CHARS characters and MAX_SHORT_WORDS words:
  a date, a code, a name pulled out of the prompt): scored by exact_match first, since character overlap gives
  `2019-03-03` most of the credit of `2019-03-06`, then chrF; when every answer has one character-class shape
  (`shape_pattern`: `2019-03-06` is `\d{4}-\d{2}-\d{2}`), that regex is recorded as `pattern`, the structure
  constrained decoding holds answers to;
- `free_text`: anything else.

The data stage records the summary in data.json (`answers`); eval reads it from there to resolve
`eval.task_metric: auto`, and `check_metrics_fit_answers` refuses, before training, JSON metrics on answers
that are not JSON.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, Field

from tunesmith.config import ANSWER_KIND_METRICS, REFERENCE_REWARDS, EvalSection, GRPOMethod, Recipe, RewardSpec
from tunesmith.data.rowtext import answer_texts
from tunesmith.data.shapes import Row, is_prompt_only
from tunesmith.data.template import answer_text
from tunesmith.errors import DataError
from tunesmith.scoring import LIKELIHOOD_METRICS, NUMBER_ANSWER, REFERENCE_FREE_METRICS, tool_calls_in

AnswerKind = Literal["tool_calls", "json", "labels", "numbers", "short", "free_text"]
MAX_LABELS = 20
MAX_SHORT_CHARS = 40
MAX_SHORT_WORDS = 5
MIN_REPEATS = 3
MAX_LABEL_CHARS = 64
EXAMPLE_CHARS = 120
# bare_input_warnings: prompts count as instructed where INSTRUCTED_SHARE of them name two or more of the labels, or
# share a template's wording (openings or endings, of OPENING_WORDS words or a whole line, each on TEMPLATE_SHARE of
# the prompts at least); PROMPTS_READ rows spread over a large set are read
INSTRUCTED_SHARE = 0.5
TEMPLATE_SHARE = 0.2
OPENING_WORDS = 3
LABELS_SHOWN = 8
PROMPTS_READ = 2000
# Which metrics need which answers: json_fields compares objects field by field; the other two only parse.
NEEDS_JSON_OBJECTS = ("json_fields",)
NEEDS_JSON_VALUES = ("json_valid", "json_schema")


class AnswerSummary(BaseModel):
    """The kind of the answers and the figures it was decided on (data.json `answers`)."""

    kind: AnswerKind
    rows: int = Field(0, description="Rows with an answer text.")
    distinct: int = Field(0, description="Distinct answers, after stripping surrounding space.")
    json_objects: int = Field(0, description="Answers that parse as a JSON object.")
    json_values: int = Field(0, description="Answers that parse as any JSON value.")
    numbers: int = Field(0, description="Answers that are a number, alone or with a currency sign or a unit.")
    tool_calls: int = Field(0, description="Answers that call at least one tool.")
    labels: list[str] = Field(default_factory=list, description="The label set, sorted (kind `labels` only).")
    counts: dict[str, int] = Field(default_factory=dict, description="Rows per label (kind `labels` only).")
    example: str = Field("", description="One answer, shortened, for messages.")
    pattern: str | None = Field(None, description="The regex every answer's shape fits (kind `short` only, when they "
                                                  "share one: `\\d{4}-\\d{2}-\\d{2}` for ISO dates).")

    @property
    def reason(self) -> str:
        """Why the kind was chosen, in one phrase (printed by eval and recorded in results.json)."""
        if not self.rows:
            return "no row has an answer text to look at"
        if self.kind == "tool_calls":
            return (f"the last answer of {self.tool_calls} of {self.rows} rows calls tools (the answer eval scores; "
                    "calls earlier in a conversation are context)")
        if self.kind == "json":
            return f"all {self.rows} answers are JSON objects"
        if self.kind == "numbers":
            return f"all {self.rows} answers are numbers ({self.distinct} distinct values)"
        if self.kind == "short":
            shape = f", all of the shape {self.pattern}" if self.pattern else ""
            return (f"all {self.rows} answers are one short line ({self.distinct} distinct values, at most "
                    f"{MAX_SHORT_CHARS} characters{shape})")
        values = f"answers take {self.distinct} distinct values over {self.rows} rows"
        if self.kind == "labels":
            return values
        if self.distinct > MAX_LABELS:
            return f"{values} (more than {MAX_LABELS}) and not all are JSON objects"
        if self.rows < MIN_REPEATS * self.distinct:
            return f"{values}: too few repeats for a label set, and not all are JSON objects"
        return f"{values}, but some are longer than one short line ({MAX_LABEL_CHARS} characters)"


def row_answer(row: Row) -> str | None:
    """The answer a row teaches: the last assistant turn of a conversation, else the last answer text."""
    if "messages" in row:
        last = row["messages"][-1] if row["messages"] else {}
        return answer_text(last) if last.get("role") == "assistant" else None
    texts = answer_texts(row)
    return texts[-1] if texts else None


def classify_answers(rows: list[Row]) -> AnswerSummary:
    """Sort the rows' answers into tool_calls / json / labels / numbers / free_text (rules in the module
    docstring)."""
    answers = [answer.strip() for answer in map(row_answer, rows) if answer is not None]
    parsed = [_parse_json(answer) for answer in answers]
    objects = sum(isinstance(value, dict) for value in parsed)
    values = sum(value is not _NOT_JSON for value in parsed)
    numbers = sum(NUMBER_ANSWER.fullmatch(answer) is not None for answer in answers)
    calls = sum(bool(tool_calls_in(answer)) for answer in answers)
    counts = Counter(answers)
    figures: dict[str, Any] = {"rows": len(answers), "distinct": len(counts), "json_objects": objects,
                               "json_values": values, "numbers": numbers, "tool_calls": calls,
                               "example": _shorten(answers[0]) if answers else ""}
    if calls:
        return AnswerSummary(kind="tool_calls", **figures)
    if answers and objects == len(answers):
        return AnswerSummary(kind="json", **figures)
    if answers and is_label_set(counts):
        return AnswerSummary(kind="labels", labels=sorted(counts), counts=dict(sorted(counts.items())), **figures)
    if answers and numbers == len(answers):
        return AnswerSummary(kind="numbers", **figures)
    if answers and all(is_short(answer) for answer in answers):
        shapes = {shape_pattern(answer) for answer in answers}
        return AnswerSummary(kind="short", pattern=shapes.pop() if len(shapes) == 1 else None, **figures)
    return AnswerSummary(kind="free_text", **figures)


def is_short(answer: str) -> bool:
    """One line of at most MAX_SHORT_CHARS characters and MAX_SHORT_WORDS words: an extracted value, not prose."""
    return 0 < len(answer) <= MAX_SHORT_CHARS and "\n" not in answer and len(answer.split()) <= MAX_SHORT_WORDS


REGEX_SPECIAL = set(".^$*+?{}[]\\|()")
SHAPE_CLASSES = ((str.isdigit, r"\d"), (lambda c: c.isascii() and c.isupper(), "[A-Z]"),
                 (lambda c: c.isascii() and c.islower(), "[a-z]"))


def shape_pattern(answer: str) -> str:
    """The regex of an answer's shape: runs of ASCII digits, upper- and lower-case letters by class and length,
    anything else as itself (`2019-03-06` → `\d{4}-\d{2}-\d{2}`, `AB-12` → `[A-Z]{2}-\d{2}`)."""
    pieces: list[tuple[str, int]] = []
    for char in answer:
        literal = "\\" + char if char in REGEX_SPECIAL else char
        token = next((cls for test, cls in SHAPE_CLASSES if char.isascii() and test(char)), literal)
        if pieces and pieces[-1][0] == token:
            pieces[-1] = (token, pieces[-1][1] + 1)
        else:
            pieces.append((token, 1))
    return "".join(token if count == 1 else f"{token}{{{count}}}" for token, count in pieces)


def is_label_set(counts: Counter[str]) -> bool:
    """A classifier's answers: few distinct values, each repeated, each a short single line."""
    return (len(counts) <= MAX_LABELS and counts.total() >= MIN_REPEATS * len(counts)
            and all(len(value) <= MAX_LABEL_CHARS and "\n" not in value for value in counts))


def bare_input_warnings(rows: list[Row], summary: AnswerSummary | None = None) -> list[str]:
    """One line where a classifier's training prompts carry no instruction: every answer one of a label set
    (`summary`, `classify_answers` kind `labels`, computed when not given) and the user turns (up to PROMPTS_READ
    rows spread over the set) neither name the labels nor share a template's wording (`is_instructed`). Trained so,
    the model learns to answer *any* message with a label. Measured on the bundled `weather/` and `reviews/` sets
    (README, "Bare inputs"; one run each): probes 1.00 -> 0.85 and 0.83 with the defaults; 0.92 and 1.00 with an
    instruction in each user turn, 0.81 and 0.94 with it as the system prompt; on reviews every anchor setting tried
    kept at most 0.875, on weather the best (replay weight 8 or 16) tied the instruction. `rows`: conversations."""
    summary = summary or classify_answers(rows)
    if summary.kind != "labels" or len(summary.labels) < 2:
        return []
    read = rows[:: max(1, len(rows) // PROMPTS_READ)]
    prompts = [text for text in map(user_text, read) if text]
    if not prompts or is_instructed(prompts, summary.labels):
        return []
    in_system = sum(any(turn.get("role") == "system" and turn.get("content") for turn in row.get("messages") or [])
                    for row in read) >= INSTRUCTED_SHARE * len(read)
    shown = ", ".join(summary.labels[:LABELS_SHOWN]) + (", ..." if len(summary.labels) > LABELS_SHOWN else "")
    measured = "0.92 and 1.00 with an instruction in each user turn" + (
        ", 0.81 and 0.94 with it in the system turn alone, as these rows have it" if in_system else "")
    return [f"The {len(rows)} training prompts carry no instruction in the user turn (fewer than half name two of the "
            f"labels or share an opening or an ending with the others), and every answer is one of "
            f"{len(summary.labels)} labels ({shown}): the model learns to answer any message with a label, and loses "
            f"general answers (README, \"Bare inputs\": on two such sets the forgetting probes fell to 0.85 and 0.83; "
            f"{measured}). State the task and the allowed answers in each user turn (e.g. \"... Answer with one of: "
            f"{shown}.\") and send the same wording at inference; a model that will only ever classify such texts "
            "need not."]


def user_text(row: Row) -> str | None:
    """The text of a conversation's user turns before its answer, joined by newlines (None without any; content
    parts are joined into text when rows load, `data/turns.py`)."""
    texts = [turn["content"] for turn in (row.get("messages") or [])[:-1]
             if turn.get("role") == "user" and isinstance(turn.get("content"), str)]
    return "\n".join(texts) if texts else None


def is_instructed(prompts: list[str], labels: list[str]) -> bool:
    """Whether the prompts carry an instruction: at least INSTRUCTED_SHARE of them name two or more of the labels
    (as whole words, any case), or a template's fixed wording covers that share: openings (the first OPENING_WORDS
    words, or the first line of a prompt of several lines) or endings (likewise), each shared by at least
    TEMPLATE_SHARE of the prompts, together on INSTRUCTED_SHARE of them (several templates, as FLAN mixes them)."""
    naming = re.compile("|".join(rf"(?<!\w){re.escape(label)}(?!\w)" for label in labels), re.IGNORECASE)
    wanted = INSTRUCTED_SHARE * len(prompts)
    if sum(len({found.lower() for found in naming.findall(prompt)}) >= 2 for prompt in prompts) >= wanted:
        return True
    pieces = [template_pieces(prompt) for prompt in prompts]
    for position in range(4):
        counts = Counter(piece[position] for piece in pieces if piece[position])
        if sum(count for count in counts.values() if count >= TEMPLATE_SHARE * len(prompts)) >= wanted:
            return True
    return False


def template_pieces(prompt: str) -> tuple[str, str, str, str]:
    """A prompt's first and last OPENING_WORDS words, and its first and last lines where it has several ('' where
    not), lower-cased: where a template's fixed wording would be."""
    words = prompt.lower().split()
    lines = [line.strip() for line in prompt.lower().strip().splitlines() if line.strip()]
    several = len(lines) > 1
    return (" ".join(words[:OPENING_WORDS]) if len(words) >= OPENING_WORDS else "",
            " ".join(words[-OPENING_WORDS:]) if len(words) >= OPENING_WORDS else "",
            lines[0] if several else "", lines[-1] if several else "")


def default_metrics(kind: AnswerKind) -> list[str]:
    """The metrics `eval.task_metric: auto` chooses for answers of this kind (loss and perplexity first)."""
    return list(ANSWER_KIND_METRICS[kind])


def check_metrics_fit_answers(section: EvalSection, answers: AnswerSummary) -> None:
    """Refuse JSON metrics on training answers that are not JSON, before any model loads.

    json_fields needs every answer to be a JSON object; json_valid and json_schema need every answer to be
    JSON. Without this, a run trains to the end and then eval fails on the first reference.
    """
    if not answers.rows:
        return
    chosen = section.chosen_metrics(answers.kind)
    unfit = [m for m in chosen if (m in NEEDS_JSON_OBJECTS and answers.json_objects < answers.rows)
             or (m in NEEDS_JSON_VALUES and answers.json_values < answers.rows)]
    if not unfit:
        return
    key = "eval.metrics" if section.metrics else f"eval.task_metric: {section.task_metric}"
    fitting = [m for m in default_metrics(answers.kind) if m not in ("loss", "perplexity")]
    raise DataError(
        f"{key} asks for {', '.join(unfit)}, but the training answers are not all JSON"
        f"{' objects' if 'json_fields' in unfit else ''}: {answers.json_objects} of {answers.rows} are JSON objects "
        f"and {answers.reason} (for example {answers.example!r}).",
        f"Set eval.task_metric: auto (here it picks {', '.join(fitting)}), or eval.metrics: "
        f"[{', '.join(fitting)}].")


def check_prompts_fit_scoring(recipe: Recipe, train: list[Row], held_out: list[Row], source: str) -> None:
    """Prompts without answers (GRPO's prompt-only rows) before training: the rewards and the eval metrics must not
    need the answers they lack (`check_rewards_fit_rows`, `prompt_only_metrics`). DataError otherwise."""
    if isinstance(recipe.method, GRPOMethod):
        check_rewards_fit_rows(recipe.method.rewards, train, source)
    if any(is_prompt_only(row) for row in held_out):
        prompt_only_metrics(recipe.eval)


def check_rewards_fit_rows(rewards: list[RewardSpec], rows: list[Row], source: str) -> None:
    """Refuse GRPO rewards that compare each completion with the row's reference answer (exact_match, ...) on
    prompts that have none: every completion would score 0, and nothing would train."""
    needing = [spec.name for spec in rewards if spec.name in REFERENCE_REWARDS]
    unanswered = sum(is_prompt_only(row) for row in rows)
    if needing and unanswered:
        verb = "compares" if len(needing) == 1 else "compare"
        raise DataError(f"method.rewards has {', '.join(needing)}, which {verb} each completion with the row's "
                        f"reference answer, and the {unanswered} training rows of {source} are prompts without "
                        "answers.",
                        "Give each row its answer as 'completion' (data.columns maps a column of another name onto "
                        "it: `--set data.columns.answer=completion`), or reward what a completion can be judged on "
                        "alone: regex, json_valid, json_schema, length_penalty, reward_model, or a function of yours.")


def prompt_only_metrics(section: EvalSection) -> list[str]:
    """The metrics held-out prompts without answers are scored by: those that judge an answer alone (regex,
    json_valid, json_schema, a user function, which is given '' as the reference); none under task_metric auto (a
    GRPO run's rewards score its answers). A metric that needs the reference, or the held-out loss, is refused."""
    chosen = section.metrics or ([] if section.task_metric in ("auto", "none") else [section.task_metric])
    needing = [name for name in chosen if name not in REFERENCE_FREE_METRICS and ":" not in name]
    if needing:
        key = "eval.metrics" if section.metrics else "eval.task_metric"
        measured = "need the reference answer" + (" (loss and perplexity: its tokens)" if set(needing) &
                                                  set(LIKELIHOOD_METRICS) else "")
        raise DataError(f"{key} asks for {', '.join(needing)}, which {measured}, and the held-out rows are prompts "
                        "without answers.",
                        "Score them with metrics that judge an answer alone (regex, json_valid, json_schema, or a "
                        "function of yours), or leave eval.metrics out: the run's GRPO rewards score the answers; or "
                        "hold out rows with answers (data.eval: a file of prompt-completion rows).")
    return list(chosen)


_NOT_JSON = object()


def _parse_json(text: str) -> Any:
    """The whole text as a JSON value, or _NOT_JSON (`null` is a JSON value)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _NOT_JSON


def _shorten(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"
