"""tei-embed end to end in-process, on the real all-MiniLM-L6-v2 package (fp32 on the CPU EP):
the vectors are the runtime's, every row lands once in order, bad rows are reported by file and
row, and a job resumes from any torn state its atomic writes can leave."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tei_ort.bulk.cli import EmbedSettings, main, run
from tei_ort.bulk.job import BadRowError
from tei_ort.bulk.shards import MANIFEST, OutputFolder, read_output
from tei_ort.errors import ValidationError, WrongModelType
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions

pytest.importorskip("torch")  # the minilm_package fixture exports the embedded model once

# The engine batches by length, the reference in fixed batches: fp32 sums in another order.
ATOL = 2e-5


@pytest.fixture(scope="module")
def model(minilm_package: Path) -> Model:
    return Model.load(minilm_package, RuntimeOptions(provider="cpu", variant="fp32"))


def _texts(count: int) -> list[str]:  # count even: queries and passages alternate
    half = count // 2
    return [
        t for pair in zip(corpus.queries(half), corpus.passages(half), strict=True) for t in pair
    ]


def _jsonl(path: Path, texts: list[str], bad: dict[int, dict[str, object]] | None = None) -> Path:
    bad = bad or {}
    with path.open("w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps(bad.get(i, {"text": text, "id": f"doc-{i}"})) + "\n")
    return path


def _settings(package: Path, inputs: list[Path], output: Path, **extra: object) -> EmbedSettings:
    return EmbedSettings.model_validate(
        {
            "inputs": [str(p) for p in inputs],
            "output": output,
            "model_id": str(package),
            "provider": "cpu",
            "variant": "fp32",
            "id_field": "id",
            "shard_size": 16,
            **extra,
        }
    )


def test_every_row_once_in_order_with_the_runtimes_vectors(
    minilm_package: Path, model: Model, tmp_path: Path
) -> None:
    texts = _texts(40)
    first = _jsonl(tmp_path / "a.jsonl", texts[:30])
    second = tmp_path / "b.txt"
    second.write_text("\n".join(texts[30:]) + "\n")
    summary = run(_settings(minilm_package, [first, second], tmp_path / "out"))

    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"doc-{i}" for i in range(30)] + [None] * 10
    assert table.column("file").to_pylist() == [str(first)] * 30 + [str(second)] * 10
    assert table.column("row").to_pylist() == list(range(30)) + list(range(10))
    assert table.schema.field("embedding").type.list_size == 384
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(vectors, model.embed(texts), atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    manifest = OutputFolder(tmp_path / "out").read_manifest()
    assert manifest is not None and manifest.complete
    assert (manifest.provider, manifest.variant) == ("cpu", "fp32")
    assert [manifest.shards[i].rows for i in sorted(manifest.shards)] == [16, 16, 8]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        MANIFEST,
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    tokens = sum(len(e) for e in model.encode(texts))
    assert (summary.embedded, summary.bad_rows, summary.tokens) == (40, 0, tokens)
    assert (summary.shards_written, summary.shards_reused) == (3, 0)


def test_dimensions_and_unnormalized(minilm_package: Path, model: Model, tmp_path: Path) -> None:
    texts = _texts(10)
    out = tmp_path / "out"
    run(
        _settings(
            minilm_package,
            [_jsonl(tmp_path / "a.jsonl", texts)],
            out,
            dimensions=64,
            normalize=False,
        )
    )
    vectors = np.array(read_output(out).column("embedding").to_pylist(), dtype=np.float32)
    assert vectors.shape == (10, 64)
    expected = model.embed(texts, normalize=False, dimensions=64)
    np.testing.assert_allclose(vectors, expected, atol=ATOL)


def test_bad_rows_are_skipped_reported_and_recorded(
    minilm_package: Path, model: Model, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts = _texts(20)
    bad = {3: {"id": "doc-3"}, 17: {"text": "", "id": "doc-17"}}
    path = _jsonl(tmp_path / "a.jsonl", texts, bad)
    # --truncate false: the tokenizer refuses an input past 256 tokens; only that row is lost.
    long_row = 9
    lines = path.read_text().splitlines()
    lines[long_row] = json.dumps({"text": "word " * 400, "id": f"doc-{long_row}"})
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="tei_ort.bulk"):
        summary = run(
            _settings(minilm_package, [path], tmp_path / "out", on_error="skip", truncate=False)
        )

    table = read_output(tmp_path / "out")
    kept = [i for i in range(20) if i not in (3, long_row, 17)]
    assert table.column("row").to_pylist() == kept
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(vectors, model.embed([texts[i] for i in kept]), atol=ATOL)
    manifest = OutputFolder(tmp_path / "out").read_manifest()
    assert manifest is not None
    errors = [e for i in sorted(manifest.shards) for e in manifest.shards[i].errors]
    assert [(e.file, e.row) for e in errors] == [
        (str(path), 3),
        (str(path), long_row),
        (str(path), 17),
    ]
    assert errors[0].reason == "missing field 'text'"
    assert "256" in errors[1].reason  # the model's limit, from the engine's own message
    assert errors[2].reason == "empty text"
    assert summary.bad_rows == 3 and summary.embedded == 17
    logged = caplog.text
    assert f"skipped {path}, row 3: missing field 'text'" in logged
    assert f"skipped {path}, row 17: empty text" in logged
    # A shard with a refused input is recomputed identically (as a resumed job would).
    run(_settings(minilm_package, [path], tmp_path / "again", on_error="skip", truncate=False))
    assert read_output(tmp_path / "again").equals(table)


def test_on_error_fail_names_the_row_and_keeps_earlier_shards(
    minilm_package: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts = _texts(40)
    path = _jsonl(tmp_path / "a.jsonl", texts, {21: {"text": ["not", "a", "string"], "id": "x"}})
    with pytest.raises(BadRowError, match=rf"{path}, row 21: field 'text' is not a string"):
        run(_settings(minilm_package, [path], tmp_path / "out"))
    manifest = OutputFolder(tmp_path / "out").read_manifest()
    assert manifest is not None and not manifest.complete
    assert sorted(manifest.shards) == [0]  # rows 0-15; the bad row's shard was not written

    # The console script: exit status 2 and the row in the log.
    with pytest.raises(SystemExit) as exited:
        main(
            [
                str(path),
                "-o",
                str(tmp_path / "out2"),
                "--model-id",
                str(minilm_package),
                "--variant",
                "fp32",
                "--provider",
                "cpu",
                "--shard-size",
                "16",
            ]
        )
    assert exited.value.code == 2
    assert f"{path}, row 21" in caplog.text


def test_job_wide_mistakes_fail_before_any_shard(minilm_package: Path, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "a.jsonl", _texts(4))
    with pytest.raises(WrongModelType, match="SPLADE"):
        run(_settings(minilm_package, [path], tmp_path / "sparse", task="sparse"))
    with pytest.raises(ValidationError, match="dimensions"):
        run(_settings(minilm_package, [path], tmp_path / "dims", dimensions=1000))
    assert not list((tmp_path / "dims").glob("*.parquet"))


def test_an_output_folder_holds_one_job(minilm_package: Path, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "a.jsonl", _texts(4))
    run(_settings(minilm_package, [path], tmp_path / "out"))
    with pytest.raises(ValidationError, match="another job"):
        run(_settings(minilm_package, [path], tmp_path / "out", shard_size=2))
    with pytest.raises(ValidationError, match="was started with --variant fp32"):
        run(_settings(minilm_package, [path], tmp_path / "out", variant="int8"))


def test_resume_recomputes_every_torn_shard_and_nothing_else(
    minilm_package: Path, tmp_path: Path
) -> None:
    path = _jsonl(tmp_path / "a.jsonl", _texts(64))
    out = tmp_path / "out"
    settings = _settings(minilm_package, [path], out)
    run(settings)
    whole = read_output(out)
    folder = OutputFolder(out)
    manifest = folder.read_manifest()
    assert manifest is not None

    # Killed after shard 1's rename but before the manifest listed it: not done.
    shards = {i: e for i, e in manifest.shards.items() if i != 1}
    # Killed mid-write of shard 2 in a world without atomic renames: a short file is not done.
    (out / manifest.shards[2].file).write_bytes(b"PAR1 torn")
    # Killed before the rename: a temporary file is left behind.
    (out / ".part-00003.parquet.tmp-99999").write_bytes(b"partial")
    folder.write_manifest(manifest.model_copy(update={"shards": shards, "complete": False}))

    summary = run(settings)
    assert (summary.shards_written, summary.shards_reused) == (2, 2)
    assert summary.embedded == 32
    assert read_output(out).equals(whole)
    assert not list(out.glob(".*tmp*"))
    assert pq.read_table(out / "part-00002.parquet").num_rows == 16


def test_without_model_id_the_servers_embedded_default(
    minilm_package: Path, model: Model, tmp_path: Path
) -> None:
    """No --model-id: the same embedded all-MiniLM-L6-v2 tei-serve serves (here found in the
    cache the minilm_package fixture filled, as tei-serve would find it there)."""
    from tests.conftest import PACKAGE_CACHE

    texts = _texts(6)
    settings = _settings(
        minilm_package,
        [_jsonl(tmp_path / "a.jsonl", texts)],
        tmp_path / "out",
        model_id=None,
        huggingface_hub_cache=PACKAGE_CACHE,
    )
    run(settings)
    manifest = OutputFolder(tmp_path / "out").read_manifest()
    assert manifest is not None and manifest.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    vectors = np.array(read_output(tmp_path / "out").column("embedding").to_pylist())
    np.testing.assert_allclose(vectors, model.embed(texts), atol=ATOL)


def test_every_variant_name_is_accepted_by_tei_embed_and_tei_serve() -> None:
    """--variant takes each variant a package can hold (int8-wo was missing from tei-embed), in
    both commands."""
    import typing

    from tei_ort.package import VariantName
    from tei_ort.serve.settings import Settings

    names = {name.value for name in VariantName}
    for model in (EmbedSettings, Settings):
        annotation = model.model_fields["variant"].annotation
        literal = next(a for a in typing.get_args(annotation) if a is not type(None))
        assert set(typing.get_args(literal)) == names, model.__name__
    settings = EmbedSettings(inputs=("a.jsonl",), output=Path("out"), variant="int8-wo")
    assert settings.variant == "int8-wo"
