"""Request inputs -> encodings, run in the tokenization thread pool (never on the event loop).

Token-id inputs (TEI and OpenAI accept `[int]` in place of a text) are used as given: TEI decodes
them to text and re-encodes that without special tokens, which is meant to reproduce the ids but
costs two tokenizer passes and is lossy (decode/encode is not an identity for every tokenizer:
normalizers, whitespace around punctuation, byte-level merges). We check the ids are in the
vocabulary and truncate them as a text would be. Where a prompt applies, there is no way around
text: as TEI, decode without special tokens and encode prompt + text with them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tei_ort.engine.backend import ModelBackend
from tei_ort.engine.types import EmbedInput, PredictInput
from tei_ort.errors import ValidationError
from tei_ort.tokenization import Encoded, TextInput, TruncationDirection


@dataclass(frozen=True)
class Encodings:
    encodings: list[Encoded]  # one per input, in input order
    characters: int  # TEI's x-compute-characters: characters of the texts, count of ids
    tokens: int  # special tokens and prompt included
    seconds: float = 0.0  # wall time of the tokenization, set by the engine


def encode_inputs(
    model: ModelBackend,
    inputs: Sequence[EmbedInput | PredictInput],
    *,
    truncate: bool,
    direction: TruncationDirection,
    prompt_name: str | None,
) -> Encodings:
    prompt = model.prompt(prompt_name)
    results: list[Encoded | None] = [None] * len(inputs)
    texts: list[TextInput] = []
    text_slots: list[int] = []
    characters = 0
    for slot, item in enumerate(inputs):
        if isinstance(item, list):
            characters += len(item)
            if prompt:
                texts.append(model.tokenizer.decode(item, skip_special_tokens=True))
                text_slots.append(slot)
            else:
                results[slot] = _from_ids(model, item, truncate, direction)
        else:
            characters += len(item) if isinstance(item, str) else len(item[0]) + len(item[1])
            texts.append(item)
            text_slots.append(slot)
    if texts:
        # One batch call for all texts: the Rust tokenizer parallelizes it and releases the GIL.
        encoded = model.encode(
            texts, truncate=truncate, direction=direction, prompt_name=prompt_name
        )
        for slot, encoding in zip(text_slots, encoded, strict=True):
            results[slot] = encoding
    encodings = [e for e in results if e is not None]
    return Encodings(encodings, characters, sum(len(e) for e in encodings))


def _from_ids(
    model: ModelBackend, ids: list[int], truncate: bool, direction: TruncationDirection
) -> Encoded:
    try:
        array = np.asarray(ids, dtype=np.int64)  # (len,)
    except (OverflowError, TypeError, ValueError) as exc:
        raise ValidationError(f"token ids must be integers: {exc}") from exc
    vocab = model.tokenizer.vocab_size
    if array.ndim != 1 or array.size == 0:
        raise ValidationError("a token-id input must be a non-empty list of integers")
    if int(array.min()) < 0 or int(array.max()) >= vocab:
        raise ValidationError(f"token ids must be between 0 and {vocab - 1}")
    limit = model.manifest.max_input_length
    if array.size > limit:
        if not truncate:
            raise ValidationError(
                f"Input validation error: `inputs` must have less than {limit} tokens. "
                f"Given: {array.size}"
            )
        array = array[:limit] if direction is TruncationDirection.RIGHT else array[-limit:]
    return Encoded(ids=array, type_ids=np.zeros_like(array))
