"""GTE (model_type new; Alibaba-NLP gte-*-en-v1.5, gte-multilingual-base and its re-ranker):
rotary positions with NTK scaling, a GeGLU MLP, post-layer-norm. Its modelling code lives on the
hub (auto_map -> Alibaba-NLP/new-impl) and is never run: gte_model.py is our own module, loading
the checkpoint's tensor names."""

from tei_ort.export.architectures.family import MODEL, SEQUENCE_CLASSIFICATION, Family

FAMILIES = (
    Family(
        "new",
        "New",
        # Token types are constant zero in every GTE checkpoint we know of (type_vocab_size 0 or
        # 1); gte_model refuses a checkpoint with more, rather than ignoring them.
        uses_token_type_ids=False,
        position_offset=0,
        fusion_model_type="bert",
        heads=(MODEL, SEQUENCE_CLASSIFICATION),
        # gte-multilingual-base names its token-classification (sparse) head; its files hold the
        # encoder that serves its dense embeddings.
        encoder_aliases=("NewForTokenClassification", "NewForMaskedLM"),
        own_module="tei_ort.export.architectures.gte_model",
    ),
)
