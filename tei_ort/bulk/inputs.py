"""What tei-embed reads: files, folders and globs, expanded in a stable order, and each file's rows.

A job's rows are the concatenation of its files' rows in that order; a row keeps its file and its
position in the file (0-based, bad rows counted), so a report names the exact line and a resumed
job cuts the same shards. Formats are chosen by suffix, in one table; text formats are read with
`surrogateescape`, so a line that is not UTF-8 becomes a bad row, never a crash or a silent
replacement character.
"""

from __future__ import annotations

import csv
import glob
import itertools
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from tei_ort.errors import ValidationError

# A record is a mapping of fields (JSONL, CSV, Parquet) or the text itself (plain text).
Record = Mapping[str, object] | str
# A reader yields each row's record, or the reason the row could not be parsed, from row `start`
# on (skipping what it can without parsing it: a shard read on its own starts mid-file).
Reader = Callable[[Path, "Fields", int], Iterator["Record | BadRecord"]]

GLOB_CHARS = frozenset("*?[")
# Big CSV cells (whole documents) are common; the csv module's default limit is 128 KiB.
csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class Fields:
    text: str = "text"
    id: str | None = None  # None: rows have no id column; `file` and `row` identify them


@dataclass(frozen=True)
class BadRecord:
    reason: str


@dataclass(frozen=True)
class Row:
    file: str
    row: int  # position in its file, 0-based
    id: str | None
    text: str | None  # None when the row is bad
    error: str | None = None  # why the row cannot be embedded

    @property
    def where(self) -> str:
        return f"{self.file}, row {self.row}"


def _jsonl(path: Path, fields: Fields, start: int = 0) -> Iterator[Record | BadRecord]:
    with path.open("rb") as lines:
        for line in itertools.islice(lines, start, None):
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield BadRecord(f"not valid JSON ({exc})")
                continue
            yield value if isinstance(value, dict) else BadRecord("not a JSON object")


def _csv(path: Path, fields: Fields, start: int = 0) -> Iterator[Record | BadRecord]:
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        # A quoted cell may hold newlines: rows are only found by parsing, so skipping parses.
        reader = csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
        yield from itertools.islice(reader, start, None)


def _text(path: Path, fields: Fields, start: int = 0) -> Iterator[Record | BadRecord]:
    with path.open(encoding="utf-8", errors="surrogateescape") as lines:
        for line in itertools.islice(lines, start, None):
            yield line.rstrip("\r\n")


def _parquet(path: Path, fields: Fields, start: int = 0) -> Iterator[Record | BadRecord]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    # Only the fields asked for are read; a missing one makes every row bad, each reported.
    names = set(parquet.schema_arrow.names)
    columns = [f for f in (fields.text, fields.id) if f is not None and f in names]
    # Whole row groups before `start` are not read at all.
    groups, first = [], 0
    for group in range(parquet.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        if first + size > start:
            groups.append(group)
        else:
            start -= size
        first += size
    batches = parquet.iter_batches(batch_size=4096, row_groups=groups, columns=columns)
    records = (record for batch in batches for record in batch.to_pylist())
    yield from itertools.islice(records, start, None)


def _count_lines(path: Path) -> int:  # as _jsonl splits them
    with path.open("rb") as lines:
        return sum(1 for _ in lines)


def _count_csv(path: Path) -> int:
    return sum(1 for _ in _csv(path, Fields()))


def _count_text(path: Path) -> int:
    # Text mode splits lines on a lone "\r" too, which a count of b"\n" would miss: count as read.
    return sum(1 for _ in _text(path, Fields()))


def _count_parquet(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


@dataclass(frozen=True)
class Format:
    read: Reader
    count: Callable[[Path], int]  # rows, cheaply, for the progress bar's total


FORMATS: dict[str, Format] = {
    ".jsonl": Format(_jsonl, _count_lines),
    ".ndjson": Format(_jsonl, _count_lines),
    ".parquet": Format(_parquet, _count_parquet),
    ".csv": Format(_csv, _count_csv),
    ".tsv": Format(_csv, _count_csv),
    ".txt": Format(_text, _count_text),
}


def format_of(path: Path) -> Format:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        known = ", ".join(FORMATS)
        raise ValidationError(
            f"{path}: unknown input format {path.suffix or '(no suffix)'!r}; known: {known}"
        ) from None


def expand(arguments: Sequence[str]) -> list[Path]:
    """Files in argument order; a folder's files (recursively, known suffixes) and a glob's
    matches sorted by path. A file named twice is read once."""
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FORMATS)
        elif path.exists():
            matches = [path]
        elif GLOB_CHARS & set(argument):
            matches = sorted(Path(p) for p in glob.glob(argument, recursive=True))
            matches = [p for p in matches if p.is_file()]
        else:
            raise ValidationError(f"{argument}: no such file, folder or glob match")
        if not matches:
            raise ValidationError(f"{argument}: no input files found there")
        found.extend(matches)
    for path in found:
        format_of(path)  # fail before any work on a file that cannot be read
    return list(dict.fromkeys(found))


def _field(record: Mapping[str, object], name: str) -> object:
    return record[name] if name in record else BadRecord(f"missing field {name!r}")


def _checked_text(value: object, name: str) -> str | BadRecord:
    if isinstance(value, BadRecord):
        return value
    if not isinstance(value, str):
        return BadRecord(f"field {name!r} is not a string ({type(value).__name__})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return BadRecord("not valid UTF-8")
    if not value.strip():
        return BadRecord("empty text")
    return value


def _checked_id(record: Mapping[str, object], name: str) -> str | BadRecord:
    value = _field(record, name)
    if isinstance(value, BadRecord):
        return value
    # bool is an int subclass, but True is no one's document id.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return BadRecord(f"id field {name!r} is not a string or an integer")
    return str(value)


def to_row(file: str, position: int, record: Record | BadRecord, fields: Fields) -> Row:
    if isinstance(record, BadRecord):
        return Row(file, position, None, None, record.reason)
    if isinstance(record, str):  # plain text: the line is the input, there is no id
        text: str | BadRecord = _checked_text(record, "line")
        identifier: str | BadRecord | None = None
    else:
        text = _checked_text(_field(record, fields.text), fields.text)
        identifier = _checked_id(record, fields.id) if fields.id is not None else None
    if isinstance(identifier, BadRecord):
        return Row(file, position, None, None, identifier.reason)
    if isinstance(text, BadRecord):
        return Row(file, position, identifier, None, text.reason)
    return Row(file, position, identifier, text)


def rows(files: Sequence[Path], fields: Fields) -> Iterator[Row]:
    for path in files:
        yield from rows_of(path, fields, 0, None)


def rows_of(path: Path, fields: Fields, start: int, stop: int | None) -> Iterator[Row]:
    """The file's rows [start, stop) (to its end with None), numbered by position in the file."""
    records = format_of(path).read(path, fields, start)
    bounded = records if stop is None else itertools.islice(records, stop - start)
    for position, record in enumerate(bounded, start):
        yield to_row(str(path), position, record, fields)


def count_rows(files: Sequence[Path]) -> int:
    return sum(format_of(path).count(path) for path in files)
