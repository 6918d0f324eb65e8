"""Every inference route over a real socket, served as `tei-serve` builds it (`cli.build` on a real
exported package), on a real tiny random-weight graph of each kind: an embedding model, a
classifier, a re-ranker and a SPLADE masked LM (BERT, the MiniLM tokenizer; tests/export/
tiny_models.py). Expected values come from PyTorch in this file: sentence-transformers and
transformers on the source folder the package was exported from, never from tei_ort.runtime, so a
wrong pooling, activation, truncation or ordering in the runtime shows here as a wrong value."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tei_ort.serve.cli import build
from tei_ort.serve.settings import load_settings
from tests.conftest import TinyBert
from tests.serve import live

pytest.importorskip("torch")

TEXTS = [
    "What is Deep Learning?",
    "x",
    "Paris is the capital and largest city of France.",
    "The quick brown fox jumps over the lazy dog " * 8,  # past 48 / 64 tokens: truncated
]
QUERY = "capital of france?"
DOCS = ["paris is in france", "bananas", "the capital of france is paris", "x", "dogs bark"]
ATOL = 1e-4  # ORT's fused fp32 graph against PyTorch's eager forward


@dataclass(frozen=True)
class Served:
    client: httpx.Client
    source: Path  # the Hugging Face folder the package was exported from


def _serve(tiny: TinyBert, root: pytest.TempPathFactory) -> Iterator[Served]:
    args = ["--model-id", str(tiny.package), "--provider", "cpu", "--variant", "fp32"]
    args += ["--prometheus-port", "0", "--huggingface-hub-cache", str(root.mktemp("hub"))]
    with (
        live.serve_app(build(load_settings(args, {}))) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield Served(client, tiny.source)


# The packages come from the session's tiny_bert_fp32 (tests/conftest.py), shared with the other
# tests that serve these models; each module still starts its own server.
@pytest.fixture(scope="module")
def embedder(
    tiny_bert_fp32: Callable[[str], TinyBert], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    yield from _serve(tiny_bert_fp32("embedding"), tmp_path_factory)


@pytest.fixture(scope="module")
def classifier(
    tiny_bert_fp32: Callable[[str], TinyBert], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    yield from _serve(tiny_bert_fp32("classification"), tmp_path_factory)


@pytest.fixture(scope="module")
def reranker(
    tiny_bert_fp32: Callable[[str], TinyBert], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    yield from _serve(tiny_bert_fp32("reranker"), tmp_path_factory)


@pytest.fixture(scope="module")
def splade(
    tiny_bert_fp32: Callable[[str], TinyBert], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    yield from _serve(tiny_bert_fp32("masked_lm"), tmp_path_factory)


# -- the PyTorch reference ---------------------------------------------------------------------


def st_model(source: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(source), device="cpu", local_files_only=True)


def st_embed(source: Path, texts: list[str], normalize: bool = True) -> np.ndarray:
    vectors = st_model(source).encode(texts, normalize_embeddings=normalize, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)  # (n, 32)


def hf_tokenizer(source: Path, side: str = "right") -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source), truncation_side=side)


def hf_encode(source: Path, inputs: list[Any], max_length: int, side: str = "right") -> Any:
    firsts = [i if isinstance(i, str) else i[0] for i in inputs]
    seconds = [i[1] for i in inputs if not isinstance(i, str)] or None
    return hf_tokenizer(source, side)(
        firsts, seconds, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )


def torch_mean_pooled(source: Path, encoded: Any) -> np.ndarray:
    """BERT mean pooling + L2 normalization, written out (the tiny embedder's 1_Pooling)."""
    import torch
    from transformers import AutoModel

    with torch.no_grad():
        hidden = AutoModel.from_pretrained(str(source)).eval()(**encoded).last_hidden_state
    mask = encoded["attention_mask"][..., None]  # (b, s, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # (b, h)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def torch_logits(source: Path, inputs: list[Any]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(source)).eval()
    with torch.no_grad():  # one input at a time: a batch may mix single texts and pairs
        rows = [model(**hf_encode(source, [i], 64)).logits.numpy() for i in inputs]
    return np.concatenate(rows)  # (n, labels)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def torch_splade(source: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForMaskedLM

    encoded = hf_encode(source, texts, 64)
    with torch.no_grad():
        logits = AutoModelForMaskedLM.from_pretrained(str(source)).eval()(**encoded).logits
    weights = torch.log1p(torch.relu(logits)) * encoded["attention_mask"][..., None]
    return weights.max(dim=1).values.numpy()  # (n, vocab)


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


# -- embedding ---------------------------------------------------------------------------------


def test_embed(embedder: Served) -> None:
    got = ok(embedder.client.post("/embed", json={"inputs": TEXTS}))
    np.testing.assert_allclose(got, st_embed(embedder.source, TEXTS), atol=ATOL)
    raw = ok(embedder.client.post("/embed", json={"inputs": TEXTS, "normalize": False}))
    np.testing.assert_allclose(raw, st_embed(embedder.source, TEXTS, normalize=False), atol=ATOL)
    one = ok(embedder.client.post("/embed", json={"inputs": TEXTS[0]}))
    np.testing.assert_allclose(one, st_embed(embedder.source, TEXTS[:1]), atol=ATOL)
    # Matryoshka: the first 8 dimensions of the raw vector, normalized again.
    short = np.asarray(ok(embedder.client.post("/embed", json={"inputs": TEXTS, "dimensions": 8})))
    head = st_embed(embedder.source, TEXTS, normalize=False)[:, :8]
    np.testing.assert_allclose(short, head / np.linalg.norm(head, axis=1, keepdims=True), atol=ATOL)


def test_embed_prompt_name(embedder: Served) -> None:
    got = ok(embedder.client.post("/embed", json={"inputs": TEXTS[:2], "prompt_name": "query"}))
    want = st_model(embedder.source).encode(
        TEXTS[:2], prompt_name="query", normalize_embeddings=True
    )
    np.testing.assert_allclose(got, want, atol=ATOL)


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_direction(embedder: Served, side: str) -> None:
    long = " ".join(f"w{i}" for i in range(60))  # 2 tokens a word: far past 48
    body = {"inputs": long, "truncation_direction": side.capitalize()}
    got = ok(embedder.client.post("/embed", json=body))
    encoded = hf_encode(embedder.source, [long], 48, side)
    ids = encoded["input_ids"][0].tolist()
    # The kept tokens: the last words for "left", the first for "right", specials at both ends.
    kept = hf_tokenizer(embedder.source).decode(ids, skip_special_tokens=True)
    assert kept.startswith("w0 ") if side == "right" else kept.endswith(" w59")
    np.testing.assert_allclose(got, torch_mean_pooled(embedder.source, encoded), atol=ATOL)
    # The same ids sent as token ids give the same vector: the server cut exactly these tokens.
    np.testing.assert_allclose(ok(embedder.client.post("/embed", json={"inputs": ids})), got)


def test_embed_all(embedder: Served) -> None:
    got = ok(embedder.client.post("/embed_all", json={"inputs": TEXTS[:3]}))
    want = st_model(embedder.source).encode(TEXTS[:3], output_value="token_embeddings")
    assert [len(g) for g in got] == [len(w) for w in want]  # one row per token, no padding
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=ATOL)


def test_openai_embeddings(embedder: Served) -> None:
    want = st_embed(embedder.source, TEXTS)
    body = ok(embedder.client.post("/v1/embeddings", json={"input": TEXTS, "model": "m"}))
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], want, atol=ATOL)
    tokens = hf_tokenizer(embedder.source)(TEXTS, truncation=True, max_length=48)["input_ids"]
    assert body["usage"] == {
        "prompt_tokens": sum(map(len, tokens)),
        "total_tokens": sum(map(len, tokens)),
    }
    encoded = ok(
        embedder.client.post(
            "/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64", "dimensions": 8}
        )
    )
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in encoded["data"]]
    head = st_embed(embedder.source, TEXTS, normalize=False)[:, :8]
    np.testing.assert_allclose(
        decoded, head / np.linalg.norm(head, axis=1, keepdims=True), atol=ATOL
    )


def test_similarity(embedder: Served) -> None:
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}}
    got = ok(embedder.client.post("/similarity", json=body))
    vectors = st_embed(embedder.source, TEXTS)
    np.testing.assert_allclose(got, vectors[1:] @ vectors[0], atol=ATOL)
    # The hub's sentence-similarity body on POST / and /invocations is the same operation.
    for path in ("/", "/invocations"):
        np.testing.assert_allclose(ok(embedder.client.post(path, json=body)), got, atol=1e-6)


def test_tokenize_and_decode(embedder: Served) -> None:
    tokenizer = hf_tokenizer(embedder.source)
    text = "Übung macht den Meister, naïve café."
    got = ok(embedder.client.post("/tokenize", json={"inputs": [text, TEXTS[0]]}))
    for tokens, sentence in zip(got, [text, TEXTS[0]], strict=True):
        encoding = tokenizer(sentence, return_offsets_mapping=True)
        assert [t["id"] for t in tokens] == encoding["input_ids"]
        specials = set(tokenizer.all_special_ids)
        assert [t["special"] for t in tokens] == [i in specials for i in encoding["input_ids"]]
        # A special token: its own text and no span. Any other: its span of the input in UTF-8
        # bytes, as TEI reports it, and the input's text there (not the normalized, lower-cased
        # vocab entry). transformers gives character spans; count their bytes independently.
        names = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
        spans = encoding["offset_mapping"]

        def byte(chars: int, sentence: str = sentence) -> int:
            return len(sentence[:chars].encode("utf-8"))

        assert [(t["text"], t["start"], t["stop"]) for t in tokens] == [
            (name, None, None)
            if name in tokenizer.all_special_tokens
            else (sentence[a:b], byte(a), byte(b))
            for name, (a, b) in zip(names, spans, strict=True)
        ]
    bare = ok(embedder.client.post("/tokenize", json={"inputs": text, "add_special_tokens": False}))
    assert [t["id"] for t in bare[0]] == tokenizer(text, add_special_tokens=False)["input_ids"]
    prompted = ok(embedder.client.post("/tokenize", json={"inputs": "hi", "prompt_name": "query"}))
    assert [t["id"] for t in prompted[0]] == tokenizer("query: hi")["input_ids"]
    ids = tokenizer(TEXTS[2])["input_ids"]
    decoded = ok(embedder.client.post("/decode", json={"ids": ids}))
    assert decoded == [tokenizer.decode(ids, skip_special_tokens=True)]
    kept = ok(embedder.client.post("/decode", json={"ids": [ids], "skip_special_tokens": False}))
    assert kept == [tokenizer.decode(ids, skip_special_tokens=False)]


def test_root_and_invocations_embed(embedder: Served) -> None:
    want = st_embed(embedder.source, TEXTS[:2])
    for path in ("/", "/invocations"):
        np.testing.assert_allclose(
            ok(embedder.client.post(path, json={"inputs": TEXTS[:2]})), want, atol=ATOL
        )
    # OpenAI's path without /v1, and Vertex's instances (each one the model's own route).
    body = ok(embedder.client.post("/embeddings", json={"input": TEXTS[:2]}))
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], want, atol=ATOL)
    instances = [{"inputs": TEXTS[0]}, {"inputs": TEXTS[:2]}]
    vertex = ok(embedder.client.post("/vertex", json={"instances": instances}))
    np.testing.assert_allclose(vertex["predictions"][0], want[:1], atol=ATOL)
    np.testing.assert_allclose(vertex["predictions"][1], want, atol=ATOL)


# -- classifier --------------------------------------------------------------------------------


def labelled(entries: list[dict[str, Any]]) -> dict[str, float]:
    scores = [e["score"] for e in entries]
    assert scores == sorted(scores, reverse=True)  # best first
    return {e["label"]: e["score"] for e in entries}


def by_label(row: np.ndarray) -> dict[str, float]:
    return {f"LABEL_{i}": pytest.approx(float(s), abs=ATOL) for i, s in enumerate(row)}


def test_predict(classifier: Served) -> None:
    single = ok(classifier.client.post("/predict", json={"inputs": TEXTS[0]}))
    assert labelled(single) == by_label(softmax(torch_logits(classifier.source, TEXTS[:1]))[0])
    # A list of two strings is one pair (TEI), scored as (first, second).
    pair = ok(classifier.client.post("/predict", json={"inputs": [TEXTS[0], TEXTS[2]]}))
    want = softmax(torch_logits(classifier.source, [(TEXTS[0], TEXTS[2])]))[0]
    assert labelled(pair) == by_label(want)
    inputs = [[TEXTS[1]], [TEXTS[0], TEXTS[3]], [TEXTS[3]]]
    batch = ok(classifier.client.post("/predict", json={"inputs": inputs, "raw_scores": True}))
    logits = torch_logits(classifier.source, [TEXTS[1], (TEXTS[0], TEXTS[3]), TEXTS[3]])
    assert [labelled(b) for b in batch] == [by_label(row) for row in logits]


def test_root_and_invocations_predict(classifier: Served) -> None:
    want = by_label(softmax(torch_logits(classifier.source, TEXTS[:1]))[0])
    for path in ("/", "/invocations"):
        assert labelled(ok(classifier.client.post(path, json={"inputs": TEXTS[0]}))) == want


# -- re-ranker ---------------------------------------------------------------------------------


def rerank_reference(source: Path, raw: bool = False) -> np.ndarray:
    logits = torch_logits(source, [(QUERY, d) for d in DOCS])[:, 0]  # (n,)
    return logits if raw else sigmoid(logits)


def ranked(results: list[dict[str, Any]], score: str) -> dict[int, float]:
    scores = [r[score] for r in results]
    assert scores == sorted(scores, reverse=True)  # best first
    return {r["index"]: r[score] for r in results}


def approx(scores: np.ndarray, order: list[int]) -> dict[int, Any]:
    return {i: pytest.approx(float(scores[i]), abs=ATOL) for i in order}


def test_rerank(reranker: Served) -> None:
    want = rerank_reference(reranker.source)
    body = {"query": QUERY, "texts": DOCS, "return_text": True}
    got = ok(reranker.client.post("/rerank", json=body))
    assert ranked(got, "score") == approx(want, list(range(len(DOCS))))
    assert all(r["text"] == DOCS[r["index"]] for r in got)
    raw = ok(
        reranker.client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True})
    )
    assert ranked(raw, "score") == approx(rerank_reference(reranker.source, raw=True), range(5))
    top = ok(reranker.client.post("/rerank", json={"query": QUERY, "texts": DOCS, "top_n": 2}))
    assert top == [{"index": r["index"], "score": r["score"]} for r in got[:2]]
    # Dispatch: a rerank body on POST / and /invocations is /rerank.
    for path in ("/", "/invocations"):
        assert ok(reranker.client.post(path, json=body)) == got


def test_jina_and_cohere_rerank(reranker: Served) -> None:
    want = rerank_reference(reranker.source)
    order = [int(i) for i in np.argsort(-want, kind="stable")]
    documents = [DOCS[0], {"text": DOCS[1]}, *DOCS[2:]]
    jina = ok(reranker.client.post("/v1/rerank", json={"query": QUERY, "documents": documents}))
    assert ranked(jina["results"], "relevance_score") == approx(want, order)
    assert [r["document"] for r in jina["results"]] == [
        {"text": DOCS[r["index"]]} for r in jina["results"]
    ]
    pairs = hf_tokenizer(reranker.source)([QUERY] * len(DOCS), DOCS)["input_ids"]
    assert jina["usage"] == {"total_tokens": sum(map(len, pairs))}
    body = {"query": QUERY, "documents": DOCS, "top_n": 3}
    cohere = ok(reranker.client.post("/v2/rerank", json=body))
    assert ranked(cohere["results"], "relevance_score") == {
        r["index"]: r["relevance_score"] for r in jina["results"][:3]
    }
    assert all("document" not in r for r in cohere["results"])  # Cohere's default
    assert cohere["meta"]["api_version"] == {"version": "2"}


def test_reranker_predict_pair(reranker: Served) -> None:
    # TEI's root route on a re-ranker: /predict on a pair, one sigmoid score.
    for path in ("/predict", "/"):
        got = ok(reranker.client.post(path, json={"inputs": [QUERY, DOCS[2]]}))
        assert got == [
            {
                "label": "LABEL_0",
                "score": pytest.approx(rerank_reference(reranker.source)[2], abs=ATOL),
            }
        ]


# -- SPLADE ------------------------------------------------------------------------------------


def sparse(entries: list[dict[str, Any]]) -> dict[int, float]:
    indices = [e["index"] for e in entries]
    assert indices == sorted(indices)
    return {e["index"]: e["value"] for e in entries}


def test_embed_sparse(splade: Served) -> None:
    want = torch_splade(splade.source, TEXTS)
    got = ok(splade.client.post("/embed_sparse", json={"inputs": TEXTS}))
    for entries, row in zip(got, want, strict=True):
        values = sparse(entries)
        # The same clearly non-zero terms, with the reference's weights (near-zero terms may
        # fall either side of zero between two float32 implementations).
        assert {i for i, v in values.items() if v > 1e-3} == set(np.flatnonzero(row > 1e-3))
        dense = np.zeros_like(row)
        dense[list(values)] = list(values.values())
        np.testing.assert_allclose(dense, row, atol=1e-3)
    for path in ("/", "/invocations"):
        assert ok(splade.client.post(path, json={"inputs": TEXTS})) == got
