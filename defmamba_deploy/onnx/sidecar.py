"""The ONNX sidecar: ``<model>.onnx.json``, written by export beside every model it writes.

It records what a reader needs without opening the model: the variant, the form (custom-op or
portable, classifier or backbone), the input and output shapes with their dynamic axes, the
export size, preprocessing and which weights went in. :class:`OnnxSidecar` is its one type: export
builds it, runtime and parity read it, and :meth:`OnnxSidecar.problem` is the one compatibility
check (may this file stand in for a run of that variant, weights and size?).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

from ..data import INTERPOLATIONS
from ..errors import UsageError
from ..files import read_json
from ..model import list_models

FORMAT = "defmamba-deploy/onnx-sidecar/1"
RANDOM_INIT_SEED = 0  # without weights, the random init is seeded so parity/bench can rebuild it
FIX = "delete it or re-export the model"
DYNAMIC_MODES = ("batch", "shape", "none")


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    return Path(str(onnx_path) + ".json")


@dataclass
class OnnxSidecar:
    variant: str
    inputs: list[dict]
    outputs: list[dict]
    backbone: bool = False
    portable: bool = False
    opset: int = 17
    custom_domain: dict | None = None
    custom_ops: list[str] = field(default_factory=list)
    dynamic: str = "batch"
    dynamic_axes: dict = field(default_factory=dict)
    export_input_size: list[int] = field(default_factory=lambda: [224, 224])
    export_batch: int = 1
    min_input_size: int = 33
    input_check_in_graph: bool = False
    preprocessing: dict = field(default_factory=dict)
    weights: dict = field(default_factory=lambda: {"random_init_seed": RANDOM_INIT_SEED})
    toolkit_version: str = ""
    torch: str = ""
    onnx: str = ""
    created: str = ""
    format: str = FORMAT

    # --- reading -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, source: str = "sidecar") -> "OnnxSidecar":
        """A sidecar from its JSON object, or one UsageError line naming ``source`` and the first field
        that is missing or of the wrong kind. Keys this version does not know are ignored."""
        if not isinstance(data, dict):
            raise UsageError(f"{source} holds a JSON {type(data).__name__}, not an object: {FIX}")
        if data.get("format", FORMAT) != FORMAT:
            raise UsageError(f"{source} has format {data.get('format')!r}, not {FORMAT!r}: re-export the model")
        missing = [k for k in ("variant", "inputs", "outputs") if k not in data]
        if missing:
            raise UsageError(f"{source} lacks {', '.join(missing)}: re-export the model")
        problem = _first_problem(data)
        if problem:
            raise UsageError(f"{source}: {problem}: {FIX}")
        known = {f.name for f in fields(cls)}
        side = cls(**{k: v for k, v in data.items() if k in known})
        shape = side.input_shape
        if len(shape) != 4 or shape[1] != 3:
            raise UsageError(f"{source} gives an input shape {shape}, not (batch, 3, height, width): re-export the model")
        return side

    @classmethod
    def read(cls, onnx_path: str | os.PathLike) -> "OnnxSidecar | None":
        """The sidecar of ``onnx_path``; None when there is none (a file of unknown origin).

        A sidecar that is there but cannot be used (not JSON, not an object, a field of the wrong
        kind, a folder) is a UsageError naming it: readers take the model's preprocessing and size
        from it, and silently falling back to defaults would give wrong predictions. A reader that
        only asks "does this file match?" catches the error and treats it as a mismatch."""
        p = sidecar_path(onnx_path)
        if not os.path.lexists(p):
            return None
        return cls.from_dict(read_json(p, "ONNX sidecar", FIX), f"ONNX sidecar {p}")

    def to_dict(self) -> dict:
        return asdict(self)

    # --- what it says ----------------------------------------------------------------------------
    @property
    def input_shape(self) -> list:
        return list((self.inputs or [{}])[0].get("shape") or [])

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.export_input_size)  # type: ignore[return-value]

    @property
    def random_init(self) -> bool:
        return "random_init_seed" in (self.weights or {})

    def form(self) -> str:
        return ("backbone " if self.backbone else "") + ("portable" if self.portable else "custom-op") + " export"

    # --- compatibility ---------------------------------------------------------------------------
    def weights_problem(self, weights, load_report) -> str | None:
        """Why this file does not hold the weights a run with ``weights`` uses, or None."""
        w = self.weights or {}
        if weights is None and "sha256" in w:
            return f"it was exported from {w.get('path')}: pass the same file with --weights"
        if weights is not None and "random_init_seed" in w:
            return f"it was exported with random weights, not --weights {weights}: re-export with --weights"
        if weights is not None and load_report is not None and w.get("sha256") not in (None, load_report.sha256):
            return f"it was exported from other weights ({w.get('path')}) than --weights {weights}: pass the same file"
        if weights is None and w.get("random_init_seed", RANDOM_INIT_SEED) != RANDOM_INIT_SEED:
            return f"it holds the random initialisation of seed {w['random_init_seed']}, not {RANDOM_INIT_SEED}"
        if load_report is not None and w.get("source") not in (None, load_report.source):
            return f"it was exported from the checkpoint's '{w['source']}' entry, not '{load_report.source}'"
        return None

    def problem(self, *, variant: str | None = None, portable: bool | None = None, backbone: bool | None = None,
                weights=None, load_report=None, check_weights: bool = True, img_sizes: Sequence[tuple[int, int]] = (),
                batches: Sequence[int] = ()) -> str | None:
        """Why this file cannot stand in for a run with these settings, or None. Arguments left
        None are not checked."""
        if variant is not None and self.variant != variant:
            return f"it holds DefMamba-{self.variant}, not DefMamba-{variant}"
        if backbone is not None and self.backbone != backbone:
            return "it is the backbone export" if self.backbone else "it is the classifier export"
        if portable is not None and self.portable != portable:
            return "it is the portable export" if self.portable else "it is the custom-op export"
        if check_weights:
            why = self.weights_problem(weights, load_report)
            if why:
                return why
        shape = self.input_shape
        wanted = {0: list(batches), 2: [s[0] for s in img_sizes], 3: [s[1] for s in img_sizes]}
        for axis, values in wanted.items():
            if isinstance(shape[axis], int) and any(v != shape[axis] for v in values):
                what = "batch" if axis == 0 else "input size"
                return f"its {what} is fixed to {shape[axis]} (exported with --dynamic {self.dynamic})"
        return None

    def require(self, path, **settings) -> None:
        """:meth:`problem` as a one-line UsageError naming ``path``."""
        why = self.problem(**settings)
        if why:
            raise UsageError(f"{path}: {why}")


def read_sidecar(onnx_path: str | os.PathLike) -> OnnxSidecar | None:
    return OnnxSidecar.read(onnx_path)


# --- validation of a sidecar's fields -----------------------------------------------------------------

def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(v, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(_is_number(x) for x in v)


def _tensors_problem(key: str, value) -> str | None:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        return f"{key} is {_show(value)}, not a list of objects"
    if key == "inputs" and not value:
        return "inputs is empty"
    for i, t in enumerate(value):
        shape = t.get("shape", [])
        dims_ok = isinstance(shape, list) and all((_is_int(d) and d >= 0) or (isinstance(d, str) and d) for d in shape)
        if not dims_ok:
            return f"{key}[{i}].shape is {_show(shape)}, not a list of sizes (integers) and axis names (strings)"
        for k in ("name", "dtype"):
            if k in t and not isinstance(t[k], str):
                return f"{key}[{i}].{k} is {_show(t[k])}, not a string"
    return None


def _preprocessing_problem(pre) -> str | None:
    if not isinstance(pre, dict):
        return f"preprocessing is {_show(pre)}, not an object"
    checks = {
        "mean": (lambda v: _numbers(v, 3), "three finite numbers"),
        "std": (lambda v: _numbers(v, 3) and all(x > 0 for x in v), "three finite numbers > 0"),
        "layout": (lambda v: v == "NCHW", "'NCHW'"),
        "dtype": (lambda v: isinstance(v, str), "a string"),
        "interpolation": (lambda v: isinstance(v, str) and v.lower() in INTERPOLATIONS,
                          f"one of {', '.join(INTERPOLATIONS)}"),
        "crop_pct": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
        "resize": (lambda v: (_is_int(v) and v > 0) or (isinstance(v, list) and len(v) in (1, 2)
                                                       and all(_is_int(x) and x > 0 for x in v)),
                   "a positive integer or [height, width]"),
        "center_crop": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v),
                        "[height, width] of two positive integers"),
        "color": (lambda v: isinstance(v, str), "a string"),
        "resize_rule": (lambda v: isinstance(v, str), "a string"),
    }
    for key, (ok, expected) in checks.items():
        if key in pre and not ok(pre[key]):
            return f"preprocessing.{key} is {_show(pre[key])}, not {expected}"
    return None


def _first_problem(data: dict) -> str | None:
    """The first field of a sidecar's JSON object that is of the wrong kind, as 'field is X, not Y'."""
    variants = list_models()
    simple = {
        "variant": (lambda v: v in variants, f"one of {', '.join(variants)}"),
        "backbone": (lambda v: isinstance(v, bool), "true or false"),
        "portable": (lambda v: isinstance(v, bool), "true or false"),
        "input_check_in_graph": (lambda v: isinstance(v, bool), "true or false"),
        "opset": (lambda v: _is_int(v) and v > 0, "a positive integer"),
        "export_batch": (lambda v: _is_int(v) and v > 0, "a positive integer"),
        "min_input_size": (lambda v: _is_int(v) and v > 0, "a positive integer"),
        "export_input_size": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v),
                              "[height, width] of two positive integers"),
        "dynamic": (lambda v: v in DYNAMIC_MODES, f"one of {', '.join(DYNAMIC_MODES)}"),
        "dynamic_axes": (lambda v: isinstance(v, dict), "an object"),
        "custom_domain": (lambda v: v is None or isinstance(v, dict), "an object or null"),
        "custom_ops": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of op names"),
        "weights": (lambda v: isinstance(v, dict) and all(isinstance(v[k], str) for k in ("path", "sha256", "source") if k in v)
                    and _is_int(v.get("random_init_seed", 0)), "an object of path, sha256 and source, or random_init_seed"),
        **{k: (lambda v: isinstance(v, str), "a string") for k in ("toolkit_version", "torch", "onnx", "created")},
    }
    for key, (ok, expected) in simple.items():
        if key in data and not ok(data[key]):
            return f"{key} is {_show(data[key])}, not {expected}"
    return (_tensors_problem("inputs", data["inputs"]) or _tensors_problem("outputs", data["outputs"])
            or _preprocessing_problem(data.get("preprocessing", {})))
