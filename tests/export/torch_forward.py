"""An independent transformers forward pass (written apart from tei_ort.export.reference): the
tiny models' expected outputs, pooled, Dense-projected and normalized by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def encode(source: Path, inputs: list[str] | list[tuple[str, str]], max_length: int):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    firsts = [i if isinstance(i, str) else i[0] for i in inputs]
    seconds = [i[1] for i in inputs if not isinstance(i, str)] or None
    encoded = tokenizer(
        firsts, seconds, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(source))
    if config.model_type != "bert":
        encoded.pop("token_type_ids", None)
    return encoded


def torch_embeddings(source: Path, texts: list[str]) -> np.ndarray:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    modules = json.loads((source / "modules.json").read_text())
    pooling_config = json.loads((source / "1_Pooling" / "config.json").read_text())
    encoded = encode(source, texts, 48)
    with torch.no_grad():
        hidden = (
            AutoModel.from_pretrained(str(source)).eval()(**encoded).last_hidden_state
        )  # (b, s, h)
    mask = encoded["attention_mask"]  # (b, s)
    if pooling_config["pooling_mode_cls_token"]:
        pooled = hidden[:, 0]
    elif pooling_config["pooling_mode_lasttoken"]:
        pooled = hidden[torch.arange(len(texts)), mask.sum(1) - 1]
    else:
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    if any(m["type"].endswith("Dense") for m in modules):
        weights = load_file(str(source / "2_Dense" / "model.safetensors"))
        pooled = torch.tanh(pooled @ weights["linear.weight"].T + weights["linear.bias"])
    if any(m["type"].endswith("Normalize") for m in modules):
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled.numpy()


def torch_splade(source: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForMaskedLM

    encoded = encode(source, texts, 64)
    with torch.no_grad():
        logits = AutoModelForMaskedLM.from_pretrained(str(source)).eval()(**encoded).logits
    weights = torch.log1p(torch.relu(logits)) * encoded["attention_mask"][..., None]
    return weights.max(dim=1).values.numpy()  # (b, vocab)


def torch_logits(source: Path, inputs: list[str] | list[tuple[str, str]]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification

    encoded = encode(source, inputs, 64)
    with torch.no_grad():
        return (
            AutoModelForSequenceClassification.from_pretrained(str(source))
            .eval()(**encoded)
            .logits.numpy()
        )
