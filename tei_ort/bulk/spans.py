"""Which file rows each shard holds, from the files' row counts alone, so a shard can be read by
itself (on a Ray worker) and still be exactly the shard the local run cuts from the row stream.

Shard k holds the job's rows [k * shard_size, (k + 1) * shard_size), where the job's rows are its
files' rows in order; a shard may end in one file and go on in the next. Worked example, files
a (3 rows) and b (4 rows), shard_size 2: [a 0:2], [a 2:3, b 0:1], [b 1:3], [b 3:4].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tei_ort.bulk import inputs
from tei_ort.bulk.inputs import Fields, Row
from tei_ort.errors import ValidationError


@dataclass(frozen=True)
class Span:
    file: str
    start: int  # first row, position in the file
    stop: int  # one past the last


@dataclass(frozen=True)
class ShardPlan:
    index: int
    spans: tuple[Span, ...]

    @property
    def rows(self) -> int:
        return sum(s.stop - s.start for s in self.spans)


def plan(files: Sequence[Path], shard_size: int) -> list[ShardPlan]:
    """Every shard of the job, in order (counting each file's rows with its format's counter)."""
    shards: list[ShardPlan] = []
    current: list[Span] = []
    room = shard_size
    for path in files:
        count, start = inputs.format_of(path).count(path), 0
        while start < count:
            stop = min(count, start + room)
            current.append(Span(str(path), start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                shards.append(ShardPlan(len(shards), tuple(current)))
                current, room = [], shard_size
    if current:
        shards.append(ShardPlan(len(shards), tuple(current)))
    return shards


def read(shard: ShardPlan, fields: Fields) -> list[Row]:
    """The shard's rows; a file that has fewer rows than planned changed under the job."""
    found: list[Row] = []
    for span in shard.spans:
        rows = list(inputs.rows_of(Path(span.file), fields, span.start, span.stop))
        if len(rows) != span.stop - span.start:
            raise ValidationError(
                f"{span.file} has {span.start + len(rows)} rows, not the {span.stop} or more "
                "counted when the job started: it changed during the job"
            )
        found.extend(rows)
    return found


def rows(shards: Sequence[ShardPlan], fields: Fields) -> Iterator[Row]:
    for shard in shards:
        yield from read(shard, fields)
