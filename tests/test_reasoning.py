"""Answers with reasoning (the thinking a model writes before its answer): read from whichever field a dataset keeps
it in, or a leading <think> block; trained through each template the way that template reads it, or refused where the
template drops it; a reasoning model's template that prompts an open <think> block (DeepSeek-R1) trains answers with
and without reasoning as it will be prompted; eval scores the answer after the reasoning, with room to reason."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trl
from transformers import AutoTokenizer

from tests.conftest import build_tiny_llama
from tests.test_input_contract import loss_text
from tests.test_real_templates import prompted_as_trained
from tunesmith.card import template_lines, write_model_card
from tunesmith.config import validate_recipe
from tunesmith.data.contract import check_template_contract, probe_template
from tunesmith.data.loaders import load_records
from tunesmith.data.template import encode_sequence, expected_output, render, training_template
from tunesmith.errors import DataError
from tunesmith.eval.decoding import auto_max_new_tokens
from tunesmith.eval.evaluate import run_eval
from tunesmith.runs import create_run
from tunesmith.scoring import exact_match_score, final_answer, score_answers
from tunesmith.train import run_training

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
QUESTION = "Ann buys 3 mugs at 7 euros. How much does she pay?"
REASONING = "Three mugs at seven euros each: 3 x 7 = 21."
ANSWER = "21 euros."


@pytest.fixture
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def load_rows(path: Path) -> list[dict]:
    return load_records(path).rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def reasoning_row(**answer: object) -> dict:
    return {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", **answer}]}


@pytest.mark.parametrize("answer", [
    {"content": ANSWER, "reasoning_content": REASONING},
    {"content": ANSWER, "reasoning": REASONING},
    {"content": ANSWER, "thinking": REASONING},
    {"content": f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"},
    {"content": f"  <think>{REASONING}</think>{ANSWER}"},
], ids=["reasoning_content", "reasoning", "thinking", "think-block", "think-block-unspaced"])
def test_reasoning_is_read_from_the_fields_datasets_use_and_from_a_leading_think_block(tmp_path, answer):
    (row,) = load_rows(write_rows(tmp_path / "rows.jsonl", [reasoning_row(**answer)]))
    assert row["messages"][-1] == {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING}


@pytest.mark.parametrize(("answer", "says"), [
    ({"content": f"<think>\n{REASONING}\n\n{ANSWER}"}, "never closes with </think>"),
    ({"content": ANSWER, "reasoning": REASONING, "thinking": "Something else."}, "different reasoning"),
    ({"content": f"<think>{REASONING}</think>{ANSWER}", "thinking": REASONING}, "both in thinking and in a <think>"),
    ({"content": ANSWER, "reasoning_content": 7}, "reasoning_content must be a string"),
    # think markup left in the answer trained as answer text without a word (a newcomer's trial):
    ({"content": f"{ANSWER}</think>"}, "holds </think> outside one leading reasoning block"),
    ({"content": f"<think>{REASONING}</think><think>again</think>{ANSWER}"}, "holds <think> outside one leading"),
    ({"content": f"Sure. <think>{REASONING}</think>{ANSWER}"}, "holds <think> outside one leading"),
])
def test_reasoning_a_row_gets_wrong_is_a_problem_naming_the_turn_and_line(tmp_path, answer, says):
    path = write_rows(tmp_path / "rows.jsonl", [reasoning_row(content="Fine."), reasoning_row(**answer)])
    with pytest.raises(DataError) as refused:
        load_rows(path)
    assert says in refused.value.message and "line 2" in refused.value.message
    assert "messages[1]" in refused.value.message


def test_reasoning_on_a_user_turn_is_a_problem_not_dropped(tmp_path):
    """A user turn's reasoning_content (columns shifted by one turn, most likely) was dropped without a word."""
    row = {"messages": [{"role": "user", "content": QUESTION, "reasoning_content": REASONING},
                        {"role": "assistant", "content": ANSWER}]}
    with pytest.raises(DataError) as refused:
        load_rows(write_rows(tmp_path / "rows.jsonl", [row]))
    assert "messages[0] is a user turn with reasoning_content" in refused.value.message
    empty = {"messages": [{"role": "user", "content": QUESTION, "reasoning_content": None},
                          {"role": "assistant", "content": ANSWER}]}
    assert load_rows(write_rows(tmp_path / "null.jsonl", [empty]))[0]["messages"][0] == {"role": "user",
                                                                                          "content": QUESTION}


def trained_text(tokenizer, row) -> str:
    return loss_text(tokenizer, encode_sequence(tokenizer, row["messages"], 2048))


@pytest.mark.parametrize(("name", "style"), [("qwen3", "fields"), ("gptoss", "fields"), ("llama3_1", "inline"),
                                             ("qwen2_5", "inline")])
def test_each_template_trains_the_reasoning_the_way_it_reads_it(tmp_path, tokenizer, name, style):
    """Qwen3 reads reasoning_content, gpt-oss thinking (its analysis channel); a template with neither (Llama 3,
    Qwen2.5) gets it as a <think> block of the answer. Before, any reasoning field was dropped without a word."""
    tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    (row,) = load_rows(write_rows(tmp_path / "rows.jsonl", [reasoning_row(content=ANSWER, thinking=REASONING)]))
    record = check_template_contract(tokenizer, [row], name)
    assert (record["reasoning"], record["reasoning_rows"]) == (style, 1)
    trained = trained_text(tokenizer, row)
    assert REASONING in trained and ANSWER in trained and QUESTION not in trained
    assert trained.index(REASONING) < trained.index(ANSWER)
    if style == "inline":
        assert f"<think>\n{REASONING}\n</think>" in trained
    assert any("1 row(s) with reasoning" in line for line in template_lines(record))
    prompted_as_trained(tokenizer, row)


def test_deepseek_r1_trains_through_its_training_variant_after_the_open_think_block_it_is_prompted_with(tokenizer):
    """DeepSeek-R1-Distill's template cuts every answer's text up to </think> (its reasoning never trained) and
    prompts with an open `<think>\\n` that no trained answer started with: tunesmith refused it. Its rows now render
    through TRL's training variant: an answer with reasoning trains the reasoning, </think> and the answer after the
    prompt; one without trains an empty block's close first, so both stop thinking where the model will be prompted."""
    tokenizer.chat_template = (TEMPLATES / "deepseek_r1_distill.jinja").read_text(encoding="utf-8")
    with_reasoning = {"messages": reasoning_row(content=ANSWER, reasoning_content=REASONING)["messages"]}
    without = {"messages": reasoning_row(content=ANSWER)["messages"]}
    record = check_template_contract(tokenizer, [with_reasoning, without], "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    assert record["training_template"] == "trl/chat_templates/deepseek_r1_distill_training.jinja"
    assert (record["generation_prompt"], record["reasoning"], record["empty_reasoning_block"]) == (
        "matches", "inline", True)
    assert training_template(tokenizer) == (TEMPLATES / "deepseek_r1_distill_training.jinja").read_text("utf-8")
    assert trained_text(tokenizer, with_reasoning).startswith(f"{REASONING}\n</think>\n\n{ANSWER}")
    assert trained_text(tokenizer, without).startswith(f"\n</think>\n\n{ANSWER}")
    for row in (with_reasoning, without):
        prompted_as_trained(tokenizer, row)
    assert any("empty <think> block" in line for line in template_lines(record))


def test_a_template_that_drops_reasoning_is_refused_for_rows_with_reasoning_and_fine_without(tokenizer):
    """Gemma's template, its reasoning cut the way DeepSeek's is, has no variant that keeps it: the rows with
    reasoning are refused before training, naming how many and the fix; rows without train as before."""
    gemma = (TEMPLATES / "gemma3.jinja").read_text(encoding="utf-8")
    tokenizer.chat_template = gemma.replace("message['content'] | trim", "message['content'].split('</think>')[-1] "
                                            "| trim")
    assert tokenizer.chat_template != gemma and probe_template(tokenizer).reasoning == "dropped"
    row = {"messages": reasoning_row(content=ANSWER, reasoning_content=REASONING)["messages"]}
    with pytest.raises(DataError) as refused:
        check_template_contract(tokenizer, [row], "gemma-cut")
    assert "drops an answer's reasoning" in refused.value.message and "1 row(s)" in refused.value.message
    assert "model.chat_template" in refused.value.message
    check_template_contract(tokenizer, [reasoning_row(content=ANSWER)], "gemma-cut")


@pytest.mark.parametrize(("generated", "answer"), [
    (f"{REASONING}\n</think>\n\n{ANSWER}", ANSWER),  # prompted with an open <think> (DeepSeek-R1)
    (f"<think>\n{REASONING}\n</think>\n\n{ANSWER}", ANSWER),  # opens its own (Qwen3)
    ("<think>\nLet me see, 3 x 7", ""),  # ran out of tokens mid-thought: no answer
    (ANSWER, ANSWER),  # no reasoning
    ("Use <think> tags to show work.", "Use <think> tags to show work."),
])
def test_the_final_answer_is_the_text_after_the_reasoning(generated, answer):
    assert final_answer(generated) == answer


def test_eval_scores_the_answer_after_the_reasoning_and_gives_room_to_reason(tokenizer):
    (scored,) = score_answers(exact_match_score, [f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"], [ANSWER])
    assert scored["exact_match"] == 1.0
    row = {"messages": reasoning_row(content=ANSWER, reasoning_content=REASONING)["messages"]}
    assert expected_output(row) == f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"
    with_room, why = auto_max_new_tokens(tokenizer, [expected_output(row)])
    answer_only, plain = auto_max_new_tokens(tokenizer, [ANSWER])
    assert with_room > answer_only
    assert "their reasoning included" in why and "reasoning" not in plain  # a 3-token answer read as 43 said why


@pytest.fixture(scope="module")
def r1_model_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama with DeepSeek-R1-Distill's template and its end-of-sentence token as EOS."""
    folder = tmp_path_factory.mktemp("r1-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"eos_token": "<｜end▁of▁sentence｜>",
                                  "additional_special_tokens": ["<｜User｜>", "<｜Assistant｜>"]})
    tokenizer.chat_template = (TEMPLATES / "deepseek_r1_distill.jinja").read_text(encoding="utf-8")
    tokenizer.save_pretrained(folder)
    return build_tiny_llama(folder, tmp_path_factory.mktemp("r1-model"))


def test_a_run_on_reasoning_rows_trains_evaluates_and_says_how(tmp_path, r1_model_dir):
    rows = [reasoning_row(content=f"{3 * n} euros.", reasoning_content=f"Three mugs at {n} euros: 3 x {n} = {3 * n}.")
            for n in range(2, 42)]
    rows[1::2] = [reasoning_row(content=row["messages"][-1]["content"]) for row in rows[1::2]]
    write_rows(tmp_path / "train.jsonl", rows[:32])
    write_rows(tmp_path / "eval.jsonl", rows[32:])
    recipe = validate_recipe({
        "name": "r1", "model": {"source": str(r1_model_dir)},
        "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl"), "max_length": 128,
                 "replay": {"ratio": 0}},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": 2, "batch_size": 8, "save_steps": 1000},
        "eval": {"batch_size": 8, "probes": False}, "base_dir": str(tmp_path)})
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    contract = json.loads((run.path / "data.json").read_text(encoding="utf-8"))["template_contract"]
    assert (contract["reasoning_rows"], contract["empty_reasoning_block"]) == (20, True)  # 16 train, 4 held out
    results = json.loads(run_eval(recipe, run).read_text(encoding="utf-8"))
    assert "20 row(s) with reasoning" in write_model_card(run).read_text(encoding="utf-8")
    assert "longest of 8 reference answers" in results["max_new_tokens"]["why"]
    longest = max(len(AutoTokenizer.from_pretrained(r1_model_dir)(expected_output(row))["input_ids"])
                  for row in rows[32:])
    assert str(longest) in results["max_new_tokens"]["why"]
    assert render(AutoTokenizer.from_pretrained(r1_model_dir), rows[32]["messages"][:1], generation_prompt=True) \
        .endswith("<｜Assistant｜><think>\n")


@pytest.mark.parametrize("kind", ["dpo", "kto", "orpo"])
def test_preference_runs_on_deepseek_r1_train_each_answer_after_the_whole_prompt(tmp_path, r1_model_dir, kind,
                                                                                 caplog):
    """The whole path: TRL's trainers tokenize the pairs themselves, through the training variant the rows name;
    none of them warns that the prompt is not a prefix (what the model's own template caused)."""
    pairs = [{"prompt": [{"role": "user", "content": f"Price of three mugs at {n} euros?"}],
              "chosen": [{"role": "assistant", "content": f"{3 * n} euros.",
                          "reasoning_content": f"3 x {n} = {3 * n}."}],
              "rejected": [{"role": "assistant", "content": f"{n} euros."}]} for n in range(2, 14)]
    write_rows(tmp_path / "train.jsonl", pairs)
    recipe = validate_recipe({
        "name": f"r1-{kind}", "model": {"source": str(r1_model_dir)}, "method": {"kind": kind},
        "data": {"train": str(tmp_path / "train.jsonl"), "max_length": 128, "replay": {"ratio": 0}},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": 1, "batch_size": 4, "save_steps": 1000}, "base_dir": str(tmp_path)})
    run = create_run(recipe, tmp_path / "runs")
    with caplog.at_level(logging.WARNING):
        run_training(recipe, run)
    assert not [r for r in caplog.records if "not a prefix" in r.getMessage()]
    data = json.loads((run.path / "data.json").read_text(encoding="utf-8"))
    assert data["template_contract"]["reasoning_rows"] == 12
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()


def test_the_data_report_counts_the_rows_that_reason(tmp_path):
    from tunesmith.data.report import data_stats

    rows = load_rows(write_rows(tmp_path / "rows.jsonl", [reasoning_row(content=ANSWER, thinking=REASONING),
                                                          reasoning_row(content=ANSWER)]))
    assert data_stats(rows, [10, 12], 64)["reasoning_rows"] == 1
    assert "reasoning_rows" not in data_stats(rows[1:], [12], 64)


def test_preference_pairs_keep_their_reasoning_as_trls_trainers_render_them(tokenizer):
    """DPO, ORPO, KTO, SimPO and reward models render pairs through the model's own template inside TRL: the reasoning
    read out of a <think> block must go back in the way that template reads it, and a template that drops it is
    refused for pairs even where conversations train through TRL's variant."""
    from tunesmith.data.template import template_input

    pair = {"prompt": [{"role": "user", "content": QUESTION}],
            "chosen": [{"role": "assistant", "content": ANSWER, "reasoning_content": REASONING}],
            "rejected": [{"role": "assistant", "content": "No idea."}]}
    for name, field in (("llama3_1", None), ("qwen3", "reasoning_content"), ("gptoss", "reasoning_content")):
        tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
        row = template_input(tokenizer, pair)
        text = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
        assert text.count(REASONING) == 1 and ANSWER in text, name
        assert (field in row["chosen"][0]) if field else "<think>" in row["chosen"][0]["content"]


def test_deepseek_r1_pairs_train_their_reasoning_after_the_think_block_their_prompt_opens(tokenizer):
    """DeepSeek-R1-Distill's own template cuts the reasoning out of an answer and prompts with `<think>` that no
    rendered answer starts with: TRL's trainers, given its pairs, trained the answers without their reasoning and
    after a prompt the model is never served with (TRL warns that the prompt is not a prefix). The pairs name TRL's
    training variant in `chat_template_kwargs`, which TRL's own tokenization (`_tokenize`, `apply_chat_template`)
    passes on: the reasoning trains once, an answer without any after an empty block, each after the whole prompt."""
    from trl.data_utils import _tokenize, apply_chat_template

    from tunesmith.data.template import encode_completion, template_input

    tokenizer.chat_template = (TEMPLATES / "deepseek_r1_distill.jinja").read_text(encoding="utf-8")
    pair = {"prompt": [{"role": "user", "content": QUESTION}],
            "chosen": [{"role": "assistant", "content": ANSWER, "reasoning_content": REASONING}],
            "rejected": [{"role": "assistant", "content": "No idea."}]}
    record = check_template_contract(tokenizer, [pair], "deepseek-r1-distill")
    assert record["reasoning"] == "inline" and record["reasoning_rows"] == 1
    row = template_input(tokenizer, pair)
    kwargs = row["chat_template_kwargs"]
    prompt_ids = _tokenize(tokenizer, row["prompt"], add_generation_prompt=True, **kwargs)["input_ids"]
    for side, expected in (("chosen", REASONING), ("rejected", "\n</think>\n\nNo idea.")):
        full_ids = _tokenize(tokenizer, row["prompt"] + row[side], **kwargs)["input_ids"]
        assert full_ids[:len(prompt_ids)] == prompt_ids, side  # no divergence: TRL keeps the whole prompt
        answer = tokenizer.decode(full_ids[len(prompt_ids):])
        assert expected in answer and answer.count("<think>") == 0, (side, answer)  # the prompt opened it
        encoded = encode_completion(tokenizer, pair["prompt"], pair[side], 4096)  # what data.json counts
        assert tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
                                 if label != -100]) == answer
    text = apply_chat_template(row, tokenizer)  # ORPO's and SimPO's rendering
    assert text["prompt"].endswith("<think>\n") and text["chosen"].count(REASONING) == 1
    plain = template_input(tokenizer, {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    assert plain["chat_template_kwargs"] == kwargs  # KTO's rows alike


def test_chat_keeps_the_answer_not_the_reasoning_in_its_history():
    from tunesmith.chat import assistant_turn

    assert assistant_turn(f"{REASONING}\n</think>\n\n{ANSWER}", None) == {"role": "assistant", "content": ANSWER}
    assert assistant_turn(ANSWER, None) == {"role": "assistant", "content": ANSWER}


def test_the_report_says_that_outputs_which_reason_are_scored_on_their_answer():
    from tunesmith.eval.html_report import reasoning_note

    reasons = {"samples": [{"prompt": QUESTION, "reference": ANSWER, "base": ANSWER,
                            "tuned": f"<think>{REASONING}</think>{ANSWER}"}]}
    assert "scored on their answer alone: the text after their last <code>&lt;/think&gt;</code>" in \
        reasoning_note(reasons)
    plain = {"samples": [{"prompt": "Why </think>?", "reference": "</think>", "tuned": ANSWER}]}  # not an output
    assert reasoning_note(plain) == ""
