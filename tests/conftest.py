"""Fixtures shared across test packages."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# Exported once, then reused by the export's cache key (and across test runs).
PACKAGE_CACHE = REPO / ".cache" / "tests" / "hub"


# `make test` runs `tei-export validate --models offline --out .cache/validate` before pytest.
VALIDATE_OUT = REPO / ".cache" / "validate"


def offline_export(name: str) -> Any:
    """An offline model (tei_ort.export.offline_models) exported exactly as `make test`'s
    validation step exports it, into the same folder: with the same cache key the package that
    step built is reused (a clean clone exports MiniLM and SPLADE once, not once per step), and a
    bare `pytest` run builds it there the same way."""
    pytest.importorskip("torch")
    from tei_ort.export import cli, offline_models
    from tei_ort.export.pipeline import export_model

    names = [model for model, _ in offline_models.expand([offline_models.ALL_OFFLINE])]
    parsed = cli._validate_parser().parse_args(["--models", offline_models.ALL_OFFLINE])
    out = VALIDATE_OUT / cli.package_folder(names.index(name), name)
    options = offline_models.options_for(name, cli._options(parsed))
    return export_model(offline_models.folder(name), out, options)


@pytest.fixture(scope="session")
def minilm_export() -> Any:
    """all-MiniLM-L6-v2 exported with every variant this machine builds (an ExportResult)."""
    return offline_export("all-minilm-l6-v2")


@contextlib.contextmanager
def export_in_this_process() -> Iterator[None]:
    """tei-serve's on-the-fly export (model_source) in this process rather than in a child, for
    fixtures and tests about what is exported, not where: a child imports torch afresh (~13 s on a
    2-core Zen 3). tests/serve/test_child_process.py tests the child itself."""
    from tei_ort.serve import child_process

    original = child_process.run_in_child
    child_process.run_in_child = lambda target, args, **_: target(*args)
    try:
        yield
    finally:
        child_process.run_in_child = original


@pytest.fixture(scope="session")
def minilm_package() -> Path:
    """A real all-MiniLM-L6-v2 model package (fp32), exported by this test session if needed."""
    pytest.importorskip("torch")
    from tei_ort.serve import model_source
    from tei_ort.serve.settings import load_settings

    settings = load_settings(
        ["--variant", "fp32", "--huggingface-hub-cache", str(PACKAGE_CACHE)], {}
    )
    with export_in_this_process():
        return model_source.resolve(settings, "cpu").path


@dataclass(frozen=True)
class TinyBert:
    source: Path  # the Hugging Face folder (random weights, seed 0, MiniLM's tokenizer)
    export: Any  # its fp32 export (an ExportResult), with tiny_bert_fp32_options()

    @property
    def package(self) -> Path:
        path: Path = self.export.path
        return path


def tiny_bert_fp32_options() -> Any:
    """fp32 only, on small validation sets: the tests that share these packages check routes,
    batching and files, not variants (tests/export checks those)."""
    from tei_ort.export.pipeline import ExportOptions
    from tei_ort.package import VariantName

    return ExportOptions(variants=(VariantName.FP32,), validation_queries=4, validation_passages=8)


@pytest.fixture(scope="session")
def tiny_bert_fp32(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], TinyBert]:
    """The tiny random BERT of a head (tests/export/tiny_models.HEADS) and its fp32 package, built
    and exported once per session: the serve, hub and bulk tests that only read them share them.
    A test that changes a file copies the folder first."""
    pytest.importorskip("torch")
    from tei_ort.export.pipeline import export_model
    from tests.export import tiny_models

    root = tmp_path_factory.mktemp("tiny-bert-fp32")
    tokenizer_dir = root / "minilm-tokenizer"
    tokenizer_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(tiny_models.MINILM / name, tokenizer_dir / name)
    built: dict[str, TinyBert] = {}

    def get(head: str) -> TinyBert:
        if head not in built:
            source = tiny_models.build_model("bert", head, tokenizer_dir, root / f"src-{head}")
            export = export_model(str(source), root / f"pkg-{head}", tiny_bert_fp32_options())
            built[head] = TinyBert(source, export)
        return built[head]

    return get
