from __future__ import annotations

import json
from pathlib import Path

import pytest

from tei_ort.bench import report
from tei_ort.bench.measure import Measurement


def measurements() -> list[Measurement]:
    return [
        Measurement("sentence-transformers fp32 (batch 32)", "baseline", 100, 1000, 2.0, [2.0]),
        Measurement("raw fp32 cpu", "raw", 100, 1000, 0.5, [0.1, 0.2, 0.2]),
        Measurement("server c=8 x1", "server", 80, 800, 0.4, [0.01] * 9 + [0.1], 8, 1),
        Measurement("server c=32 x1", "server", 90, 900, 0.4, [0.02] * 10, 32, 1, errors=1),
    ]


def test_rates_and_percentiles() -> None:
    server = measurements()[2]
    assert server.tokens_per_s == 2000 and server.embeddings_per_s == 200
    assert server.percentile_ms(50) == pytest.approx(10.0)
    assert server.percentile_ms(99) == pytest.approx(91.9, rel=1e-3)
    assert Measurement("x", "raw", 0, 0, 0.0).percentile_ms(50) is None


def test_table_gives_ratios_to_the_baseline() -> None:
    ms = measurements()
    lines = report.table(ms, ms[0]).splitlines()
    raw = next(line for line in lines if line.startswith("raw fp32 cpu"))
    assert raw.split()[3:6] == ["2000", "200.0", "4.00"]
    assert lines[-1].split()[-1] == "1"  # the errors column


def test_json_and_png_are_written(tmp_path: Path) -> None:
    ms = measurements()
    report.write_json(tmp_path / "b.json", ms, {"start_to_ready_s": 1.5})
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["start_to_ready_s"] == 1.5
    assert [m["tokens_per_s"] for m in data["measurements"]] == [500, 2000, 2000, 2250]
    report.draw(tmp_path / "b.png", ms, ms[:2])
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
