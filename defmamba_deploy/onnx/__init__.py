"""ONNX layer: op schemas, export symbolics, the exporter, portable expansion and file checks.

Reading, checking and describing ONNX files needs only the ``onnx`` package; the exporter
(``export_onnx``, ``ExportResult``, ``default_output``) needs torch and is imported on first use.
"""
from __future__ import annotations

import importlib

from .check import custom_ops_used, load_onnx
from .sidecar import OnnxSidecar, read_sidecar, sidecar_path
from .schemas import DOMAIN, OP_SPECS, VERSION, register_schemas

__all__ = [
    "export_onnx", "ExportResult", "OnnxSidecar", "default_output", "read_sidecar", "sidecar_path", "load_onnx",
    "custom_ops_used", "register_schemas", "DOMAIN", "VERSION", "OP_SPECS",
]

_EXPORT_NAMES = ("export_onnx", "ExportResult", "default_output")  # imported by __getattr__ on first use


def __getattr__(name: str):
    if name in _EXPORT_NAMES:
        from . import export

        value = getattr(export, name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if not name.startswith("_"):  # a submodule not imported yet, as ``pkg.submodule`` always worked
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
