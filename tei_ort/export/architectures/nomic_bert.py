"""NomicBERT (model_type nomic_bert; nomic-ai/nomic-embed-text-v1 and v1.5): rotary positions,
SwiGLU, no biases, post-layer-norm, 8,192 positions (n_positions). Its modelling code lives on
the hub (auto_map -> nomic-ai/nomic-bert-2048) and is never run: nomic_bert_model.py is our own
module, loading the checkpoint's tensor names."""

from tei_ort.export.architectures.family import MODEL, Family

FAMILIES = (
    Family(
        "nomic_bert",
        "NomicBert",
        uses_token_type_ids=True,  # type_vocab_size 2, BERT's tokenizer; type 0 for embeddings
        position_offset=0,  # rotary: n_positions is the limit
        fusion_model_type="bert",
        heads=(MODEL,),
        # nomic-bert-2048 names its pre-training class; its files hold the encoder ("bert.").
        encoder_aliases=("NomicBertForPreTraining",),
        own_module="tei_ort.export.architectures.nomic_bert_model",
    ),
)
