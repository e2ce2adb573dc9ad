"""Reduced precision expressed in the ONNX graph: FP16 conversion and explicit INT8 (Q/DQ).

The public names of the precision modules, and why they do what they do (measurements included):
:mod:`.fp32_policy` (the float32 policy, :func:`float32_nodes`), :mod:`.fp16` (:func:`convert_fp16`),
:mod:`.qdq` (the Q/DQ plan, insertion and range cache), :mod:`.graph` (onnx-ir plumbing).

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
(The graph side is :mod:`.qdq`, written by ONNX Runtime's ``quantize_static``; calibration runs
the model in ONNX Runtime and so sits one layer up, in :mod:`defmamba_deploy.runtime.calibration`,
whose ``quantize_int8`` is the entry point that calibrates. Here, ranges come from ``ranges`` or
a matching cache.)

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

import os
import warnings
from pathlib import Path

import onnx

from ..errors import UsageError
from .fp16 import FP16_MAX, Fp16Report, convert_fp16
from .fp32_policy import (DEFAULT_POLICY, R_DEFORM, R_DELTA, R_HEAD, R_LAYER_NORM, R_OFFSET, R_REDUCTION,
                          R_SCAN_PARAMS, R_TOKEN_SORT, R_USER, Fp32Policy, float32_nodes)
from .graph import name_nodes
from .qdq import (CACHE_FORMAT, MIN_QDQ_OPSET, QMAX, Int8Report, check_method, graph_hashes, insert_qdq, plan_int8,
                  read_cache)


def quantize_int8_qdq(
    model: onnx.ModelProto,
    calibration_batches=None,
    *,
    per_channel: bool = True,
    calibration: str = "max",
    percentile: float = 99.99,
    library: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    keep_float: Fp32Policy = DEFAULT_POLICY,
    ranges: dict[str, float] | None = None,
) -> tuple[onnx.ModelProto, Int8Report]:
    """The Q/DQ copy of ``model`` from known ranges: ``ranges`` ({activation: amax}) or a ``cache``
    that matches the model and method. Calibrating from ``calibration_batches`` runs ONNX Runtime,
    which this layer does not: that is ``defmamba_deploy.runtime.calibration.quantize_int8`` (same
    arguments, ``cache_path=``/``policy=``), or its ``quantize_int8_qdq`` under these names."""
    del library  # accepted for the calibrating entry point's signature; no session runs here
    pct = check_method(calibration, percentile)
    plan = plan_int8(model, keep_float, per_channel=per_channel)
    report = Int8Report(calibration=calibration, percentile=pct)
    amax = None
    if ranges is not None:
        missing = [t for t in plan.activations if t not in ranges]
        if missing:
            raise UsageError(f"ranges lacks {len(missing)} activations (first: {missing[0]})")
        amax = ranges
    elif cache is not None:
        report.cache_path = str(cache)
        amax, why = read_cache(Path(cache), graph_hashes(plan.model), calibration, pct, plan.activations)
        if amax is not None:
            report.cache_status = "hit"
        elif why != "missing":
            warnings.warn(f"calibration cache {cache} not used ({why})", stacklevel=2)
    if amax is None:
        raise UsageError("no ranges for the Q/DQ rewrite: calibrate with defmamba_deploy.runtime.calibration.quantize_int8"
                         "(model, batches, cache_path=...) (it runs ONNX Runtime with the custom ops), or pass "
                         "ranges= or a cache made for this model")
    return insert_qdq(plan, amax, report)


__all__ = ["convert_fp16", "quantize_int8_qdq", "float32_nodes", "name_nodes", "Fp32Policy", "DEFAULT_POLICY",
           "Fp16Report", "Int8Report", "CACHE_FORMAT", "QMAX", "MIN_QDQ_OPSET", "FP16_MAX", "R_SCAN_PARAMS",
           "R_TOKEN_SORT", "R_OFFSET", "R_DELTA", "R_LAYER_NORM", "R_REDUCTION", "R_HEAD", "R_DEFORM", "R_USER"]
