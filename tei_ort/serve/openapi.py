"""The OpenAPI 3.1 document, generated from the operation tables and their pydantic schemas, so
the documentation cannot drift from what the routes accept."""

from __future__ import annotations

from collections.abc import Iterable

import pydantic
from pydantic.json_schema import models_json_schema

from tei_ort.serve.operations import JsonObject, Operation

_REF = "#/components/schemas/{model}"
_TEI_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}},
    "required": ["error", "error_type"],
}
_ERRORS = {
    "400": "Empty input or malformed JSON",
    "401": "Missing or wrong API key",
    "404": "`model` names no model this server serves (several models served)",
    "413": "Payload over --payload-limit",
    "422": "Validation or tokenizer error",
    "424": "Wrong model type for the route, or a failed forward pass",
    "429": "Overloaded",
}
# GET routes: path -> summary.
GET_ROUTES: dict[str, str] = {
    "/health": "200 when the model answers, 503 otherwise",
    "/ping": "SageMaker health",
    "/info": "Model and limits: TEI's fields for the first model; `models` lists each served "
    "model's, `memory` and `resident_memory_bytes` the memory per model and in all, `outputs` "
    "which route gives which output (BGE-M3: dense, sparse and ColBERT)",
    "/metrics": "Prometheus metrics",
    "/v1/models": "OpenAI model list",
    "/docs": "This page",
    "/api-doc/openapi.json": "This document",
}


def build(operations: Iterable[Operation], version: str) -> JsonObject:
    operations = list(operations)
    schemas = {op.request for op in operations if op.request is not pydantic.BaseModel}
    keys, definitions = models_json_schema(
        [(schema, "validation") for schema in sorted(schemas, key=lambda s: s.__name__)],
        ref_template=_REF,
    )
    paths: JsonObject = {}
    for op in operations:
        request_schema: JsonObject = (
            {"type": "object"}
            if op.request is pydantic.BaseModel
            else keys[(op.request, "validation")]
        )
        success: JsonObject = {"description": "Success"}
        if op.response_example is not None:
            success["content"] = {"application/json": {"example": op.response_example}}
        paths[op.path] = {
            "post": {
                "summary": op.summary,
                "tags": [op.tag],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": request_schema}},
                },
                "responses": {
                    "200": success,
                    **{
                        status: {
                            "description": text,
                            "content": {
                                "application/json": {"schema": op.error_schema or _TEI_ERROR}
                            },
                        }
                        for status, text in _ERRORS.items()
                    },
                },
            }
        }
    for path, summary in GET_ROUTES.items():
        paths.setdefault(path, {})["get"] = {
            "summary": summary,
            "tags": ["Info"],
            "responses": {"200": {"description": "Success"}},
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tei_ort",
            "version": version,
            "description": "Text Embeddings Inference's API on ONNX Runtime, with OpenAI "
            "embeddings, Cohere/Jina rerank, Cohere embed v2 and Ollama's embed API. Each API's "
            "routes answer errors in its own body; Ollama's use 400 where this list says 422.",
        },
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {})},
    }
