"""Small hand-built inputs shared by several test modules."""
import numpy as np
from onnx import helper

# (x, what the one-line error must say): every runner rejects these before its backend sees them
BAD_BATCHES = [
    (np.zeros((3, 64, 64), np.float32), "rank 4"),
    (np.zeros((1, 3, 64, 64), np.float64), "float32"),
    (np.zeros((1, 1, 64, 64), np.float32), "3 channels"),
    (np.zeros((1, 3, 32, 64), np.float32), ">= 33"),
    (np.zeros((0, 3, 64, 64), np.float32), "batch size 0"),
    ([[1.0]], "numpy array"),
]


def decomposed_layer_norm(x: str = "X", out: str = "n") -> tuple[list[tuple[str, np.ndarray]], list]:
    """LayerNorm over the last axis as the exporter writes it (no scale): (initializers, nodes)."""
    inits = [("axes", np.array([-1], np.int64)), ("two", np.array(2.0, np.float32)), ("eps", np.array(1e-5, np.float32))]
    nodes = [
        helper.make_node("ReduceMean", [x, "axes"], ["mean"], name="mean"),
        helper.make_node("Sub", [x, "mean"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq", "axes"], ["var"], name="var"),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["std"], name="sqrt"),
        helper.make_node("Div", ["d", "std"], [out], name="div"),
    ]
    return inits, nodes
