"""The portable expansion of the ``defmamba`` ops (standard ONNX only) against the PyTorch references.

Each op is put in a one-node ONNX model of the ``defmamba`` domain, expanded with
``expand_custom_ops`` and run in a plain onnxruntime session (no custom-op library). Every model
is built with dynamic dims, and each expanded model is run at several sizes.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto
from onnx import helper as oh

import naive_ops
from defmamba_deploy.errors import UsageError
from defmamba_deploy.onnx.portable import expand_custom_ops
from defmamba_deploy.ops import deform_gather, selective_scan, token_sort
from defmamba_deploy.ops.token_sort import sort_key

FLOAT, HALF, DOUBLE, INT64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64
NP = {FLOAT: np.float32, HALF: np.float16, DOUBLE: np.float64}


def vi(name, elem_type, rank):
    return oh.make_tensor_value_info(name, elem_type, [None] * rank)  # every dim dynamic


def custom_model(nodes, inputs, outputs, opset=17):
    graph = oh.make_graph(nodes, "g", inputs, outputs)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset), oh.make_opsetid("defmamba", 1)])


def all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from all_nodes(sub)


def portable_session(model, opset=17, **kw):
    expanded = expand_custom_ops(model, opset, **kw)
    onnx.checker.check_model(expanded, full_check=True)
    assert {imp.domain for imp in expanded.opset_import} <= {"", "ai.onnx"}
    assert all(n.domain in ("", "ai.onnx") for n in all_nodes(expanded.graph))
    return ort.InferenceSession(expanded.SerializeToString(), providers=["CPUExecutionProvider"]), expanded


# -------------------------------------------------------------------------------------- TokenSort

def sort_model(elem_type=FLOAT):
    node = oh.make_node("TokenSort", ["x"], ["perm", "inv"], domain="defmamba")
    return custom_model([node], [vi("x", elem_type, 2)], [vi("perm", INT64, 2), vi("inv", INT64, 2)])


def with_key_output(expanded):
    """The expanded model with the TopK's input (the sort key) as an extra output, to test TopK itself."""
    m = onnx.ModelProto()
    m.CopyFrom(expanded)
    (topk,) = [n for n in m.graph.node if n.op_type == "TopK"]
    m.graph.output.append(oh.make_tensor_value_info(topk.input[0], FLOAT, [None, None]))
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def check_sort(x: torch.Tensor, perm: np.ndarray, inv: np.ndarray, tol: float = 1e-6) -> None:
    """perm must be the reference's order, up to swaps of neighbours whose keys are within ``tol``.

    The expansion computes the reference's key with the same ops in the same order, but ORT's
    ``tanh`` and PyTorch's may differ by 1 ulp (~6e-8 at |key| ~ 1), so two tokens whose keys are
    (nearly) tied can legitimately come out swapped. So: perm is a permutation, inv its inverse,
    perm sorts the reference key ascending within ``tol``, and it equals the reference exactly
    at every position whose reference key is more than ``tol`` from both neighbours.
    """
    key = sort_key(x).numpy()
    ref_perm, ref_inv = (t.numpy() for t in token_sort(x))
    bt, length = key.shape
    assert perm.dtype == np.int64 and inv.dtype == np.int64 and perm.shape == inv.shape == (bt, length)
    positions = np.broadcast_to(np.arange(length), (bt, length))
    np.testing.assert_array_equal(np.sort(perm, axis=-1), positions)
    np.testing.assert_array_equal(np.take_along_axis(inv, perm, axis=-1), positions)
    assert (np.diff(np.take_along_axis(key, perm, axis=-1), axis=-1) >= -tol).all()
    gaps = np.diff(np.take_along_axis(key, ref_perm, axis=-1), axis=-1)
    inf = np.full((bt, 1), np.inf)
    isolated = (np.concatenate([inf, gaps], -1) > tol) & (np.concatenate([gaps, inf], -1) > tol)
    np.testing.assert_array_equal(perm[isolated], ref_perm[isolated])
    isolated_tokens = np.take_along_axis(isolated, ref_inv, axis=-1)  # the same, indexed by token
    np.testing.assert_array_equal(inv[isolated_tokens], ref_inv[isolated_tokens])


def test_token_sort_exact_ties_and_dynamic_length():
    sess, expanded = portable_session(sort_model())
    keyed = with_key_output(expanded)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 16384, generator=g) * 1e-3  # reference positions ~1.2e-4 apart: some keys tie exactly
    ref_key = sort_key(x).numpy()
    assert sum(int((np.diff(np.sort(k)) == 0).sum()) for k in ref_key) > 0, "the test needs exact float32 ties"
    perm, inv, key = keyed.run(None, {"x": x.numpy()})
    check_sort(x, perm, inv)
    # the key is the reference's up to tanh ulps, and TopK is exactly a stable argsort of it
    # (ties broken by the lower index), exact ties included
    np.testing.assert_allclose(key, ref_key, rtol=0, atol=2.4e-7)
    assert sum(int((np.diff(np.sort(k)) == 0).sum()) for k in key) > 0
    np.testing.assert_array_equal(perm, np.argsort(key, axis=-1, kind="stable"))
    # the same model at other sizes, incl. L = 1 and 2 and offsets large enough to reorder tokens
    for shape in [(1, 1), (3, 1), (2, 2), (5, 7), (2, 3136)]:
        x = torch.randn(*shape, generator=g) * 3
        check_sort(x, *sess.run(None, {"x": x.numpy()}))


@pytest.mark.parametrize("elem_type", [HALF, DOUBLE], ids=["float16", "float64"])
def test_token_sort_io_dtypes(elem_type):
    """float16 offsets get a float32 key (like the reference), float64 offsets a float64 key."""
    sess, _ = portable_session(sort_model(elem_type))
    x = (torch.randn(3, 500, generator=torch.Generator().manual_seed(2)) * 2).to(torch.float16 if elem_type == HALF else torch.float64)
    perm, inv = sess.run(None, {"x": x.numpy()})
    check_sort(x, perm, inv, tol=1e-6 if elem_type == HALF else 1e-14)


# ----------------------------------------------------------------------------------- DeformGather

def gather_model(elem_type=FLOAT, opset=17):
    node = oh.make_node("DeformGather", ["x", "offset", "table"], ["feat"], domain="defmamba")
    return custom_model([node], [vi("x", elem_type, 4), vi("offset", elem_type, 4), vi("table", elem_type, 3)],
                        [vi("feat", elem_type, 4)], opset)


def gather_inputs(bt, ch, h, w, k=3, table=(7, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    # offsets up to ~|3|: tanh saturates, points reach outside the map (zero padding) near the borders
    return (torch.randn(bt, ch, h, w, generator=g), torch.randn(bt, k, h, w, generator=g) * 1.5,
            torch.randn(ch, *table, generator=g))


GATHER_SHAPES = [  # (Bt, Ch, H, W, K, table)
    (2, 4, 5, 3, 2, (7, 7)), (1, 3, 2, 2, 3, (7, 7)), (3, 2, 2, 9, 3, (3, 5)), (2, 5, 13, 6, 4, (7, 7)), (1, 8, 28, 28, 3, (7, 7)),
]


@pytest.mark.parametrize("opset", [17, 20])
def test_deform_gather_matches_reference(opset):
    sess, _ = portable_session(gather_model(opset=opset), opset)  # one model, every shape: dynamic
    for i, (bt, ch, h, w, k, table) in enumerate(GATHER_SHAPES):
        x, offset, rpe = gather_inputs(bt, ch, h, w, k, table, seed=i)
        (feat,) = sess.run(None, {"x": x.numpy(), "offset": offset.numpy(), "table": rpe.numpy()})
        ref = deform_gather(x, offset, rpe).numpy()
        assert feat.dtype == np.float32 and feat.shape == ref.shape
        # float32 rounding of the sample points (1 ulp of the coordinates) and of the interpolation
        np.testing.assert_allclose(feat, ref, rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()))
        if h * w <= 40:  # and against the independent float64 loops on the small shapes
            naive = naive_ops.deform_gather(x.numpy(), offset.numpy(), rpe.numpy())
            np.testing.assert_allclose(feat, naive, rtol=0, atol=2e-5 * max(1.0, np.abs(naive).max()))


def test_deform_gather_half_io():
    sess, _ = portable_session(gather_model(HALF))
    x, offset, rpe = (t.half() for t in gather_inputs(2, 4, 7, 5))
    (feat,) = sess.run(None, {"x": x.numpy(), "offset": offset.numpy(), "table": rpe.numpy()})
    assert feat.dtype == np.float16
    ref = deform_gather(x.float(), offset.float(), rpe.float()).numpy()  # computed in float32 from the same values
    np.testing.assert_allclose(feat.astype(np.float32), ref, rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------------------------- SelectiveScan

SCAN_NAMES = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
SCAN_RANKS = [3, 3, 2, 4, 4, 1, 1]


def scan_model(io_type=FLOAT, delta_softplus=1, optional=True):
    names = SCAN_NAMES if optional else SCAN_NAMES[:5] + ["", ""]
    node = oh.make_node("SelectiveScan", names, ["y"], domain="defmamba", delta_softplus=delta_softplus)
    inputs = [vi(n, io_type if n in ("u", "delta", "B", "C") else FLOAT, r) for n, r in zip(SCAN_NAMES, SCAN_RANKS) if n in names]
    return custom_model([node], inputs, [vi("y", io_type, 3)])


def scan_inputs(bt, ch, g, n, length, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return dict(u=r(bt, ch, length), delta=r(bt, ch, length) - 1, A=-torch.rand(ch, n, generator=gen) * 4,
                B=r(bt, g, n, length), C=r(bt, g, n, length), D=r(ch), delta_bias=r(ch) * 0.5)


SCAN_SHAPES = [  # (Bt, Ch, G, N, L)
    (1, 3, 3, 4, 1), (2, 6, 3, 16, 1), (1, 4, 1, 3, 2), (2, 6, 2, 5, 33), (3, 9, 3, 16, 50), (1, 12, 3, 8, 257), (2, 6, 1, 4, 1000),
]


def scan_tolerance(ref: np.ndarray) -> float:
    # float32 state and exp: rounding accumulates over L steps and the chunked form re-associates
    # the recurrence at chunk boundaries; 2e-5 of the output scale is ~100 float32 ulp
    return 2e-5 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("impl", ["chunked", "sequential"])
def test_selective_scan_matches_reference(impl):
    sess, _ = portable_session(scan_model(), scan_impl=impl)  # one model, every shape: dynamic
    for i, shape in enumerate(SCAN_SHAPES):
        args = scan_inputs(*shape, seed=i)
        if i == 3:
            args["delta"][..., ::7] += 25  # dt > 20: the softplus threshold branch
        (y,) = sess.run(None, {k: v.numpy() for k, v in args.items()})
        ref = selective_scan(**args).numpy()
        assert y.dtype == np.float32 and y.shape == ref.shape
        np.testing.assert_allclose(y, ref, rtol=0, atol=scan_tolerance(ref))
        if shape[-1] <= 50:
            naive = naive_ops.selective_scan(**{k: v.numpy() for k, v in args.items()})
            np.testing.assert_allclose(y, naive, rtol=0, atol=scan_tolerance(naive))


@pytest.mark.parametrize("impl", ["chunked", "sequential"])
def test_selective_scan_without_softplus_d_and_bias(impl):
    sess, _ = portable_session(scan_model(delta_softplus=0, optional=False), scan_impl=impl)
    for shape in [(2, 6, 3, 4, 40), (1, 4, 2, 3, 5)]:
        args = scan_inputs(*shape)
        del args["D"], args["delta_bias"]
        args["delta"] = args["delta"].abs()  # without softplus keep dt > 0 like a real model
        (y,) = sess.run(None, {k: v.numpy() for k, v in args.items()})
        ref = selective_scan(**args, delta_softplus=False).numpy()
        np.testing.assert_allclose(y, ref, rtol=0, atol=scan_tolerance(ref))


@pytest.mark.parametrize("impl", ["chunked", "sequential"])
def test_selective_scan_reverse(impl):
    model = scan_model()
    reverse = [1, 0, 1]
    model.graph.node[0].attribute.append(oh.make_attribute("reverse", reverse))
    sess, _ = portable_session(model, scan_impl=impl)
    for i, shape in enumerate([(2, 6, 3, 16, 1), (2, 6, 3, 4, 33), (1, 9, 3, 8, 600)]):
        args = scan_inputs(*shape, seed=i)
        (y,) = sess.run(None, {k: v.numpy() for k, v in args.items()})
        ref = selective_scan(**args, reverse=reverse).numpy()
        np.testing.assert_allclose(y, ref, rtol=0, atol=scan_tolerance(ref))
        if shape[-1] <= 50:
            naive = naive_ops.selective_scan(**{k: v.numpy() for k, v in args.items()}, reverse=reverse)
            np.testing.assert_allclose(y, naive, rtol=0, atol=scan_tolerance(naive))


def test_selective_scan_reverse_wrong_length():
    """With G known statically, a flag list of another length is refused when expanding."""
    node = oh.make_node("SelectiveScan", SCAN_NAMES, ["y"], domain="defmamba", reverse=[0, 1])
    shapes = {"u": [1, 6, 10], "delta": [1, 6, 10], "A": [6, 4], "B": [1, 3, 4, 10], "C": [1, 3, 4, 10], "D": [6],
              "delta_bias": [6]}
    inputs = [oh.make_tensor_value_info(n, FLOAT, shapes[n]) for n in SCAN_NAMES]
    model = custom_model([node], inputs, [oh.make_tensor_value_info("y", FLOAT, [1, 6, 10])])
    with pytest.raises(UsageError, match=r"'reverse' has 2 flags but B has G = 3 groups"):
        expand_custom_ops(model)


def test_selective_scan_half_io():
    sess, _ = portable_session(scan_model(HALF))
    args = scan_inputs(1, 6, 3, 16, 300)
    half = {k: (v.half() if k in ("u", "delta", "B", "C") else v) for k, v in args.items()}
    (y,) = sess.run(None, {k: v.numpy() for k, v in half.items()})
    assert y.dtype == np.float16
    ref = selective_scan(**{k: v.float() for k, v in half.items()}).numpy()  # the same values, in float32
    np.testing.assert_allclose(y.astype(np.float32), ref, rtol=2e-3, atol=2e-3)


# ------------------------------------------------------------------------------- whole-model rules

def test_several_nodes_keep_names_and_graph():
    """Two instances of each op plus standard nodes in one graph: unique names, outputs kept."""
    d = "defmamba"
    nodes = [
        oh.make_node("DeformGather", ["x", "offset", "table"], ["feat"], domain=d, name="dg"),
        oh.make_node("DeformGather", ["feat", "offset", "table"], ["feat2"], domain=d, name="dg"),  # same node name
        oh.make_node("Flatten", ["offset"], ["off_flat"], axis=1),  # (Bt, K*H*W) as a token offset
        oh.make_node("TokenSort", ["off_flat"], ["perm", ""], domain=d),  # inv_perm unused
        oh.make_node("TokenSort", ["off_flat"], ["perm2", "inv2"], domain=d),
        oh.make_node("SelectiveScan", SCAN_NAMES, ["y1"], domain=d),
        oh.make_node("SelectiveScan", ["y1"] + SCAN_NAMES[1:], ["y2"], domain=d),
        oh.make_node("Add", ["y2", "u"], ["out"]),
    ]
    inputs = [vi("x", FLOAT, 4), vi("offset", FLOAT, 4), vi("table", FLOAT, 3)]
    inputs += [vi(n, FLOAT, r) for n, r in zip(SCAN_NAMES, SCAN_RANKS)]
    outputs = [vi("feat2", FLOAT, 4), vi("perm", INT64, 2), vi("perm2", INT64, 2), vi("inv2", INT64, 2), vi("out", FLOAT, 3)]
    model = custom_model(nodes, inputs, outputs)
    sess, expanded = portable_session(model)
    assert [o.name for o in expanded.graph.output] == [o.name for o in outputs]
    names = [n.name for n in expanded.graph.node if n.name]  # the two standard nodes have no name
    assert len(names) == len(set(names)) == len(expanded.graph.node) - 2
    assert [n.op_type for n in expanded.graph.node if n.op_type in ("Flatten", "Add") and n.output[0] in ("off_flat", "out")] == ["Flatten", "Add"]

    x, offset, rpe = gather_inputs(2, 3, 4, 5)
    args = scan_inputs(2, 6, 3, 4, 9)
    feat2, perm, perm2, inv2, out = sess.run(None, {"x": x.numpy(), "offset": offset.numpy(), "table": rpe.numpy(),
                                                   **{k: v.numpy() for k, v in args.items()}})
    feat_ref = deform_gather(deform_gather(x, offset, rpe), offset, rpe).numpy()
    np.testing.assert_allclose(feat2, feat_ref, rtol=0, atol=5e-5 * np.abs(feat_ref).max())
    flat = offset.flatten(1)
    check_sort(flat, perm2, inv2)
    np.testing.assert_array_equal(perm, perm2)
    y1 = selective_scan(**args)
    out_ref = (selective_scan(**{**args, "u": y1}) + args["u"]).numpy()
    np.testing.assert_allclose(out, out_ref, rtol=0, atol=scan_tolerance(out_ref))


def test_rejects_bad_models():
    with pytest.raises(ValueError, match="unknown"):
        expand_custom_ops(custom_model([oh.make_node("Nope", ["x"], ["y"], domain="defmamba")], [vi("x", FLOAT, 1)], [vi("y", FLOAT, 1)]), 17)
    with pytest.raises(ValueError, match="differs"):
        expand_custom_ops(sort_model(), 18)
    with pytest.raises(ValueError, match="opset >= 17"):
        model = sort_model()
        model.opset_import[0].version = 16
        expand_custom_ops(model, 16)
    with pytest.raises(ValueError, match="scan_impl"):
        expand_custom_ops(sort_model(), 17, scan_impl="fast")


def test_auto_scan_form_follows_static_length():
    """scan_impl='auto': sequential for a static L below CHUNKED_MIN_LENGTH, chunked otherwise."""
    from defmamba_deploy.onnx.portable import CHUNKED_MIN_LENGTH

    def n_scans(length):
        model = scan_model()
        if length is not None:
            for inp in model.graph.input:
                if inp.name in ("u", "delta"):
                    inp.type.tensor_type.shape.dim[2].dim_value = length
        return sum(n.op_type == "Scan" for n in expand_custom_ops(model, 17).graph.node)

    assert n_scans(None) == 3 and n_scans(CHUNKED_MIN_LENGTH) == 3  # chunked: pass 1, carry, pass 2
    assert n_scans(CHUNKED_MIN_LENGTH - 1) == 1


def test_custom_node_inside_subgraph():
    branch = lambda sign: oh.make_graph(  # noqa: E731
        [oh.make_node("Mul", ["x", f"s{sign}"], [f"xs{sign}"]),
         oh.make_node("TokenSort", [f"xs{sign}"], [f"p{sign}", f"i{sign}"], domain="defmamba")],
        f"branch{sign}", [], [vi(f"p{sign}", INT64, 2)],
        [oh.make_tensor(f"s{sign}", FLOAT, [], [1.0 if sign == "pos" else -1.0])])
    node = oh.make_node("If", ["cond"], ["perm"], then_branch=branch("pos"), else_branch=branch("neg"))
    model = custom_model([node], [vi("cond", TensorProto.BOOL, 0), vi("x", FLOAT, 2)], [vi("perm", INT64, 2)])
    sess, expanded = portable_session(model)
    assert sum(n.op_type == "TopK" for n in all_nodes(expanded.graph)) == 2
    x = torch.randn(2, 50) * 2
    for cond, sign in ((True, 1.0), (False, -1.0)):
        (perm,) = sess.run(None, {"cond": np.array(cond), "x": x.numpy()})
        check_sort(x * sign, perm, np.argsort(perm, -1))  # the branch outputs perm only


def test_unknown_types_fall_back_to_castlike(monkeypatch):
    """Where inference cannot type a tensor, the subgraph casts to float32 and back with CastLike."""
    import defmamba_deploy.onnx.portable as portable

    monkeypatch.setattr(portable, "_value_info", lambda model: ({}, {}))
    sess, expanded = portable_session(scan_model(HALF))
    assert any(n.op_type == "CastLike" for n in expanded.graph.node)
    args = scan_inputs(1, 6, 3, 4, 20)
    half = {k: (v.half() if k in ("u", "delta", "B", "C") else v) for k, v in args.items()}
    (y,) = sess.run(None, {k: v.numpy() for k, v in half.items()})
    assert y.dtype == np.float16
    ref = selective_scan(**{k: v.float() for k, v in half.items()}).numpy()
    np.testing.assert_allclose(y.astype(np.float32), ref, rtol=2e-3, atol=2e-3)
