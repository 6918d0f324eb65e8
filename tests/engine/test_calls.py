"""What each Engine call returns, value by value, against the fake model."""

from __future__ import annotations

import numpy as np

from tei_ort.engine import EmbedRequest, PredictRequest, RerankRequest, Tokenization
from tei_ort.package import Task
from tei_ort.tokenization import Tokenizer, TruncationDirection
from tests.engine.conftest import asynchronous, running
from tests.engine.fakes import MINILM, FakeModel, logits, token_states, vector


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@asynchronous
async def test_embed_normalize_dimensions_and_metadata() -> None:
    model = FakeModel()
    texts = ["hello world", "a much longer sentence about batching and padding", "x", ""]
    raw = np.stack([vector(e.ids) for e in model.encode(texts)])  # (4, DIMS)
    async with running(model) as engine:
        normalized = await engine.embed(EmbedRequest([*texts]))
        plain = await engine.embed(EmbedRequest([*texts], normalize=False))
        short = await engine.embed(EmbedRequest([*texts], dimensions=3))
    np.testing.assert_allclose(normalized.embeddings, unit(raw), rtol=1e-6)
    np.testing.assert_array_equal(plain.embeddings, raw)
    # Matryoshka: truncate first, then normalize (TEI's order).
    np.testing.assert_allclose(short.embeddings, unit(raw[:, :3]), rtol=1e-6)
    assert normalized.embeddings.dtype == np.float32
    meta = normalized.metadata
    assert meta.compute_characters == sum(len(t) for t in texts)
    assert meta.compute_tokens == sum(len(e) for e in model.encode(texts))
    assert 0 < meta.inference_s <= meta.total_s and meta.queue_s >= 0 and meta.tokenization_s > 0


@asynchronous
async def test_token_id_inputs_are_used_as_given_and_truncated() -> None:
    model = FakeModel()
    ids = list(range(1000, 1040))  # 40 ids; the model takes 32
    async with running(model) as engine:
        right = await engine.embed(EmbedRequest([[101, 7592, 102], ids], normalize=False))
        left = await engine.embed(
            EmbedRequest(
                [ids],
                normalize=False,
                tokenization=Tokenization(direction=TruncationDirection.LEFT),
            )
        )
    np.testing.assert_array_equal(right.embeddings[0], vector(np.array([101, 7592, 102])))
    np.testing.assert_array_equal(right.embeddings[1], vector(np.array(ids[:32])))
    np.testing.assert_array_equal(left.embeddings[0], vector(np.array(ids[-32:])))
    assert right.metadata.compute_characters == 43  # TEI counts ids as characters
    assert right.metadata.compute_tokens == 35


@asynchronous
async def test_prompts_apply_to_texts_and_token_ids() -> None:
    model = FakeModel(prompts={"query": "query: ", "doc": "passage: "}, default_prompt_name="doc")
    ids = model.tokenizer.encode_batch(["what is love"])[0].ids.tolist()
    async with running(model) as engine:
        named = await engine.embed(
            EmbedRequest(["what is love", ids], tokenization=Tokenization(prompt_name="query"))
        )
        default = await engine.embed(EmbedRequest(["what is love"]))
    query = model.tokenizer.encode_batch(["query: what is love"])[0].ids
    passage = model.tokenizer.encode_batch(["passage: what is love"])[0].ids
    # Token ids with a prompt: decoded without special tokens, then prompt + text encoded (TEI).
    np.testing.assert_allclose(named.embeddings, unit(np.stack([vector(query)] * 2)), rtol=1e-6)
    np.testing.assert_allclose(default.embeddings[0], unit(vector(passage)), rtol=1e-6)


@asynchronous
async def test_truncation_direction_keeps_the_requested_end() -> None:
    model = FakeModel(max_input_length=8)
    text = "one two three four five six seven eight nine ten eleven"
    full = Tokenizer.from_file(MINILM / "tokenizer.json", 512).encode_batch([text])[0].ids
    async with running(model, max_batch_tokens=64) as engine:
        left = await engine.embed(
            EmbedRequest(
                [text],
                normalize=False,
                tokenization=Tokenization(direction=TruncationDirection.LEFT),
            )
        )
    # [CLS] + the last 6 tokens + [SEP]
    expected = np.concatenate([full[:1], full[-7:]])
    np.testing.assert_array_equal(left.embeddings[0], vector(expected))


@asynchronous
async def test_embed_all_returns_every_token_state() -> None:
    model = FakeModel()
    texts = ["short", "a somewhat longer input text"]
    async with running(model) as engine:
        result = await engine.embed_all(EmbedRequest([*texts]))
    for got, encoding in zip(result.embeddings, model.encode(texts), strict=True):
        np.testing.assert_array_equal(got, token_states(encoding.ids))  # (len, HIDDEN)
    assert [len(t) for t in result.embeddings] == [len(e) for e in model.encode(texts)]


@asynchronous
async def test_embed_sparse_lists_non_zero_entries() -> None:
    model = FakeModel(task=Task.SPARSE_EMBEDDING)
    texts = ["the cat and the hat", "hat"]
    async with running(model) as engine:
        result = await engine.embed_sparse(EmbedRequest([*texts]))
        dense = await engine.embed(EmbedRequest([*texts], normalize=False))
    for vector_, encoding in zip(result.vectors, model.encode(texts), strict=True):
        ids, counts = np.unique(encoding.ids, return_counts=True)
        np.testing.assert_array_equal(vector_.indices, ids)
        np.testing.assert_array_equal(vector_.values, counts.astype(np.float32))
    assert dense.embeddings.shape == (2, 30522)
    np.testing.assert_array_equal(dense.embeddings[1][result.vectors[1].indices], [1, 1, 1])


@asynchronous
async def test_embed_sparse_on_an_embedder_with_a_sparse_head() -> None:
    # BGE-M3: an embedding model whose sparse head serves /embed_sparse beside its dense /embed.
    model = FakeModel(sparse_head=True)
    texts = ["the cat and the hat", "hat", "x"]
    async with running(model) as engine:
        sparse = await engine.embed_sparse(EmbedRequest([*texts]))
        dense = await engine.embed(EmbedRequest([*texts], normalize=False))
    for vector_, encoding in zip(sparse.vectors, model.encode(texts), strict=True):
        ids, counts = np.unique(encoding.ids, return_counts=True)
        np.testing.assert_array_equal(vector_.indices, ids)
        np.testing.assert_array_equal(vector_.values, counts.astype(np.float32))
    np.testing.assert_array_equal(
        dense.embeddings, np.stack([vector(e.ids) for e in model.encode(texts)])
    )


@asynchronous
async def test_predict_scores_singles_and_pairs() -> None:
    model = FakeModel(task=Task.CLASSIFICATION)
    inputs: list[str | tuple[str, str]] = ["I love it", ("is it good?", "yes it is")]
    raw = np.stack([logits(e.ids, 3) for e in model.encode(inputs)])  # (2, 3)
    async with running(model) as engine:
        probs = await engine.predict(PredictRequest(inputs))
        raws = await engine.predict(PredictRequest(inputs, raw_scores=True))
    softmax = np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs.scores, softmax, rtol=1e-5)
    np.testing.assert_array_equal(raws.scores, raw)


@asynchronous
async def test_rerank_scores_each_pair_in_input_order() -> None:
    model = FakeModel(task=Task.RERANKER)
    query, texts = "what is deep learning?", ["Deep learning is...", "cheese", "neural nets"]
    encodings = model.encode([(query, t) for t in texts])
    raw = np.array([logits(e.ids, 1)[0] for e in encodings])  # (3,)
    async with running(model) as engine:
        result = await engine.rerank(RerankRequest(query, texts))
        raws = await engine.rerank(RerankRequest(query, texts, raw_scores=True))
        single = await engine.predict(PredictRequest(["just one"]))
    np.testing.assert_allclose(result.scores, 1 / (1 + np.exp(-raw)), rtol=1e-5)
    np.testing.assert_array_equal(raws.scores, raw)
    assert result.scores.shape == (3,) and single.scores.shape == (1, 1)
    assert result.metadata.compute_characters == sum(len(query) + len(t) for t in texts)


@asynchronous
async def test_tokenize_and_decode() -> None:
    model = FakeModel(prompts={"query": "query: "})
    async with running(model) as engine:
        tokens = await engine.tokenize(["hello world"], True, None)
        bare = await engine.tokenize(["hello world"], False, "query")
        texts = await engine.decode([[101, 7592, 2088, 102], [7592]], True)
        kept = await engine.decode([[101, 7592, 102]], False)
    assert [(t.id, t.text, t.special) for t in tokens[0]] == [
        (101, "[CLS]", True),
        (7592, "hello", False),
        (2088, "world", False),
        (102, "[SEP]", True),
    ]
    assert (tokens[0][2].start, tokens[0][2].stop) == (6, 11)
    assert [t.text for t in bare[0]] == ["query", ":", "hello", "world"]
    assert texts == ["hello world", "hello"]
    assert kept == ["[CLS] hello [SEP]"]
