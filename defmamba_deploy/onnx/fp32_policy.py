"""The one float32 policy: which ONNX nodes must compute in float32 at reduced precision.

Every rule is a graph rule (op types, custom-op inputs, paths between them), never a layer-name
match, so the same set comes out for every DefMamba variant and every backend:

* TensorRT 11 (strongly typed) gets it through the ONNX rewrite :func:`~.fp16.convert_fp16`;
* TensorRT 10 gets it as layer precisions + ``OBEY_PRECISION_CONSTRAINTS``: TensorRT's ONNX parser
  names each layer after its node, so :func:`float32_nodes` names are layer names when the parsed
  file is :func:`~.graph.name_nodes` of the export (unnamed nodes named the same way here);
* INT8 leaves the policy's Conv/MatMul/Gemm unquantised (``nodes_to_exclude``).

The rules, in priority order (a node kept for several reports the first reason):

* **SelectiveScan A, D, delta_bias** (mandatory): the nodes computing them (``A = -exp(A_logs)``),
  not shared with the path to ``u``; the op schema types them float32.
* **TokenSort** (mandatory): the op sorts a float32 key.
* **offset network** (``offset_network``): nodes on a path from a DeformGather's sampled
  activation to its ``offset`` input or to a TokenSort input, not passing through ``defmamba``
  ops (DefMamba's ``conv_offset`` plus the slice of the token-offset channel).
* **delta path** (``delta_path``, off by default): nodes feeding SelectiveScan's ``delta`` but not
  its ``u``.
* **LayerNorm** (``layer_norm``): LayerNormalization and decomposed LayerNorm/RMSNorm patterns.
* **reductions/softmax** (``reductions``).
* **classifier head** (``head``): the Gemm/MatMul producing a graph output, walking back through
  reshapes and constant bias adds/scales.
* **DeformGather** (``deform_gather``, off by default) and the user's ``nodes``/``op_types``.

Only nodes that read or write a float32 tensor are reported: a node of integer tensors has no
float precision to pin. The measured effect of each rule is in :mod:`.precision`.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_ir as ir

from ..errors import UsageError
from .graph import Graph, prepare
from .schemas import DOMAIN

_REDUCTION_OPS = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
                  "ReduceLogSumExp", "ReduceProd", "Softmax", "LogSoftmax", "GlobalAveragePool", "CumSum"}
_HEAD_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast"}

R_SCAN_PARAMS = "computes SelectiveScan A/D/delta_bias (float32 by schema: exp(delta*A) in float32)"
R_TOKEN_SORT = "TokenSort: sorts a float32 key (reference positions collapse in float16)"
R_OFFSET = "offset network: feeds the sampling offsets / sort key"
R_DELTA = "delta path: feeds SelectiveScan delta (dt projection)"
R_LAYER_NORM = "LayerNorm: variance in float32"
R_REDUCTION = "reduction/softmax: accumulates in float32"
R_HEAD = "classifier head: produces a graph output"
R_DEFORM = "DeformGather kept float32 by policy"
R_USER = "requested by policy (nodes/op_types)"


@dataclass(frozen=True)
class Fp32Policy:
    """Which optional regions stay float32 (FP16) or unquantised (INT8). See the module docstring.

    Mandatory, not switchable: graph I/O, SelectiveScan A/D/delta_bias and the TokenSort input.
    ``nodes``/``op_types``: extra node names / op types to keep in float32.
    """

    offset_network: bool = True
    layer_norm: bool = True
    reductions: bool = True
    head: bool = True
    delta_path: bool = False
    deform_gather: bool = False
    nodes: frozenset[str] = frozenset()
    op_types: frozenset[str] = frozenset()


DEFAULT_POLICY = Fp32Policy()


def _offset_network(g: Graph) -> set[ir.Node]:
    gathers = g.of_type("DeformGather", DOMAIN)
    sources = [n.inputs[0] for n in gathers]
    targets = [n.inputs[1] for n in gathers] + [n.inputs[0] for n in g.of_type("TokenSort", DOMAIN)]
    if not sources or not targets:
        return set()
    return {n for n in g.descendants(sources) & g.ancestors(targets) if not g.is_custom(n)}


def _scan_param_nodes(g: Graph) -> set[ir.Node]:
    out: set[ir.Node] = set()
    for s in g.of_type("SelectiveScan", DOMAIN):
        out |= g.ancestors([s.inputs[2], s.inputs[5], s.inputs[6]]) - g.ancestors([s.inputs[0]])
    return {n for n in out if not g.is_custom(n)}


def _delta_path(g: Graph) -> set[ir.Node]:
    out: set[ir.Node] = set()
    for s in g.of_type("SelectiveScan", DOMAIN):
        out |= g.ancestors([s.inputs[1]]) - g.ancestors([s.inputs[0]])
    return {n for n in out if not g.is_custom(n)}


def _op(v: ir.Value | None) -> str | None:
    p = v.producer() if v is not None else None
    return p.op_type if p is not None else None


def _norm_patterns(g: Graph) -> set[ir.Node]:
    """Decomposed LayerNorm/RMSNorm: Sqrt(Add(ReduceMean(Pow|Mul(d)), eps)) dividing d; all nodes in between."""
    out: set[ir.Node] = set()
    for sqrt in g.of_type("Sqrt"):
        if _op(sqrt.inputs[0]) != "Add":
            continue
        add = sqrt.inputs[0].producer()
        var = next((v.producer() for v in add.inputs if _op(v) == "ReduceMean"), None)
        if var is None or _op(var.inputs[0]) not in ("Pow", "Mul"):
            continue
        d = var.inputs[0].producer().inputs[0]  # centred input (LayerNorm) or the input itself (RMSNorm)
        source = d.producer().inputs[0] if _op(d) == "Sub" else d
        ends = []  # the normalising division: Div(d, sqrt) or Mul(d, Reciprocal(sqrt))
        for c in sqrt.outputs[0].consumers():
            if c.op_type == "Div":
                ends.append(c.outputs[0])
            elif c.op_type == "Reciprocal":
                ends += [m.outputs[0] for m in c.outputs[0].consumers() if m.op_type == "Mul"]
        if ends:
            out |= g.descendants([source]) & g.ancestors(ends)
    return out


def _head_nodes(g: Graph) -> set[ir.Node]:
    out: set[ir.Node] = set()
    for o in g.graph.outputs:
        walked, v = [], o
        while (n := v.producer()) is not None:
            walked.append(n)
            if n.op_type in ("Gemm", "MatMul"):
                out.update(walked)
                break
            if n.op_type in _HEAD_PASS_THROUGH:
                v = n.inputs[0]
            elif n.op_type in ("Add", "Mul") and sum(x.is_initializer() for x in n.inputs) == 1:
                v = next(x for x in n.inputs if not x.is_initializer())
            else:
                break
    return out


def keep_float(g: Graph, policy: Fp32Policy) -> dict[ir.Node, str]:
    """node -> reason for every node of the prepared graph ``g`` that stays float32, in graph order."""
    if not isinstance(policy, Fp32Policy):
        raise UsageError(f"the float32 policy must be an Fp32Policy, got {type(policy).__name__}")
    default = ("", "ai.onnx")
    rules: list[tuple[str, set[ir.Node]]] = [
        (R_SCAN_PARAMS, _scan_param_nodes(g)),
        (R_TOKEN_SORT, set(g.of_type("TokenSort", DOMAIN))),
    ]
    if policy.offset_network:
        rules.append((R_OFFSET, _offset_network(g)))
    if policy.delta_path:
        rules.append((R_DELTA, _delta_path(g)))
    if policy.layer_norm:
        rules.append((R_LAYER_NORM, set(g.of_type("LayerNormalization")) | _norm_patterns(g)))
    if policy.reductions:
        rules.append((R_REDUCTION, {n for n in g.nodes if n.op_type in _REDUCTION_OPS and n.domain in default}))
    if policy.head:
        rules.append((R_HEAD, _head_nodes(g)))
    if policy.deform_gather:
        rules.append((R_DEFORM, set(g.of_type("DeformGather", DOMAIN))))
    if policy.nodes or policy.op_types:
        unknown = set(policy.nodes) - {n.name for n in g.nodes}
        if unknown:
            raise UsageError(f"policy names nodes that are not in the graph: {sorted(unknown)[:5]}")
        rules.append((R_USER, {n for n in g.nodes if n.name in policy.nodes or n.op_type in policy.op_types}))
    keep: dict[ir.Node, str] = {}
    for reason, nodes in rules:
        for n in nodes:
            keep.setdefault(n, reason)
    return dict(sorted(keep.items(), key=lambda kv: g.position[kv[0]]))


def float32_nodes(model: onnx.ModelProto, policy: Fp32Policy = DEFAULT_POLICY) -> dict[str, str]:
    """``{node name: reason}`` for the nodes of ``model`` that must compute in float32 (module
    docstring), in graph order. Names are those of :func:`~.graph.name_nodes`: a named node keeps
    its name, so for an exporter's model (all nodes named) they are the model's own names.
    The same set is what :func:`~.fp16.convert_fp16` keeps (``Fp16Report.kept_names``)."""
    g = Graph(prepare(model))
    return {n.name: r for n, r in keep_float(g, policy).items() if g.carries_float(n)}


__all__ = ["Fp32Policy", "DEFAULT_POLICY", "float32_nodes", "keep_float", "R_SCAN_PARAMS", "R_TOKEN_SORT", "R_OFFSET",
           "R_DELTA", "R_LAYER_NORM", "R_REDUCTION", "R_HEAD", "R_DEFORM", "R_USER"]
