from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tei_ort.errors import PackageError, ValidationError, WrongModelType
from tei_ort.package import Pooling, Task
from tei_ort.runtime import Model, RuntimeOptions
from tests.runtime.conftest import head, table

TEXTS = ["hello world", "a much longer sentence about pooling and padding", "x", ""]


def expected_hidden(model: Model, text: str) -> np.ndarray:
    ids = model.encode([text])[0].ids
    return table()[ids]  # (len, hidden)


def test_mean_pooling_normalized_matches_numpy(make_package: Callable[..., Path]) -> None:
    model = Model.load(make_package(), RuntimeOptions(provider="cpu"))
    got = model.embed(TEXTS)
    for row, text in zip(got, TEXTS, strict=True):
        mean = expected_hidden(model, text).mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("pooling", "index"), [(Pooling.CLS, 0), (Pooling.LAST_TOKEN, -1)])
def test_cls_and_last_token_pooling(
    make_package: Callable[..., Path], pooling: Pooling, index: int
) -> None:
    model = Model.load(make_package(pooling=pooling, normalize=False))
    got = model.embed(TEXTS)
    for row, text in zip(got, TEXTS, strict=True):
        np.testing.assert_allclose(row, expected_hidden(model, text)[index], rtol=1e-6)


def test_dense_layer_then_normalize(make_package: Callable[..., Path]) -> None:
    folder = make_package(dense=True)
    model = Model.load(folder)
    with np.load(folder / "dense_0.npz") as data:
        weight, bias = data["weight"], data["bias"]
    got = model.embed(TEXTS[:2])
    for row, text in zip(got, TEXTS[:2], strict=True):
        y = np.tanh(expected_hidden(model, text).mean(axis=0) @ weight.T + bias)
        np.testing.assert_allclose(row, y / np.linalg.norm(y), rtol=1e-5, atol=1e-6)
    assert got.shape == (2, 4)


def test_matryoshka_truncates_then_normalizes(make_package: Callable[..., Path]) -> None:
    model = Model.load(make_package())
    full = model.embed(TEXTS, normalize=False)
    short = model.embed(TEXTS, dimensions=3)
    expected = full[:, :3] / np.linalg.norm(full[:, :3], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValidationError, match="dimensions"):
        model.embed(TEXTS, dimensions=0)
    with pytest.raises(ValidationError, match="dimensions"):
        model.embed(TEXTS, dimensions=9)


def test_alone_equals_inside_mixed_batch(make_package: Callable[..., Path]) -> None:
    model = Model.load(make_package())
    texts = ["short", "a considerably longer text " * 5, "mid length text here"]
    together = model.embed(texts, batch_size=3)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(model.embed([text])[0], together[i], rtol=1e-6, atol=1e-7)


def test_embed_all_returns_each_token(make_package: Callable[..., Path]) -> None:
    model = Model.load(make_package())
    tokens = model.embed_all(TEXTS)
    for got, text in zip(tokens, TEXTS, strict=True):
        np.testing.assert_allclose(got, expected_hidden(model, text), rtol=1e-6)


def test_truncation_keeps_max_input_length(make_package: Callable[..., Path]) -> None:
    model = Model.load(make_package())
    long = "word " * 500
    assert len(model.encode([long])[0]) == 16
    with pytest.raises(ValidationError, match="less than 16 tokens"):
        model.embed([long], truncate=False)


def test_prompts(make_package: Callable[..., Path]) -> None:
    model = Model.load(make_package(prompts={"query": "query: "}, default_prompt_name="query"))
    plain = Model.load(make_package(pooling=Pooling.CLS))  # only its tokenizer is used
    assert model.prompt(None) == "query: "
    np.testing.assert_allclose(model.embed(["cats"]), model.embed(["cats"], prompt_name="query"))
    expected = expected_hidden(plain, "query: cats").mean(axis=0)
    np.testing.assert_allclose(
        model.embed(["cats"])[0], expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValidationError, match="prompt_name 'nope'"):
        model.embed(["cats"], prompt_name="nope")


def test_predict_softmax_and_raw(make_package: Callable[..., Path]) -> None:
    model = Model.load(make_package(task=Task.CLASSIFICATION))
    raw = model.predict(["good", ("a", "pair")], raw_scores=True)
    ids = model.encode(["good"])[0].ids
    np.testing.assert_allclose(raw[0], table()[ids[0]] @ head(), rtol=1e-5)
    probs = model.predict(["good", ("a", "pair")])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[0], np.exp(raw[0]) / np.exp(raw[0]).sum(), rtol=1e-5)


def test_wrong_task_is_a_clear_error(make_package: Callable[..., Path]) -> None:
    model = Model.load(make_package())
    with pytest.raises(WrongModelType, match="classification"):
        model.predict(["x"])
    with pytest.raises(WrongModelType, match="reranker"):
        model.rerank("q", ["x"])


def test_failed_variant_is_not_served_by_default(make_package: Callable[..., Path]) -> None:
    folder = make_package(passed=False)
    with pytest.raises(
        PackageError, match="no variant of this package passed validation on this CPU"
    ):
        Model.load(folder)
    with pytest.raises(PackageError, match="did not pass validation"):
        Model.load(folder, RuntimeOptions(variant="fp32"))
    assert Model.load(folder, RuntimeOptions(allow_unvalidated=True)).variant.name.value == "fp32"


def test_missing_graph_names_the_file(make_package: Callable[..., Path]) -> None:
    folder = make_package()
    (folder / "model.onnx").unlink()
    with pytest.raises(PackageError, match=r"model\.onnx: not found"):
        Model.load(folder)


def test_unknown_variant_lists_the_package_variants(make_package: Callable[..., Path]) -> None:
    with pytest.raises(PackageError, match="it has fp32"):
        Model.load(make_package(), RuntimeOptions(variant="int8"))
