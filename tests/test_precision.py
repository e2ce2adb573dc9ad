"""FP16 conversion and INT8 Q/DQ quantisation of the ONNX graph (defmamba_deploy.onnx.precision).

One DefMamba-T export at 64x64 (random weights) per module; the ORT runs use the custom-op library.
Tolerances (measured on this model, see the constants below for the numbers and margins):
* FP16 logits: float16's unit roundoff is u = 2^-11 = 4.9e-4; measured relative L2 error 6.3e-4
  (~1.3u: the float32 LayerNorms renormalise, so the error does not compound over the 11 blocks)
  and max |error| 6.2e-4 for logits of max |x| 0.84. Bounds: relative L2 < 5e-3 (~8x margin) and
  max |error| < 1e-2 * max|logit|; the smallest top-1/top-2 gap of these inputs is 0.011, 18x the
  measured max error, so top-1 must not change.
* INT8 logits: measured cosine >= 0.9997 (max calibration, 4 batches; 1 - cos = 3e-4). Bound
  cos > 0.998 (1 - cos 7x the measured value). A broken calibration (ranges clipped 10x) gives
  cos 0.54, so the bound still catches real mistakes.
"""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import defmamba_deploy as dd
from defmamba_deploy.onnx import export_onnx, register_schemas
from defmamba_deploy.onnx import precision
from defmamba_deploy.onnx.precision import Fp32Policy, convert_fp16, quantize_int8_qdq
from defmamba_deploy.runtime import create_session, find_library

FP16_REL_L2 = 5e-3
FP16_MAX_ABS_FRACTION = 1e-2
INT8_MIN_COSINE = 0.998


@pytest.fixture(scope="module")
def lib():
    path = find_library("ort", required=False)
    if path is None:
        pytest.skip("libdefmamba_ort_ops.so is not built (bash scripts/build_plugins.sh)")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("precision")


@pytest.fixture(scope="module")
def fp32(work):
    res = export_onnx("t", img_size=(64, 64), dynamic="batch", output=work / "t.onnx")
    return res.path, onnx.load(str(res.path))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def ref(lib, fp32, x):
    return create_session(fp32[0], threads=2).run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def fp16(fp32):
    return convert_fp16(fp32[1])


@pytest.fixture(scope="module")
def calib():
    rng = np.random.default_rng(1)
    return [rng.standard_normal((4, 3, 64, 64)).astype(np.float32) for _ in range(4)]


@pytest.fixture(scope="module")
def int8(lib, fp32, calib, work):
    cache = work / "calib.json"
    model, report = quantize_int8_qdq(fp32[1], calib, cache=cache)
    return model, report, cache


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
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("axes", np.array([-1], np.int64)), ("two", np.array(2.0, np.float32)), ("eps", np.array(1e-5, np.float32)),
        ("gamma", rng.standard_normal(16).astype(np.float32)), ("W", rng.standard_normal((16, 8)).astype(np.float32))]]
    nodes = [
        helper.make_node("ReduceMean", ["X", "axes"], ["mean"], name="mean"),
        helper.make_node("Sub", ["X", "mean"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq", "axes"], ["var"], name="var"),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["std"], name="sqrt"),
        helper.make_node("Div", ["d", "std"], ["n"], name="div"),
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


# ---------------------------------------------------------------------------------------------- INT8


def dq_inputs(model):
    """node name -> [input index produced by a DequantizeLinear, ...], and the DQ nodes by output."""
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name: [i for i, t in enumerate(n.input) if t in dq] for n in model.graph.node}, dq


def test_int8_qdq_placement(int8, fp32):
    model, report, _ = int8
    register_schemas()
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain == "") >= 13
    fed, _ = dq_inputs(model)
    quantised = {name for name, _ in report.quantized_nodes}
    for n in fp32[1].graph.node:
        if n.op_type in ("Conv", "MatMul", "Gemm"):
            if "/conv_offset/" in n.name or n.name == "/classifier/head/Gemm":
                assert fed[n.name] == [] and n.name not in quantised, n.name
            else:
                assert fed[n.name] == [0, 1] and n.name in quantised, n.name
        elif n.domain == "defmamba" or n.op_type == "LayerNormalization":
            assert fed[n.name] == [], n.name
    assert len(report.quantized_nodes) == 99 + 38 + 23 - 44 - 1
    assert {r for _, _, r in report.skipped_nodes} == {precision.R_OFFSET, precision.R_HEAD}
    q_ops = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_ops) == report.qdq_pairs == len(report.activation_amax)


def test_int8_symmetric_per_channel_axes(int8):
    model, report, _ = int8
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers = {t: (n, i) for n in model.graph.node for i, t in enumerate(n.input)}
    weights = 0
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale, zp = inits[n.input[1]], inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name  # symmetric
        assert (scale > 0).all()
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:  # an int8 weight
            weights += 1
            w = inits[n.input[0]]
            assert w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 127
            axis = {a.name: helper.get_attribute_value(a) for a in n.attribute}["axis"]
            user, idx = consumers[n.output[0]]
            if user.op_type == "Conv":
                assert axis == 0
            else:  # MatMul: right-hand (K, N) weight -> last axis; left-hand (G, M, K) -> axis -2
                assert user.op_type == "MatMul" and axis == (w.ndim - 1 if idx == 1 else w.ndim - 2), user.name
            assert scale.shape == (w.shape[axis],)
            assert report.weight_axes[n.input[0][: -len("_quantized")]] == axis
    assert weights == report.weight_dequantizers == len(report.quantized_nodes)


def test_int8_gemm_and_matmul_weight_axes():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("Wt", rng.standard_normal((6, 4)).astype(np.float32)),  # Gemm transB=1: (N, K)
        ("W", rng.standard_normal((6, 5)).astype(np.float32)),  # Gemm transB=0: (K, N)
        ("M", rng.standard_normal((5, 3)).astype(np.float32)),  # MatMul right-hand (K, N)
    ]]
    nodes = [helper.make_node("Gemm", ["X", "Wt"], ["a"], name="gemm_t", transB=1),
             helper.make_node("Gemm", ["a", "W"], ["b"], name="gemm"),
             helper.make_node("MatMul", ["b", "M"], ["Y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    batches = [rng.standard_normal((3, 4)).astype(np.float32)]
    _, report = quantize_int8_qdq(model, batches, keep_float=Fp32Policy(head=False))
    assert report.weight_axes == {"Wt": 0, "W": 1, "M": 1}
    _, report = quantize_int8_qdq(model, batches, per_channel=False, keep_float=Fp32Policy(head=False))
    assert report.weight_axes == {"Wt": None, "W": None, "M": None}
    _, report = quantize_int8_qdq(model, batches)  # default: the head (the MatMul making Y) stays float
    assert [n for n, _, _ in report.skipped_nodes] == ["mm"]


def test_int8_runs_in_ort_close_to_fp32(int8, ref, x, work):
    out = run_model(int8[0], work / "t_int8.onnx", x)
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > INT8_MIN_COSINE, cos


def test_int8_calibration_cache_written_then_reused(int8, fp32, calib, monkeypatch):
    model, report, cache = int8
    assert report.cache_status == "written" and report.calibration_batches == len(calib)
    data = json.loads(cache.read_text())
    assert data["calibration"] == "max" and set(data["amax"]) == set(report.activation_amax)

    def no_calibration(*a, **k):
        raise AssertionError("calibration ran although the cache matches")

    monkeypatch.setattr(precision, "_calibrate", no_calibration)
    again, rep2 = quantize_int8_qdq(fp32[1], [], cache=cache)  # no data needed with a matching cache
    assert rep2.cache_status == "hit" and rep2.calibration_batches == 0
    assert again.SerializeToString() == model.SerializeToString()
    with pytest.raises(AssertionError, match="calibration ran"), pytest.warns(UserWarning, match="another calibration"):
        quantize_int8_qdq(fp32[1], calib, cache=cache, calibration="percentile")  # another method: no match


def test_int8_stale_cache_is_rewritten(lib, fp32, int8, calib, work):
    cache = work / "stale.json"
    cache.write_text(json.dumps({"format": precision.CACHE_FORMAT, "graph_sha256": "0", "weights_sha256": "0",
                                 "calibration": "max", "amax": {}}))
    with pytest.warns(UserWarning, match="another model"):
        _, report = quantize_int8_qdq(fp32[1], calib[:1], cache=cache, calibration="percentile", percentile=99.9)
    assert report.cache_status == "rewritten" and report.calibration_batches == 1
    assert json.loads(cache.read_text())["percentile"] == 99.9
    full_max = int8[1].activation_amax  # max over 4 batches >= the 99.9th percentile of one batch
    assert all(0 < v <= full_max[t] * (1 + 1e-6) for t, v in report.activation_amax.items())


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(lib, fp32, fp16, int8, work):
    model = fp32[1]
    with pytest.raises(dd.UsageError, match="empty"):
        quantize_int8_qdq(model, [])
    with pytest.raises(dd.UsageError, match=r"shape \[2, 3, 32, 32\].*expects \[\?, 3, 64, 64\]"):
        quantize_int8_qdq(model, [np.zeros((2, 3, 32, 32), np.float32)])
    with pytest.raises(ValueError, match="shape"):  # UsageError is a ValueError
        quantize_int8_qdq(model, [np.zeros((3, 64, 64), np.float32)])
    with pytest.raises(dd.UsageError, match="dtype"):
        quantize_int8_qdq(model, [np.zeros((1, 3, 64, 64), np.int64)])
    with pytest.raises(dd.UsageError, match="'max' or 'percentile'"):
        quantize_int8_qdq(model, [], calibration="entropy")
    with pytest.raises(dd.UsageError, match="percentile"):
        quantize_int8_qdq(model, [], calibration="percentile", percentile=0)
    with pytest.raises(dd.UsageError, match="ModelProto"):
        convert_fp16(str(fp32[0]))
    with pytest.raises(dd.UsageError, match="float16"):
        quantize_int8_qdq(fp16[0], [])
    with pytest.raises(dd.UsageError, match="Q/DQ"):
        convert_fp16(int8[0])
    old = onnx.ModelProto()
    old.CopyFrom(model)
    next(o for o in old.opset_import if o.domain == "").version = 12
    with pytest.raises(dd.UsageError, match="opset >= 13"):
        quantize_int8_qdq(old, [])
