"""DeBERTa-v2/v3 (model_type deberta-v2): disentangled relative-position attention, no absolute
positions (v3: position_biased_input false) and no token types (v3: type_vocab_size 0; a
checkpoint with token types fails the graph's input check with a clear error). TEI serves its
classifiers and cross-encoder re-rankers; ORT's BERT fusion does not match its attention."""

from tei_ort.export.architectures.family import MODEL, SEQUENCE_CLASSIFICATION, Family

FAMILIES = (
    Family(
        "deberta-v2",
        "DebertaV2",
        uses_token_type_ids=False,
        position_offset=0,
        fusion_model_type="bert",
        heads=(MODEL, SEQUENCE_CLASSIFICATION),
    ),
)
