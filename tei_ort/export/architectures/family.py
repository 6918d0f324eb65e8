"""What an encoder family is, as the export needs it: one frozen record per family, defined in the
family's own module (bert.py, roberta.py, ...) and collected by architectures/__init__.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Head class suffixes as transformers names them: BertModel, BertForSequenceClassification, ...
MODEL = "Model"
SEQUENCE_CLASSIFICATION = "ForSequenceClassification"
MASKED_LM = "ForMaskedLM"
ALL_HEADS = (MODEL, SEQUENCE_CLASSIFICATION, MASKED_LM)


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
    heads: tuple[str, ...] = ALL_HEADS  # the head class suffixes this family exports
    # Other architecture names checkpoints of this family carry, read as the bare encoder
    # (JinaBERT's embedding models name their pre-training class, JinaBertForMaskedLM).
    encoder_aliases: tuple[str, ...] = ()
    # None: transformers implements the family and optimum exports it. Otherwise the module under
    # tei_ort.export.architectures that builds our own torch model from the checkpoint's tensors
    # (families whose modelling code lives on the hub, which is never run).
    own_module: str | None = None
    # Applied to optimum's raw graph (an onnx.ModelProto) before fusion, when the family's export
    # holds a construct a runtime cannot take; returns how many places it changed.
    raw_graph_fix: Callable[[Any], int] | None = None
