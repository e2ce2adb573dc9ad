"""Runtimes: plugin-library discovery, ONNX Runtime sessions and a service-ready Predictor."""
from ..libs import find_library, library_status
from .onnxrt import OrtRunner, Predictor, create_session

__all__ = ["find_library", "library_status", "create_session", "OrtRunner", "Predictor"]
