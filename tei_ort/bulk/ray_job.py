"""`tei-embed --ray [ADDRESS]`: the same job on Ray Data, with the local run's output folder.

    shard plans (spans.py)  ->  read: each shard's rows (a task per shard)
                            ->  embed: an actor pool; each actor loads the model once, with as
                                many ONNX Runtime threads as the CPUs it reserves, and turns a
                                shard into its Parquet bytes (job.ShardEmbedder, the local code)
                            ->  the driver writes each shard as it arrives (shards.OutputFolder)
                                and records it in the manifest

A dataset row is a whole shard, in and out, so Ray never splits or merges shards: each is one
engine request, batched as the local run batches it. Shards finish in any order; the manifest
keys them by index, so the folder (part-NNNNN.parquet, manifest.json) is the local run's and a
job can be resumed by either. An actor killed mid-shard is restarted and its shard retried
(max_restarts / max_task_retries); a shard delivered twice is written once.

Only `tei-embed --ray` imports this module (and Ray, the `ray` extra).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
from ray.exceptions import RayError

from tei_ort.bulk import spans
from tei_ort.bulk.inputs import Fields, Row
from tei_ort.bulk.job import BadRowReporter, JobOptions, ShardEmbedder
from tei_ort.bulk.model import ModelChoice, load
from tei_ort.bulk.progress import Progress, Summary
from tei_ort.bulk.shards import JobManifest, OutputFolder, ShardEntry, shard_name
from tei_ort.engine import Engine
from tei_ort.errors import TeiOrtError

logger = logging.getLogger(__name__)

ROW_COLUMNS = ("file", "row", "id", "text", "error")
# Ray Data appends this to a failed task's exception message (ray.data._internal.util's
# _annotate_exception_with_retry_context): "\nFailed to apply UDF transform after 1/1 attempts..."
RAY_RETRY_NOTE = re.compile(r"\nFailed to .* after \d+/\d+ attempts \(total backoff .*", re.DOTALL)


@dataclass(frozen=True)
class RayOptions:
    address: str | None  # None: Ray's own rule (RAY_ADDRESS, else a new local instance)
    actor_cpus: int  # CPUs each actor reserves, and its ONNX Runtime intra-op threads
    max_actors: int | None  # None: as many as the cluster's CPUs hold


def _read(item: dict[str, Any], fields: Fields) -> dict[str, Any]:
    """Ray Data read stage: a shard plan -> the shard's rows, as one dataset row of lists."""
    plan = spans.ShardPlan(item["shard"], tuple(spans.Span(*s) for s in orjson.loads(item["plan"])))
    rows = spans.read(plan, fields)
    return {"shard": plan.index, **{c: [getattr(r, c) for r in rows] for c in ROW_COLUMNS}}


class ShardActor:
    """One per pool slot: the model and an engine (on the actor's own event loop), loaded once."""

    def __init__(
        self, choice: ModelChoice, options: JobOptions, target_batch_tokens: int | None
    ) -> None:
        loaded = load(choice, options.shard_size)
        config = dataclasses.replace(
            loaded.config,
            tokenization_workers=choice.intra_op_threads,
            # The driver's (its timed trial's) budget, so every actor forms the same batches.
            target_batch_tokens=target_batch_tokens,
        )
        self._loop = asyncio.new_event_loop()
        self._engine = Engine(loaded.model, config, replicas=loaded.forward_models)
        self._loop.run_until_complete(self._engine.start())
        self._embedder = ShardEmbedder(self._engine, options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list[Any]] = {"shard": [], "entry": [], "parquet": []}
        for item in batch.to_pylist():
            rows = [Row(*row) for row in zip(*(item[c] for c in ROW_COLUMNS), strict=True)]
            result = self._loop.run_until_complete(self._embedder.embed(rows))
            sink = pa.BufferOutputStream()
            pq.write_table(result.table, sink)
            data = sink.getvalue().to_pybytes()
            entry = result.entry(shard_name(item["shard"]), len(data))
            out["shard"].append(item["shard"])
            out["entry"].append(entry.model_dump_json())
            out["parquet"].append(data)
        return pa.table(out)


def _actors(options: RayOptions) -> int:
    cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
    fit = max(1, cpus // options.actor_cpus)
    return fit if options.max_actors is None else min(fit, options.max_actors)


def _dataset(
    pending: list[spans.ShardPlan],
    options: JobOptions,
    choice: ModelChoice,
    target_batch_tokens: int | None,
    ray_options: RayOptions,
) -> ray.data.Dataset:
    plans = [
        {"shard": p.index, "plan": orjson.dumps([dataclasses.astuple(s) for s in p.spans])}
        for p in pending
    ]
    actors = _actors(ray_options)
    logger.info(
        "Ray: %d shards on up to %d actors x %d CPUs", len(pending), actors, ray_options.actor_cpus
    )
    return (
        ray.data.from_items(plans, override_num_blocks=max(1, len(plans)))
        # Reading is light next to embedding; it takes no CPU from the actors' reservations.
        .map(functools.partial(_read, fields=options.fields), num_cpus=0)
        .map_batches(
            ShardActor,
            fn_constructor_kwargs={
                "choice": choice,
                "options": options,
                "target_batch_tokens": target_batch_tokens,
            },
            batch_size=1,  # one shard per call: one engine request, batched as locally
            batch_format="pyarrow",
            # Ray Data's actor pools restart an actor that dies and retry the shard it held, any
            # number of times (max_restarts = max_task_retries = -1 by default): no lost shard.
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            num_cpus=ray_options.actor_cpus,
        )
    )


def _user_error(exc: BaseException) -> TeiOrtError | None:
    """The TeiOrtError a worker raised, under Ray's wrapper (RayTaskError keeps the worker's own
    exception as `cause`; the wrapper is also an instance of it, but its text is Ray's)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException):
            todo.append(cause)
        elif isinstance(current, TeiOrtError):
            return current
        else:
            todo += [current.__cause__, current.__context__]
    return None


def _results(dataset: ray.data.Dataset) -> Iterator[tuple[int, ShardEntry, bytes]]:
    try:
        for row in dataset.iter_rows():
            entry = ShardEntry.model_validate_json(row["entry"])
            yield int(row["shard"]), entry, row["parquet"]
    except RayError as exc:
        # A user error in a worker (a file changed under the job, say) keeps its own message
        # and exit status (2).
        cause = _user_error(exc)
        if cause is None:
            raise
        if cause.args and isinstance(cause.args[0], str):  # without Ray Data's retry note
            cause.args = (RAY_RETRY_NOTE.sub("", cause.args[0]), *cause.args[1:])
        raise cause from exc


def run(
    choice: ModelChoice,
    target_batch_tokens: int | None,
    options: JobOptions,
    ray_options: RayOptions,
    output: OutputFolder,
    manifest: JobManifest,
    plans: list[spans.ShardPlan],
    progress: Progress,
) -> Summary:
    """Embed the shards `manifest` does not hold yet."""
    started = time.perf_counter()
    report = BadRowReporter(options.on_error)
    pending = [p for p in plans if not output.is_done(manifest, p.index)]
    reused = [p for p in plans if output.is_done(manifest, p.index)]
    for plan in reused:
        progress.reused(plan.rows)
    rows = embedded = bad = tokens = 0
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=ray_options.address, log_to_driver=True)
    try:
        context = ray.data.DataContext.get_current()  # the workers get the driver's
        context.enable_progress_bars = False  # ours is on the driver
        # A worker's own exception, not Ray Data's UserCodeException around it (whose pickled
        # form loses the original): a user error keeps its message and exit status.
        context.raise_original_map_exception = True
        pinned = dataclasses.replace(
            choice,
            provider=manifest.provider,
            variant=manifest.variant,
            intra_op_threads=ray_options.actor_cpus,
        )
        if pending:
            dataset = _dataset(pending, options, pinned, target_batch_tokens, ray_options)
            for index, entry, data in _results(dataset):
                if output.is_done(manifest, index):
                    logger.info("shard %d delivered again (a retried task); kept once", index)
                    continue
                report(list(entry.errors))
                name, size = output.write_bytes(index, data)
                if (name, size) != (entry.file, entry.bytes):
                    raise TeiOrtError(f"shard {index}: wrote {name} ({size} B), not {entry}")
                done = dict(sorted({**manifest.shards, index: entry}.items()))  # as the local run
                manifest = manifest.model_copy(update={"shards": done})
                output.write_manifest(manifest)
                rows += entry.rows
                embedded += entry.embedded
                bad += len(entry.errors)
                tokens += entry.tokens
                progress.advance(entry.rows, entry.tokens)
    finally:
        if owns_ray:
            ray.shutdown()
    missing = [p.index for p in plans if not output.is_done(manifest, p.index)]
    if missing:
        raise TeiOrtError(f"Ray returned no result for shards {missing}")
    output.write_manifest(manifest.model_copy(update={"complete": True}))
    seconds = time.perf_counter() - started
    written = len(pending)
    return Summary(rows, embedded, bad, tokens, seconds, written, len(reused))
