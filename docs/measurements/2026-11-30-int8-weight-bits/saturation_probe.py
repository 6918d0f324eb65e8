import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

K, N = 64, 16
w = np.full((K, N), 127, np.int8)
w[:, 1] = 63
g = helper.make_graph(
    [
        helper.make_node(
            "MatMulIntegerToFloat", ["a", "w", "sa", "sw", "za"], ["y"], domain="com.microsoft"
        )
    ],
    "g",
    [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, K])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.float32(1), "sa"),
        numpy_helper.from_array(np.float32(1), "sw"),
        numpy_helper.from_array(np.uint8(0), "za"),
    ],
)
m = helper.make_model(
    g,
    opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    ir_version=8,
)
s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
a = np.full((8, K), 255, np.uint8)
y = s.run(None, {"a": a})[0]
print("127-col:", y[0, 0], "exact", 255 * 127 * K, "| 63-col:", y[0, 1], "exact", 255 * 63 * K)
