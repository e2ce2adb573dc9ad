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


__version__ = "0.1.0"

from .errors import CheckpointError, DefMambaError, MissingDependencyError, UsageError
from .lazy import lazy_attributes
from .libs import get_library_path, get_trt_plugin_library_path

__all__ = [
    "__version__", "create_model", "load_checkpoint", "list_models", "get_library_path",
    "get_trt_plugin_library_path", "DefMambaError", "CheckpointError", "UsageError", "MissingDependencyError",
]

_MODEL_NAMES = ("create_model", "load_checkpoint", "list_models")  # imported by __getattr__ on first use


def _model():
    from . import model

    return model


__getattr__, __dir__ = lazy_attributes(__name__, globals(), dict.fromkeys(_MODEL_NAMES, _model), __all__)
