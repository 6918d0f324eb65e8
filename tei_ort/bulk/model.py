"""--model-id -> a loaded runtime Model and the EngineConfig the server would give it.

The same steps as `tei-serve`'s start-up (tei_ort.serve.cli.build): the model source is resolved
by the server's own resolver (a package, an ONNX repo, a plain model exported on the fly, or the
embedded default), the variant chosen on this CPU by the same checks and trial, the batch budget
by the same cached trial, the padding cap from the provider's table. Only the HTTP limits differ:
a job sends one request per shard, so the client batch limit is the shard size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tei_ort.engine import EngineConfig
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.providers import PROVIDERS
from tei_ort.runtime.providers import resolve as resolve_provider
from tei_ort.runtime.trial import batch_tokens
from tei_ort.serve import model_source
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
    provider = resolve_provider(settings.provider)
    resolved = model_source.resolve(settings, provider.value)
    logger.info("model: %s", resolved.origin)
    options = RuntimeOptions(
        provider=settings.provider,
        variant=settings.variant_name,
        intra_op_threads=settings.intra_op_threads,
        allow_spinning=settings.ort_spinning,
        allow_unvalidated=resolved.allow_unvalidated,
        checks_dir=model_source.cache_root(settings) / "checks",
    )
    model = Model.load(resolved.path, options)
    target_batch_tokens, batch_note = batch_tokens(model, options)
    logger.info(
        "serving %s:%s; batching: %s",
        model.provider.value,
        model.variant.name.value,
        batch_note,
    )
    model.warm_up_shapes(settings.max_batch_tokens)
    config = EngineConfig(
        max_batch_tokens=settings.max_batch_tokens,
        # One request per shard; inputs that fail alone are retried one by one, a few at a time.
        max_client_batch_size=shard_size,
        auto_truncate=True,
        target_batch_tokens=target_batch_tokens,
        max_padding_ratio=PROVIDERS[model.provider].max_padding_ratio,
    )
    return LoadedModel(model, resolved.model_id, config)
