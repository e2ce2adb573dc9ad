"""Build TensorRT engines from our ONNX files (TensorRT 10 and 11).

Everything that does not need TensorRT is plain code the CPU tests exercise: optimisation profiles
from presets/flags/sidecars, the engine sidecar (:class:`EngineInfo`) and its compatibility
checks, and the float32 layer constraints (:mod:`.float32`). TensorRT is imported when a build
starts; without it every entry point raises one MissingDependencyError saying what to install.

Precision, by network typing:

- **weakly typed** (TensorRT 10's default): FP16 through ``BuilderFlag.FP16``; INT8 through
  ``BuilderFlag.INT8`` + the entropy calibrator (:mod:`.calibrator`, cache reused on rebuild). The
  nodes of the one float32 policy (``onnx.precision.float32_nodes``) become layer constraints
  (float32 precision and outputs) with ``OBEY_PRECISION_CONSTRAINTS``.
- **strongly typed** (the only kind in TensorRT 11, which removed the flags and calibrators; on
  TensorRT 10 by ``strongly_typed=True``): precision is written into the ONNX first, FP16 by
  ``onnx.precision.convert_fp16`` (same policy), INT8 by ``quantize_int8_qdq`` (Q/DQ on convs and
  matmuls, ranges calibrated in ONNX Runtime with our custom-op library), and the network is
  parsed strongly typed.

TensorRT finds our plugins from the ONNX nodes by op type = plugin name, version "1" (see
plugins/README.md); the plugin library is loaded into the registry before parsing.
"""
from __future__ import annotations

import datetime as _dt
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

from ... import __version__, checks
from ...errors import UsageError
from ...files import atomic_write_bytes, check_writable, read_json, require_file, sha256_file, write_pair
from ...model import MIN_INPUT_SIZE
from .env import device_info, load_plugin_library, require_tensorrt, trt_major

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_FORMAT = "defmamba-deploy/engine-sidecar/1"
REBUILD = "rebuild the engine with defmamba-deploy build-engine"
DEFAULT_PROFILES = {  # (batch, height, width) min / opt / max by the ONNX file's dynamic mode
    "batch": ((1, None, None), (8, None, None), (32, None, None)),
    "shape": ((1, 224, 224), (4, 384, 384), (16, 512, 512)),
}


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


def compute_profile(sidecar, *, preset: dict | None = None, min_shape=None, opt_shape=None,
                    max_shape=None) -> ShapeProfile:
    """The optimisation profile for an exported ONNX file with ``sidecar`` (an OnnxSidecar; None for
    a file of unknown origin: a dynamic-batch 224x224 export is assumed).

    Order of precedence: explicit ``--min/--opt/--max-shape`` flags, then the preset's
    ``[profile]``, then defaults for the file's dynamic mode. Dimensions the ONNX file fixes must
    keep their exported value; min <= opt <= max; sides >= the model minimum.
    """
    dynamic = sidecar.dynamic if sidecar is not None else "batch"
    exp_b = int(sidecar.export_batch) if sidecar is not None else 1
    exp_h, exp_w = (int(v) for v in (sidecar.export_input_size if sidecar is not None else (224, 224)))
    if dynamic not in ("batch", "shape", "none"):
        raise UsageError(f"the ONNX sidecar gives an unknown dynamic mode {dynamic!r}: re-export the model")
    if dynamic == "none":
        base = ((exp_b, exp_h, exp_w),) * 3
    else:
        base = tuple(tuple(exp_h if (i == 1 and v is None) else exp_w if (i == 2 and v is None) else v
                           for i, v in enumerate(s)) for s in DEFAULT_PROFILES[dynamic])
    if preset and "profile" in preset:
        base = tuple(parse_shape(preset["profile"][k]) for k in ("min", "opt", "max"))
    shapes = [parse_shape(flag) if flag is not None else b for flag, b in zip((min_shape, opt_shape, max_shape), base)]
    for name, (b, h, w) in zip(("min", "opt", "max"), shapes):
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
    return ShapeProfile(*[(b, 3, h, w) for b, h, w in shapes])


# --- the engine sidecar ------------------------------------------------------------------------------

def engine_sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(str(engine) + ".json")


@dataclass
class EngineInfo:
    """The engine sidecar, ``<engine>.json``: what the engine was built from, for which TensorRT, GPU
    and plugin library, and its profile. Written with the engine as one pair; checked before use."""

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
    backbone: bool = False
    strongly_typed: bool = False
    fp32_layers: list[str] = field(default_factory=list)
    toolkit_version: str = __version__
    created: str = ""
    format: str = ENGINE_FORMAT

    # --- reading -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, source: str = "engine sidecar") -> "EngineInfo":
        if not isinstance(data, dict):
            raise UsageError(f"{source} holds a JSON {type(data).__name__}, not an object: {REBUILD}")
        if data.get("format", ENGINE_FORMAT) != ENGINE_FORMAT:
            raise UsageError(f"{source} has format {data.get('format')!r}, not {ENGINE_FORMAT!r}: {REBUILD}")
        required = ["tensorrt_version", "compute_capability", "precision", "profile"]
        missing = [k for k in required if k not in data]
        if missing:
            raise UsageError(f"{source} lacks {', '.join(missing)}: {REBUILD}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for k in ("gpu_name", "plugin_library", "plugin_library_sha256", "onnx_path", "onnx_sha256"):
            values.setdefault(k, "")
        wrong = [k for k in ("tensorrt_version", "compute_capability", "precision", "gpu_name", "plugin_library",
                             "plugin_library_sha256", "onnx_path", "onnx_sha256") if not isinstance(values[k], str)]
        wrong += [k for k in ("backbone", "strongly_typed") if not isinstance(values.get(k, False), bool)]
        if not isinstance(values.get("fp32_layers", []), list):
            wrong.append("fp32_layers")
        if wrong:
            k = wrong[0]
            raise UsageError(f"{source}: {k} is {values[k]!r}, which is not what build-engine writes: {REBUILD}")
        info = cls(**values)
        prof = info.profile

        def _shape(v) -> bool:
            return isinstance(v, list) and len(v) == 4 and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                               for d in v)

        ok = isinstance(prof, dict) and all(_shape(prof.get(k)) for k in ("min", "max"))
        if not ok:
            raise UsageError(f"{source} gives a profile {prof!r}, not min/opt/max shapes (batch, 3, height, width): {REBUILD}")
        if info.precision not in PRECISIONS:
            raise UsageError(f"{source} gives an unknown precision {info.precision!r}: {REBUILD}")
        return info

    @classmethod
    def read(cls, engine: str | os.PathLike) -> "EngineInfo":
        """The sidecar of ``engine``, or a one-line UsageError (missing, not JSON, not a sidecar)."""
        p = engine_sidecar_path(engine)
        if not os.path.lexists(p):
            raise UsageError(f"{p} is missing: engines are checked against the sidecar written by build-engine; "
                             f"rebuild the engine")
        return cls.from_dict(read_json(p, "engine sidecar", REBUILD), str(p))

    def to_dict(self) -> dict:
        return asdict(self)

    # --- what it says ----------------------------------------------------------------------------
    @property
    def min_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.profile["min"])

    @property
    def max_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.profile["max"])

    # --- compatibility -----------------------------------------------------------------------------
    def runtime_problem(self, tensorrt_version: str, compute_capability: str | None,
                        plugin_sha256: str | None = None) -> str | None:
        """Why the engine cannot run with this TensorRT, GPU and plugin library, or None."""
        if self.tensorrt_version != tensorrt_version:
            return (f"engine was built with TensorRT {self.tensorrt_version}, this is TensorRT {tensorrt_version}: "
                    f"engines are not portable across versions; {REBUILD}")
        if compute_capability is not None and self.compute_capability != compute_capability:
            return (f"engine was built for compute capability {self.compute_capability} ({self.gpu_name}), this GPU "
                    f"is {compute_capability}: rebuild it on this GPU")
        if plugin_sha256 is not None and self.plugin_library_sha256 not in ("", None, plugin_sha256):
            return ("the TensorRT plugin library differs from the one the engine was built with: rebuild the "
                    "engine or pass the original library with --plugins")
        return None

    def problem(self, *, variant: str | None = None, backbone: bool | None = None, precision: str | None = None,
                img_sizes: Sequence[tuple[int, int]] = (), batches: Sequence[int] = ()) -> str | None:
        """Why this engine cannot stand in for a run with these settings, or None (None = not checked)."""
        if variant is not None and self.variant not in (None, variant):
            return f"it was built from DefMamba-{self.variant}, not DefMamba-{variant}"
        if backbone is not None and self.backbone != backbone:
            return "it is the backbone engine" if self.backbone else "it is the classifier engine"
        if precision is not None and self.precision != precision:
            return f"it is a {self.precision} engine, not {precision}"
        lo, hi = self.min_shape, self.max_shape
        for b in batches:
            if not lo[0] <= b <= hi[0]:
                return f"batch {b} is outside its profile (batch {lo[0]}..{hi[0]}); rebuild with a wider --min/--max-shape"
        for h, w in img_sizes:
            if not (lo[2] <= h <= hi[2] and lo[3] <= w <= hi[3]):
                return (f"input size {h}x{w} is outside its profile ({lo[2]}x{lo[3]}..{hi[2]}x{hi[3]}); rebuild with a "
                        f"wider --min/--max-shape (and an ONNX file exported with --dynamic shape)")
        return None


def read_engine_sidecar(engine: str | os.PathLike) -> EngineInfo:
    return EngineInfo.read(engine)


def check_engine_compatible(info: EngineInfo, tensorrt_version: str, compute_capability: str | None,
                            plugin_sha256: str | None = None) -> None:
    """Raise UsageError when the engine cannot run here (TensorRT version, GPU arch, plugin library)."""
    why = info.runtime_problem(tensorrt_version, compute_capability, plugin_sha256)
    if why:
        raise UsageError(why)


# --- the build itself (needs TensorRT and a GPU) --------------------------------------------------------

MAX_WORKSPACE_GIB = 1024.0  # beyond any GPU's memory: a larger value is a typo


def _validate_build(precision: str, workspace_gib: float) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    checks.number(workspace_gib, "--workspace (GiB)", low=0, low_open=True, high=MAX_WORKSPACE_GIB)


def _has_int8_cache(calibration_cache) -> bool:
    if not calibration_cache:
        return False
    cache = Path(calibration_cache)
    return cache.is_file() or cache.with_suffix(".ranges.json").is_file()


def _strongly_typed(trt, requested: bool | None) -> bool:
    major = trt_major(trt.__version__)
    if requested is None:
        return major >= 11
    if not requested and major >= 11:
        raise UsageError(f"TensorRT {trt.__version__} builds strongly typed networks only (builder precision flags "
                         f"were removed): drop --no-strongly-typed")
    return bool(requested)


def check_outputs(engine: str | os.PathLike, timing_cache: str | os.PathLike | None = None,
                  calibration_cache: str | os.PathLike | None = None, strongly_typed: bool = False, *,
                  fix: str = "choose another path") -> None:
    """Every file a build will write can be written (one UsageError line if not), checked before the build:
    the engine and its sidecar, the timing cache, and the INT8 calibration cache a calibration writes
    (the ``.ranges.json`` of the Q/DQ path when ``strongly_typed``, else the calibrator's cache)."""
    check_writable(engine, "engine", fix=fix)
    check_writable(engine_sidecar_path(engine), "engine sidecar", fix=fix)
    if timing_cache:
        check_writable(timing_cache, "timing cache", fix="choose another --timing-cache")
    if calibration_cache:
        cache = Path(calibration_cache)
        check_writable(cache.with_suffix(".ranges.json") if strongly_typed else cache, "calibration cache", fix=fix)


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
    strongly_typed: bool | None = None,
    policy=None,
    verbose: bool = False,
    progress: Callable[[str], None] | None = None,
) -> EngineInfo:
    """Parse ``onnx_path`` with our plugins, build an engine for ``profile``, write it and its sidecar.

    ``calibration``: batches (N, 3, H, W) float32 for INT8 (weakly typed: entropy calibrator;
    strongly typed: ranges for the Q/DQ rewrite). ``calibration_cache`` is reused when present.
    ``strongly_typed``: None = what the TensorRT version offers (TensorRT 11: yes, 10: no).
    ``policy``: the float32 policy (``onnx.precision.Fp32Policy``; default ``DEFAULT_POLICY``).
    """
    trt = require_tensorrt()  # first: without TensorRT nothing else is worth checking
    say = progress or (lambda m: None)
    _validate_build(precision, workspace_gib)
    from ...libs import find_library
    from ...onnx import load_onnx, read_sidecar
    from ...onnx.guard import has_input_guard, strip_input_guard
    from ...onnx.precision import DEFAULT_POLICY, Fp32Policy

    policy = DEFAULT_POLICY if policy is None else policy
    if not isinstance(policy, Fp32Policy):
        raise UsageError(f"the float32 policy must be an Fp32Policy, got {type(policy).__name__}")
    onnx_path, output = Path(onnx_path), Path(output)
    require_file(onnx_path, "ONNX file", "write one with defmamba-deploy export", ": re-export it")
    if output.resolve() == onnx_path.resolve():
        raise UsageError(f"the engine {output} would overwrite the ONNX file: choose another --output")
    if precision == "int8" and calibration is None and not _has_int8_cache(calibration_cache):
        raise UsageError("--int8 needs calibration images (--calib-images DIR) or an existing calibration cache")
    lib = find_library("trt", plugins)
    typed = _strongly_typed(trt, strongly_typed)
    check_outputs(output, timing_cache, calibration_cache if calibration is not None else None, typed)
    gpu_name, cc = device_info()

    model = load_onnx(onnx_path)
    guarded = has_input_guard(model)
    if guarded:  # the optimisation profile bounds the input size; the in-graph check is for ORT
        model = strip_input_guard(model)
    side = read_sidecar(onnx_path)

    load_plugin_library(trt, lib)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)

    fp32_layers: list[str] = []
    pin = None  # (kept nodes, all node names) for the weakly typed reduced-precision path
    with tempfile.TemporaryDirectory(prefix="defmamba_trt_") as tmp:
        parse_path = onnx_path
        if typed and precision != "fp32":
            from ...onnx import precision as prec

            if precision == "fp16":
                model, report = prec.convert_fp16(model, keep_fp32=policy)
                fp32_layers = [str(n) for n, _, _ in report.kept_fp32]
            else:
                ranges = Path(calibration_cache).with_suffix(".ranges.json") if calibration_cache else None
                from ..calibration import quantize_int8_qdq  # calibrates in ORT with our op library

                model, report = quantize_int8_qdq(model, calibration or [], cache=ranges, keep_float=policy)
                fp32_layers = [str(n) for n, _, _ in report.skipped_nodes]
            parse_path = Path(tmp) / f"model_{precision}.onnx"
            say(f"TensorRT {trt.__version__}: {precision} expressed in the ONNX ({len(fp32_layers)} nodes kept float)")
        elif precision != "fp32":
            from ...onnx.precision import float32_nodes, name_nodes

            named = name_nodes(model)
            renamed = [n.name for n in named.graph.node] != [n.name for n in model.graph.node]
            pin = (float32_nodes(named, policy), {n.name for n in named.graph.node})
            model = named
            if renamed:
                parse_path = Path(tmp) / "model.onnx"
        if guarded and parse_path == onnx_path:
            parse_path = Path(tmp) / "model.onnx"
        if parse_path != onnx_path:
            import onnx as _onnx

            _onnx.save(model, str(parse_path))

        flags = 0
        if typed and trt_major(trt.__version__) == 10:  # TensorRT 11 networks are strongly typed without a flag
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

        if pin is not None:
            from .float32 import pin_float32_layers

            config.set_flag(trt.BuilderFlag.FP16)
            if precision == "int8":
                from .calibrator import EntropyCalibrator

                config.set_flag(trt.BuilderFlag.INT8)
                config.int8_calibrator = EntropyCalibrator(calibration or [], input_name, calibration_cache)
                config.set_calibration_profile(opt_profile)
            pins = pin_float32_layers(trt, network, *pin)
            fp32_layers = pins.layer_names
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            say(f"TensorRT {trt.__version__}: {precision} by builder flags; {pins.summary()}")

        say("building the engine (this can take minutes)")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise UsageError("TensorRT failed to build the engine (see its log above; try --verbose)")
        plan = bytes(memoryview(serialized))

    info = EngineInfo(
        tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc, precision=precision,
        profile=profile.as_dict(), plugin_library=str(lib), plugin_library_sha256=sha256_file(lib),
        onnx_path=str(onnx_path), onnx_sha256=sha256_file(onnx_path), variant=side.variant if side else None,
        backbone=bool(side.backbone) if side else False, strongly_typed=typed, fp32_layers=fp32_layers,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    write_pair(output, plan, engine_sidecar_path(output), info.to_dict())
    if timing_cache:
        atomic_write_bytes(timing_cache, bytes(memoryview(cache.serialize())))
    return info


# --- the build-engine command ------------------------------------------------------------------------

def default_engine_path(variant: str, precision: str) -> Path:
    from ...model import short_name

    return Path(f"defmamba_{short_name(variant)}_{precision}.plan")


def _sidecar_of(onnx_file: Path, variant: str):
    """The file's sidecar; for a file of unknown origin (none), one read off its input shape."""
    from ...onnx import OnnxSidecar, read_sidecar

    side = read_sidecar(onnx_file)
    if side is not None:
        return side
    from ...onnx import load_onnx

    model = load_onnx(onnx_file, check=False)  # a file that is not ONNX: one line saying what it is
    inits = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    dims = [d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    if len(dims) != 4:
        raise UsageError(f"{onnx_file} has an input of shape {dims}, not (batch, 3, height, width): is it a DefMamba export?")
    fixed = [isinstance(d, int) for d in dims]
    dynamic = "shape" if not (fixed[2] and fixed[3]) else "batch" if not fixed[0] else "none"
    size = [d if isinstance(d, int) else 224 for d in dims[2:]]
    return OnnxSidecar(variant=variant, inputs=[{"name": inputs[0].name, "shape": dims}], outputs=[], dynamic=dynamic,
                       export_batch=dims[0] if fixed[0] else 1, export_input_size=size)


def build_engine_for_cli(
    onnx_file: str | os.PathLike | None,
    *,
    model: str = "s",
    weights: str | os.PathLike | None = None,
    allow_nonfinite: bool = False,
    precision: str = "fp32",
    calib_images: str | os.PathLike | None = None,
    calib_samples: int | None = None,
    calib_batch: int = 8,
    preset: str | None = None,
    min_shape: str | None = None,
    opt_shape: str | None = None,
    max_shape: str | None = None,
    workspace_gib: float = 4.0,
    timing_cache: str | os.PathLike | None = None,
    plugins: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    strongly_typed: bool | None = None,
    verbose: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[Path, EngineInfo]:
    """``defmamba-deploy build-engine``: (engine path, its sidecar).

    Every argument is checked before the slow work (export, calibration, build): TensorRT and the GPU
    first, then files, shapes, preset and calibration settings. Without ``onnx_file`` the model is
    exported into a temporary folder (dynamic batch at 224x224, or the preset's size) and removed after.
    """
    trt = require_tensorrt()
    _validate_build(precision, workspace_gib)
    from ...data import list_images
    from ...libs import find_library
    from ...model import resolve_name
    from ...onnx import export_onnx, read_sidecar
    from ...onnx.presets import load_preset

    _strongly_typed(trt, strongly_typed)
    device_info()
    find_library("trt", plugins)
    variant = resolve_name(model)
    preset_data = load_preset(preset) if preset else None
    for flag, value in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)):
        if value is not None:
            parse_shape(value)
    if onnx_file is not None:
        onnx_file = require_file(onnx_file, "ONNX file", "write one with defmamba-deploy export, or leave it out to "
                                 "export --model now", ": re-export it")
        if onnx_file.suffix != ".onnx":
            raise UsageError(f"{onnx_file} is not an .onnx file: build-engine takes the ONNX file from export")
    if calib_images is not None and precision != "int8":
        raise UsageError("--calib-images is for --int8 engines")
    checks.count(calib_batch, "--calib-batch")
    checks.optional_count(calib_samples, "--calib-samples")
    if timing_cache is not None and Path(timing_cache).exists() and not Path(timing_cache).is_file():
        raise UsageError(f"--timing-cache {timing_cache} is not a file")
    side = _sidecar_of(onnx_file, variant) if onnx_file is not None else None
    out = Path(output) if output is not None else default_engine_path(side.variant if side else variant, precision)
    if out.suffix == ".json":
        raise UsageError(f"--output {out} ends in .json: that is the sidecar's name; give the engine file (.plan)")
    cache = out.with_suffix(".calib.cache") if precision == "int8" else None
    if precision == "int8":
        if calib_images is None and not _has_int8_cache(cache):
            raise UsageError(f"--int8 needs calibration images (--calib-images DIR) or an existing calibration cache ({cache})")
        if calib_images is not None:
            list_images(calib_images)  # a missing or empty folder fails here, before the export
    check_outputs(out, timing_cache, cache if calib_images is not None else None, _strongly_typed(trt, strongly_typed),
                  fix="choose another --output")

    say = progress or (lambda m: None)
    with tempfile.TemporaryDirectory(prefix="defmamba_engine_") as tmp:
        if onnx_file is None:
            # the preset's export settings, so that its profile fits the file
            p = preset_data or {}
            size = tuple(int(v) for v in p.get("img_size", (224, 224)))
            dynamic, batch = p.get("dynamic", "batch"), int(p.get("batch", 1))
            say(f"exporting DefMamba-{variant} ({size[0]}x{size[1]}, --dynamic {dynamic})")
            onnx_file = export_onnx(variant, weights, allow_nonfinite=allow_nonfinite, img_size=size, batch=batch,
                                    dynamic=dynamic,
                                    opset=int(p.get("opset", 17)), output=Path(tmp) / "model.onnx").path
            side = read_sidecar(onnx_file)
        prof = compute_profile(side, preset=preset_data, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape)
        calib = None
        if precision == "int8" and calib_images is not None:
            from ...data import calibration_batches

            pre = side.preprocessing or {}  # calibrate on the pixels the engine will be given
            calib = calibration_batches(calib_images, prof.opt[2:], calib_batch, calib_samples,
                                        **{k: pre[k] for k in ("interpolation", "crop_pct") if k in pre})
        info = build_engine(onnx_file, out, precision=precision, profile=prof, workspace_gib=workspace_gib,
                            timing_cache=timing_cache, plugins=plugins, calibration=calib, calibration_cache=cache,
                            strongly_typed=strongly_typed, verbose=verbose, progress=progress)
    return out, info
