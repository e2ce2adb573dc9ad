"""Build TensorRT engines from our ONNX files (TensorRT 10 and 11).

Everything that does not need TensorRT lives in plain functions that the CPU tests exercise:
optimisation profiles from presets/flags/sidecars, engine sidecars and the compatibility check,
and the precision plan. TensorRT itself is imported lazily; without it every entry point raises
one :class:`MissingDependencyError` saying what to install (the CLI turns that into exit code 2).

Precision, by TensorRT major version:

- **TensorRT 10** (weakly typed by default): FP16 through ``BuilderFlag.FP16``; INT8 through
  ``BuilderFlag.INT8`` + an entropy calibrator fed by our preprocessing (cache file reused on
  rebuild). The layers that must stay float32 (LayerNorms, the offset network that produces the
  sort key and the sampling offsets, the TokenSort input, the scan's float32 parameters) get
  ``layer.precision = float32`` and ``OBEY_PRECISION_CONSTRAINTS``.
- **TensorRT 11** (flags and calibrators removed, networks strongly typed): FP16 by converting
  the ONNX first (``onnx.precision.convert_fp16``, same float32 rule), INT8 by explicit
  quantisation (``onnx.precision.quantize_int8_qdq``: symmetric Q/DQ on convs and matmuls, ranges
  calibrated in ONNX Runtime with our custom-op library), then a strongly typed network.

TensorRT finds our plugins from the ONNX nodes by op type = plugin name, version "1" (see
plugins/README.md); the plugin library is loaded into the registry before parsing.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..errors import MissingDependencyError, UsageError
from ..model import MIN_INPUT_SIZE

TRT_INSTALL_HINT = ("TensorRT is not installed: pip install 'defmamba-deploy[tensorrt]' "
                    "(tensorrt, polygraphy, cuda-python) on a machine with an NVIDIA GPU and driver")
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_PROFILES = {  # (batch, height, width) min / opt / max by the ONNX file's dynamic mode
    "batch": ((1, None, None), (8, None, None), (32, None, None)),
    "shape": ((1, 224, 224), (4, 384, 384), (16, 512, 512)),
}


def require_tensorrt():
    """The ``tensorrt`` module, or a one-line MissingDependencyError."""
    try:
        import tensorrt as trt  # type: ignore
    except Exception:  # noqa: BLE001 - ImportError or a broken install (missing libnvinfer)
        raise MissingDependencyError(TRT_INSTALL_HINT) from None
    return trt


def load_plugin_library(trt, lib) -> None:
    """Register our plugin creators once per process (a second load_library of the same creators fails)."""
    registry = trt.get_plugin_registry()
    if registry.get_creator("SelectiveScan", "1", "") is None:
        if registry.load_library(str(lib)) is None:
            raise UsageError(f"TensorRT could not load the plugin library {lib}: rebuild it (bash scripts/build_plugins.sh)")


def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise UsageError(f"cannot read the TensorRT version {version!r}") from None


# --- optimisation profiles -------------------------------------------------------------------------

@dataclass(frozen=True)
class ShapeProfile:
    """min / opt / max input shapes (batch, 3, height, width) for one optimisation profile."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def as_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def parse_shape(text: str | Sequence[int]) -> tuple[int, int, int]:
    """'8x224x224', '8,224,224' (batch, H, W) or '8x3x224x224' -> (batch, H, W)."""
    if isinstance(text, (list, tuple)):
        values = [int(v) for v in text]
    else:
        try:
            values = [int(v) for v in str(text).replace(",", "x").split("x") if v.strip()]
        except ValueError:
            raise UsageError(f"shape {text!r} is not BxHxW (e.g. 8x224x224) or Bx3xHxW") from None
    if len(values) == 4:
        if values[1] != 3:
            raise UsageError(f"shape {text!r}: the channel dim must be 3")
        values = [values[0], values[2], values[3]]
    if len(values) != 3:
        raise UsageError(f"shape {text!r} is not BxHxW (e.g. 8x224x224) or Bx3xHxW")
    return values[0], values[1], values[2]


def compute_profile(sidecar: dict, *, preset: dict | None = None, min_shape=None, opt_shape=None,
                    max_shape=None) -> ShapeProfile:
    """The optimisation profile for an exported ONNX file.

    Order of precedence: explicit ``--min/--opt/--max-shape`` flags, then the preset's
    ``[profile]``, then defaults for the file's dynamic mode. Dimensions the ONNX file fixes must
    keep their exported value; min <= opt <= max; sides >= the model minimum.
    """
    dynamic = sidecar.get("dynamic", "batch")
    exp_b = int(sidecar.get("export_batch", 1))
    exp_h, exp_w = (int(v) for v in sidecar.get("export_input_size", (224, 224)))
    if dynamic == "none":
        base = ((exp_b, exp_h, exp_w),) * 3
    else:
        base = tuple(tuple(exp_h if (i == 1 and v is None) else exp_w if (i == 2 and v is None) else v
                           for i, v in enumerate(s)) for s in DEFAULT_PROFILES[dynamic])
    if preset and "profile" in preset:
        base = tuple(parse_shape(preset["profile"][k]) for k in ("min", "opt", "max"))
    shapes = [parse_shape(flag) if flag is not None else b for flag, b in zip((min_shape, opt_shape, max_shape), base)]
    names = ("min", "opt", "max")
    for name, (b, h, w) in zip(names, shapes):
        if b < 1:
            raise UsageError(f"--{name}-shape batch must be >= 1, got {b}")
        if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
            raise UsageError(f"--{name}-shape {h}x{w} is below the model minimum of {MIN_INPUT_SIZE} px")
        if dynamic in ("batch", "none") and (h, w) != (exp_h, exp_w):
            raise UsageError(f"--{name}-shape {h}x{w}: this ONNX file has a fixed {exp_h}x{exp_w} input "
                             f"(exported with --dynamic {dynamic}); re-export with --dynamic shape for other sizes")
        if dynamic == "none" and b != exp_b:
            raise UsageError(f"--{name}-shape batch {b}: this ONNX file has a fixed batch of {exp_b} (exported with --dynamic none)")
    for i, dim in enumerate(("batch", "height", "width")):
        lo, mid, hi = (s[i] for s in shapes)
        if not lo <= mid <= hi:
            raise UsageError(f"profile {dim}: need min <= opt <= max, got {lo}, {mid}, {hi}")
    full = [(b, 3, h, w) for b, h, w in shapes]
    return ShapeProfile(*full)


# --- sidecars and compatibility ---------------------------------------------------------------------

def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def engine_sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(str(engine) + ".json")


@dataclass
class EngineInfo:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: dict
    plugin_library: str
    plugin_library_sha256: str
    onnx_path: str
    onnx_sha256: str
    variant: str | None = None
    fp32_layers: list[str] = field(default_factory=list)
    toolkit_version: str = __version__
    created: str = ""
    format: str = "defmamba-deploy/engine-sidecar/1"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_engine_sidecar(engine: str | os.PathLike) -> dict:
    p = engine_sidecar_path(engine)
    if not p.is_file():
        raise UsageError(f"{p} is missing: engines are checked against the sidecar written by build-engine; rebuild the engine")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{p} is not valid JSON ({e}); rebuild the engine") from None


def check_engine_compatible(sidecar: dict, tensorrt_version: str, compute_capability: str | None,
                            plugin_sha256: str | None = None) -> None:
    """Raise UsageError when the engine cannot run here (TensorRT version, GPU arch, plugin library)."""
    built = sidecar.get("tensorrt_version")
    if built != tensorrt_version:
        raise UsageError(f"engine was built with TensorRT {built}, this is TensorRT {tensorrt_version}: engines are not "
                         f"portable across versions; rebuild it with defmamba-deploy build-engine")
    cc = sidecar.get("compute_capability")
    if compute_capability is not None and cc != compute_capability:
        raise UsageError(f"engine was built for compute capability {cc} ({sidecar.get('gpu_name')}), this GPU is "
                         f"{compute_capability}: rebuild it on this GPU")
    if plugin_sha256 is not None and sidecar.get("plugin_library_sha256") not in (None, plugin_sha256):
        raise UsageError("the TensorRT plugin library differs from the one the engine was built with: rebuild the "
                         "engine or pass the original library with --plugins")


# --- the build itself (needs TensorRT and a GPU) --------------------------------------------------------

def _device_info() -> tuple[str, str]:
    """(GPU name, 'major.minor') of device 0 through cuda-python."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore  # older cuda-python
        except ImportError:
            raise MissingDependencyError("cuda-python is not installed: pip install cuda-python") from None
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise MissingDependencyError(f"no usable CUDA device (cudaGetDeviceProperties: {err})")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


def build_engine(
    onnx_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    precision: str = "fp32",
    profile: ShapeProfile,
    workspace_gib: float = 4.0,
    timing_cache: str | os.PathLike | None = None,
    plugins: str | os.PathLike | None = None,
    calibration: Sequence | None = None,
    calibration_cache: str | os.PathLike | None = None,
    verbose: bool = False,
    progress=None,
) -> EngineInfo:
    """Parse ``onnx_path`` with our plugins, build an engine for ``profile`` and write it + sidecar.

    ``calibration``: batches (N, 3, H, W) float32 for INT8 (TensorRT 10: entropy calibrator;
    TensorRT 11: ranges for the Q/DQ rewrite). ``calibration_cache`` is reused when present.
    """
    trt = require_tensorrt()  # first: without TensorRT nothing else is worth checking
    say = progress or (lambda m: None)
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if workspace_gib <= 0:
        raise UsageError(f"--workspace must be > 0 GiB, got {workspace_gib}")
    from ..libs import find_library
    from ..onnx import load_onnx, read_sidecar
    from ..onnx.guard import has_input_guard, strip_input_guard

    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path)
    guarded = has_input_guard(model)
    if guarded:  # the optimisation profile bounds the input size; the in-graph check is for ORT
        model = strip_input_guard(model)
    side = read_sidecar(onnx_path) or {}
    lib = find_library("trt", plugins)
    major = trt_major(trt.__version__)
    gpu_name, cc = _device_info()
    if precision == "int8" and calibration is None and not (
            calibration_cache and (Path(calibration_cache).is_file() or Path(calibration_cache).with_suffix(".ranges.json").is_file())):
        raise UsageError("--int8 needs calibration images (--calib-images DIR) or an existing calibration cache")

    load_plugin_library(trt, lib)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)

    fp32_layers: list[str] = []
    parse_path = onnx_path
    strongly_typed = major >= 11
    tmpdir = tempfile.TemporaryDirectory(prefix="defmamba_trt_")
    try:
        if strongly_typed and precision != "fp32":
            from ..onnx import precision as prec  # noqa: F401 - the rewrites

            if precision == "fp16":
                converted, report = prec.convert_fp16(model)
            else:
                ranges = Path(calibration_cache).with_suffix(".ranges.json") if calibration_cache else None
                converted, report = prec.quantize_int8_qdq(model, calibration, cache=ranges)
            fp32_layers = [str(n[0]) for n in getattr(report, "kept_fp32", [])]
            parse_path = Path(tmpdir.name) / f"model_{precision}.onnx"
            import onnx as _onnx

            _onnx.save(converted, str(parse_path))
            say(f"TensorRT {trt.__version__}: {precision} expressed in the ONNX ({len(fp32_layers)} nodes kept float32)")
        elif guarded:
            import onnx as _onnx

            parse_path = Path(tmpdir.name) / "model.onnx"
            _onnx.save(model, str(parse_path))

        flags = 0
        if major == 10 and strongly_typed:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        say(f"parsing {parse_path}")
        if not parser.parse_from_file(str(parse_path)):
            errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
            raise UsageError(f"TensorRT could not parse {onnx_path}: {errors[:500]}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
        cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)

        opt_profile = builder.create_optimization_profile()
        input_name = network.get_input(0).name
        opt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
        config.add_optimization_profile(opt_profile)

        if not strongly_typed and precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
            if precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
                from .trt import EntropyCalibrator

                config.int8_calibrator = EntropyCalibrator(calibration or [], input_name, calibration_cache)
                config.set_calibration_profile(opt_profile)
            fp32_layers = _pin_float32_layers(trt, network)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            say(f"TensorRT {trt.__version__}: {precision} by builder flags, {len(fp32_layers)} layers pinned to float32")

        say("building the engine (this can take minutes)")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise UsageError("TensorRT failed to build the engine (see its log above; try --verbose)")
        output = Path(output)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent if str(output.parent) else ".")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(memoryview(serialized))
            os.replace(tmp, output)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if timing_cache:
            Path(timing_cache).write_bytes(memoryview(cache.serialize()))
    finally:
        tmpdir.cleanup()

    info = EngineInfo(
        tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc, precision=precision,
        profile=profile.as_dict(), plugin_library=str(lib), plugin_library_sha256=sha256_file(lib),
        onnx_path=str(onnx_path), onnx_sha256=sha256_file(onnx_path), variant=side.get("variant"),
        fp32_layers=fp32_layers, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    write_json_atomic(engine_sidecar_path(output), info.to_dict())
    return info


# Layers that must compute in float32 whatever the engine precision (TensorRT 10 weak typing).
FLOAT32_LAYER_RULES = (
    ("LayerNormalization", "LayerNorm statistics overflow/underflow in fp16"),
    ("conv_offset", "the offset network produces the sort key and the sampling offsets (MODEL_SPEC precision traps)"),
    ("TokenSort", "the sort key must be float32: in fp16 the reference positions collapse and the order changes"),
    ("DeformGather", "sampling positions are accumulated in float32 inside the plugin"),
)


def fp32_rule(layer_name: str, layer_type: str = "") -> str | None:
    """The reason a layer must stay float32, or None."""
    text = f"{layer_name} {layer_type}"
    for key, reason in FLOAT32_LAYER_RULES:
        if key in text:
            return reason
    return None


def _pin_float32_layers(trt, network) -> list[str]:
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if fp32_rule(layer.name, str(layer.type)) is None:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned
