"""ModernBERT (model_type modernbert): rotary positions, GeGLU MLP, no biases, attention that
alternates between a sliding window (local_attention) and global every
global_attn_every_n_layers layers; 8,192 positions. Classifiers pool by `classifier_pooling`
(cls or mean) inside transformers' head, so the exported graph already ends in logits."""

from tei_ort.export.architectures.family import MODEL, SEQUENCE_CLASSIFICATION, Family

FAMILIES = (
    Family(
        "modernbert",
        "ModernBert",
        uses_token_type_ids=False,
        position_offset=0,
        fusion_model_type="bert",
        heads=(MODEL, SEQUENCE_CLASSIFICATION),
    ),
)
