"""The shard loop: cut the job's rows into shards, embed each through the engine, write it.

Each shard is one engine request with all its good rows: the engine tokenizes them in its pool and
its batcher forms the server's length-grouped, token-budget batches from them. All of a shard's
inputs are queued at once, so its batches do not depend on thread timing, and a shard recomputed
after a kill is batched as it was the first time.

Bad rows (see inputs.py; also inputs the tokenizer rejects) are reported with their file and row,
recorded in the manifest, and skipped, or they stop the job (`--on-error fail`) before their
shard is written: the shards before it stay done.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import pyarrow as pa

from tei_ort.bulk import inputs, tasks
from tei_ort.bulk.inputs import Fields, Row
from tei_ort.bulk.progress import Progress, Summary
from tei_ort.bulk.shards import JobManifest, OutputFolder, RowError, ShardEntry
from tei_ort.engine import EmbedRequest, Engine, Tokenization
from tei_ort.errors import TeiOrtError, TokenizationError, ValidationError

logger = logging.getLogger(__name__)

# Rows named in the log, per job; every one is in the manifest regardless.
LOGGED_BAD_ROWS = 20
# Inputs retried alone at once, after their shard's request failed on one of them.
ISOLATION_CONCURRENCY = 64


class OnError(str, enum.Enum):
    SKIP = "skip"
    FAIL = "fail"


class BadRowError(TeiOrtError):
    """--on-error fail met a bad row."""


@dataclass(frozen=True)
class JobOptions:
    fields: Fields
    task: str  # a key of tasks.TASKS
    tokenization: Tokenization
    normalize: bool
    dimensions: int | None
    shard_size: int
    on_error: OnError


def describe(files: Sequence[Path], options: JobOptions, model_id: str) -> dict[str, object]:
    """Everything that changes which rows a shard holds or what their vectors are."""
    return {
        "inputs": [[str(p), p.stat().st_size] for p in files],
        "model_id": model_id,
        "fields": asdict(options.fields),
        "task": options.task,
        "truncate": options.tokenization.truncate,
        "truncation_direction": options.tokenization.direction.value,
        "prompt_name": options.tokenization.prompt_name,
        "normalize": options.normalize,
        "dimensions": options.dimensions,
        "shard_size": options.shard_size,
    }


def fingerprint(job: dict[str, object]) -> str:
    return hashlib.sha256(orjson.dumps(job, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _shards(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    while shard := list(itertools.islice(rows, size)):
        yield shard


@dataclass(frozen=True)
class EmbeddedShard:
    """A shard's output table and its figures, before it is written anywhere."""

    table: pa.Table
    rows: int  # job rows the shard covers, bad ones included
    tokens: int
    errors: tuple[RowError, ...]  # in row order

    def entry(self, file: str, size: int) -> ShardEntry:
        return ShardEntry(
            file=file,
            bytes=size,
            rows=self.rows,
            embedded=self.table.num_rows,
            tokens=self.tokens,
            errors=self.errors,
        )


class BadRowReporter:
    """--on-error: stop at the first bad row, or log the first few and count on."""

    def __init__(self, on_error: OnError) -> None:
        self._on_error = on_error
        self._logged = 0

    def __call__(self, errors: Sequence[RowError]) -> None:
        if errors and self._on_error is OnError.FAIL:
            first = errors[0]
            raise BadRowError(
                f"{first.file}, row {first.row}: {first.reason} (--on-error fail; "
                f"{len(errors)} bad rows in this shard; --on-error skip skips them)"
            )
        for error in errors:
            if self._logged < LOGGED_BAD_ROWS:
                logger.warning("skipped %s, row %d: %s", error.file, error.row, error.reason)
            elif self._logged == LOGGED_BAD_ROWS:
                logger.warning("more bad rows: see the manifest's shard errors")
            self._logged += 1


Report = Callable[[Sequence[RowError]], None]


def _ignore(errors: Sequence[RowError]) -> None:
    """Report for a worker: its shard's errors go back with it, and the driver reports them."""


class ShardEmbedder:
    """One shard's rows -> its output table, through the engine (the local loop and each Ray
    actor run the same code, so their shards are the same)."""

    def __init__(self, engine: Engine, options: JobOptions) -> None:
        self._engine = engine
        self._options = options
        self._task = tasks.TASKS[options.task]
        dimensions = options.dimensions or engine.model.manifest.dimensions
        self._schema = tasks.schema(self._task, dimensions)

    def _request(self, texts: list[str]) -> EmbedRequest:
        return EmbedRequest(
            list(texts),
            self._options.tokenization,
            normalize=self._options.normalize and self._task.uses_normalize,
            dimensions=self._options.dimensions,
        )

    async def check(self) -> None:
        """One input through the whole path, so that a job-wide mistake (wrong task for the
        model, --dimensions too large, unknown prompt) fails before any shard."""
        await self._task.run(self._engine, self._request(["tei-embed check"]))

    async def embed(self, shard: list[Row], report: Report = _ignore) -> EmbeddedShard:
        """`report` sees the bad rows as they are found (and may stop the shard there)."""
        errors = [RowError(file=r.file, row=r.row, reason=r.error) for r in shard if r.error]
        report(errors)
        good = [r for r in shard if r.error is None]
        embedded, failed = await self._embed(good)
        report(failed)
        errors.extend(failed)
        failed_at = {(e.file, e.row) for e in failed}
        good = [r for r in good if (r.file, r.row) not in failed_at]
        columns: dict[str, pa.Array] = {
            "id": pa.array([r.id for r in good], pa.string()),
            "file": pa.array([r.file for r in good], pa.string()),
            "row": pa.array([r.row for r in good], pa.int64()),
            **embedded.columns,
        }
        table = pa.Table.from_pydict(columns, schema=self._schema)
        order = {(r.file, r.row): i for i, r in enumerate(shard)}
        errors.sort(key=lambda e: order[(e.file, e.row)])
        return EmbeddedShard(table, len(shard), embedded.tokens, tuple(errors))

    async def _embed(self, rows: list[Row]) -> tuple[tasks.Embedded, list[RowError]]:
        """The rows' columns and the rows the engine refused (tokenizer or validation)."""
        if not rows:
            return self._empty(), []
        try:
            return await self._task.run(self._engine, self._request(self._texts(rows))), []
        except (ValidationError, TokenizationError):
            pass  # one of the inputs: find which, one by one (check() ruled out job-wide causes)
        outcomes: list[tasks.Embedded | BaseException] = []
        for start in range(0, len(rows), ISOLATION_CONCURRENCY):
            chunk = rows[start : start + ISOLATION_CONCURRENCY]
            runs = [self._task.run(self._engine, self._request([r.text or ""])) for r in chunk]
            outcomes.extend(await asyncio.gather(*runs, return_exceptions=True))
        failed: list[RowError] = []
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, (ValidationError, TokenizationError)):
                failed.append(RowError(file=row.file, row=row.row, reason=str(outcome)))
            elif isinstance(outcome, BaseException):
                raise outcome
        refused = {(e.file, e.row) for e in failed}
        kept = [r for r in rows if (r.file, r.row) not in refused]
        if not kept:
            return self._empty(), failed
        # The rest again as one request, not the single-input runs above (batched as they came):
        # so this shard's batches, too, depend only on its rows, and a resumed run repeats them.
        return await self._task.run(self._engine, self._request(self._texts(kept))), failed

    @staticmethod
    def _texts(rows: list[Row]) -> list[str]:
        return [r.text for r in rows if r.text is not None]

    def _empty(self) -> tasks.Embedded:
        names = self._schema.names[len(tasks.ROW_FIELDS) :]
        return tasks.Embedded({n: pa.array([], self._schema.field(n).type) for n in names}, 0)


class Job:
    def __init__(
        self,
        engine: Engine,
        files: Sequence[Path],
        options: JobOptions,
        output: OutputFolder,
        manifest: JobManifest,
    ) -> None:
        self._files = files
        self._options = options
        self._output = output
        self._manifest = manifest
        self._embedder = ShardEmbedder(engine, options)
        self._report = BadRowReporter(options.on_error)

    async def check(self) -> None:
        await self._embedder.check()

    async def run(self, progress: Progress) -> Summary:
        started = time.perf_counter()
        rows = embedded = bad = tokens = written = reused = 0
        shards = _shards(inputs.rows(self._files, self._options.fields), self._options.shard_size)
        for index, shard in enumerate(shards):
            if self._output.is_done(self._manifest, index):
                reused += 1
                progress.reused(len(shard))
                continue
            result = await self._embedder.embed(shard, self._report)
            entry = result.entry(*self._output.write_shard(index, result.table))
            self._manifest = self._manifest.model_copy(
                update={"shards": {**self._manifest.shards, index: entry}}
            )
            self._output.write_manifest(self._manifest)
            rows += entry.rows
            embedded += entry.embedded
            bad += len(entry.errors)
            tokens += entry.tokens
            written += 1
            progress.advance(entry.rows, entry.tokens)
        self._manifest = self._manifest.model_copy(update={"complete": True})
        self._output.write_manifest(self._manifest)
        seconds = time.perf_counter() - started
        return Summary(rows, embedded, bad, tokens, seconds, written, reused)
