"""The ONNX Runtime layer shared by the server and scripts: load a model package, run padded
batches on the CPU or CUDA execution provider, shape the outputs."""

from tei_ort.runtime.model import Model, RuntimeOptions
from tei_ort.runtime.providers import Provider

__all__ = ["Model", "Provider", "RuntimeOptions"]
