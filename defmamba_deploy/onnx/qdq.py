"""Explicit INT8 as Q/DQ pairs in the ONNX graph: the plan, the insertion and the range cache.

Calibration (running the float model on data) needs an ONNX Runtime session with the
``defmamba`` custom ops and lives in :mod:`defmamba_deploy.runtime.calibration`; this module is
the graph side, which needs no session:

* :func:`plan_int8`: which Conv/MatMul/Gemm are quantised (all but the float32 policy's), which
  activations need a range, and each weight's per-channel axis;
* :func:`insert_qdq`: given ``{activation: amax}``, the Q/DQ model, written by ONNX Runtime's
  ``quantize_static`` (QDQ format, symmetric int8 activations and weights, per channel). The
  ranges reach it through its own calibration-cache argument, so it runs no calibration session;
* the range cache (:func:`read_cache`, :func:`write_cache`): ``{activation: amax}`` keyed by the
  hashes of the graph and the weights and by the calibration method.

Placement (what TensorRT's explicit quantisation wants): one per-tensor Q/DQ pair (shared by all
consumers) on each data input of a quantised node, weights stored as int8 initializers followed
by a DequantizeLinear, zero points 0, scales amax / 127. Node outputs are not quantised and biases
stay float (TensorRT fuses the float bias into the int8 convolution). The per-channel axis is
ours, passed to ``quantize_static`` as a per-tensor override, because its per-op-type default
(axis 1 for every MatMul weight) is the wrong axis for a left-hand weight of rank 3 or a
right-hand one of rank 3: axis 0 for Conv weights; for MatMul the output axis of the weight (the
last axis of a right-hand (..., K, N) weight, axis -2 of a left-hand (..., M, K) one); Gemm B
axis 0 with ``transB=1``, 1 otherwise.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..errors import UsageError
from ..files import write_json
from .fp32_policy import DEFAULT_POLICY, Fp32Policy, keep_float
from .graph import FLOAT, HALF, Graph, check, checked_copy, elem_types, opset, prepare

QMAX = 127  # symmetric int8: [-127, 127] with zero point 0 (TensorRT's convention)
MIN_QDQ_OPSET = 13
CACHE_FORMAT = "defmamba-deploy/int8-calibration/2"
QUANT_OPS = ("Conv", "MatMul", "Gemm")
METHODS = ("max", "percentile")


@dataclass
class Int8Report:
    """What the INT8 rewrite did."""

    quantized_nodes: list[tuple[str, str]] = field(default_factory=list)  # (node name, op_type)
    skipped_nodes: list[tuple[str, str, str]] = field(default_factory=list)  # (node, op_type, reason)
    activation_amax: dict[str, float] = field(default_factory=dict)  # tensor -> calibrated amax
    weight_axes: dict[str, int | None] = field(default_factory=dict)  # weight -> per-channel axis (None: per tensor)
    qdq_pairs: int = 0  # activation QuantizeLinear/DequantizeLinear pairs
    weight_dequantizers: int = 0  # DequantizeLinear nodes on int8 weights
    calibration: str = "max"
    percentile: float | None = None
    calibration_batches: int = 0  # batches run (0 when the cache was used)
    cache_path: str | None = None
    cache_status: str = "none"  # none | hit | written | rewritten (stale or unreadable cache replaced)

    def summary(self) -> str:
        how = self.calibration + (f" {self.percentile}" if self.percentile is not None else "")
        return (f"int8: {len(self.quantized_nodes)} Conv/MatMul/Gemm quantised, {len(self.skipped_nodes)} kept float, "
                f"{self.qdq_pairs} activation Q/DQ pairs, {self.weight_dequantizers} int8 weights; calibration {how} "
                f"over {self.calibration_batches} batches, cache {self.cache_status}")


@dataclass
class Int8Plan:
    """The prepared float model and what the Q/DQ rewrite will do to it."""

    model: onnx.ModelProto  # prepared (see graph.prepare): the model calibrated and quantised
    quantize: list[tuple[str, str]]  # (node, op_type)
    skipped: list[tuple[str, str, str]]  # (node, op_type, reason)
    activations: list[str]  # tensors that need a range, in graph order
    weight_axes: dict[str, int | None]  # weight initializer -> per-channel axis (None: per tensor)
    input_name: str
    input_dims: list[int | None]


def check_method(calibration: str, percentile) -> float | None:
    if calibration not in METHODS:
        raise UsageError(f"calibration must be 'max' or 'percentile', got {calibration!r}")
    if calibration == "percentile":
        if not (isinstance(percentile, (int, float)) and 0 < percentile <= 100):
            raise UsageError(f"percentile must be in (0, 100], got {percentile!r}")
        return float(percentile)
    return None


def weight_axis(node: onnx.NodeProto, index: int, rank: int) -> int | None:
    """The output-channel axis of a weight input (None: no per-channel axis, use one scale)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return 0 if index == 1 else None
    if rank < 2:
        return None
    if node.op_type == "MatMul":
        return rank - 1 if index == 1 else rank - 2
    if node.op_type == "Gemm":
        if index == 1:
            return 0 if attrs.get("transB", 0) else 1
        return 1 if attrs.get("transA", 0) else 0
    return None


def plan_int8(model, policy: Fp32Policy = DEFAULT_POLICY, *, per_channel: bool = True) -> Int8Plan:
    """Check ``model`` (float32, opset >= 13, no Q/DQ yet) and plan its quantisation."""
    if not isinstance(policy, Fp32Policy):
        raise UsageError(f"keep_float must be an Fp32Policy, got {type(policy).__name__}")
    m = checked_copy(model)
    if opset(m) < MIN_QDQ_OPSET:
        raise UsageError(f"per-channel Q/DQ needs opset >= {MIN_QDQ_OPSET}, the model has opset {opset(m)}: re-export with --opset 17")
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node):
        raise UsageError("the model already has Q/DQ nodes: quantise the float32 export")
    m = prepare(m)
    types = elem_types(m)
    if any(t == HALF for t in types.values()):
        raise UsageError("the model has float16 tensors: quantise the float32 export (opset-13 Q/DQ scales are float32)")
    keep = {n.name: r for n, r in keep_float(Graph(m), policy).items()}
    inits = {i.name: i for i in m.graph.initializer}
    graph_inputs = [i for i in m.graph.input if i.name not in inits]
    if len(graph_inputs) != 1:
        raise UsageError(f"calibration supports models with one input, this one has {len(graph_inputs)}")
    inp = graph_inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    quantize, skipped, activations, axes = [], [], [], {}
    for n in m.graph.node:
        if n.op_type not in QUANT_OPS or n.domain not in ("", "ai.onnx"):
            continue
        if n.name in keep:
            skipped.append((n.name, n.op_type, keep[n.name]))
            continue
        ins = [(i, t) for i, t in enumerate(n.input[:2]) if t]
        if any(types.get(t) != FLOAT for _, t in ins):
            skipped.append((n.name, n.op_type, "inputs are not float32"))
            continue
        for i, t in ins:
            if t in inits:
                axes.setdefault(t, weight_axis(n, i, len(inits[t].dims)) if per_channel else None)
            elif t not in activations:
                activations.append(t)
        quantize.append((n.name, n.op_type))
    return Int8Plan(m, quantize, skipped, activations, axes, inp.name, dims)


def _quantize_static_options(plan: Int8Plan) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType

    quantized = {name for name, _ in plan.quantize}
    overrides = {w: [{"axis": a}] for w, a in plan.weight_axes.items() if a is not None}
    return dict(
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        per_channel=any(a is not None for a in plan.weight_axes.values()),
        op_types_to_quantize=list(QUANT_OPS),
        nodes_to_exclude=[n.name for n in plan.model.graph.node if n.op_type in QUANT_OPS and n.name not in quantized],
        extra_options={
            "ActivationSymmetric": True, "WeightSymmetric": True,
            "OpTypesToExcludeOutputQuantization": list(QUANT_OPS),  # Q/DQ on inputs only
            "QuantizeBias": False,  # float bias: TensorRT fuses it into the int8 layer
            "DedicatedQDQPair": False, "AddQDQPairToWeight": False,
            "TensorQuantOverrides": overrides,
        },
    )


def insert_qdq(plan: Int8Plan, amax: dict[str, float], report: Int8Report | None = None) -> tuple[onnx.ModelProto, Int8Report]:
    """The Q/DQ model for ``plan`` with activation ranges ``amax`` (symmetric: [-amax, amax])."""
    try:
        from onnxruntime.quantization import CalibrationMethod, TensorsData, quantize_static, save_tensors_data
    except ImportError:
        from ..errors import MissingDependencyError

        raise MissingDependencyError("INT8 quantisation needs onnxruntime: pip install 'defmamba-deploy[cpu]' (or [gpu])") from None
    report = report or Int8Report()
    bad = [t for t in plan.activations if not np.isfinite(amax[t])]
    if bad:
        raise UsageError(f"calibration gave a non-finite range for {bad[0]} (the float model overflows on the data?)")
    report.activation_amax = {t: float(amax[t]) for t in plan.activations}
    report.quantized_nodes, report.skipped_nodes = list(plan.quantize), list(plan.skipped)
    ranges = TensorsData(CalibrationMethod.MinMax, {t: (np.float32(-a), np.float32(a)) for t, a in report.activation_amax.items()})
    # quantize_static reads and writes files only; its scratch files are its own, not outputs of ours
    with tempfile.TemporaryDirectory(prefix="defmamba_qdq_") as tmp:
        ranges_file, out = os.path.join(tmp, "ranges.json"), os.path.join(tmp, "qdq.onnx")
        save_tensors_data(ranges, ranges_file)
        quantize_static(plan.model, out, None, calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=ranges_file, **_quantize_static_options(plan))
        q = onnx.load(out)
    _describe(q, plan, report)
    check(q, "quantize_int8_qdq")
    return q, report


def _describe(q: onnx.ModelProto, plan: Int8Plan, report: Int8Report) -> None:
    """Count what quantize_static placed, and check it is the placement of the module docstring."""
    inits = {i.name for i in q.graph.initializer}
    dq_of = {n.output[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
    report.qdq_pairs = sum(1 for n in q.graph.node if n.op_type == "QuantizeLinear")
    weights = {n.input[0]: n for n in dq_of.values() if n.input[0] in inits}
    report.weight_dequantizers = len(weights)
    report.weight_axes = {}
    quantized = {name for name, _ in plan.quantize}
    for n in q.graph.node:
        if n.op_type not in QUANT_OPS:
            continue
        fed = [t in dq_of for t in n.input[:2] if t]
        if (n.name in quantized) != all(fed) or any(fed) != all(fed):
            raise RuntimeError(f"quantize_static did not place Q/DQ on {n.name} as planned (inputs from DQ: {fed})")
        for t in n.input[:2]:
            dq = dq_of.get(t)
            if dq is not None and dq.input[0] in inits:
                src = next(w for w in plan.weight_axes if dq.input[0] in (w, f"{w}_quantized"))
                axis = next((a.i for a in dq.attribute if a.name == "axis"), None)
                report.weight_axes[src] = axis if plan.weight_axes[src] is not None else None
    if report.qdq_pairs != len(plan.activations):
        raise RuntimeError(f"quantize_static placed {report.qdq_pairs} activation Q/DQ pairs, planned {len(plan.activations)}")


# ---------------------------------------------------------------------------------------------- range cache


def graph_hashes(model: onnx.ModelProto) -> tuple[str, str]:
    """(hash of the graph's structure: op types and tensor names, hash of the initializer values)."""
    g = model.graph
    struct = {
        "inputs": [i.name for i in g.input], "outputs": [o.name for o in g.output],
        "nodes": [[n.domain, n.op_type, list(n.input), list(n.output)] for n in g.node],
    }
    s = hashlib.sha256(json.dumps(struct, sort_keys=True).encode()).hexdigest()
    h = hashlib.sha256()
    for i in sorted(g.initializer, key=lambda t: t.name):
        h.update(i.name.encode())
        h.update(i.SerializeToString())
    return s, h.hexdigest()


def read_cache(path: Path, hashes: tuple[str, str], method: str, percentile: float | None,
               needed: list[str]) -> tuple[dict | None, str]:
    """(amax or None, why not: missing | unreadable | unknown format | made for another model | ...)."""
    path = Path(path)
    if not path.is_file():
        return None, "missing"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None, "unreadable"
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None, "unknown format"
    if [data.get("graph_sha256"), data.get("weights_sha256")] != list(hashes):
        return None, "made for another model"
    if data.get("calibration") != method or (method == "percentile" and data.get("percentile") != percentile):
        return None, "made with another calibration method"
    amax = data.get("amax")
    if not isinstance(amax, dict) or any(not isinstance(amax.get(t), (int, float)) for t in needed):
        return None, "lacks some tensors"
    return {t: float(amax[t]) for t in needed}, "hit"


def write_cache(path: Path, hashes: tuple[str, str], method: str, percentile: float | None, amax: dict,
                batches: int) -> None:
    write_json(path, {"format": CACHE_FORMAT, "graph_sha256": hashes[0], "weights_sha256": hashes[1],
                      "calibration": method, "percentile": percentile if method == "percentile" else None,
                      "batches": batches, "amax": amax})


__all__ = ["Int8Report", "Int8Plan", "plan_int8", "insert_qdq", "weight_axis", "check_method", "graph_hashes",
           "read_cache", "write_cache", "CACHE_FORMAT", "QMAX", "MIN_QDQ_OPSET", "QUANT_OPS"]
