"""Shape buckets (the CUDA provider's): lengths in multiples, rows rounded up to a few sizes with
filler rows whose outputs are dropped, and every bucket run once before serving. Checked on the CPU
EP with the buckets switched on: outputs equal the unbucketed ones, and the shapes are the ones
promised. (Their speed on a GPU is measured by scripts/gpu_check, not here.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tei_ort.runtime import Model, Provider, RuntimeOptions, providers
from tei_ort.runtime.model import bucket_rows, bucket_shapes

TEXTS = ["hello world", "a somewhat longer sentence about embeddings", "short"]


def test_bucket_rows_rounds_up_to_the_next_size() -> None:
    buckets = (1, 2, 4, 8)
    assert [bucket_rows(n, buckets) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 9]
    assert bucket_rows(3, ()) == 3


def test_bucket_shapes_cover_every_batch_the_budget_allows() -> None:
    every = [(r, n) for n in (32, 64) for r in (1, 2, 4)]
    assert bucket_shapes(64, 32, (1, 2, 4), 100) == every  # 3 x 33 tokens pad to 4 x 64
    assert bucket_shapes(64, 32, (1, 2, 4), 40) == [(1, 32), (2, 32), (4, 32), (1, 64)]
    # A max length that is no multiple is its own bucket; a budget below one row still runs 1.
    assert bucket_shapes(40, 32, (1, 2), 16) == [(1, 32), (2, 32), (1, 40)]


@pytest.fixture
def bucketed(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dataclasses.replace(
        providers.PROVIDERS[Provider.CPU], pad_multiple=8, row_buckets=(1, 2, 4, 8)
    )
    monkeypatch.setitem(providers.PROVIDERS, Provider.CPU, spec)


def _shapes_run(model: Model) -> list[tuple[int, ...]]:
    seen: list[tuple[int, ...]] = []
    run = model.session.run

    def spy(feeds: dict[str, np.ndarray]) -> np.ndarray:
        seen.append(feeds["input_ids"].shape)
        return run(feeds)

    model.session.run = spy  # type: ignore[method-assign]
    return seen


def test_filler_rows_change_no_output(make_package: Callable[..., Path], bucketed: None) -> None:
    package = make_package(dense=True)
    options = RuntimeOptions(provider="cpu", variant="fp32")
    model = Model.load(package, options)
    seen = _shapes_run(model)
    got = model.embed(TEXTS)  # 3 inputs -> 4 rows
    assert seen == [(4, 16)]  # the tiny package's max length, 16, a multiple of 8
    tokens = model.forward_tokens(model.encode(TEXTS))
    assert [t.shape[0] for t in tokens] == [len(e) for e in model.encode(TEXTS)]
    plain = Model.load(package, options)
    providers.PROVIDERS[Provider.CPU] = dataclasses.replace(
        providers.PROVIDERS[Provider.CPU], pad_multiple=1, row_buckets=()
    )
    np.testing.assert_allclose(got, plain.embed(TEXTS), atol=1e-6)


def test_warm_up_runs_each_bucket_once(make_package: Callable[..., Path], bucketed: None) -> None:
    model = Model.load(make_package(), RuntimeOptions(provider="cpu", variant="fp32"))
    seen = _shapes_run(model)
    assert model.warm_up_shapes(max_batch_tokens=32) == len(seen)
    # Lengths 8 and 16 (the max); 32 tokens hold 32 inputs of 1 token, or 3 of 9 (-> 4 rows).
    assert seen == [(1, 8), (2, 8), (4, 8), (8, 8), (1, 16), (2, 16), (4, 16)]


def test_no_buckets_no_warm_up(make_package: Callable[..., Path]) -> None:
    model = Model.load(make_package(), RuntimeOptions(provider="cpu", variant="fp32"))
    assert model.warm_up_shapes(max_batch_tokens=16384) == 0
