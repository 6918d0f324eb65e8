"""tei-embed --task sparse on a tiny random-weight SPLADE model (BERT masked LM, MiniLM's
tokenizer): each row's indices and values are the runtime's non-zero SPLADE weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tei_ort.bulk.cli import EmbedSettings, run
from tei_ort.bulk.shards import read_output
from tei_ort.export.pipeline import ExportOptions, export_model
from tei_ort.package import VariantName
from tei_ort.runtime import Model, RuntimeOptions
from tests.export import tiny_models

pytest.importorskip("torch")

TEXTS = ["What is Deep Learning?", "x", "Paris is the capital of France.", "dogs bark " * 50]


@pytest.fixture(scope="module")
def splade_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = tmp_path_factory.mktemp("tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(tiny_models.MINILM / name, tokenizer / name)
    source = tiny_models.build_model(
        "bert", "masked_lm", tokenizer, tmp_path_factory.mktemp("src") / "m"
    )
    options = ExportOptions(
        variants=(VariantName.FP32,), validation_queries=4, validation_passages=8
    )
    return export_model(str(source), tmp_path_factory.mktemp("pkg") / "p", options).path


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
