"""Reading and auditing ONNX files: clear errors for broken files, which custom ops a model uses."""
from __future__ import annotations

import json
import os
from pathlib import Path

import onnx

from ..errors import UsageError
from ..files import require_file
from .schemas import DOMAIN

REEXPORT = "re-export it (defmamba-deploy export)"


def _sidecar_format(path: Path) -> str:
    """The ``format`` of a JSON file written by this toolkit, or ''."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    return str(data.get("format", "")) if isinstance(data, dict) else ""


def _what_it_is(path: Path) -> tuple[str, str]:
    """(what the bytes of a file that does not parse as ONNX look like, what to do)."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head.startswith((b"{", b"[")):
        fmt = _sidecar_format(path)
        if "onnx-sidecar" in fmt:
            return "it is the JSON sidecar of an export", f"give the .onnx file beside it, not {path.name}"
        if "engine-sidecar" in fmt:
            return "it is the JSON sidecar of a TensorRT engine", "give an .onnx file from defmamba-deploy export"
        return "it holds JSON text", "give an .onnx file from defmamba-deploy export"
    if head.startswith(b"\x7fELF"):
        return "it is a shared library", "give an .onnx file from defmamba-deploy export"
    if "engine-sidecar" in _sidecar_format(Path(str(path) + ".json")):
        return (f"it is a TensorRT engine, says {path.name}.json", "give the ONNX file the engine was built from, "
                "or run the engine with --engine")
    return ("not ONNX protobuf: truncated, corrupt or another kind of file such as a TensorRT engine", REEXPORT)


def load_onnx(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX file with a one-line error for missing, truncated or corrupt files, folders and
    files of another kind (a sidecar, an engine, a library)."""
    path = require_file(path, "ONNX file", "export one with: defmamba-deploy export", f": {REEXPORT}")
    try:
        model = onnx.load(str(path))
    except OSError as e:  # unreadable, or external data that is not beside it
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
        raise UsageError(f"ONNX file {path} cannot be read: {e.strerror or e}{where}; {REEXPORT}") from None
    except Exception:  # noqa: BLE001 - protobuf raises several types for bad bytes
        what, fix = _what_it_is(path)
        raise UsageError(f"{path} is not a valid ONNX model ({what}): {fix}") from None
    if not model.graph.node:
        raise UsageError(f"{path} is not a valid ONNX model (no graph nodes: truncated or another kind of file): "
                         f"{REEXPORT}")
    if check:
        from .schemas import register_schemas

        register_schemas()
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as e:
            first = str(e).strip().splitlines()[0][:200]
            raise UsageError(f"{path} is not a valid ONNX model ({first}): {REEXPORT}") from None
        except (UnicodeDecodeError, ValueError, RuntimeError) as e:  # damaged bytes inside a name or string field
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UsageError(f"{path} is not a valid ONNX model (damaged: {type(e).__name__}: {first}): {REEXPORT}") from None
    return model


def custom_ops_used(model: onnx.ModelProto) -> list[str]:
    """Sorted op types of the ``defmamba`` domain used by the model's main graph."""
    return sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
