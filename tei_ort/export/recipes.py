"""Export recipes: the one table from a Hugging Face architecture (config.json `architectures[0]`)
to how it is exported, fused and served.

A recipe is a family (what the encoder is: token types, position-id offset, fusion type, the head
names transformers gives it; one module per family in tei_ort.export.architectures) crossed with a
head (what the graph outputs for a task).
"""

from __future__ import annotations

from dataclasses import dataclass

from tei_ort.errors import UnsupportedModel
from tei_ort.export import architectures
from tei_ort.export.architectures.family import Family
from tei_ort.package import Task


@dataclass(frozen=True)
class Head:
    class_suffix: str  # "Model", "ForSequenceClassification", "ForMaskedLM"
    optimum_task: str  # task name for optimum.exporters.onnx.main_export
    output_name: str  # the package graph's one output, as the package format names it
    # optimum's output for the task; differs from output_name when export appends nodes (SPLADE)
    export_output: str


@dataclass(frozen=True)
class Recipe:
    architecture: str  # e.g. "BertForSequenceClassification"
    family: Family
    head: Head

    @property
    def model_type(self) -> str:
        return self.family.model_type


FAMILIES: tuple[Family, ...] = architectures.FAMILIES

BASE = Head("Model", "feature-extraction", "last_hidden_state", "last_hidden_state")
SEQUENCE_CLASSIFICATION = Head(
    "ForSequenceClassification", "text-classification", "logits", "logits"
)
# The package graph ends in the SPLADE max-pool appended by onnx_export, not in the MLM logits.
MASKED_LM = Head("ForMaskedLM", "fill-mask", "sparse_embedding", "logits")

# Which head serves a task: embeddings use the bare encoder even when the checkpoint carries a head.
TASK_HEADS: dict[Task, Head] = {
    Task.EMBEDDING: BASE,
    Task.SPARSE_EMBEDDING: MASKED_LM,
    Task.CLASSIFICATION: SEQUENCE_CLASSIFICATION,
    Task.RERANKER: SEQUENCE_CLASSIFICATION,
}

HEADS: tuple[Head, ...] = (BASE, SEQUENCE_CLASSIFICATION, MASKED_LM)

RECIPES: dict[str, Recipe] = {
    family.class_prefix + head.class_suffix: Recipe(
        family.class_prefix + head.class_suffix, family, head
    )
    for family in FAMILIES
    for head in HEADS
    if head.class_suffix in family.heads
}
# Architecture names a family's checkpoints carry that mean its bare encoder.
RECIPES |= {
    alias: Recipe(alias, family, BASE) for family in FAMILIES for alias in family.encoder_aliases
}
FAMILIES_BY_MODEL_TYPE: dict[str, Family] = {}
for _family in FAMILIES:  # the first family of a model type is its default (bert: BERT)
    FAMILIES_BY_MODEL_TYPE.setdefault(_family.model_type, _family)


def supported() -> str:
    return ", ".join(sorted(RECIPES))


def lookup(architecture: str) -> Recipe:
    try:
        return RECIPES[architecture]
    except KeyError:
        raise UnsupportedModel(
            f"architecture {architecture!r} is not supported; supported: {supported()}"
        ) from None


def for_task(architecture: str, task: Task) -> Recipe:
    """The recipe that exports `architecture`'s encoder with the head `task` needs
    (BertForMaskedLM exported for embeddings -> BertModel)."""
    family = lookup(architecture).family
    head = TASK_HEADS[task]
    recipe = RECIPES.get(family.class_prefix + head.class_suffix)
    if recipe is None or recipe.family is not family:
        raise UnsupportedModel(
            f"{architecture}: task {task.value} needs a {head.class_suffix} head, which the "
            f"{family.model_type} family does not export; it exports {', '.join(family.heads)}"
        )
    return recipe


def detect_task(architecture: str, num_labels: int, is_sentence_transformers: bool) -> Task:
    """The task a checkpoint was trained for, as TEI reads it: sentence-transformers files mean
    embeddings; a sequence classifier with one label is a re-ranker; a masked LM means SPLADE."""
    head = lookup(architecture).head
    if is_sentence_transformers:
        return Task.EMBEDDING
    if head is SEQUENCE_CLASSIFICATION:
        return Task.RERANKER if num_labels == 1 else Task.CLASSIFICATION
    if head is MASKED_LM:
        return Task.SPARSE_EMBEDDING
    return Task.EMBEDDING
