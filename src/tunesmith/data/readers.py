"""Read a dataset file of any supported format into raw records that remember where they came from.

Formats: JSONL, JSON (an array, or `{"data": [...]}`), CSV, TSV, Parquet (a file, or a folder of files of one
format: shards read in name order, each record naming its file and line), a folder written by `datasets`'
`save_to_disk`, and plain text (a .txt or .md file, or a folder of them: one `{"text": ...}` record per
paragraph, as `datasets`' text loader reads with sample_by="paragraph"; the documents continued pre-training reads).
A problem confined to one record (a line that is not JSON, a row with bytes that are not UTF-8) travels with that
record, so the loader can skip it or name its line; a problem with the whole file raises DataError here. A UTF-8
BOM, CRLF line ends and blank lines are tolerated.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.turns import type_name
from tunesmith.errors import DataError, RowProblem

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "datasets", "text")
TEXT_SUFFIXES = (".txt", ".md")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
              ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".md": "text"}
FORMAT_HINT = (f"Name the file format with data.file_format (one of {list(FORMATS)}), e.g. "
               "`--set data.file_format=jsonl`, or use an extension such as .jsonl or .csv (plain text: a .txt or .md "
               "file or a folder of them, one row per paragraph; or one JSON line per document, {\"text\": ...}).")


def utf8_hint(path: Path) -> str:
    """How to re-save `path` as UTF-8, keeping its extension (the format is read from it): from UTF-16 where the
    file's first bytes hold NULs (UTF-16 without a byte-order mark; with one, the file is read as it is); dropping
    the stray bytes where its first MiB holds more valid multi-byte characters than bytes that are not UTF-8; else
    from cp1252, what Windows and Excel write most often."""
    fixed = path.with_name(f"{path.stem}.utf8{path.suffix}")
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 20)
    except OSError:
        head = b""
    if b"\x00" in head[:4096]:
        return (f"Re-save the file as UTF-8 and point the recipe at the new file; it looks UTF-16 (every other byte "
                f"is 0): `iconv -f utf-16le -t utf-8 '{path}' > '{fixed}'`.")
    text = head.decode("utf-8", errors="surrogateescape")
    stray, good = len(UNDECODABLE.findall(text)), sum(ord(c) > 0x7F for c in text) - len(UNDECODABLE.findall(text))
    if good > stray:  # mostly UTF-8 already: converting it from cp1252 would garble every accented letter
        return (f"The file is UTF-8 apart from a few stray bytes: set data.skip_invalid: true to leave those rows out, "
                f"or drop the bytes: `iconv -c -f utf-8 -t utf-8 '{path}' > '{fixed}'`.")
    encoding, sample = legacy_encoding(head)
    return (f"Re-save the file as UTF-8 and point the recipe at the new file; its bytes read as {encoding} "
            f"({sample!r}): `iconv -f {encoding} -t utf-8 '{path}' > '{fixed}'`.")


def legacy_encoding(head: bytes) -> tuple[str, str]:
    """The legacy code page `head` is most likely written in, as iconv names it, and a few of its non-ASCII words
    decoded so, for the user to recognise: charset-normalizer's guess (Cyrillic cp1251, Shift-JIS, GB18030...),
    cp1252 where that reads the bytes the same (the guess for German or French text is often cp1250) or where
    there is no guess (what Windows and Excel write most often)."""
    from charset_normalizer import from_bytes

    best = from_bytes(head[:65536]).best()
    guess = best.encoding if best is not None else "cp1252"
    with contextlib.suppress(LookupError, UnicodeDecodeError):
        if head.decode("cp1252") == head.decode(guess):
            guess = "cp1252"
    text = head.decode(guess, errors="replace")
    start = next((i for i, char in enumerate(text) if ord(char) > 0x7F), 0)
    sample = " ".join(text[max(0, start - 12):start + 28].split())
    return ICONV_NAMES.get(guess, guess.replace("_", "-")), sample


# Python codec names iconv spells otherwise (`iconv -l`); the rest read as they are with `-` for `_` (cp1251, koi8-r)
ICONV_NAMES = {"latin_1": "ISO-8859-1", "mac_roman": "MACINTOSH", "mac_cyrillic": "MAC-CYRILLIC",
               "iso2022_jp": "ISO-2022-JP", "iso2022_kr": "ISO-2022-KR", "euc_jp": "EUC-JP", "euc_kr": "EUC-KR",
               "big5hkscs": "BIG5-HKSCS", "utf_16": "UTF-16"}
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # little-, big-endian: Excel's "Unicode Text", PowerShell's `>`
ZIP_MAGIC = b"PK\x03\x04"  # .xlsx, .docx, .ods and zip archives
UNDECODABLE = re.compile("[\udc80-\udcff]")  # where surrogateescape decoding kept a byte that is not UTF-8


@dataclass(frozen=True)
class Record:
    """One raw record (or the problem that stopped it being read) and its place in the file."""

    where: str
    value: Any = None
    problem: RowProblem | None = None


def read_records(path: Path, fmt: str = "auto") -> tuple[str, list[Record]]:
    """The file's format (detected when `fmt` is "auto") and its records in file order."""
    if not path.exists():
        raise DataError(f"Dataset file not found: {path}{close_name(path)}",
                        "Check the path: data.train / data.eval in a recipe file are relative to the recipe file; "
                        "a path given on the command line (--data, --set), to the current folder.")
    try:
        fmt = detect_format(path) if fmt == "auto" else checked_format(path, fmt)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror}).") from None
    if path.is_dir() and fmt not in ("datasets", "text"):  # a folder of data files (shards), read in name order
        return fmt, [record for file in data_files(path, fmt) for record in READERS[fmt](file)]
    return fmt, READERS[fmt](path)


def checked_format(path: Path, fmt: str) -> str:
    if fmt not in FORMATS:
        raise DataError(f"Unknown file format {fmt!r}.", f"Use 'auto' or one of {list(FORMATS)}.")
    if fmt == "datasets" and not path.is_dir():
        raise DataError(f"{path}: the datasets format needs a folder written by save_to_disk.", FORMAT_HINT)
    return fmt


def close_name(path: Path) -> str:
    """` (did you mean NAME?)` when the folder holds a file named much like `path`, else ''."""
    import difflib

    try:
        names = [item.name for item in path.parent.iterdir()] if path.parent.is_dir() else []
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.8)
    return f" (did you mean {path.parent / close[0]}?)" if close else ""


def detect_format(path: Path) -> str:
    """From the extension where it is known, else from the first bytes. `.json` files that are really
    JSONL (one object per line) are common, so those are told apart by their contents."""
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return "datasets"
        shards = folder_formats(path)
        if len(shards) > 1:
            listing = ", ".join(f"{len(files)} {fmt} ({', '.join(f.name for f in files[:2])}"
                                f"{', ...' if len(files) > 2 else ''})" for fmt, files in shards.items())
            raise DataError(f"{path} holds data files of several formats: {listing}.",
                            "Point data.train at one file, or keep one format in the folder (or name it with "
                            "data.file_format, e.g. `--set data.file_format=jsonl`, to read only those files).")
        if shards:
            return next(iter(shards))
        if text_files(path):
            return "text"
        raise DataError(no_data_files(path), FORMAT_HINT if any(path.iterdir()) else
                        "Put the data files in it, or point the recipe at the folder or file that holds them.")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return json_or_jsonl(path)
    if suffix in TEXT_SUFFIXES:  # prose has commas: only JSON saved under .txt is told apart by its contents
        return sniffed if (sniffed := sniff_json(path)) else "text"
    return EXTENSIONS.get(suffix) or sniff_format(path)


def sniff_json(path: Path) -> str | None:
    """json or jsonl when the file starts like JSON, else None."""
    with path.open("rb") as handle:
        head = as_utf8(handle.read(1024), path, partial=True).lstrip()
    return json_or_jsonl(path) if head[:1] in (b"[", b"{") else None


def json_or_jsonl(path: Path) -> str:
    """JSONL when the first non-blank line is a JSON value by itself and more lines follow."""
    with path.open("rb") as handle:
        lines = iter(read_bytes(path).split(b"\n")) if handle.read(2) in UTF16_BOMS else handle
        handle.seek(0)
        first = next((line for line in lines if line.strip()), b"")
        more = any(line.strip() for line in lines)
    if not more:
        return "json"
    try:
        json.loads(first.removeprefix(UTF8_BOM).decode("utf-8"))
    except (ValueError, RecursionError):
        return "json"
    return "jsonl"


def sniff_format(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(65536)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(ZIP_MAGIC):
        raise DataError(f"{path}: is a zip archive (an Excel workbook, .xlsx, is one), not a data file.",
                        "Save the sheet as CSV (Excel: File > Save As > CSV UTF-8) and point data.train at the .csv; "
                        "unzip an archive and point data.train at the folder.")
    text = as_utf8(head, path, partial=True).lstrip()
    if not text or text[:1] in (b"[", b"{"):
        return json_or_jsonl(path) if text else "jsonl"
    first_line = text.split(b"\n", 1)[0]
    if b"\t" in first_line:
        return "tsv"
    if b"," in first_line:
        return "csv"
    raise DataError(f"{path}: cannot tell the file format from its name or contents.", FORMAT_HINT)


def read_bytes(path: Path) -> bytes:
    """The file's bytes as UTF-8, without a byte-order mark (UTF-16 with one is converted: its lines and line
    numbers stay the same). Raises DataError when the file cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror}).") from None
    text = as_utf8(data, path)
    if b"\x00" in text[:4096]:  # no text format holds NUL bytes; UTF-16 without a byte-order mark is full of them
        raise DataError(f"{path}: holds NUL bytes, so it is not UTF-8 text.", utf8_hint(path))
    return text


def as_utf8(data: bytes, path: Path, partial: bool = False) -> bytes:
    """`data` without a UTF-8 byte-order mark, or converted from UTF-16 where it starts with that one's (`partial`:
    the file's first bytes only, which may end inside a character)."""
    if not data.startswith(UTF16_BOMS):
        return data.removeprefix(UTF8_BOM)
    try:
        return data.decode("utf-16", errors="ignore" if partial else "strict").encode("utf-8", "surrogateescape")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: starts as UTF-16 but byte {exc.start} is not ({exc.reason}).",
                        utf8_hint(path)) from None


def read_jsonl(path: Path) -> list[Record]:
    """One record per non-blank line, numbered as an editor numbers them."""
    lines = read_bytes(path).split(b"\n")
    return [json_line_record(line, f"{path}, line {number}", path)
            for number, line in enumerate(lines, start=1) if line.strip(b" \t\r")]


def json_line_record(line: bytes, where: str, path: Path) -> Record:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Record(where, problem=RowProblem(
            "undecodable", f"not valid UTF-8 ({exc.reason} at byte {exc.start} of the line).", utf8_hint(path)))
    try:
        return Record(where, json.loads(text))
    except json.JSONDecodeError as exc:
        message = f"not valid JSON ({exc.msg}, column {exc.colno})."
    except (ValueError, RecursionError) as exc:
        message = f"not valid JSON ({exc})."
    hint = "Each line of a JSONL file must be one JSON object."
    return Record(where, problem=RowProblem("bad_json", message, hint))


def read_json(path: Path) -> list[Record]:
    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 ({exc.reason}).", utf8_hint(path)) from None
    if not text.strip():
        return []
    return indexed_records(path, records_in(parse_json_document(text, path), path))


def parse_json_document(text: str, path: Path) -> Any:
    hint = 'A .json file holds one array of records (or {"data": [...]}); use .jsonl for one record per line.'
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}).",
                        hint) from None
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}).", hint) from None


def records_in(document: Any, path: Path) -> list:
    """The records of a JSON document: an array, the array under "data", or one object on its own."""
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        return document["data"]
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        return [document]
    raise DataError(f"{path}: expected an array of records or an object with a 'data' array, "
                    f"got {type_name(document)}.")


def indexed_records(path: Path, values: list) -> list[Record]:
    return [Record(f"{path}, row index {index}", value) for index, value in enumerate(values)]


def read_delimited(path: Path, delimiter: str) -> list[Record]:
    """Rows of a CSV/TSV file with a header line, each numbered by the line it starts on."""
    text = read_bytes(path).decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows = numbered_rows(reader, path, "CSV" if delimiter == "," else "TSV")
    header = next(rows, None)
    if header is None:
        return []
    columns = header_columns(*header, path)
    return [cells_record(columns, fields, f"{path}, line {line}", path) for line, fields in rows]


def numbered_rows(reader: Any, path: Path, kind: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) for each row that is not blank (rows of empty cells count as blank).
    Quoting errors stop the read: after one, the rows that follow cannot be trusted."""
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{path}, line {line}: cannot be parsed as {kind} ({exc}).",
                            "Check the quoting: a quote never closed swallows the lines after it.") from None
        if any(field.strip() for field in fields):
            yield line, fields


def header_columns(line: int, fields: list[str], path: Path) -> list[str]:
    names = [field.strip() for field in fields]
    if any(UNDECODABLE.search(name) for name in names):
        raise DataError(f"{path}, line {line}: the header is not valid UTF-8.", utf8_hint(path))
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise DataError(f"{path}, line {line}: columns {repeated} appear more than once in the header.")
    return names


def cells_record(columns: list[str], fields: list[str], where: str, path: Path) -> Record:
    if len(fields) != len(columns):
        return Record(where, problem=RowProblem(
            "wrong_field_count", f"has {len(fields)} fields but the header names {len(columns)} columns.",
            "Quote fields that contain the delimiter or a line break."))
    if any(UNDECODABLE.search(field) for field in fields):
        return Record(where, problem=RowProblem("undecodable", "not valid UTF-8.", utf8_hint(path)))
    return Record(where, dict(zip(columns, fields, strict=True)))


def read_parquet(path: Path) -> list[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc}).") from None
    return indexed_records(path, rows)


def no_data_files(folder: Path) -> str:
    """What an unreadable folder holds, for the message saying it holds no data."""
    names = sorted(item.name + ("/" if item.is_dir() else "") for item in folder.iterdir()
                   if not item.name.startswith("."))
    held = (f"it holds only {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}" if names else "it is empty")
    return (f"{folder} holds no data files ({held}): tunesmith reads a folder of .jsonl, .json, .csv, .tsv or "
            ".parquet files, of .txt/.md text files (a README left alone), or one written by save_to_disk.")


def folder_formats(folder: Path) -> dict[str, list[Path]]:
    """The data files directly in `folder` (not plain text) by format, each list in name order; a .json file counts
    as json or jsonl by its contents. Plain-text files beside them are refused: a folder is read as one format."""
    found: dict[str, list[Path]] = {}
    for item in sorted(folder.iterdir()):
        suffix = item.suffix.lower()
        if not item.is_file() or item.name.startswith(".") or suffix in TEXT_SUFFIXES:
            continue
        fmt = json_or_jsonl(item) if suffix == ".json" else EXTENSIONS.get(suffix)
        if fmt is not None:
            found.setdefault(fmt, []).append(item)
    stray = [item.name for item in text_files(folder)]
    if found and stray:
        raise DataError(f"{folder} holds data files ({', '.join(found)}) and plain-text files ({', '.join(stray[:3])}"
                        f"{', ...' if len(stray) > 3 else ''}): tunesmith reads a folder as one format.",
                        "Point data.train at one file, or move the text files out of the folder.")
    return found


def data_files(folder: Path, fmt: str) -> list[Path]:
    """The files of `fmt` directly in `folder` (data.file_format names it, or the only format there), name order."""
    files = folder_formats(folder).get(fmt, [])
    if not files:
        raise DataError(f"{folder} holds no {fmt} files.", FORMAT_HINT)
    return files


def text_files(folder: Path) -> list[Path]:
    """The .txt and .md files directly in `folder`, in name order, leaving out a README (README.md, readme.txt, ...:
    the folder's description, often a dataset card with YAML front matter, not its text) and hidden files, as a
    folder of data files does."""
    return sorted(item for item in folder.iterdir() if item.is_file() and item.suffix.lower() in TEXT_SUFFIXES
                  and not item.stem.upper().startswith("README") and not item.name.startswith("."))


def read_text(path: Path) -> list[Record]:
    """Plain text: one `{"text": ...}` record per paragraph (lines up to a blank line), numbered by the line it
    starts on; a folder: every .txt/.md file in it, in name order."""
    files = text_files(path) if path.is_dir() else [path]
    return [record for file in files for record in text_paragraphs(file)]


def text_paragraphs(path: Path) -> list[Record]:
    """One record per paragraph, named by its first line; a paragraph holding bytes that are not UTF-8 is a row
    problem naming the line they are on (data.skip_invalid leaves it out, as a bad JSONL line)."""
    text = read_bytes(path).decode("utf-8", errors="surrogateescape")
    records, lines, start, bad_line = [], [], 1, None
    for number, line in enumerate([*text.replace("\r\n", "\n").split("\n"), ""], start=1):
        if line.strip():
            if not lines:
                start, bad_line = number, None
            lines.append(line.rstrip())
            bad_line = bad_line or (number if UNDECODABLE.search(line) else None)
        elif lines:
            where = f"{path}, line {start}"
            records.append(Record(where, problem=RowProblem(
                "undecodable", f"not valid UTF-8 (at line {bad_line}).", utf8_hint(path))) if bad_line
                else Record(where, {"text": "\n".join(lines)}))
            lines = []
    return records


def read_dataset_folder(path: Path) -> list[Record]:
    """A folder from `save_to_disk`: a Dataset, or a DatasetDict from which the train split is read."""
    import pyarrow as pa
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a dataset folder written by save_to_disk ({exc}).",
                        FORMAT_HINT) from None
    dataset = pick_split(loaded, path) if isinstance(loaded, DatasetDict) else loaded
    return indexed_records(path, dataset.to_list())


def pick_split(splits: Any, path: Path) -> Any:
    if "train" in splits:
        return splits["train"]
    if len(splits) == 1:
        return next(iter(splits.values()))
    raise DataError(f"{path} holds the splits {sorted(splits)}, and none is called 'train'.",
                    f"Point at one split's folder, e.g. {path / sorted(splits)[0]}.")


READERS: dict[str, Callable[[Path], list[Record]]] = {
    "jsonl": read_jsonl,
    "json": read_json,
    "csv": lambda path: read_delimited(path, ","),
    "tsv": lambda path: read_delimited(path, "\t"),
    "parquet": read_parquet,
    "datasets": read_dataset_folder,
    "text": read_text,
}
