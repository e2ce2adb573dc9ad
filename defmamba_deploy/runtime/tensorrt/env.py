"""What the TensorRT code needs from the machine: the ``tensorrt`` module, cuda-python, the GPU and
our plugin library. Each loader raises one :class:`MissingDependencyError` saying what to install
(the CLI turns it into exit code 2), so that a machine without TensorRT fails fast and clearly.

Nothing here imports ``tensorrt`` or cuda-python at module import time: the backend registry
imports the TensorRT runner on every machine, and only activating a runner or building an engine
loads them.
"""
from __future__ import annotations

import os

from ...errors import MissingDependencyError, UsageError

TRT_INSTALL_HINT = ("TensorRT is not installed: pip install 'defmamba-deploy[tensorrt]' "
                    "(tensorrt, polygraphy, cuda-python) on a machine with an NVIDIA GPU and driver")
CUDA_PYTHON_HINT = "cuda-python is not installed: pip install cuda-python"
PLUGIN_PROBE = ("SelectiveScan", "1", "")  # a creator our library registers: present = library loaded


def require_tensorrt():
    """The ``tensorrt`` module, or a one-line MissingDependencyError."""
    try:
        import tensorrt as trt  # type: ignore
    except Exception:  # noqa: BLE001 - ImportError or a broken install (missing libnvinfer)
        raise MissingDependencyError(TRT_INSTALL_HINT) from None
    return trt


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None when it is not usable (for ``info``)."""
    try:
        return str(require_tensorrt().__version__)
    except MissingDependencyError:
        return None


def cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime`` since 12.6, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime  # type: ignore
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore
        except ImportError:
            raise MissingDependencyError(CUDA_PYTHON_HINT) from None
    return runtime


def cuda_check(result):
    """cuda-python calls return ``(err, *values)``; raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_info(runtime=None) -> tuple[str, str]:
    """(GPU name, 'major.minor') of device 0, or a MissingDependencyError when there is no usable GPU."""
    runtime = runtime or cudart()
    err, props = runtime.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise MissingDependencyError(f"no usable CUDA device (cudaGetDeviceProperties: {err}); TensorRT needs an "
                                     f"NVIDIA GPU and driver")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


def load_plugin_library(trt, lib: str | os.PathLike) -> None:
    """Register our plugin creators once per process (a second load of the same creators fails)."""
    registry = trt.get_plugin_registry()
    if registry.get_creator(*PLUGIN_PROBE) is None:
        if registry.load_library(str(lib)) is None:
            raise UsageError(f"TensorRT could not load the plugin library {lib}: rebuild it (bash scripts/build_plugins.sh)")


def trt_major(version: str) -> int:
    """The major version of a TensorRT version string ('10.13.0.35' -> 10)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise UsageError(f"cannot read the TensorRT version {version!r}") from None


class DeviceBuffer:
    """``nbytes`` of device memory from cudaMalloc, freed by :meth:`free` (or when collected)."""

    def __init__(self, runtime, nbytes: int) -> None:
        self.runtime, self.nbytes = runtime, max(int(nbytes), 1)
        self.ptr = cuda_check(runtime.cudaMalloc(self.nbytes))

    def free(self) -> None:
        if self.ptr is not None:
            self.runtime.cudaFree(self.ptr)
            self.ptr = None

    def __del__(self) -> None:  # pragma: no cover - GPU only
        try:
            self.free()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the driver frees it anyway
            pass
