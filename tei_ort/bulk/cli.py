"""`tei-embed INPUT... -o OUTPUT`: embed files offline with the server's engine, resumably.

Wiring only: settings (pydantic, the edge) -> input files -> the output folder's manifest (a
resumed job pins the provider and variant it started with) -> model and engine -> Job.run;
with --ray, the model is loaded here only to pin the variant and check the job, and
ray_job.run embeds the shards on the cluster (Ray is imported only then).
Exit status: 0 done, 2 a user error (bad arguments, a bad row under --on-error fail, an output
folder that holds another job), 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Literal

import pydantic

from tei_ort.bulk import inputs, spans
from tei_ort.bulk.job import Job, JobOptions, OnError, ShardEmbedder, describe, fingerprint
from tei_ort.bulk.model import LoadedModel, ModelChoice, load
from tei_ort.bulk.progress import Summary, progress_for
from tei_ort.bulk.shards import JobManifest, OutputFolder
from tei_ort.bulk.tasks import TASKS
from tei_ort.engine import Engine, Tokenization
from tei_ort.errors import TeiOrtError, ValidationError
from tei_ort.serve.settings import DEFAULT_MODEL_ID, parse_bool
from tei_ort.tokenization import TruncationDirection

logger = logging.getLogger("tei_ort.bulk")


class EmbedSettings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    inputs: tuple[str, ...] = pydantic.Field(min_length=1)
    output: Path
    model_id: str | None = None
    revision: str | None = None
    huggingface_hub_cache: Path | None = None
    provider: Literal["auto", "cpu", "cuda", "openvino"] = "auto"
    variant: Literal["fp32", "fp16", "int8", "int8-w7", "int8-u8", "int8-wo", "bf16"] | None = None
    intra_op_threads: int | None = pydantic.Field(default=None, ge=1)
    max_batch_tokens: int = pydantic.Field(default=16384, ge=1)
    text_field: str = "text"
    id_field: str | None = None
    task: Literal["embed", "sparse"] = "embed"
    prompt_name: str | None = None
    truncate: bool = True
    truncation_direction: TruncationDirection = TruncationDirection.RIGHT
    normalize: bool = True
    dimensions: int | None = pydantic.Field(default=None, ge=1)
    shard_size: int = pydantic.Field(default=10_000, ge=1)
    on_error: OnError = OnError.FAIL
    log_level: str = "info"
    ray: str | None = None  # "": Ray's default cluster; None: run here
    ray_actors: int | None = pydantic.Field(default=None, ge=1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tei-embed",
        description="Embed JSONL, Parquet, CSV/TSV or plain-text files (or folders and globs of "
        "them) into Parquet shards, with tei-serve's runtime and batching and no HTTP. Killed "
        "and started again with the same arguments, it finishes the job.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or globs")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    model = p.add_argument_group("model (as tei-serve)")
    model.add_argument(
        "--model-id",
        help="a model package, an ONNX repo or folder, or a plain Hugging Face model "
        f"(exported on the fly). Default: {DEFAULT_MODEL_ID}, embedded.",
    )
    model.add_argument("--revision")
    model.add_argument("--huggingface-hub-cache", type=Path)
    model.add_argument("--provider", default="auto", help="auto, cpu, cuda or openvino")
    model.add_argument(
        "--variant",
        help="fp32, fp16, int8, int8-w7, int8-u8, int8-wo or bf16; default: chosen here",
    )
    model.add_argument("--intra-op-threads", type=int)
    model.add_argument("--max-batch-tokens", type=int, default=16384)
    rows = p.add_argument_group("rows")
    rows.add_argument("--text-field", default="text", help="JSONL/CSV/Parquet field to embed")
    rows.add_argument("--id-field", help="field copied to the output's `id` column")
    rows.add_argument(
        "--on-error",
        choices=[o.value for o in OnError],
        default=OnError.FAIL.value,
        help="a bad row (missing field, not a string, empty, refused by the tokenizer): skip "
        "it (reported, and listed in the manifest) or stop the job. Default: fail.",
    )
    request = p.add_argument_group("embedding (as the API's fields)")
    request.add_argument("--task", choices=sorted(TASKS), default="embed")
    request.add_argument("--prompt-name")
    request.add_argument("--truncate", type=parse_bool, default=True, metavar="BOOL")
    request.add_argument("--truncation-direction", choices=["right", "left"], default="right")
    request.add_argument("--normalize", type=parse_bool, default=True, metavar="BOOL")
    request.add_argument("--dimensions", type=int, help="Matryoshka: keep the first N")
    job = p.add_argument_group("job")
    job.add_argument("--shard-size", type=int, default=10_000, help="rows per Parquet shard")
    job.add_argument("--log-level", default="info")
    cluster = p.add_argument_group("Ray (pip install 'tei-ort[ray]')")
    cluster.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the job on Ray Data: on the cluster at ADDRESS (as ray.init's: auto, "
        "HOST:PORT, ray://HOST:PORT), or, with no ADDRESS, RAY_ADDRESS's or a new local one. "
        "Each actor reserves --intra-op-threads CPUs (default 1) and runs that many ONNX "
        "Runtime threads. Inputs and the model must be readable at the same path on every node.",
    )
    cluster.add_argument(
        "--ray-actors", type=int, help="most actors (default: as many as the cluster's CPUs hold)"
    )
    return p


def _job_options(settings: EmbedSettings) -> JobOptions:
    return JobOptions(
        fields=inputs.Fields(settings.text_field, settings.id_field),
        task=settings.task,
        tokenization=Tokenization(
            settings.truncate, settings.truncation_direction, settings.prompt_name
        ),
        normalize=settings.normalize,
        dimensions=settings.dimensions,
        shard_size=settings.shard_size,
        on_error=settings.on_error,
    )


def _choice(settings: EmbedSettings, previous: JobManifest | None) -> ModelChoice:
    provider: str = settings.provider
    variant: str | None = settings.variant
    if previous is not None:
        if variant is not None and variant != previous.variant:
            raise ValidationError(
                f"{settings.output} was started with --variant {previous.variant}; a job keeps "
                "its variant (use a new output folder for another)"
            )
        provider, variant = previous.provider, previous.variant
    return ModelChoice(
        settings.model_id,
        settings.revision,
        settings.huggingface_hub_cache,
        provider,
        variant,
        settings.intra_op_threads,
        settings.max_batch_tokens,
    )


async def _run_engine(
    loaded: LoadedModel,
    files: list[Path],
    options: JobOptions,
    output: OutputFolder,
    manifest: JobManifest,
) -> Summary:
    engine = Engine(loaded.model, loaded.config, replicas=loaded.forward_models)
    await engine.start()
    try:
        job = Job(engine, files, options, output, manifest)
        await job.check()
        progress = progress_for(inputs.count_rows(files), sys.stderr.isatty())
        try:
            return await job.run(progress)
        finally:
            progress.close()
    finally:
        await engine.stop()


def _ray_job() -> ModuleType:
    try:
        from tei_ort.bulk import ray_job  # Ray is an optional extra: imported only here
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "ray":
            raise
        raise ValidationError("--ray needs Ray: pip install 'tei-ort[ray]'") from exc
    return ray_job


async def _check(loaded: LoadedModel, options: JobOptions) -> None:
    engine = Engine(loaded.model, loaded.config, replicas=loaded.forward_models)
    await engine.start()
    try:
        await ShardEmbedder(engine, options).check()
    finally:
        await engine.stop()


def _run_on_ray(
    settings: EmbedSettings,
    choice: ModelChoice,
    target_batch_tokens: int | None,
    files: list[Path],
    options: JobOptions,
    output: OutputFolder,
    manifest: JobManifest,
) -> Summary:
    ray_job = _ray_job()

    plans = spans.plan(files, settings.shard_size)
    ray_options = ray_job.RayOptions(
        address=settings.ray or None,
        actor_cpus=settings.intra_op_threads or 1,
        max_actors=settings.ray_actors,
    )
    progress = progress_for(sum(p.rows for p in plans), sys.stderr.isatty())
    try:
        return ray_job.run(
            choice, target_batch_tokens, options, ray_options, output, manifest, plans, progress
        )
    finally:
        progress.close()


def run(settings: EmbedSettings) -> Summary:
    if settings.ray is not None:
        _ray_job()  # before any work: a missing extra is a user error
    files = inputs.expand(settings.inputs)
    options = _job_options(settings)
    output = OutputFolder(settings.output)
    previous = output.read_manifest()
    described = describe(files, options, settings.model_id or DEFAULT_MODEL_ID)
    key = fingerprint(described)
    if previous is not None and previous.fingerprint != key:
        raise ValidationError(
            f"{settings.output} holds the output of another job (other inputs, model or "
            "options); use a new output folder, or remove this one"
        )
    if previous is not None:
        logger.info("resuming: %d shards already done", len(previous.shards))
    choice = _choice(settings, previous)
    if settings.ray is not None:  # the driver's trial (batch budget) with the actors' threads
        choice = dataclasses.replace(choice, intra_op_threads=settings.intra_op_threads or 1)
    loaded = load(choice, settings.shard_size)
    manifest = previous or JobManifest(
        fingerprint=key,
        job=described,
        model_id=loaded.model_id,
        provider=loaded.model.provider.value,
        variant=loaded.model.variant.name.value,
        shard_size=settings.shard_size,
    )
    output.prepare()
    output.write_manifest(manifest)
    if settings.ray is None:
        return asyncio.run(_run_engine(loaded, files, options, output, manifest))
    # The driver loads the model only to pin the variant and check the job before any worker
    # starts; the actors load their own.
    asyncio.run(_check(loaded, options))
    target_batch_tokens = loaded.config.target_batch_tokens
    del loaded
    return _run_on_ray(settings, choice, target_batch_tokens, files, options, output, manifest)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    try:
        settings = EmbedSettings.model_validate(args)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        parser.error(problems.replace("_", "-"))  # exits with status 2, as argparse's own errors
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        summary = run(settings)
    except TeiOrtError as exc:
        logger.error("tei-embed: %s", exc)
        raise SystemExit(2) from exc
    logger.info("done: %s; output in %s", summary.describe(), settings.output)


if __name__ == "__main__":
    main()
