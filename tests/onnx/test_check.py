"""load_onnx on damaged files: one UsageError line, whichever layer (protobuf, checker) notices."""
import onnx
import pytest
from onnx import TensorProto, helper

from defmamba_deploy.errors import UsageError
from defmamba_deploy.onnx import load_onnx


def _model_bytes() -> bytes:
    node = helper.make_node("Relu", ["x"], ["y"], name="relu_node_name")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_valid_model_loads(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(_model_bytes())
    assert load_onnx(p).graph.node[0].op_type == "Relu"


@pytest.mark.parametrize("field", [b"Relu", b"x"])
def test_invalid_utf8_inside_an_op_type_or_tensor_name_is_one_line(tmp_path, field):
    data = _model_bytes()
    i = data.index(field)
    p = tmp_path / "m.onnx"
    p.write_bytes(data[:i] + b"\xd2" + data[i + 1:])  # same length: the protobuf framing stays valid
    onnx.load(str(p))  # protobuf accepts the bytes; the checker decodes the string and fails
    with pytest.raises(UsageError, match=r"m\.onnx is not a valid ONNX model") as e:
        load_onnx(p)
    assert "\n" not in str(e.value)
