"""Large graphs are written tensor by tensor, never whole in memory (graph_files.save_streamed):
the export of a decoder's raw graph, its fusion (run on the graph without its weights), the head
and the package copy. On a tiny Qwen3, each streamed result equals the in-memory one, tensor for
tensor and node for node; and a bfloat16 checkpoint still becomes a float32 model when its tensors
are assigned rather than copied (decoder_model.build)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file

from tei_ort.export import fuse, graph_files, weight_only
from tei_ort.export.architectures import decoder_model, own
from tei_ort.export.hub import locate
from tei_ort.export.onnx_export import add_head, export_onnx
from tei_ort.export.recipes import for_task
from tei_ort.export.source import read_source
from tei_ort.package import Task
from tests.export import tiny_decoders

SPLIT = 0  # every tensor over graph_files.SMALL_TENSOR_BYTES goes to the data file
INLINE = graph_files.EXTERNAL_DATA_THRESHOLD_BYTES


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("streamed")
    return tiny_decoders.build("qwen3", tiny_decoders.build_tokenizer(root / "tok"), root / "qwen3")


@pytest.fixture(scope="module")
def raw_graphs(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same model's raw graph exported inline and split (external data, streamed)."""
    recipe = for_task(read_source(locate(str(source))).architecture, Task.EMBEDDING)
    out = tmp_path_factory.mktemp("raw")
    graphs = {}
    with pytest.MonkeyPatch.context() as patch:
        # Every tensor to the data file, the norm weights too (32 floats here; 1,024 and more in
        # real models, where the fusions' shape inference must still read them).
        patch.setattr(graph_files, "SMALL_TENSOR_BYTES", 0)
        for name, threshold in (("inline", INLINE), ("split", SPLIT)):
            (out / name).mkdir()
            graphs[name] = out / name / "raw.onnx"
            export_onnx(source, recipe, graphs[name], threshold_bytes=threshold)
    return graphs


def tensors(graph: Path) -> dict[str, np.ndarray]:
    model = graph_files.load(graph)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def nodes(graph: Path) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    model = graph_files.load_structure(graph)
    return [(n.op_type, n.domain, tuple(n.input), tuple(n.output)) for n in model.graph.node]


def assert_same_graph(a: Path, b: Path) -> None:
    assert nodes(a) == nodes(b)
    want, got = tensors(a), tensors(b)
    assert want.keys() == got.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_streamed_export_equals_the_inline_one(raw_graphs: dict[str, Path]) -> None:
    split, inline = raw_graphs["split"], raw_graphs["inline"]
    assert graph_files.data_files(split) == ("raw.onnx.data",)
    assert graph_files.data_files(inline) == ()
    data = graph_files.data_file(split).stat().st_size
    assert split.stat().st_size < inline.stat().st_size - data // 2  # the weights moved out
    assert_same_graph(inline, split)


def test_save_streamed_copies_and_rewrites_in_place(
    raw_graphs: dict[str, Path], tmp_path: Path
) -> None:
    split = raw_graphs["split"]
    copy = tmp_path / "model.onnx"
    graph_files.save_streamed(graph_files.load_structure(split), split.parent, copy, SPLIT)
    assert graph_files.data_files(copy) == ("model.onnx.data",)
    assert_same_graph(split, copy)
    # Its own files as the source: read before the data file is replaced.
    graph_files.save_streamed(graph_files.load_structure(copy), tmp_path, copy, SPLIT)
    assert_same_graph(split, copy)
    assert not list(tmp_path.glob("*.partial"))
    # Under the threshold the tensors come back inline, as graph_files.save writes them.
    inline = tmp_path / "inline.onnx"
    graph_files.save_streamed(graph_files.load_structure(copy), tmp_path, inline, INLINE)
    assert graph_files.data_files(inline) == ()
    assert_same_graph(split, inline)


@pytest.fixture(scope="module")
def fused_graphs(
    source: Path, raw_graphs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Fusion of each raw graph: in memory (inline) and without the weights (split)."""
    recipe = for_task(read_source(locate(str(source))).architecture, Task.EMBEDDING)
    config = tiny_decoders.config("qwen3", 600)
    kwargs = {"num_heads": config["num_attention_heads"], "hidden_size": tiny_decoders.HIDDEN}
    fused = {}
    out = tmp_path_factory.mktemp("fused")
    for name, threshold in (("inline", INLINE), ("split", SPLIT)):
        raw = out / name / "raw.onnx"
        shutil.copytree(raw_graphs[name].parent, raw.parent)
        fused[name] = out / name / "fused.onnx"
        report = fuse.fuse(raw, fused[name], recipe, threshold_bytes=threshold, **kwargs)
        assert report.op_counts["SimplifiedLayerNormalization"] > 0
        assert report.op_counts["RotaryEmbedding"] > 0
        add_head(fused[name], recipe, threshold)
    return fused


def test_fusion_without_the_weights_equals_the_in_memory_fusion(
    fused_graphs: dict[str, Path],
) -> None:
    assert graph_files.data_files(fused_graphs["split"]) == ("fused.onnx.data",)
    assert_same_graph(fused_graphs["inline"], fused_graphs["split"])


@pytest.fixture
def weights_on_disk(monkeypatch: pytest.MonkeyPatch, fused_graphs: dict[str, Path]) -> None:
    """load_structure leaves every external tensor on disk, as a real decoder's weight matrices
    (over STRUCTURE_INLINE_BYTES; the tiny model's are all under it), so that the conversions
    below take their on-disk path rather than the in-memory one."""
    monkeypatch.setattr(graph_files, "STRUCTURE_INLINE_BYTES", 0)
    structure = graph_files.load_structure(fused_graphs["split"])
    assert not any(len(t.raw_data) > 1024 for t in structure.graph.initializer)
    assert graph_files.has_external_data(structure)


@pytest.mark.usefixtures("weights_on_disk")
def test_streamed_fp16_equals_the_in_memory_conversion(
    fused_graphs: dict[str, Path], tmp_path: Path
) -> None:
    inline, split = tmp_path / "inline.fp16.onnx", tmp_path / "split.fp16.onnx"
    fuse.convert_fp16(fused_graphs["inline"], inline, INLINE)
    fuse.convert_fp16(fused_graphs["split"], split, SPLIT)
    assert graph_files.data_files(split) == ("split.fp16.onnx.data",)
    assert_same_graph(inline, split)
    halves = [t for t in graph_files.load(split).graph.initializer if t.data_type == 10]
    assert len(halves) > 10  # the weights are float16 (TensorProto.FLOAT16), not left float32
    # Streamed back inline (the fp16 graph under the threshold): still the same tensors.
    small = tmp_path / "small.fp16.onnx"
    fuse.convert_fp16(fused_graphs["split"], small, INLINE)
    assert graph_files.data_files(small) == ()
    assert_same_graph(inline, small)


def test_fp16_in_slices_equals_the_converter_on_the_whole_tensor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slices of 7 elements (a real tensor's are 16M) through every clamp of the converter:
    tiny, huge, infinite and NaN values, both signs, slice edges inside runs of them."""
    from onnx import TensorProto
    from onnxruntime.transformers.float16 import convert_tensor_float_to_float16

    rng = np.random.default_rng(0)
    special = [0.0, 1e-9, -1e-9, 7e4, -7e4, np.inf, -np.inf, np.nan, 65504.0, 5.96e-08]
    values = np.concatenate([rng.normal(0, 0.02, 50), special * 3, rng.normal(0, 1e5, 20)])
    values = values.astype(np.float32)
    whole = TensorProto(data_type=TensorProto.FLOAT, raw_data=values.tobytes())
    want = convert_tensor_float_to_float16(whole).raw_data
    monkeypatch.setattr(fuse, "HALF_CHUNK", 7)
    assert fuse._half_in_chunks(values.tobytes()) == want
    assert np.isnan(np.frombuffer(want, np.float16)).sum() == 3  # NaN kept, not clamped


def in_memory_weight_only(fp32: Path, out: Path) -> None:
    """ORT's MatMulNBitsQuantizer on the whole model in memory, with weight_only's settings: the
    result the streamed quantizer must give."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=weight_only.BLOCK_SIZE,
        is_symmetric=True,
        accuracy_level=weight_only.ACCURACY_LEVEL,
        bits=weight_only.BITS,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = MatMulNBitsQuantizer(graph_files.load(fp32), algo_config=config)
    quantizer.process()
    graph_files.save(quantizer.model.model, out, INLINE)


@pytest.mark.usefixtures("weights_on_disk")
def test_streamed_weight_only_equals_the_in_memory_quantizer(
    fused_graphs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = tmp_path / "memory.int8-wo.onnx"
    in_memory_weight_only(fused_graphs["inline"], want)
    # The streamed path never loads the whole model.
    monkeypatch.setattr(graph_files, "load", pytest.fail)
    split = tmp_path / "split.int8-wo.onnx"
    report = weight_only.quantize_weight_only(fused_graphs["split"], split, SPLIT)
    assert report.quantized_matmuls == 14 and report.kept_fp32 == 4  # 2 layers x 7; Q.K, P.V
    assert graph_files.data_files(split) == ("split.int8-wo.onnx.data",)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "memory.int8-wo.onnx",
        "split.int8-wo.onnx",
        "split.int8-wo.onnx.data",
    ]  # the spill file is gone
    monkeypatch.undo()
    assert_same_graph(want, split)
    packed = [t for t in graph_files.load(split).graph.initializer if t.name.endswith("_Q8")]
    assert len(packed) == 14 and all(t.data_type == 2 for t in packed)  # TensorProto.UINT8
    # Under the threshold the streamed graph is written inline, still the same.
    small = tmp_path / "small.int8-wo.onnx"
    weight_only.quantize_weight_only(fused_graphs["split"], small, INLINE)
    assert graph_files.data_files(small) == ()
    assert_same_graph(want, small)


def test_a_bfloat16_checkpoint_builds_a_float32_model(source: Path, tmp_path: Path) -> None:
    """Tensors are assigned to the parameters (no second copy of the weights), converted to the
    float32 the model is built in; the model computes what one loaded by copy computes."""
    state = load_file(str(source / "model.safetensors"))
    bf16 = {name: t.to(torch.bfloat16) for name, t in state.items()}
    config = config_of(source)
    model = decoder_model.build(config, "Model", bf16)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    reference = decoder_model.build(config, "Model", {k: v.float() for k, v in bf16.items()})
    ids = torch.tensor([[5, 9, 17, 3], [8, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.inference_mode():
        np.testing.assert_array_equal(model(ids, mask).numpy(), reference(ids, mask).numpy())


def config_of(source: Path) -> dict[str, object]:
    config: dict[str, object] = json.loads((source / "config.json").read_text())
    config["_model_dir"] = str(source)
    return config


def test_own_export_keeps_one_copy_of_the_weights(source: Path) -> None:
    """The parameters are the checkpoint's tensors themselves (same storage), not copies."""
    state = own.read_tensors(source)
    model = decoder_model.build(config_of(source), "Model", state)
    storages = {t.untyped_storage().data_ptr() for t in state.values()}
    params = list(model.parameters())
    assert params and all(p.untyped_storage().data_ptr() in storages for p in params)
