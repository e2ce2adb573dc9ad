"""defmamba-deploy: DefMamba from PyTorch to ONNX, ONNX Runtime and TensorRT.

Public API::

    import defmamba_deploy as dd
    model = dd.create_model("s", weights="defmamba_s.pth")     # eval mode, strict, safe loading
    dd.load_checkpoint(model, "other.pth", ema=True)
    so.register_custom_ops_library(dd.get_library_path())     # the ONNX Runtime custom ops

The model names are imported on first use (PEP 562), so ``import defmamba_deploy.runtime`` and a
``Predictor`` on an ONNX file run without importing PyTorch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .errors import CheckpointError, DefMambaError, MissingDependencyError, UsageError
from .libs import get_library_path, get_trt_plugin_library_path

__all__ = [
    "__version__", "create_model", "load_checkpoint", "list_models", "get_library_path",
    "get_trt_plugin_library_path", "DefMambaError", "CheckpointError", "UsageError", "MissingDependencyError",
]

_MODEL_NAMES = ("create_model", "load_checkpoint", "list_models")  # imported by __getattr__ on first use


def __getattr__(name: str):
    if name in _MODEL_NAMES:
        from . import model

        value = getattr(model, name)
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
