"""--model-id -> a loaded runtime Model and the EngineConfig the server would give it.

The same start-up as `tei-serve` (tei_ort.serve.loading.load_model: source, variant on this CPU,
batch budget, warm-up), and the padding cap of the provider on this CPU's class. Only the HTTP
limits differ: a job sends one request per shard, so the client batch limit is the shard size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tei_ort.engine import EngineConfig
from tei_ort.runtime import Model
from tei_ort.runtime.providers import max_padding_ratio
from tei_ort.serve.loading import load_model
from tei_ort.serve.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    model_id: str | None  # None: the server's embedded default
    revision: str | None = None
    huggingface_hub_cache: Path | None = None
    provider: str = "auto"
    variant: str | None = None
    intra_op_threads: int | None = None
    max_batch_tokens: int = 16384


@dataclass(frozen=True)
class LoadedModel:
    model: Model
    model_id: str
    config: EngineConfig
    # What the engine's forward threads run on: `model`, or the sessions tei-serve's replica
    # trial chose (tei_ort.serve.loading), so both take the same cores the same way; None:
    # `model` alone.
    forward_models: tuple[Model, ...] | None = None


def load(choice: ModelChoice, shard_size: int) -> LoadedModel:
    settings = Settings.model_validate(
        {
            "model_id": choice.model_id,
            "revision": choice.revision,
            "huggingface_hub_cache": choice.huggingface_hub_cache,
            "provider": choice.provider,
            "variant": choice.variant,
            "intra_op_threads": choice.intra_op_threads,
            "max_batch_tokens": choice.max_batch_tokens,
        }
    )
    loaded = load_model(settings)
    model = loaded.model
    logger.info(
        "model: %s; serving %s:%s",
        loaded.resolved.origin,
        model.provider.value,
        model.variant.name.value,
    )
    config = EngineConfig(
        max_batch_tokens=settings.max_batch_tokens,
        # One request per shard; inputs that fail alone are retried one by one, a few at a time.
        max_client_batch_size=shard_size,
        auto_truncate=True,
        target_batch_tokens=loaded.target_batch_tokens,
        max_padding_ratio=max_padding_ratio(model.provider),
    )
    return LoadedModel(model, loaded.resolved.model_id, config, loaded.forward_models)
