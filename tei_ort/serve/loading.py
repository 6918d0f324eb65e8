"""Settings -> a loaded, warmed runtime Model: the start-up steps `tei-serve` and `tei-embed`
share. The model source is resolved (a package, an ONNX repo, a plain model exported on the fly,
or the embedded default), the variant chosen on this CPU (tei_ort.runtime.selection), the batch
budget timed or read from the per-machine cache, the --pooling / default-prompt flags applied, and
the provider's batch shapes run once."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass

from tei_ort.engine.config import physical_cores, replica_threads
from tei_ort.errors import ValidationError
from tei_ort.package import TOKENIZER_FILE, Manifest, Pooling, Task
from tei_ort.runtime import Model, RuntimeOptions, trial
from tei_ort.runtime.checks import ChecksCache
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.model import open_session
from tei_ort.runtime.providers import Provider
from tei_ort.runtime.providers import resolve as resolve_provider
from tei_ort.runtime.session import Session
from tei_ort.runtime.trial import batch_tokens
from tei_ort.serve import model_source
from tei_ort.serve.memory import graph_bytes
from tei_ort.serve.settings import Settings
from tei_ort.tokenization import Tokenizer

logger = logging.getLogger(__name__)

# The prompt name that carries --default-prompt's literal text.
LITERAL_PROMPT = "--default-prompt"


@dataclass(frozen=True)
class LoadedModel:
    model: Model
    resolved: model_source.ResolvedModel
    # The batch budget the trial (or the cache) chose on this machine; None: the full budget.
    target_batch_tokens: int | None
    batch_note: str  # how it was chosen, for /info and the log
    # --engine-replicas beyond the first: more sessions of `model`'s graph.
    replicas: tuple[Model, ...] = ()

    @property
    def forward_models(self) -> tuple[Model, ...]:
        """What the engine's forward threads run on: `model`, then its replicas, each once per
        forward its session can run at once (OpenVINO's two CPU streams: two threads, one model)."""
        return tuple(
            m for m in (self.model, *self.replicas) for _ in range(m.session.parallel_runs)
        )


def with_overrides(manifest: Manifest, settings: Settings) -> Manifest:
    """--pooling and the default prompt flags, applied to the manifest the engine reads."""
    changes: dict[str, object] = {}
    if settings.pooling is not None:
        pooling = Pooling(settings.pooling.replace("-", "_"))
        if (pooling is Pooling.SPLADE) != (manifest.task is Task.SPARSE_EMBEDDING):
            raise ValidationError(
                f"--pooling {pooling.value} does not fit a {manifest.task.value} model"
            )
        if manifest.task is Task.EMBEDDING:
            changes["pooling"] = pooling
    if settings.default_prompt is not None:
        changes["prompts"] = {**manifest.prompts, LITERAL_PROMPT: settings.default_prompt}
        changes["default_prompt_name"] = LITERAL_PROMPT
    elif settings.default_prompt_name is not None:
        if settings.default_prompt_name not in manifest.prompts:
            known = ", ".join(sorted(manifest.prompts)) or "none"
            raise ValidationError(
                f"--default-prompt-name {settings.default_prompt_name!r} is not one of this "
                f"model's prompts ({known})"
            )
        changes["default_prompt_name"] = settings.default_prompt_name
    return dataclasses.replace(manifest, **changes) if changes else manifest  # type: ignore[arg-type]


def fit_input_length(model: Model, settings: Settings) -> None:
    """As TEI: a model whose max_input_length passes --max-batch-tokens (jina-embeddings-v2's
    8,192 under --max-batch-tokens 4096) serves inputs of at most max_batch_tokens tokens, with a
    warning, while --auto-truncate is on; with it off, an over-long input could never be served
    whole, so start-up fails."""
    limit = settings.max_batch_tokens
    if model.manifest.max_input_length <= limit:
        return
    if not settings.auto_truncate:
        raise ValidationError(
            f"`max_input_length` ({model.manifest.max_input_length}) must be at most "
            f"`max_batch_tokens` ({limit}) when `auto_truncate` is disabled"
        )
    logger.warning(
        "reducing max_input_length to max_batch_tokens (%d > %d)",
        model.manifest.max_input_length,
        limit,
    )
    model.manifest = dataclasses.replace(model.manifest, max_input_length=limit)
    model.tokenizer = Tokenizer.from_file(model.path / TOKENIZER_FILE, limit)


def open_replica(model: Model, options: RuntimeOptions) -> Model:
    """Another session of `model`'s graph on its provider and variant (--engine-replicas): the
    tokenizer, manifest and Dense weights are shared; the graph's weights load again."""
    graph = model.path / model.variant.file
    return _with_session(
        model, open_session(graph, model.provider, model.variant, model.manifest, options)
    )


def _with_session(model: Model, session: Session) -> Model:
    """`model` on another session of its graph (tokenizer, manifest and Dense weights shared)."""
    twin = copy.copy(model)
    twin.session = session
    return twin


def replicas_by_trial(
    model: Model, options: RuntimeOptions, budget: int | None
) -> tuple[tuple[Model, ...], str]:
    """With --engine-replicas and --intra-op-threads unset: one session on every physical core,
    or two on half of them each when a short trial here (tei_ort.runtime.trial.replica_rates,
    cached like the variant checks) finds the two REPLICA_GAIN faster on the same batches.
    Returns the two half sessions' models when they win (else nothing) and how it was chosen.
    Tried on ONNX Runtime's CPU EP only (OpenVINO has its own streams, a GPU one queue), with
    two cores or more, graphs under 1 GiB (each replica holds its own weights) and a package
    whose fidelity set gives real text."""
    cores = physical_cores()
    if model.provider is not Provider.CPU:
        return (), "1 (the provider's default)"
    if cores < 2:
        return (), "1 (one physical core)"
    if graph_bytes(model.path / model.variant.file) > trial.REPLICA_MAX_GRAPH_BYTES:
        return (), "1 (the graph is over 1 GiB)"
    half = dataclasses.replace(options, intra_op_threads=cores // 2)
    label = f"{model.provider.value}:{model.variant.name.value}@{budget}"
    cache = ChecksCache(model.path, this_cpu(), options.intra_op_threads, options.checks_dir)
    rates = cache.get_rates("replicas", label)
    halves: tuple[Model, ...] = ()
    if rates is None:  # first start here: measure (read the texts only now)
        batches = trial.layout_batches(model, budget)
        if batches is None:
            return (), "1 (no fidelity set to time)"
        halves = tuple(open_replica(model, half) for _ in range(2))
        rates, runs = trial.repeated(
            lambda: trial.replica_rates(model, halves, batches),
            trial.near_the_replica_margin,
            "engine layouts",
        )
        logger.info("engine layout trial: %d run%s", runs, "" if runs == 1 else "s")
        cache.put_rates("replicas", label, rates)
        cache.save()
    one, two = rates.get("1", 0.0), rates.get("2", 0.0)
    figures = (
        f"1 x {_threads(cores)}: {one:,.0f} tok/s, 2 x {_threads(cores // 2)}: {two:,.0f} tok/s"
    )
    if two < one * (1 + trial.REPLICA_GAIN):
        return (), f"1, by trial ({figures})"
    if not halves:
        halves = tuple(open_replica(model, half) for _ in range(2))
    return halves, f"2 x {_threads(cores // 2)}, by trial ({figures})"


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def load_model(settings: Settings) -> LoadedModel:
    provider = resolve_provider(settings.provider)
    resolved = model_source.resolve(settings, provider.value)
    options = RuntimeOptions(
        # "auto" again rather than the provider resolved above: Model.load moves on from
        # OpenVINO when the package has no validated bf16 variant.
        provider=settings.provider,
        variant=settings.variant_name,
        # Per replica: the flag, or the physical cores split between --engine-replicas.
        intra_op_threads=replica_threads(settings.intra_op_threads, settings.engine_replicas or 1),
        allow_spinning=settings.ort_spinning,
        openvino_streams=settings.openvino_streams,
        allow_unvalidated=resolved.allow_unvalidated,
        # Variant checks of a read-only package (tei_ort.runtime.selection) go here.
        checks_dir=model_source.cache_root(settings) / "checks",
    )
    model = Model.load(resolved.path, options)
    target_batch_tokens, batch_note = batch_tokens(model, options)
    logger.info("batching: %s", batch_note)
    halves: tuple[Model, ...] = ()
    if settings.engine_replicas is None and settings.intra_op_threads is None:
        halves, layout = replicas_by_trial(model, options, target_batch_tokens)
        logger.info("engine replicas: %s", layout)
        batch_note = f"{batch_note}; engine replicas: {layout}"
        if halves:
            model.session = halves[0].session
    model.manifest = with_overrides(model.manifest, settings)
    fit_input_length(model, settings)
    shapes_started = time.perf_counter()
    if shapes := model.warm_up_shapes(settings.max_batch_tokens):
        logger.info(
            "ran each of %d batch shapes once (%s) in %.1f s",
            shapes,
            model.provider.value,
            time.perf_counter() - shapes_started,
        )
    # After the overrides: replicas share the manifest (pooling, prompts) with `model`.
    if halves:
        replicas = tuple(_with_session(model, h.session) for h in halves[1:])
    else:
        count = settings.engine_replicas or 1
        replicas = tuple(open_replica(model, options) for _ in range(count - 1))
    for replica in replicas:
        replica.warm_up_shapes(settings.max_batch_tokens)
    if replicas and not halves:
        logger.info(
            "%d engine replicas, %s intra-op threads each",
            len(replicas) + 1,
            options.intra_op_threads or "ORT's default",
        )
    return LoadedModel(model, resolved, target_batch_tokens, batch_note, replicas)
