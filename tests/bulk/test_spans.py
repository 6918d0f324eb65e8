"""Shard plans (tei_ort/bulk/spans.py): a shard read by itself, mid-file, from counts alone, holds
exactly the rows the local run cuts from the whole row stream, in every input format."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tei_ort.bulk import inputs, spans
from tei_ort.bulk.cli import EmbedSettings, build_parser
from tei_ort.bulk.inputs import Fields
from tei_ort.errors import ValidationError

FIELDS = Fields("text", "id")


def _files(tmp_path: Path) -> list[Path]:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"text": f"j{i}", "id": f"j-{i}"}) + "\n" for i in range(7))
        + "not json\n"
    )
    text = tmp_path / "b.txt"
    text.write_bytes(b"t0\nt1\rt2\r\n\nt4\n")  # a lone CR splits a line in text mode
    csv = tmp_path / "c.csv"
    csv.write_text('id,text\nc-0,"two\nlines"\nc-1,c1\nc-2,c2\n')
    parquet = tmp_path / "d.parquet"
    table = pa.table({"text": [f"p{i}" for i in range(10)], "id": [f"p-{i}" for i in range(10)]})
    pq.write_table(table, parquet, row_group_size=3)  # groups [0:3] [3:6] [6:9] [9:10]
    return [jsonl, text, csv, parquet]


def test_the_worked_example(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a0\na1\na2\n")
    b.write_text("b0\nb1\nb2\nb3\n")
    shards = spans.plan([a, b], 2)
    assert [[(Path(s.file).name, s.start, s.stop) for s in p.spans] for p in shards] == [
        [("a.txt", 0, 2)],
        [("a.txt", 2, 3), ("b.txt", 0, 1)],
        [("b.txt", 1, 3)],
        [("b.txt", 3, 4)],
    ]
    assert [p.index for p in shards] == [0, 1, 2, 3]
    assert [p.rows for p in shards] == [2, 2, 2, 1]
    assert [r.text for r in spans.read(shards[1], FIELDS)] == ["a2", "b0"]


@pytest.mark.parametrize("shard_size", [1, 2, 3, 5, 7, 100])
def test_shards_read_alone_equal_the_row_stream(tmp_path: Path, shard_size: int) -> None:
    files = _files(tmp_path)
    everything = list(inputs.rows(files, FIELDS))
    assert len(everything) == 8 + 5 + 3 + 10
    plans = spans.plan(files, shard_size)
    stream = iter(everything)
    expected = [list(itertools.islice(stream, shard_size)) for _ in plans]
    # Each shard read on its own, last first (as a worker would, in any order).
    for plan in reversed(plans):
        assert spans.read(plan, FIELDS) == expected[plan.index]
    assert list(spans.rows(plans, FIELDS)) == everything
    assert sum(p.rows for p in plans) == len(everything)


def test_rows_keep_their_position_and_bad_rows_mid_file(tmp_path: Path) -> None:
    jsonl, text, _, parquet = _files(tmp_path)
    assert [(r.row, r.id, r.text) for r in inputs.rows_of(parquet, FIELDS, 4, 8)] == [
        (i, f"p-{i}", f"p{i}") for i in range(4, 8)
    ]
    [bad] = inputs.rows_of(jsonl, FIELDS, 7, None)
    assert (bad.row, bad.text) == (7, None) and bad.error is not None
    assert bad.error.startswith("not valid JSON")
    assert [r.text for r in inputs.rows_of(text, FIELDS, 1, None)] == ["t1", "t2", None, "t4"]


def test_a_file_that_shrank_after_planning_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("one\ntwo\nthree\n")
    [plan] = spans.plan([path], 10)
    path.write_text("one\n")
    with pytest.raises(ValidationError, match=r"a\.txt has 1 rows, not the 3 .*changed"):
        spans.read(plan, FIELDS)


def test_importing_tei_embed_does_not_import_ray() -> None:
    code = (
        "import sys, tei_ort.bulk.cli, tei_ort.bulk.spans, tei_ort.bulk.job; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_ray_flag_without_ray_is_a_clear_user_error(tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_text("hello\n")
    # None in sys.modules makes `import ray` fail as it does where the extra is not installed.
    code = (
        "import sys; sys.modules['ray'] = None; from tei_ort.bulk.cli import main; "
        f"main([{str(source)!r}, '-o', {str(tmp_path / 'out')!r}, '--ray'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert "--ray needs Ray: pip install 'tei-ort[ray]'" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing done before the check


@pytest.mark.parametrize(
    ("flags", "address", "actors"),
    [
        ([], None, None),  # no --ray: the local run
        (["--ray"], "", None),  # Ray's own rule: RAY_ADDRESS, else a new local instance
        (["--ray=auto", "--ray-actors", "3"], "auto", 3),
        (["--ray", "ray://head:10001"], "ray://head:10001", None),
    ],
)
def test_the_ray_flags(flags: list[str], address: str | None, actors: int | None) -> None:
    args = build_parser().parse_args(["a.txt", "-o", "out", *flags])
    settings = EmbedSettings.model_validate(vars(args))
    assert (settings.ray, settings.ray_actors) == (address, actors)
