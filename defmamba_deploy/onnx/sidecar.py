"""The ONNX sidecar: ``<model>.onnx.json``, written by export beside every model it writes.

It records what a reader needs without opening the model: the variant, the form (custom-op or
portable, classifier or backbone), the input and output shapes with their dynamic axes, the
export size, preprocessing and which weights went in. :class:`OnnxSidecar` is its one type: export
builds it, runtime and parity read it, and :meth:`OnnxSidecar.problem` is the one compatibility
check (may this file stand in for a run of that variant, weights and size?).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

from ..errors import UsageError

FORMAT = "defmamba-deploy/onnx-sidecar/1"
RANDOM_INIT_SEED = 0  # without weights, the random init is seeded so parity/bench can rebuild it


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
        if not isinstance(data, dict):
            raise UsageError(f"{source} is not a JSON object: re-export the model")
        if data.get("format", FORMAT) != FORMAT:
            raise UsageError(f"{source} has format {data.get('format')!r}, not {FORMAT!r}: re-export the model")
        missing = [k for k in ("variant", "inputs", "outputs") if k not in data]
        if missing:
            raise UsageError(f"{source} lacks {', '.join(missing)}: re-export the model")
        known = {f.name for f in fields(cls)}
        side = cls(**{k: v for k, v in data.items() if k in known})
        shape = side.input_shape
        if len(shape) != 4:
            raise UsageError(f"{source} gives an input shape {shape}, not (batch, 3, height, width): re-export the model")
        return side

    @classmethod
    def read(cls, onnx_path: str | os.PathLike) -> "OnnxSidecar | None":
        """The sidecar of ``onnx_path``; None when there is none or it is not a readable sidecar
        (readers then treat the file as one of unknown origin)."""
        p = sidecar_path(onnx_path)
        if not p.is_file():
            return None
        try:
            return cls.from_dict(json.loads(p.read_text()), str(p))
        except (json.JSONDecodeError, UnicodeDecodeError, UsageError, TypeError):
            return None

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
