"""BGE-M3's sparse and ColBERT heads (sparse_linear.pt: Linear(hidden, 1); colbert_linear.pt:
Linear(hidden, dim)), written into the package as .npz for the runtime to apply over
last_hidden_state (tei_ort/runtime/outputs.py). The rules are FlagEmbedding's BGEM3 model:
sparse weights relu(linear(h)) per token, the largest per token id, without the tokenizer's
cls / eos / pad / unk tokens; ColBERT vectors linear(h[:, 1:]) masked and L2-normalized."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tei_ort.errors import PackageError
from tei_ort.export import checkpoints
from tei_ort.export.source import SPECIAL_TOKENS_FILE, TOKENIZER_CONFIG_FILE, SourceModel
from tei_ort.package import TokenHeads

SPARSE_FILE, COLBERT_FILE = "sparse_linear.pt", "colbert_linear.pt"
# FlagEmbedding's BGEM3 drops these from the sparse weights (special_tokens_map's names).
UNUSED_TOKENS = ("cls_token", "eos_token", "pad_token", "unk_token")


def write(source: SourceModel, package: Path) -> TokenHeads | None:
    """The heads the source folder has, saved as sparse_linear.npz / colbert_linear.npz; None
    when it has neither (every model but BGE-M3)."""
    present = [name for name in (SPARSE_FILE, COLBERT_FILE) if (source.root / name).is_file()]
    if not present:
        return None
    checkpoints.check(source.root, present)  # refuses a pickle that is more than tensors
    written: dict[str, str] = {}
    for name in present:
        weight, bias = _linear(source.root / name, source.hidden_size)
        if name == SPARSE_FILE and weight.shape[0] != 1:
            raise PackageError(f"{name}: a sparse head has one output, this has {weight.shape[0]}")
        target = Path(name).with_suffix(".npz").name
        np.savez(package / target, weight=weight, bias=bias)
        written[name] = target
    return TokenHeads(
        sparse=written.get(SPARSE_FILE),
        colbert=written.get(COLBERT_FILE),
        unused_token_ids=unused_token_ids(source),
        vocab_size=source.vocab_size,
    )


def _linear(path: Path, hidden: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(out, hidden) weight and (out,) bias of a saved nn.Linear state_dict."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "weight" not in state:
        raise PackageError(f"{path.name}: not a Linear state_dict (no weight)")
    weight = state["weight"].float().numpy()  # (out, hidden)
    if weight.ndim != 2 or weight.shape[1] != hidden:
        raise PackageError(f"{path.name}: weight {tuple(weight.shape)}, expected (out, {hidden})")
    bias = state.get("bias")
    bias_array = bias.float().numpy() if bias is not None else np.zeros(weight.shape[0])
    return weight.astype(np.float32), bias_array.astype(np.float32)


def unused_token_ids(source: SourceModel) -> tuple[int, ...]:
    """Ids of the tokenizer's cls / eos / pad / unk tokens, as named in special_tokens_map.json
    (else tokenizer_config.json)."""
    from tokenizers import Tokenizer

    names: dict[str, object] = {}
    for file in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE):  # the map wins where both say
        path = source.model_dir / file
        if path.is_file():
            names |= json.loads(path.read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(source.tokenizer_file))
    ids = set()
    for key in UNUSED_TOKENS:
        token = names.get(key)
        content = token.get("content") if isinstance(token, dict) else token
        token_id = tokenizer.token_to_id(content) if isinstance(content, str) else None
        if token_id is not None:
            ids.add(int(token_id))
    return tuple(sorted(ids))
