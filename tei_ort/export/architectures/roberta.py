"""RoBERTa and the models built on its code (XLM-RoBERTa, CamemBERT): no token types, positions
start after the padding index (offset 2)."""

from tei_ort.export.architectures.family import Family

FAMILIES = (
    Family("roberta", "Roberta", False, position_offset=2, fusion_model_type="bert"),
    Family("xlm-roberta", "XLMRoberta", False, position_offset=2, fusion_model_type="bert"),
    Family("camembert", "Camembert", False, position_offset=2, fusion_model_type="bert"),
)
