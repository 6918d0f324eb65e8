"""The architecture registry, keyed like vLLM's by config.json `architectures`: one module per
family, each exporting FAMILIES. Adding a family is a new module and one line in MODULES."""

from __future__ import annotations

from tei_ort.export.architectures import (
    bert,
    deberta_v2,
    decoders,
    distilbert,
    gte,
    jina_bert,
    modernbert,
    mpnet,
    nomic_bert,
    roberta,
)
from tei_ort.export.architectures.family import Family

MODULES = (
    bert,
    roberta,
    distilbert,
    mpnet,
    deberta_v2,
    modernbert,
    jina_bert,
    gte,
    nomic_bert,
    decoders,
)
FAMILIES: tuple[Family, ...] = tuple(family for module in MODULES for family in module.FAMILIES)

__all__ = ["FAMILIES", "Family"]
