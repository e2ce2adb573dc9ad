"""ONNX export: custom-op graph validity, dynamic shapes, sidecar, atomic writes, file checks."""
import json

import onnx
import pytest

import defmamba_deploy as dd
from defmamba_deploy.onnx import OP_SPECS, export_onnx, load_onnx, read_sidecar, register_schemas
from defmamba_deploy import libs


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "t.onnx"
    return export_onnx("t", img_size=(64, 96), dynamic="shape", output=out)


def test_custom_op_graph_is_valid(tiny_onnx):
    model = onnx.load(str(tiny_onnx.path))
    register_schemas()
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    sort_nodes = [n for n in model.graph.node if n.op_type == "TokenSort"]
    assert sort_nodes and all(types[o] == onnx.TensorProto.INT64 for n in sort_nodes for o in n.output)
    ops = {(n.domain, n.op_type) for n in model.graph.node if n.domain}
    assert ops == {("defmamba", "SelectiveScan"), ("defmamba", "DeformGather"), ("defmamba", "TokenSort")}
    assert {o.domain: o.version for o in model.opset_import}["defmamba"] == 1
    # attributes as declared in the contract
    for n in model.graph.node:
        if n.domain == "defmamba":
            spec = OP_SPECS[n.op_type]
            assert len(n.input) == len(spec["inputs"]) and len(n.output) == len(spec["outputs"])
            assert {a.name for a in n.attribute} <= set(spec["attributes"])
    # DefMamba's reversed raster branch is a backwards scan of group 1, not a pair of flips
    scans = [n for n in model.graph.node if n.op_type == "SelectiveScan"]
    for n in scans:
        assert [list(a.ints) for a in n.attribute if a.name == "reverse"] == [[0, 1, 0]]
    assert not [n for n in model.graph.node if n.op_type == "Slice" and "op/" in n.name and len(n.input) == 5]


def test_nothing_baked_in(tiny_onnx):
    """No Constant/initializer holds the export-time H*W or H/W-dependent sizes as shapes."""
    model = onnx.load(str(tiny_onnx.path))
    inp = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in inp] == ["batch", 3, "height", "width"]
    stage_lengths = {16 * 24, 8 * 12, 4 * 6, 2 * 3}
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT64 and init.dims and init.dims[0] <= 4:
            values = set(onnx.numpy_helper.to_array(init).ravel().tolist())
            assert not values & stage_lengths, f"{init.name} bakes a sequence length: {values}"


def test_sidecar(tiny_onnx):
    side = read_sidecar(tiny_onnx.path)
    assert side.to_dict() == json.loads(tiny_onnx.sidecar_path.read_text())
    assert side.variant == "tiny" and side.opset == 17 and side.dynamic == "shape"
    assert side.custom_ops == ["DeformGather", "SelectiveScan", "TokenSort"]
    assert side.weights == {"random_init_seed": 0} and side.toolkit_version == dd.__version__
    assert side.inputs[0]["shape"] == ["batch", 3, "height", "width"]
    assert side.dynamic_axes["input"] == {"0": "batch", "2": "height", "3": "width"}


def test_weights_hash_in_sidecar(tmp_path):
    import torch

    w = tmp_path / "t.pth"
    torch.save(dd.create_model("t").state_dict(), w)
    res = export_onnx("t", w, img_size=(64, 64), output=tmp_path / "t.onnx")
    from defmamba_deploy.files import sha256_file

    assert res.sidecar.weights["sha256"] == sha256_file(w)


@pytest.mark.parametrize("kwargs,match", [
    ({"dynamic": "everything"}, "--dynamic"),
    ({"opset": 11}, "--opset 11"),
    ({"img_size": (32, 64)}, ">= 33"),
    ({"batch": 0}, "--batch"),
    ({"output": "model.txt"}, "must end in .onnx"),
])
def test_bad_arguments_leave_nothing(tmp_path, kwargs, match):
    kwargs.setdefault("output", tmp_path / "m.onnx")
    if not str(kwargs["output"]).startswith(str(tmp_path)):
        kwargs["output"] = tmp_path / kwargs["output"]
    with pytest.raises(dd.UsageError, match=match):
        export_onnx("t", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "missing"])
def test_broken_onnx_files(tmp_path, tiny_onnx, damage):
    bad = tmp_path / "bad.onnx"
    data = tiny_onnx.path.read_bytes()
    if damage != "missing":
        bad.write_bytes({"truncate": data[: len(data) // 3], "garbage": b"\x08\x07" + bytes(range(256)) * 40, "empty": b""}[damage])
    with pytest.raises(dd.UsageError, match="does not exist|empty|not a readable ONNX|not a valid ONNX"):
        load_onnx(bad)


def test_custom_op_model_without_library(tiny_onnx, monkeypatch, tmp_path):
    from defmamba_deploy.runtime import create_session

    monkeypatch.setattr(libs, "PACKAGE_LIB_DIR", tmp_path)
    monkeypatch.setattr(libs, "_CHECKOUT_BUILD", tmp_path / "nobuild")
    monkeypatch.delenv("DEFMAMBA_ORT_LIB", raising=False)
    with pytest.raises(dd.MissingDependencyError, match="uses custom ops defmamba::.*--portable"):
        create_session(tiny_onnx.path)
