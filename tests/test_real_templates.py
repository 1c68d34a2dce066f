"""Real chat templates, as the models ship them: TRL bundles copies of ~40 (trl/chat_templates/*.jinja, with training
variants of those that are not prefix-stable). Every text template there either trains a multi-turn, a system and a
tool-calling conversation exactly right (each answer trained, nothing else, prompted at inference as it was trained)
or is refused before training with the fix; none trains wrong without a word.

The tokenizer is the tests' tiny one: the templates' own special tokens read as text, which changes no rendering.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trl
from transformers import AutoTokenizer

from tests.test_input_contract import SYSTEM_ROW, TOOL_ROW, loss_text
from tunesmith.card import template_lines
from tunesmith.data.contract import check_template_contract, probe_template
from tunesmith.data.template import IGNORE_INDEX, encode_sequence, training_template
from tunesmith.errors import DataError

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
# Templates of vision models: their content is a list of image and text blocks, not text.
VISION = ("idefics3", "llava_next", "smolvlm", "qwen2_5_vl", "qwen3_vl", "lfm2_2_5_vl")
MODEL_TEMPLATES = sorted(path.stem for path in TEMPLATES.glob("*.jinja")
                         if not path.stem.endswith("_training") and path.stem not in VISION)
MULTI_TURN_ROW = {"messages": [
    {"role": "user", "content": "Price of the red mug?"},
    {"role": "assistant", "content": "The red mug is 12 euros."},
    {"role": "user", "content": "And two of them?"},
    {"role": "assistant", "content": "Two red mugs are 24 euros."}]}


@pytest.fixture
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


CLOSING_CHARS = 40  # per answer, besides its text: the end-of-turn tokens, an empty <think> block, a channel header


def answers_trained_alone(tokenizer, row) -> None:
    """Each answer's text is in the trained tokens; no user turn's text and no tool result is; and what is trained
    besides the answers is at most CLOSING_CHARS per answer (the longest measured: Cohere 2's
    `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>`, 37), so no turn header or earlier turn trains with them."""
    trained = loss_text(tokenizer, encode_sequence(tokenizer, row["messages"], 2048, row.get("tools")))
    rest, answers = trained, 0
    for message in row["messages"]:
        if message["role"] == "assistant" and message["content"]:
            assert message["content"] in trained
            rest, answers = rest.replace(message["content"], "", 1), answers + 1
        elif message["role"] in ("user", "tool", "system"):
            assert message["content"] not in trained
    if answers and not row.get("tools"):  # a tool call's trained text is its call, rendered by the template
        assert len(rest) <= CLOSING_CHARS * answers, rest


def prompted_as_trained(tokenizer, row) -> None:
    """The model's OWN template's generation prompt (what llama.cpp, Ollama and transformers serve it with) is the
    text training put before the answer, token for token."""
    encoded = encode_sequence(tokenizer, row["messages"], 2048, row.get("tools"))
    first_trained = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    first_answer = next(i for i, message in enumerate(row["messages"]) if message["role"] == "assistant")
    prompt = tokenizer.apply_chat_template(row["messages"][:first_answer], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(encoded.input_ids[:first_trained]) == prompt


# What each template trains of a multi-turn, a system and a tool-calling row (the rest refused, with the reason below).
# Refusals by kind: no system role (Gemma 1/2), no tool rendering (Llama 3.0, Phi-3, Gemma 3, Cohere, LFM2 v1), a
# template that fails on the tool row's schema without a description (gpt-oss, Muse Glimmer), not prefix-stable for
# several answers (Nemotron 3, whose single-answer rows train), and DeepSeek-V3's generation prompt (everything).
EXPECTED_TRAINED = {
    "cohere": {"multi", "system"}, "cohere2": {"multi", "system"}, "deepseek_r1_distill": {"multi", "system"},
    "deepseekv3": set(), "diffusion_gemma": {"multi", "system", "tool"}, "gemma": {"multi"},
    "gemma3": {"multi", "system"}, "gemma4": {"multi", "system", "tool"}, "gemma4_v2": {"multi", "system", "tool"},
    "gemma4_v3": {"multi", "system", "tool"}, "gemma4_v4": {"multi", "system", "tool"},
    "gemma4_v5": {"multi", "system", "tool"}, "glm4moe": {"multi", "system", "tool"}, "gptoss": {"multi", "system"},
    "lfm2": {"multi", "system"}, "lfm2_2_5": {"multi", "system", "tool"}, "lfm2_2_5_v2": {"multi", "system", "tool"},
    "lfm2_v2": {"multi", "system", "tool"}, "llama3": {"multi", "system"}, "llama3_1": {"multi", "system", "tool"},
    "llama3_2": {"multi", "system", "tool"}, "muse_glimmer": {"multi", "system"},
    "nemotron_3_5_lightning": {"system"}, "nemotron_3_nano": {"system"}, "nemotron_3_super": {"system"},
    "nemotron_3_ultra": {"system"}, "phi3": {"multi", "system"}, "phi3_5": {"multi", "system"},
    "qwen2_5": {"multi", "system", "tool"}, "qwen3": {"multi", "system", "tool"},
    "qwen3_5_nothink": {"multi", "system", "tool"}, "qwen3_5_think": {"multi", "system", "tool"},
    "qwen3_6": {"multi", "system", "tool"}, "qwen3_8": {"multi", "system", "tool"},
    "qwen3_instruct_2507": {"multi", "system", "tool"},
}
REFUSAL_REASONS = {"multi": ("not prefix-stable", "generation prompt"),
                   "system": ("system role", "generation prompt"),
                   "tool": ("cannot express tools", "fails on the row", "not prefix-stable", "generation prompt")}


@pytest.mark.parametrize("name", MODEL_TEMPLATES)
def test_a_real_template_trains_every_answer_right_or_is_refused(tokenizer, name):
    """Row by row: the contract's refusal naming its reason, or an encoding error that shows the row (both before
    any weights load), or every answer trained and nothing else; which of the three rows trains is pinned per
    template (a TRL release that adds a template fails here until its outcome is read and pinned)."""
    assert name in EXPECTED_TRAINED, f"TRL ships a template not pinned here: {name}"
    tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    trained = set()
    for label, row in (("multi", MULTI_TURN_ROW), ("system", SYSTEM_ROW), ("tool", TOOL_ROW)):
        try:
            check_template_contract(tokenizer, [row], name)
            encode_sequence(tokenizer, row["messages"], 2048, row.get("tools"))
        except DataError as refused:
            assert "chat template" in refused.message and refused.message.count("\n") < 12
            assert any(reason in refused.message for reason in REFUSAL_REASONS[label]), refused.message
            continue
        answers_trained_alone(tokenizer, row)
        if label != "tool":
            prompted_as_trained(tokenizer, row)
        trained.add(label)
    assert trained == EXPECTED_TRAINED[name]


@pytest.mark.parametrize("name", ["qwen3", "qwen3_5_think", "qwen3_5_nothink", "qwen3_6"])
def test_qwen3_templates_train_multi_turn_and_tool_rows_through_trls_training_variant(tokenizer, name):
    """Qwen3's template drops the <think> block from answers before the last question, so a conversation's first
    answer renders one way alone and another once a question follows: tunesmith refused every multi-turn and tool row
    of the most used open models. They now render through TRL's training variant, and say so."""
    tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    probe = probe_template(tokenizer)
    assert probe.training_template == f"trl/chat_templates/{name}_training.jinja"
    assert (probe.assistant_turns, probe.tools) == ("identifiable", "supported")
    assert training_template(tokenizer) == (TEMPLATES / f"{name}_training.jinja").read_text(encoding="utf-8")
    record = check_template_contract(tokenizer, [MULTI_TURN_ROW, TOOL_ROW], "Qwen/Qwen3-0.6B")
    assert any("qwen" in warning and "not prefix-stable" in warning for warning in record["warnings"])
    assert any(f"rendered for training with trl/chat_templates/{name}_training.jinja" in line
               for line in template_lines(record))  # the model card says it
    for row in (MULTI_TURN_ROW, TOOL_ROW):
        answers_trained_alone(tokenizer, row)
    prompted_as_trained(tokenizer, MULTI_TURN_ROW)
    single = {"messages": MULTI_TURN_ROW["messages"][:2]}  # one answer per row renders alike: nothing to say
    warnings = check_template_contract(tokenizer, [single], "Qwen/Qwen3-0.6B")["warnings"]
    assert all("not prefix-stable" not in warning for warning in warnings)


def test_a_prefix_stable_template_is_rendered_as_the_model_ships_it(tokenizer):
    """TRL's variants of templates that were already prefix-stable (Qwen2.5, Llama 3) only add loss-mask markers:
    tunesmith keeps the model's own."""
    for name in ("qwen2_5", "llama3_1"):
        tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
        assert training_template(tokenizer) is None and probe_template(tokenizer).training_template is None


@pytest.mark.parametrize("name", ["phi3", "phi3_5", "gptoss"])
def test_a_template_that_closes_only_the_last_turn_trains_every_answer(tokenizer, name):
    """Phi-3 writes eos_token after a finished conversation's last turn only, gpt-oss ends the last answer with
    <|return|> and earlier ones with <|end|>: not prefix-stable as such, but every answer is found once that closing
    is allowed for, and the last answer trains with it (the token that stops generation)."""
    tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    assert probe_template(tokenizer).assistant_turns == "identifiable"
    check_template_contract(tokenizer, [MULTI_TURN_ROW], name)
    answers_trained_alone(tokenizer, MULTI_TURN_ROW)
    encoded = encode_sequence(tokenizer, MULTI_TURN_ROW["messages"], 2048)
    closing = "<|return|>" if name == "gptoss" else tokenizer.eos_token
    assert loss_text(tokenizer, encoded).endswith(closing)
    prompted_as_trained(tokenizer, MULTI_TURN_ROW)


def test_a_reasoning_template_that_prompts_a_think_block_it_never_trains_is_refused_showing_both(tokenizer):
    """DeepSeek-V3's template (and TRL's variant of it) prompts with an open <think> and cuts an answer up to
    </think>, so no answer can start as the prompt does (DeepSeek-R1's trains: tests/test_reasoning.py)."""
    tokenizer.chat_template = (TEMPLATES / "deepseekv3.jinja").read_text(encoding="utf-8")
    with pytest.raises(DataError) as refused:
        check_template_contract(tokenizer, [MULTI_TURN_ROW], "deepseekv3")
    assert "generation prompt that is not a prefix" in refused.value.message
    assert "<think>\\n'" in refused.value.message and "where training renders" in refused.value.message


REASONING_ROW = {"messages": [{"role": "user", "content": "Price of two red mugs?"},
                              {"role": "assistant", "content": "24 euros.",
                               "reasoning_content": "One red mug is 12 euros, so two are 24."}]}


# DeepSeek-V3 prompts an open <think> its answers never start with; Qwen3.5's no-think variant prompts a closed empty
# block where the row's reasoning would go
REASONING_REFUSED = {"deepseekv3", "qwen3_5_nothink"}


@pytest.mark.parametrize("name", MODEL_TEMPLATES)
def test_a_real_template_trains_a_rows_reasoning_before_its_answer_or_is_refused(tokenizer, name):
    """Every template either trains the reasoning and then the answer, once each, prompted at inference as it
    trained (tests/test_reasoning.py: how), or refuses the row before training."""
    tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    try:
        check_template_contract(tokenizer, [REASONING_ROW], name)
        encoded = encode_sequence(tokenizer, REASONING_ROW["messages"], 2048)
    except DataError as refused:
        assert name in REASONING_REFUSED, refused.message  # every other template trains reasoning
        assert "generation prompt" in refused.message
        return
    assert name not in REASONING_REFUSED
    trained = loss_text(tokenizer, encoded)
    reasoning, answer = REASONING_ROW["messages"][1]["reasoning_content"], REASONING_ROW["messages"][1]["content"]
    assert trained.count(reasoning) == 1 and trained.index(reasoning) < trained.index(answer), trained
    assert "Price of two red mugs?" not in trained
    prompted_as_trained(tokenizer, REASONING_ROW)
