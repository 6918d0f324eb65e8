"""OpenVINOSession's two CPU streams (opt-in, tei-serve --openvino-streams 2): a batch split over both
gives the rows one stream gives, two callers at once each get their own rows, and the server runs
one forward thread per stream. By default: one LATENCY compile."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tei_ort.runtime import providers
from tests.runtime.test_openvino import with_bf16, with_matmul

pytest.importorskip("openvino")

MakePackage = Callable[..., Path]


def feeds(rows: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(0, 30522, (rows, length), dtype=np.int64),  # (rows, length)
        "attention_mask": np.ones((rows, length), dtype=np.int64),
        "token_type_ids": np.zeros((rows, length), dtype=np.int64),
    }


def sessions(graph: Path, variant: str, streams: int = 2) -> tuple[object, object]:
    """The graph on one thread and on two, asking for `streams` streams."""
    from tei_ort.runtime.openvino_session import OpenVINOSession

    one = OpenVINOSession(graph, variant, "last_hidden_state", threads=1, streams=streams)
    two = OpenVINOSession(graph, variant, "last_hidden_state", threads=2, streams=streams)
    return one, two


def test_by_default_one_latency_compile(make_package: MakePackage) -> None:
    from tei_ort.runtime.openvino_session import OpenVINOSession

    graph = with_matmul(make_package()) / "model.onnx"
    two = OpenVINOSession(graph, "fp32", "last_hidden_state", threads=2)
    assert two.parallel_runs == 1 and two._alone is None
    _, asked_one = sessions(graph, "fp32", streams=1)
    assert asked_one.parallel_runs == 1  # type: ignore[attr-defined]


def test_streams_follow_the_threads(make_package: MakePackage) -> None:
    one, two = sessions(with_matmul(make_package()) / "model.onnx", "fp32")
    assert (one.parallel_runs, two.parallel_runs) == (1, 2)  # type: ignore[attr-defined]
    # The second, LATENCY compile for a lone single row exists only beside two streams.
    assert one._alone is None and two._alone is not None  # type: ignore[attr-defined]


def test_a_large_graph_keeps_one_latency_compile(
    make_package: MakePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tei_ort.runtime import openvino_session

    graph = with_matmul(make_package()) / "model.onnx"
    monkeypatch.setattr(openvino_session, "STREAMS_MAX_GRAPH_BYTES", graph.stat().st_size - 1)
    _, two = sessions(graph, "fp32")
    assert two.parallel_runs == 1 and two._alone is None  # type: ignore[attr-defined]
    batch = feeds(3, 4, seed=0)
    np.testing.assert_allclose(
        two.run(batch),  # type: ignore[attr-defined]
        sessions(graph, "fp32", streams=1)[1].run(batch),  # type: ignore[attr-defined]
        atol=1e-6,
    )  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "variant",
    [
        "fp32",
        pytest.param(
            "bf16",
            marks=pytest.mark.skipif(
                not providers.openvino_bf16(),
                reason="needs a CPU with bfloat16 (AMX or AVX512_BF16)",
            ),
        ),
    ],
)
@pytest.mark.parametrize("rows", [1, 2, 7])
def test_a_batch_split_over_two_streams_equals_one_stream(
    make_package: MakePackage, variant: str, rows: int
) -> None:
    one, two = sessions(with_matmul(make_package()) / "model.onnx", variant)
    batch = feeds(rows, 5, seed=rows)
    got = two.run(batch)  # type: ignore[attr-defined]
    want = one.run(batch)  # type: ignore[attr-defined]
    assert got.shape == want.shape == (rows, 5, 8)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.abs(want).max() > 0.1  # the graph computed something


def test_two_callers_at_once_each_get_their_own_rows(make_package: MakePackage) -> None:
    one, two = sessions(with_matmul(make_package()) / "model.onnx", "fp32")
    # Single rows too: the LATENCY compile when idle, a stream when the other caller runs.
    batches = [feeds(rows, 3 + rows, seed=rows) for rows in (1, 4, 1, 6)]
    want = [one.run(b) for b in batches]  # type: ignore[attr-defined]
    got: dict[int, list[np.ndarray]] = {0: [], 1: []}
    start = threading.Barrier(2)

    def call(caller: int) -> None:
        start.wait()
        for _ in range(20):  # interleaved with the other caller's runs
            got[caller].append(two.run(batches[caller * 2 + len(got[caller]) % 2]))  # type: ignore[attr-defined]

    threads = [threading.Thread(target=call, args=(c,)) for c in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for caller, outputs in got.items():
        assert len(outputs) == 20
        for k, output in enumerate(outputs):
            np.testing.assert_allclose(output, want[caller * 2 + k % 2], rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not providers.openvino_bf16(), reason="OpenVINO serves bf16 only")
def test_the_server_runs_one_forward_thread_per_stream(
    make_package: MakePackage, tmp_path: Path
) -> None:
    from tests.serve.test_engine_replicas import engine_of
    from tests.serve.test_flags_take_effect import built

    package = with_bf16(with_matmul(make_package()))
    flags = ("--provider", "openvino", "--openvino-streams", "2")
    app = built(package, tmp_path / "hub", *flags, "--intra-op-threads", "2")
    engine = engine_of(app)
    models = engine._batcher._models
    assert len(models) == 2 and models[0] is models[1] is engine.model
    assert engine.model.session.parallel_runs == 2  # type: ignore[attr-defined]
    single = built(package, tmp_path / "hub2", *flags, "--intra-op-threads", "1")
    assert len(engine_of(single)._batcher._models) == 1
    default = built(package, tmp_path / "hub3", "--provider", "openvino", "--intra-op-threads", "2")
    assert len(engine_of(default)._batcher._models) == 1
    assert engine_of(default).model.session.parallel_runs == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", ["0", "3", "two"])
def test_bad_stream_counts_are_refused(bad: str) -> None:
    import pydantic

    from tei_ort.serve.settings import load_settings

    assert load_settings([], {}).openvino_streams == 1
    assert load_settings([], {"OPENVINO_STREAMS": "2"}).openvino_streams == 2
    with pytest.raises(pydantic.ValidationError, match="openvino_streams"):
        load_settings(["--openvino-streams", bad], {})
    with pytest.raises(pydantic.ValidationError, match="openvino_streams"):
        load_settings([], {"OPENVINO_STREAMS": bad})
