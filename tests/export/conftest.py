"""Session-scoped exports: each tiny model and each real model is built and exported once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tei_ort.export.pipeline import ExportOptions, ExportResult, export_model
from tei_ort.export.validate import validation_set
from tei_ort.package import VariantName
from tests.conftest import offline_export
from tests.export import tiny_models

# Small validation sets for the tiny models: the point there is the graph, not the statistics.
TINY_OPTIONS = ExportOptions(
    variants=(VariantName.FP32, VariantName.BF16), validation_queries=8, validation_passages=24
)
# Texts each tiny package is validated on (prose queries, the short ones, passages).
TINY_TEXTS = len(
    validation_set(TINY_OPTIONS.validation_queries, TINY_OPTIONS.validation_passages).texts
)
TinySource = Callable[[str, str], Path]
TinyPackage = Callable[[str, str], ExportResult]


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_models.build_tokenizers(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="session")
def tiny_source(
    tmp_path_factory: pytest.TempPathFactory, tokenizer_dirs: dict[str, Path]
) -> TinySource:
    built: dict[tuple[str, str], Path] = {}
    root = tmp_path_factory.mktemp("tiny-sources")

    def get(family: str, head: str) -> Path:
        if (family, head) not in built:
            spec = tiny_models.FAMILIES[family]
            built[(family, head)] = tiny_models.build_model(
                family, head, tokenizer_dirs[spec.tokenizer], root / f"{family}-{head}"
            )
        return built[(family, head)]

    return get


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory, tiny_source: TinySource) -> TinyPackage:
    exported: dict[tuple[str, str], ExportResult] = {}
    root = tmp_path_factory.mktemp("tiny-packages")

    def get(family: str, head: str) -> ExportResult:
        if (family, head) not in exported:
            source = tiny_source(family, head)
            exported[(family, head)] = export_model(
                str(source), root / f"{family}-{head}", TINY_OPTIONS
            )
        return exported[(family, head)]

    return get


@pytest.fixture(scope="session")
def minilm(minilm_export: ExportResult) -> ExportResult:
    return minilm_export


@pytest.fixture(scope="session")
def splade() -> ExportResult:
    # The package `make test`'s validation step built (every variant), reused by its cache key.
    result: ExportResult = offline_export("splade-tiny")
    return result
