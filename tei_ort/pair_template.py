"""LLM re-rankers (Qwen3-Reranker and those built the same way): a (query, document) pair is not
tokenized as a BERT pair but laid into a chat template, and the score is read from the yes/no
logits of the last token (the graph ends in logit(yes) - logit(no), one label, so TEI's sigmoid
gives the model card's softmax([no, yes])[yes]).

Token ids are built as the model card builds them: prefix ids + ids of the formatted body
(truncated alone, so the template always survives) + suffix ids, each part tokenized on its own
without special tokens. The template is written into the package manifest at export."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tei_ort.errors import ValidationError
from tei_ort.tokenization import Encoded, TextInput, Tokenizer, TruncationDirection


@dataclass(frozen=True)
class PairTemplate:
    prefix: str
    suffix: str
    body: str  # str.format fields: {instruction}, {query}, {document}
    instruction: str  # the model card's default instruction
    yes_token: str
    no_token: str
    # The card's max_length: the package's input limit. The config's 40,960 positions would make
    # the start-up warm-up (one forward of the longest input) hold 40,960^2 attention scores
    # per head.
    max_length: int

    def format(self, query: str, document: str) -> str:
        return self.body.format(instruction=self.instruction, query=query, document=document)


# Qwen/Qwen3-Reranker-{0.6B,4B,8B}, as their model card's reference code writes it.
QWEN3_RERANKER = PairTemplate(
    prefix=(
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
        'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
        "<|im_start|>user\n"
    ),
    suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    body="<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
    instruction="Given a web search query, retrieve relevant passages that answer the query",
    yes_token="yes",
    no_token="no",
    max_length=8192,
)


def encode_pairs(
    tokenizer: Tokenizer,
    template: PairTemplate,
    inputs: Sequence[TextInput],
    *,
    truncate: bool,
    direction: TruncationDirection,
) -> list[Encoded]:
    """Each (query, document) pair as the template's ids; a single text is a query with an empty
    document. With `truncate` the body is cut (on `direction`) so that the whole fits the
    model's limit; without, a longer input is TEI's validation error."""
    prefix, suffix = tokenizer.encode_plain([template.prefix, template.suffix])
    room = tokenizer.max_input_length - len(prefix) - len(suffix)
    if room < 1:
        raise ValidationError("the re-ranking template alone exceeds the model's input length")
    bodies = [template.format(*((item, "") if isinstance(item, str) else item)) for item in inputs]
    encoded = []
    for ids in tokenizer.encode_plain(
        bodies, limit=room if truncate else None, direction=direction
    ):
        if not truncate and len(ids) > room:
            limit = tokenizer.max_input_length
            raise ValidationError(
                f"Input validation error: `inputs` must have less than {limit} tokens. "
                f"Given: {len(ids) + len(prefix) + len(suffix)}"
            )
        full = np.concatenate([prefix, ids, suffix])  # (seq,)
        encoded.append(Encoded(ids=full, type_ids=np.zeros_like(full)))
    return encoded
