"""Graph plumbing shared by the precision rewrites, on ``onnx-ir``.

:func:`prepare` turns a float32 export into the form every precision step reads: a checked copy,
``Constant`` nodes lifted to initializers (weights and constants handled alike), the
exporter's ``Identity(initializer)`` aliases folded, every node named uniquely, and every tensor's
element type inferred. The analysis walks (producers, uses, upstream and downstream regions) use
onnx-ir's ``Value.producer()``/``Value.uses()`` instead of a hand-built index.

What stays on ``onnx.ModelProto``: type inference (called directly so that a failure, such as a
missing custom-op schema, becomes one clear error naming the first untyped tensor), the checker,
and the FP16 rewrite, which builds a new node list in one ordered pass (see :mod:`.fp16`).
"""
from __future__ import annotations

from typing import Iterable

import onnx
import onnx_ir as ir
from onnx import TensorProto
from onnx_ir.passes.common import LiftConstantsToInitializersPass, NameFixPass

from ..errors import UsageError
from .schemas import DOMAIN, register_schemas

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
_CONTROL_FLOW = {"If", "Loop", "Scan"}
_DEFAULT_DOMAINS = ("", "ai.onnx")


def checked_copy(model, what: str = "the model") -> onnx.ModelProto:
    """A copy of ``model`` after the checks every precision step needs (one graph, no control flow,
    not a portable export)."""
    if not isinstance(model, onnx.ModelProto):
        raise UsageError(f"expected an onnx.ModelProto, got {type(model).__name__} (load it with defmamba_deploy.onnx.load_onnx)")
    if not model.graph.node:
        raise UsageError(f"{what} has no graph nodes")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        if n.op_type in _CONTROL_FLOW and n.domain in _DEFAULT_DOMAINS:
            raise UsageError(f"node {n.name or n.op_type} is control flow ({n.op_type}): not supported; "
                             f"convert the custom-op export (not --portable)")
    for meta in out.metadata_props:
        if meta.key == "defmamba.portable" and meta.value == "True":
            raise UsageError("this is a portable export (TokenSort/DeformGather expanded into standard ops, so the "
                             "keep-float32 rules cannot find them): convert the custom-op export instead")
    return out


def opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in _DEFAULT_DOMAINS:
            return o.version
    return 0


class _NodeNames:
    """Names for unnamed nodes: op type and first output, unique by construction (outputs are SSA)
    and independent of the rest of the graph, so the same node gets the same name in every copy."""

    def generate_node_name(self, node: ir.Node) -> str:
        if node.name:
            return node.name
        out = next((v.name for v in node.outputs if v.name), "")
        return f"{node.op_type}/{out}" if out else node.op_type

    def generate_value_name(self, value: ir.Value) -> str:
        return value.name or "v"


def _fold_initializer_aliases(graph: ir.Graph) -> None:
    """Remove ``Identity(initializer)`` nodes (the exporter's shared weights): consumers read the
    initializer. onnx-ir's IdentityEliminationPass would also remove Identity nodes on activations,
    which are real layers for TensorRT's naming; only the weight aliases go."""
    for node in list(graph):
        if node.op_type != "Identity" or node.domain not in _DEFAULT_DOMAINS:
            continue
        src, out = node.inputs[0], node.outputs[0]
        if src is None or not src.is_initializer() or out.is_graph_output():
            continue
        out.replace_all_uses_with(src)
        graph.remove(node, safe=True)


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which every node has a unique name (unnamed ones get
    ``op_type/first_output``; a repeated name gets a numeric suffix). TensorRT's ONNX parser names
    each layer after its node, so parse this copy to map :func:`float32_nodes` names onto layers."""
    irm = ir.from_proto(model)
    NameFixPass(_NodeNames())(irm)
    return ir.to_proto(irm)


def infer_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with element types inferred for every tensor (a one-line error otherwise)."""
    register_schemas()
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # noqa: BLE001 - onnx raises several types
        raise UsageError(f"ONNX shape inference failed on the model ({str(e).strip().splitlines()[0][:200]})") from None
    g = inferred.graph
    typed = {i.name for i in g.initializer}
    typed |= {v.name for v in list(g.input) + list(g.output) + list(g.value_info)
              if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    missing = [o for n in g.node for o in n.output if o and o not in typed]
    if missing:
        raise UsageError(f"could not infer the type of {len(missing)} tensors (first: {missing[0]}); "
                         f"is this a DefMamba export with all custom-op schemas registered?")
    return inferred


def prepare(model, what: str = "the model") -> onnx.ModelProto:
    """The checked, constant-lifted, alias-folded, uniquely named and type-inferred copy that
    every precision step starts from (see the module docstring)."""
    proto = checked_copy(model, what)
    irm = ir.from_proto(proto)
    # every Constant becomes an initializer (integer ones too: shapes and axes read the same from
    # an initializer in ORT and TensorRT, and the rules then see weights and constants alike)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(irm)
    _fold_initializer_aliases(irm.graph)
    NameFixPass(_NodeNames())(irm)
    return infer_types(ir.to_proto(irm))


class Graph:
    """An onnx-ir view of a prepared model for the analyses: node order, element types, walks."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.ir = ir.from_proto(model)
        self.graph = self.ir.graph
        self.nodes: list[ir.Node] = list(self.graph)
        self.position = {n: k for k, n in enumerate(self.nodes)}

    @staticmethod
    def is_custom(node: ir.Node) -> bool:
        return node.domain == DOMAIN

    def of_type(self, op_type: str, domain: str = "") -> list[ir.Node]:
        return [n for n in self.nodes if n.op_type == op_type and (n.domain or "") == domain]

    def ancestors(self, values: Iterable[ir.Value | None]) -> set[ir.Node]:
        """Nodes upstream of ``values``; the walk enters no ``defmamba`` node's inputs."""
        return self._walk(values, lambda v: [v.producer()], lambda n: n.inputs)

    def descendants(self, values: Iterable[ir.Value | None]) -> set[ir.Node]:
        """Nodes downstream of ``values``; the walk does not continue past ``defmamba`` nodes."""
        return self._walk(values, lambda v: [u.node for u in v.uses()], lambda n: n.outputs)

    def _walk(self, values, neighbours, onward) -> set[ir.Node]:
        """The nodes reached from ``values`` through ``neighbours(value)``, continuing along
        ``onward(node)`` except past a custom node."""
        out: set[ir.Node] = set()
        stack, seen = [v for v in values if v is not None], set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            for node in neighbours(v):
                if node is None or node in out:
                    continue
                out.add(node)
                if not self.is_custom(node):
                    stack.extend(x for x in onward(node) if x is not None)
        return out

    @staticmethod
    def carries_float(node: ir.Node) -> bool:
        return any(v is not None and v.dtype == ir.DataType.FLOAT for v in (*node.inputs, *node.outputs))


def check(model: onnx.ModelProto, what: str) -> None:
    register_schemas()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - a bug here, but say where
        raise RuntimeError(f"{what} produced a model that fails the ONNX checker: {str(e).strip()[:500]}") from e


class Names:
    """Fresh tensor/node names that collide with none in the model."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.used = {i.name for i in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
        self.used |= {t for n in g.node for t in list(n.input) + list(n.output)} | {n.name for n in g.node}

    def new(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """tensor name -> element type, from a type-inferred model (see :func:`infer_types`)."""
    g = model.graph
    types = {i.name: i.data_type for i in g.initializer}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    return types


__all__ = ["prepare", "name_nodes", "checked_copy", "infer_types", "opset", "Graph", "Names", "check", "elem_types",
           "FLOAT", "HALF"]
