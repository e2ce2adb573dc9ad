"""Runtimes: plugin-library discovery, ONNX Runtime sessions and a service-ready Predictor."""
from .libs import find_library, library_status

__all__ = ["find_library", "library_status"]
