"""`tei-export`'s table says which CPU class each figure was measured on, and re-validates on this
CPU the variants of a package measured on another class (a package reused from another machine)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from tei_ort.export.pipeline import ExportResult
from tei_ort.export.report import HEADER, format_table, rows_for
from tei_ort.package import read_manifest, write_manifest
from tei_ort.runtime.cpu import this_cpu
from tests.export.conftest import TinyPackage


def test_rows_name_the_class_and_provider_each_figure_was_measured_on(
    tiny_package: TinyPackage,
) -> None:
    result = tiny_package("bert", "embedding")
    rows = rows_for("tiny-bert", result)
    here = this_cpu().isa_class.value
    assert (rows[0][1], rows[0][2]) == ("fp32", f"{here} cpu")
    assert len(rows) == len(result.manifest.variants)  # measured here: no second row
    table = format_table(rows)
    assert table.splitlines()[0].split()[:3] == ["model", "variant", "measured"]
    assert len(HEADER) == len(rows[0])


def test_a_package_measured_elsewhere_is_revalidated_here(
    tiny_package: TinyPackage, tmp_path: Path
) -> None:
    source = tiny_package("bert", "embedding")
    copy = tmp_path / "copied"
    shutil.copytree(source.path, copy)
    manifest = read_manifest(copy)
    elsewhere = tuple(
        replace(v, validation=replace(v.validation, isa_class="x86-elsewhere"))
        for v in manifest.variants
        if v.validation is not None
    )
    write_manifest(copy, replace(manifest, variants=elsewhere))
    result = ExportResult(copy, read_manifest(copy), reused=True)
    rows = rows_for("tiny-bert", result)
    here = this_cpu().isa_class.value
    recorded = [r for r in rows if r[2].startswith("x86-elsewhere")]
    rechecked = [r for r in rows if r[2].startswith(here)]
    assert [r[1] for r in recorded] == [v.name.value for v in elsewhere]
    assert [r[1] for r in rechecked] == [v.name.value for v in elsewhere]
    fp32 = rechecked[0]
    assert fp32[6] == "pass (here)"
    # The figures are this machine's own: the fp32 graph against the stored reference.
    cosine_min = float(fp32[3].split("/")[0])
    assert cosine_min >= 0.99999


def test_a_variant_listed_without_figures_is_validated_here_when_this_cpu_runs_it(
    tiny_package: TinyPackage, tmp_path: Path
) -> None:
    """bf16 exported where OpenVINO had no bfloat16 has no figures; on a machine that runs it,
    the table validates it. Here fp32 stands in (every CPU runs it): its figures removed."""
    copy = tmp_path / "copied"
    shutil.copytree(tiny_package("bert", "embedding").path, copy)
    manifest = read_manifest(copy)
    fp32, *_ = manifest.variants
    write_manifest(copy, replace(manifest, variants=(replace(fp32, validation=None),)))
    rows = rows_for("tiny-bert", ExportResult(copy, read_manifest(copy), reused=True))
    assert [(*r[1:3], r[6]) for r in rows] == [
        ("fp32", "-", "not validated"),
        ("fp32", f"{this_cpu().isa_class.value} cpu", "pass (here)"),
    ]
    assert "tei-serve validates it at first start" in rows[0][7]
