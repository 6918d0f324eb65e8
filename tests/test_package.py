from __future__ import annotations

import json
from pathlib import Path

import pytest

from tei_ort.errors import PackageError
from tei_ort.package import (
    FORMAT_VERSION,
    FileDigest,
    Manifest,
    Pooling,
    Source,
    Task,
    Validation,
    Variant,
    VariantName,
    is_package,
    read_manifest,
    write_manifest,
)


def manifest() -> Manifest:
    return Manifest(
        task=Task.CLASSIFICATION,
        architecture="BertForSequenceClassification",
        model_type="bert",
        hidden_size=32,
        dimensions=2,
        max_input_length=128,
        output_name="logits",
        uses_token_type_ids=True,
        pad_token_id=0,
        source=Source("org/model", "abc123", {"config.json": "00ff"}),
        tool_version="0.1.0",
        variants=(
            Variant(VariantName.FP32, "model.onnx", ("cpu",), validation=Validation(True, 10, 1.0)),
            Variant(VariantName.FP16, "model.fp16.onnx", ("cuda",), "float16", None),
        ),
        pooling=Pooling.CLS,
        prompts={"query": "query: "},
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        files={
            "model.onnx": FileDigest("ab" * 32, 1234),
            "tokenizer.json": FileDigest("cd" * 32, 5),
        },
    )


def test_round_trip(tmp_path: Path) -> None:
    write_manifest(tmp_path, manifest())
    assert is_package(tmp_path)
    assert read_manifest(tmp_path) == manifest()
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["format_version"] == FORMAT_VERSION
    assert data["id2label"] == {"0": "NEGATIVE", "1": "POSITIVE"}
    assert data["variants"][1]["validation"] is None
    assert data["files"]["model.onnx"] == {"sha256": "ab" * 32, "size": 1234}


def test_a_manifest_from_before_the_digests_reads_with_none(tmp_path: Path) -> None:
    write_manifest(tmp_path, manifest())
    data = json.loads((tmp_path / "manifest.json").read_text())
    del data["files"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(tmp_path).files == {}


def test_only_validated_variants_are_servable() -> None:
    assert manifest().variant("fp32").is_servable
    assert not manifest().variant(VariantName.FP16).is_servable


def test_future_format_is_refused_with_advice(tmp_path: Path) -> None:
    data = json.loads(manifest().to_json())
    data["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(PackageError, match="re-export the model with tei-export"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"format_version": 1}', "malformed"),
    ],
)
def test_broken_manifest_names_the_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(PackageError, match=message):
        read_manifest(tmp_path)


def test_missing_manifest(tmp_path: Path) -> None:
    assert not is_package(tmp_path)
    with pytest.raises(PackageError, match="is .* a tei_ort model package"):
        read_manifest(tmp_path)
