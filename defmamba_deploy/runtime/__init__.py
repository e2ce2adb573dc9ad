"""Runtimes: the runner contract and registry, ONNX Runtime sessions and runners, a service-ready Predictor."""
from ..libs import find_library, get_library_path, get_trt_plugin_library_path, library_status
from .base import Runner
from .onnxrt import OrtRunner, create_session
from .predictor import Predictor, top_k
from .registry import Backend, BackendRequest, Unavailable, backend_names, get_backend, register_backend

__all__ = ["find_library", "get_library_path", "get_trt_plugin_library_path", "library_status", "create_session",
           "OrtRunner", "Predictor", "Runner", "top_k", "Backend", "BackendRequest", "Unavailable", "backend_names",
           "get_backend", "register_backend"]
