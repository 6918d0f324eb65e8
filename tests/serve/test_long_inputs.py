"""Issue 10, long inputs: a model with an 8k context serves 8k-token inputs over HTTP.

A tiny random-weight JinaBERT v2 (ALiBi: no position table, 8,192 positions; tests/export/
tiny_jina.py) in jina-embeddings-v2's file layout, with its sentence_bert_config.json saying
max_seq_length 8192 as the real ones do, is exported (fp32) and served as `tei-serve` builds it on
a real socket. Expected embeddings come from our PyTorch module run eagerly on transformers'
tokenization (not from tei_ort.runtime), so a graph that mishandles long sequences, a truncation at
the wrong length or a batch that mixes inputs shows here as a wrong value."""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from tei_ort.errors import ValidationError
from tei_ort.export.hub import locate
from tei_ort.export.pipeline import ExportOptions, export_model
from tei_ort.export.source import read_source
from tei_ort.package import VariantName
from tei_ort.serve.cli import build
from tei_ort.serve.settings import load_settings
from tests.export import tiny_jina, tiny_models
from tests.serve import live, scrape

pytest.importorskip("torch")

LIMIT = tiny_jina.MAX_POSITIONS  # 8,192
MAX_BATCH_TOKENS = 16384
OPTIONS = ExportOptions(variants=(VariantName.FP32,), validation_queries=4, validation_passages=8)
ATOL = 1e-4  # ORT's fused fp32 graph against PyTorch's eager forward
# Words the MiniLM (BERT uncased) vocabulary holds whole: one token each.
WORDS = [
    "the",
    "river",
    "city",
    "north",
    "music",
    "paper",
    "light",
    "green",
    "house",
    "water",
    "story",
    "field",
]


@dataclass(frozen=True)
class Served:
    client: httpx.Client
    source: Path
    package: Path


def _jina_source(root: Path, sentence_transformers: dict[str, object] | None) -> Path:
    """The tiny JinaBERT embedder; `sentence_transformers`: its sentence_bert_config.json
    (None: the file removed, as a plain Hugging Face checkpoint has none)."""
    tokenizer_dir = root / "tokenizer"
    tokenizer_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(tiny_models.MINILM / name, tokenizer_dir / name)
    source = tiny_models.build_model("jina-bert", "embedding", tokenizer_dir, root / "jina")
    st_file = source / "sentence_bert_config.json"
    if sentence_transformers is None:
        st_file.unlink()
    else:
        st_file.write_text(json.dumps(sentence_transformers))
    return source


def text_of(tokens: int, part: int = 0) -> str:
    """A text of exactly `tokens` tokens, [CLS] and [SEP] included, of the `part`-th group of
    four WORDS (texts of different parts share no word, so their embeddings differ)."""
    words = WORDS[4 * part % len(WORDS) :][:4]
    return " ".join(words[i % len(words)] for i in range(tokens - 2))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # jina-embeddings-v2-base-en's sentence_bert_config.json.
    source = _jina_source(
        tmp_path_factory.mktemp("src"), {"max_seq_length": LIMIT, "do_lower_case": False}
    )
    package = export_model(str(source), tmp_path_factory.mktemp("pkg") / "p", OPTIONS).path
    args = ["--model-id", str(package), "--provider", "cpu", "--variant", "fp32"]
    args += ["--max-batch-tokens", str(MAX_BATCH_TOKENS), "--prometheus-port", "0"]
    args += ["--huggingface-hub-cache", str(tmp_path_factory.mktemp("hub"))]
    with (
        live.serve_app(build(load_settings(args, {}))) as url,
        httpx.Client(base_url=url, timeout=300) as client,
    ):
        yield Served(client, source, package)


@functools.cache
def torch_embeddings(source: Path, text: str, limit: int = LIMIT) -> np.ndarray:
    """Our JinaBERT module in PyTorch on transformers' tokenization truncated at `limit` tokens,
    mean-pooled and normalized by hand. (hidden,)"""
    import torch
    from transformers import AutoTokenizer

    from tei_ort.export.architectures import own
    from tei_ort.export.recipes import lookup

    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    model = own.load(source, lookup("JinaBertModel"))
    encoded = tokenizer([text], truncation=True, max_length=limit, return_tensors="pt")
    with torch.no_grad():
        hidden = model(
            encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"]
        )  # (1, seq, hidden)
    embedding: np.ndarray = torch.nn.functional.normalize(hidden.mean(1), dim=-1)[0].numpy()
    return embedding


def test_texts_have_the_token_counts_asked(served: Served) -> None:
    tokenizer = Tokenizer.from_file(str(served.source / "tokenizer.json"))
    tokenizer.no_truncation()
    for tokens in (8000, LIMIT + 1):
        assert len(tokenizer.encode(text_of(tokens, 3)).ids) == tokens


def test_info_max_input_length_is_the_models_8192(served: Served) -> None:
    info = served.client.get("/info").json()
    assert info["max_input_length"] == LIMIT
    assert info["max_batch_tokens"] == MAX_BATCH_TOKENS


@pytest.mark.parametrize(
    ("sentence_transformers", "expected"),
    [
        # TEI: sentence_bert_config.json's max_seq_length when the file is there ...
        ({"max_seq_length": 512, "do_lower_case": False}, 512),
        # ... else max_position_embeddings (no offset for bert); ours also caps at the
        # tokenizer_config's model_max_length (8,192 here, as jina's).
        (None, LIMIT),
    ],
)
def test_max_input_length_is_read_from_the_models_files(
    tmp_path: Path, sentence_transformers: dict[str, object] | None, expected: int
) -> None:
    source = _jina_source(tmp_path, sentence_transformers)
    assert read_source(locate(str(source))).max_input_length() == expected


def test_an_8000_token_input_equals_pytorch(served: Served) -> None:
    text = text_of(8000)
    r = served.client.post("/embed", json={"inputs": text, "truncate": False})
    assert r.status_code == 200, r.text
    got = np.array(r.json())
    np.testing.assert_allclose(got, torch_embeddings(served.source, text)[None], atol=ATOL, rtol=0)


@dataclass(frozen=True)
class BatchRun:
    texts: list[str]
    embeddings: np.ndarray  # (3, hidden)
    grew: dict[str, float]  # te_batch_next_* samples' growth over the request


@pytest.fixture(scope="module")
def batch_run(served: Served) -> BatchRun:
    """One /embed request with truncate on: two 8,000-token inputs and one of 8,193 tokens."""
    texts = [text_of(8000, 0), text_of(8000, 1), text_of(LIMIT + 1, 2)]
    before = scrape.scrape(served.client)
    r = served.client.post("/embed", json={"inputs": texts, "truncate": True})
    assert r.status_code == 200, r.text
    after = scrape.scrape(served.client)
    names = {
        "batches": ("te_batch_next_size_count", {}),
        "inputs": ("te_batch_next_size_sum", {}),
        "tokens": ("te_batch_next_tokens_sum", {}),
        "within_budget": ("te_batch_next_tokens_bucket", {"le": f"{float(MAX_BATCH_TOKENS)}"}),
    }
    grew = {
        key: scrape.value(after, name, **labels) - scrape.value(before, name, **labels)
        for key, (name, labels) in names.items()
    }
    return BatchRun(texts, np.array(r.json()), grew)


def test_several_8k_inputs_split_across_batches_within_the_budget(
    served: Served, batch_run: BatchRun
) -> None:
    grew = batch_run.grew
    # 8,000 + 8,000 + 8,192 tokens never share one 16,384-token batch: at least two forward
    # passes, and every one within the budget.
    assert grew["batches"] >= 2
    assert grew["inputs"] == 3
    assert grew["tokens"] == 8000 + 8000 + LIMIT
    assert grew["within_budget"] == grew["batches"]
    got = batch_run.embeddings
    np.testing.assert_allclose(
        got[0], torch_embeddings(served.source, batch_run.texts[0]), atol=ATOL
    )
    # Each input's own row, not a neighbour's: the rows differ.
    assert np.abs(got[0] - got[1]).max() > 1e-3 and np.abs(got[1] - got[2]).max() > 1e-3


def test_an_8193_token_input_is_refused_without_truncation(served: Served) -> None:
    r = served.client.post("/embed", json={"inputs": text_of(LIMIT + 1), "truncate": False})
    assert r.status_code == 422
    assert r.json() == {
        "error": f"Input validation error: `inputs` must have less than {LIMIT} tokens. "
        f"Given: {LIMIT + 1}",
        "error_type": "Validation",
    }


def test_an_8193_token_input_is_truncated_to_8192_with_truncation(
    served: Served, batch_run: BatchRun
) -> None:
    # The reference truncates at 8,192 tokens (the last word dropped, [SEP] kept).
    want = torch_embeddings(served.source, batch_run.texts[2])
    np.testing.assert_allclose(batch_run.embeddings[2], want, atol=ATOL, rtol=0)


def _settings(package: Path, hub: Path, *flags: str) -> list[str]:
    args = ["--model-id", str(package), "--provider", "cpu", "--variant", "fp32"]
    return [*args, "--prometheus-port", "0", "--huggingface-hub-cache", str(hub), *flags]


def test_a_budget_below_8192_lowers_max_input_length_as_tei_does(
    served: Served, tmp_path: Path
) -> None:
    """TEI: max_input_length above --max-batch-tokens is lowered to it while --auto-truncate is
    on (the default): the server starts, /info says so, inputs are cut there."""
    args = _settings(served.package, tmp_path, "--max-batch-tokens", "2048")
    text = text_of(3000, 1)
    with (
        live.serve_app(build(load_settings(args, {}))) as url,
        httpx.Client(base_url=url, timeout=300) as client,
    ):
        assert client.get("/info").json()["max_input_length"] == 2048
        refused = client.post("/embed", json={"inputs": text, "truncate": False})
        cut = client.post("/embed", json={"inputs": text, "truncate": True})
    assert refused.status_code == 422
    assert refused.json()["error"] == (
        "Input validation error: `inputs` must have less than 2048 tokens. Given: 3000"
    )
    assert cut.status_code == 200, cut.text
    want = torch_embeddings(served.source, text, 2048)
    np.testing.assert_allclose(np.array(cut.json())[0], want, atol=ATOL, rtol=0)


def test_a_budget_below_8192_without_auto_truncate_fails_at_start_up(
    served: Served, tmp_path: Path
) -> None:
    args = _settings(
        served.package, tmp_path, "--max-batch-tokens", "2048", "--auto-truncate", "false"
    )
    with pytest.raises(ValidationError, match=r"`max_input_length` \(8192\) must be at most"):
        build(load_settings(args, {}))
