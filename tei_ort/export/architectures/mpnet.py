"""MPNet: RoBERTa-style positions plus a relative-position bias in attention, which ORT's BERT
attention fusion does not match (its attention stays unfused)."""

from tei_ort.export.architectures.family import Family

FAMILIES = (Family("mpnet", "MPNet", False, position_offset=2, fusion_model_type="bert"),)
