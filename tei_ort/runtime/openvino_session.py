"""One OpenVINO compiled model over a package's fp32 ONNX graph, on the CPU, at the inference
precision its variant names (bf16: AMX / AVX512_BF16 matrix units; fp32). Same interface as
GraphSession: `run(feeds)` returns the graph's float32 output.

OpenVINO reads the fused graph's com.microsoft operators (Attention, SkipLayerNormalization,
BiasGelu, EmbedLayerNormalization) itself. One infer request, behind a lock: the engine calls from
its single forward thread, and the lock keeps scripts that call from several threads correct.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tei_ort.errors import BackendError, PackageError, ProviderUnavailable
from tei_ort.runtime.padding import Feeds
from tei_ort.runtime.providers import Provider

logger = logging.getLogger(__name__)

PRECISION = {"bf16": "bf16", "fp32": "f32"}  # our variant -> INFERENCE_PRECISION_HINT
RUNTIME_CACHE_SHAPES = 256


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
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": PRECISION[variant],
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time, all threads on it
            # Kernels compiled per input shape, kept up to this many shapes (~1 MB each; the
            # default, 5,000, let memory grow by gigabytes). Model.forward pads lengths to
            # multiples of 16, so a model's hot shapes fit.
            "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_SHAPES,
        }
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
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        logger.debug("compiled %s with OpenVINO at %s", graph.name, PRECISION[variant])

    def run(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        try:
            with self._lock:
                result = self._request.infer(feeds)
                # infer() returns views of the request's buffers: copy before the next call.
                return np.array(result[self._output], dtype=np.float32)
        except Exception as exc:  # OpenVINO raises RuntimeError and friends
            raise BackendError(f"forward pass failed: {exc}") from exc


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
