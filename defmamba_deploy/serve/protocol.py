"""The KServe v2 inference protocol's HTTP/REST body, with Triton's binary tensor data extension.

Pure functions, no web framework: :func:`parse_infer_request` turns a request body (JSON, or JSON
followed by raw tensor bytes when the ``Inference-Header-Content-Length`` header is given, which
``tritonclient.http`` sends by default) into named float32 arrays, and :func:`encode_infer_response`
builds the answer in the form the request asked for (``binary_data_output`` for all outputs, or
``binary_data`` per requested output). Every malformed body raises :class:`ProtocolError` with one
line and the HTTP status the protocol gives it (400), so a server answers ``{"error": "..."}``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError

# the protocol's datatype names; the model takes and returns FP32 only
DATATYPES = {"FP32": np.float32}
HEADER_LENGTH = "Inference-Header-Content-Length"


class ProtocolError(UsageError):
    """A request the protocol rejects: one line, and the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[dict] | None = None  # the requested outputs ({"name", "parameters"}); None: all
    parameters: dict = field(default_factory=dict)


def _json_object(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8 JSON: send a JSON object (or set {HEADER_LENGTH} for binary data)") from None
    except ValueError as e:
        raise ProtocolError(f"{what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} is a JSON {type(obj).__name__}, not an object with \"inputs\"")
    return obj


def _shape(value, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise ProtocolError(f"input '{name}': \"shape\" must be a non-empty list of integers >= 0, got {value!r}")
    return tuple(value)


def _from_json_data(data, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except ValueError:  # ragged nesting
        raise ProtocolError(f"input '{name}': \"data\" is a ragged nested list; send a flat list in row-major order") from None
    if arr.dtype.kind not in "iuf":  # bools, strings, nulls (object) are not FP32 data
        raise ProtocolError(f"input '{name}': \"data\" must hold numbers only (datatype FP32)")
    if arr.size != math.prod(shape):
        raise ProtocolError(f"input '{name}': \"data\" has {arr.size} values but shape {list(shape)} needs "
                            f"{math.prod(shape)}")
    return arr.astype(np.float32).reshape(shape)


def parse_infer_request(body: bytes, header_length: str | int | None = None) -> InferRequest:
    """A v2 ``infer`` request body -> :class:`InferRequest`, or one :class:`ProtocolError` line."""
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except (TypeError, ValueError):
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes: it must give the "
                                f"length of the JSON header that starts the body")
        body, binary = body[:n], body[n:]
    obj = _json_object(body, "the request body" if header_length is None else "the request's JSON header")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("the request has no \"inputs\" list: give at least one input tensor")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(inputs):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ProtocolError(f"inputs[{i}] must be an object with a \"name\" string")
        name = t["name"]
        if name in arrays:
            raise ProtocolError(f"input '{name}' is given twice")
        shape = _shape(t.get("shape"), name)
        dtype = t.get("datatype")
        if dtype not in DATATYPES:
            raise ProtocolError(f"input '{name}' has datatype {dtype!r}; this model takes {', '.join(DATATYPES)}")
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(f"input '{name}': \"parameters\" must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if header_length is None:
                raise ProtocolError(f"input '{name}' has binary_data_size but the request has no {HEADER_LENGTH} header")
            want = math.prod(shape) * np.dtype(DATATYPES[dtype]).itemsize
            if not isinstance(size, int) or isinstance(size, bool) or size != want:
                raise ProtocolError(f"input '{name}': binary_data_size is {size!r} but shape {list(shape)} of {dtype} "
                                    f"needs {want} bytes")
            if offset + size > len(binary):
                raise ProtocolError(f"input '{name}': the body ends {offset + size - len(binary)} bytes before its "
                                    f"binary data does")
            arr = np.frombuffer(binary, dtype="<f4", count=size // 4, offset=offset).reshape(shape)
            arrays[name] = arr.astype(np.float32, copy=True)  # a writable, native-order copy
            offset += size
        elif "data" in t:
            arrays[name] = _from_json_data(t["data"], shape, name)
        else:
            raise ProtocolError(f"input '{name}' has neither \"data\" nor parameters.binary_data_size")
    if offset != len(binary):
        raise ProtocolError(f"the body has {len(binary) - offset} bytes of binary data after the last input's")
    for name, arr in arrays.items():
        if not np.isfinite(arr).all():
            raise ProtocolError(f"input '{name}' holds NaN or infinity: send finite values")
    outputs = obj.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)):
        raise ProtocolError("\"outputs\" must be a list of objects with a \"name\" string")
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("\"parameters\" must be an object")
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError(f"\"id\" must be a string, got {type(rid).__name__}")
    return InferRequest(arrays, rid, outputs, parameters)


def encode_infer_response(request: InferRequest, model: str, outputs: dict[str, np.ndarray],
                          version: str = "1") -> tuple[bytes, int | None]:
    """The response body and, when any output goes as binary data, the JSON header's length (for the
    ``Inference-Header-Content-Length`` response header); requested outputs the model lacks raise."""
    wanted = request.outputs
    if wanted is None:
        all_binary = bool(request.parameters.get("binary_data_output", False))
        wanted = [{"name": n, "parameters": {"binary_data": all_binary}} for n in outputs]
    header: dict = {"model_name": model, "model_version": version, "outputs": []}
    if request.id is not None:
        header["id"] = request.id
    chunks = []
    for o in wanted:
        name = o["name"]
        if name not in outputs:
            raise ProtocolError(f"requested output '{name}' is not an output of {model} (it has {', '.join(outputs)})")
        arr = np.ascontiguousarray(outputs[name], dtype=np.float32)
        entry = {"name": name, "datatype": "FP32", "shape": list(arr.shape)}
        params = o.get("parameters") or {}
        if params.get("binary_data", request.parameters.get("binary_data_output", False)):
            raw = arr.astype("<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        header["outputs"].append(entry)
    text = json.dumps(header).encode()
    if not chunks:
        return text, None
    return text + b"".join(chunks), len(text)
