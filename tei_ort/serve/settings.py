"""Every knob of `tei-serve`, read once at start-up from the command line and the environment.

TEI's flags keep TEI's names, environment variables and defaults (text-embeddings-router's clap
definitions); ours (--provider, --variant, --intra-op-threads) follow the same pattern. Precedence:
command line, then environment, then default. Nothing else in the package reads the environment.

One table (`FLAGS`) drives argparse, the environment lookup and `--help`, so a flag cannot be
documented in one place and read in another.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic

from tei_ort.serve.bind_address import ANY_ADDRESS, resolve_bind_host

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
# TEI's default is 32, which trips up every client that sends its whole corpus at once
# (langchain-openai sends 1,000 inputs, OpenAI's own limit is 2,048). The engine splits a client
# batch across forward batches, so a big request costs no more memory than several small ones.
DEFAULT_MAX_CLIENT_BATCH_SIZE = 2048


class Settings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    # model
    model_id: str | None = None
    revision: str | None = None
    dtype: Literal["float32", "float16"] | None = None
    pooling: Literal["cls", "mean", "splade", "last_token", "last-token"] | None = None
    served_model_name: str | None = None
    # Several models in one server: --model-id and --served-model-name given again (or
    # comma-separated in MODEL_ID / SERVED_MODEL_NAME); the first stays in the fields above.
    more_model_ids: tuple[str, ...] = ()
    more_served_model_names: tuple[str, ...] = ()
    default_prompt_name: str | None = None
    default_prompt: str | None = None
    dense_path: str | None = None
    hf_token: str | None = pydantic.Field(default=None, repr=False)
    # --hf-api-token (HF_API_TOKEN), TEI's deprecated alias, was given: start-up warns, as TEI
    hf_api_token_given: bool = False
    huggingface_hub_cache: Path | None = None
    # ours
    provider: Literal["auto", "cpu", "cuda", "openvino"] = "auto"
    variant: Literal["fp32", "fp16", "int8", "int8-w7", "int8-u8", "int8-wo", "bf16"] | None = None
    intra_op_threads: int | None = pydantic.Field(default=None, ge=1)
    # Forward threads, each on its own session of the model, fed by one queue (engine/batcher.py).
    # None: 1, or 2 on half the cores each where a trial at first start finds them faster
    # (serve/loading.py).
    engine_replicas: int | None = pydantic.Field(default=None, ge=1)
    # OpenVINO CPU streams (runtime/openvino_session.py); 1: one LATENCY compile.
    openvino_streams: int = pydantic.Field(default=1, ge=1, le=2)
    # Off: on a 2-core machine spinning ORT threads starve the event loop and tokenizer threads
    # (server tok/s 1.2-1.4x higher without, python -m tei_ort.bench --serve-args, see the note).
    ort_spinning: bool = False
    # batching and limits
    max_concurrent_requests: int = pydantic.Field(default=512, ge=1)
    max_batch_tokens: int = pydantic.Field(default=16384, ge=1)
    max_batch_requests: int | None = pydantic.Field(default=None, ge=1)
    max_client_batch_size: int = pydantic.Field(default=DEFAULT_MAX_CLIENT_BATCH_SIZE, ge=1)
    auto_truncate: bool = True
    tokenization_workers: int | None = pydantic.Field(default=None, ge=1)
    payload_limit: int = pydantic.Field(default=2_000_000, ge=1024)
    # server
    hostname: str = ANY_ADDRESS
    port: int = pydantic.Field(default=3000, ge=0, le=65535)
    api_key: str | None = pydantic.Field(default=None, repr=False)
    cors_allow_origin: tuple[str, ...] = ()
    # TEI's socket to its Python backend: accepted so that TEI command lines start, unused here
    uds_path: str | None = None
    # telemetry
    json_output: bool = False
    disable_spans: bool = False  # JSON lines without the trace and span ids
    otlp_endpoint: str | None = None
    otlp_service_name: str = "text-embeddings-inference.server"
    prometheus_port: int = pydantic.Field(default=9000, ge=0, le=65535)
    # ours beside TEI's: TEI builds HTTP or gRPC; tei-serve serves both, gRPC when this is set
    grpc_port: int | None = pydantic.Field(default=None, ge=1, le=65535)
    # env-only knobs, as in TEI
    task: str | None = None  # TASK=sentence-similarity routes POST / to /similarity
    log_level: str = "info"
    # where `hostname` came from: a HOSTNAME that the shell set is the machine's name, not a wish
    hostname_from_env: bool = False

    @pydantic.model_validator(mode="after")
    def _one_default_prompt(self) -> Settings:
        if self.default_prompt is not None and self.default_prompt_name is not None:
            raise ValueError("--default-prompt and --default-prompt-name are mutually exclusive")
        if len(self.more_served_model_names) > len(self.more_model_ids):
            raise ValueError("more --served-model-name values than --model-id values")
        return self

    def per_model(self) -> tuple[Settings, ...]:
        """One Settings per served model, the first model's first. The others take every limit and
        runtime flag, but not the first model's --revision, --pooling, default prompt or
        --dense-path, which would not fit another model."""
        first = self.model_copy(update={"more_model_ids": (), "more_served_model_names": ()})
        names = self.more_served_model_names
        others = (
            first.model_copy(
                update={
                    "model_id": model_id,
                    "served_model_name": names[index] if index < len(names) else None,
                    "revision": None,
                    "pooling": None,
                    "default_prompt": None,
                    "default_prompt_name": None,
                    "dense_path": None,
                }
            )
            for index, model_id in enumerate(self.more_model_ids)
        )
        return (first, *others)

    @property
    def model_name(self) -> str:
        """What /info and the OpenAI route call the model."""
        return self.served_model_name or self.model_id or DEFAULT_MODEL_ID

    @property
    def variant_name(self) -> str | None:
        """--variant wins; TEI's --dtype maps onto our variants."""
        if self.variant is not None:
            return self.variant
        return {"float32": "fp32", "float16": "fp16", None: None}[self.dtype]

    def bind_host(self) -> str:
        return resolve_bind_host(self.hostname, from_env=self.hostname_from_env)

    def redacted(self) -> dict[str, Any]:
        """For the start-up log: secrets never reach a log line."""
        data = self.model_dump(mode="json", exclude={"hostname_from_env", "hf_api_token_given"})
        for secret in ("hf_token", "api_key"):
            if data[secret] is not None:
                data[secret] = "<redacted>"
        return data


@dataclass(frozen=True)
class Flag:
    name: str  # Settings field; TEI's environment variable is its name in upper case
    help: str
    kind: Literal["value", "bool", "list"] = "value"
    short: str | None = None

    @property
    def env(self) -> str:
        return self.name.upper()


FLAGS: tuple[Flag, ...] = (
    Flag(
        "model_id",
        "A tei_ort model package folder, a hub repo or local folder with "
        "an ONNX export (onnx/model.onnx), or a plain Hugging Face model (exported on the fly when "
        f"the export extra is installed). Default: {DEFAULT_MODEL_ID}, embedded. Repeat the "
        "flag (or comma-separate the env var) to serve several models; the first is the default.",
        kind="list",
    ),
    Flag("revision", "Hub revision: a commit, branch or refs/pr/N. Default: main."),
    Flag("dtype", "float32 or float16; picks the fp32 or fp16 variant (see --variant)."),
    Flag("pooling", "Override the pooling: cls, mean, splade or last_token."),
    Flag(
        "served_model_name",
        "Name in /info and OpenAI replies, and the `model` requests route by. Default: the "
        "model id. With several --model-id, one per model in order (repeat the flag, or "
        "comma-separated in the env var).",
        kind="list",
    ),
    Flag(
        "default_prompt_name",
        "Key into the model's sentence-transformers "
        "prompts, applied to every embed request without prompt_name.",
    ),
    Flag(
        "default_prompt",
        "A literal prompt prepended to every embed request "
        "without prompt_name. Excludes --default-prompt-name.",
    ),
    Flag(
        "dense_path",
        "Accepted for TEI compatibility; a package carries its Dense "
        "layers already, so this only logs a warning.",
    ),
    Flag("hf_token", "Hub token for gated or private models. Never logged."),
    Flag("hf_api_token", "TEI's deprecated alias of --hf-token (which wins); logs a warning."),
    Flag(
        "huggingface_hub_cache",
        "Hub download cache; exported and "
        "on-the-fly packages are cached beside it. Default: ~/.cache/tei_ort.",
    ),
    Flag(
        "provider",
        "Execution provider: auto (CUDA when a GPU is usable; else the fastest variant "
        "validated on this CPU, by a short trial at first start, among OpenVINO bf16 (CPUs "
        "with bfloat16) and the CPU EP's int8, int8-w7, int8-u8 and fp32), cpu, cuda, openvino.",
    ),
    Flag(
        "variant",
        "Graph variant: fp32, fp16, int8, int8-w7, int8-u8, int8-wo (decoders) or bf16. Default: the fastest variant "
        "validated on this CPU (re-validated here when it was measured on another CPU class).",
    ),
    Flag(
        "intra_op_threads",
        "ONNX Runtime intra-op threads (per engine replica). Default: one per physical core, "
        "split evenly between the replicas.",
    ),
    Flag(
        "engine_replicas",
        "Sessions of the model that run forward batches concurrently, fed by one queue; each "
        "holds its own copy of the graph's weights. Default: on ONNX Runtime's CPU EP, 1 session "
        "on every core or 2 on half the cores each, whichever a short trial at first start finds "
        "faster here (cached); 1 elsewhere or when --intra-op-threads is given (see README, "
        "Many cores).",
    ),
    Flag(
        "openvino_streams",
        "OpenVINO bf16/fp32 on this many CPU streams, 1 or 2. 2: two batches run at once, one "
        "thread each (more throughput under bulk load, slower one-text requests). Default: 1.",
    ),
    Flag(
        "ort_spinning",
        "Let ONNX Runtime's threads busy-wait between operators: lower latency in "
        "isolation, but the spinning threads compete with tokenization and HTTP work. "
        "Default: false.",
        kind="bool",
    ),
    Flag(
        "max_concurrent_requests",
        "Admission limit; beyond it requests get 429 at once. Default: 512.",
    ),
    Flag("max_batch_tokens", "Token budget of one forward batch. Default: 16384."),
    Flag(
        "max_batch_requests",
        "Cap on inputs per forward batch. Default: none (tokens only).",
    ),
    Flag(
        "max_client_batch_size",
        "Maximum inputs in one HTTP request. "
        f"Default: {DEFAULT_MAX_CLIENT_BATCH_SIZE} (TEI: 32); big requests are split across "
        "forward batches.",
    ),
    Flag(
        "auto_truncate",
        "Truncate inputs longer than the model's maximum when "
        "the request does not say. Default: true.",
        kind="bool",
    ),
    Flag(
        "tokenization_workers",
        "Tokenizer threads. Default: the engine's choice from the CPU count.",
    ),
    Flag(
        "payload_limit",
        "Maximum request body in bytes (413 beyond). Default: 2000000.",
    ),
    Flag(
        "hostname",
        "Address to listen on. Default: 0.0.0.0. A HOSTNAME from the "
        "environment that is the machine's name (shells set it) or that does not resolve to a "
        "local address is ignored, with a log line.",
    ),
    Flag("port", "Port to listen on. Default: 3000.", short="-p"),
    Flag(
        "api_key",
        "Require 'Authorization: Bearer <key>' on inference routes. Never logged.",
    ),
    Flag(
        "cors_allow_origin",
        "Allowed CORS origins (repeat the flag, or comma-separated in the env var). Default: any.",
        kind="list",
    ),
    Flag(
        "uds_path",
        "Accepted for TEI compatibility: TEI's socket to its Python backend. tei_ort has no such "
        "backend, so it is unused (logged).",
    ),
    Flag("json_output", "Log JSON lines instead of text.", kind="bool"),
    Flag(
        "disable_spans",
        "With --json-output, leave the trace and span ids out of each line. Default: false.",
        kind="bool",
    ),
    Flag(
        "otlp_endpoint",
        "OpenTelemetry collector for traces, spoken to over OTLP/HTTP "
        "(e.g. http://collector:4318; /v1/traces is added to a URL without a path). Default: none.",
    ),
    Flag(
        "otlp_service_name",
        "OpenTelemetry service.name. Default: text-embeddings-inference.server.",
    ),
    Flag(
        "prometheus_port",
        "Port of the separate Prometheus listener (0: none; /metrics on the main port always "
        "answers). Default: 9000.",
    ),
    Flag(
        "grpc_port",
        "Also serve TEI's gRPC API (package tei.v1, with health checking and reflection) on this "
        "port, beside HTTP, with the same model, limits and API key. Default: off.",
    ),
)
# TEI reads these from the environment only.
ENV_ONLY: dict[str, str] = {"task": "TASK", "log_level": "LOG_LEVEL"}


def parse_bool(text: str) -> bool:
    """TEI's boolean spellings for flags and variables (tei-embed's flags take them too)."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tei-serve",
        description="Serve an embedding, re-ranking or classification model with TEI's HTTP API, "
        "OpenAI embeddings and Cohere/Jina rerank, on ONNX Runtime. Every flag can also be set "
        "by the environment variable named in its help.",
    )
    for flag in FLAGS:
        names = [f"--{flag.name.replace('_', '-')}", *([flag.short] if flag.short else [])]
        help_text = f"{flag.help} [env: {flag.env}]"
        # SUPPRESS: a flag that was not given is absent, so the environment can fill it in.
        if flag.kind == "bool":
            parser.add_argument(
                *names,
                dest=flag.name,
                nargs="?",
                const=True,
                type=parse_bool,
                default=argparse.SUPPRESS,
                metavar="BOOL",
                help=help_text,
            )
        elif flag.kind == "list":
            parser.add_argument(
                *names, dest=flag.name, action="append", default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(*names, dest=flag.name, default=argparse.SUPPRESS, help=help_text)
    return parser


def load_settings(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> Settings:
    """The one place configuration is read. `environ` defaults to os.environ."""
    env = os.environ if environ is None else environ
    given: dict[str, Any] = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for flag in FLAGS:
        if flag.name in given:
            values[flag.name] = given[flag.name]
        elif env.get(flag.env, "") != "":
            raw = env[flag.env]
            values[flag.name] = (
                [o.strip() for o in raw.split(",") if o.strip()] if (flag.kind == "list") else raw
            )
    for name, variable in ENV_ONLY.items():
        if env.get(variable):
            values[name] = env[variable]
    if "cors_allow_origin" in values:
        values["cors_allow_origin"] = tuple(
            origin.strip()
            for item in values["cors_allow_origin"]
            for origin in item.split(",")
            if origin.strip()
        )
    for name, more in (
        ("model_id", "more_model_ids"),
        ("served_model_name", "more_served_model_names"),
    ):
        if name in values:
            first, *rest = [item.strip() for item in values[name] if item.strip()] or [None]
            values[name], values[more] = first, tuple(rest)
    values["hostname_from_env"] = "hostname" not in given and "hostname" in values
    # TEI's deprecated alias: --hf-token (HF_TOKEN) wins; either way the start-up warns
    alias = values.pop("hf_api_token", None)
    if alias is not None:
        values.setdefault("hf_token", alias)
        values["hf_api_token_given"] = True
    return Settings.model_validate(values)


def describe_invalid(exc: pydantic.ValidationError) -> str:
    """A refused value in the words of the command line: the flag, its variable, what was wrong."""
    envs = {flag.name: flag.env for flag in FLAGS}
    secret = {name for name, field in Settings.model_fields.items() if not field.repr}
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        if name not in envs:  # a rule across fields: its message names them
            lines.append(error["msg"].removeprefix("Value error, "))
            continue
        got = "" if name in secret else f", got {error.get('input')!r}"
        lines.append(f"--{name.replace('_', '-')} ({envs[name]}): {error['msg']}{got}")
    return "; ".join(lines)
