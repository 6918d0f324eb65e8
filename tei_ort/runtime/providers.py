"""Execution providers: one table from our provider name to ONNX Runtime's name and options.

"auto" picks CUDA when onnxruntime-gpu sees a GPU; else OpenVINO when the `openvino` package is
installed and the CPU computes bfloat16 natively (AMX or AVX512_BF16); else ONNX Runtime's CPU EP.
An explicit "cuda" or "openvino" on a machine without it is an error, not a silent fallback: a user
who asked for a GPU should know they lack one.

OpenVINO is not an ONNX Runtime execution provider here: onnxruntime-openvino and onnxruntime-gpu
are two builds of one module and cannot be installed together, so the native `openvino` package
compiles the package's fp32 graph itself (tei_ort.runtime.openvino_session).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import functools
import importlib.util
import io
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort

from tei_ort.errors import ProviderUnavailable
from tei_ort.runtime.cpu import CpuInfo, IsaClass, this_cpu


class Provider(str, enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"
    OPENVINO = "openvino"


@dataclass(frozen=True)
class ProviderSpec:
    ort_name: str  # ONNX Runtime's name; "" for OpenVINO, which ONNX Runtime does not run here
    # Variants to prefer on this provider, best first (fidelity permitting).
    preferred_variants: tuple[str, ...]
    uses_io_binding: bool
    # Padded tokens per forward batch the batcher aims for (below --max-batch-tokens). On the CPU
    # small batches run faster per token (activations stay in cache): MiniLM on 2 cores ran
    # ~2x the tokens/s at 2,048 than at 16,384 (scripts/batch_tokens_study.py). None: no target.
    target_batch_tokens: int | None
    # Padded lengths are rounded up to a multiple of this. OpenVINO compiles and caches kernels
    # per input shape (~7 ms and ~1 MB each): with every length its own shape, a server's resident
    # memory grew 353 -> 1,738 MB in four minutes; multiples of 16 bound the shapes.
    pad_multiple: int = 1
    # Batch rows are rounded up to the next of these sizes (filler rows), and every (rows,
    # length) bucket that fits the batch budget is run once before the server listens. For
    # runtimes where each new input shape costs a slow first run. Empty: rows as they come.
    row_buckets: tuple[int, ...] = ()
    # A batch stops growing before its padding exceeds this share of its real tokens (the
    # engine's max_padding_ratio; any batch may also carry queue.PADDING_SLACK_TOKENS). On the
    # CPU a padded token costs as much as a real one and bigger batches are no cheaper per token,
    # so padding is pure loss: 8 one-text requests padded to their longest ran at 2.45x their
    # real tokens, and c=8 x 1 text fell to a third of c=1 (scripts/concurrency_study.py; 0.25
    # set on an AMX Xeon against no cap). On a GPU bigger batches pay: no cap. Per CPU class
    # where measured: PADDING_BY_CLASS.
    max_padding_ratio: float | None = 0.25


PROVIDERS: dict[Provider, ProviderSpec] = {
    Provider.CPU: ProviderSpec(
        "CPUExecutionProvider",
        ("int8", "int8-w7", "int8-u8", "int8-wo", "fp32"),
        uses_io_binding=False,
        target_batch_tokens=2048,
    ),
    # Each new (batch, length) shape cost 40-50 ms on its first forward on an H200
    # (scripts/cuda_cold_study.py): lengths in multiples of 32 and rows in powers of two bound
    # MiniLM's shapes to ~70 under a 16,384-token budget, all run before listening.
    Provider.CUDA: ProviderSpec(
        "CUDAExecutionProvider",
        ("fp16", "fp32"),
        uses_io_binding=True,
        target_batch_tokens=None,
        pad_multiple=32,
        row_buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        max_padding_ratio=None,
    ),
    # bf16 on AMX: MiniLM 28,750 tok/s against ORT int8's 16,990 and fp32's 8,190, at cosine
    # 0.99996 to fp32 (scripts/openvino_study.py). Only bf16: OpenVINO at f32 (1.2x ORT fp32) is
    # slower than ORT's int8, so without a validated bf16 variant "auto" keeps the CPU EP.
    Provider.OPENVINO: ProviderSpec(
        "", ("bf16",), uses_io_binding=False, target_batch_tokens=2048, pad_multiple=16
    ),
}


# The CPU EP's padding cap on the CPU classes where another value was measured faster than the
# provider's. x86-avx2 (a 2-core AMD EPYC Zen 3): one-text requests at c=4 to 128 ran 1.03-1.08x
# the real tokens/s at 0.1 against 0.25 on int8-w7 and 1.00-1.07x on fp32; 0.5 and no cap were
# slower; 32-text requests 0.98-1.02x (docs/measurements/2026-12-01-cpu-avx2/padding-cap-study.txt).
# A forward's fixed cost is worth ~9 tokens there (int8-w7, one thread), likely more where
# tokens are cheaper (AMX; not measured), so the value is kept to the class it was measured on.
PADDING_BY_CLASS: dict[tuple[Provider, IsaClass], float] = {(Provider.CPU, IsaClass.X86_AVX2): 0.1}


def max_padding_ratio(provider: Provider, cpu: CpuInfo | None = None) -> float | None:
    """The padding cap the engine batches with for `provider` on this CPU (or `cpu`)."""
    isa_class = (cpu or this_cpu()).isa_class
    return PADDING_BY_CLASS.get((provider, isa_class), PROVIDERS[provider].max_padding_ratio)


def available() -> set[Provider]:
    names = set(ort.get_available_providers())
    found = {p for p, spec in PROVIDERS.items() if spec.ort_name in names and _usable(p)}
    if openvino_bf16():
        found.add(Provider.OPENVINO)
    return found


def _usable(provider: Provider) -> bool:
    # onnxruntime-gpu lists CUDAExecutionProvider even on machines with no GPU or no CUDA runtime;
    # ask the CUDA runtime itself how many devices it sees.
    return provider is not Provider.CUDA or _cuda_device_count() > 0


@functools.cache
def openvino_bf16() -> bool:
    """The CPU has native bfloat16 by its own features (AMX or AVX512_BF16; tei_ort.runtime.cpu)
    and the `openvino` package is installed and its CPU plugin says so too. OpenVINOSession then
    confirms it from the precision each compiled model reports."""
    if not this_cpu().has_native_bf16 or importlib.util.find_spec("openvino") is None:
        return False
    try:
        import openvino

        capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # a broken install or no CPU plugin: not usable
        return False
    return "BF16" in capabilities


def _cuda_device_count() -> int:
    cudart = _load_cudart()
    if cudart is None:
        return 0
    count = ctypes.c_int(0)
    if cudart.cudaGetDeviceCount(ctypes.byref(count)) == 0:
        return int(count.value)
    return 0


_CUDART_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")


def _load_cudart() -> ctypes.CDLL | None:
    """The CUDA runtime from the loader's path (a CUDA image, LD_LIBRARY_PATH), else from the
    nvidia-* pip packages through onnxruntime's own preload_dlls (pip installs of CUDA)."""
    for attempt in range(2):
        for lib in _CUDART_NAMES:
            try:
                return ctypes.CDLL(lib)
            except OSError:
                continue
        if attempt == 0 and not _preload_pip_cuda():
            return None
    return None


def _preload_pip_cuda() -> bool:
    preload = getattr(ort, "preload_dlls", None)
    if preload is None or "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    # preload_dlls prints each library it cannot find; on a machine without CUDA that is noise.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            preload(cuda=True, cudnn=True)
        except Exception:  # it raises on odd installs; no CUDA then
            return False
    return True


def engine_name(provider: Provider) -> str:
    """The engine and version that runs `provider`'s graphs, as validations record it."""
    if provider is Provider.OPENVINO:
        import openvino

        return f"openvino {openvino.__version__}"
    return f"onnxruntime {ort.__version__}"


# What "auto" tries, best first (the CPU EP is always there).
AUTO_ORDER = (Provider.CUDA, Provider.OPENVINO, Provider.CPU)


def resolve(name: str) -> Provider:
    """Map a user's choice ("auto", "cpu", "cuda") to a provider that can run here."""
    if name == "auto":
        found = available()
        return next(p for p in AUTO_ORDER if p in found)
    try:
        provider = Provider(name.lower())
    except ValueError as exc:
        choices = ", ".join(["auto", *(p.value for p in Provider)])
        raise ProviderUnavailable(
            f"unknown execution provider {name!r}; choose one of {choices}"
        ) from exc
    if provider not in available():
        raise ProviderUnavailable(
            f"execution provider {provider.value!r} is not available here "
            f"(onnxruntime has {', '.join(ort.get_available_providers())}); "
            + _HOW_TO_GET[provider]
        )
    return provider


_HOW_TO_GET = {
    Provider.CPU: "",
    Provider.CUDA: "install onnxruntime-gpu with CUDA 13 and cuDNN 9 and check the GPU, "
    "or use --provider cpu",
    Provider.OPENVINO: "it needs the openvino package (pip install tei_ort[openvino]) and a CPU "
    "with bfloat16 (AMX or AVX512_BF16), or use --provider cpu",
}


def ort_providers(provider: Provider, device_id: int) -> list[Any]:
    spec = PROVIDERS[provider]
    if provider is Provider.CUDA:
        # use_tf32 off: ORT's default rounds fp32 MatMul inputs to TF32 (10-bit mantissa), which
        # moved a fp32 graph's outputs by up to 3e-4 on an H200 and breaks the fp32 variant's
        # validated fidelity; fp16 graphs do not use it.
        options = {"device_id": device_id, "use_tf32": 0}
        return [(spec.ort_name, options), "CPUExecutionProvider"]
    return [spec.ort_name]
