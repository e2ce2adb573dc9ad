"""Export DefMamba to ONNX: custom ``defmamba`` ops (default) or standard ops only (``portable``).

The custom-op graph is traced once with the TorchScript exporter (see ``symbolics.py`` for why);
the portable graph is that same graph with every ``defmamba`` node expanded into standard ONNX
ops (``portable.py``), so both files compute the same thing by construction. Output files are
written to a temporary name and renamed, so a failed export leaves nothing half-written. A JSON
sidecar (``<model>.onnx.json``) records what was exported.
"""
from __future__ import annotations

import datetime as _dt
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from .. import __version__
from ..data import (DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, check_crop_pct, check_interpolation,
                    preprocessing_record)
from ..errors import UsageError
from ..files import check_writable, write_pair
from ..model import MIN_INPUT_SIZE, check_input_size, create_model, resolve_name, short_name
from ..ops import use_implementations
from .check import custom_ops_used
from .guard import add_input_guard
from .schemas import DOMAIN, VERSION, register_schemas
from .sidecar import FORMAT, RANDOM_INIT_SEED, OnnxSidecar, sidecar_path
from .symbolics import export_implementations

MIN_OPSET, MAX_OPSET = 17, 20
DYNAMIC_MODES = ("batch", "shape", "none")
INPUT_NAME = "input"


@dataclass
class ExportResult:
    path: Path
    sidecar_path: Path
    sidecar: OnnxSidecar


def default_output(model: str, portable: bool = False, backbone: bool = False) -> Path:
    name = f"defmamba_{short_name(model)}" + ("_backbone" if backbone else "") + ("_portable" if portable else "")
    return Path(f"{name}.onnx")


def _validate(img_size: tuple[int, int], batch: int, dynamic: str, opset: int) -> None:
    if dynamic not in DYNAMIC_MODES:
        raise UsageError(f"--dynamic {dynamic!r} is not one of {', '.join(DYNAMIC_MODES)}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} (GridSample needs 16+, the exporter stops at {MAX_OPSET})")
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    check_input_size(*img_size)


def _io_spec(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    def spec(vi):
        dims = [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]
        return {"name": vi.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name}

    inits = {i.name for i in model.graph.initializer}
    return [spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output]


def export_onnx(
    model: str = "s",
    weights: str | os.PathLike | None = None,
    *,
    ema: bool = False,
    unsafe_pickle: bool = False,
    allow_nonfinite: bool = False,
    img_size: tuple[int, int] = (224, 224),
    batch: int = 1,
    dynamic: str = "batch",
    opset: int = 17,
    portable: bool = False,
    backbone: bool = False,
    output: str | os.PathLike | None = None,
    interpolation: str = DEFAULT_INTERPOLATION,
    crop_pct: float = DEFAULT_CROP_PCT,
) -> ExportResult:
    """Export DefMamba ``model`` to ONNX and return the file, its sidecar path and contents.

    ``dynamic``: ``batch`` (dynamic batch), ``shape`` (dynamic batch, height and width) or ``none``.
    ``portable``: standard ONNX ops only (runs in a stock onnxruntime, slower).
    ``interpolation``, ``crop_pct``: the preprocessing the sidecar records for readers (``Predictor``);
    the defaults are the authors' evaluation transform (docs/model.md, Input and preprocessing).
    """
    _validate(img_size, batch, dynamic, opset)
    check_interpolation(interpolation)
    check_crop_pct(crop_pct)
    name = resolve_name(model)
    out = Path(output) if output is not None else default_output(name, portable, backbone)
    if out.suffix != ".onnx":
        raise UsageError(f"output {out} must end in .onnx")
    # before the export (minutes for the larger variants), not after it
    check_writable(out, "ONNX output", fix="choose another --output")
    check_writable(sidecar_path(out), "sidecar", fix="choose another --output")
    net = create_model(name, weights, ema=ema, unsafe_pickle=unsafe_pickle, allow_nonfinite=allow_nonfinite,
                       backbone=backbone, seed=RANDOM_INIT_SEED)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *img_size, generator=g)
    output_names = [f"feat{i}" for i in range(4)] if backbone else ["logits"]
    axes: dict[str, dict[int, str]] = {}
    if dynamic != "none":
        in_axes = {0: "batch"} if dynamic == "batch" else {0: "batch", 2: "height", 3: "width"}
        axes[INPUT_NAME] = in_axes
        for o in output_names:
            axes[o] = {0: "batch"} if (dynamic == "batch" or not backbone) else {0: "batch", 2: f"{o}_height", 3: f"{o}_width"}

    register_schemas()
    with tempfile.TemporaryDirectory(prefix="defmamba_export_") as tmp:
        raw = Path(tmp) / "model.onnx"
        with use_implementations(**export_implementations()), warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about the Python-side size check
            torch.onnx.export(
                net, (x,), str(raw), dynamo=False, input_names=[INPUT_NAME], output_names=output_names,
                dynamic_axes=axes or None, opset_version=opset, custom_opsets={DOMAIN: VERSION}, do_constant_folding=True,
            )
        proto = onnx.load(str(raw))
    # the exporter names static output dims it could not infer through the custom ops: pin them
    channels = list(net.cfg.dims) if backbone else [net.cfg.num_classes]
    for out_vi, c in zip(proto.graph.output, channels):
        dim = out_vi.type.tensor_type.shape.dim[1]
        dim.Clear()
        dim.dim_value = c
    if portable:
        from .portable import expand_custom_ops

        proto = expand_custom_ops(proto, opset)
    if dynamic == "shape":  # any H, W at run time: check the minimum in the graph itself (guard.py)
        add_input_guard(proto, INPUT_NAME, MIN_INPUT_SIZE)
    onnx.checker.check_model(proto, full_check=True)

    weights_info: dict = {"random_init_seed": RANDOM_INIT_SEED}
    if weights is not None and net.load_report is not None:
        weights_info = {"path": str(weights), "sha256": net.load_report.sha256, "source": net.load_report.source}
    inputs, outputs = _io_spec(proto)
    meta = {
        "format": FORMAT,
        "toolkit_version": __version__,
        "variant": name,
        "backbone": backbone,
        "portable": portable,
        "opset": opset,
        "custom_domain": None if portable else {"domain": DOMAIN, "version": VERSION},
        "custom_ops": custom_ops_used(proto),
        "inputs": inputs,
        "outputs": outputs,
        "dynamic": dynamic,
        "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in axes.items()},
        "export_input_size": list(img_size),
        "export_batch": batch,
        "min_input_size": MIN_INPUT_SIZE,
        "input_check_in_graph": dynamic == "shape",
        "preprocessing": preprocessing_record(img_size, net.cfg.mean, net.cfg.std, interpolation, crop_pct),
        "weights": weights_info,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for key in ("variant", "toolkit_version", "portable"):
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"defmamba.{key}", str(meta[key])
    proto.producer_name, proto.producer_version = "defmamba-deploy", __version__
    side = OnnxSidecar.from_dict(meta, str(sidecar_path(out)))
    write_pair(out, proto.SerializeToString(), sidecar_path(out), side.to_dict())
    return ExportResult(out, sidecar_path(out), side)
