"""FP16 as an ONNX rewrite (TensorRT 11's strongly typed networks; TensorRT 10 parses it strongly typed).

Everything float32 becomes float16 except the nodes of the float32 policy
(:func:`~.fp32_policy.float32_nodes`) and the inputs that op schemas fix to float32. Graph inputs
and outputs stay float32: a Cast follows each input and precedes each output that would otherwise
be float16. Initializers are stored as float16 (clipped to +-65504, counted in the report), and
kept in both types when float32 and float16 consumers share one. Why each region stays float32,
and the measured errors, are in :mod:`.precision`.

The rewrite stays on ``onnx.ModelProto``: it is one ordered pass that reads the prepared graph
(:func:`~.graph.prepare`, whose unique names key the policy) and emits a new node list with Cast
nodes placed right before their first consumer and new initializers appended, which keeps the
output's node and initializer order (and so its bytes) a pure function of the input. The
analyses it depends on (the policy's walks) run on onnx-ir.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UsageError
from .fp32_policy import DEFAULT_POLICY, Fp32Policy, keep_float
from .graph import FLOAT, HALF, Graph, Names, check, elem_types, prepare
from .schemas import DOMAIN

FP16_MAX = float(np.finfo(np.float16).max)

# (domain, op_type, input index) -> why that input is float32 whatever the node's precision
_FIXED_FP32_INPUTS = {
    (DOMAIN, "SelectiveScan", 2): "SelectiveScan A is float32 by schema",
    (DOMAIN, "SelectiveScan", 5): "SelectiveScan D is float32 by schema",
    (DOMAIN, "SelectiveScan", 6): "SelectiveScan delta_bias is float32 by schema",
    (DOMAIN, "TokenSort", 0): "TokenSort input: the sort key must be float32",
    ("", "Resize", 2): "Resize scales are float32 by schema",
}
# (op_type, output index) -> fixed output type (LayerNormalization's Mean/InvStdDev use stash_type)
_FIXED_FP32_OUTPUTS = {("LayerNormalization", 1), ("LayerNormalization", 2)}
_SHAPE_ONLY_OPS = {"Shape", "Size"}  # read any type, output int64: never need a Cast


@dataclass
class Fp16Report:
    """What :func:`convert_fp16` did."""

    kept_fp32: list[tuple[str, str, str]] = field(default_factory=list)  # (node name, op_type, reason)
    converted_nodes: int = 0  # nodes carrying float tensors that now run in float16
    casts_inserted: int = 0  # Cast nodes added for activations (graph I/O and region boundaries)
    initializers_converted: int = 0  # float32 initializers stored as float16 (in place or as a copy)
    initializers_duplicated: int = 0  # of those, kept in both types because float32 consumers share them
    fixed_fp32_inputs: list[tuple[str, str, str]] = field(default_factory=list)  # (node, input, reason)
    clipped_values: int = 0  # initializer values beyond +-65504 clipped to float16's range

    @property
    def kept_names(self) -> frozenset[str]:
        """The node names kept float32: equal to ``set(float32_nodes(model, policy))``."""
        return frozenset(n for n, _, _ in self.kept_fp32)

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for _, _, r in self.kept_fp32:
            out[r] += 1
        return dict(out)

    def summary(self) -> str:
        lines = [f"fp16: {self.converted_nodes} nodes converted, {len(self.kept_fp32)} kept float32, "
                 f"{self.casts_inserted} casts inserted, {self.initializers_converted} initializers converted "
                 f"({self.initializers_duplicated} also kept float32)"]
        lines += [f"  {n:4d} x {r}" for r, n in self.reasons().items()]
        if self.clipped_values:
            lines.append(f"  warning: {self.clipped_values} initializer values clipped to +-{FP16_MAX:g}")
        return "\n".join(lines)


def _to_fp16_array(arr: np.ndarray) -> tuple[np.ndarray, int]:
    clipped = int(np.count_nonzero(np.abs(arr) > FP16_MAX))
    return np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16), clipped


def convert_fp16(model: onnx.ModelProto, *, keep_fp32: Fp32Policy = DEFAULT_POLICY) -> tuple[onnx.ModelProto, Fp16Report]:
    """A float16 copy of ``model`` with the float32 islands of the policy; the input is not changed.

    Returns ``(model, report)``. The result passes ``onnx.checker.check_model(full_check=True)`` (with
    :func:`~defmamba_deploy.onnx.register_schemas`) and keeps float32 graph inputs and outputs.
    """
    if not isinstance(keep_fp32, Fp32Policy):
        raise UsageError(f"keep_fp32 must be an Fp32Policy, got {type(keep_fp32).__name__}")
    if isinstance(model, onnx.ModelProto) and any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise UsageError("the model already has Q/DQ nodes: convert the float32 export to float16, not a quantised one")
    m = prepare(model)
    orig = elem_types(m)
    if not any(t == FLOAT for t in orig.values()):
        raise UsageError("the model has no float32 tensors to convert")
    ig = Graph(m)
    keep = {n.name: r for n, r in keep_float(ig, keep_fp32).items()}  # names are unique after prepare
    inits = {i.name: i for i in m.graph.initializer}
    nodes_in = list(m.graph.node)
    report = Fp16Report()
    names = Names(m)
    new_type: dict[str, int] = {i.name: orig[i.name] for i in m.graph.input if i.name not in inits}
    init_variant: dict[tuple[str, int], str] = {}
    new_inits: list[onnx.TensorProto] = []
    casts: dict[tuple[str, int], str] = {}
    nodes_out: list[onnx.NodeProto] = []

    def have(t: str) -> int:
        return new_type.get(t, orig.get(t, 0))

    def as_type(t: str, want: int) -> str:
        if t in inits:
            key = (t, want)
            if key not in init_variant:
                arr = numpy_helper.to_array(inits[t])
                if want == HALF:
                    arr, clipped = _to_fp16_array(arr)
                    report.clipped_values += clipped
                else:
                    arr = arr.astype(np.float32)
                tp = numpy_helper.from_array(arr, names.new(f"{t}__fp16" if want == HALF else f"{t}__fp32"))
                new_inits.append(tp)
                init_variant[key] = tp.name
            return init_variant[key]
        key = (t, want)
        if key not in casts:
            out = names.new(f"{t}__{'fp16' if want == HALF else 'fp32'}")
            nodes_out.append(helper.make_node("Cast", [t], [out], name=names.new(f"{t}/CastTo{'Fp16' if want == HALF else 'Fp32'}"), to=want))
            new_type[out] = want
            casts[key] = out
            report.casts_inserted += 1
        return casts[key]

    for node in nodes_in:
        prec = FLOAT if node.name in keep else HALF
        dom = node.domain or ""
        for i, t in enumerate(node.input):
            if not t or orig.get(t) != FLOAT:
                continue
            fixed = _FIXED_FP32_INPUTS.get((dom, node.op_type, i))
            if fixed is not None:
                want = FLOAT
                if prec == HALF:
                    report.fixed_fp32_inputs.append((node.name, t, fixed))
            elif node.op_type in _SHAPE_ONLY_OPS or (node.op_type == "Cast" and dom == ""):
                continue  # reads any float type
            else:
                want = prec
            if have(t) != want:
                node.input[i] = as_type(t, want)
        if node.op_type == "Cast" and dom == "":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == FLOAT and prec == HALF:
                to.i = HALF
            new_type[node.output[0]] = to.i
        elif node.op_type == "ConstantOfShape" and dom == "":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == FLOAT and prec == HALF:
                    arr, _ = _to_fp16_array(numpy_helper.to_array(a.t))
                    a.t.CopyFrom(numpy_helper.from_array(arr))
            new_type[node.output[0]] = next((a.t.data_type for a in node.attribute if a.name == "value"), FLOAT)
        else:
            for j, o in enumerate(node.output):
                if o and orig.get(o) == FLOAT:
                    new_type[o] = FLOAT if (node.op_type, j) in _FIXED_FP32_OUTPUTS else prec
        nodes_out.append(node)
        if any(orig.get(t) == FLOAT for t in list(node.input) + list(node.output) if t):
            if node.name in keep:
                report.kept_fp32.append((node.name, node.op_type, keep[node.name]))
            else:
                report.converted_nodes += 1

    # graph outputs stay float32: rename the producer's output and cast back under the original name
    for o in m.graph.output:
        if orig.get(o.name) == FLOAT and have(o.name) != FLOAT:
            inner = names.new(f"{o.name}__fp16")
            for n in nodes_out:
                for i, t in enumerate(n.input):
                    if t == o.name:
                        n.input[i] = inner
                for i, t in enumerate(n.output):
                    if t == o.name:
                        n.output[i] = inner
            new_type[inner] = have(o.name)
            nodes_out.append(helper.make_node("Cast", [inner], [o.name], name=names.new(f"{o.name}/CastToFp32"), to=FLOAT))
            new_type[o.name] = FLOAT
            report.casts_inserted += 1

    # initializers: drop unused float32 originals; a float16 copy whose original is gone takes its name
    used = {t for n in nodes_out for t in n.input if t}
    variant_of = {v: t for (t, want), v in init_variant.items() if want == HALF}
    final_inits, rename = [], {}
    for init in list(m.graph.initializer) + new_inits:
        if init.name in variant_of:
            src = variant_of[init.name]
            report.initializers_converted += 1
            if src in used:
                report.initializers_duplicated += 1
            else:
                rename[init.name] = src
                init.name = src
        elif init.name not in used and init.name in inits and orig.get(init.name) == FLOAT and any(
                (init.name, w) in init_variant for w in (HALF, FLOAT)):
            continue
        final_inits.append(init)
    for n in nodes_out:
        for i, t in enumerate(n.input):
            if t in rename:
                n.input[i] = rename[t]
    del m.graph.initializer[:]
    m.graph.initializer.extend(final_inits)
    del m.graph.node[:]
    m.graph.node.extend(nodes_out)
    # the prepared model carries inferred value_info for every tensor; keep it for the activations
    # (with their new types) and drop it for initializers, whose stored type now says it
    vi = [v for v in m.graph.value_info if v.name in new_type and v.type.HasField("tensor_type")]
    for v in vi:
        v.type.tensor_type.elem_type = new_type[v.name]
    del m.graph.value_info[:]
    m.graph.value_info.extend(vi)
    if report.clipped_values:
        warnings.warn(f"convert_fp16: {report.clipped_values} initializer values exceed float16's range and were "
                      f"clipped to +-{FP16_MAX:g}", stacklevel=2)
    check(m, "convert_fp16")
    return m, report


__all__ = ["convert_fp16", "Fp16Report", "FP16_MAX"]
