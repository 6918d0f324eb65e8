"""Which int8 GEMMs of a package's graph lose accuracy on an emulated CPU: each
MatMulIntegerToFloat's output against the exact integer product of its own inputs, natively and
under `qemu-x86_64 -cpu <cpu>`.

Why: on AVX2 without VNNI, MLAS's u8s8 kernels add pairs of u8 x s8 products in saturating int16
(vpmaddubsw): |255 * 127 * 2| > 32,767, so a GEMM whose activations and weights are both large
saturates, and only on that class. Comparing each GEMM with the exact product of the very inputs
it received (numpy, int64) isolates the kernel's error from the error carried in from earlier
layers. Exact on VNNI/AMX; on a saturating class the error names the layers.

    .venv/bin/python scripts/emulate_int8_layers.py /tmp/pkg --variant int8 --text "hello"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from tokenizers import Tokenizer

GEMM = "MatMulIntegerToFloat"


def _gemms(graph: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in graph.graph.node if n.op_type == GEMM]


def run(package: Path, variant: str, text: str, out: Path) -> None:
    """Every GEMM's activations and output for `text`, as numpy arrays in `out`."""
    graph = onnx.load(str(package / f"model.{variant}.onnx"))
    names = {name for n in _gemms(graph) for name in (n.input[0], n.output[0])}
    known = {o.name for o in graph.graph.output}
    graph.graph.output.extend(onnx.ValueInfoProto(name=n) for n in sorted(names - known))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the nodes
    session = ort.InferenceSession(graph.SerializeToString(), options, ["CPUExecutionProvider"])
    encoding = Tokenizer.from_file(str(package / "tokenizer.json")).encode(text)
    feeds = {
        "input_ids": np.array([encoding.ids], np.int64),
        "attention_mask": np.array([encoding.attention_mask], np.int64),
        "token_type_ids": np.array([encoding.type_ids], np.int64),
    }
    wanted = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    values = session.run(outputs, {k: v for k, v in feeds.items() if k in wanted})
    np.savez(
        out, **{name.replace("/", "|"): value for name, value in zip(outputs, values, strict=True)}
    )


def exact_errors(package: Path, variant: str, values: dict[str, np.ndarray]) -> dict[str, float]:
    """Per GEMM: max |output - exact| / max |exact| over the run's own inputs."""
    graph = onnx.load(str(package / f"model.{variant}.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    errors = {}
    for node in _gemms(graph):
        a = values[node.input[0].replace("/", "|")].astype(np.int64)
        w = inits[node.input[1]].astype(np.int64)
        a_scale, w_scale = inits[node.input[2]], inits[node.input[3]]
        a_zp = inits[node.input[4]].astype(np.int64) if len(node.input) > 4 and node.input[4] else 0
        w_zp = inits[node.input[5]].astype(np.int64) if len(node.input) > 5 and node.input[5] else 0
        exact = ((a - a_zp) @ (w - w_zp)).astype(np.float64) * a_scale * w_scale
        got = values[node.output[0].replace("/", "|")].astype(np.float64)
        errors[node.name] = float(np.max(np.abs(got - exact)) / max(np.max(np.abs(exact)), 1e-30))
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--text", required=True)
    parser.add_argument("--cpu", default="Haswell")
    parser.add_argument("--emulator", default="qemu-x86_64", help="e.g. 'qemu-aarch64 -L root'")
    parser.add_argument("--python", default=sys.executable, help="the interpreter qemu runs")
    parser.add_argument("--pythonpath", default="", help="the child's PYTHONPATH (foreign wheels)")
    parser.add_argument("--cpuinfo", type=Path, default=None, help="bound over /proc/cpuinfo")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        run(args.package, args.variant, args.text, args.child)
        return 0
    work = Path(tempfile.mkdtemp(prefix="emulate_int8_layers_"))
    me = [str(Path(__file__).resolve()), str(args.package)]
    me += ["--variant", args.variant, "--text", args.text, "--child"]
    subprocess.run([sys.executable, *me, str(work / "native.npz")], check=True)
    emulated = [*shlex.split(args.emulator), "-cpu", args.cpu, args.python, *me]
    if args.cpuinfo is not None:  # see emulated_fidelity.emulator_command
        bind = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
        emulated = ["unshare", "--mount", "sh", "-c", bind, str(args.cpuinfo.resolve()), *emulated]
    env = dict(os.environ, PYTHONPATH=args.pythonpath) if args.pythonpath else None
    subprocess.run(
        [*emulated, str(work / "emulated.npz")], check=True, stderr=subprocess.DEVNULL, env=env
    )
    report = {}
    for where in ("native", "emulated"):
        with np.load(work / f"{where}.npz") as data:
            report[where] = exact_errors(args.package, args.variant, dict(data))
    print(f"{args.variant}: max |GEMM - exact| / max |exact| per GEMM (native | {args.cpu})")
    for name in report["native"]:
        print(f"  {name:24s} {report['native'][name]:.2e} | {report['emulated'][name]:.2e}")
    (work / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
