"""Reading and auditing ONNX files: clear errors for broken files, which custom ops a model uses."""
from __future__ import annotations

import os

import onnx

from ..errors import UsageError
from ..files import require_file
from .schemas import DOMAIN


def load_onnx(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX file with a one-line error for missing, truncated or corrupt files."""
    path = require_file(path, "ONNX file", "export one with: defmamba-deploy export", ": re-export it")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for bad bytes
        raise UsageError(f"{path} is not a readable ONNX model (truncated or corrupt: {type(e).__name__}): re-export it") from None
    if not model.graph.node:
        raise UsageError(f"{path} is not a valid ONNX model (no graph nodes; truncated or not ONNX): re-export it")
    if check:
        from .schemas import register_schemas

        register_schemas()
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as e:
            first = str(e).strip().splitlines()[0][:200]
            raise UsageError(f"{path} is not a valid ONNX model ({first}): re-export it") from None
    return model


def custom_ops_used(model: onnx.ModelProto) -> list[str]:
    """Sorted op types of the ``defmamba`` domain used by the model's main graph."""
    return sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
