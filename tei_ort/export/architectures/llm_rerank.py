"""LLM re-rankers at export: which checkpoints are one, the graph head that scores them, and the
model card's reference computation the graph is validated against.

A causal LM checkpoint without sentence-transformers files whose architecture has a template in
TEMPLATES (Qwen3ForCausalLM: Qwen3-Reranker) is exported as a re-ranker: the bare decoder, then
the last real token's hidden state times (lm_head[yes] - lm_head[no]), one logit per pair.
sigmoid(logit(yes) - logit(no)) == softmax([logit(no), logit(yes)])[1], the card's score."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from tei_ort.errors import UnsupportedModel
from tei_ort.pair_template import QWEN3_RERANKER, PairTemplate

if TYPE_CHECKING:
    import torch

    from tei_ort.export.source import SourceModel

TEMPLATES: dict[str, PairTemplate] = {"Qwen3ForCausalLM": QWEN3_RERANKER}
LABEL = "yes"  # the one label of the package: the score is P(yes)
# own.load adds the checkpoint folder to the config under this key (the yes/no token ids are
# the tokenizer's).
MODEL_DIR_KEY = "_model_dir"
CARD_BATCH = 16


def template_for(source: SourceModel) -> PairTemplate | None:
    """The template when `source` is an LLM re-ranker (a sentence-transformers folder of the same
    architecture is an embedder: Qwen3-Embedding)."""
    return TEMPLATES.get(source.architecture) if source.st is None else None


def yes_no_rows(
    tensors: dict[str, torch.Tensor], tokenizer_file: str, template: PairTemplate
) -> torch.Tensor:
    """(2, hidden): the LM head's rows for the yes and no tokens (the input embeddings when the
    checkpoint ties them, as the 0.6B does)."""
    from tokenizers import Tokenizer

    head = tensors.get("lm_head.weight")
    if head is None:
        head = tensors.get("model.embed_tokens.weight", tensors.get("embed_tokens.weight"))
    if head is None:
        raise UnsupportedModel("an LLM re-ranker needs lm_head.weight or tied embeddings")
    vocab = Tokenizer.from_file(tokenizer_file)
    ids = [vocab.token_to_id(token) for token in (template.yes_token, template.no_token)]
    if None in ids:
        raise UnsupportedModel(
            f"the tokenizer has no {template.yes_token!r} / {template.no_token!r} token"
        )
    return head[ids].float()


def card_logits(
    source: SourceModel, template: PairTemplate, pairs: Sequence[str | tuple[str, str]]
) -> npt.NDArray[np.float32]:
    """(n, 1) logit(yes) - logit(no), computed as Qwen3-Reranker's model card does: transformers'
    causal LM, left padding, prefix + tokenizer(formatted, truncation) + suffix ids, the last
    position's logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
        str(source.model_dir), padding_side="left", local_files_only=True
    )
    model = AutoModelForCausalLM.from_pretrained(str(source.model_dir), local_files_only=True)
    model = model.eval()  # type: ignore[no-untyped-call]
    yes = tokenizer.convert_tokens_to_ids(template.yes_token)
    no = tokenizer.convert_tokens_to_ids(template.no_token)
    prefix = tokenizer.encode(template.prefix, add_special_tokens=False)
    suffix = tokenizer.encode(template.suffix, add_special_tokens=False)
    max_length = source.max_input_length()
    rows = []
    for start in range(0, len(pairs), CARD_BATCH):
        chunk = pairs[start : start + CARD_BATCH]
        texts = [
            template.format(*((item, "") if isinstance(item, str) else item)) for item in chunk
        ]
        inputs = tokenizer(
            texts,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=max_length - len(prefix) - len(suffix),
        )
        inputs["input_ids"] = [prefix + ids + suffix for ids in inputs["input_ids"]]
        batch = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
        with torch.inference_mode():
            logits = model(**batch).logits[:, -1, :]  # (batch, vocab)
        rows.append((logits[:, yes] - logits[:, no])[:, None].numpy())
    return np.concatenate(rows).astype(np.float32)  # (n, 1)
