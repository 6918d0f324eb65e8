"""The unit the routes are made of: an Operation is a path, a request schema and a handler that
turns a parsed JSON body into a Reply. The same operations serve their own path, POST / and
/invocations (dispatch), /vertex, and the OpenAPI document, so each is written once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pydantic

from tei_ort.errors import ValidationError
from tei_ort.runtime.quantized_embeddings import EmbeddingRanges
from tei_ort.serve.engine_api import EngineAPI
from tei_ort.serve.errors import MalformedBody
from tei_ort.serve.memory import ModelMemory
from tei_ort.serve.replies import Reply

JsonObject = dict[str, Any]
ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


@dataclass(frozen=True)
class ServeContext:
    """Everything a handler may read besides the request: set once at start-up."""

    engine: EngineAPI
    model_id: str
    served_model_name: str
    revision: str | None
    dtype: str  # the variant's element type, as /info reports it ("float32", "float16", "int8")
    version: str
    # TEI's TASK=sentence-similarity: POST / on an embedding model means /similarity.
    root_is_similarity: bool = False
    created: int = 0  # unix time the server started (OpenAI's model `created`)
    provider: str | None = None  # the execution provider in use ("cpu", "cuda"), for te_model_info
    variant: str | None = None  # the graph variant served ("fp32", "int8", "fp16")
    cpu: str = ""  # CpuInfo.describe(): "Intel(R) Xeon(R) Processor [x86-amx]"
    isa_class: str = ""  # IsaClass value ("x86-amx", "arm-bf16", "unknown")
    variant_note: str = ""  # why this variant was chosen on this machine (free text)
    # The package's int8/uint8 calibration (embedding_ranges.npz); None: float and binary only.
    embedding_ranges: EmbeddingRanges | None = None
    # What this model costs in memory (graph on disk, resident growth while loading); None in
    # contexts built without loading a package (tests' fakes).
    memory: ModelMemory | None = None


Handler = Callable[[ServeContext, JsonObject], Awaitable[Reply]]


@dataclass(frozen=True)
class Operation:
    path: str
    handler: Handler
    request: type[pydantic.BaseModel]
    summary: str
    tag: str
    response_example: object = None  # shown in the OpenAPI document
    # Counted in te_request_* (TEI counts inference routes, not /tokenize or /decode).
    metered: bool = True
    # The JSON schema of this API's error body, for the OpenAPI document; None: TEI's.
    error_schema: JsonObject | None = None


def parse_json(raw: bytes) -> JsonObject:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object")
    return body


def validate(schema: type[ModelT], body: JsonObject) -> ModelT:
    """pydantic.ValidationError propagates: errors.py maps it to 422 with the failing fields."""
    return schema.model_validate(body)
