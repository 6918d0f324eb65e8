"""The CUDA execution provider: variant choice, IO binding, fp16 fidelity against the CPU EP,
batch invariance, and the engine's batcher driving a CUDA session."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tei_ort.engine import EmbedRequest, Engine, EngineConfig
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.providers import Provider, resolve

pytestmark = pytest.mark.gpu

TEXTS = corpus.mixed(64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


@pytest.fixture(scope="module")
def cuda_model(fp16_package: Path) -> Model:
    return Model.load(fp16_package, RuntimeOptions(provider="cuda"))


def test_auto_picks_cuda_and_the_fp16_variant(fp16_package: Path) -> None:
    assert resolve("auto") is Provider.CUDA
    model = Model.load(fp16_package)
    assert model.provider is Provider.CUDA
    assert model.variant.name.value == "fp16"
    assert model.session._session.get_providers()[0] == "CUDAExecutionProvider"


def test_fp16_on_cuda_matches_the_same_graph_on_the_cpu(
    cuda_model: Model, fp16_package: Path
) -> None:
    cpu = Model.load(fp16_package, RuntimeOptions(provider="cpu", variant="fp16"))
    on_gpu, on_cpu = cuda_model.embed(TEXTS), cpu.embed(TEXTS)
    cosines = _cosines(on_gpu, on_cpu)
    # The export validated this graph on the CPU EP against sentence-transformers (cosine >= 0.999);
    # CUDA's fp16 kernels must agree with it far more closely than that.
    assert float(cosines.min()) >= 0.9995, cosines.min()
    assert np.all(np.isfinite(on_gpu))


def test_io_binding_gives_what_a_plain_run_gives(cuda_model: Model) -> None:
    from tei_ort.runtime.padding import pad

    session = cuda_model.session
    assert session._uses_io_binding
    manifest = cuda_model.manifest
    feeds = pad(cuda_model.encode(TEXTS[:16]), manifest.pad_token_id, manifest.uses_token_type_ids)
    bound = session.run(feeds)
    plain = session._session.run(
        [session.output_name], {k: v for k, v in feeds.items() if k in session.input_names}
    )[0]
    assert bound.dtype == np.float32 and bound.shape == plain.shape
    np.testing.assert_allclose(bound, plain.astype(np.float32), atol=1e-3)


def test_a_text_embeds_the_same_alone_and_in_a_padded_batch(cuda_model: Model) -> None:
    together = cuda_model.embed(TEXTS[:24])
    alone = np.concatenate([cuda_model.embed([t]) for t in TEXTS[:24]])
    assert float(_cosines(together, alone).min()) >= 0.9995


def test_a_full_batch_of_long_inputs_runs(cuda_model: Model) -> None:
    texts = corpus.passages(8) * 32  # 256 inputs, most truncated at max length
    encodings = cuda_model.encode(texts)
    out = cuda_model.forward(encodings)
    assert out.shape == (256, cuda_model.manifest.dimensions)
    assert np.all(np.isfinite(out))


def test_the_engine_batches_concurrent_clients_on_cuda(cuda_model: Model) -> None:
    expected = cuda_model.embed(TEXTS)

    async def scenario() -> list[np.ndarray]:
        engine = Engine(cuda_model, EngineConfig(max_batch_tokens=16384))
        await engine.start()
        try:
            orders = [np.random.default_rng(s).permutation(len(TEXTS)) for s in range(8)]
            results = await asyncio.gather(
                *(engine.embed(EmbedRequest([TEXTS[i] for i in order])) for order in orders)
            )
            assert engine.stats().batch_failures_total == 0
            return [
                r.embeddings[np.argsort(order)] for r, order in zip(results, orders, strict=True)
            ]
        finally:
            await engine.stop()

    for got in asyncio.run(asyncio.wait_for(scenario(), timeout=120)):
        assert float(_cosines(got, expected).min()) >= 0.9995


def _fp32_package(tmp: Path, tokenizer_from: Path) -> Path:
    """A tiny fp32 graph (embedding lookup, MatMul, LayerNormalization): the fp32 CUDA path."""
    rng = np.random.default_rng(0)
    vocab, hidden = 30522, 16
    table = numpy_helper.from_array(rng.standard_normal((vocab, hidden)).astype(np.float32), "E")
    weight = numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32), "W")
    scale = numpy_helper.from_array(np.ones(hidden, np.float32), "S")
    bias = numpy_helper.from_array(np.zeros(hidden, np.float32), "B")
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["g"]),
        helper.make_node("MatMul", ["g", "W"], ["m"]),
        helper.make_node("LayerNormalization", ["m", "S", "B"], ["last_hidden_state"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", hidden])],
        [table, weight, scale, bias],
    )
    folder = tmp / "tiny"
    folder.mkdir()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, folder / "model.onnx")
    shutil.copy(tokenizer_from / "tokenizer.json", folder / "tokenizer.json")
    manifest = json.loads((tokenizer_from / "manifest.json").read_text())
    manifest.update(hidden_size=hidden, dimensions=hidden, uses_token_type_ids=False, dense=[])
    manifest["variants"] = [
        v | {"file": "model.onnx", "providers": ["cpu", "cuda"]}
        for v in manifest["variants"]
        if v["name"] == "fp32"
    ]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_an_fp32_graph_on_cuda_matches_the_cpu(fp16_package: Path, tmp_path: Path) -> None:
    folder = _fp32_package(tmp_path, fp16_package)
    on_gpu = Model.load(folder, RuntimeOptions(provider="cuda", variant="fp32"))
    on_cpu = Model.load(folder, RuntimeOptions(provider="cpu", variant="fp32"))
    assert on_gpu.session._session.get_providers()[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(
        on_gpu.embed(TEXTS, normalize=False), on_cpu.embed(TEXTS, normalize=False), atol=1e-4
    )
