"""ONNX Runtime: sessions with the ``defmamba`` custom ops, the ``ort`` and ``ort-portable`` runners,
and a service-ready ``Predictor``.

``create_session`` registers the custom-op library automatically when the model needs it (found
by :func:`find_library`, or given explicitly) and fails with one clear line when it cannot; every
ORT session of the package (runners, the op benchmark, calibration) is made here.
ONNX Runtime sessions are safe for concurrent ``run`` calls, and neither ``OrtRunner`` nor
``Predictor`` keeps mutable state per call except the last inference time, so one instance can
serve many threads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MissingDependencyError, UsageError
from ..files import check_writable
from ..libs import find_library
from ..onnx import custom_ops_used, load_onnx, read_sidecar
from .base import Runner
from .registry import Backend, BackendRequest, Unavailable, register_backend


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("onnxruntime is not installed: pip install 'defmamba-deploy[cpu]' (or [gpu] for "
                                     "onnxruntime-gpu; never both)") from None
    return ort


def create_session(
    model,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    *,
    library: str | os.PathLike | None = None,
    register_library: bool | None = None,
    options=None,
):
    """An ``onnxruntime.InferenceSession`` for a DefMamba ONNX file or ``onnx.ModelProto``.

    ``providers``: ORT execution providers (default: CUDA first when available, then CPU).
    ``threads``: intra-op threads (default: ORT's choice, all cores). ``library``: explicit path of
    ``libdefmamba_ort_ops.so``; by default it is registered when the model uses ``defmamba`` ops.
    ``options``: an ``onnxruntime.SessionOptions`` to start from (threads and the library are added).
    """
    ort = _ort()
    if isinstance(model, (str, os.PathLike)):
        path, proto = Path(model), load_onnx(model)
    else:
        path, proto = Path("<in-memory model>"), model
    needed = custom_ops_used(proto)
    so = options or ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise UsageError(f"threads must be >= 1, got {threads}")
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if register_library is None:
        register_library = bool(needed) or library is not None
    if register_library:
        try:
            lib = find_library("ort", library)
        except MissingDependencyError as e:
            if not needed:  # asked for explicitly by a model without custom ops: the library's own line
                raise
            raise MissingDependencyError(
                f"{path} uses custom ops {', '.join('defmamba::' + n for n in needed)} but {e}; "
                f"or export a portable model (defmamba-deploy export --portable)"
            ) from None
        try:
            so.register_custom_ops_library(str(lib))
        except Exception as e:  # noqa: BLE001 - ORT raises its own Fail for a library it cannot load
            detail = _first_line(e).split(f"{lib}: ")[-1]  # the loader's reason, without the path again
            raise MissingDependencyError(f"onnxruntime could not load the custom-op library {lib}: {detail}; "
                                         f"rebuild it (bash scripts/build_plugins.sh) or pass the built "
                                         f"libdefmamba_ort_ops.so") from None
    if so.optimized_model_filepath:  # ORT writes the optimised model while it makes the session
        check_writable(so.optimized_model_filepath, "optimized model")
    available = ort.get_available_providers()
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    else:
        missing = [p for p in providers if p not in available]
        if missing:
            raise UsageError(f"execution provider(s) {missing} not available in this onnxruntime (available: {available})")
    try:
        return ort.InferenceSession(proto.SerializeToString(), sess_options=so, providers=list(providers))
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise UsageError(f"onnxruntime could not load {path}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    """An ORT exception as one line, without its '[ONNXRuntimeError] : 1 : FAIL :' preamble."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    first = text.splitlines()[0]
    if first.startswith("[ONNXRuntimeError]"):  # "[ONNXRuntimeError] : <code> : <NAME> : <message>"
        first = first.split(" : ", 3)[-1]
    return first[:300]


class OrtRunner(Runner):
    """Validated inference on one ONNX Runtime session (the custom-op or the portable model)."""

    backend = "ort"

    def __init__(self, model_path: str | os.PathLike, providers=None, threads=None, library=None, *,
                 name: str | None = None, activate: bool = True) -> None:
        super().__init__(name)
        self.path = Path(model_path)
        self.providers, self.threads, self.library = providers, threads, library
        self.sidecar = read_sidecar(model_path)
        self.session = None
        if activate:  # the session is made at construction, so a bad file fails where it is named
            self.activate()

    def activate_impl(self) -> None:
        self.session = create_session(self.path, self.providers, self.threads, library=self.library)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: x})

    def run(self, x) -> list[np.ndarray]:
        """Every output for a checked batch (kept for callers of the service API)."""
        return self.infer(x)


# --- registration -----------------------------------------------------------------------------------

def check_given_onnx(request: BackendRequest) -> None:
    """The ONNX file a user gave must be readable and fit the request (variant, weights, size)."""
    if request.file is None:
        return
    path = Path(request.file)
    load_onnx(path, check=False)
    side = read_sidecar(path)
    if side is None:
        return  # a file from elsewhere: ORT and the input checks decide
    if side.variant != request.model:
        raise UsageError(f"{path} was exported from DefMamba-{side.variant}, not DefMamba-{request.model}: "
                         f"pass --model {side.variant[0]} or the right --onnx file")
    why = side.weights_problem(request.weights, request.load_report) if request.check_weights else None
    if why:
        raise UsageError(f"{path}: {why}")
    size = tuple(request.img_size)
    if side.dynamic != "shape" and side.img_size != size:
        raise UsageError(f"{path} was exported for {side.img_size[0]}x{side.img_size[1]} only (--dynamic "
                         f"{side.dynamic}); use that --img-size or re-export with --dynamic shape")


def check_custom_op_request(request: BackendRequest) -> None:
    """:func:`check_given_onnx`, and a library the user named must be one (before any export or run)."""
    if request.library is not None:
        find_library("ort", request.library)
    check_given_onnx(request)


def _onnx_for(request: BackendRequest, portable: bool) -> Path:
    """The ONNX file a runner of ``request`` uses: the given one (checked against the request), the one
    ``defmamba-deploy export`` wrote in the current folder when it matches, or a fresh export."""
    # here, not at the top: the exporter imports torch, which serving an ONNX file must not need
    from ..onnx import default_output, export_onnx

    form = "portable" if portable else "custom-op"
    size = tuple(request.img_size)
    if request.file is not None:
        check_given_onnx(request)
        return Path(request.file)
    if request.use_exported:
        local = default_output(request.model, portable=portable, backbone=request.backbone)
        if local.is_file():
            try:
                side = read_sidecar(local)
            except UsageError as e:  # a broken sidecar: the file does not match, a fresh export is used
                why = str(e)
            else:
                why = "it has no .onnx.json sidecar" if side is None else side.problem(
                    variant=request.model, portable=portable, backbone=request.backbone, weights=request.weights,
                    load_report=request.load_report, img_sizes=[size], batches=request.batches)
            if why is None:
                request.progress(f"using {local} (written by defmamba-deploy export; --reexport checks a fresh export instead)")
                return local
            request.progress(f"not using {local}: {why}")
    # one dynamic-batch file per resolution: the fixed spatial size lets ORT fold the shape arithmetic
    path = Path(request.workdir) / (f"{request.model}_{'portable' if portable else 'custom'}_{size[0]}x{size[1]}"
                                    f"{'_backbone' if request.backbone else ''}.onnx")
    if not path.exists():
        request.progress(f"exporting {form} ONNX for {'ort-portable' if portable else 'ort'}")
        export_onnx(request.model, request.weights, ema=request.ema, unsafe_pickle=request.unsafe_pickle,
                    allow_nonfinite=request.allow_nonfinite, img_size=size,
                    dynamic="batch", portable=portable, backbone=request.backbone, output=path)
    return path


def _create(portable: bool):
    def create(request: BackendRequest) -> OrtRunner:
        _ort()
        path = _onnx_for(request, portable)
        try:
            return OrtRunner(path, threads=request.threads, library=None if portable else request.library,
                             name="ort-portable" if portable else "ort")
        except MissingDependencyError as e:
            if request.library is not None:  # a library the user named is an error, not a backend to skip
                raise
            raise Unavailable(str(e)) from None

    return create


register_backend(Backend("ort", "ONNX Runtime with the defmamba C++ custom ops", _create(False), file_kind="onnx",
                         check=check_custom_op_request))
register_backend(Backend("ort-portable", "ONNX Runtime on the standard-ops export (no library needed)", _create(True),
                         file_kind="onnx", portable=True, check=check_given_onnx))
