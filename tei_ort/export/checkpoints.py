"""PyTorch pickle checkpoints (pytorch_model.bin, its shards, a Dense layer's .bin) are checked
before anything loads them: each is opened with `torch.load(weights_only=True)`, PyTorch's
restricted unpickler, which builds tensors and plain containers and refuses any other global (the
way a malicious pickle runs code), so the payload is never called. A file that passes holds only
what that unpickler allows, which keeps every later loader safe whatever its own setting
(transformers and sentence-transformers also pass weights_only=True, as writer.py does).
safetensors files hold no code and need no check."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path

from tei_ort.errors import PackageError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check(root: Path, files: Iterable[str]) -> None:
    """Refuse the first pickle checkpoint among `files` (relative to `root`) that is not plain
    tensors, naming it."""
    import torch

    for relative in files:
        if not relative.endswith(PICKLE_SUFFIXES):
            continue
        try:
            # mmap: the check reads the pickle, not the tensor bytes (zip checkpoints, torch>=1.6).
            torch.load(root / relative, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            raise PackageError(
                f"{relative}: refused, its pickle calls code other than building tensors "
                f"({_first_line(exc)}); tei_ort never runs code from a checkpoint. Convert it to "
                "safetensors with a tool you trust, or use a repo that ships model.safetensors"
            ) from exc
        except (RuntimeError, OSError, ValueError) as exc:
            raise PackageError(f"{relative}: not a readable PyTorch checkpoint ({exc})") from exc


def _first_line(exc: Exception) -> str:
    """torch's message: a paragraph of advice, then the refused global on a later line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    refused = [line for line in lines if "Unsupported global" in line or "GLOBAL" in line]
    return (refused or lines or ["weights_only unpickler refused it"])[0][:200]
