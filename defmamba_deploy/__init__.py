"""defmamba-deploy: DefMamba from PyTorch to ONNX, ONNX Runtime and TensorRT.

Public API::

    import defmamba_deploy as dd
    model = dd.create_model("s", weights="defmamba_s.pth")     # eval mode, strict, safe loading
    dd.load_checkpoint(model, "other.pth", ema=True)
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import CheckpointError, DefMambaError, MissingDependencyError, UsageError
from .model import create_model, list_models, load_checkpoint

__all__ = [
    "__version__", "create_model", "load_checkpoint", "list_models",
    "DefMambaError", "CheckpointError", "UsageError", "MissingDependencyError",
]
