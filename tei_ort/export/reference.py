"""The PyTorch reference every exported variant is compared with: what users get today from
sentence-transformers (embeddings) and transformers (logits, SPLADE) on the same texts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from tei_ort.export import recipes, special_tokens
from tei_ort.export.architectures import llm_rerank, own
from tei_ort.export.recipes import Recipe
from tei_ort.export.source import SourceModel
from tei_ort.export.writer import _load_dense
from tei_ort.package import Pooling, Task

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

FloatArray = npt.NDArray[np.float32]
BATCH_SIZE = 32

# Our pooling -> sentence-transformers' pooling_mode name.
ST_POOLING_MODES: dict[Pooling, str] = {
    Pooling.CLS: "cls",
    Pooling.MEAN: "mean",
    Pooling.LAST_TOKEN: "lasttoken",
}


def embeddings(source: SourceModel, pooling: Pooling, texts: Sequence[str]) -> FloatArray:
    """(n, dims) sentence embeddings from sentence-transformers itself: the source's own modules
    (Dense, Normalize included), its pooling swapped for `pooling` when that was overridden; a plain
    HF encoder becomes Transformer -> Pooling."""
    recipe = recipes.for_task(source.architecture, Task.EMBEDDING)
    if recipe.family.own_module is not None:  # hub code never runs: our module is the reference
        return _own_embeddings(source, recipe, pooling, list(texts))
    return encode(sentence_transformer(source, pooling), texts)


def sentence_transformer(source: SourceModel, pooling: Pooling) -> SentenceTransformer:
    """The sentence-transformers model `embeddings` encodes with (families without their own
    module); its Transformer module holds transformers' encoder, loaded once."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling as StPooling
    from sentence_transformers.models import Transformer

    max_length = source.max_input_length()
    mode = ST_POOLING_MODES[pooling]
    if source.st is not None:
        model = SentenceTransformer(str(source.root), device="cpu", local_files_only=True)
        for name, module in model.named_children():
            if isinstance(module, StPooling) and source.st.pooling is not pooling:
                model._modules[name] = StPooling(source.hidden_size, pooling_mode=mode)
    else:
        transformer = Transformer(str(source.model_dir), max_seq_length=max_length)
        model = SentenceTransformer(
            modules=[transformer, StPooling(source.hidden_size, pooling_mode=mode)], device="cpu"
        )
    model.max_seq_length = max_length
    return model


def encode(model: SentenceTransformer, texts: Sequence[str]) -> FloatArray:
    out = model.encode(
        list(texts), batch_size=BATCH_SIZE, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(out, dtype=np.float32)  # (n, dims)


def sparse_embeddings(source: SourceModel, recipe: Recipe, texts: Sequence[str]) -> FloatArray:
    """(n, vocab) SPLADE: max over tokens of log(1 + relu(MLM logits)), padding masked out."""
    import torch
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(
        str(source.model_dir), local_files_only=True
    ).eval()
    rows = []
    order, batches = _batches(source, recipe, list(texts))
    for batch in batches:
        with torch.inference_mode():
            logits = model(**batch).logits  # (batch, seq, vocab)
        # max over tokens of log1p(relu(.)) == log1p(relu(max over tokens)): the function is
        # monotonic, and taking the max first avoids three more (batch, seq, vocab) tensors.
        padding = batch["attention_mask"].unsqueeze(-1) == 0  # (batch, seq, 1)
        top = logits.masked_fill(padding, float("-inf")).amax(dim=1)  # (batch, vocab)
        rows.append(torch.log1p(torch.relu(top)).numpy())
    return _unsort(order, rows)


def logits(
    source: SourceModel, recipe: Recipe, inputs: Sequence[str | tuple[str, str]]
) -> FloatArray:
    """(n, num_labels) raw classifier logits; pairs are (query, text) for re-rankers."""
    import torch
    from transformers import AutoModelForSequenceClassification

    template = llm_rerank.template_for(source)
    if template is not None:  # Qwen3-Reranker: its model card's computation
        return llm_rerank.card_logits(source, template, list(inputs))
    rows = []
    order, batches = _batches(source, recipe, list(inputs))
    if recipe.family.own_module is not None:
        own_model = own.load(source.model_dir, recipe)
        rows = [own.forward(own_model, recipe, batch).numpy() for batch in batches]
        return _unsort(order, rows)  # (n, num_labels)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(source.model_dir), local_files_only=True
    ).eval()
    for batch in batches:
        with torch.inference_mode():
            rows.append(model(**batch).logits.numpy())  # (batch, num_labels)
    return _unsort(order, rows)


def _own_embeddings(
    source: SourceModel, recipe: Recipe, pooling: Pooling, texts: list[str]
) -> FloatArray:
    model = own.load(source.model_dir, recipe)
    st = source.st
    dense = [(*_load_dense(source.root, d), d.activation) for d in (st.dense if st else ())]
    normalize = bool(st and st.normalize)
    inputs: list[str | tuple[str, str]] = list(texts)
    order, batches = _batches(source, recipe, inputs)
    rows = [
        own.sentence_embeddings(model, recipe, dense, normalize, pooling, batch).numpy()
        for batch in batches
    ]
    return _unsort(order, rows)  # (n, dims)


def _batches(
    source: SourceModel, recipe: Recipe, inputs: list[str | tuple[str, str]]
) -> tuple[list[int], list[dict[str, Any]]]:
    """Tokenized like transformers users do: right padding, longest-first truncation at the
    package's max input length, token_type_ids only for models that take them. Batches are formed
    in order of length (padding costs SPLADE a (batch, seq, vocab) tensor); `order[i]` is the
    input index of the i-th row over all batches."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
        str(source.model_dir), local_files_only=True, trust_remote_code=False
    )
    if source.model_type in special_tokens.ALWAYS_EOS_MODEL_TYPES:
        # Its encode appends the EOS the tokenizer's files leave out (NV-Embed-v2); the setter
        # rebuilds transformers' template, as the package's (special_tokens.apply).
        tokenizer.add_eos_token = True
    order = sorted(range(len(inputs)), key=lambda i: _chars(inputs[i]))
    batches: list[dict[str, Any]] = []
    for start in range(0, len(order), BATCH_SIZE):
        chunk = [inputs[i] for i in order[start : start + BATCH_SIZE]]
        firsts = [item if isinstance(item, str) else item[0] for item in chunk]
        seconds = [item[1] for item in chunk if not isinstance(item, str)]
        encoded = tokenizer(
            firsts,
            seconds or None,
            padding=True,
            # As the runtime pads (last-token pooling reads length - 1), whatever side the
            # tokenizer's files name: Qwen3-Embedding's say left.
            padding_side="right",
            truncation=True,
            max_length=source.max_input_length(),
            return_tensors="pt",
            return_token_type_ids=recipe.family.uses_token_type_ids,
        )
        batches.append(dict(encoded))
    return order, batches


def _chars(item: str | tuple[str, str]) -> int:
    return len(item) if isinstance(item, str) else len(item[0]) + len(item[1])


def _unsort(order: list[int], rows: list[FloatArray]) -> FloatArray:
    stacked = np.concatenate(rows).astype(np.float32)  # (n, d) in batch order
    result = np.empty_like(stacked)
    result[order] = stacked
    return result
