"""Integrity at load: every package file against the manifest's size and sha256, on a real export
of a tiny model; the server refuses a truncated or altered file naming it, rebuilds an on-the-fly
export cache that fails, and `tei-export verify` checks a package by hand."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tei_ort import integrity
from tei_ort.errors import PackageError
from tei_ort.export.pipeline import ExportResult
from tei_ort.package import CHECKS_FILE, EXPORT_RECORD_FILE, MANIFEST_FILE, read_manifest
from tei_ort.serve import model_source
from tei_ort.serve.settings import load_settings
from tests.conftest import TinyBert, export_in_this_process

pytest.importorskip("torch")


# The session's tiny BERT embedder and its fp32 export (tests/conftest.py); tests that damage
# the package work on a copy (`package`).
@pytest.fixture(scope="module")
def source(tiny_bert_fp32: Callable[[str], TinyBert]) -> Path:
    return tiny_bert_fp32("embedding").source


@pytest.fixture(scope="module")
def exported(tiny_bert_fp32: Callable[[str], TinyBert]) -> ExportResult:
    result: ExportResult = tiny_bert_fp32("embedding").export
    return result


@pytest.fixture
def package(exported: ExportResult, tmp_path: Path) -> Path:
    """A private copy to damage."""
    copy = tmp_path / "pkg"
    shutil.copytree(exported.path, copy)
    return copy


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifest_lists_every_file_with_its_size_and_sha256(exported: ExportResult) -> None:
    pkg = exported.path
    on_disk = sorted(p.name for p in pkg.iterdir() if p.is_file())
    uncovered = {MANIFEST_FILE, EXPORT_RECORD_FILE, CHECKS_FILE}
    files = read_manifest(pkg).files
    assert sorted(files) == [name for name in on_disk if name not in uncovered]
    assert {"model.onnx", "tokenizer.json", "fidelity.npz", "config.json"} <= set(files)
    for name, digest in files.items():
        data = (pkg / name).read_bytes()
        assert (digest.size, digest.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_verified_digests_are_cached_by_file_identity(package: Path, tmp_path: Path) -> None:
    cache = tmp_path / "verified.json"
    first = integrity.verify(package, cache)
    files = read_manifest(package).files
    total = sum(d.size for d in files.values())
    assert (first.files, first.hashed, first.bytes_hashed) == (len(files), len(files), total)
    again = integrity.verify(package, cache)  # a restart: nothing changed, nothing read
    assert (again.files, again.hashed, again.bytes_hashed) == (len(files), 0, 0)
    (package / "config.json").touch()  # a new mtime: hashed again (and still good)
    assert integrity.verify(package, cache).hashed == 1


def test_an_edit_is_caught_even_with_the_mtime_put_back(package: Path, tmp_path: Path) -> None:
    cache = tmp_path / "verified.json"
    integrity.verify(package, cache)
    graph = package / "model.onnx"
    before = graph.stat()
    _flip_last_byte(graph)
    os.utime(graph, ns=(before.st_atime_ns, before.st_mtime_ns))  # the ctime still moves
    with pytest.raises(PackageError, match=r"model\.onnx: sha256 .* does not match the manifest"):
        integrity.verify(package, cache)


def test_truncated_missing_and_unlisted_files_are_named(package: Path) -> None:
    graph = package / "model.onnx"
    size = graph.stat().st_size
    with graph.open("r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(
        PackageError, match=rf"model\.onnx: {size // 2} bytes, the manifest says {size}"
    ):
        integrity.verify(package)
    graph.unlink()
    with pytest.raises(PackageError, match=r"model\.onnx: missing \(listed in manifest.json\)"):
        integrity.verify(package)
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    del manifest["files"]["model.onnx"]
    (package / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="model.onnx is used but has no digest"):
        integrity.verify(package)
    manifest["files"]["../outside"] = {"sha256": "0" * 64, "size": 1}
    (package / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="'../outside' is not a path inside the package"):
        integrity.verify(package)


def test_a_package_without_digests_is_served_with_a_warning(
    package: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    del manifest["files"]
    (package / MANIFEST_FILE).write_text(json.dumps(manifest))
    settings = load_settings(
        ["--model-id", str(package), "--huggingface-hub-cache", str(tmp_path)], {}
    )
    resolved = model_source.resolve(settings, "cpu")
    assert resolved.path == package
    assert "not verified: manifest.json lists no file digests" in caplog.text


def test_the_server_refuses_an_altered_package_naming_the_file(
    package: Path, tmp_path: Path
) -> None:
    settings = load_settings(
        ["--model-id", str(package), "--huggingface-hub-cache", str(tmp_path)], {}
    )
    resolved = model_source.resolve(settings, "cpu")
    n = len(read_manifest(package).files)
    assert f"{n} files verified against the manifest's sha256 ({n} hashed" in resolved.origin
    assert "(0 hashed" in model_source.resolve(settings, "cpu").origin  # the restart is cached
    _flip_last_byte(package / "tokenizer.json")
    with pytest.raises(PackageError, match=r"tokenizer\.json: sha256 .* does not match"):
        model_source.resolve(settings, "cpu")


def test_tei_serve_exits_with_the_file_named(package: Path, tmp_path: Path) -> None:
    _flip_last_byte(package / "model.onnx")
    env = {**os.environ, "HUGGINGFACE_HUB_CACHE": str(tmp_path), "PORT": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "tei_ort.serve.cli", "--model-id", str(package)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert f"cannot start: {package / 'model.onnx'}: sha256" in run.stdout + run.stderr


def test_a_failing_export_cache_is_rebuilt(source: Path, tmp_path: Path) -> None:
    with export_in_this_process():  # what is rebuilt, not where (tests/serve/test_child_process)
        _failing_export_cache_is_rebuilt(source, tmp_path)


def _failing_export_cache_is_rebuilt(source: Path, tmp_path: Path) -> None:
    settings = load_settings(
        ["--model-id", str(source), "--variant", "fp32", "--huggingface-hub-cache", str(tmp_path)],
        {},
    )
    first = model_source.resolve(settings, "cpu").path
    good = (first / "model.onnx").read_bytes()
    _flip_last_byte(first / "model.onnx")
    second = model_source.resolve(settings, "cpu").path
    assert second == first
    assert (second / "model.onnx").read_bytes() == good
    assert integrity.verify(second).files == len(integrity.package_files(second))
    # A cached export from before the digests cannot be checked: it is exported again.
    manifest = json.loads((second / MANIFEST_FILE).read_text())
    del manifest["files"]
    (second / MANIFEST_FILE).write_text(json.dumps(manifest))
    third = model_source.resolve(settings, "cpu").path
    assert integrity.verify(third).files == len(integrity.package_files(third)) >= 4


def test_tei_export_verify(package: Path) -> None:
    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tei_ort.export.cli", "verify", str(package)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    good = verify()
    assert good.returncode == 0
    n = len(read_manifest(package).files)
    assert f"{package}: OK, {n} files verified" in good.stdout
    _flip_last_byte(package / "fidelity.npz")
    bad = verify()
    assert bad.returncode == 1
    assert f"FAILED: {package / 'fidelity.npz'}: sha256" in bad.stderr
