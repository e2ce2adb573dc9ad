"""The v2 protocol codec against the real client: bodies that tritonclient.http builds parse to the
client's arrays, our responses decode with its InferResult, and each malformed body is one 400 line."""
import json

import numpy as np
import pytest

from defmamba_deploy.serve.protocol import (HEADER_LENGTH, ProtocolError, encode_infer_response,
                                            parse_infer_request)

httpclient = pytest.importorskip("tritonclient.http")


def _client_body(x, binary=True, outputs=None):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return httpclient.InferenceServerClient.generate_request_body([inp], outputs=outputs, request_id="r7")


@pytest.mark.parametrize("binary", [True, False])
def test_client_bodies_parse_to_the_clients_array(binary):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    body, json_size = _client_body(x, binary)
    assert (json_size is not None) == binary
    req = parse_infer_request(body, json_size)
    assert req.id == "r7" and list(req.inputs) == ["input"]
    np.testing.assert_array_equal(req.inputs["input"], x)  # bit-exact, JSON included (float32 repr round-trips)
    assert req.inputs["input"].flags.writeable


@pytest.mark.parametrize("binary_out", [True, False])
def test_responses_decode_with_the_clients_result(binary_out):
    x = np.zeros((1, 3, 4, 4), np.float32)
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary_out)]
    body, json_size = _client_body(x, True, outputs)
    req = parse_infer_request(body, json_size)
    logits = np.arange(20, dtype=np.float32).reshape(2, 10) / 7
    out, header_len = encode_infer_response(req, "m", {"logits": logits})
    assert (header_len is not None) == binary_out
    res = httpclient.InferResult.from_response_body(out, header_length=header_len)
    np.testing.assert_array_equal(res.as_numpy("logits"), logits)
    assert res.get_response()["id"] == "r7" and res.get_response()["model_name"] == "m"


def test_no_requested_outputs_means_all_binary_as_the_client_asks():
    body, json_size = _client_body(np.zeros((1, 3, 4, 4), np.float32))
    req = parse_infer_request(body, json_size)
    out, header_len = encode_infer_response(req, "m", {"logits": np.ones((1, 3), np.float32)})
    assert header_len is not None and json.loads(out[:header_len])["outputs"][0]["parameters"]["binary_data_size"] == 12


def _json(obj):
    return json.dumps(obj).encode()


GOOD = {"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}
BAD = [
    (b"{not json", None, "not valid JSON"),
    (b"{\xc3(", None, "not UTF-8"),
    (_json([1, 2]), None, "not an object"),
    (_json({}), None, "no \"inputs\""),
    (_json({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}), None, "\"name\""),
    (_json({"inputs": [dict(GOOD, datatype="FP64")]}), None, "datatype 'FP64'"),
    (_json({"inputs": [dict(GOOD, shape=[1, -2])]}), None, "\"shape\""),
    (_json({"inputs": [dict(GOOD, shape="12")]}), None, "\"shape\""),
    (_json({"inputs": [dict(GOOD, data=[1, 2, 3])]}), None, "has 3 values"),
    (_json({"inputs": [dict(GOOD, data=["1", "2"])]}), None, "numbers only"),
    (_json({"inputs": [dict(GOOD, data=[True, False])]}), None, "numbers only"),
    (_json({"inputs": [dict(GOOD, data=[[1], [2, 3]])]}), None, "ragged"),
    (b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [NaN, 1]}]}', None, "NaN"),
    (_json({"inputs": [GOOD, GOOD]}), None, "twice"),
    (_json({"inputs": [{k: v for k, v in GOOD.items() if k != "data"}]}), None, "neither"),
    (_json({"inputs": [GOOD], "outputs": "logits"}), None, "\"outputs\""),
    (_json({"inputs": [GOOD], "id": 5}), None, "\"id\""),
    # the binary extension
    (_json({"inputs": [GOOD]}), "x", "must be an integer"),
    (_json({"inputs": [GOOD]}), 10_000, "the body has"),
    (_json({"inputs": [dict(GOOD, parameters={"binary_data_size": 8})]}), None, f"no {HEADER_LENGTH}"),
]


@pytest.mark.parametrize("body,header,needle", BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_malformed_bodies_are_one_400_line(body, header, needle):
    with pytest.raises(ProtocolError) as e:
        parse_infer_request(body, header)
    assert needle in str(e.value) and "\n" not in str(e.value) and e.value.status == 400


def _binary(size_field, payload):
    head = _json({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                              "parameters": {"binary_data_size": size_field}}]})
    return head + payload, len(head)


@pytest.mark.parametrize("size_field,payload,needle", [
    (4, b"\0" * 4, "needs 8 bytes"),          # size disagrees with the shape
    (8, b"\0" * 4, "ends 4 bytes before"),    # truncated binary data
    (8, b"\0" * 12, "4 bytes of binary data after"),  # trailing bytes
    ("8", b"\0" * 8, "needs 8 bytes"),
])
def test_malformed_binary_data_is_one_400_line(size_field, payload, needle):
    body, n = _binary(size_field, payload)
    with pytest.raises(ProtocolError, match=needle):
        parse_infer_request(body, n)


def test_binary_nan_is_refused_and_good_binary_parses():
    body, n = _binary(8, np.array([np.nan, 1], "<f4").tobytes())
    with pytest.raises(ProtocolError, match="NaN"):
        parse_infer_request(body, n)
    body, n = _binary(8, np.array([3, 4], "<f4").tobytes())
    np.testing.assert_array_equal(parse_infer_request(body, n).inputs["input"], [[3, 4]])


def test_unknown_requested_output_is_refused():
    req = parse_infer_request(_json({"inputs": [GOOD], "outputs": [{"name": "probs"}]}))
    with pytest.raises(ProtocolError, match="'probs' is not an output"):
        encode_infer_response(req, "m", {"logits": np.ones((1, 2), np.float32)})
