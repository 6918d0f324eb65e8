"""Tiny random-weight decoder embedders in their real checkpoints' layout.

- qwen3: Qwen3-Embedding-0.6B: architectures Qwen3ForCausalLM with the bare model's tensor names,
  a Qwen2 byte-level BPE tokenizer whose post-processor appends <|endoftext|> (the EOS the model
  pools on; also its pad token), tokenizer_config padding_side left, sentence-transformers files
  with last-token pooling, Normalize, and prompts {"query": "Instruct: ...\\nQuery:",
  "document": ""}.
- qwen2: gte-Qwen2-*-instruct's layout, but with the causal LM's "model."-prefixed tensor names
  (the loader must accept both).
- mistral: e5-mistral-7b-instruct: MistralModel, sliding_window set.
- llama: LlamaModel (bare names).
The tokenizer is trained here on the offline corpus: the real vocabularies are 150k tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tei_ort.export import corpus
from tei_ort.export.st_files import write_pooling_normalize

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIALS = (ENDOFTEXT, IM_START, IM_END)
# Qwen2's pre-tokenizer split (tokenizer.json of every Qwen2/Qwen3 checkpoint).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QUERY_PROMPT = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
)
MAX_SEQ_LENGTH = 48
HIDDEN = 32
FAMILIES = ("qwen3", "qwen2", "mistral", "llama", "gemma3")
MODEL_TYPES = {"gemma3": "gemma3_text"}
GEMMA_DENSE = 48  # EmbeddingGemma: 768 -> 3072 -> 768, no biases, identity
# Qwen/Qwen3-Embedding-0.6B's layer sizes (its config.json), for the scripts that build a random
# model of that size (scripts/big_decoder_export.py, scripts/decoder_bench_model.py).
QWEN3_EMBEDDING_0_6B_LAYERS = {
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
}


def build_tokenizer(out: Path, *, append_eos: bool = True) -> Path:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The corpus never says "yes": a few lines that do, so that the re-ranker's answer tokens are
    # single BPE tokens, as in Qwen's vocabulary.
    tokenizer.train_from_iterator([*corpus.paragraphs(), *["yes", "no"] * 2000], trainer)
    eos = tokenizer.token_to_id(ENDOFTEXT)
    if append_eos:  # Qwen3-Embedding's fix: the EOS is appended by the tokenizer itself
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A:0 {ENDOFTEXT}:0",
            pair=f"$A:0 {ENDOFTEXT}:0 $B:1 {ENDOFTEXT}:1",
            special_tokens=[(ENDOFTEXT, eos)],
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    out.mkdir(parents=True)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "padding_side": "left",
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "bos_token": None,
        "unk_token": None,
        "model_max_length": 131072,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def config(family: str, vocab: int) -> dict[str, Any]:
    """A few layers of each family's real config; sizes shrunk, rope and norms as shipped."""
    common: dict[str, Any] = {
        "hidden_size": HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab,
        "torch_dtype": "float32",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": family == "qwen3",
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    per_family: dict[str, dict[str, Any]] = {
        "qwen3": {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "head_dim": 16,
            "attention_bias": False,
            "max_position_embeddings": 32768,
            "max_window_layers": 2,
            "rope_theta": 1000000,
            "rope_scaling": None,
            "sliding_window": None,
            "use_sliding_window": False,
        },
        "qwen2": {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "max_position_embeddings": 32768,
            "max_window_layers": 2,
            "rope_theta": 1000000.0,
            "sliding_window": 131072,
            "use_sliding_window": False,
        },
        "mistral": {
            "architectures": ["MistralModel"],
            "model_type": "mistral",
            "max_position_embeddings": 32768,
            "rope_theta": 10000.0,
            # Shorter than the tiny texts' length, so the window is exercised (4096 in e5-mistral).
            "sliding_window": 8,
        },
        "gemma3": {
            "architectures": ["Gemma3TextModel"],
            "model_type": "gemma3_text",
            "head_dim": 16,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 2048,
            "query_pre_attn_scalar": 16,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "rope_scaling": None,
            # Shorter than the tiny texts, so that the window is exercised (512 in the real one).
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"],
            "use_bidirectional_attention": True,
            "attn_logit_softcapping": None,
            "final_logit_softcapping": None,
            "pad_token_id": 0,
        },
        "llama": {
            "architectures": ["LlamaModel"],
            "model_type": "llama",
            "max_position_embeddings": 2048,
            "rope_theta": 500000.0,
            "attention_bias": False,
            "mlp_bias": False,
        },
    }
    return common | per_family[family]


def build(family: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    from tests.export.tiny_jina import randomize

    out.mkdir(parents=True)
    for file in tokenizer_dir.iterdir():
        shutil.copyfile(file, out / file.name)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    fields = config(family, len(vocab))  # the special tokens are in the trained vocab
    (out / "config.json").write_text(json.dumps(fields, indent=2))
    torch.manual_seed(seed)
    parsed = AutoConfig.for_model(**{k: v for k, v in fields.items() if k != "architectures"})
    model = AutoModel.from_config(parsed)
    randomize(model)
    for name, parameter in model.named_parameters():  # RMSNorm gains near 1, as trained ones
        if name.endswith("norm.weight"):
            with torch.no_grad():
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
    prefix = "model." if family == "qwen2" else ""
    tensors = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"))
    if family == "gemma3":
        write_embedding_gemma_st(out)
    else:
        write_sentence_transformers(out)
    return out


def write_sentence_transformers(
    out: Path, hidden: int = HIDDEN, max_seq_length: int = MAX_SEQ_LENGTH
) -> None:
    """Qwen3-Embedding's files: Transformer, last-token Pooling, Normalize; query prompt."""
    write_pooling_normalize(out, hidden, "lasttoken", max_seq_length)
    st_config = {
        "prompts": {"query": QUERY_PROMPT, "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (out / "config_sentence_transformers.json").write_text(json.dumps(st_config))


def write_embedding_gemma_st(out: Path) -> None:
    """EmbeddingGemma's files: Transformer, mean Pooling, Dense (up, no bias), Dense (down, no
    bias), Normalize; its task prompts."""
    import torch
    from safetensors.torch import save_file

    kinds = ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    paths = ["", "1_Pooling", "2_Dense", "3_Dense", "4_Normalize"]
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(zip(kinds, paths, strict=True))
    ]
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "1_Pooling").mkdir()
    pooling = {
        "word_embedding_dimension": HIDDEN,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    for folder, (n_in, n_out) in (
        ("2_Dense", (HIDDEN, GEMMA_DENSE)),
        ("3_Dense", (GEMMA_DENSE, HIDDEN)),
    ):
        (out / folder).mkdir()
        dense = {
            "in_features": n_in,
            "out_features": n_out,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
        }
        (out / folder / "config.json").write_text(json.dumps(dense))
        weight = 0.3 * torch.randn(n_out, n_in)
        save_file({"linear.weight": weight.contiguous()}, str(out / folder / "model.safetensors"))
    (out / "4_Normalize").mkdir()
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    )
    st_config = {
        "prompts": {
            "query": "task: search result | query: ",
            "document": "title: none | text: ",
            "Classification": "task: classification | query: ",
        },
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (out / "config_sentence_transformers.json").write_text(json.dumps(st_config))


def build_reranker(tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """Qwen3-Reranker-0.6B's layout: Qwen3ForCausalLM with tied embeddings saved by
    transformers (model.* tensors, no lm_head), a tokenizer that appends nothing, no
    sentence-transformers files."""
    import shutil

    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tests.export.tiny_jina import randomize

    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    fields = config("qwen3", len(vocab))
    torch.manual_seed(seed)
    parsed = Qwen3Config(
        **{k: v for k, v in fields.items() if k not in ("architectures", "model_type")}
    )
    model = Qwen3ForCausalLM(parsed)
    randomize(model)
    model.save_pretrained(str(out), safe_serialization=True)
    for file in tokenizer_dir.iterdir():
        shutil.copyfile(file, out / file.name)
    return out
