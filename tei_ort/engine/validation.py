"""Every rule a request must pass before it is admitted, in TEI's wording. Cheap checks only (no
tokenization): they run on the event loop, before a request takes an admission slot.

Tokenizer-side rules (too many tokens with truncate=false, token ids outside the vocabulary) are
checked where the inputs are encoded (engine/inputs.py), off the event loop."""

from __future__ import annotations

from collections.abc import Sequence

from tei_ort.engine.backend import ModelBackend
from tei_ort.engine.types import (
    EmbedInput,
    EmbedRequest,
    PredictInput,
    PredictRequest,
    RerankRequest,
    Tokenization,
)
from tei_ort.errors import BatchSizeError, EmptyInput, ValidationError, WrongModelType
from tei_ort.package import Task


def check_batch_size(size: int, max_client_batch_size: int, field: str = "inputs") -> None:
    if size == 0:
        raise EmptyInput(f"`{field}` cannot be empty")
    if size > max_client_batch_size:
        raise BatchSizeError(
            f"batch size {size} > maximum allowed batch size {max_client_batch_size}"
        )


def check_prompt(model: ModelBackend, prompt_name: str | None) -> None:
    """Unknown names are a ValidationError (raised by the model, which knows its prompts)."""
    model.prompt(prompt_name)


def check_dimensions(dimensions: int | None, model_dimensions: int) -> None:
    if dimensions is None:
        return
    if dimensions <= 0:
        raise ValidationError("`dimensions` should be positive")
    if dimensions > model_dimensions:
        raise ValidationError(
            f"`dimensions` should be at most the model's dimension {model_dimensions}, "
            f"got {dimensions}"
        )


def check_embed_inputs(inputs: Sequence[EmbedInput], max_client_batch_size: int) -> None:
    check_batch_size(len(inputs), max_client_batch_size)
    for item in inputs:
        if isinstance(item, list) and not item:
            raise EmptyInput("a token-id input cannot be empty")


def check_embed(model: ModelBackend, request: EmbedRequest, max_client_batch_size: int) -> None:
    if model.task is Task.SPARSE_EMBEDDING:
        # TEI serves /embed on SPLADE models only unnormalized: the (vocab,) weights, dense.
        if request.normalize:
            raise WrongModelType("`normalize` is not available for SPLADE models")
    elif model.task is not Task.EMBEDDING:
        raise WrongModelType("model is not an embedding model")
    check_embed_inputs(request.inputs, max_client_batch_size)
    check_dimensions(request.dimensions, model.manifest.dimensions)
    check_prompt(model, request.tokenization.prompt_name)


def check_embed_sparse(
    model: ModelBackend, request: EmbedRequest, max_client_batch_size: int
) -> None:
    if model.task is not Task.SPARSE_EMBEDDING and not model.has_sparse_head:
        raise WrongModelType("model is not an embedding model with SPLADE pooling")
    check_embed_inputs(request.inputs, max_client_batch_size)
    check_prompt(model, request.tokenization.prompt_name)


def check_embed_all(model: ModelBackend, request: EmbedRequest, max_client_batch_size: int) -> None:
    if model.task is Task.SPARSE_EMBEDDING:
        raise WrongModelType("`embed_all` is not available for SPLADE models")
    if model.task is not Task.EMBEDDING:
        raise WrongModelType("model is not an embedding model")
    check_embed_inputs(request.inputs, max_client_batch_size)
    check_prompt(model, request.tokenization.prompt_name)


def _check_pairs(inputs: Sequence[PredictInput], tokenization: Tokenization) -> None:
    if tokenization.prompt_name is not None and any(isinstance(i, tuple) for i in inputs):
        raise ValidationError("`prompt_name` cannot be set with dual inputs")


def check_predict(model: ModelBackend, request: PredictRequest, max_client_batch_size: int) -> None:
    # A re-ranker is a one-label classifier: TEI serves /predict on both.
    if model.task not in (Task.CLASSIFICATION, Task.RERANKER):
        raise WrongModelType("model is not a classifier model")
    check_batch_size(len(request.inputs), max_client_batch_size)
    _check_pairs(request.inputs, request.tokenization)
    check_prompt(model, request.tokenization.prompt_name)


def check_rerank(model: ModelBackend, request: RerankRequest, max_client_batch_size: int) -> None:
    if model.task is not Task.RERANKER:
        raise WrongModelType("model is not a re-ranker model")
    check_batch_size(len(request.texts), max_client_batch_size, field="texts")
    if request.tokenization.prompt_name is not None:
        raise ValidationError("`prompt_name` cannot be set with dual inputs")


def check_tokenize(
    model: ModelBackend, inputs: Sequence[str], max_client_batch_size: int, prompt_name: str | None
) -> None:
    check_batch_size(len(inputs), max_client_batch_size)
    check_prompt(model, prompt_name)


def check_decode(ids: Sequence[Sequence[int]], max_client_batch_size: int) -> None:
    check_batch_size(len(ids), max_client_batch_size, field="ids")
