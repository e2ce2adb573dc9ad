"""TensorRT plugin library (libdefmamba_trt_plugins.so).

CPU part (runs in CI, no GPU, no TensorRT runtime):
  * the C++ suite ``defmamba_test_trt_plugins`` (creators, fields, formats, symbolic shapes, build-time
    validation errors, error routes), run here so its failures show up in the pytest run;
  * the library loads with ``RTLD_NOW`` in a fresh process without libnvinfer, needs no libnvinfer /
    libcudart at all, and exports exactly ``getCreators`` and ``setLoggerFinder``.
GPU part (skips with the reason when TensorRT's Python package, cuda-python or a CUDA device is missing):
  each op as a one-node ONNX model, parsed by TensorRT's ONNX parser with no graph surgery, built and run,
  against the PyTorch reference; and a build-time shape error reported with the op, input and value.

Build first::

    bash scripts/fetch_ort_headers.sh && bash scripts/fetch_trt_headers.sh
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from defmamba_deploy.libs import find_library

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("DEFMAMBA_BUILD_DIR", ROOT / "build"))
BUILD_HINT = ("bash scripts/fetch_trt_headers.sh && cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && "
              "cmake --build build -j2 (needs the CUDA toolkit: the plugins link the CUDA kernels)")
EXPORTS = {"getCreators", "setLoggerFinder"}


@pytest.fixture(scope="module")
def trt_lib() -> Path:
    lib = find_library("trt", required=False)
    if lib is None:
        pytest.skip(f"libdefmamba_trt_plugins.so is not built; build it with: {BUILD_HINT}")
    return lib


def _test_executable() -> Path | None:
    if not BUILD_DIR.is_dir():
        return None
    found = sorted(BUILD_DIR.rglob("defmamba_test_trt_plugins"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in found if p.is_file() and os.access(p, os.X_OK)), None)


# ---- CPU -------------------------------------------------------------------------------------------------
def test_cpp_suite(trt_lib):
    exe = _test_executable()
    if exe is None:
        pytest.skip(f"defmamba_test_trt_plugins is not built (no TensorRT plugin build in {BUILD_DIR}); {BUILD_HINT}")
    proc = subprocess.run([str(exe), str(trt_lib)], capture_output=True, text=True, timeout=300)
    report = (proc.stdout[-6000:] + "\n" + proc.stderr[-6000:]).strip()
    assert proc.returncode == 0, f"{exe} failed (exit {proc.returncode}):\n{report}"
    assert "0 failures" in proc.stdout, report


def test_loads_without_libnvinfer(trt_lib):
    """RTLD_NOW resolves every symbol at load time: it fails if anything needed libnvinfer."""
    code = (
        "import ctypes, os, sys\n"
        "lib = ctypes.CDLL(sys.argv[1], mode=os.RTLD_NOW | os.RTLD_LOCAL)\n"
        "n = ctypes.c_int32(-1)\n"
        "get = lib.getCreators\n"
        "get.restype = ctypes.c_void_p\n"
        "get.argtypes = [ctypes.POINTER(ctypes.c_int32)]\n"  # int32_t& is a pointer in the ABI
        "assert get(ctypes.byref(n)) and n.value == 3, n.value\n"
        "maps = open('/proc/self/maps').read()\n"
        "assert 'libnvinfer' not in maps, 'libnvinfer got loaded'\n"
        "print('ok', n.value)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run([sys.executable, "-c", code, str(trt_lib)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok 3", proc.stdout + proc.stderr


def _dynamic_section(lib: Path) -> tuple[list[str], set[str], set[str]] | None:
    """(DT_NEEDED, defined dynamic symbols, undefined dynamic symbols) via binutils, or None."""
    readelf, nm = shutil.which("readelf"), shutil.which("nm")
    if readelf is None or nm is None:
        return None
    dyn = subprocess.run([readelf, "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[", 1)[1].split("]", 1)[0] for line in dyn.splitlines() if "(NEEDED)" in line]

    def symbols(*flags: str) -> set[str]:
        out = subprocess.run([nm, "-D", *flags, str(lib)], capture_output=True, text=True, check=True).stdout
        return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}

    return needed, symbols("--defined-only"), symbols("--undefined-only")


def test_no_tensorrt_or_cudart_dependency(trt_lib):
    info = _dynamic_section(trt_lib)
    if info is None:
        pytest.skip("readelf/nm (binutils) not available to inspect the ELF dynamic section")
    needed, defined, undefined = info
    assert not [n for n in needed if "nvinfer" in n or "cudart" in n or "libcuda." in n], needed
    assert not [s for s in undefined if "nvinfer" in s or s.startswith("cuda")], sorted(undefined)
    assert {s for s in defined if not s.startswith("_")} == EXPORTS, sorted(defined)


# ---- GPU: TensorRT end to end ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trt_env(trt_lib):
    try:
        import tensorrt as trt  # type: ignore
    except Exception as e:  # noqa: BLE001 - not installed, or installed without its libraries
        pytest.skip(f"TensorRT's Python package is not usable here ({type(e).__name__}); GPU-only test")
    from defmamba_deploy.errors import MissingDependencyError
    from defmamba_deploy.runtime.tensorrt.env import cudart as load_cudart

    try:
        cudart = load_cudart()
    except MissingDependencyError as e:
        pytest.skip(f"{e}; GPU-only test")
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        pytest.skip("no CUDA device; GPU-only test")

    registry = trt.get_plugin_registry()
    get_creator = getattr(registry, "get_creator", None) or registry.get_plugin_creator
    if get_creator("SelectiveScan", "1", "") is None:
        assert registry.load_library(str(trt_lib)) is not None, "IPluginRegistry.load_library failed"
    for name in ("SelectiveScan", "DeformGather", "TokenSort"):
        assert get_creator(name, "1", "") is not None, f"{name} v1 is not registered in namespace ''"
    return trt, cudart


class _CaptureLogger:
    def __new__(cls, trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.messages: list[str] = []

            def log(self, severity, msg):
                self.messages.append(str(msg))

        return Logger()


def _run_single_op(trt, cudart, op: str, arrays: dict[str, np.ndarray], **attrs):
    """Parse a one-node model (as exported: no plugin_* attributes), build for exactly these shapes, run."""
    from defmamba_deploy.onnx.single_op import single_op_model
    from defmamba_deploy.runtime.tensorrt.env import DeviceBuffer
    from defmamba_deploy.runtime.tensorrt.env import cuda_check as _check

    model = single_op_model(op, arrays, dynamic=True, **attrs)
    assert not any(a.name.startswith("plugin_") for a in model.graph.node[0].attribute)
    logger = _CaptureLogger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        return None, logger.messages + [errors]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, a in arrays.items():
        profile.set_shape(name, a.shape, a.shape, a.shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        return None, logger.messages
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    stream = _check(cudart.cudaStreamCreate())
    h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    buffers, outputs = [], {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            a = np.ascontiguousarray(arrays[name])
            context.set_input_shape(name, a.shape)
            buf = DeviceBuffer(cudart, a.nbytes)
            _check(cudart.cudaMemcpy(buf.ptr, a.ctypes.data, a.nbytes, h2d))
            context.set_tensor_address(name, buf.ptr)
            buffers.append(buf)
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            out = np.empty(tuple(context.get_tensor_shape(name)), np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
            buf = DeviceBuffer(cudart, out.nbytes)
            context.set_tensor_address(name, buf.ptr)
            buffers.append(buf)
            outputs[name] = (out, buf)
    assert context.execute_async_v3(int(stream)), logger.messages
    for out, buf in outputs.values():
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, buf.ptr, out.nbytes, d2h, stream))
    _check(cudart.cudaStreamSynchronize(stream))
    cudart.cudaStreamDestroy(stream)
    return {k: v[0] for k, v in outputs.items()}, logger.messages


def _rnd(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_selective_scan_trt(trt_env, dtype):
    import torch

    from defmamba_deploy.ops import REFERENCE

    trt, cudart = trt_env
    rng = np.random.default_rng(0)
    bt, ch, g, n, length = 2, 6, 3, 16, 300
    a = {"u": _rnd(rng, bt, ch, length), "delta": _rnd(rng, bt, ch, length) - 1, "A": -np.exp(_rnd(rng, ch, n) * 0.5),
         "B": _rnd(rng, bt, g, n, length), "C": _rnd(rng, bt, g, n, length), "D": _rnd(rng, ch),
         "delta_bias": _rnd(rng, ch) * 0.3}
    for k in ("u", "delta", "B", "C"):
        a[k] = a[k].astype(dtype)
    out, log = _run_single_op(trt, cudart, "SelectiveScan", a, delta_softplus=1)
    assert out is not None, "\n".join(log[-20:])
    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in a.items()}
    ref = REFERENCE["selective_scan"](t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"], True).numpy()
    y = out["y"].astype(np.float64)
    tol = 5e-5 if dtype == np.float32 else 2e-3
    np.testing.assert_allclose(y, ref, rtol=0, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_deform_gather_trt(trt_env, dtype):
    import torch

    from defmamba_deploy.ops import REFERENCE

    trt, cudart = trt_env
    rng = np.random.default_rng(1)
    a = {"x": _rnd(rng, 2, 8, 14, 14), "offset": _rnd(rng, 2, 3, 14, 14) * 2, "rpe_table": _rnd(rng, 8, 7, 7)}
    a = {k: v.astype(dtype) for k, v in a.items()}
    out, log = _run_single_op(trt, cudart, "DeformGather", a)
    assert out is not None, "\n".join(log[-20:])
    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in a.items()}
    ref = REFERENCE["deform_gather"](t["x"], t["offset"], t["rpe_table"]).numpy()
    np.testing.assert_allclose(out["feat"].astype(np.float64), ref, rtol=0,
                               atol=1e-4 if dtype == np.float32 else 2e-2)


def test_token_sort_trt(trt_env):
    import torch

    from defmamba_deploy.ops.token_sort import sort_key

    trt, cudart = trt_env
    rng = np.random.default_rng(2)
    a = {"token_offset": _rnd(rng, 2, 3136)}
    out, log = _run_single_op(trt, cudart, "TokenSort", a)
    assert out is not None, "\n".join(log[-20:])
    perm, inv = out["perm"], out["inv_perm"]
    assert perm.dtype == np.int64 and inv.dtype == np.int64
    np.testing.assert_array_equal(np.take_along_axis(inv, perm, -1), np.broadcast_to(np.arange(3136), perm.shape))
    key = sort_key(torch.from_numpy(a["token_offset"])).numpy()
    assert (np.diff(np.take_along_axis(key, perm, -1), axis=-1) >= -2.5e-7).all()


def test_build_time_error_message(trt_env, capfd):
    """B's L differs from u's: the build fails with a message naming the op, the input and the value.

    It goes to TensorRT's logger when TensorRT handed the library an ILoggerFinder (setLoggerFinder), else
    to stderr; either way the user sees it.
    """
    trt, cudart = trt_env
    rng = np.random.default_rng(3)
    a = {"u": _rnd(rng, 1, 3, 10), "delta": _rnd(rng, 1, 3, 10), "A": _rnd(rng, 3, 4), "B": _rnd(rng, 1, 3, 4, 11),
         "C": _rnd(rng, 1, 3, 4, 11), "D": _rnd(rng, 3), "delta_bias": _rnd(rng, 3)}
    out, log = _run_single_op(trt, cudart, "SelectiveScan", a)
    assert out is None
    expected = "SelectiveScan: input 'B' (index 3) dim 3 (L) must equal dim 2 of input 'u' (L = 10), got 11"
    logged = "\n".join(log)
    stderr = capfd.readouterr().err
    assert expected in logged or expected in stderr, f"TensorRT log:\n{logged}\nstderr:\n{stderr}"
