"""An input-size check inside the exported graph, for models with a dynamic height and width.

DefMamba needs H, W >= 33 (``model.MIN_INPUT_SIZE``: four stride-2 stages must leave at least 2x2
for the deformable sampling, whose grid divides by H - 1 and W - 1). With static H and W every
runtime already rejects another size with its own shape check. With ``--dynamic shape`` nothing
would: the custom-op model would fail deep inside (``DeformGather: ... H >= 2``) and the portable
model would silently return NaN. So the export puts one check in front of everything else:

    hw     = Shape(input, start=2, end=4)
    bad    = Or(hw[0] < 33, hw[1] < 33)
    input' = Reshape(input, Concat([0, 0], Where(bad, [-1, -1], [0, 0])))

``Reshape`` with ``[0, 0, 0, 0]`` is the identity (0 copies the dimension; ONNX Runtime aliases the
buffer, no copy); with two -1 it is invalid, so any runtime fails on it, and ONNX Runtime's error
names the node, whose name carries the message:

    Non-zero status code returned while running Reshape node. Name:'defmamba_input_check: height
    and width must be >= 33 px (resize or pad the image)' ...

TensorRT does not need it (an engine's optimisation profile already bounds the shapes, from 33 up):
``strip_input_guard`` removes it before the ONNX parser sees the graph.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

GUARD_PREFIX = "defmamba_input_check"


def _message(min_size: int) -> str:
    return f"{GUARD_PREFIX}: height and width must be >= {min_size} px (resize or pad the image)"


def has_input_guard(model: onnx.ModelProto) -> bool:
    return any(n.name.startswith(GUARD_PREFIX) for n in model.graph.node)


def add_input_guard(model: onnx.ModelProto, input_name: str, min_size: int) -> None:
    """Insert the check in front of ``input_name`` (in place); every consumer then reads the checked tensor."""
    g = model.graph
    if has_input_guard(model):
        return
    checked = f"{input_name}_checked"
    t = {k: f"{GUARD_PREFIX}/{k}" for k in ("hw", "min", "small", "h_small", "w_small", "bad", "tail", "shape")}
    consts = {
        "min": helper.make_tensor("v", TensorProto.INT64, [2], [min_size, min_size]),
        "i0": helper.make_tensor("v", TensorProto.INT64, [], [0]),
        "i1": helper.make_tensor("v", TensorProto.INT64, [], [1]),
        "neg": helper.make_tensor("v", TensorProto.INT64, [2], [-1, -1]),
        "keep": helper.make_tensor("v", TensorProto.INT64, [2], [0, 0]),
    }
    nodes = [helper.make_node("Constant", [], [f"{GUARD_PREFIX}/{k}_c"], name=f"{GUARD_PREFIX}/{k}_c", value=v)
             for k, v in consts.items()]
    c = {k: f"{GUARD_PREFIX}/{k}_c" for k in consts}
    nodes += [
        helper.make_node("Shape", [input_name], [t["hw"]], name=f"{GUARD_PREFIX}/shape_hw", start=2, end=4),
        helper.make_node("Less", [t["hw"], c["min"]], [t["small"]], name=f"{GUARD_PREFIX}/less"),
        helper.make_node("Gather", [t["small"], c["i0"]], [t["h_small"]], name=f"{GUARD_PREFIX}/h", axis=0),
        helper.make_node("Gather", [t["small"], c["i1"]], [t["w_small"]], name=f"{GUARD_PREFIX}/w", axis=0),
        helper.make_node("Or", [t["h_small"], t["w_small"]], [t["bad"]], name=f"{GUARD_PREFIX}/or"),
        helper.make_node("Where", [t["bad"], c["neg"], c["keep"]], [t["tail"]], name=f"{GUARD_PREFIX}/where"),
        helper.make_node("Concat", [c["keep"], t["tail"]], [t["shape"]], name=f"{GUARD_PREFIX}/concat", axis=0),
        helper.make_node("Reshape", [input_name, t["shape"]], [checked], name=_message(min_size)),
    ]
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == input_name:
                node.input[i] = checked
    for out in g.output:  # (a graph output that is the input itself: not the case for DefMamba)
        if out.name == input_name:
            raise ValueError("cannot guard a graph input that is also a graph output")
    existing = list(g.node)
    del g.node[:]
    g.node.extend(nodes + existing)


def strip_input_guard(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without the check (consumers read the graph input again)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    reshape = [n for n in g.node if n.name.startswith(GUARD_PREFIX) and n.op_type == "Reshape"]
    if not reshape:
        return out
    checked, source = reshape[0].output[0], reshape[0].input[0]
    kept = [n for n in g.node if not n.name.startswith(GUARD_PREFIX)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name == checked:
                node.input[i] = source
    del g.node[:]
    g.node.extend(kept)
    return out
