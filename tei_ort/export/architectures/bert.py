"""BERT (model_type bert): token types, absolute positions from 0."""

from tei_ort.export.architectures.family import Family

FAMILIES = (
    Family("bert", "Bert", uses_token_type_ids=True, position_offset=0, fusion_model_type="bert"),
)
