"""Recognise a dataset's shape from its keys and turn each record into a canonical row (DESIGN §2).

Canonical rows follow TRL's dataset conventions, so every trainer downstream sees one of six shapes:
`messages` (optionally with `tools`), `prompt_completion`, `preference`, `unpaired_preference`, `text`, and
`prompt` (prompts without answers: what GRPO samples answers to, TRL's "prompt-only" type).
ShareGPT and Alpaca records are recognised too and become `messages` rows; a prompt with several scored
completions (UltraFeedback's layout) becomes a `preference` row, the best-scored answer against the worst. Keys a
shape does not use (ids, sources, scores) are left out of the canonical row.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunesmith.config import COLUMN_TARGETS
from tunesmith.data.turns import (
    TURN_KEYS,
    Message,
    conversation,
    normalise_turns,
    open_prompt,
    prompt_and_reply,
    short_repr,
    text_field,
    tool_schemas,
    type_name,
)
from tunesmith.errors import RowProblem

Row = dict[str, Any]

# The keys that identify each layout, in detection order: the first layout whose keys a record has wins.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "preference": ("chosen", "rejected"),
    "scored_completions": ("completions",),
    "rated_generations": ("generations", "ratings"),
    "unpaired_preference": ("prompt", "completion", "label"),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
    "prompt": ("prompt",),  # last: a row with a prompt and anything the rows above read is of their layout
}
SHAPES = ("messages", "prompt_completion", "preference", "unpaired_preference", "text", "prompt")
# The keys each layout reads besides its identifying ones (LAYOUTS): every other column is left out of the rows.
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {
    "messages": ("tools",), "sharegpt": ("system", "tools"), "preference": ("prompt", "tools"),
    "scored_completions": ("prompt", "instruction"), "rated_generations": ("prompt", "instruction"),
    "unpaired_preference": ("tools",), "prompt_completion": ("tools",), "alpaca": ("input", "system", "history"),
    "text": (), "prompt": ("tools",),
}


def unused_keys(records: list[Any], layout: str) -> list[str]:
    """The columns of `records` (dicts) that rows of `layout` do not read, and the keys of their turns that no turn
    reads (as `messages[].rationale`: reasoning or a per-turn training flag under a name tunesmith does not know
    would otherwise go unsaid), sorted."""
    read = set(LAYOUTS[layout]) | set(OPTIONAL_KEYS[layout])
    dicts = [record for record in records if isinstance(record, dict)]
    columns = {str(key) for record in dicts for key in record} - read
    in_turns = {f"{key}[].{turn_key}" for record in dicts for key, value in record.items()
                if key in read and key not in ("tools", "completions") and isinstance(value, list)
                for turn in value if isinstance(turn, dict) for turn_key in turn if turn_key not in TURN_KEYS}
    return sorted(columns | in_turns)
# KTO's label as users' files spell it: booleans in words, 0/1, and the thumbs of feedback logs (Ethayarajh et al.
# 2024 call the two kinds desirable and undesirable)
LABEL_WORDS = {**dict.fromkeys(("true", "1", "1.0", "yes", "up", "thumbs_up", "thumbsup", "\N{THUMBS UP SIGN}",
                                "good", "desirable"), True),
               **dict.fromkeys(("false", "0", "0.0", "no", "down", "thumbs_down", "thumbsdown",
                                "\N{THUMBS DOWN SIGN}", "bad", "undesirable"), False)}


def shape_of(layout: str) -> str:
    """The canonical shape a layout becomes: ShareGPT and Alpaca are conversations, scored completions pairs."""
    if layout in ("scored_completions", "rated_generations"):
        return "preference"
    return "messages" if layout in ("sharegpt", "alpaca") else layout


def detect_layout(record: dict) -> str | None:
    return next((layout for layout, keys in LAYOUTS.items() if all(key in record for key in keys)), None)


def normalise_record(value: Any, layout: str) -> Row:
    """One raw record as a canonical row of `layout`, or a RowProblem saying what is wrong with it."""
    if not isinstance(value, dict):
        raise RowProblem("not_an_object", f"expected a JSON object, got {type_name(value)}.")
    missing = [key for key in LAYOUTS[layout] if key not in value]
    if missing:
        unmapped = [str(key) for key in value if key not in COLUMN_TARGETS]  # columns data.columns could map
        hint = (f"Map your column names onto the expected ones with data.columns, {{your_column: expected}}, e.g. "
                f"`--set data.columns.{unmapped[0] if unmapped else 'question'}={missing[0]}`." if unmapped else
                f"Give the row its {missing[0]!r}, or remove it (data.skip_invalid: true leaves such rows out and "
                "counts them).")
        article = "an" if layout[0] in "aeiou" else "a"
        raise RowProblem("missing_key", f"{article} {layout} row needs {missing}; this one has {key_list(value)}.",
                         hint)
    row = NORMALISERS[layout](value)
    check_writable(row)
    return row


def key_list(record: dict, limit: int = 10) -> str:
    keys = sorted(str(key) for key in record)
    return str(keys[:limit])[:-1] + ", ...]" if len(keys) > limit else str(keys)


def is_number(value: Any) -> bool:
    """A finite JSON number (not a boolean, which JSON spells true/false and a CSV cell True/False)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def required_text(record: dict, key: str, reason: str = "empty") -> str:
    """`record[key]` as text: a string, or a JSON number written as Python prints it (`"completion": 8` is "8", as
    the same cell in a CSV file reads); RowProblem for anything else, or an empty string."""
    value = record[key]
    if is_number(value):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise RowProblem(reason if isinstance(value, str) else "wrong_type",
                         f"'{key}' must be a non-empty string, got {short_repr(value)}.")
    return value


def with_tools(row: Row, record: dict, turns: dict[str, list[Message]] | None = None) -> Row:
    """Carry the row's tool schemas along (conversational rows only; an empty CSV cell means none), after checking
    that every call in `turns` (by the key the file names them under; the row's turn lists by default) is to a
    declared tool."""
    if record.get("tools") not in (None, ""):
        row["tools"] = tool_schemas(record["tools"])
        lists = turns if turns is not None else {key: value for key, value in row.items() if isinstance(value, list)}
        for key, messages in lists.items():
            check_calls_declared(messages, row["tools"], key)
    return row


def check_calls_declared(messages: list[Message], schemas: list[dict], key: str) -> None:
    """Refuse a call to a function the row's `tools` do not declare: trained on it, a model learns to call tools it
    was never offered (a misspelt name is the usual cause)."""
    declared = sorted({schema["function"].get("name") for schema in schemas
                       if isinstance(schema.get("function"), dict)} - {None}, key=str)
    if not declared:  # schemas of a form without function names: nothing to check against
        return
    for index, message in enumerate(messages):
        for call in message.get("tool_calls") or []:
            name = call["function"]["name"]
            if name not in declared:
                raise RowProblem("undeclared_tool", f"{key}[{index}] calls {name!r}, which the row's 'tools' do not "
                                                    f"declare (they declare {declared}).",
                                 "Correct the call's name, or add the function's schema to the row's 'tools'.")


def with_system(messages: list[Message], system: Any) -> list[Message]:
    if not system or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": text_field(system, "system")}, *messages]


def messages_row(record: dict) -> Row:
    return with_tools({"messages": conversation(record["messages"])}, record)


def sharegpt_row(record: dict) -> Row:
    messages = conversation(record["conversations"], "conversations")
    return with_tools({"messages": with_system(messages, record.get("system"))}, record, {"conversations": messages})


def alpaca_row(record: dict) -> Row:
    """Instruction (plus input, when there is one) becomes the user turn, output the answer; `history`, the earlier
    exchanges as [[user, assistant], ...] (LLaMA-Factory's Alpaca layout), become the turns before them."""
    instruction = required_text(record, "instruction")
    extra = text_field(record.get("input") or "", "input")
    output = required_text(record, "output", reason="empty_assistant")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [*history_turns(record.get("history")), {"role": "user", "content": user},
                {"role": "assistant", "content": output}]
    return {"messages": with_system(messages, record.get("system"))}


def history_turns(history: Any) -> list[Message]:
    """Alpaca `history` ([[user, assistant], ...]; None or [] for none) as alternating user and assistant turns."""
    if history in (None, ""):
        return []
    pairs = history if isinstance(history, list) else None
    if pairs is None or not all(isinstance(pair, list | tuple) and len(pair) == 2
                                and all(isinstance(text, str) for text in pair) for pair in pairs):
        raise RowProblem("wrong_type", f"'history' must be a list of [user, assistant] pairs of strings, got "
                                       f"{short_repr(history)}.")
    return [turn for user, assistant in pairs
            for turn in ({"role": "user", "content": user}, {"role": "assistant", "content": assistant})]


def is_conversational(record: dict, keys: tuple[str, ...]) -> bool:
    """Whether the fields are all lists of messages (True) or all plain text (False: strings, or JSON numbers that
    `required_text` reads as text); mixing is refused."""
    values = [record[key] for key in keys]
    if all(isinstance(value, str) or is_number(value) for value in values):
        return False
    if all(isinstance(value, list) for value in values):
        return True
    found = ", ".join(f"{key}: {type_name(value)}" for key, value in zip(keys, values, strict=True))
    raise RowProblem("wrong_type", f"{list(keys)} must all be strings or all be lists of messages ({found}).")


def prompt_completion_row(record: dict) -> Row:
    if not is_conversational(record, ("prompt", "completion")):
        return {"prompt": required_text(record, "prompt"),
                "completion": required_text(record, "completion", reason="empty_assistant")}
    prompt, completion = prompt_and_reply(record["prompt"], record["completion"], "completion")
    return with_tools({"prompt": prompt, "completion": completion}, record)


def unpaired_preference_row(record: dict) -> Row:
    return {**prompt_completion_row(record), "label": label_value(record["label"])}


def label_value(value: Any) -> bool:
    """True/false as JSON booleans, 0/1, or the words files use for them (LABEL_WORDS: yes/no, up/down, ...)."""
    if isinstance(value, bool):
        return value
    if is_number(value) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABEL_WORDS:
        return LABEL_WORDS[value.strip().lower()]
    raise RowProblem("wrong_type", f"'label' must be true or false, got {short_repr(value)}.",
                     "KTO reads true/false, 1/0, yes/no, up/down, thumbs_up/thumbs_down, good/bad (and 👍/👎) as "
                     "desirable/undesirable; write other values as one of these in the file (a score as "
                     "true above a threshold you choose).")


def preference_row(record: dict) -> Row:
    if record.get("prompt") is None:
        return implicit_preference_row(record)
    if isinstance(record["prompt"], str) and all(isinstance(record[key], list) for key in ("chosen", "rejected")):
        return text_prompt_preference_row(record)
    if not is_conversational(record, ("prompt", "chosen", "rejected")):
        row = {"prompt": required_text(record, "prompt"),
               "chosen": required_text(record, "chosen", reason="empty_assistant"),
               "rejected": required_text(record, "rejected", reason="empty_assistant")}
    else:
        prompt, chosen = prompt_and_reply(record["prompt"], record["chosen"], "chosen")
        _, rejected = prompt_and_reply(record["prompt"], record["rejected"], "rejected")
        row = with_tools({"prompt": prompt, "chosen": chosen, "rejected": rejected}, record)
    check_pair_differs(row)
    return row


def text_prompt_preference_row(record: dict) -> Row:
    """A text `prompt` beside `chosen` and `rejected` given as turns. Turns that start at the answer take the prompt
    as their user turn. Turns that repeat the prompt (UltraFeedback binarized's layout: each side a whole
    conversation) are read as whole conversations, their shared turns the prompt, once `prompt` is found to be
    their last user turn; a pair that says another prompt is refused (which one trains is not ours to guess)."""
    prompt = required_text(record, "prompt", reason="empty_user")
    sides = [normalise_turns(record[key], key)[0] for key in ("chosen", "rejected")]
    if all(turns[0]["role"] == "assistant" for turns in sides):
        return preference_row({**record, "prompt": [{"role": "user", "content": prompt}]})
    row = implicit_preference_row({key: value for key, value in record.items() if key != "prompt"})
    asked = [turn.get("content") for turn in row["prompt"] if turn["role"] == "user"]
    last_asked = asked[-1] if asked else None
    if not isinstance(last_asked, str) or last_asked.strip() != prompt.strip():
        raise RowProblem("prompt_mismatch", f"'prompt' ({short_repr(prompt)}) is not the last user turn that "
                                            f"'chosen' and 'rejected' share ({short_repr(last_asked)}).",
                         "Give chosen and rejected as the answer turns alone, or drop the 'prompt' column where "
                         "they hold the whole conversations (their shared turns are then the prompt).")
    return row


def check_pair_differs(row: Row) -> None:
    """Refuse a pair whose answers are the same text, or the same once data.clean.normalize has run
    (`clean.normalize_text`: spaces, line ends, invisible characters): the pair would train identical after it,
    pushing an answer away from itself."""
    if row["chosen"] == row["rejected"]:
        raise identical_pair()
    if normalized_answer(row["chosen"]) == normalized_answer(row["rejected"]):
        raise RowProblem("identical_pair", "'chosen' and 'rejected' differ in whitespace or invisible characters "
                                           "alone: normalized they are identical, and there is nothing to prefer.")


def normalized_answer(answer: str | list[Message]) -> Any:
    """An answer (text, or assistant turns) as data.clean.normalize leaves it."""
    from tunesmith.data.clean import normalize_text

    if isinstance(answer, str):
        return normalize_text(answer)
    return [{**turn, "content": normalize_text(turn.get("content") or "")} for turn in answer]


def implicit_preference_row(record: dict) -> Row:
    """Whole chosen/rejected conversations: the turns they share become the prompt (as TRL does). Anthropic HH-RLHF's
    transcripts (`hh_turns`) are such conversations written as text."""
    chosen, rejected = record["chosen"], record["rejected"]
    if all(isinstance(side, str) and is_hh_transcript(side) for side in (chosen, rejected)):
        chosen, rejected = hh_turns(chosen), hh_turns(rejected)
    elif isinstance(chosen, str) or isinstance(rejected, str):
        raise RowProblem("missing_key", "a preference row without 'prompt' must give 'chosen' and 'rejected' "
                                        "as whole conversations that share their prompt turns.",
                         "Add a 'prompt' column, or map yours onto it, e.g. `--set data.columns.question=prompt`; "
                         "transcripts as text are read when written as Anthropic HH-RLHF's (\\n\\nHuman: ... "
                         "\\n\\nAssistant: ...).")
    chosen, rejected = conversation(chosen, "chosen"), conversation(rejected, "rejected")
    shared = shared_prompt_length(chosen, rejected)
    row = {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}
    check_pair_differs(row)
    return with_tools(row, record, {"chosen": chosen, "rejected": rejected})


HH_SPEAKER = re.compile(r"\n\n(Human|Assistant):")


def is_hh_transcript(text: str) -> bool:
    """Whether `text` is written as Anthropic HH-RLHF's rows are: turns each starting "\\n\\nHuman:" or
    "\\n\\nAssistant:", the first a Human's."""
    return isinstance(text, str) and text.startswith("\n\nHuman:") and "\n\nAssistant:" in text


def hh_turns(text: str) -> list[dict[str, str]]:
    """An HH-RLHF transcript as chat turns (Human → user, Assistant → assistant), each turn's text stripped, as TRL's
    hh-rlhf conversion script splits them (trl examples/datasets/hh-rlhf-helpful-base.py)."""
    parts = HH_SPEAKER.split(text)[1:]  # "", speaker, text, speaker, text, ...
    return [{"role": "user" if speaker == "Human" else "assistant", "content": body.strip()}
            for speaker, body in zip(parts[::2], parts[1::2], strict=True)]


def shared_prompt_length(chosen: list[Message], rejected: list[Message]) -> int:
    """How many leading turns the two share; they must then part ways at an assistant turn."""
    if chosen == rejected:
        raise identical_pair()
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    parts_at_answer = all(len(turns) > shared and turns[shared]["role"] == "assistant"
                          for turns in (chosen, rejected))
    if not shared or not parts_at_answer:
        raise RowProblem("no_shared_prompt", "'chosen' and 'rejected' must start with the same prompt turns "
                                             "and differ from an assistant turn on.")
    return shared


def identical_pair() -> RowProblem:
    return RowProblem("identical_pair", "'chosen' and 'rejected' are identical: there is nothing to prefer.")


# A scored completion's answer and its score, under the names datasets give them, in the order they are looked for.
# UltraFeedback's completions are {response, overall_score, fine-grained_score, ...} (Cui et al. 2023); its overall
# score is what HuggingFaceH4/ultrafeedback_binarized's create_dataset.py pairs by.
SCORED_ANSWER_KEYS = ("response", "completion", "text", "output", "answer", "content")
SCORE_KEYS = ("score", "rating", "reward", "overall_score", "fine-grained_score")


def scored_completions_row(record: dict) -> Row:
    """A prompt (`prompt`, else `instruction`: text, or turns) and its scored `completions` (or distilabel's parallel
    `generations` and `ratings`) as one pair: the best-scored answer chosen (the first where scores tie), the
    worst-scored answer of another text rejected. Zephyr's binarization drew the rejected one at random from the
    rest (Tunstall et al. 2023); the worst is the widest margin, and the same at every read. Answers without a score
    (a rating of null) are passed over while two scored ones remain."""
    parallel = "completions" not in record
    items = rated_generations(record) if parallel else record["completions"]
    prompt_key = next((key for key in ("prompt", "instruction") if record.get(key) is not None), None)
    if prompt_key is None:
        raise RowProblem("missing_key", f"a row of scored completions needs its 'prompt' (or 'instruction'); this one "
                                        f"has {key_list(record)}.",
                         "Map the column that holds the question onto it, e.g. `--set data.columns.question=prompt`.")
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise RowProblem("wrong_type", f"'completions' must be a list of objects, each an answer and its score, got "
                                       f"{short_repr(items)}.")
    where = "generations[{0}]/ratings[{0}]" if parallel else "completions[{0}]"
    scored = [(score, completion_answer(item, where.format(index))) for index, item in enumerate(items)
              if (score := completion_score(item, where.format(index))) is not None]
    if len(scored) < 2:
        raise RowProblem("no_preference", f"{len(scored)} of the row's {len(items)} answers have a score: a pair needs "
                                          "two with different scores.")
    best = max(scored, key=lambda pair: pair[0])
    worst = min((pair for pair in scored if pair[1] != best[1]), key=lambda pair: pair[0], default=best)
    if worst[0] == best[0]:
        raise RowProblem("no_preference", f"the row's {len(scored)} scored answers all score {best[0]:g} (or say the "
                                          "same): none is preferred, so there is no pair to train.")
    if isinstance(record[prompt_key], list):  # turns: the answers are the assistant's next turn
        return preference_row({"prompt": record[prompt_key], "chosen": [{"role": "assistant", "content": best[1]}],
                               "rejected": [{"role": "assistant", "content": worst[1]}]})
    return preference_row({"prompt": record[prompt_key], "chosen": best[1], "rejected": worst[1]})


def rated_generations(record: dict) -> list[dict[str, Any]]:
    """distilabel's `generations` (answers) and `ratings` (their scores, in the same order) as completions."""
    generations, ratings = record["generations"], record["ratings"]
    if not isinstance(generations, list) or not isinstance(ratings, list) or len(generations) != len(ratings):
        raise RowProblem("wrong_type", f"'generations' and 'ratings' must be lists of the same length, got "
                                       f"{short_repr(generations)} and {short_repr(ratings)}.")
    return [{"response": answer, "rating": rating} for answer, rating in zip(generations, ratings, strict=True)]


def completion_score(item: dict, where: str) -> float | None:
    """The first of SCORE_KEYS that `item` has, as a number (a number written as text counts); None where it has
    none or gives it as null (an answer nobody rated). RowProblem for a score that is no finite number."""
    key = next((key for key in SCORE_KEYS if item.get(key) is not None), None)
    if key is None:
        return None
    value = item[key]
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if not is_number(value):
        raise RowProblem("wrong_type", f"{where}: the score {key!r} is {short_repr(item[key])}, not a finite number.",
                         f"Give each answer's score as a number under one of {list(SCORE_KEYS)} (null: unrated).")
    return float(value)


def completion_answer(item: dict, where: str) -> str:
    """The first of SCORED_ANSWER_KEYS that `item` gives as non-empty text."""
    for key in SCORED_ANSWER_KEYS:
        if isinstance(item.get(key), str) and item[key].strip():
            return item[key]
    raise RowProblem("empty_assistant", f"{where} has no answer text: one of {list(SCORED_ANSWER_KEYS)}; it has "
                                        f"{key_list(item)}.")


def text_row(record: dict) -> Row:
    return {"text": required_text(record, "text")}


def prompt_row(record: dict) -> Row:
    """A prompt without an answer (TRL's prompt-only rows): text, or turns ending where the model answers."""
    if isinstance(record["prompt"], str) or is_number(record["prompt"]):
        return with_tools({"prompt": required_text(record, "prompt", reason="empty_user")}, record)
    return with_tools({"prompt": open_prompt(record["prompt"])}, record)


def check_writable(row: Row) -> None:
    """A canonical row must survive being written as UTF-8 JSON (`prepare` does exactly that)."""
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RowProblem("undecodable", "holds text that is not valid Unicode (a lone surrogate such "
                                        "as \\ud800).", "Fix the \\u escapes in the source file.") from None
    except (TypeError, ValueError, RecursionError):
        raise RowProblem("wrong_type", "holds a value that cannot be written as JSON.") from None


NORMALISERS: dict[str, Callable[[dict], Row]] = {
    "messages": messages_row,
    "sharegpt": sharegpt_row,
    "alpaca": alpaca_row,
    "prompt_completion": prompt_completion_row,
    "unpaired_preference": unpaired_preference_row,
    "preference": preference_row,
    "scored_completions": scored_completions_row,
    "rated_generations": scored_completions_row,
    "text": text_row,
    "prompt": prompt_row,
}


ANSWER_KEYS = ("completion", "chosen", "rejected", "label")


def is_prompt_only(row: Row) -> bool:
    """A `prompt` row: a prompt without an answer (GRPO samples one), not the prompt of a pair or completion."""
    return "prompt" in row and not any(key in row for key in ANSWER_KEYS)


def as_conversation(row: Row) -> Row:
    """A prompt-completion row as one conversation, a prompt-only row's text prompt as a user turn; conversational
    rows pass through."""
    if "messages" in row:
        return row
    if is_prompt_only(row):  # turns the model answers
        turns = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        return {**row, "prompt": turns}
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str):
        return {"messages": [{"role": "user", "content": prompt},
                             {"role": "assistant", "content": completion}]}
    conversation: Row = {"messages": [*prompt, *completion]}
    if "tools" in row:
        conversation["tools"] = row["tools"]
    return conversation


def row_place(place: Callable[[int], str | None] | None, index: int) -> str:
    """Where the index-th row is, as a person finds it: its file and line (`place`), else `row N`."""
    return (place and place(index)) or f"row {index + 1}"


MIN_REPEATED_PROMPT_CHARS = 12  # shorter prompts ("Hi") may open an answer by chance


def preference_warnings(rows: list[Row], place: Callable[[int], str | None] | None = None) -> list[str]:
    """What rows with a prompt and answers (pairs, KTO's labelled rows, prompt-completion rows) hold that trains
    wrong without failing: answers that start by repeating their prompt (a transcript cut in the wrong place), and
    KTO rows all of one label. `place`: a row's index to its file and line."""
    warnings = []
    repeating = [index for index, row in enumerate(rows) if answers_repeat_prompt(row)]
    if repeating:
        where = row_place(place, repeating[0])
        warnings.append(f"{len(repeating)} of {len(rows)} rows start every answer with their prompt's "
                        f"text (the first: {where}): training would teach the model to repeat the question before "
                        "answering. Remove the prompt from the answers (converting whole transcripts often leaves "
                        "it there); a pair without a prompt column may give chosen and rejected as whole "
                        "conversations instead.")
    labels = [row["label"] for row in rows if "label" in row]
    if labels and len(labels) == len(rows) and len(set(labels)) == 1:
        kind, other = ("desirable (true)", "undesirable (false)") if labels[0] else ("undesirable (false)",
                                                                                     "desirable (true)")
        warnings.append(f"All {len(labels)} KTO rows are labelled {kind}: with no {other} answer, KTO has nothing "
                        "to weigh them against (Ethayarajh et al. 2024 train on both kinds, at most 1:4). Add rows "
                        f"labelled {other.split(' ')[0]}, or train the answers with method.kind sft.")
    return warnings


# Words in a column's name that say it judges the row's answer (a feedback log's rating or thumbs)
FEEDBACK_WORDS = frozenset({"rating", "ratings", "rated", "thumb", "thumbs", "feedback", "score", "scores", "vote",
                            "votes", "upvote", "upvotes", "liked", "like", "helpful", "reward", "accepted", "approved",
                            "good"})
FEEDBACK_VALUES_SHOWN = 4


@dataclass
class FeedbackColumn:
    """A left-out column that judges each answer: its first values as written (one more than FEEDBACK_VALUES_SHOWN
    where there are more) and whether every value reads as KTO's label (`label_value`)."""

    values: list[str]
    labels: bool


def feedback_columns(records: list[Any], unused: list[str]) -> dict[str, FeedbackColumn]:
    """The left-out columns (`unused`) whose name says they judge each answer (FEEDBACK_WORDS: rating, thumbs_up,
    user_score, ...) and whose values differ between rows."""
    found: dict[str, FeedbackColumn] = {}
    for column in unused:
        if not FEEDBACK_WORDS & set(re.split(r"[^a-z0-9]+", column.lower())):
            continue
        raw = [record[column] for record in records if isinstance(record, dict) and column in record]
        values = list(dict.fromkeys(short_repr(value) for value in raw))
        if len(values) > 1:
            found[column] = FeedbackColumn(values[:FEEDBACK_VALUES_SHOWN + 1], all(map(reads_as_label, raw)))
    return found


def reads_as_label(value: Any) -> bool:
    try:
        label_value(value)
    except RowProblem:
        return False
    return True


def feedback_warnings(columns: dict[str, FeedbackColumn], layout: str) -> list[str]:
    """For answers that train with supervised fine-tuning (`layout`: the file's layout): each feedback column
    (`feedback_columns`) left out, with what SFT does to the answers it judged bad and how to learn from it: KTO,
    through data.columns where the values read as its label, else after writing them as true/false."""
    warnings = []
    for column, found in columns.items():
        if layout == "prompt_completion" and found.labels:  # KTO's rows are prompt, completion and label
            kto = (f"train with KTO (`--set method.kind=kto --set data.columns.{column}=label`: its values read as "
                   "desirable/undesirable), ")
        else:
            kto = ("give the rows as prompt, completion and a true/false label (true where the answer is good) "
                   "for KTO (method.kind kto), ")
        warnings.append(f"column {column!r} is left out, and its values ({shown_values(found.values)}) look like a "
                        "judgement of each answer: supervised fine-tuning trains every answer, the ones judged bad "
                        f"too. To learn from it, {kto}or keep only the answers judged good.")
    return warnings


def shown_values(values: list[str]) -> str:
    return ", ".join(values[:FEEDBACK_VALUES_SHOWN]) + (", ..." if len(values) > FEEDBACK_VALUES_SHOWN else "")


def answers_repeat_prompt(row: Row) -> bool:
    """Every answer of the row (chosen and rejected, or KTO's completion) begins with the prompt's last user text."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        prompt = next((turn.get("content") for turn in reversed(prompt) if turn.get("role") == "user"), None)
    if not isinstance(prompt, str) or len(prompt.strip()) < MIN_REPEATED_PROMPT_CHARS:
        return False
    answers = [row[key] for key in ("chosen", "rejected", "completion") if key in row]
    texts = [answer if isinstance(answer, str) else next((turn.get("content") or "" for turn in answer), "")
             for answer in answers]
    return bool(texts) and all(text.lstrip().startswith(prompt.strip()) for text in texts)


def tool_warnings(rows: list[Row], place: Callable[[int], str | None] | None = None) -> list[str]:
    """Conversations that call tools without offering any (no `tools` in the row): trained so, the model learns to
    call functions whose schemas its prompt never shows, and at inference the schemas a user sends are text it did
    not learn to read. `place`: a row's index to its file and line."""
    warnings = []
    offering_none = [index for index, row in enumerate(rows) if not row.get("tools")
                     and any(turn.get("tool_calls") for turn in row.get("messages") or [])]
    if offering_none:
        where = row_place(place, offering_none[0])
        warnings.append(f"{len(offering_none)} of {len(rows)} rows call tools but offer none (no 'tools' schemas; the "
                        f"first: {where}): the model learns to call functions it is never shown. Give each row the "
                        "'tools' it may call (the same schemas a request sends at inference).")
    off_schema = [(index, found) for index, row in enumerate(rows) for found in calls_off_schema(row)]
    if off_schema:
        index, found = off_schema[0]
        where = row_place(place, index)
        warnings.append(f"{len(off_schema)} tool call(s) do not fit their tool's schema (the first: {where}, {found}): "
                        "the model learns arguments the tool would reject. Correct the arguments or the schema.")
    return warnings


def calls_off_schema(row: Row) -> list[str]:
    """Each call of a conversation whose arguments lack a parameter its tool's schema requires, or give one the
    schema does not declare (where it declares `properties` and does not allow others), said in a phrase."""
    schemas = {schema["function"]["name"]: schema["function"].get("parameters") or {}
               for schema in row.get("tools") or [] if isinstance(schema.get("function"), dict)}
    found = []
    for turn in row.get("messages") or []:
        for call in turn.get("tool_calls") or []:
            name, arguments = call["function"]["name"], call["function"].get("arguments")
            parameters = schemas.get(name)
            if isinstance(arguments, str):
                arguments = json.loads(arguments) if arguments.strip() else {}
            if not isinstance(parameters, dict) or not isinstance(arguments, dict):
                continue
            declared = parameters.get("properties")
            missing = [key for key in parameters.get("required") or [] if key not in arguments]
            unknown = [key for key in arguments if isinstance(declared, dict) and key not in declared
                       and parameters.get("additionalProperties") is not True]
            if missing or unknown:
                parts = [*([f"lacks required {missing}"] if missing else []),
                         *([f"gives undeclared {unknown}"] if unknown else [])]
                found.append(f"{name}({json.dumps(arguments, ensure_ascii=False)[:60]}) " + " and ".join(parts))
    return found
