"""The chat-template contract: what a tokenizer's template must do for training on a dataset to be right.

One check, run by `data inspect`, `data preview`, `train` (before any weights load) and recorded in the run
(data.json, the model card) for `export`. It renders a few probe conversations and reads the results:

- system role: supported, silently dropped, or refused (Gemma's template raises on it);
- generation prompt: present, and a prefix of what training renders before each answer (else the model
  is prompted at inference with text it never saw before its answers);
- EOS inside each assistant turn's trained tokens (else the model never learns to stop);
- assistant turns identifiable (the template is prefix-stable, so the loss mask can find them);
- tools: whether `tools` and `tool_calls` reach the rendered text.
- reasoning: how an answer's reasoning reaches the rendered text (a field the template reads, a <think> block
  in the answer, or not at all), and whether the generation prompt opens a <think> block answers must close.

What the data needs of the template (system turns, tool calls) decides which findings refuse a run; each
refusal names the model and the recipe key that fixes it (`data.system_fallback`, `data.tool_format`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from tunesmith.data.template import (
    ANSWER_PROBE,
    PROBE_TOOL_TURNS,
    PROBE_TOOLS,
    PROBE_TWO_EXCHANGES,
    TOOL_NAME,
    TOOL_VALUE,
    USER_PROBE,
    assistant_spans,
    reasoning_rendering,
    render,
    training_variant,
)
from tunesmith.errors import DataError

SYSTEM_PROBE = "tunesmith-system-probe-7431"


class TemplateContract(BaseModel):
    """What the probes found; `template_error` is set when even a plain user/assistant exchange fails."""

    system_role: Literal["supported", "dropped", "refused"]
    generation_prompt: Literal["matches", "missing", "differs"]
    eos_after_assistant: bool
    assistant_turns: Literal["identifiable", "not_prefix_stable"]
    tools: Literal["supported", "unsupported"]
    template_error: str | None = None
    # the training variant rows are rendered with in place of the model's own (data.template.training_template)
    training_template: str | None = None
    # where the generation prompt and the trained conversation part: (the prompt's text, the trained text) from there
    prompt_parts_at: tuple[str, str] | None = None
    # how an answer's reasoning reaches the rendered text (data.template.ReasoningRendering): a field the template
    # reads, a <think> block in the answer's text, or not at all; and whether answers without reasoning are trained
    # with an empty <think> block because the generation prompt opens one
    reasoning: Literal["fields", "inline", "dropped"] = "inline"
    empty_reasoning_block: bool = False


NO_TEMPLATE = "no chat template"  # TemplateContract.template_error of a tokenizer without one


@dataclass
class DataNeeds:
    """What a dataset asks of the template."""

    system_turns: int = 0  # rows with a system turn
    tool_rows: int = 0  # rows with tools, tool calls or tool results
    multi_answer_rows: int = 0  # conversations with more than one assistant turn (a tool call is one)
    reasoning_rows: int = 0  # rows with an answer that carries reasoning
    other_shape_rows: int = 0  # rows that are not one conversation (preference pairs, prompt/completion)


def probe_template(tokenizer: Any) -> TemplateContract:
    """Render the probe conversations through `tokenizer`'s chat template and classify what happened."""
    exchange = [{"role": "user", "content": USER_PROBE}, {"role": "assistant", "content": ANSWER_PROBE}]
    if not getattr(tokenizer, "chat_template", None):
        return TemplateContract(system_role="refused", generation_prompt="missing", eos_after_assistant=False,
                                assistant_turns="not_prefix_stable", tools="unsupported", template_error=NO_TEMPLATE)
    try:
        prompt = render(tokenizer, exchange[:1], generation_prompt=True)
        plain = render(tokenizer, exchange[:1])
        through = render(tokenizer, exchange)
    except Exception as exc:  # a template raises anything (jinja's raise_exception, missing variables)
        return TemplateContract(system_role="refused", generation_prompt="missing", eos_after_assistant=False,
                                assistant_turns="not_prefix_stable", tools="unsupported",
                                template_error=f"{type(exc).__name__}: {exc}" + (
                                    f" at line {exc.lineno} of the template" if getattr(exc, "lineno", None) else ""))
    from tunesmith.models.loading import stop_token_ids  # imports torch: only once a template is probed

    # where the generation prompt is not the trained prefix, that one finding is the problem: the answer is read
    # after the user turn instead, and prefix stability without generation prompts, so none is reported twice
    prompt_found = generation_prompt(prompt, plain, through)
    start = len(prompt) if through.startswith(prompt) else len(plain) if through.startswith(plain) else len(through)
    stops = stop_token_ids(tokenizer)  # the tokenizer's EOS and the generation config's (Llama-3, Gemma)
    answer_ids = tokenizer(through[start:], add_special_tokens=False)["input_ids"]
    stable = prefix_stable(tokenizer) if prompt_found != "differs" else renders_prefix_stable(tokenizer)
    variant = training_variant(tokenizer)
    reasoning = reasoning_rendering(tokenizer, variant and variant[0])
    return TemplateContract(
        system_role=system_role(tokenizer),
        generation_prompt=prompt_found,
        eos_after_assistant=any(token in stops for token in answer_ids),
        assistant_turns="identifiable" if stable else "not_prefix_stable",
        tools="supported" if renders_tool_calls(tokenizer) else "unsupported",
        training_template=variant and variant[1],
        prompt_parts_at=parting(prompt, through) if prompt_found == "differs" else None,
        reasoning=reasoning.style,
        empty_reasoning_block=reasoning.empty_block,
    )


def parting(prompt: str, through: str) -> tuple[str, str]:
    """The generation prompt's text and the trained conversation's from the first character where they differ (at
    most 40 characters of each, with the 20 before it): what a user compares to see why they do not match."""
    at = next((i for i, (a, b) in enumerate(zip(prompt, through, strict=False)) if a != b),
              min(len(prompt), len(through)))
    start = max(0, at - 20)
    return prompt[start:at + 40], through[start:at + 40]


def generation_prompt(prompt: str, plain: str, through: str) -> Literal["matches", "missing", "differs"]:
    """`differs`: the prompt is not a prefix of the trained text. `missing`: add_generation_prompt adds nothing
    although the trained answer starts with a header (`<|im_start|>assistant`) the model would then learn to
    write itself. Templates whose answer directly follows the prompt (Mistral's `[/INST]`) match."""
    if not through.startswith(prompt):
        return "differs"
    header_trained = not through[len(prompt):].lstrip().startswith(ANSWER_PROBE)
    return "missing" if prompt == plain and header_trained else "matches"


def system_role(tokenizer: Any) -> Literal["supported", "dropped", "refused"]:
    probe = [{"role": "system", "content": SYSTEM_PROBE}, {"role": "user", "content": USER_PROBE},
             {"role": "assistant", "content": ANSWER_PROBE}]
    try:
        text = render(tokenizer, probe)
    except Exception:  # templates raise anything (jinja's raise_exception) on roles they reject
        return "refused"
    return "supported" if SYSTEM_PROBE in text else "dropped"


def prefix_stable(tokenizer: Any) -> bool:
    """Both answers of a two-exchange conversation are found by the loss mask (`assistant_spans`)."""
    try:
        text, spans = assistant_spans(tokenizer, PROBE_TWO_EXCHANGES)
    except Exception:  # DataError (not prefix-stable) or a template that raises on a second exchange
        return False
    return [ANSWER_PROBE in text[start:end] for start, end in spans] == [True, True]


def renders_prefix_stable(tokenizer: Any) -> bool:
    """Each rendering of the first turns (no generation prompt) is a prefix of the next one's: prefix stability
    judged apart from the generation prompt, for a template whose generation prompt differs."""
    try:
        texts = [render(tokenizer, PROBE_TWO_EXCHANGES[:count]) for count in range(1, 5)]
    except Exception:  # a template that raises on a second exchange
        return False
    return all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))


def renders_tool_calls(tokenizer: Any) -> bool:
    """The tool-calling answer's trained text holds the function name and argument; the schema is rendered."""
    try:
        text, spans = assistant_spans(tokenizer, PROBE_TOOL_TURNS, PROBE_TOOLS)
    except Exception:  # a template that raises on tool turns cannot express them
        return False
    start, end = spans[0]
    return TOOL_NAME in text[start:end] and TOOL_VALUE in text[start:end] and TOOL_NAME in text[:start]


def data_needs(rows: list[dict[str, Any]]) -> DataNeeds:
    """Count the rows with system turns and with tools, in any canonical shape (conversational parts only)."""
    needs = DataNeeds()
    for row in rows:
        turns = [turn for key in ("messages", "prompt", "chosen", "rejected", "completion")
                 if isinstance(row.get(key), list) for turn in row[key]]
        needs.system_turns += any(turn.get("role") == "system" for turn in turns)
        needs.tool_rows += bool(row.get("tools")) or any(
            turn.get("role") == "tool" or turn.get("tool_calls") for turn in turns)
        needs.multi_answer_rows += sum(turn.get("role") == "assistant" for turn in row.get("messages") or []) > 1
        needs.reasoning_rows += any(turn.get("reasoning_content") for turn in turns)
        needs.other_shape_rows += not isinstance(row.get("messages"), list)
    return needs


@dataclass
class Findings:
    """Problems refuse a run (each with its fix); warnings are printed and recorded."""

    problems: list[str]
    warnings: list[str]


def contract_findings(contract: TemplateContract, needs: DataNeeds, model: str,
                      template_key: str | None = None) -> Findings:
    """Judge the contract against the data's needs; every problem says which key or model fixes it. `template_key`:
    the recipe's model.chat_template, when the template is the user's own: then an answer with no token generation
    stops at, or no generation prompt, is a problem to fix in it, not a warning about the model's files."""
    problems, warnings = [], []
    if contract.template_error == NO_TEMPLATE:
        problems.append(f"{model} has no chat template (a base model), so conversations cannot be rendered. Set "
                        "model.chat_template: chatml (ChatML turns closed by the tokenizer's eos_token, so the tuned "
                        "model learns to stop) or a .jinja file of your own; raw text (method.kind: cpt) needs no "
                        "template.")
        return Findings(problems, warnings)
    from tunesmith.models.templates import template_label  # the models package imports torch: not at import time

    owner = (f"The template of model.chat_template ({template_label(template_key)!r})" if template_key
             else f"The chat template of {model}")
    if contract.template_error:
        fix = ("Fix that template" if template_key else
               "Fix the template (tokenizer_config.json chat_template), set model.chat_template,")
        problems.append(f"{owner} fails on a plain user/assistant exchange "
                        f"({contract.template_error}). {fix} or use another model.")
        return Findings(problems, warnings)
    if needs.system_turns and contract.system_role != "supported":
        verb = "refuses (raises on)" if contract.system_role == "refused" else "silently drops"
        problems.append(f"The chat template of {model} {verb} the system role, and {needs.system_turns} row(s) have "
                        "a system turn (or data.system_prompt adds one). Set data.system_fallback: merge to fold the "
                        "system text into the first user turn, or remove the system turns.")
    if needs.tool_rows and contract.tools != "supported":
        problems.append(f"The chat template of {model} cannot express tools: tool schemas or tool_calls do not reach "
                        f"the rendered text, and {needs.tool_rows} row(s) use tools (their tool-calling answers would "
                        "train as empty answers). Set data.tool_format: hermes to write tool calls as <tool_call> "
                        "JSON blocks in the answer text, or use a model whose template supports tools.")
    if contract.training_template and needs.multi_answer_rows:
        warnings.append(f"The chat template of {model} renders an earlier answer differently once later turns follow "
                        f"(it is not prefix-stable), and {needs.multi_answer_rows} row(s) have several answers (a tool "
                        f"call is one): they are rendered with {contract.training_template}, TRL's "
                        "training variant of it (every answer rendered as the last one is; the generation prompt is "
                        "the model's own). At inference the model's own template shows earlier answers as it "
                        "renders them.")
    if needs.reasoning_rows and contract.reasoning == "dropped":
        problems.append(f"{owner} drops an answer's reasoning (neither a reasoning_content, thinking or reasoning "
                        "field nor a <think> block in the answer reaches the rendered text), and "
                        f"{needs.reasoning_rows} row(s) carry reasoning: it would not be trained. Use a template that "
                        "renders it (model.chat_template: a .jinja file of your own, or chatml, which writes it as a "
                        "<think> block), or remove the reasoning from the rows.")
    if contract.assistant_turns != "identifiable" and (needs.multi_answer_rows or needs.other_shape_rows):
        # a conversation with one answer is found after its prompt whatever the template does to earlier turns
        # (encode_sequence checks each row before the model loads); pairs are rendered by TRL, which assumes more
        which = [*([f"{needs.multi_answer_rows} conversation(s) with several answers (a tool call is one): split "
                    "each into one row per answer (the turns before that answer, then the answer)"]
                   if needs.multi_answer_rows else []),
                 *([f"{needs.other_shape_rows} row(s) of prompt and completions (preference pairs, prompts), which "
                    "TRL renders as prompt then answer"] if needs.other_shape_rows else [])]
        problems.append(f"The chat template of {model} is not prefix-stable: rendering the first turns does not give "
                        "a prefix of the whole conversation, so the loss mask cannot find the answers of "
                        f"{' and of '.join(which)}. Or use a template that renders turns independently "
                        "(model.chat_template: chatml or a .jinja file).")
    if contract.generation_prompt == "missing":
        (problems if template_key else warnings).append(
            f"{owner} adds nothing for add_generation_prompt: at inference the model is "
            "prompted without the assistant header that precedes every trained answer"
            + (" (write it in an `{% if add_generation_prompt %}` branch at the end)." if template_key else "."))
    elif contract.generation_prompt == "differs":
        shown = ("" if not contract.prompt_parts_at else " (it prompts with {!r} where training renders {!r})".format(
            *contract.prompt_parts_at))
        problems.append(f"The chat template of {model} renders a generation prompt that is not a prefix of the trained "
                        f"answer{shown}: the model would be prompted at inference with text it never saw before its "
                        "answers. Reasoning models' templates do this when they open a <think> block for inference but "
                        "strip reasoning from the answers they render. Fix the template's add_generation_prompt branch "
                        "(the model folder's chat_template.jinja), or use the model's non-reasoning variant.")
    if not contract.eos_after_assistant and template_key:
        problems.append(f"{owner} ends an assistant turn with no token generation stops at (the "
                        "tokenizer's eos_token, or an eos_token_id of generation_config.json): the tuned model would "
                        "never learn to stop. End each assistant turn with {{ eos_token }} in it (chatml does).")
    elif not contract.eos_after_assistant:
        warnings.append(f"The chat template of {model} ends an assistant turn with no token generation stops at "
                        "(the tokenizer's eos_token, or an eos_token_id of generation_config.json); the model will not "
                        "learn to stop. Add the token that ends the template's turns (e.g. <end_of_turn>) to "
                        "generation_config.json's eos_token_id, or make it the tokenizer's eos_token.")
    return Findings(problems, warnings)


def judge_template(tokenizer: Any, rows: list[dict[str, Any]], model: str,
                   template_key: str | None = None) -> dict[str, Any]:
    """Probe the template and judge it against `rows` (`template_key`: the recipe's model.chat_template, where the
    template is the user's own): the probe results, `problems` and `warnings`, as inspect and preview report them and
    data.json records them."""
    contract, needs = probe_template(tokenizer), data_needs(rows)
    findings = contract_findings(contract, needs, model, template_key)
    return {**contract_record(contract, findings), "reasoning_rows": needs.reasoning_rows}


def check_template_contract(tokenizer: Any, rows: list[dict[str, Any]], model: str,
                            template_key: str | None = None) -> dict[str, Any]:
    """`judge_template`, refusing with every problem at once (what `train` runs before any weights load).

    Raises DataError naming the model and the recipe key that fixes each problem.
    """
    record = judge_template(tokenizer, rows, model, template_key)
    if record["problems"]:
        raise DataError("The chat template cannot train this data right:\n- " + "\n- ".join(record["problems"]))
    return record


def contract_record(contract: TemplateContract, findings: Findings) -> dict[str, Any]:
    return {**contract.model_dump(), "problems": findings.problems, "warnings": findings.warnings}
