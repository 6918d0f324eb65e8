"""Tokenization with the Rust `tokenizers` library: prompts, pairs, truncation on either side, and a
character pre-cut so that a 100k-character input costs no more than one at the model's limit.

All batch work goes through `encode_batch`, which releases the GIL, so callers may run it in a
thread pool off the event loop.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding
from tokenizers import Tokenizer as RustTokenizer

from tei_ort.errors import PackageError, TokenizationError, ValidationError

TextInput = (
    str | tuple[str, str]
)  # a text, or a (query, text) pair for re-rankers and pair classifiers

# No tokenizer we serve makes a token of more than this many characters on average over a long
# text, so cutting a text at max_len * this many characters keeps every token that truncation keeps;
# `encode_batch` re-encodes the full text in the rare case where the cut text came out too short.
_CHARS_PER_TOKEN_BOUND = 32
# Without truncation, TEI refuses an input longer than max_input_length x this many characters
# before tokenizing it (MAX_CHAR_MULTIPLIER): a megabyte-long word must not reach the tokenizer.
_MAX_CHARS_PER_TOKEN = 250


class TruncationDirection(str, enum.Enum):
    LEFT = "left"
    RIGHT = "right"

    @classmethod
    def parse(cls, value: str) -> TruncationDirection:
        """TEI accepts any case ("Left", "right", "LEFT")."""
        try:
            return cls(value.lower())
        except ValueError as exc:
            raise ValidationError(
                f"truncation_direction must be 'left' or 'right', not {value!r}"
            ) from exc


@dataclass(frozen=True)
class Encoded:
    ids: npt.NDArray[np.int64]  # (seq,)
    type_ids: npt.NDArray[np.int64]  # (seq,)
    # How many leading ids are the prompt's, as sentence-transformers counts them for pooling
    # with include_prompt=false (Tokenizer.prompt_length); 0 without a prompt.
    prompt_tokens: int = 0

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class Token:
    """One token as /tokenize reports it. `start` and `stop` are UTF-8 byte offsets into the input
    (with its prompt), as TEI reports them (its Rust tokenizer counts bytes): for "这" they are 0
    and 3. `text` is the input's own text between them, or the token itself for a special token."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class Tokenizer:
    def __init__(self, tokenizer: RustTokenizer, max_input_length: int) -> None:
        self.max_input_length = max_input_length
        self._cut_chars = max_input_length * _CHARS_PER_TOKEN_BOUND
        serialized = tokenizer.to_str()
        # One Rust tokenizer per truncation mode: the Rust side truncates around the special tokens
        # (and pairs longest-first), exactly as transformers and TEI do.
        self._untruncated = RustTokenizer.from_str(serialized)
        self._untruncated.no_truncation()
        self._untruncated.no_padding()
        self._truncating: dict[TruncationDirection, RustTokenizer] = {}
        for direction in TruncationDirection:
            rust = RustTokenizer.from_str(serialized)
            rust.no_padding()
            rust.enable_truncation(max_input_length, direction=direction.value)
            self._truncating[direction] = rust
        self._prompt_lengths: dict[str, int] = {}  # a model has a handful of prompts

    @classmethod
    def from_file(cls, path: Path, max_input_length: int) -> Tokenizer:
        if not path.is_file():
            raise PackageError(f"{path}: not found")
        try:
            rust = RustTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust tokenizer raises plain Exception on a broken file
            raise PackageError(f"{path}: not a valid tokenizer.json ({exc})") from exc
        return cls(rust, max_input_length)

    @property
    def vocab_size(self) -> int:
        return int(self._untruncated.get_vocab_size(with_added_tokens=True))

    def encode_batch(
        self,
        inputs: Sequence[TextInput],
        *,
        truncate: bool = True,
        direction: TruncationDirection = TruncationDirection.RIGHT,
        prompt: str | None = None,
    ) -> list[Encoded]:
        """Encode texts or pairs with special tokens. With `truncate`, each result keeps at most
        `max_input_length` tokens (cut on `direction`); without, a longer input is a ValidationError
        in TEI's wording. `prompt` is prepended to each text (to the first element of a pair)."""
        encoded = self._encode_with_prompt(inputs, truncate, direction, prompt)
        if not prompt:
            return encoded
        prompt_tokens = self.prompt_length(prompt)
        return [replace(e, prompt_tokens=prompt_tokens) for e in encoded]

    def _encode_with_prompt(
        self,
        inputs: Sequence[TextInput],
        truncate: bool,
        direction: TruncationDirection,
        prompt: str | None,
    ) -> list[Encoded]:
        limit = self.max_input_length
        with_prompt = [_with_prompt(item, prompt) for item in inputs]
        if not truncate:
            self._check_characters(with_prompt)
            encodings = _encode(self._untruncated, with_prompt)
            for encoding in encodings:
                if len(encoding.ids) > limit:
                    raise ValidationError(
                        f"Input validation error: `inputs` must have less than {limit} tokens. "
                        f"Given: {len(encoding.ids)}"
                    )
            return [_to_arrays(e) for e in encodings]
        rust = self._truncating[direction]
        cut = [_cut_item(item, self._cut_chars, direction) for item in with_prompt]
        encodings = _encode(rust, cut)
        for index, encoding in enumerate(encodings):
            if len(encoding.ids) < limit and cut[index] != with_prompt[index]:
                # Rare: the cut text made fewer tokens than the limit, so the cut may have dropped
                # tokens that truncation would keep. Encode the whole text.
                encodings[index] = _encode(rust, [with_prompt[index]])[0]
        return [_to_arrays(e) for e in encodings]

    def prompt_length(self, prompt: str) -> int:
        """The prompt's token count as sentence-transformers' Transformer._get_prompt_length
        computes it: the prompt encoded alone with special tokens, less its last token when that
        one is special (a trailing [SEP] or EOS). "query: " with BERT's [CLS] query : [SEP] -> 4:
        [CLS] and the prompt's own tokens, the positions its Pooling then leaves out."""
        known = self._prompt_lengths.get(prompt)
        if known is not None:
            return known
        encoding = _encode(self._untruncated, [prompt])[0]
        length = len(encoding.ids)
        if length and encoding.special_tokens_mask[-1]:
            length -= 1
        self._prompt_lengths[prompt] = length
        return length

    def _check_characters(self, inputs: Sequence[TextInput]) -> None:
        max_chars = self.max_input_length * _MAX_CHARS_PER_TOKEN
        for item in inputs:
            chars = len(item) if isinstance(item, str) else len(item[0]) + len(item[1])
            if chars > max_chars:
                raise ValidationError(
                    f"Input validation error: `inputs` must have less than {max_chars} "
                    f"characters. Given: {chars}"
                )

    def encode_plain(
        self,
        texts: Sequence[str],
        *,
        limit: int | None = None,
        direction: TruncationDirection = TruncationDirection.RIGHT,
    ) -> list[npt.NDArray[np.int64]]:
        """Ids without special tokens, at most `limit` of them (cut on `direction`), for callers
        that assemble the ids themselves (tei_ort.pair_template)."""
        if limit is None:
            encodings = _encode(self._untruncated, list(texts), add_special_tokens=False)
            return [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        cut = [_cut(text, limit * _CHARS_PER_TOKEN_BOUND, direction) for text in texts]
        encodings = _encode(self._untruncated, cut, add_special_tokens=False)
        result = []
        for text, short, encoding in zip(texts, cut, encodings, strict=True):
            if len(encoding.ids) < limit and short != text:  # as encode_batch: re-encode whole
                encoding = _encode(self._untruncated, [text], add_special_tokens=False)[0]
            ids = np.asarray(encoding.ids, dtype=np.int64)
            result.append(ids[:limit] if direction is TruncationDirection.RIGHT else ids[-limit:])
        return result

    def count_tokens(self, inputs: Sequence[TextInput]) -> list[int]:
        return [len(e.ids) for e in _encode(self._untruncated, list(inputs))]

    def tokenize(self, text: TextInput, *, add_special_tokens: bool = True) -> list[Token]:
        encoding = _encode(self._untruncated, [text], add_special_tokens=add_special_tokens)[0]
        source = text if isinstance(text, str) else None
        # Python's tokenizers report character offsets; TEI reports byte offsets.
        to_byte = _byte_offsets(source) if source is not None else None
        tokens = []
        for token_id, token, special, (start, stop) in zip(
            encoding.ids,
            encoding.tokens,
            encoding.special_tokens_mask,
            encoding.offsets,
            strict=True,
        ):
            is_special = bool(special)
            span = None if source is None or is_special else (int(start), int(stop))
            tokens.append(
                Token(
                    id=int(token_id),
                    text=token if span is None or source is None else source[span[0] : span[1]],
                    special=is_special,
                    start=None if span is None or to_byte is None else to_byte[span[0]],
                    stop=None if span is None or to_byte is None else to_byte[span[1]],
                )
            )
        return tokens

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        vocab = self.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValidationError(f"token ids out of the vocabulary (0..{vocab - 1}): {bad[:5]}")
        return str(self._untruncated.decode(list(ids), skip_special_tokens=skip_special_tokens))


def _encode(
    rust: RustTokenizer, inputs: Sequence[TextInput], add_special_tokens: bool = True
) -> list[Encoding]:
    try:
        return list(rust.encode_batch(list(inputs), add_special_tokens=add_special_tokens))
    except Exception as exc:  # the Rust tokenizer raises plain Exception
        raise TokenizationError(f"Tokenizer error: {exc}") from exc


def _with_prompt(item: TextInput, prompt: str | None) -> TextInput:
    if not prompt:
        return item
    if isinstance(item, str):
        return prompt + item
    return (prompt + item[0], item[1])


def _cut(text: str, chars: int, direction: TruncationDirection) -> str:
    if len(text) <= chars:
        return text
    return text[:chars] if direction is TruncationDirection.RIGHT else text[-chars:]


def _cut_item(item: TextInput, chars: int, direction: TruncationDirection) -> TextInput:
    if isinstance(item, str):
        return _cut(item, chars, direction)
    return (_cut(item[0], chars, direction), _cut(item[1], chars, direction))


def _to_arrays(encoding: Encoding) -> Encoded:
    return Encoded(
        ids=np.asarray(encoding.ids, dtype=np.int64),
        type_ids=np.asarray(encoding.type_ids, dtype=np.int64),
    )


def _byte_offsets(text: str) -> list[int] | range:
    """The UTF-8 byte offset of each character offset 0..len(text) (both ends included)."""
    if text.isascii():
        return range(len(text) + 1)
    offsets = [0]
    for char in text:
        offsets.append(offsets[-1] + len(char.encode("utf-8", "surrogatepass")))
    return offsets
