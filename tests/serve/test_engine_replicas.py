"""--engine-replicas / ENGINE_REPLICAS end to end: the flag reaches the engine (N sessions of the
package, each with its share of the intra-op threads), the server answers what one replica
answers, and /metrics adds every replica's batches into the one set of series."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
from sanic import Sanic

from tei_ort.engine import Engine
from tei_ort.engine.config import replica_threads
from tei_ort.serve.settings import load_settings
from tests.runtime.conftest import make_package  # noqa: F401  (the fixture, used by name)
from tests.serve.scrape import scrape, value
from tests.serve.test_flags_take_effect import built, reference, serve_app

MakePackage = Callable[..., Path]


def engine_of(app: Sanic) -> Engine:  # type: ignore[type-arg]
    engine = app.ctx.serve.engine._engine  # ObservedEngine -> Engine
    assert isinstance(engine, Engine)
    return engine


def sessions(engine: Engine) -> list[Any]:
    """Each replica's ONNX Runtime InferenceSession."""
    return [model.session._session for model in engine._batcher._models]  # type: ignore[attr-defined]


def test_replicas_flag_opens_sessions_with_their_threads(
    make_package: MakePackage,  # noqa: F811
    tmp_path: Path,
) -> None:
    package = make_package()
    app = built(package, tmp_path / "hub", "--engine-replicas", "3", "--intra-op-threads", "1")
    engine = engine_of(app)
    assert engine.replicas == 3
    opened = sessions(engine)
    assert len({id(s) for s in opened}) == 3  # three sessions, not one shared
    assert [s.get_session_options().intra_op_num_threads for s in opened] == [1, 1, 1]
    models = engine._batcher._models
    assert models[0] is engine.model  # the first replica is the model the engine describes
    assert all(m.tokenizer is engine.model.tokenizer for m in models)  # type: ignore[attr-defined]


def test_env_var_splits_the_cores_between_replicas(
    make_package: MakePackage,  # noqa: F811
    tmp_path: Path,
) -> None:
    package = make_package()
    app = built(package, tmp_path / "hub", environ={"ENGINE_REPLICAS": "2"})
    opened = sessions(engine_of(app))
    want = replica_threads(None, 2)
    assert want is not None and want >= 1
    assert [s.get_session_options().intra_op_num_threads for s in opened] == [want, want]


def test_default_is_one_replica_with_orts_threads(
    make_package: MakePackage,  # noqa: F811
    tmp_path: Path,
) -> None:
    engine = engine_of(built(make_package(), tmp_path / "hub"))
    assert engine.replicas == 1
    assert sessions(engine)[0].get_session_options().intra_op_num_threads == 0  # ORT's default


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_bad_replica_counts_are_refused(bad: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="engine_replicas"):
        load_settings(["--engine-replicas", bad], {})
    with pytest.raises(pydantic.ValidationError, match="engine_replicas"):
        load_settings([], {"ENGINE_REPLICAS": bad})


def test_replicas_serve_the_same_values_and_metrics_add_up(
    make_package: MakePackage,  # noqa: F811
    tmp_path: Path,
) -> None:
    package = make_package()
    texts = [" ".join(["word"] * (1 + i % 9)) + f" number {i}" for i in range(60)]
    ref = reference(package)
    want = ref.embed(texts, normalize=True)
    args = ("--engine-replicas", "2", "--intra-op-threads", "1", "--max-batch-tokens", "32")
    app = built(package, tmp_path / "hub", *args)
    with serve_app(app) as client:
        before = scrape(client)
        replies = [client.post("/embed", json={"inputs": texts[i : i + 20]}) for i in (0, 20, 40)]
        assert [r.status_code for r in replies] == [200, 200, 200]
        after = scrape(client)
        stats = engine_of(app).stats()
    got = np.concatenate([np.asarray(r.json(), dtype=np.float32) for r in replies])
    np.testing.assert_allclose(got, want, atol=1e-5)

    def moved(name: str) -> float:
        return value(after, name) - value(before, name)

    # Every input counted once, whichever replica ran it; one histogram sample per batch.
    assert moved("te_batch_next_size_sum") == 60
    assert moved("te_batch_next_size_count") == stats.batches_total
    assert stats.batches_total >= 10  # >= 5 tokens an input: at most 6 fit 32 padded tokens
    assert moved("te_embed_count") == moved("te_embed_success") == 60
