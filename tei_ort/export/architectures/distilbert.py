"""DistilBERT: BERT without token types."""

from tei_ort.export.architectures.family import Family

FAMILIES = (Family("distilbert", "DistilBert", False, position_offset=0, fusion_model_type="bert"),)
