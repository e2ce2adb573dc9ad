"""Triton model repository: config text, schema checks and the all-or-nothing writer."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("google.protobuf")
pytest.importorskip("tritonclient")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from defmamba_deploy.errors import UsageError  # noqa: E402
from defmamba_deploy.serve import triton  # noqa: E402


def _model(path, batch="batch", custom=False):
    w = numpy_helper.from_array(np.zeros((3, 10), np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["logits"])]
    opsets = [helper.make_opsetid("", 17)]
    if custom:
        nodes.insert(0, helper.make_node("SelectiveScan", ["input"], ["s"], domain="defmamba"))
        nodes[1] = helper.make_node("GlobalAveragePool", ["s"], ["p"])
        opsets.append(helper.make_opsetid("defmamba", 1))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])], [w])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


@pytest.fixture
def dyn(tmp_path):
    return _model(tmp_path / "tiny.onnx")


def test_dynamic_config_parses(dyn):
    cfg = triton.check_config(triton.make_onnx_config(dyn, "tiny", max_batch=4, instances=2), dyn)
    assert cfg.name == "tiny" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 4
    assert list(cfg.input[0].dims) == [3, 64, 64] and list(cfg.output[0].dims) == [10]
    assert cfg.input[0].name == "input" and cfg.output[0].name == "logits"
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    assert cfg.instance_group[0].count == 2
    assert not cfg.HasField("model_operations")


def test_static_batch(tmp_path):
    m = _model(tmp_path / "s.onnx", batch=1)
    text = triton.make_onnx_config(m, "s")
    cfg = triton.check_config(text, m)
    assert cfg.max_batch_size == 0 and "dynamic_batching" not in text
    assert list(cfg.input[0].dims) == [1, 3, 64, 64] and list(cfg.output[0].dims) == [1, 10]


def test_typo_rejected_in_one_line(dyn):
    text = triton.make_onnx_config(dyn, "tiny").replace("max_batch_size", "max_batch_sise")
    with pytest.raises(UsageError) as e:
        triton.check_config(text)
    assert "max_batch_sise" in str(e.value) and "\n" not in str(e.value)


def test_wrong_dims_rejected(dyn):
    text = triton.make_onnx_config(dyn, "tiny").replace("dims: [ 10 ]", "dims: [ 11 ]")
    with pytest.raises(UsageError, match=r"output\[0\]\.dims") as e:
        triton.check_config(text, dyn)
    assert "\n" not in str(e.value)


def test_missing_library_rejected(dyn, tmp_path):
    text = triton.make_onnx_config(dyn, "tiny") + 'model_operations { op_library_filename: "nope.so" }\n'
    with pytest.raises(UsageError, match="nope.so"):
        triton.check_config(text, where=str(tmp_path / "config.pbtxt"))


def test_write_repo(dyn, tmp_path):
    repo = tmp_path / "repo"
    out = triton.write_triton_repo(dyn, repo)
    assert out == repo / "tiny"
    assert (out / "1" / "model.onnx").is_file() and (out / "config.pbtxt").is_file()
    assert "tritonserver --model-repository=/models" in (repo / "README.md").read_text()
    triton.check_config((out / "config.pbtxt").read_text(), dyn)
    with pytest.raises(UsageError, match="already exists"):
        triton.write_triton_repo(dyn, repo)
    triton.write_triton_repo(dyn, repo, force=True, max_batch=2)
    assert "max_batch_size: 2" in (out / "config.pbtxt").read_text()


def test_failure_leaves_nothing(dyn, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    def boom(*a, **k):
        raise UsageError("boom")
    monkeypatch.setattr(triton, "check_config", boom)
    with pytest.raises(UsageError, match="boom"):
        triton.write_triton_repo(dyn, repo)
    assert [p.name for p in repo.iterdir()] == []


@pytest.mark.parametrize("kw", [dict(max_batch=0), dict(max_batch=1.5), dict(instances=0),
                                dict(max_delay_ms=-1), dict(max_delay_ms=float("inf")), dict(name="a b")])
def test_bad_args(dyn, tmp_path, kw):
    with pytest.raises(UsageError) as e:
        triton.write_triton_repo(dyn, tmp_path / "repo", **kw)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "repo").exists()


def test_custom_ops(tmp_path):
    from defmamba_deploy.onnx.check import custom_ops_used
    m = _model(tmp_path / "c.onnx", custom=True)
    assert custom_ops_used(onnx.load(str(m))) == ["SelectiveScan"]
    from defmamba_deploy.libs import find_library
    try:
        find_library("ort", None)
    except Exception as e:  # the library is built separately
        pytest.skip(f"custom-op library not built: {e}")
    out = triton.write_triton_repo(m, tmp_path / "repo")
    assert (out / triton.LIB_NAME).is_file()
    text = (out / "config.pbtxt").read_text()
    assert f'op_library_filename: "/models/c/{triton.LIB_NAME}"' in text
    assert "<=" in (tmp_path / "repo" / "README.md").read_text()
