"""How an exported graph is written to disk: one protobuf file, or, past a size threshold, the
graph file plus one external-data file beside it holding every large tensor.

Protobuf cannot serialize a message over 2 GiB, so a model with more than ~500M float32 weights
(Qwen3-Embedding-0.6B's graph is 2.4 GB) cannot be a single .onnx file. Every graph tei-export
writes goes through `save`, which switches to external data above `threshold_bytes`; the data file
is always `<graph>.data` (the name onnxruntime.transformers and tei_ort.export.quantize use), so a
package stays a flat, self-contained folder and each graph's data file is known from its name.
The threshold is a parameter (ExportOptions.external_data_threshold_bytes) so that tests can force
a tiny model through the external-data path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tei_ort.errors import PackageError

if TYPE_CHECKING:
    import onnx

DATA_SUFFIX = ".data"
# protobuf's hard limit is 2 GiB (2,147,483,648 bytes) for the whole serialized ModelProto; the
# margin leaves room for the graph's nodes and value infos beside the weights. The largest
# threshold `save` accepts.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000
# Tensors smaller than this stay inside the graph file (shapes, scalars, small biases): fewer
# seeks at load, and the graph file stays readable on its own for inspection.
SMALL_TENSOR_BYTES = 1024
CONTRIB_DOMAIN = "com.microsoft"
# A graph's structure (load_structure) holds its tensors up to this size: the shape inference of
# fusion and fp16 conversion reads the values of norm weights and biases (a Mul by an
# initializer), never of weight matrices, which stay on disk.
STRUCTURE_INLINE_BYTES = 1 << 20


def data_file(graph: Path) -> Path:
    return graph.with_name(graph.name + DATA_SUFFIX)


def save(model: onnx.ModelProto, graph: Path, threshold_bytes: int) -> None:
    """Write `model` to `graph`, with its tensors in `<graph>.data` when it is larger than
    `threshold_bytes`. A stale data file from an earlier save is removed first: onnx appends to
    an existing one."""
    import onnx

    if threshold_bytes > EXTERNAL_DATA_THRESHOLD_BYTES:
        raise ValueError(
            f"threshold_bytes {threshold_bytes} is above {EXTERNAL_DATA_THRESHOLD_BYTES}: "
            "protobuf cannot write a graph over 2 GiB"
        )
    _import_contrib_domain(model)
    data = data_file(graph)
    data.unlink(missing_ok=True)
    graph.unlink(missing_ok=True)
    if tensor_bytes(model) <= threshold_bytes:
        onnx.save(model, str(graph))
        return
    onnx.save(
        model,
        str(graph),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=SMALL_TENSOR_BYTES,
    )
    # onnx creates the data file private (0600); give it the graph file's umask-derived mode, so
    # that a server running as another user (the images' non-root one) can read both.
    data.chmod(graph.stat().st_mode & 0o777)


def load(graph: Path) -> onnx.ModelProto:
    """The whole model in memory, external tensors included (read from beside `graph`)."""
    import onnx

    return onnx.load(str(graph), load_external_data=True)


def load_structure(graph: Path, inline_bytes: int | None = None) -> onnx.ModelProto:
    """The graph with its large tensors left on disk (references into `<graph>.data`): the
    nodes and the tensors up to `inline_bytes` (STRUCTURE_INLINE_BYTES, read at the call so that
    a test can send a tiny model's weights down the on-disk path), whatever the model's size."""
    import onnx
    from onnx.external_data_helper import (
        ExternalDataInfo,
        _get_all_tensors,
        load_external_data_for_tensor,
        uses_external_data,
    )

    inline_bytes = STRUCTURE_INLINE_BYTES if inline_bytes is None else inline_bytes
    model = onnx.load(str(graph), load_external_data=False)
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor) and (ExternalDataInfo(tensor).length or 0) <= inline_bytes:
            load_external_data_for_tensor(tensor, str(graph.parent))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    return model


def has_external_data(model: onnx.ModelProto) -> bool:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return any(uses_external_data(tensor) for tensor in _get_all_tensors(model))


# (tensor, its stored bytes) -> the bytes to write: a conversion applied tensor by tensor
# (fuse.convert_fp16's float32 -> float16); the tensor's data_type is already the new one.
TensorBytes = Callable[["onnx.TensorProto", bytes], bytes]


def save_streamed(
    model: onnx.ModelProto,
    source_dir: Path,
    graph: Path,
    threshold_bytes: int,
    convert: TensorBytes | None = None,
) -> None:
    """Write `model`, whose external tensors refer to files in `source_dir` (a structure from
    `load_structure`, or torch.onnx's one-file-per-tensor export), to `graph` in the package
    layout, reading one external tensor at a time (through `convert` when given): memory stays
    at one tensor, not the whole model (a 1.5B decoder's 6 GB). Graphs up to `threshold_bytes`
    are written as one file, as `save` does. `source_dir`'s files may be the ones `graph`
    replaces (a graph rewritten under its own name): the data goes to a new file, renamed into
    place at the end."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    tensors = list(_get_all_tensors(model))
    total = sum(_nbytes(t) if uses_external_data(t) else len(t.raw_data) for t in tensors)
    if total <= threshold_bytes:
        for tensor in tensors:
            if uses_external_data(tensor):
                blob = _read(tensor, source_dir, convert)
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.DEFAULT
                tensor.raw_data = blob
        save(model, graph, threshold_bytes)
        return
    _import_contrib_domain(model)
    data = data_file(graph)
    partial = data.with_name(data.name + ".partial")
    with partial.open("wb") as out:
        for tensor in tensors:
            if uses_external_data(tensor):
                blob = _read(tensor, source_dir, convert)
            elif len(tensor.raw_data) > SMALL_TENSOR_BYTES:
                blob = tensor.raw_data
            else:
                continue
            offset = out.tell()
            out.write(blob)
            tensor.ClearField("raw_data")
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", offset), ("length", len(blob))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
    graph.unlink(missing_ok=True)
    partial.replace(data)
    onnx.save(model, str(graph))
    data.chmod(graph.stat().st_mode & 0o777)


def _read(tensor: onnx.TensorProto, source_dir: Path, convert: TensorBytes | None) -> bytes:
    from onnx.external_data_helper import ExternalDataInfo

    info = ExternalDataInfo(tensor)
    with (source_dir / info.location).open("rb") as src:
        src.seek(info.offset or 0)
        blob = src.read() if info.length is None else src.read(info.length)
    return blob if convert is None else convert(tensor, blob)


def _nbytes(tensor: onnx.TensorProto) -> int:
    """From its type and shape, not its stored length (which a conversion changes)."""
    import math

    from onnx.helper import tensor_dtype_to_np_dtype

    return math.prod(tensor.dims) * tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def data_files(graph: Path) -> tuple[str, ...]:
    """The external-data files `graph` refers to, as names beside it (sorted). Only `<graph>.data`
    is accepted: a reference elsewhere would make the package depend on files it does not hold."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(graph), load_external_data=False)
    locations = {
        ExternalDataInfo(tensor).location
        for tensor in _get_all_tensors(model)
        if uses_external_data(tensor)
    }
    expected = data_file(graph).name
    stray = sorted(locations - {expected})
    if stray:
        raise PackageError(
            f"{graph.name}: tensors stored outside the package layout ({', '.join(stray)}); "
            f"only {expected} is allowed"
        )
    return tuple(sorted(locations))


def _import_contrib_domain(model: onnx.ModelProto) -> None:
    """Fused graphs hold com.microsoft ops (Attention, SkipLayerNormalization, MatMulNBits); the
    model must import that domain, as onnxruntime.transformers' own save adds it."""
    from onnx import helper

    uses = any(node.domain == CONTRIB_DOMAIN for node in model.graph.node)
    if uses and not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))


def tensor_bytes(model: onnx.ModelProto) -> int:
    """The serialized size, estimated from the initializers: ModelProto.ByteSize() itself is
    unreliable past 2 GiB in some protobuf builds, and the weights are nearly all of it."""
    from onnx.external_data_helper import _get_all_tensors

    return sum(len(t.raw_data) or t.ByteSize() for t in _get_all_tensors(model))
