"""The validation table `tei-export` prints: one row per model variant and CPU class it was
measured on. A package measured on another class (exported elsewhere, or reused from a cache made
on another machine) gets a second row per variant, re-validated here on its fidelity set."""

from __future__ import annotations

from collections.abc import Sequence

from tei_ort.errors import BackendError, PackageError, ProviderUnavailable
from tei_ort.export.pipeline import ExportResult
from tei_ort.package import Validation, Variant
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.fidelity_check import read_fidelity_set, validate_here
from tei_ort.runtime.providers import Provider, available, engine_name

Row = tuple[str, str, str, str, str, str, str, str]
HEADER: Row = (
    "model",
    "variant",
    "measured on",
    "cosine min/mean",
    "max abs diff",
    "overlap@10",
    "result",
    "note",
)


def rows_for(model: str, result: ExportResult) -> list[Row]:
    rows = []
    for variant in result.manifest.variants:
        reused = " (reused)" if result.reused else ""
        rows.append(_row(model, variant, variant.validation, reused))
    return rows + rows_here(model, result)


def rows_here(model: str, result: ExportResult) -> list[Row]:
    """Each variant whose figures come from another CPU class, re-validated on this CPU; and each
    listed without figures (bf16 exported where it could not run) that this machine can run."""
    fidelity_set = read_fidelity_set(result.path)
    here = this_cpu().isa_class.value
    if fidelity_set is None:
        return []
    rows = []
    for variant in result.manifest.variants:
        recorded = variant.validation
        if recorded is not None and recorded.isa_class == here:
            continue
        provider = Provider((recorded.provider or "cpu") if recorded else variant.providers[0])
        if provider not in available():
            if recorded is None:
                continue  # its own row says it is not validated, and why
            note = f"{provider.value} is not available here"
            rows.append((model, variant.name.value, here, "-", "-", "-", "not run", note))
            continue
        options = RuntimeOptions(
            provider=provider.value, variant=variant.name.value, allow_unvalidated=True
        )
        try:
            loaded = Model.load(result.path, options)
            validation = validate_here(
                loaded, fidelity_set, isa_class=here, engine=engine_name(provider)
            )
        except (PackageError, ProviderUnavailable, BackendError) as exc:
            rows.append((model, variant.name.value, here, "-", "-", "-", "FAIL", str(exc)))
            continue
        rows.append(_row(model, variant, validation, " (here)"))
    return rows


def _row(model: str, variant: Variant, v: Validation | None, suffix: str) -> Row:
    if v is None:
        note = (
            "this CPU cannot run it natively; tei-serve validates it at first start on one that can"
        )
        return (model, variant.name.value, "-", "-", "-", "-", "not validated", note)
    where = f"{v.isa_class or 'unrecorded'} {v.provider}".strip()
    cosine = "-" if v.cosine_min is None else f"{v.cosine_min:.6f}/{v.cosine_mean:.6f}"
    diff = "-" if v.max_abs_diff is None else f"{v.max_abs_diff:.2e}"
    overlap = "-" if v.overlap_at_10 is None else f"{v.overlap_at_10:.3f}"
    verdict = ("pass" if v.passed else "FAIL") + suffix
    return (model, variant.name.value, where, cosine, diff, overlap, verdict, v.note)


def format_table(rows: Sequence[Row]) -> str:
    """Fixed-width columns; the note column last and unpadded (it is long)."""
    table = [HEADER, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER) - 1)]
    lines = []
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
