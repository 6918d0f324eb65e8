"""Tiny random-weight GTE (model_type new) checkpoints in the real layout: config.json as
gte-base-en-v1.5 and gte-multilingual-reranker-base write it (rope with NTK scaling, GeGLU,
auto_map to Alibaba-NLP/new-impl), safetensors under the checkpoint's tensor names (classifiers
with the "new." prefix). transformers has no GTE, so the weights come from our module's random
init; LAYER_KEYS pins those names to the real checkpoints' (as TEI's candle port reads them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.export.tiny_jina import randomize, write_sentence_transformers

LAYER_KEYS = {
    "attention.qkv_proj.weight",
    "attention.qkv_proj.bias",
    "attention.o_proj.weight",
    "attention.o_proj.bias",
    "attn_ln.weight",
    "attn_ln.bias",
    "mlp.up_gate_proj.weight",
    "mlp.down_proj.weight",
    "mlp.down_proj.bias",
    "mlp_ln.weight",
    "mlp_ln.bias",
}
MAX_POSITIONS = 8192
HUB_CODE = "Alibaba-NLP/new-impl"


def config(head: str, vocab: int) -> dict[str, Any]:
    architecture = "NewModel" if head == "embedding" else "NewForSequenceClassification"
    fields: dict[str, Any] = {
        "architectures": [architecture],
        "auto_map": {
            "AutoConfig": f"{HUB_CODE}--configuration.NewConfig",
            "AutoModel": f"{HUB_CODE}--modeling.NewModel",
            "AutoModelForSequenceClassification": f"{HUB_CODE}--modeling.NewForSequenceClassification",
        },
        "model_type": "new",
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 32,
        "intermediate_size": 48,
        "layer_norm_eps": 1e-12,
        "layer_norm_type": "layer_norm",
        "logn_attention_clip1": False,
        "logn_attention_scale": False,
        "max_position_embeddings": MAX_POSITIONS,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pack_qkv": True,
        "pad_token_id": 0,
        "position_embedding_type": "rope",
        "rope_scaling": {"factor": 2.0, "type": "ntk"},
        "rope_theta": 500000,
        # gte-base-en-v1.5: 0; gte-multilingual-reranker-base: 1 (one constant type)
        "type_vocab_size": 0 if head == "embedding" else 1,
        "unpad_inputs": False,
        "use_memory_efficient_attention": False,
        "vocab_size": vocab,
    }
    if head != "embedding":
        labels = 3 if head == "classification" else 1
        fields["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
        fields["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
    return fields


def build(head: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """Embedding checkpoints hold the bare encoder (CLS pooling, as gte-*-v1.5); the re-ranker has
    a tanh pooler before its classifier, the classifier none: both layouts TEI reads."""
    import torch
    from safetensors.torch import save_file

    from tei_ort.export.architectures import gte_model

    out.mkdir(parents=True)
    for file in tokenizer_dir.iterdir():
        shutil.copyfile(file, out / file.name)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config | {"model_max_length": MAX_POSITIONS})
    )
    vocab = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])
    fields = config(head, vocab)
    (out / "config.json").write_text(json.dumps(fields, indent=2))
    parsed = gte_model.GteConfig.from_json(fields)
    torch.manual_seed(seed)
    model: torch.nn.Module
    if head == "embedding":
        model = gte_model.NewModel(parsed)
    else:
        model = gte_model.NewForSequenceClassification(parsed, pooler=head == "reranker")
    randomize(model)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"))
    if head == "embedding":
        write_sentence_transformers(out, pooling="cls")
    return out
