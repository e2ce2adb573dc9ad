"""Portable ONNX: replace every ``defmamba`` custom node by standard ONNX ops.

:func:`expand_custom_ops` rewrites a model that uses the ``defmamba`` domain (``SelectiveScan``,
``DeformGather``, ``TokenSort``; contract in ``plugins/README.md``) into one that uses only the
default ONNX domain, so it runs in a stock ``onnxruntime.InferenceSession`` with no custom-op
library. Each custom node becomes a subgraph of standard ops whose nodes and tensors carry a
prefix unique to that node; the node's output tensor names are kept, so the rest of the graph is
untouched. Every shape is computed in-graph from ``Shape`` ops: nothing about batch, H, W or L is
baked in. The subgraphs compute in float32 (TokenSort: float64 for a float64 input) and cast the
result back to the I/O dtype, like the reference functions in ``defmamba_deploy/ops``.

TokenSort (``token_offset`` (Bt, L) -> ``perm``, ``inv_perm``)
    ``key = Tanh(x) + ((Cast(Range(0, L)) + 0.5) / max(L - 1, 1)) * 2 - 1``, in that op order,
    which is the reference's key op for op (``linspace(0.5, L-0.5, L)`` is exactly ``l + 0.5`` and
    the division is a true division in both), so the keys agree to the bit wherever the two
    ``tanh`` implementations do. ``perm`` = the indices of ``TopK(key, K=L, largest=0,
    sorted=1)``: the ONNX spec breaks TopK ties by the lower index first, which is exactly the
    reference's stable ascending sort (ONNX Runtime does so, exact ties included; tested).
    ``inv_perm = ScatterElements(perm, perm, Range(0, L))``, i.e. ``inv[perm[j]] = j``; the data
    input is overwritten everywhere because ``perm`` is a permutation. The only possible
    difference from another implementation is a 1-ulp difference of ``tanh`` between math
    libraries, which can swap two neighbours whose keys are within an ulp of each other.

DeformGather (``x`` (Bt, Ch, H, W), ``offset`` (Bt, K, H, W), ``rpe_table`` (Ch, Th, Tw) -> ``feat``)
    The reference's own formulas with the same ops: ``pos_y = ((i + 0.5) / (H - 1) * 2 - 1) +
    tanh(dy) / (H - 1)`` (likewise x), ``GridSample(x, (pos_x, pos_y))`` with bilinear ('linear'
    from opset 20), zero padding and ``align_corners=1`` = ``F.grid_sample(..., align_corners=True)``.
    The bias table gets a batch axis and is ``Resize``d to (H, W), mode 'linear' with
    ``coordinate_transformation_mode='half_pixel'``: source = (dst + 0.5) * in / out - 0.5 like
    PyTorch's bilinear ``align_corners=False``; a negative source coordinate interpolates with the
    edge-padded neighbour, which equals PyTorch's clamp to 0 ('pytorch_half_pixel' differs only
    for an output length of 1, where PyTorch uses the half-pixel formula too). The resized table is
    ``Expand``ed to the batch and sampled (bilinear, zeros, ``align_corners=1``) at
    ``disp = (key - pos) * 0.5`` with ``key_y = i * (H / (H - 1)) / (H - 1) * 2 - 1``. The sample
    points equal the reference's up to an ulp (PyTorch's vectorised ``linspace`` rounds ``key``
    differently depending on the CPU's vector width), so the result matches to float32 rounding.
    Needs H, W >= 2 like the op itself (the grid divides by H - 1 and W - 1).

SelectiveScan (``u, delta`` (Bt, Ch, L), ``A`` (Ch, N), ``B, C`` (Bt, G, N, L), ``D, delta_bias`` (Ch,) -> ``y``)
    ``dt = delta + delta_bias``; with ``delta_softplus``: ``Where(dt > 20, dt, Softplus(dt))`` (the
    reference's threshold; ONNX defines ``Softplus`` as ``log(exp(x) + 1)``, which overflows for
    large x in a naive backend). Channels are viewed as (G, Cg) with Cg = Ch / G taken from the
    shapes; the decays ``exp(dt * A)`` and inputs ``(dt * u) * B`` are materialised once; the
    recurrence ``h = a_t * h + b_t``, ``y_t = ReduceSum(h * C_t)`` over N runs in an ONNX ``Scan``;
    finally ``y + D * u``. Groups flagged in ``reverse`` get their time axis reversed (``Slice`` with
    step -1, selected per group with ``Where``) before the scan and again after it. Every value is the reference's float32 recurrence (state and exp in
    float32), only re-associated; no approximation. The state is laid out (..., G, N, Cg), channels
    innermost, so that every broadcasting product runs over contiguous rows of Cg (96..2304)
    elements: ~1.3x faster in ORT than (..., G, Cg, N) with rows of N = 16. ``scan_impl``:

    * ``"chunked"``: the reference's exact chunked scan. L is cut into nc chunks of
      T = isqrt(L - 1) + 1 steps in a chunk-major (T, nc, Bt, G, N, Cg) layout, the tail padded
      with dt = 0 (decay 1, input 0, so padding changes nothing). Pass 1: a Scan over T runs all
      chunks at once from h = 0 with states (h, decay product); carry: a Scan over the nc chunk
      ends gives each chunk's true start state (start_k+1 = h_k + P_k * start_k); pass 2: a Scan
      over T re-runs the chunks from their start states and contracts with C. This is the
      sequential recurrence re-associated at chunk boundaries: ~3 sqrt(L) vectorised steps
      (which use both cores) instead of L tiny ones, for ~1.75x the arithmetic.
    * ``"sequential"``: one Scan over the L time-major steps, (L, Bt, G, N, Cg).
    * ``"auto"`` (default): sequential when shape inference knows L and L < ``CHUNKED_MIN_LENGTH``
      (512), chunked otherwise (dynamic L included).

    ORT 1.32, 2 CPU cores, batch 1, G = 3, N = 16 (min of 20 interleaved runs, noisy shared host):
    Ch 288 / L 3136: chunked 30 ms, sequential 44 ms (PyTorch reference 101 ms); Ch 576 / L 784:
    17 vs 20 ms; Ch 1152 / L 196: ~10 vs ~10 ms (both within noise, sequential's median lower);
    Ch 2304 / L 49: 5-7 vs 4-5 ms. With one ORT thread the sequential form is as fast or faster
    everywhere (49 vs 50 ms at L 3136, 9 vs 12 ms at L 196): the chunked form wins by using both
    cores on large steps, at ~1.75x the arithmetic. Both forms materialise a few (L, Bt, Ch, N)
    float32 tensors (DefMamba-S stage 1, batch 1: ~58 MB each).

Scope: nodes in the main graph and in subgraphs (If/Loop/Scan bodies) are expanded; model-local
functions are left as they are. Types and static shapes come from ONNX shape inference on a
weightless copy of the model in which each custom node is replaced by a standard node with the
same output type; where a type stays unknown, the subgraph casts to float32 and back with
``CastLike``.
"""
from __future__ import annotations

from typing import Callable

from onnx import GraphProto, ModelProto, NodeProto, TensorProto
from onnx import helper as oh

from .portable_graph import (_DOUBLE, _FLOAT, CHUNKED_MIN_LENGTH, DOMAIN, MIN_OPSET, SCAN_IMPLS, _all_names, _Context, _Emitter, _input, _Names, _output, _subgraphs, _value_info)
from .portable_scan import _expand_selective_scan



def expand_custom_ops(model: ModelProto, opset: int | None = None, *, scan_impl: str = "auto") -> ModelProto:
    """A copy of ``model`` with every ``defmamba`` node replaced by standard ONNX ops.

    ``opset``: the model's default-domain opset (>= 17); ``None`` takes it from the model. A model
    without a default-domain import gets one at ``opset``. The ``defmamba`` opset import is removed.
    ``scan_impl``: the SelectiveScan form, ``"chunked"``, ``"sequential"`` (same values up to float32
    rounding; see the module docstring) or ``"auto"`` (default): sequential when the node's L is
    statically known and below ``CHUNKED_MIN_LENGTH``, chunked otherwise.
    Raises ``ValueError`` for an unknown op of the domain, a domain version other than 1, or an
    opset that is too old or differs from the model's.
    """
    if scan_impl not in SCAN_IMPLS:
        raise ValueError(f"scan_impl must be one of {SCAN_IMPLS}, got {scan_impl!r}")
    imports = {imp.domain: imp.version for imp in model.opset_import}
    model_opset = imports.get("", imports.get("ai.onnx"))
    if opset is None:
        if model_opset is None:
            raise ValueError("the model has no default-domain opset import: pass opset")
        opset = model_opset
    if model_opset is not None and model_opset != opset:
        raise ValueError(f"opset {opset} differs from the model's default-domain opset {model_opset}")
    if opset < MIN_OPSET:
        raise ValueError(f"the portable expansion needs opset >= {MIN_OPSET} (GridSample, Scan-16), got {opset}")
    if DOMAIN in imports and imports[DOMAIN] != 1:
        raise ValueError(f"only version 1 of the {DOMAIN!r} domain is known, the model imports version {imports[DOMAIN]}")

    out = ModelProto()
    out.CopyFrom(model)
    types, shapes = _value_info(out)
    names = _Names(_all_names(out.graph))
    _expand_graph(out.graph, _Context(types, shapes, names, opset, scan_impl))

    kept = [imp for imp in out.opset_import if imp.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    if model_opset is None:
        out.opset_import.append(oh.make_opsetid("", opset))
    return out



def _expand_graph(graph: GraphProto, ctx: _Context) -> None:
    nodes: list[NodeProto] = []
    for node in graph.node:
        for g in _subgraphs(node):
            _expand_graph(g, ctx)
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        expander = _EXPANDERS.get(node.op_type)
        if expander is None:
            raise ValueError(f"unknown {DOMAIN!r} op {node.op_type!r} (node {node.name!r}): expected one of {sorted(_EXPANDERS)}")
        em = _Emitter(ctx, ctx.names.prefix(node.name or node.op_type))
        expander(em, node)
        nodes.extend(em.nodes)
    del graph.node[:]
    graph.node.extend(nodes)


# ------------------------------------------------------------------------------------- TokenSort

def _expand_token_sort(em: _Emitter, node: NodeProto) -> None:
    x = _input(node, 0)
    cd = _DOUBLE if em.elem_type(x) == _DOUBLE else _FLOAT
    th = em.op("Tanh", em.to(x, cd), hint="tanh")
    length_1d = em.dim(x, 1, hint="L")
    length = em.op("Squeeze", length_1d, em.i64(0), hint="L_scalar")
    idx = em.op("Range", em.const(0, TensorProto.INT64), length, em.const(1, TensorProto.INT64), hint="idx")
    denom = em.op("Max", em.op("Sub", length, em.const(1, TensorProto.INT64)), em.const(1, TensorProto.INT64), hint="denom")
    ref = em.op("Add", em.op("Cast", idx, to=cd), em.scalar(0.5, cd))
    ref = em.op("Div", ref, em.op("Cast", denom, to=cd))
    ref = em.op("Sub", em.op("Mul", ref, em.scalar(2.0, cd)), em.scalar(1.0, cd), hint="ref")
    key = em.op("Add", th, ref, hint="key")
    perm = _output(em, node, 0, "perm")
    # TopK breaks ties by the lower index (ONNX spec): the stable ascending order of the key
    em.op("TopK", key, length_1d, out=[em.name("sorted_key"), perm], axis=-1, largest=0, sorted=1)
    if len(node.output) > 1 and node.output[1]:
        positions = em.op("Expand", idx, em.op("Shape", perm), hint="positions")
        # inv[perm[j]] = j; perm is a permutation, so every element of the data input is overwritten
        em.op("ScatterElements", perm, perm, positions, out=node.output[1], axis=-1)


# ---------------------------------------------------------------------------------- DeformGather

def _expand_deform_gather(em: _Emitter, node: NodeProto) -> None:
    x, offset, table = _input(node, 0), _input(node, 1), _input(node, 2)
    cd = _FLOAT
    mode = "linear" if em.ctx.opset >= 20 else "bilinear"
    one, two, half = em.scalar(1.0, cd), em.scalar(2.0, cd), em.scalar(0.5, cd)
    h_1d, w_1d = em.dim(x, 2, hint="H"), em.dim(x, 3, hint="W")

    def axis_coords(size_1d: str, tag: str) -> tuple[str, str, str]:
        """(reference coords, key coords, size - 1) along one axis, each (S,) in float."""
        size = em.op("Squeeze", size_1d, em.i64(0), hint=f"{tag}_scalar")
        idx = em.op("Cast", em.op("Range", em.const(0, TensorProto.INT64), size, em.const(1, TensorProto.INT64)), to=cd, hint=f"{tag}_idx")
        size_f = em.op("Cast", size, to=cd, hint=f"{tag}_f")
        den = em.op("Sub", size_f, one, hint=f"{tag}_minus1")
        ref = em.op("Div", em.op("Add", idx, half), den)  # (i + 0.5) / (S - 1) * 2 - 1
        ref = em.op("Sub", em.op("Mul", ref, two), one, hint=f"ref_{tag}")
        key = em.op("Mul", idx, em.op("Div", size_f, den, hint=f"{tag}_step"))  # linspace(0, S, S)
        key = em.op("Sub", em.op("Mul", em.op("Div", key, den), two), one, hint=f"key_{tag}")
        return ref, key, den

    ref_y, key_y, den_y = axis_coords(h_1d, "y")
    ref_x, key_x, den_x = axis_coords(w_1d, "x")
    col = em.i64(-1, 1)  # (H,) -> (H, 1): rows broadcast along W
    ref_y, key_y = em.op("Reshape", ref_y, col, hint="ref_y_col"), em.op("Reshape", key_y, col, hint="key_y_col")

    def offset_channel(c: int, tag: str) -> str:
        ch = em.op("Slice", offset, em.i64(c), em.i64(c + 1), em.i64(1), hint=f"offset_{tag}")  # (Bt, 1, H, W)
        return em.op("Tanh", em.to(ch, cd), hint=f"tanh_{tag}")

    pos_y = em.op("Add", ref_y, em.op("Div", offset_channel(0, "y"), den_y), hint="pos_y")
    pos_x = em.op("Add", ref_x, em.op("Div", offset_channel(1, "x"), den_x), hint="pos_x")
    nhwc = [0, 2, 3, 1]  # (Bt, 2, H, W) -> (Bt, H, W, 2), GridSample's (x, y) grid
    grid = em.op("Transpose", em.op("Concat", pos_x, pos_y, axis=1), perm=nhwc, hint="grid")
    sampled = em.op("GridSample", em.to(x, cd), grid, mode=mode, padding_mode="zeros", align_corners=1, hint="sampled")

    disp_x = em.op("Mul", em.op("Sub", key_x, pos_x), half, hint="disp_x")
    disp_y = em.op("Mul", em.op("Sub", key_y, pos_y), half, hint="disp_y")
    disp = em.op("Transpose", em.op("Concat", disp_x, disp_y, axis=1), perm=nhwc, hint="disp")
    table4 = em.op("Unsqueeze", em.to(table, cd), em.i64(0), hint="table4")  # (1, Ch, Th, Tw)
    sizes = em.op("Concat", em.i64(1), em.dim(table, 0, hint="Ch"), h_1d, w_1d, axis=0, hint="table_sizes")
    resized = em.op("Resize", table4, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel", hint="table_resized")
    batch = em.op("Concat", em.dim(x, 0, hint="Bt"), em.i64(1, 1, 1), axis=0, hint="batch_shape")
    tables = em.op("Expand", resized, batch, hint="table_batch")
    bias = em.op("GridSample", tables, disp, mode=mode, padding_mode="zeros", align_corners=1, hint="bias")
    feat = em.op("Add", sampled, bias, hint="feat")
    em.finish(feat, _output(em, node, 0, "feat"), x, cd)


_EXPANDERS: dict[str, Callable[[_Emitter, NodeProto], None]] = {
    "SelectiveScan": _expand_selective_scan,
    "DeformGather": _expand_deform_gather,
    "TokenSort": _expand_token_sort,
}

__all__ = ["expand_custom_ops", "SCAN_IMPLS", "CHUNKED_MIN_LENGTH", "MIN_OPSET"]
