"""Tiny random-weight JinaBERT v2 checkpoints in the real layout: config.json as
jina-embeddings-v2-*-en / jina-reranker-v1-*-en / jina-embeddings-v2-base-code write it (model_type
bert, ALiBi, GeGLU, auto_map to the hub code), safetensors under the checkpoint's tensor names.
transformers has no JinaBERT, so the weights come from our module's random init; KEY_NAMES pins
those names to the real checkpoints' (as TEI's candle port reads them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tei_ort.export.st_files import write_pooling_normalize

# One layer's tensor names in the real checkpoints (TEI backends/candle/src/models/jina.rs and
# jina_code.rs), without the "encoder.layer.N." prefix.
LAYER_KEYS = {
    "v2": {
        *(f"attention.self.{p}.{w}" for p in ("query", "key", "value") for w in ("weight", "bias")),
        "attention.output.dense.weight",
        "attention.output.dense.bias",
        "attention.output.LayerNorm.weight",
        "attention.output.LayerNorm.bias",
        "mlp.gated_layers.weight",
        "mlp.wo.weight",
        "mlp.wo.bias",
        "mlp.layernorm.weight",
        "mlp.layernorm.bias",
    },
    "code": {
        *(f"attention.self.{p}.{w}" for p in ("query", "key", "value") for w in ("weight", "bias")),
        *(f"attention.self.layer_norm_{p}.{w}" for p in ("q", "k") for w in ("weight", "bias")),
        "attention.output.dense.weight",
        "attention.output.dense.bias",
        "attention.output.LayerNorm.weight",
        "attention.output.LayerNorm.bias",
        "layer_norm_1.weight",
        "layer_norm_1.bias",
        "mlp.up_gated_layer.weight",
        "mlp.down_layer.weight",
        "mlp.down_layer.bias",
        "layer_norm_2.weight",
        "layer_norm_2.bias",
    },
}
EMBEDDING_KEYS = {
    "embeddings.word_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
}
HUB_CODE = {
    "v2": "jinaai/jina-bert-implementation",
    "code": "jinaai/jina-bert-v2-qk-post-norm",
}
MAX_POSITIONS = 8192


def config(variant: str, head: str, vocab: int, **overrides: Any) -> dict[str, Any]:
    repo = HUB_CODE[variant]
    architecture = {
        "embedding": "JinaBertForMaskedLM",
        "classification": "JinaBertForSequenceClassification",
        "reranker": "JinaBertForSequenceClassification",
    }[head]
    fields: dict[str, Any] = {
        "_name_or_path": repo,
        "architectures": [architecture],
        "auto_map": {
            "AutoConfig": f"{repo}--configuration_bert.JinaBertConfig",
            "AutoModel": f"{repo}--modeling_bert.JinaBertModel",
            "AutoModelForMaskedLM": f"{repo}--modeling_bert.JinaBertForMaskedLM",
            "AutoModelForSequenceClassification": (
                f"{repo}--modeling_bert.JinaBertForSequenceClassification"
            ),
        },
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": None,
        "emb_pooler": "mean",
        "feed_forward_type": "geglu",
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 32,
        "intermediate_size": 48,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": MAX_POSITIONS,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "position_embedding_type": "alibi",
        "type_vocab_size": 2,
        "vocab_size": vocab,
    }
    if head != "embedding":
        labels = 3 if head == "classification" else 1
        fields["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
        fields["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
    return fields | overrides


def build(variant: str, head: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """Save a random JinaBERT (`variant` v2 or code) with `head` to `out`: embedding checkpoints
    hold the bare encoder's tensors, classifiers carry the "bert." prefix, a pooler and a
    classifier, as BertForSequenceClassification saves them."""
    import torch
    from safetensors.torch import save_file

    from tei_ort.export.architectures import jina_bert_model

    out.mkdir(parents=True)
    for file in tokenizer_dir.iterdir():
        shutil.copyfile(file, out / file.name)
    # As jina's tokenizer_config.json: 8,192 tokens.
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config | {"model_max_length": MAX_POSITIONS})
    )
    vocab = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])
    fields = config(variant, head, vocab)
    (out / "config.json").write_text(json.dumps(fields, indent=2))
    parsed = jina_bert_model.JinaBertConfig.from_json(fields)
    torch.manual_seed(seed)
    model: torch.nn.Module
    if head == "embedding":
        model = jina_bert_model.JinaBertModel(parsed)
    else:
        model = jina_bert_model.JinaBertForSequenceClassification(parsed)
    randomize(model)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    if head != "embedding":  # BertForSequenceClassification's names
        tensors = {("bert." + k if k.startswith("pooler.") else k): v for k, v in tensors.items()}
    save_file(tensors, str(out / "model.safetensors"))
    if head == "embedding":
        write_sentence_transformers(out)
    return out


def randomize(model: Any) -> None:
    """Every parameter random (LayerNorms too), so a misplaced tensor changes the outputs."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("LayerNorm.weight") or any(
                n in name for n in ("layer_norm", "layernorm", "_ln.")
            ):
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
            else:
                parameter.copy_(0.2 * torch.randn_like(parameter))


def write_sentence_transformers(out: Path, pooling: str = "mean") -> None:
    """jina-embeddings-v2's sentence-transformers files: Transformer, mean Pooling, Normalize
    (GTE's: CLS pooling)."""
    write_pooling_normalize(out, 32, {"mean": "mean_tokens", "cls": "cls_token"}[pooling], 48)
