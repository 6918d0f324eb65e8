"""What each served model costs in memory (issue 11): the served graph's bytes on disk and how
much the process's resident memory grew while the model was loaded and its engine started.

The growth is measured around each model's load in turn, so it includes what that load brought
into the process: ONNX Runtime's initialized weights, the tokenizer, warm-up activations kept in
ONNX Runtime's arena, and (for the first model only) shared libraries loaded then. Activation
memory that grows later with traffic is not in it; the process's own resident memory
(process_resident_memory_bytes, /info's resident_memory_bytes) is the whole."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

# ONNX external-data file names beside a graph: optimum's and torch.onnx's (model.onnx_data),
# onnx.save's as our quantizer calls it (model.onnx.data).
_EXTERNAL_DATA_SUFFIXES = ("_data", ".data")


@dataclass(frozen=True)
class ModelMemory:
    graph_bytes: int  # the served graph file and its external data, on disk
    load_rss_delta_bytes: int  # resident memory the process gained while loading this model


def resident_bytes() -> int:
    """The process's resident set size now."""
    return int(psutil.Process().memory_info().rss)


def graph_bytes(graph: Path) -> int:
    files = [graph, *(graph.with_name(graph.name + suffix) for suffix in _EXTERNAL_DATA_SUFFIXES)]
    return sum(path.stat().st_size for path in files if path.is_file())
