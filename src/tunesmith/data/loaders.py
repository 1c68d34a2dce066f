"""Load a dataset file as canonical rows: read the format, map columns, detect the shape, validate.

`load_records` is the one entry point for data commands and trainers. Any problem comes out as a
DataError naming the file, the line (or row index) and what is wrong; with `skip_invalid`, bad rows
are skipped instead and counted by reason, so a report can say what was dropped and why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunesmith.config import COLUMN_TARGETS
from tunesmith.data.hub import is_hub_dataset, read_hub_records
from tunesmith.data.readers import Record, read_records
from tunesmith.data.shapes import (
    LAYOUTS,
    FeedbackColumn,
    Row,
    as_conversation,
    detect_layout,
    feedback_columns,
    key_list,
    normalise_record,
    shape_of,
    unused_keys,
)
from tunesmith.errors import DataError, RowProblem

COLUMNS_HINT = ("data.columns maps your column names onto these, {your_column: expected}, e.g. "
                "`--set data.columns.question=prompt --set data.columns.answer=completion`.")
SHAPE_HINT = ("Rows need 'messages', 'conversations' (ShareGPT), 'instruction' and 'output' (Alpaca), "
              "'prompt' and 'completion', 'chosen' and 'rejected', 'prompt' and scored 'completions' (each "
              "{response, score}: paired best against worst), 'text', or (GRPO) 'prompt' alone; " + COLUMNS_HINT)


@dataclass
class LoadResult:
    """The canonical rows of one file, the shape they share, and what was skipped (by reason) and why."""

    path: Path | str
    file_format: str
    source_shape: str  # the layout as found: messages, sharegpt, alpaca, prompt_completion, ...
    shape: str  # the canonical shape: messages, prompt_completion, preference, unpaired_preference, text, prompt
    rows: list[Row] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    first_hint: str | None = None  # the first skipped row's own hint (what to do about rows like it)
    unused_columns: list[str] = field(default_factory=list)  # columns the shape does not read: left out of the rows
    places: list[str] = field(default_factory=list)  # where each row is in the file ("FILE, line 7"), as rows
    other_layouts: dict[str, int] = field(default_factory=dict)  # rows of other layouts, when the file mixes them
    feedback_columns: dict[str, FeedbackColumn] = field(default_factory=dict)  # left-out columns judging the answers

    def place(self, index: int) -> str | None:
        """Where the index-th usable row is in the file (reports count usable rows; people, file lines)."""
        return self.places[index] if 0 <= index < len(self.places) else None


def load_records(path: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None,
                 skip_invalid: bool = False, shape: str = "auto", prefer: tuple[str, ...] = ()) -> LoadResult:
    """Every row of the file as a canonical row of one shape (detected from the first usable record
    unless `shape` names a layout; where its keys fit several, one whose shape is in `prefer`, the shapes the
    method trains on, before the first). `columns` renames source columns before anything else looks."""
    if isinstance(path, str) and is_hub_dataset(path):
        file_format, records = "hub", read_hub_records(path)
    else:
        path = Path(path)
        file_format, records = read_records(path, fmt)
    if not records:
        raise DataError(f"{path} holds no rows.", "Add at least one example.")
    records = rename_columns(records, columns)
    layout = choose_layout(records, shape, skip_invalid, prefer)
    result = LoadResult(path, file_format, layout, shape_of(layout),
                        unused_columns=unused_keys([record.value for record in records], layout),
                        other_layouts=other_layouts(records, layout) if shape == "auto" else {})
    result.feedback_columns = feedback_columns([record.value for record in records], result.unused_columns)
    if result.other_layouts and {layout, *result.other_layouts} <= set(SFT_LAYOUTS):
        return load_mixed_sft(result, records, skip_invalid)
    if result.other_layouts and not skip_invalid:
        raise mixed_layouts_error(path, layout, records, result.other_layouts)
    for record in records:
        add_row(result, record, layout, skip_invalid)
    if not result.rows:
        raise DataError(f"{path}: no usable rows; skipped {sum(result.skipped.values())} "
                        f"({describe_skipped(result.skipped)}), e.g. {result.problems[0]}",
                        result.first_hint or "Fix the rows, or map the column names: " + COLUMNS_HINT)
    return result


SFT_LAYOUTS = ("messages", "sharegpt", "alpaca", "prompt_completion")  # all read as conversations
PAIR_SHAPES = ("preference", "unpaired_preference")


def load_mixed_sft(result: LoadResult, records: list[Record], skip_invalid: bool) -> LoadResult:
    """A file whose rows are of several conversational layouts (OpenAI messages beside Alpaca, ShareGPT or
    prompt-completion rows): each row read by its own layout and kept as a conversation, as training would read
    each of those files alone. `source_shape` lists the layouts and their counts."""
    first = result.source_shape  # the first row's layout: what a row of none is read as (and named a problem)
    own = [detect_layout(record.value) if isinstance(record.value, dict) else None for record in records]
    counts = Counter(layout for layout in own if layout)
    result.source_shape = "mixed: " + ", ".join(f"{count} {layout}" for layout, count in counts.most_common())
    result.shape = "messages"
    result.unused_columns = sorted({key for layout in counts for key in unused_keys(
        [record.value for record, mine in zip(records, own, strict=True) if mine == layout], layout)})
    for record, layout in zip(records, own, strict=True):
        add_row(result, record, layout or first, skip_invalid)
    result.rows = [as_conversation(row) for row in result.rows]
    return result


MIXED_LAYOUT_ROWS = 2  # rows of another layout that make a file "mixed" (one stray row is named as a problem row)


def other_layouts(records: list[Record], layout: str) -> dict[str, int]:
    """Rows whose keys say another layout than the file's (read from its first row), counted by layout, when they
    are at least MIXED_LAYOUT_ROWS: a file that mixes shapes, of which all but one would be problem rows."""
    found = Counter(detected for record in records if record.problem is None and isinstance(record.value, dict)
                    and not all(key in record.value for key in LAYOUTS[layout])  # it fits the file's layout
                    and (detected := detect_layout(record.value)) not in (None, layout))
    return dict(found.most_common()) if sum(found.values()) >= MIXED_LAYOUT_ROWS else {}


def mixed_layouts_error(path: Path | str, layout: str, records: list[Record], others: dict[str, int]) -> DataError:
    first = {name: next(record.where for record in records if isinstance(record.value, dict)
                        and record.problem is None and detect_layout(record.value) == name) for name in others}
    listing = "; ".join(f"{count} {name} row(s), the first at {first[name]}" for name, count in others.items())
    return DataError(f"{path} mixes row shapes: read as {layout} (its first row), it also holds {listing}.",
                     "Put each shape in a file of its own and train on one (or convert the rows to one shape); "
                     "data.skip_invalid: true would leave all of those rows out.")


def rename_columns(records: list[Record], columns: dict[str, str] | None) -> list[Record]:
    """Apply the user's column mapping; a mapped column wins over one that already has the target name."""
    if not columns:
        return records
    names_only = isinstance(columns, dict) and all(isinstance(n, str) for p in columns.items() for n in p)
    if not names_only:
        raise DataError(f"`columns` must map source column names to canonical ones, got {columns!r}.",
                        "For example {'question': 'prompt', 'answer': 'completion'}.")
    refuse_shared_targets(columns)
    refuse_absent_columns(records, columns)
    return [replace(record, value=renamed(record.value, columns)) if isinstance(record.value, dict)
            else record for record in records]


def refuse_shared_targets(columns: dict[str, str]) -> None:
    """Two source columns mapped onto one name: one would silently replace the other (row ids trained as answers)."""
    sources: dict[str, list[str]] = {}
    for source, target in columns.items():
        sources.setdefault(target, []).append(source)
    shared = {target: names for target, names in sources.items() if len(names) > 1}
    if shared:
        listed = "; ".join(f"{names} all onto {target!r}" for target, names in shared.items())
        raise DataError(f"data.columns maps several columns onto one name ({listed}): only one of them can become "
                        "it, and the others' values would be lost without a word.",
                        "Map one column onto each name; columns the rows' shape does not use are left out anyway.")


def refuse_absent_columns(records: list[Record], columns: dict[str, str]) -> None:
    """A mapped column that no row has is a mapping written the wrong way round or a typo: it would do nothing. A file
    whose rows already have the name it maps onto needs no mapping (a CSV's `question` mapped onto `prompt` beside an
    eval file that says `prompt`: data.columns applies to every data file)."""
    present = {key for record in records if isinstance(record.value, dict) for key in record.value}
    absent = [name for name, target in columns.items()
              if name not in present and not (target in COLUMN_TARGETS and target in present)]
    if absent and present:
        raise DataError(f"data.columns maps {absent} but no row has such a column (the rows have "
                        f"{sorted(present)[:10]}).",
                        "data.columns reads {your_column: expected}: e.g. `--set data.columns.question=prompt` "
                        "renames your 'question' column to 'prompt'.")


def renamed(value: dict, columns: dict[str, str]) -> dict:
    kept = {key: item for key, item in value.items() if key not in columns}
    kept.update({columns[key]: item for key, item in value.items() if key in columns})
    return kept


def choose_layout(records: list[Record], shape: str, skip_invalid: bool, prefer: tuple[str, ...] = ()) -> str:
    """The forced layout, or the one the first readable record's keys point to: the first of LAYOUTS whose keys it
    has, unless a pair layout (PAIR_SHAPES) whose shape is in `prefer` fits it too: HuggingFaceH4/
    ultrafeedback_binarized's rows hold `messages` beside `chosen` and `rejected`, a conversation to SFT and a pair to
    DPO. Never the other way: KTO's rows (prompt, completion, label) stay what they are to SFT, which refuses them
    rather than train the answers labelled undesirable."""
    if shape != "auto":
        if shape not in LAYOUTS:
            raise DataError(f"Unknown dataset shape {shape!r}.", f"Use 'auto' or one of {list(LAYOUTS)}.")
        return shape
    for record in records:
        readable = record.problem is None and isinstance(record.value, dict)
        if readable and (layout := detect_layout(record.value)):
            fitting = [name for name, keys in LAYOUTS.items() if shape_of(name) in prefer and shape_of(name) in
                       PAIR_SHAPES and all(key in record.value for key in keys)]
            return fitting[0] if fitting else layout
    unreadable = next((record for record in records if record.problem), None)
    nothing_readable = all(record.problem for record in records)  # skipping them would leave no row to read
    if unreadable and (not skip_invalid or nothing_readable):
        raise located(unreadable.where, unreadable.problem)
    raise unknown_shape(records)


def unknown_shape(records: list[Record]) -> DataError:
    first = next((record for record in records if isinstance(record.value, dict)), None)
    if first is None:
        if len(records) == 1 and isinstance(records[0].value, list):  # a .jsonl file holding one JSON array
            return DataError(f"{records[0].where}: the file is one JSON array of {len(records[0].value)} items, "
                             "not one JSON object per line.",
                             "Name it .json (or set data.file_format: json), which reads a JSON array of rows.")
        return DataError(f"{records[0].where}: cannot tell the dataset shape: no row is an object with "
                         "named fields.", SHAPE_HINT)
    return DataError(f"{first.where}: cannot tell the dataset shape from keys {key_list(first.value)}.",
                     SHAPE_HINT.replace(COLUMNS_HINT, mapping_hint(first.value)))


def mapping_hint(record: dict) -> str:
    """data.columns suggested with the row's own text columns: one maps onto `text` (raw text, CPT), two onto
    `prompt` and `completion`, in the file's order; other rows get the generic example."""
    texts = [str(key) for key, value in record.items() if isinstance(value, str) and value.strip()]
    if len(texts) == 1:
        return (f"data.columns maps your column names onto these, {{your_column: expected}}: for raw text "
                f"(method.kind cpt), `--set data.columns.{texts[0]}=text`; as a prompt without answers (GRPO), "
                f"`--set data.columns.{texts[0]}=prompt`.")
    if len(texts) == 2:
        return (f"data.columns maps your column names onto these, {{your_column: expected}}: for prompt and answer, "
                f"`--set data.columns.{texts[0]}=prompt --set data.columns.{texts[1]}=completion`.")
    return COLUMNS_HINT


def add_row(result: LoadResult, record: Record, layout: str, skip_invalid: bool) -> None:
    try:
        if record.problem:
            raise record.problem
        result.rows.append(normalise_record(record.value, layout))
        result.places.append(record.where)
    except RowProblem as problem:
        if not skip_invalid:
            raise located(record.where, problem) from None
        result.skipped[problem.reason] = result.skipped.get(problem.reason, 0) + 1
        result.problems.append(f"{record.where}: {problem.message}")
        result.first_hint = result.first_hint or problem.hint


ROW_HINT = ("Fix that row, or set data.skip_invalid: true (`--set data.skip_invalid=true`) to leave rows like it out; "
            "`tunesmith data inspect` lists every such row.")


def located(where: str, problem: RowProblem) -> DataError:
    """The row's problem as the error users see: file and line (or row index) first, with the problem's own fix or,
    where it names none, the two every bad row has; either way how to see every such row (train stops at the first)."""
    if not problem.hint:
        return DataError(f"{where}: {problem.message}", ROW_HINT)
    return DataError(f"{where}: {problem.message}", f"{problem.hint} `tunesmith data inspect` lists every row "
                     "train would stop at; data.skip_invalid: true leaves them out.")


def describe_skipped(skipped: dict[str, int]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))
