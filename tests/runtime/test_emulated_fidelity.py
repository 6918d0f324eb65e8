"""scripts/emulated_fidelity.py: the fidelity subset it judges (rows aligned with the reference),
the child's command line, and one real run under qemu-x86_64 -cpu Haswell on the tiny hand-built
package (skipped where qemu-user is not installed: it is not a dependency of tei_ort)."""

from __future__ import annotations

import functools
import importlib.util
import json
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tei_ort.fidelity import ValidationSet
from tei_ort.runtime import Model, RuntimeOptions, fidelity_check
from tei_ort.runtime.fidelity_check import FidelitySet

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "emulated_fidelity.py"
QUERIES = ("what is a list", "how do I sort", "the for loop")
PASSAGES = ("lists hold items.", "sorting orders items.", "loops repeat.", "files persist.")


@functools.cache
def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("emulated_fidelity", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def _numbered_set() -> FidelitySet:
    rows = np.arange(7, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # row i == i
    return FidelitySet(ValidationSet(QUERIES, PASSAGES, 2, 3), rows)


def test_a_subset_keeps_the_first_queries_and_passages_with_their_reference_rows() -> None:
    cut = _script().subset(_numbered_set(), 2, 1)
    assert cut.fidelity.vset.queries == QUERIES[:2]
    assert cut.fidelity.vset.passages == PASSAGES[:1]
    assert cut.rows.tolist() == [0, 1, 3]  # passage 0 is row 3 of the full set
    assert cut.fidelity.reference[:, 0].tolist() == [0.0, 1.0, 3.0]
    assert (cut.fidelity.vset.rerank_queries, cut.fidelity.vset.rerank_passages) == (2, 1)


def test_no_limits_keep_the_whole_set_and_limits_past_its_size_are_clipped() -> None:
    full = _numbered_set()
    assert _script().subset(full, None, None).rows.tolist() == list(range(7))
    assert _script().subset(full, 10, 10).rows.tolist() == list(range(7))


def test_a_set_with_token_heads_is_refused() -> None:
    full = _numbered_set()
    with_heads = FidelitySet(full.vset, full.reference, {"colbert": np.zeros((20, 3), np.float32)})
    with pytest.raises(ValueError, match="token heads"):
        _script().subset(with_heads, 1, 1)


def test_the_child_runs_this_script_under_the_emulator_with_the_cpu_model() -> None:
    cmd = _script().emulator_command(
        "qemu-aarch64 -L /root", "neoverse-n1", "/py", Path("pkg"), "int8", Path("o.npz"), ["-x"]
    )
    assert cmd == [
        "qemu-aarch64",
        "-L",
        "/root",
        "-cpu",
        "neoverse-n1",
        "/py",
        str(SCRIPT),
        "pkg",
        "--child",
        "int8",
        "--out",
        "o.npz",
        "-x",
    ]


def test_a_cpuinfo_file_is_bound_over_proc_cpuinfo_in_a_private_mount_namespace() -> None:
    cmd = _script().emulator_command(
        "qemu-aarch64", "max", "/py", Path("pkg"), "int8", Path("o.npz"), [], Path("/c/info")
    )
    assert cmd[:4] == ["unshare", "--mount", "sh", "-c"]
    assert cmd[4] == 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
    assert cmd[5] == "/c/info"  # $0 of the sh -c script
    assert cmd[6:9] == ["qemu-aarch64", "-cpu", "max"]


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-user is not installed")
@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates x86_64 on an x86_64 host")
def test_under_emulated_haswell_the_child_sees_avx2_without_avx512_and_matches_native(
    make_package: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = make_package()
    vset = ValidationSet(QUERIES, PASSAGES)
    model = Model.load(package, RuntimeOptions(provider="cpu", allow_unvalidated=True))
    fidelity_check.write_fidelity_set(package, vset, model.embed(list(vset.texts)))
    argv = [str(package), "--variants", "fp32", "--queries", "2", "--passages", "2"]
    assert _script().main([*argv, "--keep", str(tmp_path), "--python", sys.executable]) == 0

    with np.load(tmp_path / f"{package.name}.Haswell.fp32.npz", allow_pickle=False) as data:
        emulated, seen = data["output"], json.loads(str(data["seen"]))
    # MLAS chose its kernels from the emulated CPUID: AVX2 and FMA, no AVX-512, no VNNI.
    assert seen["cpuid"]["AVX2"] and seen["cpuid"]["FMA3"]
    assert not seen["cpuid"]["AVX512F"] and not seen["cpuid"]["AVX512VNNI"]
    reference = model.embed([*QUERIES[:2], *PASSAGES[:2]])
    np.testing.assert_allclose(emulated, reference, atol=1e-5)  # fp32 gathers and means: exact
    out = capsys.readouterr().out
    assert "fp32 emulated: PASS cosine min 1.000000" in out


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _int8_gemm(weight: np.ndarray) -> onnx.ModelProto:
    """One MatMulIntegerToFloat as the quantizer writes it: u8 activations (zero point 128, scale
    1), s8 weights with a scale per column."""
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array([0.5, 0.25, 2.0], np.float32), "w_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp"),
    ]
    node = helper.make_node(
        "MatMulIntegerToFloat", ["a", "w", "one", "w_scale", "zp"], ["y"], domain="com.microsoft"
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def test_u8u8_weights_give_the_same_products_as_the_int8_weights() -> None:
    import onnxruntime as ort

    weight = np.array([[-128, 127, 3], [127, -128, -7], [5, 127, 127], [-1, 0, 127]], np.int8)
    a = np.array([[255, 0, 200, 128], [1, 255, 255, 77]], np.uint8)
    model = _int8_gemm(weight)
    assert _load("emulate_u8u8_experiment").to_u8u8(model) == 1
    shifted = numpy_helper.to_array(model.graph.initializer[0])
    assert shifted.dtype == np.uint8 and shifted[0].tolist() == [0, 255, 131]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    exact = (a.astype(np.int64) - 128) @ weight.astype(np.int64) * np.array([0.5, 0.25, 2.0])
    np.testing.assert_allclose(session.run(None, {"a": a})[0], exact, rtol=1e-6)
