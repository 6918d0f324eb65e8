"""What each served model costs in memory (issue 11): the served graph's bytes on disk and how
much the process's resident memory grew while the model was loaded (cli.build) and while its
engine warmed up (the app's start, before the socket listens).

The growth is measured around each model in turn, so it holds what that model brought into the
process: ONNX Runtime's session and weights, the tokenizer, the activations of the variant and
batch trials and of the warm-up forward that ONNX Runtime's arena keeps, and (for the first model
only) shared libraries loaded then. Activation memory that grows later with traffic is not in it;
the process's own resident memory (process_resident_memory_bytes, /info's
resident_memory_bytes) is the whole."""

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
    warm_up_rss_delta_bytes: int = 0  # ... and while its engine started and warmed up

    @property
    def rss_delta_bytes(self) -> int:
        return self.load_rss_delta_bytes + self.warm_up_rss_delta_bytes


def resident_bytes() -> int:
    """The process's resident set size now."""
    return int(psutil.Process().memory_info().rss)


def grown_since(before: int) -> int:
    """How much resident memory the process gained since `before` (a resident_bytes() reading);
    0 when it shrank: a small model can load into pages an earlier one's trials freed, and a
    negative cost would be no one's."""
    return max(0, resident_bytes() - before)


def graph_bytes(graph: Path) -> int:
    files = [graph, *(graph.with_name(graph.name + suffix) for suffix in _EXTERNAL_DATA_SUFFIXES)]
    return sum(path.stat().st_size for path in files if path.is_file())
