"""Fixtures shared across test packages."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Exported once, then reused by the export's cache key (and across test runs).
PACKAGE_CACHE = REPO / ".cache" / "tests" / "hub"


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
