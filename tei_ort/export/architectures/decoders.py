"""Decoder-style embedders that transformers implements: Qwen3 (Qwen3-Embedding), Qwen2
(gte-Qwen2), Mistral (e5-mistral-7b-instruct), Llama, Gemma3 text (EmbeddingGemma). All export
through decoder_model.py: transformers' bare model, no KV cache, (input_ids, attention_mask) ->
last_hidden_state with dynamic axes. Pooling (last token; EmbeddingGemma: mean), Dense layers,
normalization and prompts come from the sentence-transformers files.

Their checkpoints name the causal LM class (Qwen3ForCausalLM) or the bare one (MistralModel);
both mean the bare decoder here, except a Qwen3ForCausalLM without sentence-transformers files:
Qwen3-Reranker (llm_rerank.py). *ForSequenceClassification checkpoints (a `score` Linear over
the last non-padding token, decoder_score.py) export as re-rankers (one label) or classifiers."""

from typing import Any

from tei_ort.export.architectures.family import MODEL, SEQUENCE_CLASSIFICATION, Family
from tei_ort.package import Pooling

OWN_MODULE = "tei_ort.export.architectures.decoder_model"


def _decoder(model_type: str, class_prefix: str, *, classifier: bool = True) -> Family:
    return Family(
        model_type,
        class_prefix,
        uses_token_type_ids=False,
        position_offset=0,
        # onnxruntime's bert fusions find no LayerNorm/GELU here; the pipeline keeps whichever
        # graph validates (fused or not).
        fusion_model_type="bert",
        # *ForSequenceClassification (decoder_score.py); Qwen3's LLM re-rankers (llm_rerank.py)
        # are exported under the same head.
        heads=(MODEL, SEQUENCE_CLASSIFICATION) if classifier else (MODEL,),
        encoder_aliases=(class_prefix + "ForCausalLM",),
        own_module=OWN_MODULE,
    )


FAMILIES = (
    _decoder("qwen3", "Qwen3"),  # also Qwen3-Reranker (Qwen3ForCausalLM, llm_rerank.py)
    _decoder("qwen2", "Qwen2"),
    _decoder("mistral", "Mistral"),
    _decoder("llama", "Llama"),
    # NVIDIA's bidirectional Llama (llama-3.2-nv-embedqa-1b-v2, llama-embed-nemotron): LlamaModel
    # with is_causal False and a padding-only mask (its hub code, never run), mean ("avg")
    # pooling from config.json when it has no sentence-transformers files.
    # Its re-rankers (LlamaBidirectionalForSequenceClassification) pool differently: not exported.
    _decoder("llama_bidirec", "LlamaBidirectional", classifier=False),
    # EmbeddingGemma (Gemma3TextModel): use_bidirectional_attention, sliding and full layers,
    # mean pooling and two Dense layers in its sentence-transformers files.
    _decoder("gemma3_text", "Gemma3Text"),
    # NV-Embed-v2 (NVEmbedModel): a bidirectional Mistral body, then its latent-attention layer
    # token by token (nvembed_model.py, its hub code never run); mean pooling without the
    # instruction (1_Pooling's include_prompt false), the EOS appended (special_tokens.py).
    Family(
        "nvembed",
        "NVEmbed",
        uses_token_type_ids=False,
        position_offset=0,
        fusion_model_type="bert",
        heads=(MODEL,),
        own_module="tei_ort.export.architectures.nvembed_model",
    ),
)


# config.json's "pooling" in NVIDIA's bidirectional Llama checkpoints (their pool() function).
CONFIG_POOLING = {"avg": Pooling.MEAN, "cls": Pooling.CLS, "last": Pooling.LAST_TOKEN}


def config_pooling(config: dict[str, Any]) -> Pooling | None:
    """The pooling a decoder's config.json names, for checkpoints without 1_Pooling/config.json."""
    if config.get("model_type") != "llama_bidirec":
        return None
    return CONFIG_POOLING.get(str(config.get("pooling", "avg")))
