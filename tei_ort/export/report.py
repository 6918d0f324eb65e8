"""The validation table `tei-export` prints: one row per model variant."""

from __future__ import annotations

from collections.abc import Sequence

from tei_ort.export.pipeline import ExportResult

Row = tuple[str, str, str, str, str, str, str]
HEADER: Row = (
    "model",
    "variant",
    "cosine min/mean",
    "max abs diff",
    "overlap@10",
    "result",
    "note",
)


def rows_for(model: str, result: ExportResult) -> list[Row]:
    rows = []
    for variant in result.manifest.variants:
        v = variant.validation
        if v is None:
            rows.append((model, variant.name.value, "-", "-", "-", "not validated", ""))
            continue
        cosine = "-" if v.cosine_min is None else f"{v.cosine_min:.6f}/{v.cosine_mean:.6f}"
        diff = "-" if v.max_abs_diff is None else f"{v.max_abs_diff:.2e}"
        overlap = "-" if v.overlap_at_10 is None else f"{v.overlap_at_10:.3f}"
        verdict = "pass" if v.passed else "FAIL"
        reused = " (reused)" if result.reused else ""
        rows.append((model, variant.name.value, cosine, diff, overlap, verdict + reused, v.note))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """Fixed-width columns; the note column last and unpadded (it is long)."""
    table = [HEADER, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER) - 1)]
    lines = []
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
