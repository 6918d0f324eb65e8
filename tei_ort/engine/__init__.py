"""The engine between the HTTP layer and the runtime: validation, bounded admission, tokenization
off the event loop, continuous token-budget batching, post-processing. See engine.py."""

from tei_ort.engine.backend import ModelBackend
from tei_ort.engine.config import (
    DEFAULT_MAX_CLIENT_BATCH_SIZE,
    BatchReport,
    EngineConfig,
    EngineStats,
)
from tei_ort.engine.engine import Engine
from tei_ort.engine.types import (
    EmbedInput,
    EmbedRequest,
    EmbedResult,
    Metadata,
    PredictInput,
    PredictRequest,
    PredictResult,
    RerankRequest,
    RerankResult,
    SparseResult,
    SparseVector,
    TokenEmbeddingsResult,
    Tokenization,
)

__all__ = [
    "DEFAULT_MAX_CLIENT_BATCH_SIZE",
    "BatchReport",
    "EmbedInput",
    "EmbedRequest",
    "EmbedResult",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "Metadata",
    "ModelBackend",
    "PredictInput",
    "PredictRequest",
    "PredictResult",
    "RerankRequest",
    "RerankResult",
    "SparseResult",
    "SparseVector",
    "TokenEmbeddingsResult",
    "Tokenization",
]
