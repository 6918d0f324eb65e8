"""tei_ort: export hub models to validated ONNX packages and serve them with TEI's API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tei-ort")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
