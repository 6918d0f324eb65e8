"""A loaded model package: tokenizer + one ONNX Runtime session + the output steps its manifest
names. The server's engine calls `encode` and `forward`; scripts call the high-level methods
(`embed`, `embed_sparse`, `embed_all`, `predict`, `rerank`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tei_ort.errors import PackageError, ValidationError, WrongModelType
from tei_ort.package import (
    TOKENIZER_FILE,
    Activation,
    Manifest,
    Pooling,
    Task,
    Variant,
    read_manifest,
)
from tei_ort.pair_template import encode_pairs
from tei_ort.runtime import outputs
from tei_ort.runtime.padding import Feeds, pad
from tei_ort.runtime.providers import AUTO_ORDER, PROVIDERS, Provider, available, resolve
from tei_ort.runtime.session import GraphSession, Session, SessionOptions
from tei_ort.tokenization import Encoded, TextInput, Tokenizer, TruncationDirection

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

# Batches the high-level methods form after sorting inputs by length (padding stays small).
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class RuntimeOptions:
    provider: str = "auto"  # "auto", "cpu", "cuda" or "openvino"
    variant: str | None = None  # None: the provider's best variant that passed validation
    intra_op_threads: int | None = None
    allow_spinning: bool = False  # see SessionOptions
    openvino_streams: int = 1  # see OpenVINOSession
    device_id: int = 0
    # Serve a variant whose validation failed or is missing (never the default).
    allow_unvalidated: bool = False
    # Where variant checks are cached when the package folder is not writable (see selection).
    checks_dir: Path | None = None


@dataclass(frozen=True)
class DenseWeights:
    weight: FloatArray  # (out, in)
    bias: FloatArray | None  # (out,)
    activation: Activation


def choose(manifest: Manifest, options: RuntimeOptions) -> tuple[Provider, Variant]:
    """The provider and the variant to run. "auto" walks AUTO_ORDER from the best provider this
    machine has, and moves on when the package has no servable variant for it (OpenVINO without
    a validated bf16 variant runs no faster than the CPU EP's int8)."""
    provider = resolve(options.provider)
    if options.provider != "auto":
        return provider, choose_variant(manifest, provider, options)
    here = available()
    candidates = [p for p in AUTO_ORDER[AUTO_ORDER.index(provider) :] if p in here]
    for candidate in candidates:
        try:
            variant = choose_variant(manifest, candidate, options)
        except PackageError:
            if candidate is candidates[-1]:
                raise
            continue
        # An explicit --variant under "auto": the first provider the variant was built for.
        if candidate.value in variant.providers or candidate is candidates[-1]:
            return candidate, variant
    raise AssertionError("unreachable: the CPU is always available")


def open_session(
    graph: Path, provider: Provider, variant: Variant, manifest: Manifest, options: RuntimeOptions
) -> Session:
    if provider is Provider.OPENVINO:
        from tei_ort.runtime.openvino_session import OpenVINOSession

        return OpenVINOSession(
            graph,
            variant.name.value,
            manifest.output_name,
            options.intra_op_threads,
            streams=options.openvino_streams,
        )
    return GraphSession(
        graph,
        provider,
        manifest.output_name,
        SessionOptions(
            intra_op_threads=options.intra_op_threads,
            allow_spinning=options.allow_spinning,
            device_id=options.device_id,
        ),
    )


def choose_variant(manifest: Manifest, provider: Provider, options: RuntimeOptions) -> Variant:
    if options.variant is not None:
        variant = manifest.variant(options.variant)
        if not variant.is_servable and not options.allow_unvalidated:
            figures = variant.validation.note if variant.validation else "not validated"
            raise PackageError(
                f"variant {variant.name.value!r} did not pass validation ({figures}); "
                "choose another variant or allow unvalidated variants explicitly"
            )
        return variant
    for name in PROVIDERS[provider].preferred_variants:
        for variant in manifest.variants:
            if variant.name.value == name and (variant.is_servable or options.allow_unvalidated):
                return variant
    raise PackageError(
        f"no validated variant for provider {provider.value!r} in this package "
        f"(it has {', '.join(v.name.value for v in manifest.variants)})"
    )


class Model:
    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        tokenizer: Tokenizer,
        session: Session,
        variant: Variant,
        dense: Sequence[DenseWeights],
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.session = session
        self.variant = variant
        self._dense = tuple(dense)
        self._token_heads = _load_token_heads(path, manifest)  # BGE-M3's sparse / ColBERT
        # Why this provider and variant on this machine (selection.Selection.note); "" when the
        # caller pinned them without checks.
        self.selection_note = ""

    @classmethod
    def load(cls, path: Path | str, options: RuntimeOptions | None = None) -> Model:
        """Load the package on the provider and variant `options` ask for; "auto" and unpinned
        variants are chosen on this machine by tei_ort.runtime.selection (re-validation where
        the figures come from another CPU class, then a timed trial)."""
        path = Path(path)
        options = options or RuntimeOptions()
        manifest = read_manifest(path)
        tokenizer = Tokenizer.from_file(path / TOKENIZER_FILE, manifest.max_input_length)
        dense = [_load_dense(path / layer.file, layer.activation) for layer in manifest.dense]

        def open_model(provider: Provider, variant: Variant) -> Model:
            session = open_session(path / variant.file, provider, variant, manifest, options)
            logger.debug("loaded %s (%s, %s)", path, variant.name.value, provider.value)
            return cls(path, manifest, tokenizer, session, variant, dense)

        if options.allow_unvalidated or resolve(options.provider) is Provider.CUDA:
            # Pinned without checks (the exporter validating a candidate), or CUDA, whose
            # variants are validated on the CPU EP at export.
            return open_model(*choose(manifest, options))
        from tei_ort.runtime.selection import select

        selection, model = select(path, manifest, options, open_model)
        model.selection_note = selection.note
        return model

    @property
    def task(self) -> Task:
        return self.manifest.task

    @property
    def provider(self) -> Provider:
        return self.session.provider

    # -- the engine's seam ---------------------------------------------------------------------

    def prompt(self, prompt_name: str | None) -> str | None:
        """The prompt text for `prompt_name`, or the model's default prompt; unknown is an error."""
        name = prompt_name if prompt_name is not None else self.manifest.default_prompt_name
        if name is None:
            return None
        try:
            return self.manifest.prompts[name]
        except KeyError as exc:
            known = ", ".join(sorted(self.manifest.prompts)) or "none"
            raise ValidationError(
                f"prompt_name {name!r} is not one of this model's prompts ({known})"
            ) from exc

    def encode(
        self,
        inputs: Sequence[TextInput],
        *,
        truncate: bool = True,
        direction: TruncationDirection = TruncationDirection.RIGHT,
        prompt_name: str | None = None,
    ) -> list[Encoded]:
        template = self.manifest.pair_template
        if template is not None:  # an LLM re-ranker: its chat template, not a BERT pair
            return encode_pairs(
                self.tokenizer, template, inputs, truncate=truncate, direction=direction
            )
        return self.tokenizer.encode_batch(
            inputs, truncate=truncate, direction=direction, prompt=self.prompt(prompt_name)
        )

    def forward(self, encodings: Sequence[Encoded]) -> FloatArray:
        """One padded forward pass. Returns, by task:
        embedding (batch, dimensions) pooled + Dense, not normalized; sparse (batch, vocab);
        classification / reranker (batch, num_labels) raw logits."""
        feeds = self._pad(encodings)
        n = len(encodings)
        raw = self.session.run(feeds)[:n]  # filler rows of a row bucket dropped
        if self.task is not Task.EMBEDDING:
            return raw
        pooling = self.manifest.pooling or Pooling.CLS
        mask = feeds["attention_mask"][:n]  # (batch, seq)
        if not self.manifest.include_prompt:
            prompts = np.asarray([e.prompt_tokens for e in encodings], dtype=np.int64)
            mask = outputs.exclude_prompt(mask, prompts)
        pooled = outputs.pool(raw, mask, pooling)  # (batch, hidden)
        for layer in self._dense:
            pooled = outputs.dense(pooled, layer.weight, layer.bias, layer.activation)
        return pooled

    def forward_tokens(self, encodings: Sequence[Encoded]) -> list[FloatArray]:
        """Per-token hidden states, one (len, hidden) array per input (TEI's /embed_all); with a
        ColBERT head (BGE-M3), its normalized multi-vectors, one (len - 1, dim) per input."""
        if self.task is not Task.EMBEDDING:
            raise WrongModelType(
                f"per-token embeddings need an embedding model, this is {self.task.value}"
            )
        feeds = self._pad(encodings)
        raw = self.session.run(feeds)  # (batch, seq, hidden)
        colbert = self._token_heads.get("colbert")
        if colbert is not None:
            return outputs.colbert_vectors(raw, [len(e) for e in encodings], colbert)
        return [raw[row, : len(e)] for row, e in enumerate(encodings)]

    @property
    def has_sparse_head(self) -> bool:
        """An embedding model that also gives sparse vectors (BGE-M3's sparse_linear)."""
        return "sparse" in self._token_heads

    def forward_sparse(self, encodings: Sequence[Encoded]) -> FloatArray:
        """(batch, vocab) sparse weights: SPLADE's graph output, or BGE-M3's sparse head over the
        hidden states."""
        if self.task is Task.SPARSE_EMBEDDING:
            return self.forward(encodings)
        heads = self.manifest.token_heads
        if not self.has_sparse_head or heads is None:
            raise WrongModelType("model is not an embedding model with SPLADE pooling")
        feeds = self._pad(encodings)
        n = len(encodings)
        raw = self.session.run(feeds)[:n]  # (batch, seq, hidden)
        unused = np.asarray(heads.unused_token_ids, dtype=np.int64)
        return outputs.sparse_token_weights(
            raw,
            feeds["input_ids"][:n],
            feeds["attention_mask"][:n],
            self._token_heads["sparse"],
            unused,
            heads.vocab_size,
        )

    # -- the Python API ------------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        dimensions: int | None = None,
        prompt_name: str | None = None,
        truncate: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> FloatArray:
        """(n, dimensions) embeddings. `normalize` defaults to the model's own (its ST Normalize
        module); Matryoshka `dimensions` truncate first, then normalize."""
        self._require(Task.EMBEDDING)
        encodings = self.encode(texts, truncate=truncate, prompt_name=prompt_name)
        pooled = self._batched(encodings, batch_size)
        pooled = outputs.truncate_dimensions(pooled, dimensions)
        do_normalize = self.manifest.normalize if normalize is None else normalize
        return outputs.normalize(pooled) if do_normalize else pooled

    def embed_sparse(
        self, texts: Sequence[str], *, truncate: bool = True, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> FloatArray:
        """(n, vocab) SPLADE weights (or BGE-M3's sparse head's), mostly zeros."""
        if not self.has_sparse_head:
            self._require(Task.SPARSE_EMBEDDING)
        encodings = self.encode(texts, truncate=truncate)
        result: FloatArray | None = None
        for indices in _length_sorted_batches(encodings, batch_size):
            out = self.forward_sparse([encodings[i] for i in indices])
            if result is None:
                result = np.empty((len(encodings), out.shape[1]), dtype=np.float32)
            result[indices] = out
        if result is None:
            raise ValidationError("no inputs")
        return result

    def embed_all(
        self, texts: Sequence[str], *, truncate: bool = True, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[FloatArray]:
        encodings = self.encode(texts, truncate=truncate)
        result: list[FloatArray | None] = [None] * len(encodings)
        for indices in _length_sorted_batches(encodings, batch_size):
            for index, tokens in zip(
                indices, self.forward_tokens([encodings[i] for i in indices]), strict=True
            ):
                result[index] = tokens
        return [r for r in result if r is not None]

    def predict(
        self,
        inputs: Sequence[TextInput],
        *,
        raw_scores: bool = False,
        truncate: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> FloatArray:
        """(n, num_labels) probabilities (or raw logits); labels in `manifest.id2label` order."""
        self._require(Task.CLASSIFICATION, Task.RERANKER)
        logits = self._batched(self.encode(inputs, truncate=truncate), batch_size)
        return outputs.classify(logits, raw_scores)

    def rerank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        raw_scores: bool = False,
        truncate: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> FloatArray:
        """(n,) relevance of each text to the query, in input order."""
        self._require(Task.RERANKER)
        pairs = [(query, text) for text in texts]
        logits = self._batched(self.encode(pairs, truncate=truncate), batch_size)
        return outputs.classify(logits[:, :1], raw_scores)[:, 0]

    def warm_up_shapes(self, max_batch_tokens: int) -> int:
        """On providers with row buckets, run every (rows, length) shape a batch of at most
        `max_batch_tokens` padded tokens can take, once, so that no request pays a shape's first
        run. Returns how many shapes ran (0 elsewhere)."""
        spec = PROVIDERS[self.provider]
        if not spec.row_buckets:
            return 0
        shapes = bucket_shapes(
            self.manifest.max_input_length, spec.pad_multiple, spec.row_buckets, max_batch_tokens
        )
        for rows, length in shapes:
            ids = np.full(length, self.manifest.pad_token_id, dtype=np.int64)  # (length,)
            one = Encoded(ids, np.zeros(length, dtype=np.int64))
            self.session.run(self._pad([one], rows=rows))
        return len(shapes)

    def _pad(self, encodings: Sequence[Encoded], rows: int | None = None) -> Feeds:
        manifest = self.manifest
        spec = PROVIDERS[self.provider]
        return pad(
            encodings,
            manifest.pad_token_id,
            manifest.uses_token_type_ids,
            multiple=spec.pad_multiple,
            limit=manifest.max_input_length,
            rows=rows or bucket_rows(len(encodings), spec.row_buckets),
        )

    def _require(self, *tasks: Task) -> None:
        if self.task not in tasks:
            wanted = " or ".join(t.value for t in tasks)
            raise WrongModelType(
                f"this needs a {wanted} model; {self.path.name} is {self.task.value}"
            )

    def _batched(self, encodings: Sequence[Encoded], batch_size: int) -> FloatArray:
        if not encodings:
            raise ValidationError("no inputs")
        result: FloatArray | None = None
        for indices in _length_sorted_batches(encodings, batch_size):
            out = self.forward([encodings[i] for i in indices])
            if result is None:
                result = np.empty((len(encodings), *out.shape[1:]), dtype=np.float32)
            result[indices] = out
        assert result is not None  # encodings is non-empty
        return result


def bucket_rows(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `n` rows; `n` itself past the largest (or without any)."""
    return next((b for b in buckets if b >= n), n)


def bucket_shapes(
    max_length: int, multiple: int, buckets: Sequence[int], max_batch_tokens: int
) -> list[tuple[int, int]]:
    """Every (rows, padded length) a batch can take: lengths in multiples of `multiple` up to the
    model's max (and the max itself), rows up to the bucket of the most inputs `max_batch_tokens`
    holds at the shortest length that pads to it. E.g. max 64, multiple 32, buckets (1, 2, 4),
    100 tokens: [(1, 32), (2, 32), (4, 32), (1, 64), (2, 64), (4, 64)] (3 inputs of 33 tokens
    fit 100 and pad to 4 x 64)."""
    lengths = sorted({*range(multiple, max_length + 1, multiple), max_length})
    shapes = []
    for shortest, length in zip([1, *(n + 1 for n in lengths)], lengths, strict=False):
        top = bucket_rows(max(1, max_batch_tokens // shortest), buckets)
        shapes += [(rows, length) for rows in buckets if rows <= top]
    return shapes


def _length_sorted_batches(encodings: Sequence[Encoded], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _load_token_heads(path: Path, manifest: Manifest) -> dict[str, tuple[FloatArray, FloatArray]]:
    """The package's BGE-M3 heads by name (sparse, colbert): (weight (out, hidden), bias (out,))."""
    heads = manifest.token_heads
    if heads is None:
        return {}
    files = {"sparse": heads.sparse, "colbert": heads.colbert}
    loaded = {}
    for name, file in files.items():
        if file is not None:
            layer = _load_dense(path / file, Activation.IDENTITY)
            bias = layer.bias if layer.bias is not None else np.zeros(len(layer.weight), np.float32)
            loaded[name] = (layer.weight, bias)
    return loaded


def _load_dense(path: Path, activation: Activation) -> DenseWeights:
    try:
        with np.load(path) as data:
            weight = np.asarray(data["weight"], dtype=np.float32)
            bias = np.asarray(data["bias"], dtype=np.float32) if "bias" in data else None
    except (OSError, KeyError, ValueError) as exc:
        raise PackageError(f"{path}: not a readable Dense layer ({exc})") from exc
    return DenseWeights(weight, bias, activation)
