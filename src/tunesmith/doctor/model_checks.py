"""The model's tokenizer and chat template: what training on conversations needs of them.

Read from the folder already on this machine (doctor never downloads). The template is probed with
`tunesmith.data.contract.probe_template`, the check `train` runs before loading weights, so doctor and train
agree; here each verdict is a check of its own, with what tunesmith does about it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.contract import TemplateContract, probe_template
from tunesmith.doctor.report import Check

SECTION = "model"
GENERATION_MARKER = "{% generation %}"


def load_local_tokenizer(model_dir: Path) -> Any:
    """transformers' AutoTokenizer on a local folder, with no network (local_files_only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def model_checks(model_dir: Path, chat_template: str | None = None) -> list[Check]:
    """Tokenizer checks (chat template, EOS, pad), then the template contract's verdicts one by one; with
    `chat_template` (the recipe's model.chat_template) in place of the model's own, as training renders."""
    try:
        tokenizer = load_local_tokenizer(model_dir)
    except Exception as exc:  # a folder without tokenizer files, or files transformers cannot read
        return [Check(name="tokenizer", section=SECTION, status="fail",
                      detail=f"cannot load a tokenizer from {model_dir}: {type(exc).__name__}: {exc}",
                      fix="Put the tokenizer files (tokenizer.json, tokenizer_config.json) beside config.json.")]
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    checks = [template_check(tokenizer, model_dir, chat_template is not None), eos_check(tokenizer),
              pad_check(tokenizer)]
    if tokenizer.chat_template and tokenizer.eos_token is not None:
        checks += contract_checks(probe_template(tokenizer))
        checks.append(marker_check(tokenizer))
    return checks


def template_check(tokenizer: Any, model_dir: Path, from_recipe: bool = False) -> Check:
    """A template is there (the model's own, or the recipe's model.chat_template); none is a warning, not a failure:
    raw text trains without one, and conversations in the data are refused by the recipe's template-fit check."""
    if tokenizer.chat_template:
        return Check(name="chat template", section=SECTION, status="pass",
                     detail="model.chat_template of the recipe" if from_recipe else "present")
    return Check(name="chat template", section=SECTION, status="warn",
                 detail=f"the tokenizer in {model_dir} has no chat template (a base model): raw text (method.kind: "
                        "cpt) trains, conversations cannot be rendered",
                 fix="For conversations, set model.chat_template: chatml (or a .jinja file), or use the model's "
                     "instruct variant.")


def eos_check(tokenizer: Any) -> Check:
    if tokenizer.eos_token is None:
        return Check(name="EOS token", section=SECTION, status="fail", detail="the tokenizer names no EOS token",
                     fix="Set eos_token in tokenizer_config.json to the token that ends an assistant turn.")
    return Check(name="EOS token", section=SECTION, status="pass", detail=repr(tokenizer.eos_token))


def pad_check(tokenizer: Any) -> Check:
    """pad == EOS is handled: tunesmith builds labels from assistant spans, never by masking the pad id."""
    if tokenizer.pad_token is None:
        return Check(name="pad token", section=SECTION, status="pass", detail="none; tunesmith pads with EOS and "
                     "builds labels from the template's assistant spans, so the EOS after each answer keeps its loss")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        return Check(name="pad token", section=SECTION, status="pass", detail=f"pad == EOS ({tokenizer.eos_token!r}); "
                     "handled: tunesmith masks labels by the template's assistant spans, not by pad id, so the EOS "
                     "after each answer is still trained (tools that mask by pad id would hide it)")
    return Check(name="pad token", section=SECTION, status="pass", detail=f"{tokenizer.pad_token!r}, distinct from EOS")


def contract_checks(contract: TemplateContract) -> list[Check]:
    """The probe verdicts; problems that depend on the data (system turns, tools) are judged per recipe."""
    if contract.template_error:
        return [Check(name="template renders", section=SECTION, status="fail",
                      detail=f"fails on a plain user/assistant exchange: {contract.template_error}",
                      fix="Fix the template (tokenizer_config.json chat_template or chat_template.jinja), or use "
                          "another model.")]
    return [eos_after_answer_check(contract), generation_prompt_check(contract), system_role_check(contract),
            turns_check(contract), tools_check(contract)]


def eos_after_answer_check(contract: TemplateContract) -> Check:
    if contract.eos_after_assistant:
        return Check(name="EOS after assistant turns", section=SECTION, status="pass",
                     detail="each answer's trained tokens end with EOS, so the model learns to stop")
    return Check(name="EOS after assistant turns", section=SECTION, status="warn",
                 detail="the template puts no EOS token in the assistant turn: the model will not learn to stop",
                 fix="Check the template and the tokenizer's eos_token (the token that ends an assistant turn).")


def generation_prompt_check(contract: TemplateContract) -> Check:
    verdict = contract.generation_prompt
    if verdict == "matches":
        return Check(name="generation prompt", section=SECTION, status="pass",
                     detail="add_generation_prompt renders exactly what precedes every trained answer")
    if verdict == "missing":
        return Check(name="generation prompt", section=SECTION, status="warn", detail="add_generation_prompt adds "
                     "nothing, so at inference the model is prompted without the header that precedes its answers",
                     fix="Add an add_generation_prompt branch to the template that writes the assistant header.")
    return Check(name="generation prompt", section=SECTION, status="fail", detail="the generation prompt is not a "
                 "prefix of the trained answer: at inference the model sees text it never saw before its answers",
                 fix="Fix the template's add_generation_prompt branch.")


def system_role_check(contract: TemplateContract) -> Check:
    if contract.system_role == "supported":
        return Check(name="system role", section=SECTION, status="pass", detail="rendered")
    how = "refuses (raises on)" if contract.system_role == "refused" else "silently drops"
    return Check(name="system role", section=SECTION, status="warn", detail=f"the template {how} system turns",
                 fix="For data with system turns set data.system_fallback: merge (folds them into the first user "
                     "turn); `doctor --recipe` says whether your data has any.")


def turns_check(contract: TemplateContract) -> Check:
    if contract.assistant_turns == "identifiable":
        return Check(name="assistant turns", section=SECTION, status="pass",
                     detail="prefix-stable: tunesmith finds each answer's tokens for the loss mask")
    return Check(name="assistant turns", section=SECTION, status="fail", detail="not prefix-stable: rendering the "
                 "first turns is not a prefix of the whole conversation, so the loss mask cannot find the answers",
                 fix="Use a template that renders turns independently (ChatML, Llama-3 and most others do).")


def tools_check(contract: TemplateContract) -> Check:
    if contract.tools == "supported":
        return Check(name="tools", section=SECTION, status="pass", detail="tool schemas and tool calls are rendered")
    return Check(name="tools", section=SECTION, status="pass", detail="the template cannot express tools; only data "
                 "with tool calls needs it (data.tool_format: hermes writes them as <tool_call> blocks instead)")


def marker_check(tokenizer: Any) -> Check:
    """`{% generation %}` marks assistant text for transformers' return_assistant_tokens_mask; tunesmith does
    not need it: it finds each answer by rendering the turns before it (data/template.py assistant_spans)."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(tokenizer.chat_template)
    if GENERATION_MARKER.replace(" ", "") in template.replace(" ", "").replace("-", ""):
        detail = "the template marks assistant turns with {% generation %}; tunesmith locates answers by prefix " \
                 "rendering either way"
    else:
        detail = "no {% generation %} markers (TRL's assistant_only_loss needs them); tunesmith does not: it " \
                 "locates each answer by rendering the turns before it"
    return Check(name="assistant masks", section=SECTION, status="pass", detail=detail)
