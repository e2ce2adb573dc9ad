"""The portable expansion of SelectiveScan: the recurrence as an ONNX Scan (sequential) or as a chunked
parallel form; the module docstring of ``portable`` says when each is used and why they agree."""
from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import GraphProto, NodeProto, TensorProto, numpy_helper
from onnx import helper as oh

from ..errors import UsageError

from .portable_graph import _DOUBLE, _FLOAT, _SOFTPLUS_THRESHOLD, CHUNKED_MIN_LENGTH, _attr_int, _attr_ints, _Emitter, _input, _output

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

