"""The float32 policy as graph rules (defmamba_deploy.onnx.fp32_policy): unique node names, the kept
set on hand-built graphs and on DefMamba-T, and its identity with what convert_fp16 keeps."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import defmamba_deploy as dd
from shared_inputs import decomposed_layer_norm
from defmamba_deploy.onnx import export_onnx
from defmamba_deploy.onnx import fp32_policy as fp
from defmamba_deploy.onnx.precision import DEFAULT_POLICY, Fp32Policy, convert_fp16, float32_nodes, name_nodes


def _model(nodes, inits, x_shape=(2, 16), y_shape=(2, 8), opset=18):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(y_shape))],
                              [numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ln_softmax_head():
    """Decomposed LayerNorm -> projection -> Relu -> (unnamed) Softmax -> head MatMul -> bias Add."""
    rng = np.random.default_rng(0)
    ln_inits, ln_nodes = decomposed_layer_norm()
    inits = ln_inits + [("W", rng.standard_normal((16, 8)).astype(np.float32)),
                        ("H", rng.standard_normal((8, 8)).astype(np.float32)), ("b", np.zeros(8, np.float32))]
    nodes = ln_nodes + [
        helper.make_node("MatMul", ["n", "W"], ["p"], name="proj"),
        helper.make_node("Relu", ["p"], ["r"], name="relu"),
        helper.make_node("Softmax", ["r"], ["s"]),  # unnamed
        helper.make_node("MatMul", ["s", "H"], ["h"], name="head"),
        helper.make_node("Add", ["h", "b"], ["Y"], name="relu"),  # a duplicate name
    ]
    return _model(nodes, inits)


def test_name_nodes_gives_unique_deterministic_names():
    model = _ln_softmax_head()
    named = name_nodes(model)
    names = [n.name for n in named.graph.node]
    assert len(set(names)) == len(names) == len(model.graph.node)
    assert all(names)
    assert names[:9] == [n.name for n in model.graph.node][:9]  # named, unique nodes keep their names
    assert names[9] == "Softmax/s"  # op type and output: stable whatever the rest of the graph is
    assert names[11] != "relu" and names[11].startswith("relu")
    assert [n.name for n in name_nodes(model).graph.node] == names  # deterministic
    assert [n.name for n in name_nodes(named).graph.node] == names  # idempotent
    assert not model.graph.node[9].name  # the input is not changed


def test_float32_nodes_on_a_hand_built_graph():
    model = _ln_softmax_head()
    named = [n.name for n in name_nodes(model).graph.node]
    kept = float32_nodes(model)
    assert set(kept) <= set(named)
    assert kept == {
        "mean": fp.R_LAYER_NORM, "sub": fp.R_LAYER_NORM, "pow": fp.R_LAYER_NORM, "var": fp.R_LAYER_NORM,
        "add_eps": fp.R_LAYER_NORM, "sqrt": fp.R_LAYER_NORM, "div": fp.R_LAYER_NORM,
        "Softmax/s": fp.R_REDUCTION, "head": fp.R_HEAD, named[11]: fp.R_HEAD,
    }
    assert list(kept) == [n for n in named if n in kept]  # graph order
    # switches: each optional rule can be turned off, user rules add nodes
    assert float32_nodes(model, Fp32Policy(layer_norm=False, head=False)) == {"mean": fp.R_REDUCTION, "var": fp.R_REDUCTION,
                                                                              "Softmax/s": fp.R_REDUCTION}
    extra = float32_nodes(model, Fp32Policy(reductions=False, layer_norm=False, head=False, op_types=frozenset({"Relu"}),
                                            nodes=frozenset({"proj"})))
    assert extra == {"proj": fp.R_USER, "relu": fp.R_USER}
    with pytest.raises(dd.UsageError, match="not in the graph"):
        float32_nodes(model, Fp32Policy(nodes=frozenset({"nope"})))
    with pytest.raises(dd.UsageError, match="Fp32Policy"):
        float32_nodes(model, {"head": False})


def test_float32_nodes_is_what_convert_fp16_keeps_on_a_hand_built_graph():
    model = _ln_softmax_head()
    for policy in (DEFAULT_POLICY, Fp32Policy(head=False), Fp32Policy(layer_norm=False)):
        _, report = convert_fp16(model, keep_fp32=policy)
        assert report.kept_names == set(float32_nodes(model, policy))


def test_integer_only_nodes_are_not_reported():
    """A node of integer tensors inside a kept region has no float precision to pin."""
    nodes = [helper.make_node("Shape", ["X"], ["shp"], name="shape"),
             helper.make_node("Reshape", ["X", "shp"], ["r"], name="reshape"),
             helper.make_node("ReduceSum", ["r", "ax"], ["Y"], name="sum", keepdims=1)]
    model = _model(nodes, [("ax", np.array([1], np.int64))], y_shape=(2, 1))
    assert float32_nodes(model) == {"sum": fp.R_REDUCTION}


# ------------------------------------------------------------------------------------ DefMamba-T


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    res = export_onnx("t", img_size=(64, 64), dynamic="batch", output=tmp_path_factory.mktemp("policy") / "t.onnx")
    return onnx.load(str(res.path))


def _intended(model):
    """The kept set written out from the model's structure (node names only locate the blocks)."""
    nodes = model.graph.node
    producer = {o: n for n in nodes for o in n.output}
    intended = {}
    for n in nodes:
        if n.op_type == "LayerNormalization":
            intended[n.name] = fp.R_LAYER_NORM
        if "/conv_offset/" in n.name and n.op_type != "Constant":
            intended[n.name] = fp.R_OFFSET
        if n.op_type == "TokenSort":
            intended[n.name] = fp.R_TOKEN_SORT
            reshape = producer[n.input[0]]
            intended[reshape.name] = fp.R_OFFSET
            intended[producer[reshape.input[0]].name] = fp.R_OFFSET
        if n.op_type == "SelectiveScan":
            neg = producer[n.input[2]]
            intended[neg.name] = fp.R_SCAN_PARAMS
            intended[producer[neg.input[0]].name] = fp.R_SCAN_PARAMS
    intended["/classifier/ReduceMean"] = fp.R_REDUCTION
    intended["/classifier/head/Gemm"] = fp.R_HEAD
    return intended


def test_defmamba_t_names_are_unique_and_kept(tiny):
    names = [n.name for n in tiny.graph.node]
    assert all(names) and len(set(names)) == len(names)  # the exporter names every node ...
    assert [n.name for n in name_nodes(tiny).graph.node] == names  # ... so naming changes nothing


def test_defmamba_t_kept_set(tiny):
    kept = float32_nodes(tiny)
    intended = _intended(tiny)
    assert kept == intended  # the reasons too (a conv_offset LayerNorm reports the offset rule, the earlier one)
    assert sum(1 for n in tiny.graph.node if n.name in kept and n.op_type == "Conv") == 22


def test_defmamba_t_kept_set_equals_convert_fp16s(tiny):
    for policy in (DEFAULT_POLICY, Fp32Policy(delta_path=True, head=False), Fp32Policy(deform_gather=True)):
        _, report = convert_fp16(tiny, keep_fp32=policy)
        kept = float32_nodes(tiny, policy)
        assert report.kept_names == set(kept)
        assert {n: r for n, _, r in report.kept_fp32} == kept
    with_gather = float32_nodes(tiny, Fp32Policy(deform_gather=True))
    assert {n for n, r in with_gather.items() if r == fp.R_DEFORM} == {
        n.name for n in tiny.graph.node if n.op_type == "DeformGather"}
