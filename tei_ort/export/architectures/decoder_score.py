"""Sequence-classification heads on decoders (Qwen3/Qwen2/Mistral/Llama/Gemma3Text
ForSequenceClassification): transformers' GenericForSequenceClassification, a `score` Linear
without bias over one token's hidden state, rebuilt on DecoderEncoder.

Which token: transformers' rule, the rightmost token whose id is not config.pad_token_id
(left padding: the last position; right padding: the last real token; a real token that happens
to be the pad id, e.g. an appended <|endoftext|> that is also the pad token, is skipped too).
Without a pad_token_id transformers takes the last position (it refuses batches then); here the
last attended one, which is the same for a single input. Padding positions are also excluded by
the attention mask, so the runtime's right padding with any id gives the same token.

One label is a re-ranker (score = sigmoid(logit), as TEI and sentence-transformers' CrossEncoder
serve it); several are a classifier (softmax over id2label). The pair is the tokenizer's own pair
encoding: a converted Qwen3-Reranker (e.g. tomaarsen/Qwen3-Reranker-0.6B-seq-cls) expects the
caller to put the chat prefix and instruction into the query and the suffix into each document,
as its card and TEI do; no template is applied here."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tei_ort.errors import UnsupportedModel

SCORE = "score.weight"


class LastTokenScore(nn.Module):
    """forward(input_ids (b, s), attention_mask (b, s)) -> logits (b, num_labels)."""

    def __init__(self, encoder: nn.Module, weight: torch.Tensor, pad_token_id: int | None):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("weight_t", weight.float().T.contiguous())  # (hidden, labels)
        self.pad_token_id = pad_token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)  # (batch, seq, hidden)
        keep = attention_mask.bool()  # (batch, seq)
        if self.pad_token_id is not None:
            keep = keep & (input_ids != self.pad_token_id)
        index = torch.ones_like(attention_mask[0]).cumsum(0) - 1  # (seq,) 0..s-1
        # transformers: argmax(index * non_pad), i.e. the rightmost kept position (0 when none).
        last = (index[None, :] * keep.to(index.dtype)).amax(1)  # (batch,)
        gather = last[:, None, None].expand(-1, 1, hidden.shape[-1])  # (batch, 1, hidden)
        token = hidden.gather(1, gather)[:, 0]  # (batch, hidden)
        logits: torch.Tensor = token @ self.weight_t  # (batch, labels)
        return logits


def score_weight(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """(num_labels, hidden): the checkpoint's score.weight, checked against config's labels."""
    weight = tensors.get(SCORE)
    if weight is None:
        raise UnsupportedModel(f"{config.get('model_type')}: a {SCORE} tensor is needed")
    labels = config.get("id2label") or {}
    if labels and weight.shape[0] != len(labels):
        raise UnsupportedModel(
            f"{SCORE} has {weight.shape[0]} rows but config.json names {len(labels)} labels"
        )
    return weight


def pad_token_id(config: dict[str, Any]) -> int | None:
    value = config.get("pad_token_id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
