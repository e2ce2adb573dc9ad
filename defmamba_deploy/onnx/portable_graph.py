"""Plumbing of the portable expansion: unique names, value types and shapes, and the node emitter.

Kept on ``onnx`` protobufs rather than onnx-ir: the expansion rewrites nodes inside Scan bodies and
builds Scan subgraphs of its own, and emits thousands of small nodes, for which the protobuf helpers
are the direct and fast path.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto
from onnx import helper as oh
from onnx import numpy_helper


DOMAIN = "defmamba"
MIN_OPSET = 17
SCAN_IMPLS = ("auto", "chunked", "sequential")
# scan_impl="auto": the chunked scan from this many steps on (and whenever L is not known
# statically), the sequential one below; from timings with ORT 1.32 on 2 CPU cores (module docstring)
CHUNKED_MIN_LENGTH = 512
_SMALL_INITIALIZER = 4096  # elements; smaller initializers (shape constants) stay in the inference copy
_FLOAT, _DOUBLE = TensorProto.FLOAT, TensorProto.DOUBLE
_NP = {_FLOAT: np.float32, _DOUBLE: np.float64}
_SOFTPLUS_THRESHOLD = 20.0  # PyTorch's default (F.softplus(threshold=20))

# --------------------------------------------------------------------------------------- plumbing

class _Names:
    """Fresh names, unique against every name already in the model and every name handed out."""

    def __init__(self, used: set[str]):
        self.used = used
        self.prefixes: set[str] = set()

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def prefix(self, base: str) -> str:
        """A prefix no existing name starts with and not handed out before."""
        cand, k = base, 0
        while cand in self.prefixes or any(n.startswith(cand + "/") for n in self.used):
            k += 1
            cand = f"{base}_{k}"
        self.prefixes.add(cand)
        return cand


class _Context:
    def __init__(self, types: dict[str, int], shapes: dict[str, tuple], names: _Names, opset: int, scan_impl: str):
        self.types, self.shapes, self.names, self.opset, self.scan_impl = types, shapes, names, opset, scan_impl


def _subgraphs(node: NodeProto) -> Iterable[GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _all_names(graph: GraphProto) -> set[str]:
    """Every tensor, node and graph name in ``graph`` and its subgraphs."""
    names = {graph.name}
    for vi in (*graph.input, *graph.output, *graph.value_info):
        names.add(vi.name)
    names.update(t.name for t in graph.initializer)
    names.update(t.values.name for t in graph.sparse_initializer)
    for node in graph.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
        for g in _subgraphs(node):
            names |= _all_names(g)
    names.discard("")
    return names


def _stand_in(node: NodeProto) -> list[NodeProto]:
    """Standard nodes with the custom node's output types, for type inference only."""
    ins, outs = list(node.input), list(node.output)
    if node.op_type in ("SelectiveScan", "DeformGather") and ins and outs and outs[0]:
        return [oh.make_node("Identity", [ins[0]], [outs[0]])]
    if node.op_type == "TokenSort" and ins:
        return [oh.make_node("Cast", [ins[0]], [o], to=TensorProto.INT64) for o in outs if o]
    return []


def _skeleton_graph(graph: GraphProto, top: bool) -> GraphProto:
    """``graph`` without large initializers (main graph) and with typed stand-ins for custom nodes.

    Large initializers become graph inputs of the same type and shape; small ones (shape constants
    that Reshape & co. need for static shapes) are kept.
    """
    g = GraphProto()
    g.name = graph.name
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    if top:
        declared = {vi.name for vi in graph.input}
        for t in graph.initializer:
            if int(np.prod(t.dims)) <= _SMALL_INITIALIZER and t.data_location != TensorProto.EXTERNAL:
                g.initializer.append(t)
            elif t.name not in declared:
                g.input.append(oh.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    else:
        g.initializer.extend(graph.initializer)
    for node in graph.node:
        if node.domain == DOMAIN:
            g.node.extend(_stand_in(node))
            continue
        copy = g.node.add()
        copy.CopyFrom(node)
        for a in copy.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                a.g.CopyFrom(_skeleton_graph(a.g, False))
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    sub.CopyFrom(_skeleton_graph(sub, False))
    return g


def _collect(graph: GraphProto, types: dict[str, int], shapes: dict[str, tuple]) -> None:
    for vi in (*graph.input, *graph.output, *graph.value_info):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is not None and tt.elem_type:
            types.setdefault(vi.name, tt.elem_type)
        if tt is not None and tt.HasField("shape"):
            shapes.setdefault(vi.name, tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim))
    for t in graph.initializer:
        types.setdefault(t.name, t.data_type)
        shapes.setdefault(t.name, tuple(t.dims))
    for node in graph.node:
        for g in _subgraphs(node):
            _collect(g, types, shapes)


def _value_info(model: ModelProto) -> tuple[dict[str, int], dict[str, tuple]]:
    """Element type and shape of every tensor whose type can be inferred (absent when unknown).

    ``types``: name -> TensorProto type; ``shapes``: name -> dims (int, or None for a dynamic dim).

    Shape inference runs on a light copy (no weights) where each custom node is replaced by a
    standard node with the same output type, so it also reaches everything downstream of custom
    nodes whether or not the domain's schemas are registered. Unknown types are simply absent.
    """
    skel = ModelProto()
    skel.ir_version = model.ir_version
    skel.opset_import.extend(imp for imp in model.opset_import if imp.domain != DOMAIN)
    skel.functions.extend(model.functions)
    skel.graph.CopyFrom(_skeleton_graph(model.graph, True))
    types: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    for data_prop in (True, False):  # data propagation gives static dims through shape arithmetic
        try:
            inferred = onnx.shape_inference.infer_shapes(skel, check_type=False, strict_mode=False, data_prop=data_prop)
        except Exception:  # noqa: BLE001 - inference is a best effort; declared types still count
            continue
        _collect(inferred.graph, types, shapes)
        break
    _collect(skel.graph, types, shapes)
    return types, shapes


class _Emitter:
    """Appends standard nodes with fresh, prefixed names; small helpers for the expansions."""

    def __init__(self, ctx: _Context, prefix: str):
        self.ctx, self.prefix, self.nodes = ctx, prefix, []

    def name(self, hint: str) -> str:
        return self.ctx.names.fresh(f"{self.prefix}/{hint}")

    def op(self, op_type: str, *inputs: str, out: str | list[str] | None = None, n_out: int = 1, hint: str | None = None, **attrs):
        """Add one node; returns its output name (or the list of names when ``n_out > 1``)."""
        if out is None:
            outs = [self.name(hint or op_type) for _ in range(n_out)]
        else:
            outs = [out] if isinstance(out, str) else list(out)
        self.nodes.append(oh.make_node(op_type, list(inputs), outs, name=self.name(f"{op_type}_node"), **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, values, elem_type: int, hint: str = "const") -> str:
        arr = np.asarray(values, dtype=_NP.get(elem_type) or onnx.helper.tensor_dtype_to_np_dtype(elem_type))
        return self.op("Constant", value=numpy_helper.from_array(arr), hint=hint)

    def i64(self, *values: int, hint: str = "i64") -> str:
        """A 1-D int64 constant."""
        return self.const(list(values), TensorProto.INT64, hint)

    def scalar(self, value: float, elem_type: int, hint: str = "scalar") -> str:
        return self.const(value, elem_type, hint)

    def dim(self, tensor: str, axis: int, hint: str = "dim") -> str:
        """Shape(tensor)[axis] as a 1-D int64 tensor of one element."""
        return self.op("Shape", tensor, start=axis, end=axis + 1, hint=hint)

    def elem_type(self, tensor: str) -> int:
        return self.ctx.types.get(tensor, 0)

    def static_dim(self, tensor: str, axis: int) -> int | None:
        """The tensor's dim ``axis`` when shape inference knows it, else None."""
        shape = self.ctx.shapes.get(tensor)
        return shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None

    def to(self, tensor: str, elem_type: int) -> str:
        """``tensor`` in ``elem_type`` (no node when its type is known to be that already)."""
        if self.elem_type(tensor) == elem_type:
            return tensor
        return self.op("Cast", tensor, to=elem_type, hint=f"{tensor.rsplit('/', 1)[-1]}_cast")

    def finish(self, value: str, out: str, like: str, compute_type: int) -> None:
        """Write ``value`` (computed in ``compute_type``) to ``out`` in the dtype of ``like``."""
        io_type = self.elem_type(like)
        if io_type == compute_type and self.nodes and list(self.nodes[-1].output) == [value]:
            self.nodes[-1].output[0] = out  # rename the producer's output: no extra node
        elif io_type == compute_type:
            self.op("Identity", value, out=out)
        elif io_type:
            self.op("Cast", value, out=out, to=io_type)
        else:
            self.op("CastLike", value, like, out=out)

    def subgraph(self, hint: str, build: Callable[["_Emitter"], tuple[list, list]]) -> GraphProto:
        """A Scan body: ``build(sub_emitter)`` returns (input value infos, output value infos)."""
        sub = _Emitter(self.ctx, self.prefix)
        inputs, outputs = build(sub)
        return oh.make_graph(sub.nodes, self.name(hint), inputs, outputs)


def _input(node: NodeProto, i: int) -> str:
    """The node's i-th input name, '' when absent (optional inputs)."""
    return node.input[i] if i < len(node.input) else ""


def _output(em: _Emitter, node: NodeProto, i: int, hint: str) -> str:
    """The node's i-th output name, or a fresh name when the output is unused ('' or missing)."""
    name = node.output[i] if i < len(node.output) else ""
    return name or em.name(hint)


def _attr_int(node: NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(oh.get_attribute_value(a))
    return default


def _attr_ints(node: NodeProto, name: str) -> list[int]:
    for a in node.attribute:
        if a.name == name:
            return [int(v) for v in oh.get_attribute_value(a)]
    return []


