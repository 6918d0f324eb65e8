import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)


def sess(w):
    K, _N = w.shape
    g = helper.make_graph(
        [
            helper.make_node(
                "MatMulIntegerToFloat", ["a", "w", "sa", "sw", "za"], ["y"], domain="com.microsoft"
            )
        ],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, None, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.float32(1), "sa"),
            numpy_helper.from_array(np.float32(1), "sw"),
            numpy_helper.from_array(np.uint8(128), "za"),
        ],
    )
    m = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=8,
    )
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


for K in (384, 1536, 390):
    for pairs in ("even", "odd"):
        N = 64
        # random pair-limited weights: |w[2j]|+|w[2j+1]| <= 128, many pairs at the budget
        w = rng.integers(-127, 128, (K, N))
        off = 0 if pairs == "even" else 1
        for k in range(off, K - 1, 2):
            s = np.abs(w[k]) + np.abs(w[k + 1])
            over = s > 128
            w[k + 1, over] = np.sign(w[k + 1, over]) * (128 - np.abs(w[k, over]))
        w = w.astype(np.int8)
        a = rng.choice(np.array([0, 1, 254, 255], np.uint8), (2, 8, K))
        exact = ((a.astype(np.int64) - 128) @ w.astype(np.int64)).astype(np.float64)
        for M in (1, 8):
            y = sess(w).run(None, {"a": a[:, :M]})[0]
            err = np.abs(y - exact[:, :M]).max()
            print(f"K={K} pairs={pairs} M={M} max abs err {err:.0f}")
