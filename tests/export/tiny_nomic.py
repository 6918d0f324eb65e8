"""Tiny random-weight NomicBERT checkpoints in nomic-embed-text-v1.5's layout: its config.json
(model_type nomic_bert, GPT-2-style names, rotary, SwiGLU, no biases, vocab padded to a multiple
of 64, auto_map to nomic-ai/nomic-bert-2048) at hidden 32, safetensors under the checkpoint's
tensor names, BERT's uncased tokenizer (MiniLM's, as nomic's) limited to 8,192 tokens, and its
sentence-transformers files: mean pooling, Normalize, the search_query / search_document /
classification / clustering prompts. transformers has no NomicBERT, so the weights come from our
module's random init; LAYER_KEYS pins those names to the real checkpoint's (as TEI's candle port
reads them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tei_ort.export.st_files import write_pooling_normalize
from tests.export.tiny_jina import randomize

LAYER_KEYS = {
    "attn.Wqkv.weight",
    "attn.out_proj.weight",
    "mlp.fc11.weight",
    "mlp.fc12.weight",
    "mlp.fc2.weight",
    "norm1.weight",
    "norm1.bias",
    "norm2.weight",
    "norm2.bias",
}
EMBEDDING_KEYS = {
    "embeddings.word_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "emb_ln.weight",
    "emb_ln.bias",
}
MAX_POSITIONS = 8192
HUB_CODE = "nomic-ai/nomic-bert-2048"
PROMPTS = {
    "search_query": "search_query: ",
    "search_document": "search_document: ",
    "classification": "classification: ",
    "clustering": "clustering: ",
}
HIDDEN = 32


def config(vocab: int, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "_name_or_path": "nomic-ai/nomic-embed-text-v1.5",
        "activation_function": "swiglu",
        "architectures": ["NomicBertModel"],
        "attn_pdrop": 0.0,
        "auto_map": {
            "AutoConfig": f"{HUB_CODE}--configuration_hf_nomic_bert.NomicBertConfig",
            "AutoModel": f"{HUB_CODE}--modeling_hf_nomic_bert.NomicBertModel",
            "AutoModelForMaskedLM": f"{HUB_CODE}--modeling_hf_nomic_bert.NomicBertForPreTraining",
        },
        "bos_token_id": None,
        "causal": False,
        "dense_seq_output": True,
        "embd_pdrop": 0.0,
        "eos_token_id": None,
        "fused_bias_fc": True,
        "fused_dropout_add_ln": True,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-12,
        "max_trained_positions": 2048,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "model_type": "nomic_bert",
        "n_embd": HIDDEN,
        "n_head": 4,
        "n_inner": 48,
        "n_layer": 2,
        "n_positions": MAX_POSITIONS,
        "pad_vocab_size_multiple": 64,
        "parallel_block": False,
        "parallel_block_tied_norm": False,
        "prenorm": False,
        "qkv_proj_bias": False,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.0,
        "rotary_emb_base": 1000,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
        "rotary_scaling_factor": None,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.0,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "torch_dtype": "float32",
        "transformers_version": "4.34.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "use_flash_attn": True,
        "use_rms_norm": False,
        "use_xentropy": True,
        "vocab_size": vocab,
    }
    return fields | overrides


def build(head: str, tokenizer_dir: Path, out: Path, seed: int = 0, **overrides: Any) -> Path:
    """The embedding checkpoint (NomicBertModel, no prefix; `overrides` change config fields)."""
    import torch
    from safetensors.torch import save_file

    from tei_ort.export.architectures import nomic_bert_model

    assert head == "embedding", head
    out.mkdir(parents=True)
    for file in tokenizer_dir.iterdir():
        shutil.copyfile(file, out / file.name)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config | {"model_max_length": MAX_POSITIONS})
    )
    vocab = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])
    fields = config(vocab, **overrides)
    (out / "config.json").write_text(json.dumps(fields, indent=2))
    torch.manual_seed(seed)
    model = nomic_bert_model.NomicBertModel(nomic_bert_model.NomicConfig.from_json(fields))
    randomize(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "emb_ln.weight")):
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"))
    write_pooling_normalize(out, HIDDEN, "mean_tokens", MAX_POSITIONS)
    prompts = {"prompts": PROMPTS, "default_prompt_name": None}
    (out / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    return out


MOE_LAYER_KEYS = {
    "attn.Wqkv.weight",
    "attn.Wqkv.bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "mlp.router.layer.weight",
    "mlp.experts.mlp.w1",
    "mlp.experts.mlp.w2",
    "mlp.experts.bias",
    "norm1.weight",
    "norm1.bias",
    "norm2.weight",
    "norm2.bias",
}
MOE_MAX_SEQ_LENGTH = 512


def moe_config(vocab: int) -> dict[str, Any]:
    """nomic-embed-text-v2-moe's fields as TEI's and vLLM's ports read them (GELU experts and
    MLPs with biases, every second layer a mixture of experts, top 2, no renormalization), at
    tiny size: 4 experts instead of 8."""
    return config(
        vocab,
        _name_or_path="nomic-ai/nomic-embed-text-v2-moe",
        activation_function="gelu",
        mlp_fc1_bias=True,
        mlp_fc2_bias=True,
        qkv_proj_bias=True,
        moe_every_n_layers=2,
        num_experts=4,
        moe_top_k=2,
        moe_normalize_expert_weights=False,
        n_positions=2048,
        rotary_emb_base=10000,
        type_vocab_size=1,
    )


def build_moe(tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """A v2-moe-layout embedder on an XLM-R-style (unigram) tokenizer, max_seq_length 512."""
    import torch
    from safetensors.torch import save_file

    from tei_ort.export.architectures import nomic_bert_model

    out.mkdir(parents=True)
    for file in tokenizer_dir.iterdir():
        shutil.copyfile(file, out / file.name)
    vocab = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])
    fields = moe_config(vocab)
    (out / "config.json").write_text(json.dumps(fields, indent=2))
    torch.manual_seed(seed)
    model = nomic_bert_model.NomicBertModel(nomic_bert_model.NomicConfig.from_json(fields))
    randomize(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "emb_ln.weight")):
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors")
    )
    write_pooling_normalize(out, HIDDEN, "mean_tokens", MOE_MAX_SEQ_LENGTH)
    prompts = {"prompts": PROMPTS, "default_prompt_name": None}
    (out / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    return out
