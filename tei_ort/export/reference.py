"""The PyTorch reference every exported variant is compared with: what users get today from
sentence-transformers (embeddings) and transformers (logits, SPLADE) on the same texts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from tei_ort.export.recipes import Recipe
from tei_ort.export.source import SourceModel
from tei_ort.package import Pooling

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
    out = model.encode(list(texts), batch_size=BATCH_SIZE, convert_to_numpy=True)
    return np.asarray(out, dtype=np.float32)  # (n, dims)


def sparse_embeddings(source: SourceModel, recipe: Recipe, texts: Sequence[str]) -> FloatArray:
    """(n, vocab) SPLADE: max over tokens of log(1 + relu(MLM logits)), padding masked out."""
    import torch
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(str(source.model_dir), local_files_only=True).eval()
    rows = []
    for batch in _batches(source, recipe, list(texts)):
        with torch.inference_mode():
            logits = model(**batch).logits  # (batch, seq, vocab)
        mask = batch["attention_mask"].unsqueeze(-1).to(logits.dtype)  # (batch, seq, 1)
        rows.append((torch.log1p(torch.relu(logits)) * mask).amax(dim=1).numpy())
    return np.concatenate(rows).astype(np.float32)


def logits(
    source: SourceModel, recipe: Recipe, inputs: Sequence[str | tuple[str, str]]
) -> FloatArray:
    """(n, num_labels) raw classifier logits; pairs are (query, text) for re-rankers."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(source.model_dir), local_files_only=True
    ).eval()
    rows = []
    for batch in _batches(source, recipe, list(inputs)):
        with torch.inference_mode():
            rows.append(model(**batch).logits.numpy())  # (batch, num_labels)
    return np.concatenate(rows).astype(np.float32)


def _batches(
    source: SourceModel, recipe: Recipe, inputs: list[str | tuple[str, str]]
) -> list[dict[str, object]]:
    """Tokenized like transformers users do: right padding, longest-first truncation at the
    package's max input length, token_type_ids only for models that take them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.model_dir), local_files_only=True)
    batches: list[dict[str, object]] = []
    for start in range(0, len(inputs), BATCH_SIZE):
        chunk = inputs[start : start + BATCH_SIZE]
        firsts = [item if isinstance(item, str) else item[0] for item in chunk]
        seconds = [item[1] for item in chunk if not isinstance(item, str)]
        encoded = tokenizer(
            firsts,
            seconds or None,
            padding=True,
            truncation=True,
            max_length=source.max_input_length(),
            return_tensors="pt",
            return_token_type_ids=recipe.family.uses_token_type_ids,
        )
        batches.append(dict(encoded))
    return batches
