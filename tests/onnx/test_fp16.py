"""FP16 conversion of the ONNX graph (defmamba_deploy.onnx.fp16, through defmamba_deploy.onnx.precision).

One DefMamba-T export at 64x64 (random weights) per module; the ORT runs use the custom-op library.
Tolerances (measured on this model, see the constants below for the numbers and margins):
* FP16 logits: float16's unit roundoff is u = 2^-11 = 4.9e-4; measured relative L2 error 6.3e-4
  (~1.3u: the float32 LayerNorms renormalise, so the error does not compound over the 11 blocks)
  and max |error| 6.2e-4 for logits of max |x| 0.84. Bounds: relative L2 < 5e-3 (~8x margin) and
  max |error| < 1e-2 * max|logit|; the smallest top-1/top-2 gap of these inputs is 0.011, 18x the
  measured max error, so top-1 must not change.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import defmamba_deploy as dd
from shared_inputs import decomposed_layer_norm
from defmamba_deploy.onnx import register_schemas
from defmamba_deploy.onnx.precision import Fp32Policy, convert_fp16, float32_nodes
from defmamba_deploy.runtime import create_session

FP16_REL_L2 = 5e-3
FP16_MAX_ABS_FRACTION = 1e-2


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fp16")


def run_model(model, path, x):
    onnx.save(model, str(path))
    return create_session(path, threads=2).run(None, {"input": x})[0]


def elem_types(model):
    register_schemas()
    g = onnx.shape_inference.infer_shapes(model).graph
    out = {i.name: i.data_type for i in g.initializer}
    out.update({v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)})
    return out


def by_name(model):
    return {n.name: n for n in model.graph.node}


# ---------------------------------------------------------------------------------------------- FP16


def test_fp16_is_valid_with_float32_io(fp16, fp32):
    model, report = fp16
    register_schemas()
    onnx.checker.check_model(model, full_check=True)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    assert [o.name for o in model.graph.output] == [o.name for o in fp32[1].graph.output]
    assert report.converted_nodes > 500 and report.casts_inserted > 0 and report.initializers_converted > 100
    assert not any(i.data_type == TensorProto.FLOAT16 for i in fp32[1].graph.initializer)  # the input model is untouched


def test_fp16_keeps_exactly_the_intended_nodes_float32(fp16, fp32):
    src = fp32[1]
    model, report = fp16
    nodes = src.graph.node
    producer = {o: n for n in nodes for o in n.output}
    intended = {}
    for n in nodes:
        if n.op_type == "LayerNormalization":
            intended[n.name] = "LayerNorm"
        if "/conv_offset/" in n.name and n.op_type != "Constant":
            intended[n.name] = "offset network"
        if n.op_type == "TokenSort":
            intended[n.name] = "TokenSort"
            reshape = producer[n.input[0]]  # token-offset channel sliced from conv_offset's output
            intended[reshape.name] = "offset network"
            intended[producer[reshape.input[0]].name] = "offset network"
        if n.op_type == "SelectiveScan":
            neg = producer[n.input[2]]  # A = -exp(A_logs)
            intended[neg.name] = "SelectiveScan A"
            intended[producer[neg.input[0]].name] = "SelectiveScan A"
    intended["/classifier/ReduceMean"] = "reduction"
    intended["/classifier/head/Gemm"] = "head"
    kept = {name: reason for name, _, reason in report.kept_fp32}
    assert set(kept) == set(intended)
    assert report.kept_names == set(kept) == set(float32_nodes(src))  # the set TensorRT 10 pins
    assert sum(1 for n in nodes if n.op_type == "Conv" and "/conv_offset/" in n.name) == 22
    for name, what in intended.items():  # the reasons name the rule
        if what == "offset network":
            assert kept[name].startswith("offset network")

    types = elem_types(model)
    nodes16 = by_name(model)
    F, H = TensorProto.FLOAT, TensorProto.FLOAT16
    for n in model.graph.node:
        if n.op_type == "LayerNormalization" or "/conv_offset/" in n.name:
            assert all(types[t] == F for t in n.input if types.get(t) in (F, H)), n.name
        if n.op_type == "TokenSort":
            assert types[n.input[0]] == F
        if n.op_type == "SelectiveScan":
            assert [types[n.input[i]] for i in range(7)] == [H, H, F, H, H, F, F]
            assert types[n.output[0]] == H
        if n.op_type == "DeformGather":
            assert [types[t] for t in n.input] == [H, H, H]
    big = [n for n in nodes16.values() if n.op_type in ("MatMul", "Conv") and "/conv_offset/" not in n.name]
    assert len(big) == 99 + 38 - 22
    for n in big:  # in_proj, x_proj/dt_proj, out_proj, fc1, fc2, the depthwise conv2d, stem and downsample convs
        assert types[n.input[0]] == H and types[n.input[1]] == H and types[n.output[0]] == H, n.name
    assert types[nodes16["/classifier/head/Gemm"].input[1]] == F


def test_fp16_runs_in_ort_close_to_fp32(fp16, ref, x, work):
    out = run_model(fp16[0], work / "t_fp16.onnx", x)
    assert out.dtype == np.float32 and out.shape == ref.shape
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel < FP16_REL_L2, rel
    assert np.abs(out - ref).max() < FP16_MAX_ABS_FRACTION * np.abs(ref).max()
    np.testing.assert_array_equal(out.argmax(1), ref.argmax(1))


def test_fp16_policy_switches(fp32):
    model, report = convert_fp16(fp32[1], keep_fp32=Fp32Policy(delta_path=True, head=False))
    kept = {name: reason for name, _, reason in report.kept_fp32}
    for blk in ("/layers.0/blocks/blocks.0/op/", "/layers.3/blocks/blocks.1/op/"):
        assert kept[blk + "MatMul_2"].startswith("delta path") and kept[blk + "MatMul_3"].startswith("delta path")
        assert blk + "MatMul_4" not in kept  # B/C projections stay float16
    assert "/classifier/head/Gemm" not in kept
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT  # cast back before the output
    assert by_name(model)["logits/CastToFp32"].op_type == "Cast"
    with pytest.raises(dd.UsageError, match="not in the graph"):
        convert_fp16(fp32[1], keep_fp32=Fp32Policy(nodes=frozenset({"no_such_node"})))


def test_fp16_keeps_decomposed_layernorm_float32():
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    ln_inits, ln_nodes = decomposed_layer_norm()
    inits = [numpy_helper.from_array(a, n) for n, a in ln_inits + [
        ("gamma", rng.standard_normal(16).astype(np.float32)), ("W", rng.standard_normal((16, 8)).astype(np.float32))]]
    nodes = ln_nodes + [
        helper.make_node("Mul", ["n", "gamma"], ["g"], name="scale"),
        helper.make_node("MatMul", ["g", "W"], ["p"], name="proj"),
        helper.make_node("Relu", ["p"], ["Y"], name="relu"),  # so that proj is not the (float32) head
    ]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    half, report = convert_fp16(model)
    kept = {name for name, _, _ in report.kept_fp32}
    assert kept == {"mean", "sub", "pow", "var", "add_eps", "sqrt", "div"}
    assert report.converted_nodes == 3
    xin = rng.standard_normal((2, 16)).astype(np.float32) * 100
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": xin})[0]
    np.testing.assert_allclose(run(half), run(model), rtol=5e-3, atol=5e-3 * 16)


def test_fp16_bad_inputs_give_clear_errors(fp32):
    with pytest.raises(dd.UsageError, match="ModelProto"):
        convert_fp16(str(fp32[0]))
    with pytest.raises(dd.UsageError, match="Fp32Policy"):
        convert_fp16(fp32[1], keep_fp32={"head": False})
