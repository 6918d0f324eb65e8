"""tei_ort.serve.memory: what a model costs is the resident memory the process gained around it,
never a negative figure, and the graph's bytes on disk include its external data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tei_ort.serve import memory


def test_growth_is_the_difference_and_never_negative(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([1_000, 1_500, 900])
    monkeypatch.setattr(memory, "resident_bytes", lambda: next(readings))
    before = memory.resident_bytes()
    assert memory.grown_since(before) == 500
    assert memory.grown_since(before) == 0  # shrank by 100: no one's cost


def test_the_growth_of_a_real_allocation_is_seen() -> None:
    # In a fresh interpreter: a long test process has freed heap that a new block can reuse.
    code = (
        "from tei_ort.serve import memory\n"
        "before = memory.resident_bytes()\n"
        "block = bytearray(64 << 20)\n"
        "block[::4096] = b'x' * len(block[::4096])\n"  # touch every page
        "print(memory.grown_since(before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 48 << 20


def test_the_cost_is_load_plus_warm_up() -> None:
    cost = memory.ModelMemory(graph_bytes=10, load_rss_delta_bytes=7, warm_up_rss_delta_bytes=5)
    assert cost.rss_delta_bytes == 12


def test_graph_bytes_count_external_data(tmp_path: Path) -> None:
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"g" * 10)
    assert memory.graph_bytes(graph) == 10
    (tmp_path / "model.onnx_data").write_bytes(b"d" * 100)  # optimum's / torch.onnx's name
    (tmp_path / "model.onnx.data").write_bytes(b"d" * 1_000)  # onnx.save's, as the quantizer
    (tmp_path / "other.onnx_data").write_bytes(b"d" * 5)  # another graph's: not counted
    assert memory.graph_bytes(graph) == 1_110
