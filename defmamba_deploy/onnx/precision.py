"""Reduced precision expressed in the ONNX graph: FP16 conversion and explicit INT8 (Q/DQ).

Why in the graph
----------------
TensorRT 11 removed the ``FP16``/``INT8`` builder flags: every network is *strongly typed*, so a
layer runs in the type its ONNX tensors have, and INT8 exists only where the model carries
``QuantizeLinear``/``DequantizeLinear`` (Q/DQ) pairs. TensorRT 10 consumes the same files: parse
them into a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) and set no
precision flags; a Q/DQ model triggers explicit quantisation there too (TensorRT folds the DQ of a
weight into the following Conv/MatMul/Gemm and runs it in INT8; activations are quantised where
the Q/DQ pairs sit). ONNX Runtime runs both kinds of file as they are: float16 nodes it has no CPU
kernel for get casts inserted by its CPU execution provider, and Q/DQ pairs are executed (or fused
into integer kernels) with the same rounding as TensorRT's fake quantisation.

:func:`convert_fp16`: what stays float32, and why
-------------------------------------------------
Everything that is float32 becomes float16, except (each rule is a graph rule, not a name match):

* **graph inputs and outputs** (mandatory): the engine's I/O stays float32; a Cast follows each
  input and precedes each output that would otherwise be float16.
* **SelectiveScan ``A``, ``D``, ``delta_bias``** (mandatory, the op schema types them float32) and
  the nodes that compute them (``A = -exp(A_logs)``): the scan's ``exp(delta * A)`` must be float32.
* **the TokenSort input** (mandatory): the sort key ``tanh(offset) + reference position`` is
  computed in float32 by the op; feeding it a float16 offset would already reorder near ties.
* **the offset network** (``offset_network``): every node that lies on a path from the activation
  sampled by a DeformGather (its input ``x``) to that DeformGather's ``offset`` input or to a
  TokenSort input, where paths do not pass through ``defmamba`` ops. In DefMamba these are exactly
  the ``conv_offset`` nodes (mean, channel attention, depthwise conv, LayerNorm, GELU, 1x1 conv)
  plus the Gather/Reshape that slice the token-offset channel for TokenSort. The rule needs no
  node names, and the bound at the custom ops keeps it inside one block. The float32 ``offset``
  is cast to float16 for DeformGather (its ``x``/``offset``/``rpe_table`` share one type; the op
  computes in float32 and a float16 offset moves a sample point by < 2e-4 px). Measured on
  DefMamba-T at 224x224: the token order of block 1 differs from float32 at 6.7% of the sorted
  positions with this rule (near-tie swaps caused by the float16 activation entering the offset
  network) and at 20% when the offset network also runs in float16.
* **LayerNormalization** (``layer_norm``), and decomposed LayerNorm/RMSNorm patterns
  (ReduceMean -> Sub -> Pow/Mul -> ReduceMean -> Add -> Sqrt -> Div) if a graph has them: the
  variance of float16 activations loses precision and can overflow.
* **reductions and softmax** (``reductions``): ReduceMean/ReduceSum/... accumulate many terms.
* **the classifier head** (``head``): the Gemm/MatMul that produces a graph output (found by
  walking back from the output through reshapes and bias adds) runs in float32, so the logits are
  not rounded to float16.
* optionally the **delta path** (``delta_path``): the nodes that feed SelectiveScan's ``delta`` but
  not its ``u`` (the x_proj dt rows and dt_proj MatMuls). Off by default: measured on DefMamba-T
  at 224x224 (random weights, order-independent scan branches), keeping it float32 lowers the
  relative error of ``delta`` from 6.6e-4 to 5.4e-4 but leaves that of the scan output ``y`` at
  5.3e-4 (it is set by the float16 ``u``/``B``/``C``), and the logits do not change. The scan's
  float32 ``exp(delta * A)`` is what matters, and it is always kept.

Measured logit error against float32 (DefMamba-T, random weights, ORT CPU): relative L2 6.3e-4 at
64x64 and 4.4e-4 at 224x224, top-1 unchanged. ORT's CPU provider computes float16 nodes it has no
kernel for in float32 (rounding their outputs to float16); a GPU engine runs them natively in
float16 and can show somewhat larger errors.

:func:`quantize_int8_qdq`: where Q/DQ go
----------------------------------------
Symmetric INT8 (zero point 0) on both data inputs of every Conv, MatMul and Gemm, except those the
same keep-float rules exclude (the offset network feeding the offsets and the sort key, the
classifier head; the delta path when asked). Activations get one per-tensor Q/DQ pair per tensor
(scale = amax / 127, amax from calibration with the float model in ONNX Runtime *with* the
``defmamba`` custom-op library); weights are stored as INT8 initializers followed by a
DequantizeLinear (TensorRT's "pre-quantized weights" form), per output channel when
``per_channel``: axis 0 for Conv weights (M, C/g, kh, kw); for MatMul the output axis of the
weight, i.e. the last axis of a right-hand (K, N) weight (axis 1) and axis -2 of a left-hand
(..., M, K) weight (DefMamba's per-branch x_proj/dt_proj weights (3, M, K) are left-hand: axis 1,
one scale per output row shared by the three branches); Gemm weight B: axis 0 with ``transB=1``
(N, K), axis 1 otherwise. Biases stay float. Needs opset >= 13 (per-axis Q/DQ).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UsageError
from .fp16 import FP16_MAX, Fp16Report, convert_fp16
from .fp32_policy import (DEFAULT_POLICY, R_DEFORM, R_DELTA, R_HEAD, R_LAYER_NORM, R_OFFSET, R_REDUCTION,
                          R_SCAN_PARAMS, R_TOKEN_SORT, R_USER, Fp32Policy, float32_nodes)
from .fp32_policy import keep_float as _keep_float_ir
from .graph import name_nodes, prepare
from .schemas import DOMAIN, register_schemas

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)
QMAX = 127  # symmetric int8: [-127, 127] with zero point 0 (TensorRT's convention)
MIN_QDQ_OPSET = 13
CACHE_FORMAT = "defmamba-deploy/int8-calibration/1"

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
_REDUCTION_OPS = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
                  "ReduceLogSumExp", "ReduceProd", "Softmax", "LogSoftmax", "GlobalAveragePool", "CumSum"}
_HEAD_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast"}
_CONTROL_FLOW = {"If", "Loop", "Scan"}
_QUANT_OPS = {"Conv", "MatMul", "Gemm"}

@dataclass
class Int8Report:
    """What :func:`quantize_int8_qdq` did."""

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


# --------------------------------------------------------------------------------------------------
# graph helpers


def _copy_model(model) -> onnx.ModelProto:
    if not isinstance(model, onnx.ModelProto):
        raise UsageError(f"expected an onnx.ModelProto, got {type(model).__name__} (load it with defmamba_deploy.onnx.load_onnx)")
    if not model.graph.node:
        raise UsageError("the model has no graph nodes")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        if n.op_type in _CONTROL_FLOW and n.domain in ("", "ai.onnx"):
            raise UsageError(f"node {n.name or n.op_type} is control flow ({n.op_type}): not supported; "
                             f"convert the custom-op export (not --portable)")
    for meta in out.metadata_props:
        if meta.key == "defmamba.portable" and meta.value == "True":
            raise UsageError("this is a portable export (TokenSort/DeformGather expanded into standard ops, so the "
                             "keep-float32 rules cannot find them): convert the custom-op export instead")
    return out


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 0


def _hoist_float_constants(model: onnx.ModelProto) -> None:
    """Turn float Constant nodes into initializers, so weights and constants are handled alike."""
    keep = []
    for n in model.graph.node:
        t = None
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.attribute) == 1:
            a = n.attribute[0]
            if a.name == "value" and a.t.data_type == FLOAT:
                t = onnx.TensorProto()
                t.CopyFrom(a.t)
            elif a.name == "value_float":
                t = numpy_helper.from_array(np.array(a.f, np.float32))
            elif a.name == "value_floats":
                t = numpy_helper.from_array(np.array(list(a.floats), np.float32))
        if t is None:
            keep.append(n)
            continue
        t.name = n.output[0]
        model.graph.initializer.append(t)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _fold_initializer_aliases(model: onnx.ModelProto) -> None:
    """Remove ``Identity(initializer)`` nodes (the exporter's shared weights): consumers read the initializer."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    outputs = {o.name for o in g.output}
    alias = {}
    keep = []
    for n in g.node:
        if n.op_type == "Identity" and n.domain in ("", "ai.onnx") and n.input[0] in inits and n.output[0] not in outputs:
            alias[n.output[0]] = n.input[0]
        else:
            keep.append(n)
    if not alias:
        return
    for n in keep:
        for i, t in enumerate(n.input):
            if t in alias:
                n.input[i] = alias[t]
    del g.node[:]
    g.node.extend(keep)
    vi = [v for v in g.value_info if v.name not in alias]
    del g.value_info[:]
    g.value_info.extend(vi)


def _infer_types(model: onnx.ModelProto) -> dict[str, int]:
    register_schemas()
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # noqa: BLE001 - onnx raises several types
        raise UsageError(f"ONNX shape inference failed on the model ({str(e).strip().splitlines()[0][:200]})") from None
    g = inferred.graph
    types = {i.name: i.data_type for i in g.initializer}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    missing = [o for n in g.node for o in n.output if o and o not in types]
    if missing:
        raise UsageError(f"could not infer the type of {len(missing)} tensors (first: {missing[0]}); "
                         f"is this a DefMamba export with all custom-op schemas registered?")
    return types


class _Graph:
    """Index of a graph: producers, consumers, initializers, element types."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model = model
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.inits]
        self.outputs = [o.name for o in g.output]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for k, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = k
            for i, t in enumerate(n.input):
                if t:
                    self.consumers[t].append((k, i))
        self.types = _infer_types(model)

    def node(self, k: int) -> onnx.NodeProto:
        return self.nodes[k]

    def is_custom(self, k: int) -> bool:
        return self.nodes[k].domain == DOMAIN

    def of_type(self, op_type: str, domain: str = "") -> list[int]:
        return [k for k, n in enumerate(self.nodes) if n.op_type == op_type and (n.domain or "") == domain]

    def ancestors(self, tensors: Iterable[str]) -> set[int]:
        """Nodes upstream of ``tensors``; the walk enters no ``defmamba`` node's inputs."""
        out: set[int] = set()
        stack, seen = list(tensors), set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            k = self.producer.get(t)
            if k is None or k in out:
                continue
            out.add(k)
            if not self.is_custom(k):
                stack.extend(x for x in self.nodes[k].input if x)
        return out

    def descendants(self, tensors: Iterable[str]) -> set[int]:
        """Nodes downstream of ``tensors``; the walk does not continue past ``defmamba`` nodes."""
        out: set[int] = set()
        stack, seen = list(tensors), set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            for k, _ in self.consumers.get(t, ()):
                if k in out:
                    continue
                out.add(k)
                if not self.is_custom(k):
                    stack.extend(x for x in self.nodes[k].output if x)
        return out

    def carries_float(self, k: int) -> bool:
        n = self.nodes[k]
        return any(self.types.get(t) == FLOAT for t in list(n.input) + list(n.output) if t)

    def is_constant(self, t: str) -> bool:
        return t in self.inits


def _check(model: onnx.ModelProto, what: str) -> None:
    register_schemas()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - a bug here, but say where
        raise RuntimeError(f"{what} produced a model that fails the ONNX checker: {str(e).strip()[:500]}") from e


# --------------------------------------------------------------------------------------------------
# INT8: calibration


def _graph_hashes(model: onnx.ModelProto) -> tuple[str, str]:
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


def _read_cache(path: Path, hashes: tuple[str, str], method: str, percentile: float | None, needed: list[str]) -> tuple[dict | None, str]:
    """(amax or None, why not)."""
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


def _write_cache(path: Path, hashes: tuple[str, str], method: str, percentile: float | None, amax: dict, batches: int) -> None:
    from .export import atomic_write_bytes

    data = {"format": CACHE_FORMAT, "graph_sha256": hashes[0], "weights_sha256": hashes[1], "calibration": method,
            "percentile": percentile if method == "percentile" else None, "batches": batches, "amax": amax}
    atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())


class _AbsHistogram:
    """Histogram of |x| over [0, hi] whose range grows (re-binning the old counts) as larger values come."""

    def __init__(self, bins: int = 4096) -> None:
        self.bins, self.hi, self.counts, self.max = bins, 0.0, np.zeros(bins, np.float64), 0.0

    def update(self, a: np.ndarray) -> None:
        a = np.abs(a.astype(np.float32, copy=False).ravel())
        a = a[np.isfinite(a)]
        if a.size == 0:
            return
        m = float(a.max())
        self.max = max(self.max, m)
        if m > self.hi:
            new_hi = m if self.hi == 0 else max(m, 2 * self.hi)
            if self.counts.any():
                centres = (np.arange(self.bins) + 0.5) * (self.hi / self.bins)
                self.counts = np.histogram(centres, self.bins, (0.0, new_hi), weights=self.counts)[0]
            self.hi = new_hi
        if self.hi > 0:
            self.counts += np.histogram(a, self.bins, (0.0, self.hi))[0]

    def percentile(self, p: float) -> float:
        total = self.counts.sum()
        if total == 0 or self.hi == 0:
            return 0.0
        idx = int(np.searchsorted(np.cumsum(self.counts), total * p / 100.0))
        return min(self.max, (idx + 1) * self.hi / self.bins)


def _check_batch(i: int, x, name: str, dims: list) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception:  # noqa: BLE001
            raise UsageError(f"calibration batch {i} is a {type(x).__name__}, not an array") from None
    if not np.issubdtype(x.dtype, np.floating):
        raise UsageError(f"calibration batch {i} has dtype {x.dtype}; give float32 images (preprocessed like the model input)")
    want = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if x.ndim != len(want) or any(w is not None and w != s for w, s in zip(want, x.shape)):
        shown = "[" + ", ".join("?" if w is None else str(w) for w in want) + "]"
        raise UsageError(f"calibration batch {i} has shape {list(x.shape)}; model input '{name}' expects {shown} "
                         f"(? = any size)")
    return np.ascontiguousarray(x, dtype=np.float32)


def _calibrate(model: onnx.ModelProto, tensors: list[str], batches: Iterable, *, method: str, percentile: float,
               library=None) -> tuple[dict[str, float], int]:
    """Run the float model in ONNX Runtime (with the defmamba custom-op library) and return
    ``({tensor: amax}, batches run)``: the running max of |x|, or the ``percentile`` of |x| from
    histograms accumulated over all batches."""
    try:
        import onnxruntime as ort
    except ImportError:
        from ..errors import MissingDependencyError

        raise MissingDependencyError("calibration needs onnxruntime: pip install 'onnxruntime>=1.29'") from None
    from ..libs import find_library
    from .check import custom_ops_used

    g = model.graph
    inits = {i.name for i in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in inits]
    if len(graph_inputs) != 1:
        raise UsageError(f"calibration supports models with one input, this one has {len(graph_inputs)}")
    inp = graph_inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    present = {o.name for o in aug.graph.output}
    fetch = [t for t in tensors if t != inp.name]
    for t in fetch:
        if t not in present:
            aug.graph.output.append(helper.make_tensor_value_info(t, FLOAT, None))
    so = ort.SessionOptions()
    if custom_ops_used(model):
        so.register_custom_ops_library(str(find_library("ort", library)))
    sess = ort.InferenceSession(aug.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])

    stats: dict[str, float | _AbsHistogram] = {t: (_AbsHistogram() if method == "percentile" else 0.0) for t in tensors}
    n = 0
    for i, x in enumerate(batches):
        x = _check_batch(i, x, inp.name, dims)
        outs = dict(zip(fetch, sess.run(fetch, {inp.name: x}))) if fetch else {}
        outs[inp.name] = x
        for t in tensors:
            v = outs[t]
            if method == "percentile":
                stats[t].update(v)
            else:
                finite = np.abs(v[np.isfinite(v)])
                stats[t] = max(stats[t], float(finite.max()) if finite.size else 0.0)
        n += 1
    if n == 0:
        raise UsageError("calibration_batches is empty: give at least one batch of preprocessed images "
                         "(e.g. 8 to 64 images from the target data), or a cache file made for this model")
    amax = {t: (s.percentile(percentile) if method == "percentile" else s) for t, s in stats.items()}
    return amax, n


# --------------------------------------------------------------------------------------------------
# INT8: Q/DQ insertion


def _weight_axis(node: onnx.NodeProto, index: int, rank: int) -> int | None:
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


def _quantize_weight(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights and float32 scales (one per channel along ``axis``, or one)."""
    w = w.astype(np.float32)
    if axis is None:
        amax = np.array(np.abs(w).max() if w.size else 0.0, np.float32)
        scale = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)
        q = np.clip(np.round(w / scale), -QMAX, QMAX).astype(np.int8)
        return q, scale
    red = tuple(a for a in range(w.ndim) if a != axis)
    amax = np.abs(w).max(axis=red) if w.size else np.zeros(w.shape[axis], np.float32)
    scale = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, scale


def quantize_int8_qdq(
    model: onnx.ModelProto,
    calibration_batches: Iterable[np.ndarray],
    *,
    per_channel: bool = True,
    calibration: str = "max",
    percentile: float = 99.99,
    library: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    keep_float: Fp32Policy = DEFAULT_POLICY,  # noqa: F811 - the keyword predates the function
) -> tuple[onnx.ModelProto, Int8Report]:
    """An explicitly quantised (Q/DQ, symmetric INT8) copy of the float32 ``model``.

    ``calibration_batches``: preprocessed float32 input batches (shape of the model input); consumed
    only when calibration runs. ``calibration``: ``"max"`` (running max of |x|) or ``"percentile"``
    (``percentile`` of |x|, from histograms over all batches). ``library``: the ORT custom-op library
    (found automatically by default). ``cache``: JSON file of tensor -> amax; used when it matches the
    model (graph structure and weights hashes, calibration method), else (re)written atomically.
    ``keep_float``: the regions that stay unquantised (see the module docstring).
    """
    if calibration not in ("max", "percentile"):
        raise UsageError(f"calibration must be 'max' or 'percentile', got {calibration!r}")
    if calibration == "percentile" and not (isinstance(percentile, (int, float)) and 0 < percentile <= 100):
        raise UsageError(f"percentile must be in (0, 100], got {percentile!r}")
    if not isinstance(keep_float, Fp32Policy):
        raise UsageError(f"keep_float must be an Fp32Policy, got {type(keep_float).__name__}")
    policy = keep_float
    m = _copy_model(model)
    if _opset(m) < MIN_QDQ_OPSET:
        raise UsageError(f"per-channel Q/DQ needs opset >= {MIN_QDQ_OPSET}, the model has opset {_opset(m)}: re-export with --opset 17")
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node):
        raise UsageError("the model already has Q/DQ nodes: quantise the float32 export")
    m = prepare(m)
    g = _Graph(m)
    if any(t == HALF for t in g.types.values()):
        raise UsageError("the model has float16 tensors: quantise the float32 export (opset-13 Q/DQ scales are float32)")
    from .graph import Graph as _IrGraph
    by_name = {n.name: r for n, r in _keep_float_ir(_IrGraph(m), policy).items()}
    keep = {k: by_name[n.name] for k, n in enumerate(g.nodes) if n.name in by_name}
    report = Int8Report(calibration=calibration, percentile=float(percentile) if calibration == "percentile" else None)

    # plan: which node inputs get Q/DQ, and which are weights (initializers) vs activations
    plan: list[tuple[int, int, str]] = []  # (node, input index, "weight"|"activation")
    for k, n in enumerate(g.nodes):
        if n.op_type not in _QUANT_OPS or n.domain not in ("", "ai.onnx"):
            continue
        if k in keep:
            report.skipped_nodes.append((n.name, n.op_type, keep[k]))
            continue
        ins = [(i, t) for i, t in enumerate(n.input[:2]) if t]
        if any(g.types.get(t) != FLOAT for _, t in ins):
            report.skipped_nodes.append((n.name, n.op_type, "inputs are not float32"))
            continue
        for i, t in ins:
            plan.append((k, i, "weight" if t in g.inits else "activation"))
        report.quantized_nodes.append((n.name, n.op_type))
    activations = list(dict.fromkeys(g.node(k).input[i] for k, i, kind in plan if kind == "activation"))

    # calibration ranges: cache or a run of the float model
    amax = None
    hashes = _graph_hashes(m)
    pct = report.percentile
    if cache is not None:
        cache = Path(cache)
        report.cache_path = str(cache)
        amax, why = _read_cache(cache, hashes, calibration, pct, activations)
        if amax is not None:
            report.cache_status = "hit"
        elif why != "missing":
            warnings.warn(f"calibration cache {cache} not used ({why}); recalibrating and rewriting it", stacklevel=2)
    if amax is None:
        if calibration_batches is None:
            raise UsageError("calibration_batches is None: give batches of preprocessed images")
        amax, report.calibration_batches = _calibrate(m, activations, calibration_batches, method=calibration,
                                                      percentile=float(percentile), library=library)
        if cache is not None:
            _write_cache(cache, hashes, calibration, pct, amax, report.calibration_batches)
            report.cache_status = "written" if why == "missing" else "rewritten"
    bad = [t for t in activations if not math.isfinite(amax[t])]
    if bad:
        raise UsageError(f"calibration gave a non-finite range for {bad[0]} (the float model overflows on the data?)")
    report.activation_amax = {t: amax[t] for t in activations}

    # insertion
    names = _Names(m)
    new_inits: list[onnx.TensorProto] = []
    before: dict[int, list[onnx.NodeProto]] = defaultdict(list)  # node index -> nodes to insert before it
    act_dq: dict[str, str] = {}
    w_dq: dict[tuple[str, int | None], str] = {}
    for k, i, kind in plan:
        node = g.node(k)
        t = node.input[i]
        if kind == "activation":
            if t not in act_dq:
                scale = numpy_helper.from_array(np.array(amax[t] / QMAX if amax[t] > 0 else 1.0, np.float32), names.new(f"{t}_scale"))
                zp = numpy_helper.from_array(np.array(0, np.int8), names.new(f"{t}_zero_point"))
                q, dq = names.new(f"{t}_quantized"), names.new(f"{t}_dequantized")
                before[k] += [
                    helper.make_node("QuantizeLinear", [t, scale.name, zp.name], [q], name=names.new(f"{t}/QuantizeLinear")),
                    helper.make_node("DequantizeLinear", [q, scale.name, zp.name], [dq], name=names.new(f"{t}/DequantizeLinear")),
                ]
                new_inits += [scale, zp]
                act_dq[t] = dq
                report.qdq_pairs += 1
            node.input[i] = act_dq[t]
        else:
            w = numpy_helper.to_array(g.inits[t])
            axis = _weight_axis(node, i, w.ndim) if per_channel else None
            key = (t, axis)
            if key not in w_dq:
                qw, scale = _quantize_weight(w, axis)
                qi = numpy_helper.from_array(qw, names.new(f"{t}_quantized"))
                si = numpy_helper.from_array(scale, names.new(f"{t}_scale"))
                zi = numpy_helper.from_array(np.zeros(scale.shape, np.int8), names.new(f"{t}_zero_point"))
                dq = names.new(f"{t}_dequantized")
                attrs = {"axis": axis} if axis is not None else {}
                before[k].append(helper.make_node("DequantizeLinear", [qi.name, si.name, zi.name], [dq],
                                                  name=names.new(f"{t}/DequantizeLinear"), **attrs))
                new_inits += [qi, si, zi]
                w_dq[key] = dq
                report.weight_axes[t] = axis
                report.weight_dequantizers += 1
            node.input[i] = w_dq[key]
    nodes_out = []
    for k, n in enumerate(g.nodes):
        nodes_out += before.get(k, [])
        nodes_out.append(n)
    used = {t for n in nodes_out for t in n.input if t}
    inits = [i for i in m.graph.initializer if i.name in used] + new_inits
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    del m.graph.node[:]
    m.graph.node.extend(nodes_out)
    _check(m, "quantize_int8_qdq")
    return m, report


__all__ = ["convert_fp16", "quantize_int8_qdq", "float32_nodes", "name_nodes", "Fp32Policy", "DEFAULT_POLICY", "Fp16Report",
           "Int8Report"]
