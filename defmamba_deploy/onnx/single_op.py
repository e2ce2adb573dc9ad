"""One-node ONNX models of the ``defmamba`` ops, for op-level tests and benchmarks."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .schemas import DOMAIN, OP_SPECS, VERSION

_ELEM = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.float16): onnx.TensorProto.FLOAT16,
         np.dtype(np.float64): onnx.TensorProto.DOUBLE, np.dtype(np.int64): onnx.TensorProto.INT64}


def single_op_model(op_type: str, inputs: dict[str, np.ndarray], *, opset: int = 17, dynamic: bool = True, **attrs) -> onnx.ModelProto:
    """A model with one ``defmamba::op_type`` node whose graph inputs are named like ``inputs``.

    With ``dynamic`` every dimension is symbolic, so the model runs at any shape; outputs have
    the dtype the contract gives (indices int64, otherwise the first input's dtype).
    """
    spec = OP_SPECS[op_type]
    names = spec["inputs"]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise KeyError(f"{op_type} needs inputs {names}; missing {missing}")

    def vi(name, arr):
        shape = [f"{name}_{i}" for i in range(arr.ndim)] if dynamic else list(arr.shape)
        return helper.make_tensor_value_info(name, _ELEM[arr.dtype], shape)

    first = inputs[names[0]]
    out_types = [onnx.TensorProto.INT64 if op_type == "TokenSort" else _ELEM[first.dtype]] * len(spec["outputs"])
    outs = [helper.make_tensor_value_info(o, t, [f"{o}_{i}" for i in range(first.ndim)] if dynamic else list(first.shape))
            for o, t in zip(spec["outputs"], out_types)]
    node = helper.make_node(op_type, names, spec["outputs"], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], f"{op_type}_single", [vi(n, inputs[n]) for n in names], outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, VERSION)])
