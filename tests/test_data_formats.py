"""Every input format and dataset shape becomes canonical rows; every bad row is named by file and line.

Fixtures live in tests/fixtures/data/ (small, hand-written); Parquet files and `save_to_disk` folders
are written from them in the tests, so the binary formats carry exactly the same rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.data.formats import load_conversations
from tunesmith.data.loaders import load_records
from tunesmith.errors import DataError, RowProblem, TunesmithError

FIXTURES = Path(__file__).parent / "fixtures" / "data"
USER = {"role": "user", "content": "Two red mugs."}
ANSWER = {"role": "assistant", "content": "mug x2"}
GOOD = {"messages": [USER, ANSWER]}


def write_jsonl(path: Path, values: list) -> Path:
    path.write_text("".join(json.dumps(value) + "\n" for value in values), encoding="utf-8")
    return path


def fixture_rows(name: str) -> list[dict]:
    return load_records(FIXTURES / name).rows


# --- shapes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "file_format", "source_shape", "shape", "count"),
    [
        ("messages.jsonl", "jsonl", "messages", "messages", 4),
        ("sharegpt.json", "json", "sharegpt", "messages", 3),
        ("alpaca.json", "json", "alpaca", "messages", 2),
        ("prompt_completion.csv", "csv", "prompt_completion", "prompt_completion", 2),
        ("prompt_completion.tsv", "tsv", "prompt_completion", "prompt_completion", 2),
        ("prompt_completion_conversational.jsonl", "jsonl", "prompt_completion", "prompt_completion", 1),
        ("preference.jsonl", "jsonl", "preference", "preference", 2),
        ("preference_conversational.jsonl", "jsonl", "preference", "preference", 2),
        ("preference_implicit.jsonl", "jsonl", "preference", "preference", 2),
        ("unpaired_preference.csv", "csv", "unpaired_preference", "unpaired_preference", 4),
        ("text.jsonl", "jsonl", "text", "text", 2),
        ("jsonl_named.json", "jsonl", "prompt_completion", "prompt_completion", 2),
    ],
)
def test_every_fixture_is_detected(name, file_format, source_shape, shape, count):
    result = load_records(FIXTURES / name)
    assert (result.file_format, result.source_shape, result.shape) == (file_format, source_shape, shape)
    assert len(result.rows) == count and result.skipped == {}


def test_openai_chat_keeps_system_tools_and_tool_turns():
    rows = fixture_rows("messages.jsonl")
    assert rows[1] == {"messages": [{"role": "system", "content": "You convert orders to JSON."},
                                    {"role": "user", "content": "A lamp."},
                                    {"role": "assistant", "content": '{"item": "lamp", "qty": 1}'},
                                    {"role": "user", "content": "Make it three."},
                                    {"role": "assistant", "content": '{"item": "lamp", "qty": 3}'}]}
    tool_row = rows[2]
    assert tool_row["tools"][0]["function"]["name"] == "stock_level"
    assert [m["role"] for m in tool_row["messages"]] == ["user", "assistant", "tool", "assistant"]
    call = tool_row["messages"][1]
    assert call["content"] == "" and call["tool_calls"][0]["id"] == "call_1"
    assert tool_row["messages"][2] == {"role": "tool", "content": '{"units": 14}', "tool_call_id": "call_1",
                                       "name": "stock_level"}


def test_text_parts_are_joined_and_unused_keys_dropped():
    rows = fixture_rows("messages.jsonl")
    assert rows[3]["messages"][0] == {"role": "user", "content": "Hello there"}
    assert "id" not in rows[1]


def test_sharegpt_speakers_become_roles():
    rows = fixture_rows("sharegpt.json")
    assert rows[0] == {"messages": [{"role": "user", "content": "Six green t-shirts."},
                                    {"role": "assistant", "content": '{"item": "t-shirt", "qty": 6}'}]}
    assert [m["role"] for m in rows[1]["messages"]] == ["system", "user", "assistant"]
    assert rows[2]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_alpaca_input_is_appended_to_the_instruction_only_when_present():
    rows = fixture_rows("alpaca.json")
    assert rows[0]["messages"][0] == {"role": "user", "content": "Convert the order to JSON.\n\nTwo red mugs"}
    assert rows[1] == {"messages": [{"role": "user", "content": "Say hello in French."},
                                    {"role": "assistant", "content": "Bonjour !"}]}


def test_csv_quoting_keeps_commas_and_line_breaks_inside_fields():
    rows = fixture_rows("prompt_completion.csv")
    assert rows[0] == {"prompt": "Two red mugs", "completion": '{"item": "mug", "qty": 2}'}
    assert rows[1] == {"prompt": "A lamp, and a tote", "completion": "Two items:\na lamp and a tote."}


def test_plain_and_conversational_preference_rows():
    plain = fixture_rows("preference.jsonl")[0]
    assert plain == {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    row = fixture_rows("preference_conversational.jsonl")[1]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["chosen"] == [{"role": "assistant", "content": "4"}]


def test_implicit_prompt_is_the_shared_prefix():
    first, second = fixture_rows("preference_implicit.jsonl")
    assert first == {"prompt": [{"role": "user", "content": "What colour is the sky?"}],
                     "chosen": [{"role": "assistant", "content": "Blue."}],
                     "rejected": [{"role": "assistant", "content": "Green."}]}
    assert len(second["prompt"]) == 3 and second["chosen"] == [{"role": "assistant", "content": "4"}]


def test_anthropic_hh_transcripts_are_conversations_sharing_their_prompt(tmp_path):
    """HH-RLHF rows: chosen and rejected are whole transcripts as text; the turns they share are the prompt."""
    history = "\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers.\n\nHuman: Another one?"
    rows = [{"chosen": history + "\n\nAssistant: Maybe Mittens.", "rejected": history + "\n\nAssistant: No."},
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?",
             "rejected": "\n\nHuman: Hi\n\nAssistant: What"},
            {"chosen": "plain text", "rejected": "\n\nHuman: Hi\n\nAssistant: x"}]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    loaded = load_records(path, skip_invalid=True)
    first, second = loaded.rows
    assert first["prompt"] == [{"role": "user", "content": "What is a good name for a cat?"},
                               {"role": "assistant", "content": "Whiskers."},
                               {"role": "user", "content": "Another one?"}]
    assert first["chosen"] == [{"role": "assistant", "content": "Maybe Mittens."}]
    assert first["rejected"] == [{"role": "assistant", "content": "No."}]
    assert second["prompt"] == [{"role": "user", "content": "Hi"}]
    assert loaded.skipped == {"missing_key": 1}
    with pytest.raises(DataError) as caught:  # one side a transcript, the other plain text: the hint names the form
        load_records(path)
    assert "line 3" in caught.value.message and "Anthropic HH-RLHF" in caught.value.hint


def test_ultrafeedback_binarized_pairs_repeating_their_text_prompt_are_read_once(tmp_path):
    """A text prompt beside chosen/rejected conversations that repeat it (UltraFeedback binarized): the prompt is read
    once; answer turns alone take the text as their user turn; a prompt the turns contradict is refused."""
    asked = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky colour?"}]
    rows = [{"prompt": "Sky colour?", "prompt_id": "a1", "score_chosen": 9.0, "score_rejected": 2.0,
             "chosen": [*asked, {"role": "assistant", "content": "Blue."}],
             "rejected": [*asked, {"role": "assistant", "content": "Green."}]},
            {"prompt": "Grass colour?", "chosen": [{"from": "gpt", "value": "Green."}],
             "rejected": [{"from": "gpt", "value": "Blue."}]},
            {"prompt": "Sea colour?", "chosen": [*asked, {"role": "assistant", "content": "Blue."}],
             "rejected": [*asked, {"role": "assistant", "content": "Red."}]}]
    loaded = load_records(write_jsonl(tmp_path / "binarized.jsonl", rows), skip_invalid=True)
    assert loaded.rows == [{"prompt": asked, "chosen": [{"role": "assistant", "content": "Blue."}],
                            "rejected": [{"role": "assistant", "content": "Green."}]},
                           {"prompt": [{"role": "user", "content": "Grass colour?"}],
                            "chosen": [{"role": "assistant", "content": "Green."}],
                            "rejected": [{"role": "assistant", "content": "Blue."}]}]
    assert loaded.skipped == {"prompt_mismatch": 1} and "'Sky colour?'" in loaded.problems[0]
    assert loaded.unused_columns == ["prompt_id", "score_chosen", "score_rejected"]
    # the dataset as published also holds `messages` (the chosen conversation, for SFT): a pair method reads the pairs
    published = [{**row, "messages": row["chosen"]} for row in rows[:1] * 3]
    path = write_jsonl(tmp_path / "published.jsonl", published)
    assert load_records(path).source_shape == "messages"
    from tunesmith.data.formats import load_rows

    pairs = load_rows(path, ("preference",), "method.kind dpo")
    assert pairs.source_shape == "preference" and pairs.rows[0]["chosen"] == [{"role": "assistant",
                                                                                  "content": "Blue."}]
    kto = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "Hi", "completion": "Go.", "label": False}] * 2)
    with pytest.raises(DataError, match="holds unpaired_preference rows"):  # never read as SFT's prompt-completion
        load_rows(kto, ("messages", "prompt_completion"), "supervised fine-tuning")


def test_scored_completions_pair_the_best_answer_against_the_worst(tmp_path):
    """UltraFeedback's raw rows (instruction, completions each with a response and scores) and distilabel's
    generations/ratings become preference pairs: the highest score chosen, the lowest rejected; rows that cannot
    make a pair are named."""
    ultrafeedback = [{"source": "evol", "instruction": "2+2?", "models": ["a", "b", "c"],
                      "completions": [{"model": "a", "response": "5", "overall_score": 3, "fine-grained_score": 1.5},
                                      {"model": "b", "response": "4", "overall_score": 9, "fine-grained_score": 4.75},
                                      {"model": "c", "response": "four-ish", "overall_score": 6}]},
                     {"instruction": "Tie?", "completions": [{"response": "x", "overall_score": 5},
                                                             {"response": "y", "overall_score": 5}]},
                     {"instruction": "One?", "completions": [{"response": "x", "overall_score": 5}]},
                     {"instruction": "Unscored?", "completions": [{"response": "x"}, {"response": "y", "score": 2}]},
                     {"prompt": "Text scores?", "completions": [{"text": "low", "score": "1"},
                                                                {"text": "high", "score": "7.5"}]}]
    loaded = load_records(write_jsonl(tmp_path / "ultrafeedback.jsonl", ultrafeedback), skip_invalid=True)
    assert (loaded.source_shape, loaded.shape) == ("scored_completions", "preference")
    assert loaded.rows == [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
                           {"prompt": "Text scores?", "chosen": "high", "rejected": "low"}]
    assert loaded.skipped == {"no_preference": 3}  # a tie, one answer, one scored answer
    assert any("1 of the row's 2 answers have a score" in problem for problem in loaded.problems)
    assert loaded.unused_columns == ["models", "source"]
    distilabel = [{"instruction": "Capital of France?", "generations": ["Lyon", "Paris", "France", "Nice"],
                   "ratings": [2, 5, 1, None], "ultrafeedback_model": "gpt-4"},
                  {"instruction": [{"role": "user", "content": "Capital of Italy?"}],  # turns; best = worst text
                   "generations": ["Rome", "Rome", "Milan"], "ratings": ["5", 1, "3"]}]
    loaded = load_records(write_jsonl(tmp_path / "distilabel.jsonl", distilabel))
    assert loaded.rows == [{"prompt": "Capital of France?", "chosen": "Paris", "rejected": "France"},
                           {"prompt": [{"role": "user", "content": "Capital of Italy?"}],
                            "chosen": [{"role": "assistant", "content": "Rome"}],
                            "rejected": [{"role": "assistant", "content": "Milan"}]}]
    for bad in (float("nan"), True):
        with pytest.raises(DataError, match=r"generations\[1\]/ratings\[1\]: the score 'rating' is .*not a finite"):
            load_records(write_jsonl(tmp_path / "bad.jsonl", [{**distilabel[0], "ratings": [2, bad, 1, None]}]))
    with pytest.raises(DataError, match="line 1: 'generations' and 'ratings' must be lists of the same length"):
        load_records(write_jsonl(tmp_path / "uneven.jsonl", [{**distilabel[0], "ratings": [2, 5]}]))


def test_feedback_logs_label_kto_rows_and_an_unread_rating_is_warned_of_for_sft(tmp_path):
    """Thumbs and ratings read as KTO's label; the same column left out of SFT rows is said, with both ways on."""
    from tunesmith.data.shapes import feedback_warnings

    rows = [{"prompt": f"Greet {i}", "completion": "Hello!" if i % 2 else "Go away.",
             "thumbs": ["down", "up", "👎", "👍"][i % 4], "id": i} for i in range(8)]
    path = write_jsonl(tmp_path / "log.jsonl", rows)
    loaded = load_records(path)
    assert loaded.shape == "prompt_completion" and loaded.feedback_columns["thumbs"].values == ["'down'", "'up'",
                                                                                                 "'👎'", "'👍'"]
    warning, = feedback_warnings(loaded.feedback_columns, loaded.source_shape)
    assert "column 'thumbs' is left out" in warning and "--set data.columns.thumbs=label" in warning
    stars = load_records(write_jsonl(tmp_path / "stars.jsonl", [{**row, "thumbs": 1 + i % 5} for i, row in
                                                                 enumerate(rows)]))
    warning, = feedback_warnings(stars.feedback_columns, stars.source_shape)  # 1-5 stars: no label as they stand
    assert "(1, 2, 3, 4, ...)" in warning and "data.columns" not in warning and "true/false label" in warning
    labelled = load_records(path, columns={"thumbs": "label"})
    assert [row["label"] for row in labelled.rows] == [False, True] * 4
    constant = load_records(write_jsonl(tmp_path / "all_up.jsonl", [{**row, "thumbs": "up"} for row in rows]))
    assert constant.feedback_columns == {}  # a column with one value judges nothing apart
    with pytest.raises(DataError) as caught:
        load_records(write_jsonl(tmp_path / "words.jsonl", [{**rows[0], "label": "4 stars"}]))
    assert "'label' must be true or false" in caught.value.message and "up/down" in caught.value.hint


def test_unpaired_labels_from_csv_words_become_booleans():
    assert [row["label"] for row in fixture_rows("unpaired_preference.csv")] == [True, False, True, False]


def test_conversational_prompt_completion():
    row = fixture_rows("prompt_completion_conversational.jsonl")[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["completion"] == [{"role": "assistant", "content": '{"item": "mug", "qty": 2}'}]


def test_forced_shape_overrides_detection(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c", "text": "t"}])
    assert load_records(path, shape="text").rows == [{"text": "t"}]
    assert load_records(path).shape == "prompt_completion"
    with pytest.raises(DataError, match="Unknown dataset shape 'chat'"):
        load_records(path, shape="chat")


# --- file formats -------------------------------------------------------------------------------------


def test_parquet_holds_the_same_rows_as_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = (FIXTURES / "preference_conversational.jsonl").read_text(encoding="utf-8").splitlines()
    values = [json.loads(line) for line in lines]
    pq.write_table(pa.Table.from_pylist(values), tmp_path / "pref.parquet")
    result = load_records(tmp_path / "pref.parquet")
    assert result.file_format == "parquet" and result.shape == "preference"
    assert result.rows == fixture_rows("preference_conversational.jsonl")


def test_parquet_is_recognised_by_its_magic_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"text": "a"}, {"text": "b"}]), tmp_path / "blob.bin")
    assert load_records(tmp_path / "blob.bin").file_format == "parquet"


def test_struct_columns_from_arrow_fill_missing_message_keys_with_null(tmp_path):
    from datasets import Dataset

    Dataset.from_list(fixture_rows("messages.jsonl")).save_to_disk(tmp_path / "chat")
    result = load_records(tmp_path / "chat")
    assert result.file_format == "datasets"
    assert result.rows[0] == fixture_rows("messages.jsonl")[0]  # null tool_calls/name/tools dropped again
    assert result.rows[2]["messages"][2]["tool_call_id"] == "call_1"


def test_dataset_dict_folder_reads_the_train_split(tmp_path):
    from datasets import Dataset, DatasetDict

    splits = DatasetDict({"train": Dataset.from_list([{"text": "t1"}, {"text": "t2"}]),
                          "test": Dataset.from_list([{"text": "x"}])})
    splits.save_to_disk(tmp_path / "dd")
    assert load_records(tmp_path / "dd").rows == [{"text": "t1"}, {"text": "t2"}]


def test_dataset_dict_without_train_split_asks_which(tmp_path):
    from datasets import Dataset, DatasetDict

    splits = DatasetDict({"a": Dataset.from_list([{"text": "x"}]), "b": Dataset.from_list([{"text": "y"}])})
    splits.save_to_disk(tmp_path / "dd")
    with pytest.raises(DataError, match=r"splits \['a', 'b'\]"):
        load_records(tmp_path / "dd")


def test_json_array_under_data_key_and_single_object(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"text": "only"}), encoding="utf-8")
    assert load_records(tmp_path / "one.json").rows == [{"text": "only"}]


@pytest.mark.parametrize(
    ("content", "fmt", "name"),
    [('[{"text": "a"}]', "json", "data.txt"), ('{"text": "a"}\n{"text": "b"}\n', "jsonl", "data.txt"),
     ("text,x\na,1\n", "csv", "data.dat"), ("text\tx\na\t1\n", "tsv", "data.dat"),
     ("Prose, with a comma.\n", "text", "data.txt")],
)
def test_unknown_extension_is_sniffed_from_contents(tmp_path, content, fmt, name):
    """JSON saved as .txt is still JSON; other .txt is prose (its commas do not make it CSV)."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert load_records(path).file_format == fmt


def test_forced_format_beats_the_extension(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("text\nhello\n", encoding="utf-8")
    assert load_records(path, fmt="csv").rows == [{"text": "hello"}]
    assert load_records(path).rows == [{"text": "text\nhello"}]  # .txt alone: one paragraph of prose
    unknown = tmp_path / "rows.dat"
    unknown.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"cannot tell the file format(.|\n)*--set data.file_format=jsonl"):
        load_records(unknown)


@pytest.mark.parametrize(
    ("fmt", "problem"),
    [("xml", "Unknown file format 'xml'"), ("datasets", "needs a folder written by save_to_disk")],
)
def test_bad_forced_format_is_explained(tmp_path, fmt, problem):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(DataError, match=problem):
        load_records(path, fmt=fmt)


# --- BOM, CRLF, blank lines ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("bom_crlf.jsonl", [{"prompt": "hi", "completion": "hello"},
                            {"prompt": "bye", "completion": "goodbye"}]),
        ("bom_crlf.csv", [{"prompt": "hi", "completion": "hello"},
                          {"prompt": "bye", "completion": "good\r\nbye"}]),
        ("bom_crlf.json", [{"text": "café"}, {"text": "tea"}]),
    ],
)
def test_bom_crlf_and_trailing_blank_lines_load_as_expected(name, rows):
    raw = (FIXTURES / name).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw  # the fixture still has what it tests
    assert load_records(FIXTURES / name).rows == rows


def test_line_numbers_count_blank_lines_and_multi_line_csv_fields(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n\nhi,"two\nlines"\nbad,row,extra\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv, line 5: has 3 fields but the header names 2 columns"):
        load_records(path)


def test_unicode_line_separators_inside_jsonl_strings_do_not_split_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b\x0cc\x1dd"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_records(path).rows == [{"text": "a\u2028b\x0cc\x1dd"}]


# --- column mapping -------------------------------------------------------------------------------------


def test_columns_are_mapped_before_detection():
    result = load_records(FIXTURES / "qa.csv", columns={"question": "prompt", "answer": "completion"})
    assert result.shape == "prompt_completion"
    assert result.unused_columns == ["notes"]  # left out of the rows: `data inspect` says so
    assert result.rows[1] == {"prompt": "What sizes do totes come in?", "completion": "S, M and L."}


def test_without_mapping_the_unknown_columns_are_named():
    with pytest.raises(DataError, match=r"qa\.csv, line 2: cannot tell the dataset shape from keys "
                                        r"\['answer', 'notes', 'question'\]"):
        load_records(FIXTURES / "qa.csv")


def test_the_mapping_suggested_names_the_rows_own_columns(tmp_path):
    """A CPT user's {"content": ...} rows were told `--set data.columns.question=prompt`."""
    one = write_jsonl(tmp_path / "one.jsonl", [{"content": "Brindlemoor has a mill.", "id": 3}])
    with pytest.raises(DataError) as caught:
        load_records(one)
    assert "`--set data.columns.content=text`" in caught.value.hint
    assert load_records(one, columns={"content": "text"}).shape == "text"  # the suggestion works as given
    two = write_jsonl(tmp_path / "two.jsonl", [{"ask": "Where is the mill?", "reply": "By the river."}])
    with pytest.raises(DataError) as caught:
        load_records(two)
    assert "`--set data.columns.ask=prompt --set data.columns.reply=completion`" in caught.value.hint
    assert load_records(two, columns={"ask": "prompt", "reply": "completion"}).shape == "prompt_completion"


def test_mapped_column_wins_over_an_existing_one(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "old", "body": "new"}])
    assert load_records(path, columns={"body": "text"}).rows == [{"text": "new"}]


def test_two_columns_mapped_onto_one_name_are_refused():
    """`question=prompt, answer=completion, notes=completion` trained the notes as answers, the answers lost."""
    with pytest.raises(DataError, match=r"\['answer', 'notes'\] all onto 'completion'"):
        load_records(FIXTURES / "qa.csv", columns={"question": "prompt", "answer": "completion", "notes": "completion"})


def test_mapping_must_be_names_to_names(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(DataError, match="`columns` must map"):
        load_records(path, columns={"question": 3})


# --- validation: one error per kind of problem, named by file and line ------------------------------------


BAD_ROWS = [
    ('{"messages": [', "bad_json", "not valid JSON"),
    ("[1, 2]", "not_an_object", "expected a JSON object, got list"),
    ('{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}',
     "unknown_role", r"messages\[0\] has unknown role 'robot'"),
    ('{"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}',
     "missing_key", "has no 'role'"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}',
     "empty_assistant", r"messages\[1\] is an empty assistant turn"),
    ('{"messages": [{"role": "user", "content": "x"}]}',
     "missing_assistant", "last message must be a non-empty assistant"),
    ('{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "y"}]}',
     "empty_user", r"messages\[0\] is an empty user turn \(its content is null"),

    ('{"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}, '
     '{"role": "assistant", "content": "z"}]}',
     "alternation", r"messages\[1\]: 'user' cannot follow 'user' \(expected 'assistant'\)"),
    ('{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "y"}, '
     '{"role": "assistant", "content": "z"}]}', "alternation", "'assistant' cannot come first"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}, '
     '{"role": "assistant", "content": "z"}]}', "alternation", "'system' cannot follow 'user'"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "42"}, '
     '{"role": "assistant", "content": "z"}]}', "alternation", "'tool' cannot follow 'user'"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}, '
     '{"role": "tool", "content": "42"}, {"role": "assistant", "content": "z"}]}', "alternation",
     "'tool' cannot follow 'assistant' \\(expected 'user'\\)"),
    ('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}',
     "wrong_type", r"messages\[0\]\.content must be a string, got 5"),
    ('{"messages": "hello"}', "wrong_type", "'messages' must be a list, got str"),
    ('{"messages": []}', "empty", "'messages' must be a non-empty list"),
    ('{"messages": ["hi", "there"]}', "wrong_type", r"messages\[0\] must be an object"),
    ('{"messages": [{"role": "user", "content": "x"}, '
     '{"role": "assistant", "content": "", "tool_calls": [{}]}]}',
     "wrong_type", r"tool_calls\[0\] must be an object with a 'function'"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "tools": 3}',
     "wrong_type", "'tools' must be a list"),
    # tool-calling rows a newcomer's trial trained without a word
    *[(json.dumps({"messages": [{"role": "user", "content": "warm it up"}, {"role": "assistant", "content": "",
                                "tool_calls": [{"type": "function", "function": {"name": "set_heat",
                                                                                 "arguments": arguments}}]},
                               {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "Done."}]}),
       "wrong_type", problem)
      for arguments, problem in [("{temperature: 20", r"function\.arguments is not JSON: '\{temperature: 20'"),
                                 ("20", r"function\.arguments must be a JSON object, got '20'"),
                                 (json.dumps(json.dumps({"temperature": 20})), "encoded twice")]],
    (json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                 "tools": [{"type": "function", "function": {"description": "no name"}}]}),
     "wrong_type", r"tools\[0\] names no function"),
    (json.dumps({"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function",
                                                             "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "zz9", "content": "ok"}, {"role": "assistant", "content": "Done."}]}),
     "unknown_call_id", r"tool_call_id 'zz9' answers none of the calls before it \(their ids: \['c1'\]\)"),
    ('{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "y"}]}',
     "undecodable", "lone surrogate"),
    ('{"text": "hi"}', "missing_key", r"a messages row needs \['messages'\]"),
]
BAD_ROW_IDS = [f"{reason}-{index}" for index, (_, reason, _) in enumerate(BAD_ROWS)]


@pytest.mark.parametrize(("line", "reason", "problem"), BAD_ROWS, ids=BAD_ROW_IDS)
def test_bad_conversation_rows_are_named_by_file_and_line(tmp_path, line, reason, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=problem) as info:
        load_records(path)
    assert str(info.value).startswith(f"{path}, line 3: ")


@pytest.mark.parametrize(("line", "reason", "problem"), BAD_ROWS, ids=BAD_ROW_IDS)
def test_skip_invalid_skips_each_problem_under_its_reason(tmp_path, line, reason, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n", encoding="utf-8")
    result = load_records(path, skip_invalid=True)
    assert result.rows == [GOOD] and result.skipped == {reason: 1}
    assert result.problems[0].startswith(f"{path}, line 2: ")


SHAPE_BAD_ROWS = [
    ({"prompt": "", "completion": "c"}, "empty", "'prompt' must be a non-empty string, got ''"),
    ({"prompt": "p", "completion": "  "}, "empty_assistant", "'completion' must be a non-empty string"),
    ({"prompt": "p", "completion": ["c"]},
     "wrong_type", r"must all be strings or all be lists.*completion: list"),
    ({"prompt": [{"role": "user", "content": "p"}], "completion": [{"role": "user", "content": "c"}]},
     "alternation", r"completion\[0\] must be an assistant turn"),
    ({"prompt": "p", "completion": "c", "label": "maybe"},
     "wrong_type", "'label' must be true or false, got 'maybe'"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "identical_pair", "identical"),
    ({"prompt": "p", "chosen": "water it weekly", "rejected": "water it  weekly "}, "identical_pair",
     "differ in whitespace or invisible characters alone"),  # data.clean.normalize would make them one
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b"}],
      "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b\u200b"}]},
     "identical_pair", "differ in whitespace or invisible characters alone"),
    ({"prompt": "p", "chosen": True, "rejected": "b"}, "wrong_type", "must all be strings or all be lists"),
    ({"chosen": "a", "rejected": "b"},
     "missing_key", "without 'prompt' must give 'chosen' and 'rejected' as whole"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other q"}, {"role": "assistant", "content": "b"}]},
     "no_shared_prompt", "must start with the same prompt turns"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     "identical_pair", "identical"),
    ({"instruction": "  ", "output": "o"}, "empty", "'instruction' must be a non-empty string"),
    ({"instruction": "i", "input": 3, "output": "o"}, "wrong_type", "input must be a string, got 3"),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "unknown_role", "unknown speaker 'bot'"),
    ({"text": None}, "wrong_type", "'text' must be a non-empty string, got None"),
]


@pytest.mark.parametrize(("value", "reason", "problem"), SHAPE_BAD_ROWS,
                         ids=[f"{r}-{i}" for i, (_, r, _) in enumerate(SHAPE_BAD_ROWS)])
def test_bad_rows_of_every_shape_are_refused(tmp_path, value, reason, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [value])
    with pytest.raises(DataError, match=problem) as info:
        load_records(path)
    assert str(info.value).startswith(f"{path}, line 1: ")
    with pytest.raises(DataError, match=rf"no usable rows; skipped 1 \(1 {reason}\)"):
        load_records(path, skip_invalid=True)


def test_skip_invalid_counts_every_reason_in_one_file():
    result = load_records(FIXTURES / "invalid_mixed.jsonl", skip_invalid=True)
    assert [row["messages"][0]["content"] for row in result.rows] == ["Two mugs.", "A lamp."]
    assert result.skipped == {"bad_json": 1, "not_an_object": 1, "unknown_role": 1, "empty_assistant": 1,
                              "missing_assistant": 1, "alternation": 1, "wrong_type": 1, "missing_key": 1,
                              "undecodable": 1}
    assert [problem.split(": ", 1)[0].rsplit(" ", 1)[-1] for problem in result.problems] == [
        str(n) for n in range(2, 11)]


def test_without_skip_invalid_the_first_bad_line_stops_the_load():
    with pytest.raises(DataError, match=r"invalid_mixed\.jsonl, line 2: not valid JSON"):
        load_records(FIXTURES / "invalid_mixed.jsonl")


def test_undecodable_bytes_name_the_line_in_every_text_format(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    (tmp_path / "a.csv").write_bytes(b"text\nok\ncaf\xe9\n")
    (tmp_path / "a.json").write_bytes(b'[{"text": "ok"},\n {"text": "caf\xe9"}]')
    for name, where in (("a.jsonl", "line 2"), ("a.csv", "line 3"), ("a.json", "line 2")):
        with pytest.raises(DataError, match=f"{name}, {where}: not valid UTF-8"):
            load_records(tmp_path / name)
    assert load_records(tmp_path / "a.csv", skip_invalid=True).skipped == {"undecodable": 1}
    # a file no line of which decodes (Latin-1 throughout) is named as such, even when invalid rows may be skipped:
    # "cannot tell the dataset shape" sent people to data.columns
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n{"text": "na\xefve"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl, line 1: not valid UTF-8"):
        load_records(tmp_path / "latin1.jsonl", skip_invalid=True)


def test_utf16_with_a_byte_order_mark_is_read_and_other_encodings_are_named(tmp_path):
    rows = [{"prompt": "Café ☕ order?", "completion": "Größe M"}, {"prompt": "two", "completion": "2"}]
    csv_text = "prompt,completion\r\n" + "".join(f"{r['prompt']},{r['completion']}\r\n" for r in rows)
    (tmp_path / "excel.csv").write_bytes(csv_text.encode("utf-16"))  # Excel's "Unicode Text": UTF-16 with a BOM
    (tmp_path / "no_suffix").write_bytes(csv_text.encode("utf-16"))
    (tmp_path / "ps.jsonl").write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                                        .encode("utf-16-be").join([b"\xfe\xff", b""]))  # PowerShell's `>`
    (tmp_path / "utf8.csv").write_text(csv_text, encoding="utf-8")
    expected = load_records(tmp_path / "utf8.csv").rows
    assert len(expected) == 2 and "Café ☕ order?" in json.dumps(expected, ensure_ascii=False)
    for name in ("excel.csv", "no_suffix", "ps.jsonl"):
        assert load_records(tmp_path / name).rows == expected, name
    (tmp_path / "nobom.csv").write_bytes(csv_text.encode("utf-16-le"))
    with pytest.raises(DataError, match="looks UTF-16") as raised:
        load_records(tmp_path / "nobom.csv")
    assert "iconv -f utf-16le -t utf-8" in raised.value.hint
    (tmp_path / "latin.csv").write_bytes(csv_text.encode("cp1252", errors="replace"))
    with pytest.raises(DataError, match="line 2: not valid UTF-8") as raised:
        load_records(tmp_path / "latin.csv")
    assert "iconv -f cp1252" in raised.value.hint


@pytest.mark.parametrize(("encoding", "text"), [
    ("cp1251", "Извлеки имя, город и дату: Иван живёт в Москве с 2020 года, пишет письма друзьям."),
    ("shift_jis", "名前は田中、都市は東京です。日付は二〇二六年五月一日。よろしくお願いします。"),
    ("cp1252", "Grüße aus München, schöne Straße, Käse und Brötchen zum Frühstück."),
])
def test_a_file_in_a_legacy_code_page_is_named_with_the_iconv_command_that_reads_it(tmp_path, encoding, text):
    """A Cyrillic Windows file was told `iconv -f cp1252`, which turned it into `Èçâëåêè` and was then accepted (a
    newcomer's trial): the hint names the code page the bytes read as, with a sample to recognise, and following it
    gives the text back."""
    import subprocess

    rows = "".join(json.dumps({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": text}]},
                              ensure_ascii=False) + "\n" for _ in range(3))
    source = tmp_path / "rows.jsonl"
    source.write_bytes(rows.encode(encoding))
    with pytest.raises(DataError, match="not valid UTF-8") as raised:
        load_records(source)
    command = raised.value.hint.split("`")[1]
    assert f"iconv -f {encoding.replace('_', '-')} -t utf-8" in command or (
        encoding == "shift_jis" and "iconv -f cp932 -t utf-8" in command)  # Microsoft's superset of Shift-JIS
    subprocess.run(command, shell=True, check=True, cwd=tmp_path)
    assert load_records(tmp_path / "rows.utf8.jsonl").rows[0]["messages"][0]["content"] == text


def test_stray_bytes_in_plain_text_name_their_line_and_leave_the_rest(tmp_path):
    """A UTF-8 text file with one stray byte: the paragraph and line are named, the hint drops the byte (converting
    from cp1252 would garble every accented letter), and skip_invalid leaves that paragraph out alone."""
    paragraphs = ["Café naïve résumé, first.", "Second paragraph\nwith a stray \xff byte.", "Third, déjà vu."]
    data = "\n\n".join(paragraphs).encode("utf-8").replace("\xff".encode(), b"\xff")
    (tmp_path / "manual.txt").write_bytes(data)
    with pytest.raises(DataError, match=r"manual\.txt, line 3: not valid UTF-8 \(at line 4\)") as raised:
        load_records(tmp_path / "manual.txt")
    assert "iconv -c -f utf-8 -t utf-8" in raised.value.hint and "cp1252" not in raised.value.hint
    loaded = load_records(tmp_path / "manual.txt", skip_invalid=True)
    assert loaded.skipped == {"undecodable": 1}
    assert [row["text"] for row in loaded.rows] == [paragraphs[0], paragraphs[2]]


def test_an_excel_workbook_is_refused_with_how_to_save_it_as_csv(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "tickets.xlsx", "w") as book:
        book.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(DataError, match=r"tickets\.xlsx: is a zip archive \(an Excel workbook") as raised:
        load_records(tmp_path / "tickets.xlsx")
    assert "CSV UTF-8" in raised.value.hint


def test_bad_json_document_names_its_line(tmp_path):
    (tmp_path / "a.json").write_text('[\n {"text": "a"},\n {"text": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.json, line 3: not valid JSON \(Expecting value"):
        load_records(tmp_path / "a.json")


def test_rows_of_a_json_array_are_named_by_index(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"text": "a"}, {"text": ""}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.json, row index 1: 'text' must be a non-empty string"):
        load_records(tmp_path / "a.json")


def test_scalar_json_document_is_refused(tmp_path):
    (tmp_path / "a.json").write_text("42", encoding="utf-8")
    with pytest.raises(DataError, match="expected an array of records"):
        load_records(tmp_path / "a.json")


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [("x.parquet", b"PAR1 not really", "not a readable Parquet file"),
     ("empty.jsonl", b"\n\n  \n", "holds no rows"),
     ("empty.csv", b"", "holds no rows"),
     ("header_only.csv", b"prompt,completion\n", "holds no rows"),
     ("dup.csv", b"text,text\na,b\n", r"columns \['text'\] appear more than once"),
     ("quote.csv", b'text\nok\n"never closed\nstill open\n', r"quote\.csv, line 3: cannot be parsed as CSV"),
     ("junk.tsv", b'text\n"q"x\n', r"junk\.tsv, line 2: cannot be parsed as TSV")],
)
def test_whole_file_problems(tmp_path, name, content, problem):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=problem):
        load_records(tmp_path / name)


def test_missing_file_and_foreign_folder(tmp_path):
    with pytest.raises(DataError, match="Dataset file not found") as missing:
        load_records(tmp_path / "nope.jsonl")
    assert "did you mean" not in missing.value.message
    (tmp_path / "conv_train.jsonl").write_text('{"text": "hi"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"conv_trian\.jsonl \(did you mean .*conv_train\.jsonl\?\)"):
        load_records(tmp_path / "conv_trian.jsonl")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.pdf").write_bytes(b"%PDF-1.4")
    with pytest.raises(DataError, match=r"holds no data files \(it holds only notes\.pdf\)"):
        load_records(tmp_path / "folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no data files \\(it is empty\\)") as empty:
        load_records(tmp_path / "empty")
    assert "save_to_disk folder" not in empty.value.message and "Put the data files in it" in empty.value.hint


def test_when_every_row_is_skipped_the_load_fails_with_the_counts(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": ""}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"no usable rows; skipped 2 \(1 bad_json, 1 empty\)"):
        load_records(path, skip_invalid=True)


# --- load_conversations (SFT) on top of the loaders --------------------------------------------------------


@pytest.mark.parametrize("name", ["messages.jsonl", "sharegpt.json", "alpaca.json", "prompt_completion.csv",
                                  "prompt_completion_conversational.jsonl", "bom_crlf.jsonl"])
def test_sft_reads_every_conversational_shape(name):
    rows = load_conversations(FIXTURES / name)
    assert rows and all(row["messages"][-1]["role"] == "assistant" for row in rows)


def test_sft_refuses_preference_data_by_name():
    with pytest.raises(DataError, match="holds preference rows; supervised fine-tuning needs messages") as err:
        load_conversations(FIXTURES / "preference.jsonl")
    assert "dpo" in err.value.hint


def test_sft_system_prompt_is_not_doubled():
    rows = load_conversations(FIXTURES / "sharegpt.json", system_prompt="Be kind.")
    assert [row["messages"][0]["content"] for row in rows] == ["Be kind.", "Answer in JSON.", "Be brief."]


# --- properties: whatever the input, only tunesmith's own error escapes ------------------------------------


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
ROLE_NAMES = st.sampled_from(["system", "user", "assistant", "tool", "human", "gpt", "robot"])
TOOL_CALLS = st.lists(st.fixed_dictionaries({"function": st.fixed_dictionaries(
    {}, optional={"name": st.text(max_size=4), "arguments": st.text(max_size=4) | JSON_VALUES})}), max_size=2)
OPENAI_TURN = st.fixed_dictionaries(
    {"role": ROLE_NAMES, "content": st.text(max_size=5) | JSON_VALUES},
    optional={"tool_calls": TOOL_CALLS | JSON_VALUES, "tool_call_id": JSON_SCALARS})
SHAREGPT_TURN = st.fixed_dictionaries({"from": ROLE_NAMES, "value": st.text(max_size=5) | JSON_SCALARS})
TURNS = st.lists(OPENAI_TURN | SHAREGPT_TURN | JSON_VALUES, max_size=5)
FIELD = JSON_VALUES | TURNS | st.text(max_size=5)
SHAPED = st.sampled_from([("messages",), ("conversations",), ("prompt", "completion"), ("chosen", "rejected"),
                          ("prompt", "chosen", "rejected"), ("prompt", "completion", "label"),
                          ("instruction", "input", "output"), ("text",)]).flatmap(
    lambda keys: st.fixed_dictionaries({key: FIELD for key in keys}, optional={"tools": JSON_VALUES}))
# tmp_path is shared by a test's examples on purpose: each example overwrites the same file.
PROPERTY = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def load_quietly(path: Path, **options) -> list[dict]:
    """Load, allowing only TunesmithError; rows that do load must be writable as UTF-8 JSON lines."""
    try:
        rows = load_records(path, **options).rows
    except TunesmithError:
        return []
    for row in rows:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    return rows


@PROPERTY
@given(values=st.lists(JSON_VALUES | SHAPED, min_size=1, max_size=5), skip=st.booleans())
def test_arbitrary_json_values_as_jsonl(tmp_path, values, skip):
    path = tmp_path / "any.jsonl"
    path.write_text("\n".join(json.dumps(value) for value in values), encoding="utf-8")
    load_quietly(path, skip_invalid=skip)


@PROPERTY
@given(value=JSON_VALUES | st.lists(SHAPED, max_size=4), skip=st.booleans())
def test_arbitrary_json_document(tmp_path, value, skip):
    path = tmp_path / "any.json"
    path.write_text(json.dumps(value), encoding="utf-8")
    load_quietly(path, skip_invalid=skip)


@PROPERTY
@given(data=st.binary(max_size=200), skip=st.booleans(),
       name=st.sampled_from(["a.jsonl", "a.json", "a.csv", "a.tsv", "a.parquet", "a"]))
def test_arbitrary_bytes(tmp_path, data, name, skip):
    (tmp_path / name).write_bytes(data)
    load_quietly(tmp_path / name, skip_invalid=skip)


@PROPERTY
@given(text=st.text(alphabet=st.sampled_from(',\t"\r\n\x00\ufeffab{}[]:\\'), max_size=60),
       name=st.sampled_from(["a.csv", "a.tsv", "a.jsonl", "a.json"]))
def test_arbitrary_delimited_and_json_text(tmp_path, text, name):
    (tmp_path / name).write_bytes(text.encode("utf-8"))
    load_quietly(tmp_path / name, skip_invalid=True)
    load_quietly(tmp_path / name, columns={"a": "text", "b": "prompt"})


@PROPERTY
@given(name=st.sampled_from(["messages.jsonl", "sharegpt.json", "prompt_completion.csv", "bom_crlf.csv",
                             "unpaired_preference.csv", "prompt_completion.tsv",
                             "preference_implicit.jsonl"]),
       edits=st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=3), st.integers(0, 3)),
                      min_size=1, max_size=4))
def test_corrupted_fixtures(tmp_path, name, edits):
    data = bytearray((FIXTURES / name).read_bytes())
    for position, insert, cut in edits:
        at = position % (len(data) + 1)
        data[at:at + cut] = insert
    (tmp_path / name).write_bytes(bytes(data))
    load_quietly(tmp_path / name)
    load_quietly(tmp_path / name, skip_invalid=True)


@PROPERTY
@given(turns=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8)).filter(
    lambda pair: pair[0].strip() and pair[1].strip()), min_size=1, max_size=4), system=st.none() | st.text(max_size=8))
def test_valid_conversations_come_back_unchanged(tmp_path, turns, system):
    messages = [{"role": "system", "content": system}] if system is not None else []
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    path = write_jsonl(tmp_path / "ok.jsonl", [{"messages": messages}])
    assert load_records(path).rows == [{"messages": messages}]


def test_a_column_mapping_written_the_wrong_way_round_is_refused_with_the_direction(tmp_path: Path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"'prompt' and 'completion'.*data\.columns\.question=prompt"):
        load_records(path)
    with pytest.raises(DataError, match=r"maps \['prompt', 'completion'\] but no row has such a column") as caught:
        load_records(path, columns={"prompt": "question", "completion": "answer"})
    assert "question" in str(caught.value) and "{your_column: expected}" in str(caught.value)
    rows = load_records(path, columns={"question": "prompt", "answer": "completion"}).rows
    assert rows[1] == {"prompt": "Capital of France?", "completion": "Paris"}
    # data.columns applies to every data file: one that already has the names it maps onto needs no mapping
    named = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "What is 3+3?", "completion": "6"}])
    assert load_records(named, columns={"question": "prompt", "answer": "completion"}).rows == [
        {"prompt": "What is 3+3?", "completion": "6"}]


def test_a_file_whose_rows_are_all_skipped_gets_the_rows_own_hint(tmp_path: Path):
    path = tmp_path / "sg.jsonl"
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]})
                    + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no usable rows(.|\n)*unknown speaker 'bot'(.|\n)*Hint: ShareGPT turns use"):
        load_records(path, skip_invalid=True)


def test_a_json_number_answer_reads_as_the_same_cell_of_a_csv_does(tmp_path):
    jsonl, csv = tmp_path / "counts.jsonl", tmp_path / "counts.csv"
    jsonl.write_text('{"prompt": "How many?", "completion": 8}\n{"prompt": "Half of 5?", "completion": 2.5}\n',
                     encoding="utf-8")
    csv.write_text("prompt,completion\nHow many?,8\nHalf of 5?,2.5\n", encoding="utf-8")
    assert load_records(jsonl).rows == load_records(csv).rows
    assert [row["completion"] for row in load_records(jsonl).rows] == ["8", "2.5"]
    flag = tmp_path / "flag.jsonl"
    flag.write_text('{"prompt": "Is it?", "completion": true}\n', encoding="utf-8")  # not a number: which spelling?
    with pytest.raises(DataError, match=r"must all be strings or all be lists of messages .*completion: bool"):
        load_records(flag)


def test_alpaca_history_becomes_the_turns_before_the_instruction(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    row = {"system": "Be brief.", "history": [["What is 1+1?", "2"], ["And 2+2?", "4"]], "instruction": "And 3+3?",
           "input": "", "output": "6"}
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "history": "1+1=2"}) + "\n", encoding="utf-8")
    result = load_records(path, skip_invalid=True)
    assert [(m["role"], m["content"]) for m in result.rows[0]["messages"]] == [
        ("system", "Be brief."), ("user", "What is 1+1?"), ("assistant", "2"), ("user", "And 2+2?"),
        ("assistant", "4"), ("user", "And 3+3?"), ("assistant", "6")]
    assert result.skipped == {"wrong_type": 1} and "'history' must be a list of [user, assistant] pairs" in \
        result.problems[0]


def test_an_assistant_turn_with_weight_0_is_context_not_an_answer(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    from tunesmith.data.template import encode_sequence

    path = tmp_path / "weights.jsonl"
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "BAD ANSWER", "weight": 0},
             {"role": "user", "content": "again"}, {"role": "assistant", "content": "good", "weight": 1}]
    bad = [{**turns[0]}, {"role": "assistant", "content": "x", "weight": 0.5}]
    path.write_text(json.dumps({"messages": turns}) + "\n" + json.dumps({"messages": bad}) + "\n", encoding="utf-8")
    result = load_records(path, skip_invalid=True)
    assert result.skipped == {"wrong_type": 1} and "messages[1].weight must be 0 or 1" in result.problems[0]
    messages = result.rows[0]["messages"]
    assert messages[1]["weight"] == 0 and "weight" not in messages[3]  # 1 is the default
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    encoded = encode_sequence(tokenizer, messages, 256)
    trained = tokenizer.decode([t for t in encoded.labels if t != -100])
    assert "good" in trained and "BAD" not in trained
    assert "BAD ANSWER" in tokenizer.decode(encoded.input_ids)  # still in the context the later answer follows


def test_a_json_array_in_a_jsonl_file_is_named_with_the_fix(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(DataError, match="one JSON array of 3 items, not one JSON object per line") as info:
        load_records(path)
    assert "data.file_format: json" in info.value.hint
    (tmp_path / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
    assert len(load_records(tmp_path / "rows.json").rows) == 3  # as the hint says


# --- plain text (continued pre-training's documents) -------------------------------------------------------------


def test_a_text_file_is_one_row_per_paragraph_and_a_folder_of_them_reads_every_file(tmp_path):
    """A .txt file was sniffed as CSV ("line 3: has 4 fields but the header names 2 columns"), and a folder of them
    was taken for a save_to_disk folder."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Bees live in hives, mostly.\nThey make honey.\r\n\n\nA queen lays eggs.\n",
                                  encoding="utf-8")
    (corpus / "b.md").write_text("# Notes\n\nWax comes from glands.", encoding="utf-8")
    (corpus / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n\n# Bee corpus\n", encoding="utf-8")
    single = load_records(corpus / "a.txt")
    assert (single.file_format, single.shape) == ("text", "text")
    assert single.rows == [{"text": "Bees live in hives, mostly.\nThey make honey."}, {"text": "A queen lays eggs."}]
    folder = load_records(corpus)
    assert folder.file_format == "text" and [row["text"] for row in folder.rows][2:] == ["# Notes",
                                                                                       "Wax comes from glands."]
    assert len(folder.rows) == 4  # the folder's README (a dataset card) is not text to train on
    (corpus / "c.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match=r"c\.txt, line 1: not valid UTF-8 \(at line 1\)") as latin:
        load_records(corpus)
    assert f"> '{corpus / 'c.utf8.txt'}'" in latin.value.hint  # the re-saved file keeps its extension, so its format


def test_a_cpt_recipe_reads_a_folder_of_text_files_and_holds_out_paragraphs(tmp_path, tiny_model_dir):
    from tunesmith.config import load_recipe
    from tunesmith.data import load_splits

    (tmp_path / "docs").mkdir()
    paragraphs = [f"Paragraph {i} about keeping bees, number {i * 7}." for i in range(40)]
    (tmp_path / "docs" / "one.txt").write_text("\n\n".join(paragraphs[:20]), encoding="utf-8")
    (tmp_path / "docs" / "two.txt").write_text("\n\n".join(paragraphs[20:]), encoding="utf-8")
    (tmp_path / "cpt.yaml").write_text(f"model: {{source: {tiny_model_dir}}}\nmethod: {{kind: cpt}}\n"
                                       "data: {train: docs/, eval_fraction: 0.2}\n", encoding="utf-8")
    splits = load_splits(load_recipe(tmp_path / "cpt.yaml"), accept=("text",), purpose="continued pre-training")
    assert splits.shape == "text" and splits.train and splits.eval
    assert sorted(row["text"] for row in splits.train + splits.eval) == sorted(paragraphs)


def test_a_folder_of_data_files_is_read_as_shards_in_name_order(tmp_path):
    """A dataset split into files (train-00000.jsonl, ...) is a folder of one format: every file is read, in name
    order, each row naming its file; a README beside them is left alone; mixed formats or stray text are refused."""
    shards = tmp_path / "shards"
    shards.mkdir()
    for index in (1, 0):
        rows = [{"prompt": f"q{index}-{i}", "completion": f"a{index}-{i}"} for i in range(3)]
        (shards / f"train-{index:05d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (shards / "README.md").write_text("# my dataset\n", encoding="utf-8")
    loaded = load_records(shards)
    assert [row["prompt"] for row in loaded.rows] == [f"q{i}-{j}" for i in (0, 1) for j in range(3)]
    (shards / "train-00001.jsonl").write_text('{"prompt": "x", "completion": "y"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train-00001\.jsonl, line 2: not valid JSON"):
        load_records(shards)

    (shards / "extra.csv").write_text("prompt,completion\nq,a\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"holds data files of several formats: 1 csv \(extra\.csv\), 2 jsonl"):
        load_records(shards)
    assert len(load_records(shards, fmt="csv").rows) == 1  # data.file_format picks one format out of the folder
    (shards / "extra.csv").unlink()
    (shards / "notes.txt").write_text("a paragraph\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"holds data files \(jsonl\) and plain-text files \(notes\.txt\)"):
        load_records(shards, skip_invalid=True)


def test_a_row_missing_its_key_gets_a_mapping_hint_only_when_it_has_a_column_to_map():
    from tunesmith.data.shapes import normalise_record

    with pytest.raises(RowProblem) as caught:  # its own keys, one missing: fix the row, no mapping to suggest
        normalise_record({"prompt": "p", "chosen": "c"}, "preference")
    assert "Give the row its 'rejected'" in caught.value.hint and "data.columns" not in caught.value.hint
    with pytest.raises(RowProblem) as caught:  # a column of its own that could be the missing one
        normalise_record({"prompt": "p", "chosen": "c", "worse": "r"}, "preference")
    assert "`--set data.columns.worse=rejected`" in caught.value.hint


def test_data_columns_may_rename_onto_exactly_the_keys_the_shapes_read(tmp_path):
    from tunesmith.config import COLUMN_TARGETS, load_recipe
    from tunesmith.data.shapes import LAYOUTS, OPTIONAL_KEYS

    assert {key for keys in (*LAYOUTS.values(), *OPTIONAL_KEYS.values()) for key in keys} == COLUMN_TARGETS
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  train: t.jsonl\n  columns:\n    question: promt\n", encoding="utf-8")
    with pytest.raises(TunesmithError) as caught:
        load_recipe(recipe)
    assert "data.columns (line 3): question: 'promt' is not a key any row shape reads. Did you mean 'prompt'?" \
        in str(caught.value)


def test_a_file_mixing_conversational_layouts_reads_each_row_by_its_own(tmp_path):
    """Messages, Alpaca, ShareGPT and prompt-completion rows in one file all train as conversations: each is read by
    its own layout. A file mixing a conversational layout with preference pairs is refused, naming both."""
    rows = [{"prompt": "p1", "completion": "c1"},
            {"messages": [{"role": "user", "content": "m1"}, {"role": "assistant", "content": "a1"}]},
            {"instruction": "i1", "input": "x1", "output": "o1"},
            {"conversations": [{"from": "human", "value": "s1"}, {"from": "gpt", "value": "g1"}]},
            {"prompt": "p2", "completion": "c2"}, {"instruction": "i2", "output": "o2"}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    loaded = load_records(path)
    assert loaded.shape == "messages" and loaded.source_shape.startswith("mixed: 2 prompt_completion, 2 alpaca")
    assert [row["messages"][-1]["content"] for row in loaded.rows] == ["c1", "a1", "o1", "g1", "c2", "o2"]
    assert loaded.rows[2]["messages"][0]["content"] == "i1\n\nx1"  # Alpaca's instruction and input, as alone

    pairs = [*rows[:2], *({"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(3))]
    path.write_text("".join(json.dumps(r) + "\n" for r in pairs), encoding="utf-8")
    with pytest.raises(DataError, match=r"mixes row shapes: read as prompt_completion \(its first row\), it also "
                                        r"holds 3 preference row\(s\), the first at .*mixed\.jsonl, line 3"):
        load_records(path)
    skipped = load_records(path, skip_invalid=True)  # inspect's reading: the mixture is reported beside the problems
    assert skipped.other_layouts == {"preference": 3, "messages": 1}


def test_a_data_file_error_names_the_recipe_key_it_came_from(tmp_path, tiny_model_dir):
    """An empty eval file said only "/path/empty.txt holds no rows.", not that it was data.eval."""
    from tunesmith.config import load_recipe
    from tunesmith.data import load_splits

    write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(8)])
    (tmp_path / "held.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "r.yaml").write_text(f"model: {{source: {tiny_model_dir}}}\n"
                                     "data: {train: train.jsonl, eval: held.jsonl}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^data\.eval: .*held\.jsonl holds no rows"):
        load_splits(load_recipe(tmp_path / "r.yaml"))
    with pytest.raises(DataError, match=r"^data\.train: Dataset file not found: .*trian\.jsonl"):
        load_splits(load_recipe(tmp_path / "r.yaml", ["data.train=trian.jsonl"]))
    # an eval file of another shape: the fix is rows like data.train's, not another method
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": "no"} for i in range(8)])
    write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "q", "completion": "a", "label": True}])
    recipe = load_recipe(tmp_path / "r.yaml", [f"data.train={tmp_path / 'pairs.jsonl'}",
                                               f"data.eval={tmp_path / 'kto.jsonl'}", "method.kind=dpo"])
    with pytest.raises(DataError, match=r"^data\.eval: .*kto\.jsonl holds unpaired_preference rows") as caught:
        load_splits(recipe, accept=("preference",), purpose="method.kind dpo")
    assert caught.value.hint.startswith("data.eval is scored as the training rows are") and "(preference)" in \
        caught.value.hint


def test_pairs_missing_one_side_name_the_column_they_lack(tmp_path):
    """prompt + chosen rows (no rejected column, or a mapping that forgot it) read as prompts alone: the refusal said
    "prompts without answers train with grpo" where the fix is the missing column."""
    from tunesmith.data.formats import load_rows

    path = tmp_path / "half.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "response_j": f"good {i}", "response_k": f"bad {i}"})
                              for i in range(3)) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_rows(path, ("preference",), "method.kind dpo", columns={"question": "prompt", "response_j": "chosen"})
    assert "have 'chosen' but no 'rejected'" in caught.value.message
    assert "data.columns.NAME=rejected" in caught.value.hint and "grpo" not in caught.value.hint
    kto = tmp_path / "kto.jsonl"
    kto.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="'completion' but no 'label'"):
        load_rows(kto, ("unpaired_preference",), "method.kind kto")


def test_a_bad_row_without_a_fix_of_its_own_gets_the_two_every_bad_row_has(tmp_path):
    """`data preview` on a CSV with an empty cell said only what was wrong; inspect suggested skip_invalid."""
    from tunesmith.data.loaders import load_records

    (tmp_path / "e.csv").write_text("prompt,completion\nhi,there\n,empty\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3: 'prompt' must be a non-empty string") as caught:
        load_records(tmp_path / "e.csv")
    assert "data.skip_invalid: true" in caught.value.hint and "data inspect" in caught.value.hint


def test_keys_inside_turns_that_no_turn_reads_are_named(tmp_path):
    """Reasoning under a name tunesmith does not read ("rationale") or Axolotl's per-turn "train" flag trained as if
    absent without a word; they are named beside the unread columns, the keys a turn does read are not."""
    path = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": "2+2?", "train": False},
                          {"role": "assistant", "content": "4", "rationale": "two and two", "weight": 1}], "id": 1},
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello", "thinking": "x"}]}]
    path.write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    assert load_records(path).unused_columns == ["id", "messages[].rationale", "messages[].train"]
    path.write_text(json.dumps(rows[1]) + "\n", encoding="utf-8")
    assert load_records(path).unused_columns == []
