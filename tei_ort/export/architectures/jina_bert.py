"""JinaBERT v2 (model_type bert with position_embedding_type alibi; jina-embeddings-v2-*-en,
jina-reranker-v1-*-en, and the qk-post-norm code variant jina-embeddings-v2-base-code). Its
modelling code lives on the hub (auto_map -> jinaai/jina-bert-implementation or
jinaai/jina-bert-v2-qk-post-norm) and is never run: jina_bert_model.py is our own module, loading
the checkpoint's tensor names."""

from tei_ort.export.architectures.family import MODEL, SEQUENCE_CLASSIFICATION, Family

FAMILIES = (
    Family(
        "bert",
        "JinaBert",
        uses_token_type_ids=True,
        position_offset=0,  # no position embeddings: max_position_embeddings (8,192) is the limit
        fusion_model_type="bert",
        heads=(MODEL, SEQUENCE_CLASSIFICATION),
        # The embedding checkpoints name their pre-training class; their files hold the encoder.
        encoder_aliases=("JinaBertForMaskedLM",),
        own_module="tei_ort.export.architectures.jina_bert_model",
    ),
)
