"""The default path, as `make serve` runs it: `tei-serve` on a real all-MiniLM-L6-v2 package with
every variant and no --variant or --provider. The server serves the variant chosen on this machine
(validated on this CPU class, fastest by its trial) and says why in /info and its log; an int8
graph that misses its bar on this CPU is refused and the server falls back, answering with fp32's
vectors."""

from __future__ import annotations

import shutil
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tei_ort import integrity
from tei_ort.fidelity import THRESHOLDS, OutputKind
from tei_ort.package import VariantName, read_manifest, write_manifest
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.checks import CHECKS_FILE
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.providers import Provider, max_padding_ratio
from tests.serve import live

pytestmark = pytest.mark.slow
TEXTS = ["What is Deep Learning?", "Paris is the capital of France.", "tokenizers " * 50]


def _tei_serve(package: Path, cache: Path) -> AbstractContextManager[tuple[str, list[str]]]:
    """tei-serve with the user's defaults: no VARIANT, no PROVIDER."""
    env = {"MODEL_ID": str(package), "HOSTNAME": "127.0.0.1", "HUGGINGFACE_HUB_CACHE": str(cache)}
    return live.tei_serve({**env, "VARIANT": None, "PROVIDER": None})


def _copy(minilm_export: Any, tmp_path: Path) -> Path:
    package = tmp_path / "minilm"
    shutil.copytree(minilm_export.path, package, ignore=shutil.ignore_patterns(CHECKS_FILE))
    return package


def _served(url: str) -> tuple[dict[str, Any], np.ndarray]:
    info = httpx.get(f"{url}/info").json()
    vectors = np.asarray(httpx.post(f"{url}/embed", json={"inputs": TEXTS}, timeout=60).json())
    return info, vectors


def test_the_default_serves_the_variant_chosen_on_this_machine(
    minilm_export: Any, tmp_path: Path
) -> None:
    package = _copy(minilm_export, tmp_path)
    with _tei_serve(package, tmp_path / "cache") as (url, output):
        info, got = _served(url)
    chosen = f"{info['provider']}:{info['variant']}"
    here = this_cpu()
    variant = read_manifest(package).variant(info["variant"])
    # Served only if validated on this CPU class, on the provider it is served on.
    assert variant.validation is not None and variant.validation.passed
    assert (variant.validation.isa_class, variant.validation.provider) == (
        here.isa_class.value,
        info["provider"],
    )
    assert info["isa_class"] == here.isa_class.value
    assert info["variant_note"].startswith(f"{chosen} on {here.describe()}; ")
    assert (
        f"{chosen}: passed validation at export on {here.isa_class.value}" in info["variant_note"]
    )
    # Its vectors are that variant's, computed in-process on the same provider...
    model = Model.load(package, RuntimeOptions(provider=info["provider"], variant=info["variant"]))
    want = model.embed(TEXTS)
    cosines = np.sum(got * want, axis=1)
    assert np.all(cosines > 0.9999), cosines
    # ...and within the variant's own bar of the fp32 graph (itself validated to 1e-5).
    fp32 = Model.load(package, RuntimeOptions(provider="cpu", variant="fp32")).embed(TEXTS)
    bar = THRESHOLDS[(OutputKind.DENSE, VariantName(info["variant"]))].min_cosine
    assert bar is not None and np.all(np.sum(got * fp32, axis=1) >= bar)
    # The checks were cached in the package, and the log says what was chosen and why.
    assert (package / CHECKS_FILE).is_file()
    ready = next(line for line in output if "Ready:" in line)
    assert f"provider={info['provider']} variant={info['variant']} cpu={here.describe()}" in ready
    assert any(f"variant: {chosen} on" in line for line in output)
    # The batch budget was measured here too, and the engine runs with it.
    batching = next(line for line in output if "batching: " in line)
    budget = int(batching.split("batching: ")[1].split()[0])
    assert "target batch tokens, by trial (512: " in batching
    assert f"batching: {budget} target batch tokens" in info["variant_note"]
    engine_line = next(line for line in output if "engine ready" in line)
    # The padding cap of the provider on this CPU's class (10% for the CPU EP on x86-avx2, where
    # it was measured: test_providers), not the provider's default everywhere.
    cap = max_padding_ratio(Provider(info["provider"]), here)
    assert f"target_batch_tokens {budget}, max_padding_ratio {cap}" in engine_line


def _break_int8(package: Path) -> None:
    """The int8 graph with its largest weight negated, and its figures recorded on another CPU
    class (an image built on one machine, served on another): re-validation here must catch it.
    bf16, int8-w7 and int8-u8 (built by `make test`'s validation step) are dropped so that fp32 is
    what remains on every CPU class: with int8-u8 left in, the trial chose between it and fp32."""
    path = package / "model.int8.onnx"
    graph = onnx.load(str(path))
    weights = [i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    largest = max(weights, key=lambda i: int(np.prod(i.dims)))
    largest.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(largest), largest.name))
    onnx.save(graph, str(path))
    manifest = read_manifest(package)
    variants = []
    for v in manifest.variants:
        if v.name in (VariantName.BF16, VariantName.INT8_W7, VariantName.INT8_U8):
            continue
        if v.name is VariantName.INT8:
            assert v.validation is not None
            v = replace(v, validation=replace(v.validation, passed=True, isa_class="x86-elsewhere"))
        variants.append(v)
    # The digests of the graph as built: the package is whole, its int8 just fails here.
    files = integrity.digest_files(package)
    write_manifest(package, replace(manifest, variants=tuple(variants), files=files))


def test_an_int8_graph_failing_its_gate_here_is_refused_and_fp32_served(
    minilm_export: Any, tmp_path: Path
) -> None:
    package = _copy(minilm_export, tmp_path)
    assert VariantName.INT8 in {v.name for v in read_manifest(package).variants}
    _break_int8(package)
    with _tei_serve(package, tmp_path / "cache") as (url, output):
        info, got = _served(url)
    assert (info["provider"], info["variant"]) == ("cpu", "fp32")
    assert (
        "cpu:int8: not served, failed re-validation here (FAILED cosine min" in info["variant_note"]
    )
    assert any("re-validated cpu:int8 on this CPU" in line for line in output)
    want = Model.load(package, RuntimeOptions(provider="cpu", variant="fp32")).embed(TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-5)
