"""The template/loss preview: what training sees, and the tokenizer/template/trainer contract checks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.conftest import CHATML
from tunesmith.data.preview import preview_html, preview_rows
from tunesmith.data.workflow import data_recipe, preview_data

ROW = {"messages": [{"role": "system", "content": "Answer in JSON."},
                    {"role": "user", "content": "two red mugs"},
                    {"role": "assistant", "content": '{"item": "mug", "qty": 2}'}]}
NO_SYSTEM = CHATML.replace("{{'<|im_start|>' + message['role']",
                           "{% if message['role'] != 'system' %}{{'<|im_start|>' + message['role']").replace(
    "+ '\n'}}{% endfor %}", "+ '\n'}}{% endif %}{% endfor %}")
NO_EOS_AFTER_ANSWER = CHATML.replace("message['content'] + '<|im_end|>' + '\n'",
                                     "message['content'] + ('\n' if message['role'] == 'assistant' "
                                     "else '<|im_end|>\n')")


@pytest.fixture
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_loss_tokens_are_exactly_the_answer_and_its_end_token(tokenizer):
    preview = preview_rows(tokenizer, [ROW], max_length=256)
    [example] = preview.examples
    assert "".join(t.text for t in example.tokens if t.loss) == '{"item": "mug", "qty": 2}<|im_end|>\n'
    assert "".join(t.text for t in example.tokens) == tokenizer.apply_chat_template(ROW["messages"], tokenize=False)


def test_a_clean_contract_only_notes_pad_equals_eos(tokenizer):
    warnings = preview_rows(tokenizer, [ROW], max_length=256).warnings
    assert len(warnings) == 1 and "pad == eos" in warnings[0]


def test_template_that_drops_the_system_role_is_flagged(tokenizer):
    tokenizer.chat_template = NO_SYSTEM
    problems = preview_rows(tokenizer, [ROW], max_length=256).problems
    assert any("silently drops the system role" in p and "data.system_fallback: merge" in p for p in problems)


def test_answers_without_eos_are_flagged(tokenizer):
    tokenizer.chat_template = NO_EOS_AFTER_ANSWER
    warnings = preview_rows(tokenizer, [ROW], max_length=256).warnings
    assert any("row 1: 1 assistant turn(s) end without EOS" in w for w in warnings)


def test_text_that_does_not_round_trip_is_flagged(tokenizer):
    from tokenizers import normalizers

    tokenizer.backend_tokenizer.normalizer = normalizers.NFKC()
    row = {"messages": [{"role": "user", "content": "the ﬁrst order"}, {"role": "assistant", "content": "ok"}]}
    warnings = preview_rows(tokenizer, [row], max_length=256).warnings
    assert any("does not survive tokenize→decode" in w and "'ﬁ" in w for w in warnings)


def test_truncation_inside_the_answer_is_flagged_with_the_count(tokenizer):
    full = preview_rows(tokenizer, [ROW], max_length=256).examples[0]
    cut_at = full.total_tokens - 4
    preview = preview_rows(tokenizer, [ROW], max_length=cut_at)
    assert preview.examples[0].truncated_answer_tokens == 4
    assert any(f"> max_length {cut_at}; 4 answer tokens are cut off" in w for w in preview.warnings)
    prompt_only_cut = preview_rows(tokenizer, [ROW], max_length=full.total_tokens)
    assert not any("cut off" in w for w in prompt_only_cut.warnings)


def test_preference_rows_show_both_sides_and_text_rows_train_every_token(tokenizer):
    pair = {"prompt": "two red mugs", "chosen": '{"item": "mug"}', "rejected": "Sure! Two mugs."}
    text = {"text": "Mugs are made of clay."}
    preview = preview_rows(tokenizer, [pair, text], max_length=256)
    assert [e.label for e in preview.examples] == ["row 1 (chosen)", "row 1 (rejected)", "row 2"]
    assert all(t.loss for t in preview.examples[2].tokens)
    assert any("pad == eos" in w for w in preview.warnings)  # the pair goes through the template


def test_raw_text_gets_no_chat_template_warnings(tokenizer, tmp_path, tiny_model_dir):
    """CPT's text was warned about pad == EOS and assistant spans, and inspect showed a chat-template contract."""
    from tunesmith.config import load_recipe
    from tunesmith.data.workflow import inspect_data

    texts = [{"text": "Mugs are made of clay."}, {"text": "Kilns fire them hot."}]
    preview = preview_rows(tokenizer, texts, max_length=256)
    assert preview.warnings == [] and not preview.contract
    (tmp_path / "docs.txt").write_text("Mugs are made of clay.\n\nKilns fire them hot.\n", encoding="utf-8")
    (tmp_path / "r.yaml").write_text(f"model: {{source: {tiny_model_dir}}}\nmethod: {{kind: cpt}}\n"
                                     "data: {train: docs.txt}\n", encoding="utf-8")
    assert "template_contract" not in inspect_data(load_recipe(tmp_path / "r.yaml"))


@pytest.mark.parametrize("answers", [{"chosen": '{"item": "mug"}', "rejected": "Sure! Two mugs."},
                                     {"completion": '{"item": "mug"}', "label": True}])
def test_plain_text_preference_rows_train_in_the_chat_format_as_sft_rows_do(tmp_path, answers):
    from tunesmith.config import validate_recipe
    from tunesmith.data import load_splits
    from tunesmith.data.formats import as_chat_preference

    rows = [{"prompt": f"{n} red mugs", **answers} for n in range(12)]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    kind = "dpo" if "chosen" in answers else "kto"
    recipe = validate_recipe({"data": {"train": "prefs.jsonl", "eval_fraction": 0.25}, "method": {"kind": kind},
                              "base_dir": str(tmp_path)})
    splits = load_splits(recipe, accept=("preference", "unpaired_preference"), purpose=kind)
    for row in splits.train + splits.eval:
        assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]
        assert row["prompt"][0]["content"].endswith(" red mugs")
        for key in ("chosen", "rejected", "completion"):
            if key in answers:
                assert row[key] == [{"role": "assistant", "content": answers[key]}]
        assert row.get("label", True) is True
    chat = as_chat_preference(rows[0])
    assert as_chat_preference(chat) == chat  # already in the chat format: unchanged


def test_plain_text_prompts_are_said_to_train_without_the_chat_template(tokenizer):
    plain = {"prompt": "two red mugs", "chosen": '{"item": "mug"}', "rejected": "Sure! Two mugs."}
    chat = {"prompt": [{"role": "user", "content": "two red mugs"}],
            "chosen": [{"role": "assistant", "content": '{"item": "mug"}'}],
            "rejected": [{"role": "assistant", "content": "Sure! Two mugs."}]}
    warned = [w for w in preview_rows(tokenizer, [plain, plain], max_length=256).warnings if "plain-text" in w]
    assert len(warned) == 1 and warned[0].startswith("2 row(s)") and '"role": "user"' in warned[0]
    assert not any("plain-text" in w for w in preview_rows(tokenizer, [chat], max_length=256).warnings)


class SpanCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.loss, self.current = [], None

    def handle_starttag(self, tag, attrs):
        self.current = dict(attrs).get("class") if tag == "span" else None

    def handle_data(self, data):
        if self.current == "loss":
            self.loss.append(data)


def test_characters_split_across_byte_level_tokens_read_whole_in_the_terminal_and_html(tokenizer):
    """The tests' byte-level tokenizer never saw CJK, Arabic, Cyrillic or emoji: each character is several byte
    tokens, which decoded one by one showed U+FFFD (a newcomer's Japanese and Arabic rows read `名前、�����`)."""
    text = "名前は田中、都市はالرياض، город Москва 👍🏽"
    row = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": text}]}
    [example] = preview_rows(tokenizer, [row], max_length=512).examples
    assert len(example.tokens) == len(tokenizer.apply_chat_template(row["messages"], tokenize=True)["input_ids"])
    shown = "".join(token.text for token in example.tokens)
    assert "\ufffd" not in shown and shown == tokenizer.apply_chat_template(row["messages"], tokenize=False)
    assert "".join(token.text for token in example.tokens if token.loss) == text + "<|im_end|>\n"
    assert "\ufffd" not in preview_html(preview_rows(tokenizer, [row], max_length=512), "tiny")


def test_html_view_marks_the_same_tokens(tokenizer):
    preview = preview_rows(tokenizer, [ROW], max_length=256)
    page = preview_html(preview, "t")
    parser = SpanCollector()
    parser.feed(page)
    assert "".join(parser.loss) == '{"item": "mug", "qty": 2}<|im_end|>\n'
    assert "pad == eos" in page and "http" not in page


def test_preview_data_reports_a_missing_pad_token(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n", encoding="utf-8")
    preview = preview_data(data_recipe(data, model=str(model)), count=5)
    assert len(preview.examples) == 2
    assert any("no pad token" in w for w in preview.warnings)


def test_a_recipe_target_uses_its_system_prompt(tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "completion": "hello"}) + "\n", encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{source: {tiny_model_dir}}}\ndata:\n  train: d.jsonl\n  system_prompt: Be terse.\n")
    preview = preview_data(data_recipe(Path(recipe)))
    assert "Be terse." in "".join(t.text for t in preview.examples[0].tokens)


def test_a_skip_past_the_last_row_says_how_many_rows_there_are(tiny_model_dir, tmp_path):
    from tunesmith.errors import DataError

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(3)),
                    encoding="utf-8")
    assert len(preview_data(data_recipe(data, model=str(tiny_model_dir)), count=5, skip=2).examples) == 1
    with pytest.raises(DataError, match=r"holds 3 usable rows; --skip 10 passes all of them"):
        preview_data(data_recipe(data, model=str(tiny_model_dir)), count=5, skip=10)


def test_a_row_train_would_refuse_is_listed_and_the_rows_asked_for_still_shown(tiny_model_dir, tmp_path):
    """One bad row stopped the preview of any other (exit 2, nothing shown), even rows asked for past it."""
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]
    rows[1] = {"prompt": "q1", "completion": ""}
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    preview = preview_data(data_recipe(data, model=str(tiny_model_dir)), count=1, skip=2)
    assert [example.label for example in preview.examples] == ["row 3"]  # the 3rd usable row: file line 4
    assert len(preview.problems) == 1 and "line 2" in preview.problems[0]
    assert "numbered among the 3 usable ones" in preview.problems[0]
    skipping = preview_data(data_recipe(data, model=str(tiny_model_dir), overrides=["data.skip_invalid=true"]))
    assert not skipping.problems and len(skipping.examples) == 3
    said = subprocess.run([sys.executable, "-m", "tunesmith", "data", "preview", str(data), "--model",
                           str(tiny_model_dir), "--skip", "2", "-n", "1"], capture_output=True, text=True, timeout=300)
    assert said.returncode == 1 and "line 2" in said.stderr and "a3" in said.stdout + said.stderr, said.stderr


def test_the_template_contract_counts_the_whole_file_not_the_rows_shown(tokenizer):
    def tool_row(n: int) -> dict:
        call = {"id": f"c{n}", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
        return {"messages": [{"role": "user", "content": f"time {n}?"},
                             {"role": "assistant", "content": "", "tool_calls": [call]},
                             {"role": "tool", "content": "12:00"}, {"role": "assistant", "content": "Noon."}]}

    rows = [tool_row(n) for n in range(3)]
    problems = " ".join(preview_rows(tokenizer, rows[:1], max_length=256, all_rows=rows).problems)
    assert "3 row(s) use tools" in problems


def test_a_turn_ending_token_in_the_generation_config_counts_as_stopping(tokenizer_dir, tmp_path):
    """Llama-3 and Gemma end a turn with a token of their own, listed in generation_config.json's eos_token_id
    beside the tokenizer's EOS: generation stops there, so training on it teaches the model to stop."""
    from tunesmith.models.generation import tokens_before_end
    from tunesmith.models.loading import stop_token_ids

    folder = Path(shutil.copytree(tokenizer_dir, tmp_path / "eot"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHATML.replace("<|im_end|>", "<|endoftext|>")  # turns end with another token
    row = {"messages": ROW["messages"]}

    def stop_warnings() -> list[str]:
        return [w for w in preview_rows(tokenizer, [row], max_length=256).warnings if "learn to stop" in w]

    assert len(stop_warnings()) == 2  # the contract's and the row's: nothing stops generation at that token
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [end, tokenizer.eos_token_id]}))
    assert stop_token_ids(tokenizer) == [tokenizer.eos_token_id, end] and stop_warnings() == []
    assert tokens_before_end([5, 6, end, 7], stop_token_ids(tokenizer)) == 2  # an answer's length ends there too
