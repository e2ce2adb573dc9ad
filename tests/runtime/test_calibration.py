"""INT8: calibration in ONNX Runtime with the custom ops, Q/DQ placement (quantize_static) and the
range cache (defmamba_deploy.runtime.calibration, defmamba_deploy.onnx.qdq).

One DefMamba-T export at 64x64 (random weights) per module; the ORT runs use the custom-op library.
Tolerance: INT8 logits measured cosine >= 0.9997 (max calibration, 4 batches; 1 - cos = 3e-4).
Bound cos > 0.998 (1 - cos 7x the measured value). A broken calibration (ranges clipped 10x) gives
cos 0.54, so the bound still catches real mistakes.
"""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import defmamba_deploy as dd
from defmamba_deploy.onnx import register_schemas
from defmamba_deploy.onnx import precision, qdq
from defmamba_deploy.onnx.precision import Fp32Policy, convert_fp16
from defmamba_deploy.runtime import calibration, create_session
from defmamba_deploy.runtime.calibration import quantize_int8, quantize_int8_qdq

INT8_MIN_COSINE = 0.998


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("int8")


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

    monkeypatch.setattr(calibration, "calibrate_ranges", no_calibration)
    again, rep2 = quantize_int8_qdq(fp32[1], [], cache=cache)  # no data needed with a matching cache
    assert rep2.cache_status == "hit" and rep2.calibration_batches == 0
    assert again.SerializeToString() == model.SerializeToString()
    with pytest.raises(AssertionError, match="calibration ran"), pytest.warns(UserWarning, match="another calibration"):
        quantize_int8_qdq(fp32[1], calib, cache=cache, calibration="percentile")  # another method: no match


def test_int8_stale_cache_is_rewritten(lib, fp32, int8, calib, work):
    cache = work / "stale.json"
    cache.write_text(json.dumps({"format": qdq.CACHE_FORMAT, "graph_sha256": "0", "weights_sha256": "0",
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


# ---------------------------------------------------------------------------------------------- the custom-op hook


def _plain_calibrator_session(model_path, augmented):
    from onnxruntime.quantization import MinMaxCalibrater

    cal = MinMaxCalibrater(model_path, ["Conv", "MatMul", "Gemm"], augmented, symmetric=True)
    cal.augment_graph()
    cal.create_inference_session()


def test_calibration_registers_the_custom_op_library(lib, fp32, calib, work):
    """ORT's own calibrator cannot load a defmamba model; ours registers the library and calibrates it."""
    plan = qdq.plan_int8(fp32[1])
    path = work / "prepared.onnx"
    onnx.save(plan.model, str(path))
    with pytest.raises(Exception, match="(?i)defmamba|custom|TokenSort|SelectiveScan|DeformGather"):
        _plain_calibrator_session(path, str(work / "augmented_plain.onnx"))
    amax, n = calibration.calibrate_ranges(plan, calib[:2], library=lib)
    assert n == 2 and set(amax) == set(plan.activations) and all(v > 0 for v in amax.values())
    amax4, _ = calibration.calibrate_ranges(plan, calib)  # the library found by default; more data, wider max
    assert all(amax4[t] >= v for t, v in amax.items())
    with pytest.raises(dd.MissingDependencyError):
        calibration.calibrate_ranges(plan, calib[:1], library=work / "no_such_lib.so")


def test_calibration_reader_checks_each_batch_and_counts():
    reader = calibration.BatchReader([np.zeros((2, 3, 8, 8)), np.zeros((1, 3, 8, 8), np.float64)], "input", [None, 3, 8, 8])
    first = reader.get_next()
    assert list(first) == ["input"] and first["input"].dtype == np.float32
    assert reader.get_next()["input"].dtype == np.float32 and reader.get_next() is None and reader.count == 2
    with pytest.raises(dd.UsageError, match="empty"):
        calibration.BatchReader(iter([]), "input", [None, 3, 8, 8])
    bad = calibration.BatchReader([np.zeros((2, 4, 8, 8), np.float32)], "input", [None, 3, 8, 8])
    with pytest.raises(dd.UsageError, match=r"shape \[2, 4, 8, 8\]"):
        bad.get_next()


# ---------------------------------------------------------------------------------------------- cache and the graph step


def test_cache_file_is_ours_and_keyed_by_model_and_method(int8, fp32, work):
    model, report, cache = int8
    data = json.loads(cache.read_text())
    assert data["format"] == qdq.CACHE_FORMAT and data["batches"] == 4 and data["percentile"] is None
    plan = qdq.plan_int8(fp32[1])
    assert (data["graph_sha256"], data["weights_sha256"]) == qdq.graph_hashes(plan.model)
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(f".{cache.name}.")]  # no temporaries left
    # another model (one weight changed) does not match
    other = onnx.ModelProto()
    other.CopyFrom(fp32[1])
    w = next(i for i in other.graph.initializer if numpy_helper.to_array(i).size > 100)
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 2, w.name))
    hashes = qdq.graph_hashes(qdq.plan_int8(other).model)
    assert hashes[0] == data["graph_sha256"] and hashes[1] != data["weights_sha256"]
    assert qdq.read_cache(cache, hashes, "max", None, plan.activations) == (None, "made for another model")
    assert qdq.read_cache(cache, qdq.graph_hashes(plan.model), "max", None, plan.activations + ["x"])[1] == "lacks some tensors"
    (work / "garbage.json").write_text("{not json")
    assert qdq.read_cache(work / "garbage.json", hashes, "max", None, [])[1] == "unreadable"


def test_onnx_layer_quantises_from_the_cache_without_a_session(int8, fp32, monkeypatch):
    """onnx.precision.quantize_int8_qdq runs no ONNX Runtime session: a matching cache or ranges."""
    model, report, cache = int8
    import onnxruntime

    def no_session(*a, **k):
        raise AssertionError("an InferenceSession was created")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    again, rep = precision.quantize_int8_qdq(fp32[1], cache=cache)
    assert rep.cache_status == "hit" and again.SerializeToString() == model.SerializeToString()
    same, _ = precision.quantize_int8_qdq(fp32[1], ranges=report.activation_amax)
    assert same.SerializeToString() == model.SerializeToString()
    with pytest.raises(dd.UsageError, match="runtime.calibration.quantize_int8"):
        precision.quantize_int8_qdq(fp32[1], [np.zeros((1, 3, 64, 64), np.float32)])
    with pytest.raises(dd.UsageError, match="lacks"):
        precision.quantize_int8_qdq(fp32[1], ranges={})


def test_quantize_int8_entry_point_matches_the_old_keywords(int8, fp32):
    model, report, cache = int8
    again, rep = quantize_int8(fp32[1], None, cache_path=cache, policy=Fp32Policy())
    assert rep.cache_status == "hit" and again.SerializeToString() == model.SerializeToString()
    assert {n for n, _, _ in rep.skipped_nodes} == {
        n for n, r in precision.float32_nodes(fp32[1]).items() if n in {m.name for m in fp32[1].graph.node
                                                                        if m.op_type in ("Conv", "MatMul", "Gemm")}}
