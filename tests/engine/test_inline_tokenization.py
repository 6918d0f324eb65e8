"""One short input is tokenized on the event loop (a hand-off to a tokenization thread and back
costs more than tokenizing it); anything longer, or more than one input, in the thread pool.
Either way the request gets the same values."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from tei_ort.engine import EmbedRequest, PredictRequest, RerankRequest
from tei_ort.engine.engine import INLINE_CHARS, _is_short
from tei_ort.errors import ValidationError
from tei_ort.package import Task
from tei_ort.tokenization import Encoded, TextInput
from tests.engine.conftest import asynchronous, running
from tests.engine.fakes import FakeModel, logits, vector


class ThreadRecordingModel(FakeModel):
    """Records the name of the thread each encode call ran on."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.encode_threads: list[str] = []

    def encode(self, inputs: Sequence[TextInput], **kwargs: object) -> list[Encoded]:
        self.encode_threads.append(threading.current_thread().name)
        return super().encode(inputs, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("inputs", "short"),
    [
        (["x" * INLINE_CHARS], True),
        (["x" * (INLINE_CHARS + 1)], False),
        ([""], True),
        (["a", "b"], False),  # two inputs: the pool, however short
        ([("q" * 100, "d" * (INLINE_CHARS - 100))], True),  # a pair counts both texts
        ([("q" * 100, "d" * (INLINE_CHARS - 99))], False),
        ([list(range(INLINE_CHARS))], True),  # token ids count one each
        ([list(range(INLINE_CHARS + 1))], False),
    ],
)
def test_what_counts_as_short(inputs: list[object], short: bool) -> None:
    assert _is_short(inputs) is short  # type: ignore[arg-type]


@asynchronous
async def test_a_short_input_is_tokenized_on_the_loop_and_others_in_the_pool() -> None:
    model = ThreadRecordingModel()
    loop_thread = threading.current_thread().name
    short, long_text = "What is Deep Learning?", "deep learning " * 40  # 22 and 560 chars
    async with running(model) as engine:
        model.encode_threads.clear()  # forget the warm-up's
        one = await engine.embed(EmbedRequest([short], normalize=False))
        one_long = await engine.embed(EmbedRequest([long_text], normalize=False))
        two = await engine.embed(EmbedRequest([short, short], normalize=False))
    assert model.encode_threads[0] == loop_thread
    assert [name.startswith("tei-tokenize") for name in model.encode_threads[1:]] == [True, True]
    want = vector(model.encode([short])[0].ids)
    np.testing.assert_array_equal(one.embeddings, want[None, :])
    np.testing.assert_array_equal(two.embeddings, np.stack([want, want]))
    np.testing.assert_array_equal(
        one_long.embeddings, vector(model.encode([long_text])[0].ids)[None, :]
    )
    assert one.metadata.compute_tokens == len(model.encode([short])[0])


@asynchronous
async def test_short_pairs_and_classifier_inputs_take_the_same_path() -> None:
    model = ThreadRecordingModel(task=Task.RERANKER)
    loop_thread = threading.current_thread().name
    async with running(model) as engine:
        model.encode_threads.clear()
        predicted = await engine.predict(
            PredictRequest([("a question", "an answer")], raw_scores=True)
        )
        ranked = await engine.rerank(RerankRequest("a question", ["an answer"], raw_scores=True))
    assert model.encode_threads == [loop_thread, loop_thread]
    want = logits(model.encode([("a question", "an answer")])[0].ids, 1)
    np.testing.assert_allclose(predicted.scores, want[None, :], rtol=1e-6)
    np.testing.assert_allclose(ranked.scores, want, rtol=1e-6)


@asynchronous
async def test_a_short_input_over_the_token_limit_is_refused_as_from_the_pool() -> None:
    model = FakeModel(max_input_length=8)
    async with running(model, auto_truncate=False) as engine:
        with pytest.raises(ValidationError) as inline:
            await engine.embed(EmbedRequest(["one two three four five six seven eight nine"]))
        with pytest.raises(ValidationError) as pooled:
            await engine.embed(EmbedRequest(["one two three four five six seven eight nine", "x"]))
    assert (
        str(inline.value)
        == str(pooled.value)
        == ("Input validation error: `inputs` must have less than 8 tokens. Given: 11")
    )
