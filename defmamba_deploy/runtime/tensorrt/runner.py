"""The TensorRT backend: :class:`TrtRunner` (an engine with our plugin library) and its registration.

Constructing a runner reads only the engine's sidecar, so a wrong file fails at once and without
TensorRT; :meth:`TrtRunner.activate` imports TensorRT and cuda-python, checks that the engine fits
this machine (TensorRT version, GPU compute capability, plugin library hash) and says what to do
on a mismatch, then deserialises it. Device memory and copies go through cuda-python. For a fixed
input shape the runner can capture the enqueue in a CUDA graph and replay it (``cuda_graph=True``):
our plugins do no allocation, synchronisation or host round trip in ``enqueue``, so capture is safe.

Importing this module does not import TensorRT: the registry imports it on every machine.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import MissingDependencyError, UsageError
from ...files import check_writable, require_file, sha256_file
from ...libs import find_library
from ...model import resolve_name
from ..base import Runner
from ..registry import Backend, BackendRequest, Unavailable, register_backend
from .build import PRECISIONS, EngineInfo, build_engine, check_engine_compatible, compute_profile
from .env import DeviceBuffer, cuda_check, cudart, device_info, load_plugin_library, require_tensorrt

__all__ = ["TrtRunner", "DeviceBuffer"]
_SYMBOLIC = ("batch", 3, "height", "width")
NO_ENGINE = "build one with defmamba-deploy build-engine"
INT8_NEEDS_ENGINE = ("int8 needs calibration data: build the engine with defmamba-deploy build-engine --int8 "
                     "--calib-images DIR and pass it with --engine")


class TrtRunner(Runner):
    """``TrtRunner("defmamba_s.plan")`` -> a runner; ``infer(x)`` with x (B, 3, H, W) float32 within the
    engine's profile returns every output (the logits, or the backbone's 4 feature maps)."""

    backend = "trt"

    def __init__(self, engine_path: str | os.PathLike, *, plugins: str | os.PathLike | None = None,
                 cuda_graph: bool = False, name: str | None = None) -> None:
        super().__init__(name)
        self.path = require_engine_file(engine_path)
        self.sidecar = EngineInfo.read(self.path)
        self.plugins, self.cuda_graph = plugins, cuda_graph
        self.min_shape, self.max_shape = self.sidecar.min_shape, self.sidecar.max_shape
        self.input_shape = [lo if lo == hi else sym for lo, hi, sym in zip(self.min_shape, self.max_shape, _SYMBOLIC)]
        self.trt = self.cudart = self.logger = self.runtime = self.engine = self.context = self.stream = None
        self.inputs: list[str] = []
        self.buffers: dict[str, DeviceBuffer] = {}
        self._graph_exec = None
        self._graph_shape: tuple | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        trt = require_tensorrt()
        runtime = cudart()
        _, cc = device_info(runtime)
        # the engine against this TensorRT and GPU first: a rebuild fixes that whatever the library is
        check_engine_compatible(self.sidecar, trt.__version__, cc)
        lib = find_library("trt", self.plugins)
        check_engine_compatible(self.sidecar, trt.__version__, cc, sha256_file(lib))
        try:
            plan = self.path.read_bytes()
        except OSError as e:
            raise UsageError(f"engine {self.path} cannot be read: {e.strerror or e}") from None
        load_plugin_library(trt, lib)
        self.trt, self.cudart = trt, runtime
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)  # kept: the engine must not outlive its runtime
        try:
            self.engine = self.runtime.deserialize_cuda_engine(plan)
        except Exception as e:  # noqa: BLE001 - some TensorRT versions raise instead of returning None
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UsageError(f"TensorRT could not deserialize {self.path} ({detail}): it is not an engine of this "
                             f"TensorRT or it is damaged; rebuild it with defmamba-deploy build-engine") from None
        if self.engine is None:
            raise UsageError(f"TensorRT could not deserialize {self.path}: it is not an engine of this TensorRT or it "
                             f"is damaged; rebuild it with defmamba-deploy build-engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name = self.inputs[0]
        self.output_names = [n for n in names if n not in self.inputs]
        dims = list(self.engine.get_tensor_shape(self.input_name))
        self.input_shape = [int(d) if int(d) >= 0 else sym for d, sym in zip(dims, _SYMBOLIC)]
        self.stream = cuda_check(runtime.cudaStreamCreate())

    def deactivate_impl(self) -> None:
        runtime = self.cudart
        for buf in self.buffers.values():
            buf.free()
        self.buffers.clear()
        if self._graph_exec is not None:
            runtime.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None
        if self.stream is not None:
            runtime.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = None  # the context goes before its engine, the engine before its runtime
        self.engine = None
        self.runtime = None

    # --- inference -------------------------------------------------------------------------------
    @property
    def outputs(self) -> list[str]:
        return self.output_names

    def check_input(self, x) -> np.ndarray:
        x = super().check_input(x)
        lo, hi = self.min_shape, self.max_shape
        if lo and hi and not all(a <= v <= b for a, v, b in zip(lo, x.shape, hi)):
            raise UsageError(f"input shape {list(x.shape)} is outside the engine's profile {list(lo)}..{list(hi)}: "
                             f"rebuild with a wider --min-shape/--max-shape")
        return x

    def _buffer(self, name: str, nbytes: int) -> DeviceBuffer:
        buf = self.buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = self.buffers[name] = DeviceBuffer(self.cudart, nbytes)
            self._graph_exec = None  # addresses changed: the captured graph is stale
        return buf

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def infer_impl(self, x: np.ndarray) -> list[np.ndarray]:
        runtime, trt = self.cudart, self.trt
        name = self.input_name
        self.context.set_input_shape(name, tuple(x.shape))
        inp = self._buffer(name, x.nbytes)
        self.context.set_tensor_address(name, inp.ptr)
        outs = {}
        for o in self.output_names:
            shape = tuple(self.context.get_tensor_shape(o))
            outs[o] = np.empty(shape, np.dtype(trt.nptype(self.engine.get_tensor_dtype(o))))
            self.context.set_tensor_address(o, self._buffer(o, outs[o].nbytes).ptr)
        h2d, d2h = runtime.cudaMemcpyKind.cudaMemcpyHostToDevice, runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(runtime.cudaMemcpyAsync(inp.ptr, x.ctypes.data, x.nbytes, h2d, self.stream))
        if self.cuda_graph:
            if self._graph_exec is None or self._graph_shape != x.shape:
                if self._graph_exec is not None:
                    runtime.cudaGraphExecDestroy(self._graph_exec)
                    self._graph_exec = None
                self._enqueue()  # one regular run first: TensorRT sets up shape-dependent state
                mode = runtime.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
                cuda_check(runtime.cudaStreamBeginCapture(self.stream, mode))
                self._enqueue()
                graph = cuda_check(runtime.cudaStreamEndCapture(self.stream))
                self._graph_exec = cuda_check(runtime.cudaGraphInstantiate(graph, 0))
                runtime.cudaGraphDestroy(graph)  # the executable graph is independent of it
                self._graph_shape = x.shape
            cuda_check(runtime.cudaGraphLaunch(self._graph_exec, self.stream))
        else:
            self._enqueue()
        for o, arr in outs.items():
            cuda_check(runtime.cudaMemcpyAsync(arr.ctypes.data, self.buffers[o].ptr, arr.nbytes, d2h, self.stream))
        cuda_check(runtime.cudaStreamSynchronize(self.stream))
        return [outs[o] for o in self.output_names]

    def run(self, x) -> list[np.ndarray]:
        """Every output, in the engine's order (same as :meth:`infer`)."""
        return self.infer(x)

    # --- for benchmarks ----------------------------------------------------------------------------
    def synchronize(self) -> None:
        if self.stream is not None:
            cuda_check(self.cudart.cudaStreamSynchronize(self.stream))

    def device_memory_mib(self) -> float | None:
        """The execution context's device memory plus this runner's I/O buffers (None when inactive)."""
        if self.engine is None:
            return None
        size = getattr(self.engine, "device_memory_size_v2", None)
        if size is None:
            size = getattr(self.engine, "device_memory_size", 0)
        return (int(size) + sum(b.nbytes for b in self.buffers.values())) / 2**20


# --- the registry entry -----------------------------------------------------------------------------

def require_engine_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it is a non-empty file; else one line (missing, a folder, empty)."""
    return require_file(path, "engine", NO_ENGINE, f" (0 bytes): {NO_ENGINE}")


def _require_runtime() -> None:
    try:
        require_tensorrt()
        cudart()
    except MissingDependencyError as e:
        raise Unavailable(str(e)) from None


def _given_engine(request: BackendRequest) -> EngineInfo:
    path = Path(request.file)
    if path.suffix == ".onnx":
        raise UsageError(f"{path} is an ONNX file; the trt backend runs an engine: build one with "
                         f"defmamba-deploy build-engine {path} and pass it with --engine")
    require_engine_file(path)
    info = EngineInfo.read(path)
    if info.precision != request.precision:
        raise Unavailable(f"{path} is a {info.precision} engine, not {request.precision}")
    why = info.problem(variant=resolve_name(request.model), backbone=request.backbone,
                       img_sizes=[tuple(request.img_size)], batches=request.batches)
    if why:
        raise UsageError(f"{path}: {why}")
    return info


def check_request(request: BackendRequest) -> None:
    """Fail fast, before any export or reference run: TensorRT and cuda-python here, the given engine
    fits the request, or an engine can be built for it."""
    _require_runtime()
    if request.file is not None:
        _given_engine(request)
    elif request.precision == "int8":
        raise Unavailable(INT8_NEEDS_ENGINE)


def _onnx_for(request: BackendRequest, variant: str, size: tuple[int, int], tag: str) -> Path:
    from ...onnx import export_onnx, read_sidecar

    path = Path(request.workdir) / f"{variant}_trt_{size[0]}x{size[1]}{tag}.onnx"
    try:
        side = read_sidecar(path) if path.is_file() else None
    except UsageError as e:  # an unusable sidecar: the file is exported again
        why = str(e)
    else:
        why = "none yet" if side is None else side.problem(
            variant=variant, portable=False, backbone=request.backbone, weights=request.weights,
            load_report=getattr(request, "load_report", None), img_sizes=[size], batches=request.batches)
    if why is not None:
        request.progress(f"exporting DefMamba-{variant} ONNX for trt ({size[0]}x{size[1]})")
        export_onnx(variant, request.weights, ema=request.ema, unsafe_pickle=request.unsafe_pickle,
                    allow_nonfinite=request.allow_nonfinite, img_size=size,
                    dynamic="batch", backbone=request.backbone, output=path)
    return path


def _reusable(engine: Path, onnx_path: Path, request: BackendRequest, size: tuple[int, int]) -> bool:
    """An engine built earlier in the workdir from this very ONNX file, for this precision and machine."""
    if not engine.is_file():
        return False
    try:
        info = EngineInfo.read(engine)
    except UsageError:
        return False
    if info.onnx_sha256 != sha256_file(onnx_path) or info.problem(precision=request.precision, img_sizes=[size],
                                                                  batches=request.batches):
        return False
    trt = require_tensorrt()
    lib = find_library("trt", None)
    return info.runtime_problem(trt.__version__, device_info()[1], sha256_file(lib)) is None


def _engine_for(request: BackendRequest) -> Path:
    """The engine a runner of ``request`` uses when none was given: built into ``request.workdir``."""
    from ...onnx import read_sidecar

    variant, size = resolve_name(request.model), tuple(int(v) for v in request.img_size)
    tag = "_backbone" if request.backbone else ""
    engine = Path(request.workdir) / f"{variant}_{request.precision}_{size[0]}x{size[1]}{tag}.plan"
    if not engine.is_file():  # it will be built: a folder it cannot go in fails before the export, not after
        check_writable(engine, "engine", fix="give a writable workdir")
    onnx_path = _onnx_for(request, variant, size, tag)
    if not _reusable(engine, onnx_path, request, size):
        most = max(request.batches or (1,))
        profile = compute_profile(read_sidecar(onnx_path),
                                  max_shape=f"{most}x{size[0]}x{size[1]}" if most > 32 else None)
        request.progress(f"building a {request.precision} TensorRT engine {engine} (this can take minutes)")
        build_engine(onnx_path, engine, precision=request.precision, profile=profile, progress=request.progress)
    return engine


def _create(request: BackendRequest) -> TrtRunner:
    check_request(request)
    try:
        engine = Path(request.file) if request.file is not None else _engine_for(request)
        return TrtRunner(engine)
    except Unavailable:
        raise
    except MissingDependencyError as e:  # e.g. the plugin library is not built
        raise Unavailable(str(e)) from None


register_backend(Backend(
    name="trt", help="TensorRT engine with the defmamba C++ plugins (NVIDIA GPU; --engine F or built on the fly)",
    create=_create, precisions=PRECISIONS, file_kind="engine", check=check_request))
