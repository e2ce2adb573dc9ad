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

from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto
from onnx import helper as oh
from onnx import numpy_helper

from ..errors import UsageError

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


# --------------------------------------------------------------------------------- SelectiveScan
#
# Working layout: state h is (..., G, N, Cg), i.e. channels innermost. Every broadcasting product
# then runs over contiguous rows of Cg (96..2304) elements, which is ~1.3x faster in ORT than
# (..., G, Cg, N) with rows of N = 16; C contracts over the N axis (-2).

def _scan_body(em: _Emitter, rank: int, n_states: int, n_inputs: int, output_ranks: list[int],
               step: Callable[[_Emitter, list[str], list[str]], tuple[list[str], list[str]]], hint: str) -> GraphProto:
    """A Scan body over float32 tensors: ``step(emitter, states, slices) -> (new states, outputs)``.

    States and per-step slices all have ``rank`` (dims unknown); ``output_ranks`` are the ranks of
    the per-step scan outputs (the checker wants a rank on every body input and output).
    """

    def build(sub: _Emitter):
        states = [sub.name(f"{hint}_state{i}") for i in range(n_states)]
        slices = [sub.name(f"{hint}_in{i}") for i in range(n_inputs)]
        new_states, outputs = step(sub, states, slices)
        vi = lambda n, r: oh.make_tensor_value_info(n, _FLOAT, [None] * r)  # noqa: E731
        return ([vi(n, rank) for n in states + slices],
                [vi(n, rank) for n in new_states] + [vi(n, r) for n, r in zip(outputs, output_ranks, strict=True)])

    return em.subgraph(hint, build)


def _recurrence_step(sub: _Emitter, states, slices):
    """h = a * h + b; y = sum_n h * c (c is (..., G, N, 1))."""
    (h,), (a, b, c) = states, slices
    h_new = sub.op("Add", sub.op("Mul", a, h), b, hint="h")
    y = sub.op("ReduceSum", sub.op("Mul", h_new, c), sub.i64(-2), keepdims=0, hint="y")
    return [h_new], [y]


def _local_step(sub: _Emitter, states, slices):
    """Pass 1: h = a * h + b and the decay product p = p * a; no per-step output."""
    (h, p), (a, b) = states, slices
    return [sub.op("Add", sub.op("Mul", a, h), b, hint="h"), sub.op("Mul", p, a, hint="p")], []


def _carry_step(sub: _Emitter, states, slices):
    """Carry pass: output this chunk's start state, then start_next = h_end + p * start."""
    (carry,), (h_end, p) = states, slices
    start = sub.op("Identity", carry, hint="start")
    return [sub.op("Add", h_end, sub.op("Mul", p, carry), hint="carry")], [start]


def _fill(em: _Emitter, value: float, shape: str, hint: str) -> str:
    return em.op("ConstantOfShape", shape, value=numpy_helper.from_array(np.full(1, value, np.float32)), hint=hint)


def _expand_selective_scan(em: _Emitter, node: NodeProto) -> None:
    u, delta, A, B, C, D, bias = (_input(node, i) for i in range(7))
    cd = _FLOAT  # the contract: the recurrence runs in float32 whatever the I/O dtype
    u_c, A_c, B_c, C_c = em.to(u, cd), em.to(A, cd), em.to(B, cd), em.to(C, cd)
    bt, length = em.dim(u, 0, hint="Bt"), em.dim(u, 2, hint="L")
    groups, n = em.dim(B, 1, hint="G"), em.dim(A, 1, hint="N")

    dt = em.to(delta, cd)
    if bias:  # optional ('' = no bias), like the reference's None
        dt = em.op("Add", dt, em.op("Unsqueeze", em.to(bias, cd), em.i64(1)), hint="dt")
    if _attr_int(node, "delta_softplus", 1):
        big = em.op("Greater", dt, em.scalar(_SOFTPLUS_THRESHOLD, cd))
        dt = em.op("Where", big, dt, em.op("Softplus", dt), hint="dt_softplus")
    du = em.op("Mul", dt, u_c, hint="dt_u")
    grouped = em.op("Concat", bt, groups, em.i64(-1), length, axis=0, hint="grouped_shape")  # (Bt, G, Cg, L)
    dt4, du4 = em.op("Reshape", dt, grouped, hint="dt4"), em.op("Reshape", du, grouped, hint="du4")
    A3 = em.op("Reshape", A_c, em.op("Concat", groups, em.i64(-1), n, axis=0), hint="A_g")  # (G, Cg, N)
    A3 = em.op("Transpose", A3, perm=[0, 2, 1], hint="A_gnc")  # (G, N, Cg)

    # time-major (L, Bt, G, X): moving the one time axis to the front is a cheap transpose, and the
    # big (..., N, Cg) tensors are only built afterwards, directly in the scan layout
    tm = [3, 0, 1, 2]
    dt_t, du_t = em.op("Transpose", dt4, perm=tm, hint="dt_t"), em.op("Transpose", du4, perm=tm, hint="du_t")
    B_t, C_t = em.op("Transpose", B_c, perm=tm, hint="B_t"), em.op("Transpose", C_c, perm=tm, hint="C_t")
    flip_groups = _reverse_selector(em, node, B)
    if flip_groups:  # groups that scan backwards: their time axis reversed before and after the scan
        dt_t, du_t, B_t, C_t = (flip_groups(x, tag) for x, tag in ((dt_t, "dt"), (du_t, "du"), (B_t, "B"), (C_t, "C")))
    impl = em.ctx.scan_impl
    if impl == "auto":
        static_length = em.static_dim(u, 2)
        impl = "sequential" if static_length is not None and static_length < CHUNKED_MIN_LENGTH else "chunked"
    if impl == "sequential":
        y_t = _sequential_scan(em, dt_t, du_t, A3, B_t, C_t)
    else:
        y_t = _chunked_scan(em, dt_t, du_t, A3, B_t, C_t, length)
    if flip_groups:
        y_t = flip_groups(y_t, "y")
    y_groups = em.op("Transpose", y_t, perm=[1, 2, 3, 0], hint="y_groups")  # (L, Bt, G, Cg) -> (Bt, G, Cg, L)
    y = em.op("Reshape", y_groups, em.op("Shape", u_c), hint="y_scan")  # (Bt, Ch, L)
    if D:  # optional ('' = no skip term)
        y = em.op("Add", y, em.op("Mul", em.op("Unsqueeze", em.to(D, cd), em.i64(1)), u_c), hint="y_skip")
    em.finish(y, _output(em, node, 0, "y"), u, cd)


def _reverse_selector(em: _Emitter, node: NodeProto, B: str) -> Callable[[str, str], str] | None:
    """For a ``reverse`` attribute with a 1: a function that flips the time axis (0) of the flagged
    groups of a time-major (L, Bt, G, X) tensor, ``Where(flag[g], x[::-1], x)`` (exact data movement)."""
    flags = _attr_ints(node, "reverse")
    if not any(flags):
        return None
    if any(v not in (0, 1) for v in flags):
        raise UsageError(f"{node.name or 'SelectiveScan'}: attribute 'reverse' must hold 0/1 flags, got {flags}")
    groups = em.static_dim(B, 1)
    if groups is not None and groups != len(flags):
        raise UsageError(f"{node.name or 'SelectiveScan'}: attribute 'reverse' has {len(flags)} flags but B has "
                         f"G = {groups} groups; give one 0/1 flag per group")
    mask = em.const(np.array(flags, bool).reshape(1, 1, -1, 1), TensorProto.BOOL, hint="reverse_mask")  # (1, 1, G, 1)

    def flip(x: str, tag: str) -> str:
        backwards = em.op("Slice", x, em.i64(-1), em.i64(-(2**63)), em.i64(0), em.i64(-1), hint=f"{tag}_flipped")
        return em.op("Where", mask, backwards, x, hint=f"{tag}_dir")

    return flip


def _decays_and_inputs(em: _Emitter, dt: str, du: str, A3: str, B: str) -> tuple[str, str]:
    """decay = exp(dt * A), input = (dt * u) * B, both (..., G, N, Cg), from dt, du (..., G, Cg), B (..., G, N)."""
    decay = em.op("Exp", em.op("Mul", em.op("Unsqueeze", dt, em.i64(-2)), A3), hint="decay")
    inp = em.op("Mul", em.op("Unsqueeze", du, em.i64(-2)), em.op("Unsqueeze", B, em.i64(-1)), hint="input")
    return decay, inp


def _sequential_scan(em: _Emitter, dt_t: str, du_t: str, A3: str, B_t: str, C_t: str) -> str:
    """One Scan over the L time-major steps; (L, Bt, G, X) inputs, returns y (L, Bt, G, Cg)."""
    decay, inp = _decays_and_inputs(em, dt_t, du_t, A3, B_t)  # (L, Bt, G, N, Cg)
    c = em.op("Unsqueeze", C_t, em.i64(-1), hint="C_t5")  # (L, Bt, G, N, 1)
    h0 = _fill(em, 0.0, em.op("Shape", decay, start=1, hint="state_shape"), "h0")
    _, y = em.op("Scan", h0, decay, inp, c, out=[em.name("h_last"), em.name("y_t")],
                 body=_scan_body(em, 4, 1, 3, [3], _recurrence_step, "scan"), num_scan_inputs=3)
    return y


def _chunked_scan(em: _Emitter, dt_t: str, du_t: str, A3: str, B_t: str, C_t: str, length: str) -> str:
    """The exact chunked scan (see the module docstring); (L, Bt, G, X) inputs, returns y (L, Bt, G, Cg)."""
    one = em.i64(1)
    # T = isqrt(L - 1) + 1 (a float64 sqrt is exact enough for any L below 2^50), nc = ceil(L / T)
    root = em.op("Floor", em.op("Sqrt", em.op("Cast", em.op("Sub", length, one), to=_DOUBLE)))
    steps = em.op("Add", em.op("Cast", root, to=TensorProto.INT64), one, hint="T")
    chunks = em.op("Div", em.op("Sub", em.op("Add", length, steps), one), steps, hint="nc")
    pad = em.op("Sub", em.op("Mul", chunks, steps), length, hint="pad")
    pads = em.op("Concat", em.i64(0, 0, 0, 0), pad, em.i64(0, 0, 0), axis=0, hint="pads")  # end of axis 0

    def chunk_major(x_t: str, tag: str) -> str:
        """(L, Bt, G, X) -> (T, nc, Bt, G, X) with l = k * T + s, the tail padded with 0."""
        padded = em.op("Pad", x_t, pads, hint=f"{tag}_padded")  # dt = 0: decay 1; du = B = C = 0: input 0
        split = em.op("Concat", chunks, steps, em.op("Shape", x_t, start=1), axis=0, hint=f"{tag}_split_shape")
        return em.op("Transpose", em.op("Reshape", padded, split), perm=[1, 0, 2, 3, 4], hint=f"{tag}_k")

    decay, inp = _decays_and_inputs(  # (T, nc, Bt, G, N, Cg)
        em, chunk_major(dt_t, "dt"), chunk_major(du_t, "du"), A3, chunk_major(B_t, "B"))
    c = em.op("Unsqueeze", chunk_major(C_t, "C"), em.i64(-1), hint="C_k")  # (T, nc, Bt, G, N, 1)

    # pass 1: every chunk from h = 0, with the product of its decays
    state_shape = em.op("Shape", decay, start=1, hint="state_shape")  # (nc, Bt, G, N, Cg)
    h_end, p_end = em.op("Scan", _fill(em, 0.0, state_shape, "h0"), _fill(em, 1.0, state_shape, "p0"), decay, inp,
                         out=[em.name("chunk_h_end"), em.name("chunk_decay")],
                         body=_scan_body(em, 5, 2, 2, [], _local_step, "pass1"), num_scan_inputs=2)
    # carry: the true start state of every chunk
    carry0 = _fill(em, 0.0, em.op("Shape", decay, start=2, hint="carry_shape"), "carry0")  # (Bt, G, N, Cg)
    _, starts = em.op("Scan", carry0, h_end, p_end, out=[em.name("carry_last"), em.name("chunk_starts")],
                      body=_scan_body(em, 4, 1, 2, [4], _carry_step, "carry"), num_scan_inputs=2)
    # pass 2: every chunk again from its start state, contracted with C
    _, y_k = em.op("Scan", starts, decay, inp, c, out=[em.name("h_last"), em.name("y_k")],
                   body=_scan_body(em, 5, 1, 3, [4], _recurrence_step, "pass2"), num_scan_inputs=3)  # (T, nc, Bt, G, Cg)
    y_k = em.op("Transpose", y_k, perm=[1, 0, 2, 3, 4], hint="y_k_chunk_first")  # (nc, T, ...): l = k * T + s
    y_t = em.op("Reshape", y_k, em.op("Concat", em.i64(-1), em.op("Shape", y_k, start=2), axis=0), hint="y_padded")
    return em.op("Slice", y_t, em.i64(0), length, em.i64(0), hint="y_t")  # drop the padded tail


_EXPANDERS: dict[str, Callable[[_Emitter, NodeProto], None]] = {
    "SelectiveScan": _expand_selective_scan,
    "DeformGather": _expand_deform_gather,
    "TokenSort": _expand_token_sort,
}

__all__ = ["expand_custom_ops", "SCAN_IMPLS", "CHUNKED_MIN_LENGTH", "MIN_OPSET"]
