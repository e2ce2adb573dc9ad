"""TensorRT runner: load an engine with our plugin library, check it fits, run it.

Device memory and copies go through cuda-python (``cuda.bindings.runtime``, or the older
``cuda.cudart``). The runner checks the engine's sidecar (TensorRT version, GPU compute
capability, plugin library hash) before deserialising and says what to do on a mismatch. For a
fixed input shape it can capture the enqueue in a CUDA graph and replay it (``cuda_graph=True``);
our plugins do no allocation, synchronisation or host round trip in ``enqueue``, so capture is safe.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, UsageError
from ..libs import find_library
from .trt_build import check_engine_compatible, load_plugin_library, read_engine_sidecar, require_tensorrt, sha256_file


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore
        except ImportError:
            raise MissingDependencyError("cuda-python is not installed: pip install cuda-python") from None
    return cudart


def _check(result):
    """cuda-python calls return (err, *values); raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


class DeviceBuffer:
    def __init__(self, cudart, nbytes: int) -> None:
        self.cudart, self.nbytes = cudart, max(int(nbytes), 1)
        self.ptr = _check(cudart.cudaMalloc(self.nbytes))

    def free(self) -> None:
        if self.ptr is not None:
            self.cudart.cudaFree(self.ptr)
            self.ptr = None

    def __del__(self) -> None:  # pragma: no cover - GPU only
        try:
            self.free()
        except Exception:  # noqa: BLE001
            pass


class TrtRunner:
    """``TrtRunner("defmamba_s.plan")(x)`` -> logits; x (B, 3, H, W) float32 within the engine's profile."""

    def __init__(self, engine_path: str | os.PathLike, *, plugins: str | os.PathLike | None = None,
                 cuda_graph: bool = False) -> None:
        trt = require_tensorrt()
        self.trt, self.cudart = trt, _cudart()
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise UsageError(f"engine {self.path} does not exist (build one with defmamba-deploy build-engine)")
        self.sidecar = read_engine_sidecar(self.path)
        lib = find_library("trt", plugins)
        from .trt_build import _device_info

        _, cc = _device_info()
        check_engine_compatible(self.sidecar, trt.__version__, cc, sha256_file(lib))
        load_plugin_library(trt, lib)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise UsageError(f"TensorRT could not deserialize {self.path}: rebuild it with defmamba-deploy build-engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.buffers: dict[str, DeviceBuffer] = {}
        self.cuda_graph = cuda_graph
        self._graph_exec = None
        self._graph_shape: tuple | None = None
        prof = self.sidecar.get("profile", {})
        self.min_shape, self.max_shape = tuple(prof.get("min", ())), tuple(prof.get("max", ()))

    def _buffer(self, name: str, nbytes: int) -> DeviceBuffer:
        buf = self.buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = self.buffers[name] = DeviceBuffer(self.cudart, nbytes)
            self._graph_exec = None  # addresses changed
        return buf

    def check_input(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1] != 3:
            raise UsageError(f"input must be a (batch, 3, height, width) array, got {getattr(x, 'shape', type(x))}")
        if self.min_shape and self.max_shape and not all(lo <= v <= hi for lo, v, hi in zip(self.min_shape, x.shape, self.max_shape)):
            raise UsageError(f"input shape {list(x.shape)} is outside the engine's profile {list(self.min_shape)}..{list(self.max_shape)}: "
                             f"rebuild with a wider --min-shape/--max-shape")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)[0]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """All outputs, in the engine's order (logits; or the backbone's 4 feature maps)."""
        cudart, trt = self.cudart, self.trt
        x = self.check_input(x)
        name = self.inputs[0]
        self.context.set_input_shape(name, tuple(x.shape))
        inp = self._buffer(name, x.nbytes)
        self.context.set_tensor_address(name, inp.ptr)
        outs = {}
        for o in self.outputs:
            shape = tuple(self.context.get_tensor_shape(o))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(o)))
            outs[o] = np.empty(shape, dtype)
            self.context.set_tensor_address(o, self._buffer(o, outs[o].nbytes).ptr)
        H2D, D2H = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(inp.ptr, x.ctypes.data, x.nbytes, H2D, self.stream))
        if self.cuda_graph:
            if self._graph_exec is None or self._graph_shape != x.shape:
                self._enqueue()  # one regular run first: TensorRT sets up shape-dependent state
                _check(cudart.cudaStreamBeginCapture(self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
                self._enqueue()
                graph = _check(cudart.cudaStreamEndCapture(self.stream))
                self._graph_exec = _check(cudart.cudaGraphInstantiate(graph, 0))
                self._graph_shape = x.shape
            _check(cudart.cudaGraphLaunch(self._graph_exec, self.stream))
        else:
            self._enqueue()
        for o, arr in outs.items():
            _check(cudart.cudaMemcpyAsync(arr.ctypes.data, self.buffers[o].ptr, arr.nbytes, D2H, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return [outs[o] for o in self.outputs]

    def synchronize(self) -> None:
        _check(self.cudart.cudaStreamSynchronize(self.stream))


def make_entropy_calibrator(trt, batches, input_name: str, cache_path: str | os.PathLike | None):
    """A TensorRT 10 ``IInt8EntropyCalibrator2`` over preprocessed batches; reuses ``cache_path``."""
    cudart = _cudart()

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = list(batches)
            self.index = 0
            self.cache_path = Path(cache_path) if cache_path else None
            self.device = DeviceBuffer(cudart, self.batches[0].nbytes) if self.batches else None

        def get_batch_size(self) -> int:
            return int(self.batches[0].shape[0]) if self.batches else 1

        def get_batch(self, names, p_str=None):
            if self.index >= len(self.batches):
                return None
            batch = np.ascontiguousarray(self.batches[self.index], dtype=np.float32)
            self.index += 1
            _check(cudart.cudaMemcpy(self.device.ptr, batch.ctypes.data, batch.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            return [int(self.device.ptr)]

        def read_calibration_cache(self):
            if self.cache_path and self.cache_path.is_file():
                return self.cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            if self.cache_path:
                tmp = self.cache_path.with_name(f".{self.cache_path.name}.tmp")
                tmp.write_bytes(bytes(cache))
                os.replace(tmp, self.cache_path)

    return _Calibrator()


def EntropyCalibrator(batches, input_name: str, cache_path=None):  # noqa: N802 - reads like a class
    return make_entropy_calibrator(require_tensorrt(), batches, input_name, cache_path)
