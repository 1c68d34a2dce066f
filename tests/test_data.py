"""Data loading and the loss mask: prompt tokens carry no loss, every assistant token does."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tunesmith.config import load_recipe
from tunesmith.data import holds_out, load_splits
from tunesmith.data.formats import load_conversations
from tunesmith.data.template import IGNORE_INDEX, render_with_loss_mask
from tunesmith.errors import DataError

CONVO = [
    {"role": "user", "content": "two red mugs"},
    {"role": "assistant", "content": '{"item": "mug"}'},
    {"role": "user", "content": "and a lamp"},
    {"role": "assistant", "content": '{"item": "lamp"}'},
]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def labelled_text(tokenizer, encoded) -> str:
    return "".join(tokenizer.decode([t]) for t, lab in zip(encoded["input_ids"], encoded["labels"], strict=True)
                   if lab != IGNORE_INDEX)


def test_prompt_tokens_are_masked_and_answers_are_not(tokenizer):
    encoded = render_with_loss_mask(tokenizer, CONVO[:2], max_length=512)
    text = tokenizer.apply_chat_template(CONVO[:1], tokenize=False, add_generation_prompt=True)
    prompt_len = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert all(label == IGNORE_INDEX for label in encoded["labels"][:prompt_len])
    assert labelled_text(tokenizer, encoded) == '{"item": "mug"}<|im_end|>\n'


def test_end_of_turn_token_keeps_its_label_even_when_pad_equals_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    encoded = render_with_loss_mask(tokenizer, CONVO, max_length=512)
    eos_positions = [i for i, t in enumerate(encoded["input_ids"]) if t == tokenizer.eos_token_id]
    labelled_eos = [i for i in eos_positions if encoded["labels"][i] == tokenizer.eos_token_id]
    assert len(labelled_eos) == 2  # one per assistant turn; system and user ends stay masked
    assert len(eos_positions) == 5


def test_every_assistant_turn_of_a_multi_turn_row_is_trained(tokenizer):
    encoded = render_with_loss_mask(tokenizer, CONVO, max_length=512)
    assert labelled_text(tokenizer, encoded) == '{"item": "mug"}<|im_end|>\n{"item": "lamp"}<|im_end|>\n'


def test_truncation_is_reported(tokenizer):
    encoded = render_with_loss_mask(tokenizer, CONVO, max_length=10)
    assert len(encoded["input_ids"]) == 10 and encoded["truncated"]
    whole = render_with_loss_mask(tokenizer, CONVO, max_length=512)
    assert not whole["truncated"] and len(whole["input_ids"]) > 10
    assert (encoded["input_ids"], encoded["labels"]) == (whole["input_ids"][:10], whole["labels"][:10])


def test_template_that_rewrites_history_is_refused(tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = "{% for m in messages|reverse %}{{ m['content'] }}|{% endfor %}"
    with pytest.raises(DataError, match="prefix-stable"):
        render_with_loss_mask(tokenizer, CONVO, max_length=512)


def write_lines(path: Path, lines: list[str], newline: str = "\n", bom: bool = False) -> Path:
    path.write_bytes(((b"\xef\xbb\xbf" if bom else b"") + newline.join(lines).encode()) + newline.encode() * 3)
    return path


def test_prompt_completion_rows_become_conversations(tmp_path):
    path = write_lines(tmp_path / "pc.jsonl", [json.dumps({"prompt": "hi", "completion": "hello"})],
                       newline="\r\n", bom=True)
    rows = load_conversations(path)
    assert rows == [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]


def test_system_prompt_is_prepended(tmp_path):
    path = write_lines(tmp_path / "pc.jsonl", [json.dumps({"prompt": "hi", "completion": "hello"})])
    rows = load_conversations(path, system_prompt="Be brief.")
    assert rows[0]["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"messages": [{"role": "user", "content": "x"}', "line 2.*not valid JSON"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "line 2.*unknown role 'robot'"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "line 2.*assistant"),
        ('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}', "must be a string"),
        ('{"messages": []}', "non-empty list"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, line, problem):
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    path = write_lines(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(DataError, match=problem) as info:
        load_conversations(path, fmt="messages")
    assert "bad.jsonl" in str(info.value)


def test_unknown_shape_is_explained(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [json.dumps({"question": "a", "answer": "b"})])
    with pytest.raises(DataError, match="cannot tell the dataset shape"):
        load_conversations(path)


def test_undecodable_bytes_are_reported(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_conversations(path)


def make_rows(n: int) -> list[str]:
    return [json.dumps({"prompt": f"question {i}", "completion": f"answer {i}"}) for i in range(n)]


def test_hash_split_never_moves_old_rows(tmp_path):
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text("data:\n  train: d.jsonl\n  eval_fraction: 0.2\n", encoding="utf-8")
    write_lines(tmp_path / "d.jsonl", make_rows(200))
    before = load_splits(load_recipe(recipe_path))
    write_lines(tmp_path / "d.jsonl", make_rows(300))
    after = load_splits(load_recipe(recipe_path))
    assert 20 <= len(before.eval) <= 60
    assert all(row in after.eval for row in before.eval)
    assert all(row in after.train for row in before.train)
    held_prompts = {row["messages"][0]["content"] for row in after.eval}
    canonical = [json.loads(line) for line in make_rows(300)]
    assert held_prompts == {row["prompt"] for row in canonical if holds_out(row, 0.2)}


def test_recipe_columns_and_skip_invalid_reach_the_loader(tmp_path):
    lines = [json.dumps({"question": f"q{i}", "answer": f"a{i}"}) for i in range(5)] + ["{broken"]
    write_lines(tmp_path / "d.jsonl", lines)
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text("data:\n  train: d.jsonl\n  eval_fraction: 0.5\n  skip_invalid: true\n"
                           "  columns: {question: prompt, answer: completion}\n", encoding="utf-8")
    splits = load_splits(load_recipe(recipe_path))
    assert len(splits.train) + len(splits.eval) == 5
    assert splits.skipped == {"bad_json": 1}
    assert splits.train[0]["messages"][0]["role"] == "user"


def test_training_says_which_rows_cleaning_removed_before_it_starts(tmp_path):
    """A user's 24 rows trained as 17 with only "(and 17 to train on)" to show for it: the line names each reason."""
    from tunesmith.train.common import cleaning_warnings

    rows = make_rows(20)
    write_lines(tmp_path / "train.jsonl", rows + rows[:3])  # 3 exact duplicates
    write_lines(tmp_path / "eval.jsonl", rows[10:14])  # 4 rows also in train
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text("data:\n  train: train.jsonl\n  eval: eval.jsonl\n", encoding="utf-8")
    splits = load_splits(load_recipe(recipe_path))
    assert len(splits.train) == 16
    (line,) = cleaning_warnings(splits)
    assert line.startswith(f"Training on 16 rows of {tmp_path / 'train.jsonl'}: removed 3 exact duplicates, 4 also "
                           "in the eval set")
    write_lines(tmp_path / "eval.jsonl", make_rows(24)[20:])
    assert cleaning_warnings(load_splits(load_recipe(recipe_path))) == [
        f"Training on 20 rows of {tmp_path / 'train.jsonl'}: removed 3 exact duplicates. `tunesmith data inspect "
        "RECIPE` shows them; data.clean.dedup: off keeps duplicates."]
