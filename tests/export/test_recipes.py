from __future__ import annotations

import pytest

from tei_ort.errors import UnsupportedModel
from tei_ort.export import recipes
from tei_ort.package import Task

FAMILY_PREFIXES = ("Bert", "Roberta", "XLMRoberta", "Camembert", "DistilBert", "MPNet")


def test_table_covers_every_family_and_head() -> None:
    expected = {
        p + s
        for p in FAMILY_PREFIXES
        for s in ("Model", "ForSequenceClassification", "ForMaskedLM")
    }
    expected |= {
        p + s
        for p in ("DebertaV2", "ModernBert", "JinaBert", "New")
        for s in ("Model", "ForSequenceClassification")
    }
    # Names real checkpoints carry for their bare encoder (JinaBERT's embedding models, mGTE).
    expected |= {"JinaBertForMaskedLM", "NewForTokenClassification", "NewForMaskedLM"}
    # Every encoder head; other families (the decoder embedders) add their own rows.
    assert expected <= set(recipes.RECIPES)
    assert recipes.lookup("XLMRobertaForMaskedLM").family.position_offset == 2
    assert recipes.lookup("BertModel").family.uses_token_type_ids
    assert not recipes.lookup("DistilBertModel").family.uses_token_type_ids


def test_a_head_the_family_does_not_export_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedModel, match="deberta-v2 family does not export"):
        recipes.for_task("DebertaV2ForSequenceClassification", Task.SPARSE_EMBEDDING)
    assert recipes.lookup("ModernBertModel").family.model_type == "modernbert"
    # JinaBERT's embedding checkpoints name JinaBertForMaskedLM: read as embeddings.
    assert recipes.detect_task("JinaBertForMaskedLM", 0, False) is Task.EMBEDDING
    assert recipes.for_task("JinaBertForMaskedLM", Task.EMBEDDING).architecture == "JinaBertModel"
    # model_type bert without `architectures` stays BERT, not JinaBERT.
    assert recipes.FAMILIES_BY_MODEL_TYPE["bert"].class_prefix == "Bert"


def test_unsupported_architecture_lists_the_supported_ones() -> None:
    with pytest.raises(UnsupportedModel) as info:
        recipes.lookup("T5ForConditionalGeneration")
    message = str(info.value)
    assert "T5ForConditionalGeneration" in message
    assert all(
        name in message
        for name in ("BertModel", "MPNetForMaskedLM", "CamembertForSequenceClassification")
    )


@pytest.mark.parametrize(
    ("architecture", "labels", "is_st", "task"),
    [
        ("BertModel", 0, True, Task.EMBEDDING),
        ("BertForMaskedLM", 0, True, Task.EMBEDDING),  # an ST model saved with its MLM head
        ("BertModel", 0, False, Task.EMBEDDING),
        ("RobertaForSequenceClassification", 1, False, Task.RERANKER),
        ("RobertaForSequenceClassification", 3, False, Task.CLASSIFICATION),
        ("DistilBertForMaskedLM", 0, False, Task.SPARSE_EMBEDDING),
    ],
)
def test_detect_task(architecture: str, labels: int, is_st: bool, task: Task) -> None:
    assert recipes.detect_task(architecture, labels, is_st) is task


def test_for_task_swaps_the_head() -> None:
    assert recipes.for_task("BertForMaskedLM", Task.EMBEDDING).architecture == "BertModel"
    assert (
        recipes.for_task("MPNetModel", Task.SPARSE_EMBEDDING).head.output_name == "sparse_embedding"
    )
    assert recipes.for_task("MPNetModel", Task.SPARSE_EMBEDDING).head.export_output == "logits"
    assert (
        recipes.for_task("CamembertModel", Task.RERANKER).head.optimum_task == "text-classification"
    )
