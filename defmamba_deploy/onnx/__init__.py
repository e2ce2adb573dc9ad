"""ONNX layer: op schemas, export symbolics, the exporter, portable expansion and file checks.

Reading, checking and describing ONNX files needs only the ``onnx`` package; the exporter
(``export_onnx``, ``ExportResult``, ``default_output``) needs torch and is imported on first use.
"""
from __future__ import annotations


from ..lazy import lazy_attributes
from .check import custom_ops_used, load_onnx
from .sidecar import OnnxSidecar, read_sidecar, sidecar_path
from .schemas import DOMAIN, OP_SPECS, VERSION, register_schemas

__all__ = [
    "export_onnx", "ExportResult", "OnnxSidecar", "default_output", "read_sidecar", "sidecar_path", "load_onnx",
    "custom_ops_used", "register_schemas", "DOMAIN", "VERSION", "OP_SPECS",
]

_EXPORT_NAMES = ("export_onnx", "ExportResult", "default_output")  # imported by __getattr__ on first use


def _export():
    from . import export

    return export


__getattr__, __dir__ = lazy_attributes(__name__, globals(), dict.fromkeys(_EXPORT_NAMES, _export), __all__)
