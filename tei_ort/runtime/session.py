"""One ONNX Runtime session over one graph on one provider. On CUDA the inputs and the output go
through IO binding, so ORT copies each once and allocates the output on the device."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from tei_ort.errors import BackendError, PackageError, ProviderUnavailable
from tei_ort.runtime.padding import Feeds
from tei_ort.runtime.providers import PROVIDERS, Provider, ort_providers

logger = logging.getLogger(__name__)


class Session(Protocol):
    """What a Model runs its graph through: GraphSession (ONNX Runtime) or OpenVINOSession."""

    provider: Provider
    output_name: str
    input_names: frozenset[str]
    # Forwards that can run at once, each on its own threads (OpenVINO's CPU streams): the
    # server gives the model this many forward threads. ONNX Runtime's sessions: 1.
    parallel_runs: int

    def run(self, feeds: Feeds) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class SessionOptions:
    intra_op_threads: int | None = None  # None: ORT's default (one per physical core)
    inter_op_threads: int = 1
    # Busy-wait between operators. ORT's default is on; off measured faster on 2 shared cores
    # (MiniLM int8 32x128: 9,100 vs 5,800 tok/s; fp32 4,600 vs 4,050) because spinning threads
    # compete with every other thread of the process and of the machine.
    allow_spinning: bool = False
    device_id: int = 0


class GraphSession:
    parallel_runs = 1

    def __init__(
        self, graph: Path, provider: Provider, output_name: str, options: SessionOptions
    ) -> None:
        if not graph.is_file():
            raise PackageError(f"{graph}: not found")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = options.inter_op_threads
        if options.intra_op_threads is not None:
            so.intra_op_num_threads = options.intra_op_threads
        so.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if options.allow_spinning else "0"
        )
        try:
            self._session = ort.InferenceSession(
                str(graph), sess_options=so, providers=ort_providers(provider, options.device_id)
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph classes
            raise PackageError(f"{graph}: ONNX Runtime could not load it ({exc})") from exc
        placed = self._session.get_providers()
        if placed[0] != PROVIDERS[provider].ort_name:
            # ORT falls back to the CPU, with only a log line, when the CUDA EP cannot load.
            raise ProviderUnavailable(
                f"{PROVIDERS[provider].ort_name} could not be created (ONNX Runtime placed the "
                f"graph on {', '.join(placed)}); it needs CUDA 13 and cuDNN 9 libraries on the "
                "loader's path (LD_LIBRARY_PATH) or onnxruntime-gpu[cuda,cudnn], or use --provider cpu"
            )
        self.provider = provider
        self.output_name = output_name
        self.input_names = frozenset(i.name for i in self._session.get_inputs())
        self._device_id = options.device_id
        self._uses_io_binding = PROVIDERS[provider].uses_io_binding
        logger.debug("loaded %s on %s", graph.name, self._session.get_providers())

    def run(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        try:
            if self._uses_io_binding:
                output = self._run_bound(feeds)
            else:
                output = self._session.run([self.output_name], feeds)[0]
        except Exception as exc:  # ORT raises RuntimeException and friends
            raise BackendError(f"forward pass failed: {exc}") from exc
        return np.asarray(output, dtype=np.float32)

    def _run_bound(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.bind_output(self.output_name, "cuda", self._device_id)
        self._session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])
