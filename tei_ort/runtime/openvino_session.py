"""One OpenVINO compiled model over a package's fp32 ONNX graph, on the CPU, at the inference
precision its variant names (bf16: AMX / AVX512_BF16 matrix units; fp32). Same interface as
GraphSession: `run(feeds)` returns the graph's float32 output.

OpenVINO reads the fused graph's com.microsoft operators (Attention, SkipLayerNormalization,
BiasGelu, EmbedLayerNormalization) itself.

Streams (opt-in: `tei-serve --openvino-streams 2`; default one LATENCY compile, as before): with two
or more threads, a graph under STREAMS_MAX_GRAPH_BYTES compiles with two CPU streams (PERFORMANCE_HINT THROUGHPUT, NUM_STREAMS 2), each its own threads and infer request,
where one request on every thread (LATENCY) made each operator wait for the slowest thread. `run`
is thread-safe: a caller takes a free request, so the engine's two forward threads
(`parallel_runs`) keep both streams busy with whole batches under load. A caller that finds the
session idle takes both: a batch of two rows or more is split over the streams at once, and a
single row runs on a second, LATENCY compile of the graph (all threads, on the calling thread),
since a one-text request on one stream's thread ran at about 0.5-0.6x the speed through the
server (1 thread, and a hand-off to the stream's thread; the second compile costs the bf16
weights once more, +42 MB for MiniLM). Larger graphs keep one LATENCY compile, as before.
Measured on the 2-core Xeon [x86-amx], shared, MiniLM (README's figures by CPU class;
`scripts/openvino_settings_study.py`, `scripts/server_builds_ab.py`). Why not the default: in the
same A/B at load ~3 (2026-12-01, docs/measurements/2026-12-01-cpu-amx/server-ab-lead.txt) the
streams build served one-text requests at 0.75x (c=1) and 0.79x (c=8) of the LATENCY build, for
1.03x at c=32 x 1 and 1.14x at c=128 x 32: bulk throughput bought with the short-query latency.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

from tei_ort.errors import BackendError, PackageError, ProviderUnavailable
from tei_ort.runtime.padding import Feeds
from tei_ort.runtime.providers import Provider

logger = logging.getLogger(__name__)

PRECISION = {"bf16": "bf16", "fp32": "f32"}  # our variant -> INFERENCE_PRECISION_HINT
RUNTIME_CACHE_SHAPES = 256
# Graphs larger than this (file + external data) keep one LATENCY compile: a second compile for
# lone single rows would hold their weights twice, and their operators are big enough to keep
# every thread busy.
STREAMS_MAX_GRAPH_BYTES = 1 << 30


class OpenVINOSession:
    def __init__(
        self,
        graph: Path,
        variant: str,
        output_name: str,
        threads: int | None = None,
        streams: int = 1,
    ) -> None:
        """`streams`: CPU streams when there are threads for them (see the module docstring);
        1, one LATENCY compile."""
        import openvino

        if not graph.is_file():
            raise PackageError(f"{graph}: not found")
        if variant not in PRECISION:
            raise PackageError(
                f"OpenVINO runs the {', '.join(PRECISION)} variants, not {variant!r}"
            )
        streams = min(streams, threads or _physical_cores())
        if _graph_bytes(graph) > STREAMS_MAX_GRAPH_BYTES:
            streams = 1
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": PRECISION[variant],
            # Kernels compiled per input shape, kept up to this many shapes (~1 MB each; the
            # default, 5,000, let memory grow by gigabytes). Model.forward pads lengths to
            # multiples of 16, so a model's hot shapes fit.
            "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_SHAPES,
        }
        if streams > 1:
            config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams})
        else:
            config["PERFORMANCE_HINT"] = "LATENCY"  # one request at a time, all threads on it
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        core = openvino.Core()
        try:
            model = core.read_model(str(graph))
            if variant == "bf16":
                _weights_to_fp16(model)
            compiled = core.compile_model(model, "CPU", config)
            alone = None
            if streams > 1:  # for a single row when nothing else runs (see the docstring)
                latency = {k: v for k, v in config.items() if k != "NUM_STREAMS"}
                alone = core.compile_model(model, "CPU", {**latency, "PERFORMANCE_HINT": "LATENCY"})
            del model
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
            precision = str(hint.get_type_name()) if hasattr(hint, "get_type_name") else str(hint)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise PackageError(f"{graph}: OpenVINO could not compile it ({exc})") from exc
        # Never assumed: without native bfloat16 OpenVINO silently computes f32 (and reports it).
        if precision != PRECISION[variant]:
            raise ProviderUnavailable(
                f"OpenVINO compiled {graph.name} at {precision}, not {PRECISION[variant]}: this "
                "CPU has no native bfloat16 (AMX or AVX512_BF16); use --provider cpu"
            )
        self.precision = precision
        self.provider = Provider.OPENVINO
        self.output_name = output_name
        self.input_names = frozenset(i.get_any_name() for i in compiled.inputs)
        self._output = compiled.output(output_name)
        # Forwards that can run at once: the engine gives the model this many forward threads.
        self.parallel_runs = streams
        self._free = [compiled.create_infer_request() for _ in range(streams)]
        self._free_changed = threading.Condition()
        self._alone = (
            None if alone is None else (alone.create_infer_request(), alone.output(output_name))
        )
        logger.debug(
            "compiled %s with OpenVINO at %s, %d stream(s)", graph.name, PRECISION[variant], streams
        )

    def run(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        rows = len(next(iter(feeds.values())))
        taken = self._take()
        try:
            if rows == 1 and len(taken) == self.parallel_runs and self._alone is not None:
                alone, output = self._alone  # idle: every stream's slot is held meanwhile
                result = alone.infer(feeds)
                return np.array(result[output], dtype=np.float32)
            requests = taken[:rows]  # never more parts than rows
            if len(requests) == 1:
                result = requests[0].infer(feeds)
                # infer() returns views of the request's buffers: copy before the next call.
                return np.array(result[self._output], dtype=np.float32)
            cuts = [rows * k // len(requests) for k in range(len(requests) + 1)]
            for request, start, end in zip(requests, cuts, cuts[1:], strict=False):
                request.start_async({k: v[start:end] for k, v in feeds.items()})
            for request in requests:
                request.wait()
            # Every output of these graphs has the batch first: (rows, ...) from the parts.
            parts = [request.get_tensor(self._output).data for request in requests]
            return np.concatenate(parts).astype(np.float32, copy=False)
        except Exception as exc:  # OpenVINO raises RuntimeError and friends
            raise BackendError(f"forward pass failed: {exc}") from exc
        finally:
            with self._free_changed:
                self._free += taken
                self._free_changed.notify_all()

    def _take(self) -> list[Any]:
        """Every infer request when all are free (the session is idle), else one free one."""
        with self._free_changed:
            self._free_changed.wait_for(lambda: bool(self._free))
            count = len(self._free) if len(self._free) == self.parallel_runs else 1
            taken, self._free = self._free[:count], self._free[count:]
            return taken


def _graph_bytes(graph: Path) -> int:
    """The graph file and its ONNX external data beside it (`<graph>.data`), in bytes."""
    data = graph.with_name(graph.name + ".data")
    return graph.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def _physical_cores() -> int:
    """The cores OpenVINO runs on by default (one thread per physical core)."""
    return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def _weights_to_fp16(model: Any) -> None:
    """Store the graph's fp32 constants as fp16 before compiling. OpenVINO keeps the constants it
    read beside the bf16 copies it computes with: all-mpnet-base-v2 held 663 MB after compiling,
    294 MB with this. bf16 arithmetic rounds the weights to 8 bits of mantissa anyway; fp16 keeps
    11. The export validates the bf16 variant through this same path."""
    try:
        from openvino._offline_transformations import compress_model_transformation
    except ImportError:  # a release without it: keep the fp32 constants (more memory, same output)
        return
    compress_model_transformation(model)
