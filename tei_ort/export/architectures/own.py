"""Families exported from our own PyTorch modules (Family.own_module) rather than transformers'
classes: their modelling code lives on the hub and is never imported. Here: reading the
checkpoint's tensors (safetensors, or torch's weights-only loader for .bin), building the module,
exporting it with torch.onnx, and its forward pass for the PyTorch reference.

An own module provides `build(config: dict, head: str, tensors: dict) -> nn.Module` whose
forward(input_ids, attention_mask[, token_type_ids]) returns last_hidden_state (b, s, h) for the
bare encoder or logits (b, labels) for a sequence classifier."""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tei_ort.errors import PackageError
from tei_ort.package import Activation, Pooling

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tei_ort.export.recipes import Recipe

DUMMY_SHAPE = (2, 16)  # (batch, seq) traced; both axes stay dynamic in the graph


class OwnModule(Protocol):
    def build(
        self, config: dict[str, Any], head: str, tensors: dict[str, torch.Tensor]
    ) -> nn.Module: ...


def load(model_dir: Path, recipe: Recipe) -> nn.Module:
    """The recipe's model, in eval mode, from the folder's config.json and weights."""
    if recipe.family.own_module is None:
        raise PackageError(f"{recipe.architecture}: exported by optimum, not by an own module")
    module: OwnModule = importlib.import_module(recipe.family.own_module)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config["_model_dir"] = str(model_dir)  # LLM re-rankers read their yes/no token ids
    return module.build(config, recipe.head.class_suffix, read_tensors(model_dir))


def read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, by its own name. .bin files go through torch's weights-only
    unpickler, which builds tensors and refuses any other object (no code runs)."""
    import torch
    from safetensors.torch import load_file

    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(model_dir / shard)).items()}
    tensors: dict[str, torch.Tensor] = {}
    bins = [model_dir / "pytorch_model.bin"]
    bin_index = model_dir / "pytorch_model.bin.index.json"
    if bin_index.is_file():
        bins = [
            model_dir / s
            for s in sorted(set(json.loads(bin_index.read_text())["weight_map"].values()))
        ]
    for path in bins:
        if not path.is_file():
            raise PackageError(f"{model_dir}: no model weights")
        tensors |= torch.load(path, map_location="cpu", weights_only=True)
    return tensors


def input_names(recipe: Recipe) -> list[str]:
    names = ["input_ids", "attention_mask"]
    return names + (["token_type_ids"] if recipe.family.uses_token_type_ids else [])


def export(model_dir: Path, recipe: Recipe, out: Path, *, opset: int) -> None:
    """torch.onnx's TorchScript exporter, as optimum uses it: (batch, seq) int64 inputs, one output
    named by `recipe.head.export_output`, both axes dynamic."""
    import torch

    model = load(model_dir, recipe)
    names = input_names(recipe)
    dummy = tuple(torch.ones(DUMMY_SHAPE, dtype=torch.int64) for _ in names)
    axes = {0: "batch_size", 1: "sequence_length"}
    dynamic = {name: axes for name in names} | {
        recipe.head.export_output: axes
        if recipe.head.class_suffix == "Model"
        else {0: "batch_size"}
    }
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python ints in shapes
        torch.onnx.export(
            model,
            dummy,
            str(out),
            input_names=names,
            output_names=[recipe.head.export_output],
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def forward(model: nn.Module, recipe: Recipe, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The module on a tokenized batch; token_type_ids default to zeros as in BERT."""
    import torch

    args = [batch["input_ids"], batch["attention_mask"]]
    if recipe.family.uses_token_type_ids:
        args.append(batch.get("token_type_ids", torch.zeros_like(batch["input_ids"])))
    with torch.inference_mode():
        return model(*args)


def sentence_embeddings(
    model: nn.Module,
    recipe: Recipe,
    dense: list[tuple[Any, Any, Activation]],
    normalize: bool,
    pooling: Pooling,
    batch: dict[str, torch.Tensor],
) -> torch.Tensor:
    """(batch, dims) as sentence-transformers computes them (its loader cannot be used: it would
    build the transformers class the config names): token embeddings -> pooling -> each Dense
    (weight (out, in), bias (out,), activation) -> L2 normalization."""
    import torch

    hidden = forward(model, recipe, batch)  # (batch, seq, hidden)
    mask = batch["attention_mask"].to(hidden.dtype)  # (batch, seq)
    if pooling is Pooling.CLS:
        pooled = hidden[:, 0]
    elif pooling is Pooling.LAST_TOKEN:
        pooled = hidden[torch.arange(hidden.shape[0]), mask.sum(1).long() - 1]
    elif pooling is Pooling.MEAN:
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
    else:
        raise PackageError(f"pooling {pooling.value} is not an embedding pooling")
    for weight, bias, activation in dense:
        pooled = _activate(activation, pooled @ torch.as_tensor(weight).T + torch.as_tensor(bias))
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def _activate(activation: Activation, x: torch.Tensor) -> torch.Tensor:
    import torch

    table: dict[Activation, Any] = {
        Activation.IDENTITY: lambda t: t,
        Activation.TANH: torch.tanh,
        Activation.RELU: torch.relu,
        Activation.GELU: torch.nn.functional.gelu,
        Activation.SIGMOID: torch.sigmoid,
        Activation.SOFTMAX: lambda t: t.softmax(dim=-1),
    }
    return table[activation](x)
