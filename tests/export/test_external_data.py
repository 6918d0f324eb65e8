"""Graphs over protobuf's 2 GB limit keep their tensors in `<graph>.data` (graph_files.py). A tiny
Qwen3 embedder is forced down that path by lowering the threshold: exported, validated, verified
(the digests cover the data files), served with the vectors sentence-transformers computes, and
an ONNX repo with a data file is fetched whole from the hub."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from tei_ort import integrity
from tei_ort.errors import PackageError
from tei_ort.export import cli, graph_files
from tei_ort.export.pipeline import ExportOptions, ExportResult, export_model
from tei_ort.package import VariantName, read_manifest, write_manifest
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.providers import openvino_bf16
from tests.export import family_checks, tiny_decoders
from tests.export.test_decoders import TEXTS, st_embeddings
from tests.hub.hub_server import Hub, HubServer, Repo, commit_of

REPO = Path(__file__).resolve().parents[2]
# The tiny model's graph is ~0.3 MB; any tensor over 1 KB goes to the data file.
THRESHOLD = 10_000
OPTIONS = ExportOptions(
    variants=(VariantName.FP32, VariantName.FP16, VariantName.INT8_WO, VariantName.BF16),
    validation_queries=8,
    validation_passages=24,
    external_data_threshold_bytes=THRESHOLD,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("external-data")
    tokenizer = tiny_decoders.build_tokenizer(root / "tokenizer")
    return tiny_decoders.build("qwen3", tokenizer, root / "qwen3")


@pytest.fixture(scope="module")
def package(source: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return export_model(str(source), tmp_path_factory.mktemp("packages") / "qwen3", OPTIONS)


@pytest.fixture
def copy(package: ExportResult, tmp_path: Path) -> Path:
    return Path(shutil.copytree(package.path, tmp_path / "copy"))


def test_every_graph_keeps_its_tensors_in_its_data_file(package: ExportResult) -> None:
    manifest = package.manifest
    for variant in manifest.variants:
        data = f"{variant.file}.data"
        assert variant.data_files == (data,), variant
        graph = onnx.load(str(package.path / variant.file), load_external_data=False)
        external = [
            t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
        ]
        locations = {e.value for t in external for e in t.external_data if e.key == "location"}
        assert external and locations == {data}
        # The weights are in the data file, not in the graph file.
        assert (package.path / data).stat().st_size > 10 * (
            package.path / variant.file
        ).stat().st_size
        assert manifest.files[data].size == (package.path / data).stat().st_size
        # Readable by whoever can read the graph (onnx writes it 0600).
        graph_mode = (package.path / variant.file).stat().st_mode & 0o777
        assert (package.path / data).stat().st_mode & 0o777 == graph_mode
    # bf16 (OpenVINO reading the same model.onnx and its data file), validated where the CPU has
    # bfloat16, listed for the serving CPU to validate elsewhere.
    assert {v.name for v in manifest.variants} == set(OPTIONS.variants)
    expected = set(OPTIONS.variants) - (set() if openvino_bf16() else {VariantName.BF16})
    assert set(family_checks.validations(manifest)) == expected
    # No graph or data file that the manifest does not list (work files, dropped variants).
    listed = {name for v in manifest.variants for name in (v.file, *v.data_files)}
    on_disk = {p.name for p in package.path.glob("model*")}
    assert on_disk == listed


def test_every_variant_validates(package: ExportResult) -> None:
    for name, validation in family_checks.validations(package.manifest).items():
        assert validation.passed, (name, validation)


def test_served_vectors_equal_sentence_transformers(package: ExportResult, source: Path) -> None:
    """The runtime loads each graph from its file and data file; fp32 gives sentence-transformers'
    vectors, and one input alone equals it inside the batch."""
    model = Model.load(package.path, RuntimeOptions(provider="cpu", variant="fp32"))
    got = model.embed(TEXTS, prompt_name="query")
    want = st_embeddings(source, TEXTS, "query")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(model.embed([TEXTS[0]], prompt_name="query")[0], got[0], atol=1e-5)
    fp16 = Model.load(package.path, RuntimeOptions(provider="cpu", variant="fp16"))
    cosines = np.sum(fp16.embed(TEXTS, prompt_name="query") * want, axis=1)
    assert cosines.min() > 0.999


def test_inline_and_external_exports_give_the_same_vectors(
    package: ExportResult, source: Path, tmp_path: Path
) -> None:
    """Only the layout on disk differs: the same model exported with the default threshold
    (every tensor inline) embeds identically."""
    options = replace(
        OPTIONS,
        variants=(VariantName.FP32,),
        external_data_threshold_bytes=graph_files.EXTERNAL_DATA_THRESHOLD_BYTES,
    )
    inline = export_model(str(source), tmp_path / "inline", options)
    assert inline.manifest.variant(VariantName.FP32).data_files == ()
    assert not list(inline.path.glob("*.data"))
    texts = TEXTS[:3]
    runtime = RuntimeOptions(provider="cpu", variant="fp32")
    np.testing.assert_array_equal(
        Model.load(inline.path, runtime).embed(texts),
        Model.load(package.path, runtime).embed(texts),
    )


def test_verify_covers_the_data_files(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", str(copy)]) == 0
    report = integrity.verify(copy)
    listed = read_manifest(copy).files
    assert report.files == len(listed) and "model.onnx.data" in listed
    data = copy / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one bit pattern in the middle of the weights
    data.write_bytes(bytes(raw))
    with pytest.raises(PackageError, match=r"model\.onnx\.data: sha256"):
        integrity.verify(copy)
    assert cli.main(["verify", str(copy)]) == 1
    assert "model.onnx.data" in capsys.readouterr().err
    data.write_bytes(bytes(raw[:-10]))
    with pytest.raises(PackageError, match=r"model\.onnx\.data: \d+ bytes, the manifest says"):
        integrity.verify(copy)
    data.unlink()
    with pytest.raises(PackageError, match=r"model\.onnx\.data: missing"):
        integrity.verify(copy)


def test_a_data_file_without_a_digest_is_refused(copy: Path) -> None:
    """A manifest naming a data file it holds no digest for is refused before anything runs."""
    manifest = read_manifest(copy)
    files = {k: v for k, v in manifest.files.items() if k != "model.fp16.onnx.data"}
    write_manifest(copy, replace(manifest, files=files))
    with pytest.raises(PackageError, match=r"model\.fp16\.onnx\.data is used but has no digest"):
        integrity.verify(copy)


def test_save_switches_at_the_threshold(package: ExportResult, tmp_path: Path) -> None:
    model = graph_files.load(package.path / "model.onnx")
    size = graph_files.tensor_bytes(model)
    graph_files.save(model, tmp_path / "inline.onnx", threshold_bytes=size)
    graph_files.save(model, tmp_path / "split.onnx", threshold_bytes=size - 1)
    assert graph_files.data_files(tmp_path / "inline.onnx") == ()
    assert graph_files.data_files(tmp_path / "split.onnx") == ("split.onnx.data",)
    with pytest.raises(ValueError, match="2 GiB"):
        graph_files.save(model, tmp_path / "x.onnx", threshold_bytes=2**31)
    assert graph_files.EXTERNAL_DATA_THRESHOLD_BYTES < 2**31  # protobuf's limit


def test_a_tensor_stored_elsewhere_is_refused(package: ExportResult, tmp_path: Path) -> None:
    model = graph_files.load(package.path / "model.onnx")
    onnx.save(
        model,
        str(tmp_path / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=1024,
    )
    with pytest.raises(PackageError, match=r"weights\.bin"):
        graph_files.data_files(tmp_path / "model.onnx")


# The serve side's resolver, in a subprocess: huggingface_hub reads HF_ENDPOINT at import.
RESOLVE = """
import json, sys
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.serve import model_source
from tei_ort.serve.settings import Settings
settings = Settings(model_id=sys.argv[1], huggingface_hub_cache=sys.argv[3])
resolved = model_source.resolve(settings, "cpu")
model = Model.load(resolved.path, RuntimeOptions(provider="cpu", allow_unvalidated=True))
print(json.dumps(model.embed(json.loads(sys.argv[2])).tolist()))
"""


@pytest.fixture
def hub(package: ExportResult, source: Path, tmp_path: Path) -> Iterator[Hub]:
    """An ONNX repo as optimum publishes a big model: onnx/model.onnx and its data file."""
    repo = tmp_path / "repo"
    shutil.copytree(source, repo, ignore=shutil.ignore_patterns("*.safetensors"))
    (repo / "onnx").mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copyfile(package.path / name, repo / "onnx" / name)
    hub = Hub(repos={"org/big-onnx": Repo({commit_of(repo): repo}, {"main": commit_of(repo)})})
    with HubServer(hub):
        yield hub


def test_serve_downloads_an_onnx_repo_with_its_data_file(
    hub: Hub, package: ExportResult, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env |= {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO),
    }
    texts = TEXTS[:2]
    run = subprocess.run(
        [sys.executable, "-c", RESOLVE, "org/big-onnx", json.dumps(texts), str(tmp_path / "cache")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    fetched = set(hub.downloads("org/big-onnx"))
    assert {"onnx/model.onnx", "onnx/model.onnx.data"} <= fetched
    want = Model.load(package.path, RuntimeOptions(provider="cpu", variant="fp32")).embed(texts)
    np.testing.assert_allclose(np.asarray(json.loads(run.stdout)), want, atol=1e-5, rtol=0)
