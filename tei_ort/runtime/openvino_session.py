"""One OpenVINO compiled model over a package's fp32 ONNX graph, on the CPU, at the inference
precision its variant names (bf16: AMX / AVX512_BF16 matrix units; fp32). Same interface as
GraphSession: `run(feeds)` returns the graph's float32 output.

OpenVINO reads the fused graph's com.microsoft operators (Attention, SkipLayerNormalization,
BiasGelu, EmbedLayerNormalization) itself.

Streams: with two or more threads the model compiles with two CPU streams (PERFORMANCE_HINT
THROUGHPUT, NUM_STREAMS 2), each its own threads and infer request, where one request on every
thread (LATENCY) made each operator wait for the slowest thread. `run` is thread-safe: a caller
takes a free request, or both when both are free and the batch has two rows or more, and then
runs half the rows on each stream at once. So the engine's two forward threads (`parallel_runs`)
keep both streams busy with whole batches under load, and a lone caller (one request at a time,
the variant and batch-budget trials) still has every thread on its batch. On the 2-core Xeon
[x86-amx], shared, MiniLM, `scripts/openvino_settings_study.py`: whole batches on two streams
1.28-1.46x the real tokens/s of LATENCY at 1,024-2,048-token batches, a batch split over both
1.17-1.21x (median of interleaved rounds).
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
STREAMS = 2  # CPU streams when there are threads for them (see the module docstring)


class OpenVINOSession:
    def __init__(
        self, graph: Path, variant: str, output_name: str, threads: int | None = None
    ) -> None:
        import openvino

        if not graph.is_file():
            raise PackageError(f"{graph}: not found")
        if variant not in PRECISION:
            raise PackageError(
                f"OpenVINO runs the {', '.join(PRECISION)} variants, not {variant!r}"
            )
        streams = min(STREAMS, threads or _physical_cores())
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
        logger.debug(
            "compiled %s with OpenVINO at %s, %d stream(s)", graph.name, PRECISION[variant], streams
        )

    def run(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        rows = len(next(iter(feeds.values())))
        requests = self._take(rows)
        try:
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
                self._free += requests
                self._free_changed.notify_all()

    def _take(self, rows: int) -> list[Any]:
        """A free infer request, or all free ones (up to the rows) when more than one is."""
        with self._free_changed:
            self._free_changed.wait_for(lambda: bool(self._free))
            count = min(len(self._free), max(1, rows))
            taken, self._free = self._free[:count], self._free[count:]
            return taken


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
