"""tei-embed's inputs: every format, folders and globs, and each kind of bad row named by file and
row (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tei_ort.bulk import inputs
from tei_ort.bulk.inputs import Fields, Row
from tei_ort.errors import ValidationError

DEFAULT_FIELDS = Fields()


def _rows(path: Path, fields: Fields = DEFAULT_FIELDS) -> list[Row]:
    return list(inputs.rows([path], fields))


def test_jsonl_text_and_id_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    records = [{"body": "first", "key": 7}, {"body": "second", "key": "b"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = _rows(path, Fields("body", "key"))
    assert rows == [Row(str(path), 0, "7", "first"), Row(str(path), 1, "b", "second")]
    assert inputs.count_rows([path]) == 2


def test_jsonl_bad_rows_are_named_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [
        '{"text": "fine", "id": 1}',
        '{"id": 2}',  # missing text
        '{"text": 3, "id": 3}',  # not a string
        '{"text": "   ", "id": 4}',  # empty
        "{not json",
        "[1, 2]",  # JSON, not an object
        '{"text": "no id"}',  # the id field is missing
        '{"text": "bool id", "id": true}',
    ]
    path.write_text("\n".join(lines) + "\n")
    rows = _rows(path, Fields("text", "id"))
    assert [r.row for r in rows] == list(range(8))
    assert rows[0].error is None and rows[0].text == "fine"
    reasons = [r.error or "" for r in rows[1:]]
    assert reasons[0] == "missing field 'text'"
    assert reasons[1] == "field 'text' is not a string (int)"
    assert reasons[2] == "empty text"
    assert reasons[3].startswith("not valid JSON")
    assert reasons[4] == "not a JSON object"
    assert reasons[5] == "missing field 'id'"
    assert reasons[6] == "id field 'id' is not a string or an integer"
    assert all(r.text is None for r in rows[1:])
    assert rows[1].id == "2" and rows[3].id == "4"  # a bad text keeps its good id for the report


def test_csv_and_tsv(tmp_path: Path) -> None:
    csv_path = tmp_path / "a.csv"
    csv_path.write_text('id,text\n1,"a, quoted\nmultiline text"\n2,plain\n3,\n')
    rows = _rows(csv_path, Fields("text", "id"))
    assert [(r.id, r.text, r.error) for r in rows] == [
        ("1", "a, quoted\nmultiline text", None),
        ("2", "plain", None),
        ("3", None, "empty text"),
    ]
    assert inputs.count_rows([csv_path]) == 3  # the quoted newline is one row, not two
    tsv_path = tmp_path / "b.tsv"
    tsv_path.write_text("text\tid\nhello, world\tx\n")
    assert _rows(tsv_path, Fields("text", "id")) == [Row(str(tsv_path), 0, "x", "hello, world")]


def test_plain_text_lines_and_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\r\ntwo\n\n\xff\xfe bad bytes\nlast without newline")
    rows = _rows(path)
    assert [(r.row, r.text, r.error) for r in rows] == [
        (0, "one", None),
        (1, "two", None),
        (2, None, "empty text"),
        (3, None, "not valid UTF-8"),
        (4, "last without newline", None),
    ]
    assert inputs.count_rows([path]) == 5


def test_parquet_columns_and_a_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    table = pa.table({"text": ["x", None, "z"], "doc": [10, 11, 12], "other": [1.0, 2.0, 3.0]})
    pq.write_table(table, path)
    rows = _rows(path, Fields("text", "doc"))
    assert [(r.id, r.text, r.error) for r in rows] == [
        ("10", "x", None),
        ("11", None, "field 'text' is not a string (NoneType)"),
        ("12", "z", None),
    ]
    assert inputs.count_rows([path]) == 3
    missing = _rows(path, Fields("body"))
    assert [r.error for r in missing] == ["missing field 'body'"] * 3


def test_folders_and_globs_expand_in_path_order(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.txt", "a.jsonl", "sub/c.csv", "notes.md"):
        (tmp_path / name).write_text("x\n")
    folder = inputs.expand([str(tmp_path)])
    assert folder == [tmp_path / "a.jsonl", tmp_path / "b.txt", tmp_path / "sub" / "c.csv"]
    globbed = inputs.expand([str(tmp_path / "**" / "*.csv"), str(tmp_path / "*.txt")])
    assert globbed == [tmp_path / "sub" / "c.csv", tmp_path / "b.txt"]
    # The same file named twice is read once.
    assert inputs.expand([str(tmp_path / "b.txt"), str(tmp_path / "*.txt")]) == [tmp_path / "b.txt"]


def test_unreadable_arguments_are_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("x\n")
    with pytest.raises(ValidationError, match="unknown input format '.md'"):
        inputs.expand([str(tmp_path / "notes.md")])
    with pytest.raises(ValidationError, match="no such file"):
        inputs.expand([str(tmp_path / "absent.jsonl")])
    with pytest.raises(ValidationError, match="no input files found"):
        inputs.expand([str(tmp_path / "*.parquet")])


def test_bad_arguments_exit_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tei_ort.bulk.cli import main

    for flag, value in (("--provider", "tpu"), ("--shard-size", "0"), ("--on-error", "ignore")):
        with pytest.raises(SystemExit) as exited:
            main([str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "out"), flag, value])
        assert exited.value.code == 2
        assert flag in capsys.readouterr().err
