"""One float32 policy on both TensorRT paths, on machines without TensorRT.

TensorRT 10 (weakly typed): ``float32_nodes`` of the parsed file, mapped onto the network layers the
ONNX parser creates (a fake network named the parser's way, :mod:`fake_tensorrt`), pinned to
float32. TensorRT 11 (strongly typed): ``convert_fp16`` keeps nodes float32 in the ONNX. The kept
ONNX node set must be the same on both, for DefMamba T, S and B.
"""
import pytest

import fake_tensorrt as ft
from defmamba_deploy.onnx import export_onnx, load_onnx
from defmamba_deploy.onnx.guard import has_input_guard, strip_input_guard
from defmamba_deploy.onnx.precision import DEFAULT_POLICY, Fp32Policy, convert_fp16, float32_nodes, name_nodes
from defmamba_deploy.runtime.tensorrt.float32 import (R_BETWEEN, node_of_layer, node_of_name, pin_float32_layers,
                                                      trace_layers)

TRT = ft.module()


def test_layer_names_trace_back_to_nodes():
    nodes = {"/blocks.0/fc/Gemm", "/blocks.0/Add", "/blocks.0/Add_1"}
    assert node_of_name("/blocks.0/fc/Gemm", nodes) == "/blocks.0/fc/Gemm"
    assert node_of_name("/blocks.0/fc/Gemm_17", nodes) == "/blocks.0/fc/Gemm"  # an extra layer of that node
    assert node_of_name("/blocks.0/Add_1_4", nodes) == "/blocks.0/Add_1"
    assert node_of_name("/blocks.0/Add_1", nodes) == "/blocks.0/Add_1"  # a node's own name wins
    for helper in ("ONNXTRT_squeezeTensor", "ONNXTRT_squeezeTensor_3", "onnx::Conv_5", "(Unnamed Layer* 3) [Shuffle]"):
        assert node_of_name(helper, nodes) is None


def test_metadata_beats_a_colliding_name():
    """The parser's counter can give node A's second layer the name of node A_1 (PyTorch's own
    suffix); the metadata still says A."""
    nodes = {"/x/Add", "/x/Add_1"}
    net = ft.Network()
    a0 = net.add("/x/Add", [ft.float32], "[ONNX Layer: /x/Add]")
    net._counter = 1
    a1 = net.add("/x/Add", [ft.float32], "[ONNX Layer: /x/Add | Local Function: f]")
    b = net.add("/x/Add_1", [ft.float32], "[ONNX Layer: /x/Add_1]")
    assert (a1.name, b.name) == ("/x/Add_1", "/x/Add_1_2")
    assert trace_layers([a0, a1, b], nodes) == ["/x/Add", "/x/Add", "/x/Add_1"]
    a1.metadata = ""
    assert node_of_layer(a1, nodes) == "/x/Add_1"  # without metadata only the name is left


def test_pinning_sets_precision_and_float_outputs_only():
    net = ft.Network()
    keep = {"/n/LayerNormalization": "LayerNorm", "/n/Shape": "offset network", "/n/Conv": "offset network"}
    names = set(keep) | {"/n/Mul"}
    ln = net.add("/n/LayerNormalization", [ft.float32], "[ONNX Layer: /n/LayerNormalization]")
    ln2 = net.add("/n/LayerNormalization", [ft.float32], "[ONNX Layer: /n/LayerNormalization]")
    helper = net.add("ONNXTRT_reshapeTensor", [ft.float32])  # between two kept nodes
    shape = net.add("/n/Shape", [ft.int64], "[ONNX Layer: /n/Shape]")
    conv = net.add("/n/Conv", [ft.float32, ft.int64], "[ONNX Layer: /n/Conv]")
    loose = net.add("ONNXTRT_castHelper", [ft.float32])  # between a kept and a converted node
    mul = net.add("/n/Mul", [ft.float32], "[ONNX Layer: /n/Mul]")
    rep = pin_float32_layers(TRT, net, keep, names)
    assert [p[0] for p in rep.pinned] == [ln.name, ln2.name, helper.name, conv.name]
    assert rep.pinned[2] == (helper.name, "", R_BETWEEN)
    assert ln2.name == "/n/LayerNormalization_0" and ln2.precision_is_set and ln2.output_types_set == {0: ft.float32}
    assert conv.output_types_set == {0: ft.float32}  # the int64 output keeps its type
    assert not shape.precision_is_set and rep.not_float == [shape.name]
    assert not loose.precision_is_set and not mul.precision_is_set
    assert rep.nodes == set(keep) and not rep.without_layer


@pytest.fixture(scope="module", params=["t", "s", "b"])
def exported(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"fp32_{request.param}") / f"{request.param}.onnx"
    export_onnx(request.param, img_size=(64, 64), batch=1, dynamic="batch", output=path)
    model = load_onnx(path)
    return strip_input_guard(model) if has_input_guard(model) else model


@pytest.mark.slow
@pytest.mark.parametrize("metadata", [True, False], ids=["metadata", "names-only"])
def test_same_float32_nodes_on_tensorrt_10_and_11(exported, metadata):
    """TensorRT 11's ONNX rewrite keeps exactly the nodes whose layers TensorRT 10 pins."""
    named = name_nodes(exported)  # the file build_engine parses on the TensorRT 10 path
    keep = float32_nodes(named, DEFAULT_POLICY)
    _, fp16 = convert_fp16(exported, keep_fp32=DEFAULT_POLICY)  # the TensorRT 11 path
    assert fp16.kept_names == set(keep)
    assert {"LayerNormalization", "TokenSort"} <= {n.op_type for n in named.graph.node if n.name in keep}

    net = ft.parse_like_tensorrt(named, metadata=metadata)
    nodes = {n.name for n in named.graph.node}
    rep = pin_float32_layers(TRT, net, keep, nodes)
    no_layer = {n.name for n in named.graph.node if n.op_type == "Constant"}
    assert rep.nodes == set(keep) - no_layer and rep.without_layer == set(keep) & no_layer

    owners = trace_layers(net.layers, nodes)
    for layer, owner in zip(net.layers, owners):
        floats = any(layer.get_output(j).dtype in (ft.float32, ft.float16) for j in range(layer.num_outputs))
        if owner is not None:  # every layer of a kept node with a float output is pinned, no other node's layer is
            assert layer.precision_is_set == (owner in keep and floats), (layer.name, owner)
    pinned_by_node = {o for o, _, r in ((p[1], p[0], p[2]) for p in rep.pinned) if o}
    assert pinned_by_node == {n for n in keep if n in set(owners)} - set(rep.not_float)


def test_policy_options_reach_the_layer_path(tmp_path):
    """A stricter policy (DeformGather too) pins its layers on the TensorRT 10 path as the rewrite keeps it."""
    from defmamba_deploy.onnx.single_op import single_op_model
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
              "offset": rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
              "rpe_table": rng.standard_normal((4, 7, 7)).astype(np.float32)}
    named = name_nodes(single_op_model("DeformGather", arrays, dynamic=True))
    policy = Fp32Policy(deform_gather=True)
    keep = float32_nodes(named, policy)
    assert [n.op_type for n in named.graph.node if n.name in keep] == ["DeformGather"]
    net = ft.parse_like_tensorrt(named)
    rep = pin_float32_layers(TRT, net, keep, {n.name for n in named.graph.node})
    assert rep.nodes == set(keep) and len(rep.pinned) == 1
    assert float32_nodes(named, DEFAULT_POLICY) == {}
