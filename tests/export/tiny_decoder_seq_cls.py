"""Tiny random-weight decoder sequence classifiers in the layout transformers saves
(*ForSequenceClassification.save_pretrained: "model."-prefixed body tensors, score.weight
(labels, hidden) without bias, config.json with architectures, id2label and pad_token_id), and a
Qwen3-Reranker converted to one logit the way the public seq-cls conversions are made
(score = lm_head[yes] - lm_head[no]: tomaarsen/Qwen3-Reranker-0.6B-seq-cls)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.export import tiny_decoders

CLASS_PREFIXES = {
    "qwen3": "Qwen3",
    "qwen2": "Qwen2",
    "mistral": "Mistral",
    "llama": "Llama",
    "gemma3": "Gemma3Text",
}


def build(
    family: str,
    tokenizer_dir: Path,
    out: Path,
    *,
    labels: tuple[str, ...],
    pad_token_id: int | None,
    seed: int = 0,
) -> Path:
    """`family` of tiny_decoders with a score head of len(labels) rows; pad_token_id None leaves
    it out of config.json (as Llama and Mistral checkpoints often do)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from tests.export.tiny_jina import randomize

    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    fields = tiny_decoders.config(family, len(vocab))
    fields |= {
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "pad_token_id": pad_token_id,
        "tie_word_embeddings": False,
    }
    torch.manual_seed(seed)
    parsed = AutoConfig.for_model(**{k: v for k, v in fields.items() if k != "architectures"})
    model = AutoModelForSequenceClassification.from_config(parsed)
    assert type(model).__name__ == CLASS_PREFIXES[family] + "ForSequenceClassification"
    randomize(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():  # RMSNorm gains near 1
            if name.endswith("norm.weight"):
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
    model.save_pretrained(str(out), safe_serialization=True)
    _strip_pad_token(out, pad_token_id)
    for file in tokenizer_dir.iterdir():
        shutil.copyfile(file, out / file.name)
    return out


def convert_reranker(causal_lm: Path, out: Path) -> Path:
    """A Qwen3ForCausalLM re-ranker folder (tiny_decoders.build_reranker) as
    Qwen3ForSequenceClassification with one label: score.weight = lm_head[yes] - lm_head[no],
    so the logit is logit(yes) - logit(no) and its sigmoid the card's P(yes)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, Qwen3ForSequenceClassification

    lm = AutoModelForCausalLM.from_pretrained(str(causal_lm)).eval()
    vocab = Tokenizer.from_file(str(causal_lm / "tokenizer.json"))
    yes, no = vocab.token_to_id("yes"), vocab.token_to_id("no")
    config = lm.config
    config.architectures = ["Qwen3ForSequenceClassification"]
    config.num_labels = 1
    config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    config.pad_token_id = vocab.token_to_id(tiny_decoders.ENDOFTEXT)
    config.tie_word_embeddings = False
    model = Qwen3ForSequenceClassification(config).eval()
    with torch.no_grad():
        model.model.load_state_dict(lm.model.state_dict())
        head = lm.get_output_embeddings().weight  # (vocab, hidden); tied to the embeddings
        model.score.weight.copy_((head[yes] - head[no])[None, :])
    model.save_pretrained(str(out), safe_serialization=True)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(causal_lm / file, out / file)
    return out


def _strip_pad_token(out: Path, pad_token_id: int | None) -> None:
    if pad_token_id is not None:
        return
    config = json.loads((out / "config.json").read_text())
    config.pop("pad_token_id", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
