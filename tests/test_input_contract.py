"""The input contract (issue 13): every input trains exactly right or is refused before training, with the fix.

Each broken sort of chat template is written here at least twice (as the real ones break: Gemma's refusal of
the system role, ChatML variants that drop it, templates that ignore tool calls, that are not prefix-stable,
whose generation prompt is not the trained prefix, or that put no EOS in the answer).
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from tests.conftest import CHATML
from tunesmith.config import DataSection
from tunesmith.data.contract import check_template_contract, data_needs, probe_template
from tunesmith.data.fallbacks import apply_fallbacks
from tunesmith.data.preview import preview_rows
from tunesmith.data.template import IGNORE_INDEX, encode_sequence, encode_split
from tunesmith.errors import DataError

TOOL_ROW = {
    "tools": [{"type": "function", "function": {"name": "get_stock", "parameters": {
        "type": "object", "properties": {"sku": {"type": "string"}}}}}],
    "messages": [
        {"role": "user", "content": "How many KB-100 do we have?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_stock", "arguments": "{\"sku\": \"KB-100\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"units\": 14}"},
        {"role": "assistant", "content": "We have 14 units."}]}
SYSTEM_ROW = {"messages": [{"role": "system", "content": "Answer in JSON."},
                           {"role": "user", "content": "two red mugs"},
                           {"role": "assistant", "content": '{"item": "mug", "qty": 2}'}]}
PLAIN_ROW = {"messages": SYSTEM_ROW["messages"][1:]}

# A ChatML template that renders tools the way Qwen2.5's does: schemas in the system turn, calls as
# <tool_call> blocks, tool results inside a user turn.
TOOLS_CHATML = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n"
    "{% endif %}# Tools\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools><|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}{% if m.role == 'system' %}{% elif m.role == 'assistant' %}<|im_start|>assistant\n"
    "{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>{\"name\": \"{{ c.function.name }}\", "
    "\"arguments\": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Gemma's shape: raises on a system turn, names the assistant "model".
GEMMA_LIKE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<|im_start|>' + role + '\n' + message['content'] | trim + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>model\n' }}{% endif %}")
# Llama-2 / Mistral-v1 shape: only user and assistant, anything else raises.
INST_ONLY = (
    "{% for m in messages %}{% if m.role == 'user' %}{{ '[INST] ' + m.content + ' [/INST]' }}"
    "{% elif m.role == 'assistant' %}{{ ' ' + m.content + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
DROPS_SYSTEM_IF = CHATML.replace("{{'<|im_start|>' + message['role']",
                                 "{% if message['role'] != 'system' %}{{'<|im_start|>' + message['role']").replace(
    "+ '\n'}}{% endfor %}", "+ '\n'}}{% endif %}{% endfor %}")
DROPS_SYSTEM_SLICE = (
    "{% set loop_messages = messages[1:] if messages[0]['role'] == 'system' else messages %}"
    "{% for message in loop_messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
NOT_PREFIX_STABLE_HISTORY = CHATML.replace(
    "+ message['content'] +", "+ ('[earlier] ' if message['role'] == 'assistant' and not loop.last else '') "
                              "+ message['content'] +")
NOT_PREFIX_STABLE_COUNT = "{{ 'turns: ' + messages|length|string + '\n' }}" + CHATML
PROMPT_DIFFERS_SPACE = CHATML.replace("{{ '<|im_start|>assistant\n' }}", "{{ '<|im_start|>assistant \n' }}")
PROMPT_DIFFERS_ROLE = CHATML.replace("{{ '<|im_start|>assistant\n' }}", "{{ '<|im_start|>model\n' }}")
NO_EOS_NEWLINE = CHATML.replace("message['content'] + '<|im_end|>' + '\n'",
                                "message['content'] + ('\n' if message['role'] == 'assistant' else '<|im_end|>\n')")
NO_EOS_DOUBLE = CHATML.replace("message['content'] + '<|im_end|>' + '\n'",
                               "message['content'] + ('\n\n' if message['role'] == 'assistant' else '<|im_end|>\n')")
NO_GENERATION_PROMPT = CHATML.replace("{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}", "")


@pytest.fixture
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def with_template(tokenizer, template):
    tokenizer.chat_template = template
    return tokenizer


def loss_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
                             if label != IGNORE_INDEX])


# --- tools -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("template", [CHATML, GEMMA_LIKE, INST_ONLY])
def test_templates_that_cannot_express_tools_are_refused_with_the_fallback(tokenizer, template):
    with_template(tokenizer, template)
    assert probe_template(tokenizer).tools == "unsupported"
    with pytest.raises(DataError) as caught:
        check_template_contract(tokenizer, [TOOL_ROW], "my-model")
    assert "my-model cannot express tools" in caught.value.message
    assert "data.tool_format: hermes" in caught.value.message


def test_a_template_that_drops_tool_calls_never_trains_an_empty_answer(tokenizer):
    """The per-row check behind the template probe: an empty rendered tool call is refused, not trained."""
    with pytest.raises(DataError, match=r"(?s)drops tool call .get_stock.*data.tool_format: hermes"):
        encode_sequence(tokenizer, TOOL_ROW["messages"], 512, TOOL_ROW["tools"])


def test_tools_reach_a_template_that_supports_them_and_every_call_is_trained(tokenizer):
    with_template(tokenizer, TOOLS_CHATML)
    assert probe_template(tokenizer).tools == "supported"
    check_template_contract(tokenizer, [TOOL_ROW], "qwen-like")
    encoded = encode_sequence(tokenizer, TOOL_ROW["messages"], 512, TOOL_ROW["tools"])
    text = tokenizer.decode(encoded.input_ids)
    assert '"name": "get_stock"' in text.split("<|im_start|>user")[0]  # the schema, in the system turn
    trained = loss_text(tokenizer, encoded)
    assert '<tool_call>{"name": "get_stock", "arguments": {"sku": "KB-100"}}</tool_call>' in trained
    assert "We have 14 units." in trained and "units\": 14" not in trained  # the tool result is context


@pytest.mark.parametrize("template", [CHATML, GEMMA_LIKE])
def test_hermes_fallback_writes_calls_as_json_text_that_trains(tokenizer, template):
    with_template(tokenizer, template)
    row = apply_fallbacks(TOOL_ROW, DataSection(train="x", tool_format="hermes", system_fallback="merge"))
    assert "tools" not in row and data_needs([row]).tool_rows == 0
    check_template_contract(tokenizer, [row], "plain-chatml")
    encoded = encode_sequence(tokenizer, row["messages"], 1024)
    trained = loss_text(tokenizer, encoded)
    assert '<tool_call>\n{"name": "get_stock", "arguments": {"sku": "KB-100"}}\n</tool_call>' in trained
    context = tokenizer.decode(encoded.input_ids)
    assert "<tools>" in context and "<tool_response>\n{\"units\": 14}\n</tool_response>" in context
    assert "<tool_response>" not in trained


# --- system role -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("template", "verdict"), [(GEMMA_LIKE, "refused"), (INST_ONLY, "refused"),
                                                   (DROPS_SYSTEM_IF, "dropped"), (DROPS_SYSTEM_SLICE, "dropped")])
def test_templates_without_a_system_role_refuse_system_rows_and_merge_fixes_them(tokenizer, template, verdict):
    with_template(tokenizer, template)
    assert probe_template(tokenizer).system_role == verdict
    with pytest.raises(DataError, match=r"data\.system_fallback: merge"):
        check_template_contract(tokenizer, [SYSTEM_ROW], "gemma-like")
    check_template_contract(tokenizer, [PLAIN_ROW], "gemma-like")  # rows without system turns are fine
    merged = apply_fallbacks(SYSTEM_ROW, DataSection(train="x", system_fallback="merge"))
    check_template_contract(tokenizer, [merged], "gemma-like")
    text = tokenizer.decode(encode_sequence(tokenizer, merged["messages"], 512).input_ids)
    assert "Answer in JSON.\n\ntwo red mugs" in text


def test_preview_reports_a_refusing_template_instead_of_crashing(tokenizer):
    with_template(tokenizer, GEMMA_LIKE)
    preview = preview_rows(tokenizer, [SYSTEM_ROW], max_length=256, model="gemma-like")
    assert any("refuses (raises on) the system role" in p for p in preview.problems)
    assert any("row 1 cannot be rendered" in p for p in preview.problems)


# --- prefix stability, generation prompt, EOS ------------------------------------------------------------

MULTI_ANSWER_ROW = {"messages": [*PLAIN_ROW["messages"], {"role": "user", "content": "And three?"},
                                  {"role": "assistant", "content": '{"item": "red mug", "qty": 3}'}]}


@pytest.mark.parametrize("template", [NOT_PREFIX_STABLE_HISTORY, NOT_PREFIX_STABLE_COUNT])
def test_templates_that_are_not_prefix_stable_are_refused_for_rows_with_several_answers(tokenizer, template):
    """Refused before training where an earlier answer cannot be found (several answers a row, or preference pairs);
    a row with one answer is found after its prompt (a template that rewrites earlier answers, Nemotron 3's, trains
    it), or refused for its generation prompt where even that prompt is not the answer's prefix."""
    with_template(tokenizer, template)
    assert probe_template(tokenizer).assistant_turns == "not_prefix_stable"
    with pytest.raises(DataError, match=r"not prefix-stable.*of 1 conversation\(s\) with several answers"):
        check_template_contract(tokenizer, [PLAIN_ROW, MULTI_ANSWER_ROW], "m")
    pair = {"prompt": PLAIN_ROW["messages"][:1], "chosen": PLAIN_ROW["messages"][1:],
            "rejected": [{"role": "assistant", "content": "no"}]}
    with pytest.raises(DataError, match="not prefix-stable"):
        check_template_contract(tokenizer, [pair], "m")
    if template == NOT_PREFIX_STABLE_COUNT:  # the turn count changes the prompt's first line: refused for that
        with pytest.raises(DataError, match="generation prompt that is not a prefix of the trained answer"):
            check_template_contract(tokenizer, [PLAIN_ROW], "m")
        return
    check_template_contract(tokenizer, [PLAIN_ROW], "m")
    encoded = encode_sequence(tokenizer, PLAIN_ROW["messages"], 512)
    answer = PLAIN_ROW["messages"][1]["content"]
    assert loss_text(tokenizer, encoded) == answer + "<|im_end|>\n"  # the answer and its end of turn, nothing else


@pytest.mark.parametrize("template", [PROMPT_DIFFERS_SPACE, PROMPT_DIFFERS_ROLE])
def test_a_generation_prompt_that_is_not_the_trained_prefix_is_refused(tokenizer, template):
    """Refused for that one reason: the template is prefix-stable and ends answers with EOS, so neither is said."""
    with_template(tokenizer, template)
    probe = probe_template(tokenizer)
    assert (probe.generation_prompt, probe.assistant_turns, probe.eos_after_assistant) == (
        "differs", "identifiable", True)
    with pytest.raises(DataError, match="generation prompt that is not a prefix") as caught:
        check_template_contract(tokenizer, [PLAIN_ROW], "m")
    assert "prefix-stable" not in caught.value.message and "stop" not in caught.value.message
    preview = preview_rows(tokenizer, [PLAIN_ROW, SYSTEM_ROW], max_length=256, model="m")
    assert len(preview.problems) == 1 and "generation prompt" in preview.problems[0]
    with pytest.raises(DataError, match="generation prompt that is not the start of the assistant turn"):
        encode_sequence(tokenizer, PLAIN_ROW["messages"], 256)  # a row on its own names the same cause


@pytest.mark.parametrize("template", [NO_EOS_NEWLINE, NO_EOS_DOUBLE])
def test_answers_without_eos_are_recorded_as_a_warning(tokenizer, template):
    with_template(tokenizer, template)
    record = check_template_contract(tokenizer, [PLAIN_ROW], "m")
    assert record["eos_after_assistant"] is False
    assert any("will not learn to stop" in w for w in record["warnings"])


def test_a_missing_generation_prompt_is_told_apart_from_mistral_style_templates(tokenizer):
    assert probe_template(with_template(tokenizer, NO_GENERATION_PROMPT)).generation_prompt == "missing"
    assert probe_template(with_template(tokenizer, INST_ONLY)).generation_prompt == "matches"


def test_the_embedded_models_template_shape_passes_clean(tokenizer):
    record = check_template_contract(tokenizer, [SYSTEM_ROW, PLAIN_ROW], "chatml")
    assert (record["system_role"], record["generation_prompt"], record["assistant_turns"]) == (
        "supported", "matches", "identifiable")
    assert record["eos_after_assistant"] and not record["warnings"] and not record["problems"]


# --- counts: what preview and data.json say is what trains ------------------------------------------------

def test_a_row_whose_answer_lies_past_max_length_is_dropped_and_counted_by_reason(tokenizer):
    long_prompt = {"messages": [{"role": "user", "content": "two red mugs " * 40},
                                {"role": "assistant", "content": "ok"}]}
    rows = [PLAIN_ROW, long_prompt, PLAIN_ROW, PLAIN_ROW]
    split = encode_split(tokenizer, rows, max_length=96)
    assert split.counts()["rows"] == 4 and split.counts()["trained_rows"] == 3
    assert split.counts()["dropped"] == {"answer_past_max_length": 1}
    preview = preview_rows(tokenizer, rows, max_length=96)
    assert [e.drop_reason for e in preview.examples] == [None, "answer_past_max_length", None, None]
    assert any("row 2: no answer token lies inside max_length 96" in w for w in preview.warnings)


WORDS = ["mug", "red", "two", "order", "lamp", "qty", "blue", "chair", "desk", "{", "}", '"', ":", "é", "  "]
text_strategy = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join).filter(str.strip)


@st.composite
def conversations(draw):
    turns = [{"role": "system", "content": draw(text_strategy)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        turns += [{"role": "user", "content": draw(text_strategy)},
                  {"role": "assistant", "content": draw(text_strategy)}]
    return {"messages": turns}


@settings(max_examples=40, deadline=None)
@given(row=conversations(), max_length=st.integers(8, 200))
def test_preview_shows_the_exact_tokens_and_labels_that_training_encodes(tokenizer_dir, row, max_length):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    preview = preview_rows(tokenizer, [row], max_length)
    split = encode_split(tokenizer, [row], max_length)
    [example] = preview.examples
    if example.drop_reason:
        assert split.examples == [] and split.dropped == {example.drop_reason: 1}
        return
    [trained] = split.examples
    assert [t.token_id for t in example.tokens] == trained.input_ids
    assert [t.loss for t in example.tokens] == [label != IGNORE_INDEX for label in trained.labels]
    assert example.loss_tokens == trained.loss_tokens > 0


def test_the_sft_trainers_batches_carry_exactly_the_previewed_labels(tokenizer_dir, tiny_model_dir, tmp_path):
    """Through TRL's own SFTTrainer data pipeline and collator, not just our encoder."""
    from trl import SFTConfig, SFTTrainer

    from tunesmith.data import Splits
    from tunesmith.models import load_model
    from tunesmith.train.sft import tokenize_splits

    generator = random.Random(7)

    def words(pool: list[str], most: int) -> str:
        return " ".join(generator.choices(pool, k=generator.randint(1, most)))

    rows = [{"messages": [{"role": "user", "content": words(WORDS[:9], 14)},
                          {"role": "assistant", "content": words(WORDS, 9)}]} for _ in range(12)]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    datasets = tokenize_splits(Splits(rows, [], {}), tokenizer, max_length=48)
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_length=48, packing=False,
                     report_to="none", use_cpu=True, dataloader_num_workers=0, seed=1)
    trainer = SFTTrainer(model=load_model(tiny_model_dir), args=args, train_dataset=datasets.train,
                         processing_class=tokenizer)
    batch_rows = []
    for batch in trainer.get_train_dataloader():
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
            keep = mask.bool()
            batch_rows.append((ids[keep].tolist(), labels[keep].tolist()))
    previews = preview_rows(tokenizer, rows, max_length=48).examples
    expected = [([t.token_id for t in e.tokens], [t.token_id if t.loss else IGNORE_INDEX for t in e.tokens])
                for e in previews if not e.drop_reason]
    assert 0 < len(expected) < len(rows), "the rows should include some that max_length drops"
    assert sorted(batch_rows) == sorted(expected)
    assert datasets.counts["train"]["trained_rows"] == len(expected)


def test_tool_rows_as_given_in_the_issue_parse_from_jsonl(tmp_path, tokenizer):
    """The issue's row, loaded from a file, reaches the template with its tools and its null content."""
    from tunesmith.data.loaders import load_records

    raw = json.loads(json.dumps(TOOL_ROW))
    raw["messages"][1]["content"] = None
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(raw) + "\n", encoding="utf-8")
    [row] = load_records(path).rows
    assert row["tools"] == TOOL_ROW["tools"] and row["messages"][1]["tool_calls"]
    with_template(tokenizer, TOOLS_CHATML)
    assert "get_stock" in loss_text(tokenizer, encode_sequence(tokenizer, row["messages"], 512, row["tools"]))


LLAMA_FACTORY_TOOL_ROW = {  # TOOL_ROW as LLaMA-Factory's ShareGPT layout writes it (glaive_toolcall_en's shape)
    "conversations": [
        {"from": "human", "value": "How many KB-100 do we have?"},
        {"from": "function_call", "value": "{\"name\": \"get_stock\", \"arguments\": {\"sku\": \"KB-100\"}}"},
        {"from": "observation", "value": "{\"units\": 14}"},
        {"from": "gpt", "value": "We have 14 units."}],
    "tools": json.dumps([{"name": "get_stock", "parameters": {"type": "object",
                                                              "properties": {"sku": {"type": "string"}}}}])}


def test_llama_factory_tool_rows_train_as_the_same_openai_row_does(tmp_path, tokenizer):
    """function_call/observation speakers and a `tools` JSON string of bare schemas: the trained tokens equal
    those of the OpenAI row with the same call, result and schema."""
    from tunesmith.data.loaders import load_records

    path = tmp_path / "glaive.json"
    path.write_text(json.dumps([LLAMA_FACTORY_TOOL_ROW]), encoding="utf-8")
    [row] = load_records(path).rows
    assert row["tools"] == TOOL_ROW["tools"]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "tool", "assistant"]
    with_template(tokenizer, TOOLS_CHATML)
    check_template_contract(tokenizer, [row], "qwen-like")
    encoded = encode_sequence(tokenizer, row["messages"], 512, row["tools"])
    expected = encode_sequence(tokenizer, TOOL_ROW["messages"], 512, TOOL_ROW["tools"])
    assert (encoded.input_ids, encoded.labels) == (expected.input_ids, expected.labels)


def test_a_function_call_written_with_parameters_keeps_its_arguments(tmp_path):
    """`{"name": ..., "parameters": {...}}` (Llama 3.1's form, some LLaMA-Factory exports) trained as a call with
    empty arguments; it now reads as the same row as with `arguments`."""
    from tunesmith.data.loaders import load_records

    row = json.loads(json.dumps(LLAMA_FACTORY_TOOL_ROW))
    row["conversations"][1]["value"] = json.dumps({"name": "get_stock", "parameters": {"sku": "KB-100"}})
    path = tmp_path / "glaive.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    [loaded] = load_records(path).rows
    assert loaded["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"sku": "KB-100"}
    row["conversations"][1]["value"] = json.dumps({"name": "get_stock", "parameters": {}, "arguments": {"a": 1}})
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="gives both 'arguments' and 'parameters'"):
        load_records(path)


def test_a_tools_string_that_is_not_json_is_said_to_be_bad_json(tmp_path):
    from tunesmith.data.loaders import load_records

    row = json.loads(json.dumps(LLAMA_FACTORY_TOOL_ROW))
    row["tools"] = row["tools"][:-12]  # cut short, as a hand-edited file can be
    path = tmp_path / "glaive.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"(?s)line 1.*'tools' is JSON text that does not parse"):
        load_records(path)


@pytest.mark.parametrize("value", ["get_stock(sku='KB-100')", '{"arguments": {"sku": "KB-100"}}', "[]"])
def test_a_function_call_turn_that_is_not_a_named_json_call_is_refused_with_its_place(tmp_path, value):
    from tunesmith.data.loaders import load_records

    row = json.loads(json.dumps(LLAMA_FACTORY_TOOL_ROW))
    row["conversations"][1]["value"] = value
    path = tmp_path / "glaive.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"(?s)line 1.*conversations\[1\]\.value.*function_call turn's value"):
        load_records(path)


def test_a_sharegpt_order_error_names_the_files_speakers(tmp_path):
    """The file says gpt/function_call, not assistant: the error must point at the speaker the user wrote."""
    from tunesmith.data.loaders import load_records

    row = json.loads(json.dumps(LLAMA_FACTORY_TOOL_ROW))
    del row["conversations"][2]  # the observation: the function_call is followed by gpt directly
    path = tmp_path / "glaive.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"(?s)conversations\[2\] \(from 'gpt'\): 'assistant' cannot follow "
                                        r"'assistant' \(expected 'tool'\).*function_call → 'assistant'.*observation"):
        load_records(path)


@pytest.mark.parametrize("layout", ["openai", "sharegpt"])
def test_a_call_to_a_function_the_rows_tools_do_not_declare_is_refused(tmp_path, layout):
    from tunesmith.data.loaders import load_records

    if layout == "openai":
        row = json.loads(json.dumps(TOOL_ROW))
        row["messages"][1]["tool_calls"][0]["function"]["name"] = "get_stocks"
        key = "messages"
    else:
        row = json.loads(json.dumps(LLAMA_FACTORY_TOOL_ROW))
        row["conversations"][1]["value"] = json.dumps({"name": "get_stocks", "arguments": {"sku": "KB-100"}})
        row["system"] = "You check stock."  # prepended as a turn: the error must still count the file's turns
        key = "conversations"
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"(?s)line 1.*{key}\[1\] calls 'get_stocks', which the row's 'tools' do "
                                        r"not declare \(they declare \['get_stock'\]\)"):
        load_records(path)
    without_tools = {k: v for k, v in row.items() if k != "tools"}  # no schemas given: nothing to check against
    path.write_text(json.dumps(without_tools) + "\n", encoding="utf-8")
    assert len(load_records(path).rows) == 1


def test_training_warns_of_answer_tokens_cut_by_max_length_in_rows_that_still_train(tokenizer):
    from tunesmith.train.common import drop_warnings

    long_answer = {"messages": [{"role": "user", "content": "list them"},
                                {"role": "assistant", "content": " ".join(f"item{i}" for i in range(60))}]}
    whole = encode_sequence(tokenizer, long_answer["messages"], 4096)
    limit = whole.labels.index(next(label for label in whole.labels if label != IGNORE_INDEX)) + 10  # 10 answer tokens
    split = encode_split(tokenizer, [long_answer], limit)
    assert split.answer_tokens_cut > 0 and not split.dropped
    [warning] = drop_warnings({"train": split.counts()}, limit)
    assert f"{split.answer_tokens_cut:,} answer tokens of the training rows lie past data.max_length {limit}" in warning
    assert drop_warnings({"train": encode_split(tokenizer, [PLAIN_ROW], 256).counts()}, 256) == []


# --- preference pairs: preview == what TRL's DPO trainer builds ----------------------------------------------

PAIRS = [
    {"prompt": "two red mugs", "chosen": '{"item": "mug", "qty": 2}', "rejected": "Sure! Two mugs."},
    {"prompt": [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "one lamp"},
                {"role": "assistant", "content": '{"item": "lamp"}'}, {"role": "user", "content": "make it two"}],
     "chosen": [{"role": "assistant", "content": '{"item": "lamp", "qty": 2}'}],
     "rejected": [{"role": "assistant", "content": "Two lamps coming up."}]},
    {"prompt": [{"role": "user", "content": "desk chair order " * 30}],
     "chosen": [{"role": "assistant", "content": "ok"}], "rejected": [{"role": "assistant", "content": "no"}]},
]


def trl_dpo_sequences(tokenizer, rows, max_length):
    """Run TRL's own DPO dataset preparation and collator truncation on `rows` (ids and answer masks)."""
    from types import SimpleNamespace

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir="unused", max_length=max_length, report_to="none", use_cpu=True)
    stub = SimpleNamespace(_tokenizer=tokenizer)
    prepared = [example for row in rows  # one dataset per row: Arrow cannot mix string and chat columns
                for example in DPOTrainer._prepare_dataset(stub, Dataset.from_list([row]), tokenizer, args, "train")]
    sequences = []
    for example in prepared:
        for side in ("chosen", "rejected"):
            ids = (example["prompt_ids"] + example[f"{side}_ids"])[:max_length]
            answer = ([False] * len(example["prompt_ids"]) + [True] * len(example[f"{side}_ids"]))[:max_length]
            sequences.append((ids, answer))
    return sequences


def test_preference_preview_matches_trls_dpo_tokenization_and_drops(tokenizer):
    """String pairs (no template, EOS appended), an implicit multi-turn prompt, and a prompt that fills
    max_length (TRL drops it; preview and data.json count it as dropped)."""
    from tunesmith.data.template import encode_preference_split

    max_length = 128
    expected = trl_dpo_sequences(tokenizer, PAIRS, max_length)
    preview = preview_rows(tokenizer, PAIRS, max_length)
    shown = [([t.token_id for t in e.tokens], [t.loss for t in e.tokens])
             for e in preview.examples if not e.drop_reason]
    assert shown == expected and len(expected) == 4
    assert [e.label for e in preview.examples if e.drop_reason] == ["row 3 (chosen)", "row 3 (rejected)"]
    counts = encode_preference_split(tokenizer, PAIRS, max_length).counts()
    assert counts["trained_rows"] == 2 and counts["dropped"] == {"answer_past_max_length": 1}
