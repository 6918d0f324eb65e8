"""Export recipes: the one table from a Hugging Face architecture (config.json `architectures[0]`)
to how it is exported, fused and served. Adding an architecture is adding a family row here.

A recipe is a family (what the encoder is: token types, position-id offset, fusion type, the head
names transformers gives it) crossed with a head (what the graph outputs for a task).
"""

from __future__ import annotations

from dataclasses import dataclass

from tei_ort.errors import UnsupportedModel
from tei_ort.package import Task


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json model_type
    class_prefix: str  # transformers class names start with this: "Bert" -> BertModel, ...
    uses_token_type_ids: bool  # whether the exported graph takes token_type_ids
    # Position ids start after the padding index in RoBERTa-style embeddings, so the longest input
    # is max_position_embeddings - 2 (514 -> 512), not max_position_embeddings.
    position_offset: int
    # model_type for onnxruntime.transformers.optimizer; its "bert" fusions cover the BERT-style
    # encoders (RoBERTa, DistilBERT, ...): same attention/layer-norm/gelu subgraphs.
    fusion_model_type: str


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


FAMILIES: tuple[Family, ...] = (
    Family("bert", "Bert", uses_token_type_ids=True, position_offset=0, fusion_model_type="bert"),
    Family("roberta", "Roberta", False, position_offset=2, fusion_model_type="bert"),
    Family("xlm-roberta", "XLMRoberta", False, position_offset=2, fusion_model_type="bert"),
    Family("camembert", "Camembert", False, position_offset=2, fusion_model_type="bert"),
    Family("distilbert", "DistilBert", False, position_offset=0, fusion_model_type="bert"),
    Family("mpnet", "MPNet", False, position_offset=2, fusion_model_type="bert"),
)

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

RECIPES: dict[str, Recipe] = {
    family.class_prefix + head.class_suffix: Recipe(
        family.class_prefix + head.class_suffix, family, head
    )
    for family in FAMILIES
    for head in (BASE, SEQUENCE_CLASSIFICATION, MASKED_LM)
}
FAMILIES_BY_MODEL_TYPE: dict[str, Family] = {family.model_type: family for family in FAMILIES}


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
    return RECIPES[family.class_prefix + head.class_suffix]


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
