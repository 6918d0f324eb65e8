"""tei-embed --task sparse on a tiny random-weight SPLADE model (BERT masked LM, MiniLM's
tokenizer): each row's indices and values are the runtime's non-zero SPLADE weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tei_ort.bulk.cli import EmbedSettings, run
from tei_ort.bulk.shards import read_output
from tei_ort.runtime import Model, RuntimeOptions
from tests.conftest import TinyBert

pytest.importorskip("torch")

TEXTS = ["What is Deep Learning?", "x", "Paris is the capital of France.", "dogs bark " * 50]


@pytest.fixture(scope="module")
def splade_package(tiny_bert_fp32: Callable[[str], TinyBert]) -> Path:
    # The session's tiny BERT masked LM, exported fp32 (tests/conftest.py).
    return tiny_bert_fp32("masked_lm").package


def test_sparse_rows_are_the_runtimes_splade_weights(splade_package: Path, tmp_path: Path) -> None:
    source = tmp_path / "a.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    settings = EmbedSettings(
        inputs=(str(source),),
        output=tmp_path / "out",
        model_id=str(splade_package),
        provider="cpu",
        variant="fp32",
        task="sparse",
        shard_size=3,
    )
    summary = run(settings)
    assert summary.embedded == 4
    table = read_output(tmp_path / "out")
    assert table.column_names == ["id", "file", "row", "indices", "values"]
    assert table.column("row").to_pylist() == [0, 1, 2, 3]
    dense = Model.load(splade_package, RuntimeOptions(provider="cpu", variant="fp32")).embed_sparse(
        TEXTS
    )  # (4, vocab)
    for i, (indices, values) in enumerate(
        zip(table.column("indices").to_pylist(), table.column("values").to_pylist(), strict=True)
    ):
        expected = np.flatnonzero(dense[i] > 0)
        assert len(expected) > 0
        assert indices == expected.tolist()
        np.testing.assert_allclose(values, dense[i][expected], rtol=1e-4, atol=1e-5)
