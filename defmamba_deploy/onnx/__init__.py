"""ONNX layer: op schemas, export symbolics, the exporter, portable expansion and file checks."""
from .check import custom_ops_used, load_onnx
from .export import ExportResult, default_output, export_onnx
from .sidecar import OnnxSidecar, read_sidecar, sidecar_path
from .schemas import DOMAIN, OP_SPECS, VERSION, register_schemas

__all__ = [
    "export_onnx", "ExportResult", "OnnxSidecar", "default_output", "read_sidecar", "sidecar_path", "load_onnx",
    "custom_ops_used", "register_schemas", "DOMAIN", "VERSION", "OP_SPECS",
]
