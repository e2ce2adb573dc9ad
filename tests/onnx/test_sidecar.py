"""The ONNX sidecar: a sidecar of the wrong shape is one line naming the file and the field; read() gives
None only for a missing sidecar, and the readers that only ask "does this file match?" treat a broken one
as a mismatch."""
import json
import math

import pytest

import defmamba_deploy as dd
from defmamba_deploy.onnx.sidecar import OnnxSidecar, read_sidecar, sidecar_path

GOOD = {
    "format": "defmamba-deploy/onnx-sidecar/1", "variant": "tiny", "backbone": False, "portable": False, "opset": 17,
    "custom_domain": {"domain": "defmamba", "version": 1}, "custom_ops": ["SelectiveScan"],
    "inputs": [{"name": "input", "shape": ["batch", 3, 224, 224], "dtype": "float32"}],
    "outputs": [{"name": "logits", "shape": ["batch", 1000], "dtype": "float32"}],
    "dynamic": "batch", "dynamic_axes": {"input": {"0": "batch"}}, "export_input_size": [224, 224], "export_batch": 1,
    "min_input_size": 33, "input_check_in_graph": False,
    "preprocessing": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW", "dtype": "float32"},
    "weights": {"random_init_seed": 0}, "toolkit_version": "0.1", "torch": "2.5", "onnx": "1.17", "created": "",
}


def _with(path: str, value):
    """GOOD with the dotted ``path`` set to ``value``."""
    data = json.loads(json.dumps(GOOD))
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def test_the_good_sidecar_and_the_new_preprocessing_keys_read():
    assert OnnxSidecar.from_dict(GOOD).img_size == (224, 224)
    pre = {**GOOD["preprocessing"], "interpolation": "bicubic", "crop_pct": 0.875, "resize": 256, "color": "RGB",
           "center_crop": [224, 224], "resize_rule": "shorter side, then centre crop"}
    assert OnnxSidecar.from_dict({**GOOD, "preprocessing": pre}).preprocessing["interpolation"] == "bicubic"
    assert OnnxSidecar.from_dict({**GOOD, "preprocessing": {**pre, "crop_pct": 1, "resize": [256, 320]}})
    old = {k: v for k, v in GOOD.items() if k in ("variant", "inputs", "outputs")}  # the minimum: old sidecars
    assert OnnxSidecar.from_dict({**old, "future_key": [1]}).variant == "tiny"


@pytest.mark.parametrize("path,value,field", [
    ("variant", "huge", "variant is 'huge', not one of tiny, small, base"),
    ("variant", 3, "variant is 3"),
    ("backbone", "yes", "backbone is 'yes', not true or false"),
    ("portable", 1, "portable is 1, not true or false"),
    ("opset", "17", "opset is '17', not a positive integer"),
    ("export_batch", 0, "export_batch is 0"),
    ("export_input_size", [224], r"export_input_size is \[224\], not \[height, width\]"),
    ("export_input_size", [224, -1], "export_input_size"),
    ("export_input_size", [224.0, 224], "export_input_size"),
    ("export_input_size", [True, 224], "export_input_size"),
    ("dynamic", "always", "dynamic is 'always', not one of batch, shape, none"),
    ("custom_ops", "SelectiveScan", "custom_ops is 'SelectiveScan', not a list of op names"),
    ("weights", [], r"weights is \[\]"),
    ("weights", {"sha256": 5}, "weights is"),
    ("created", 2024, "created is 2024, not a string"),
    ("inputs", "input", "inputs is 'input', not a list of objects"),
    ("inputs", ["input"], r"inputs is \['input'\], not a list of objects"),
    ("inputs", [], "inputs is empty"),
    ("inputs.0.shape", "batchx3x224x224", "inputs\\[0\\].shape is 'batchx3x224x224', not a list of sizes"),
    ("inputs.0.shape", [1.5, 3, 224, 224], r"inputs\[0\].shape is \[1.5, 3, 224, 224\]"),
    ("inputs.0.shape", [None, 3, 224, 224], r"inputs\[0\].shape"),
    ("inputs.0.name", 7, r"inputs\[0\].name is 7, not a string"),
    ("outputs", {"logits": 1}, "outputs is"),
    ("outputs.0.shape", [[1], 1000], r"outputs\[0\].shape"),
    ("preprocessing", [0.5], r"preprocessing is \[0.5\], not an object"),
    ("preprocessing.std", [0.229, 0, 0.225], r"preprocessing.std is \[0.229, 0, 0.225\], not three finite numbers > 0"),
    ("preprocessing.std", [0.229, -0.2, 0.225], "preprocessing.std"),
    ("preprocessing.std", ["a", "b", "c"], "preprocessing.std"),
    ("preprocessing.std", [0.2, 0.2], "preprocessing.std"),
    ("preprocessing.std", 0.2, "preprocessing.std"),
    ("preprocessing.mean", [0.5, 0.5, 0.5, 0.5], "preprocessing.mean .*not three finite numbers"),
    ("preprocessing.mean", [0.5, math.nan, 0.5], "preprocessing.mean"),
    ("preprocessing.mean", [0.5, math.inf, 0.5], "preprocessing.mean"),
    ("preprocessing.layout", "NHWC", "preprocessing.layout is 'NHWC', not 'NCHW'"),
    ("preprocessing.interpolation", "sinc", "preprocessing.interpolation is 'sinc', not one of nearest, bilinear, bicubic"),
    ("preprocessing.interpolation", 2, "preprocessing.interpolation"),
    ("preprocessing.crop_pct", 0, r"preprocessing.crop_pct is 0, not a number in \(0, 1\]"),
    ("preprocessing.crop_pct", 1.2, "preprocessing.crop_pct"),
    ("preprocessing.crop_pct", "0.9", "preprocessing.crop_pct"),
    ("preprocessing.resize", -256, "preprocessing.resize is -256, not a positive integer or"),
    ("preprocessing.resize", [256, 0], "preprocessing.resize"),
    ("preprocessing.center_crop", 224, r"preprocessing.center_crop is 224, not \[height, width\]"),
])
def test_a_field_of_the_wrong_kind_is_one_line(path, value, field):
    with pytest.raises(dd.UsageError, match=rf"^m\.onnx\.json: {field}.*: delete it or re-export the model$"):
        OnnxSidecar.from_dict(_with(path, value), "m.onnx.json")


@pytest.mark.parametrize("data,match", [
    ([1, 2], "holds a JSON list, not an object"),
    ("tiny", "holds a JSON str, not an object"),
    ({"variant": "tiny", "outputs": []}, "lacks inputs"),
    (_with("inputs.0.shape", [3, 224, 224]), r"gives an input shape \[3, 224, 224\], not \(batch, 3, height, width\)"),
    (_with("inputs.0.shape", [1, 4, 224, 224]), "gives an input shape"),
])
def test_wrong_shapes_of_the_whole(data, match):
    with pytest.raises(dd.UsageError, match=match):
        OnnxSidecar.from_dict(data, "m.onnx.json")


@pytest.mark.parametrize("content,match", [
    ("{broken", r"is not valid JSON .*; delete it or re-export the model$"),
    ("[1, 2]", "holds a JSON list, not an object; delete it or re-export the model$"),
    ('"a string"', "holds a JSON str, not an object"),
    ("", "is not valid JSON"),
    (json.dumps(_with("preprocessing.std", [0.2, 0.0, 0.2])), "preprocessing.std is"),
    (json.dumps(_with("backbone", "yes")), "backbone is 'yes'"),
])
def test_read_refuses_a_broken_sidecar_and_names_it(tmp_path, content, match):
    model = tmp_path / "m.onnx"
    sidecar_path(model).write_text(content)
    with pytest.raises(dd.UsageError, match=rf"ONNX sidecar \S+m\.onnx\.json:? .*{match}"):
        OnnxSidecar.read(model)
    with pytest.raises(dd.UsageError, match="delete it or re-export the model"):
        read_sidecar(model)


def test_read_gives_none_only_for_a_missing_sidecar(tmp_path):
    model = tmp_path / "m.onnx"
    assert OnnxSidecar.read(model) is None
    sidecar_path(model).mkdir()
    with pytest.raises(dd.UsageError, match=r"ONNX sidecar \S+m\.onnx\.json is a folder, not a file; delete it"):
        OnnxSidecar.read(model)
    sidecar_path(model).rmdir()
    sidecar_path(model).write_text(json.dumps(GOOD))
    assert OnnxSidecar.read(model).variant == "tiny"


def test_a_broken_sidecar_beside_the_exported_file_is_a_mismatch(tmp_path, monkeypatch):
    """ort/parity may use ./defmamba_t.onnx when it matches: a broken sidecar means "does not match" (a fresh
    export is used), not a failure of the whole run."""
    pytest.importorskip("onnxruntime")
    import defmamba_deploy.onnx as onnx_pkg
    from defmamba_deploy.runtime import onnxrt
    from defmamba_deploy.runtime.registry import BackendRequest

    monkeypatch.chdir(tmp_path)
    (tmp_path / "defmamba_t.onnx").write_bytes(b"model")
    (tmp_path / "defmamba_t.onnx.json").write_text("{broken")
    exported, said = [], []
    monkeypatch.setattr(onnx_pkg, "export_onnx", lambda *a, **k: exported.append(k["output"]))
    request = BackendRequest(model="tiny", use_exported=True, workdir=tmp_path / "work", progress=said.append)
    path = onnxrt._onnx_for(request, portable=False)
    assert exported == [path] and path.parent == tmp_path / "work"
    assert any(m.startswith("not using defmamba_t.onnx: ONNX sidecar defmamba_t.onnx.json is not valid JSON")
               for m in said), said


# --- ONNX files of the wrong kind (load_onnx) ---------------------------------------------------------

def _tiny_onnx_bytes() -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("kind,match", [
    ("folder", r"^ONNX file \S+m\.onnx is a folder, not a file \(export one with: defmamba-deploy export\)$"),
    ("empty", r"^ONNX file \S+m\.onnx is empty: re-export it"),
    ("random", r"^\S+m\.onnx is not a valid ONNX model \(not ONNX protobuf: truncated, corrupt or another kind of file"),
    ("truncated", r"^\S+m\.onnx is not a valid ONNX model \(not ONNX protobuf"),
    ("json", r"^\S+m\.onnx is not a valid ONNX model \(it holds JSON text\): give an \.onnx file"),
    ("sidecar", r"^\S+m\.onnx is not a valid ONNX model \(it is the JSON sidecar of an export\): give the \.onnx file "
                r"beside it"),
    ("engine", r"^\S+m\.onnx is not a valid ONNX model \(it is a TensorRT engine, says m\.onnx\.json\)"),
    ("library", r"^\S+m\.onnx is not a valid ONNX model \(it is a shared library\)"),
])
def test_load_onnx_names_what_the_file_is(tmp_path, kind, match):
    from defmamba_deploy.onnx import load_onnx

    f = tmp_path / "m.onnx"
    good = _tiny_onnx_bytes()
    assert load_onnx_ok(tmp_path, good)
    if kind == "folder":
        f.mkdir()
    else:
        f.write_bytes({"empty": b"", "random": b"\x08\x07" + bytes(range(256)) * 8, "truncated": good[: len(good) // 2],
                       "json": b'{"not": "onnx"}', "sidecar": json.dumps(GOOD).encode(),
                       "engine": b"ftrt\x00\x01garbage", "library": b"\x7fELF\x02\x01\x01" + b"\0" * 60}[kind])
    if kind == "engine":  # build-engine --output m.onnx: its sidecar says what it is
        sidecar_path(f).write_text(json.dumps({"format": "defmamba-deploy/engine-sidecar/1"}))
    with pytest.raises(dd.UsageError, match=match):
        load_onnx(f)


def load_onnx_ok(tmp_path, data: bytes) -> bool:
    from defmamba_deploy.onnx import load_onnx

    ok = tmp_path / "ok.onnx"
    ok.write_bytes(data)
    return len(load_onnx(ok).graph.node) == 1
