"""ONNX Runtime sessions with the ``defmamba`` custom ops, and a service-ready ``Predictor``.

``create_session`` registers the custom-op library automatically when the model needs it (found
by :func:`find_library`, or given explicitly) and fails with one clear line when it cannot.
ONNX Runtime sessions are safe for concurrent ``run`` calls, and neither ``OrtRunner`` nor
``Predictor`` keeps mutable state per call, so one instance can serve many threads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MissingDependencyError, UsageError
from ..model import MIN_INPUT_SIZE
from ..onnx import custom_ops_used, load_onnx, read_sidecar
from ..libs import find_library


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("onnxruntime is not installed: pip install 'onnxruntime>=1.29'") from None
    return ort


def create_session(
    model_path: str | os.PathLike,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    *,
    library: str | os.PathLike | None = None,
    register_library: bool | None = None,
):
    """An ``onnxruntime.InferenceSession`` for a DefMamba ONNX file.

    ``providers``: ORT execution providers (default: CUDA first when available, then CPU).
    ``threads``: intra-op threads (default: ORT's choice, all cores). ``library``: explicit path of
    ``libdefmamba_ort_ops.so``; by default it is registered when the model uses ``defmamba`` ops.
    """
    ort = _ort()
    path = Path(model_path)
    proto = load_onnx(path)
    needed = custom_ops_used(proto)
    so = ort.SessionOptions()
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
            raise MissingDependencyError(
                f"{path} uses custom ops {', '.join('defmamba::' + n for n in needed)} but {e}; "
                f"or export a portable model (defmamba-deploy export --portable)"
            ) from None
        so.register_custom_ops_library(str(lib))
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
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UsageError(f"onnxruntime could not load {path}: {first}") from None


class OrtRunner:
    """Validated inference on one session: checks rank, dtype, channels and size before ORT sees them."""

    def __init__(self, model_path: str | os.PathLike, providers=None, threads=None, library=None) -> None:
        self.path = Path(model_path)
        self.session = create_session(model_path, providers, threads, library=library)
        self.sidecar = read_sidecar(model_path) or {}
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def check_input(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise UsageError(f"input must be a numpy array, got {type(x).__name__}")
        if x.ndim != 4:
            raise UsageError(f"input must have rank 4 (batch, 3, height, width), got shape {x.shape}")
        if x.dtype != np.float32:
            raise UsageError(f"input must be float32, got {x.dtype} (use x.astype(np.float32))")
        if x.shape[1] != 3:
            raise UsageError(f"input must have 3 channels (RGB, NCHW layout), got shape {x.shape}")
        if x.shape[0] == 0:
            raise UsageError(f"input has batch size 0 (shape {x.shape}): give at least one image")
        h, w = x.shape[2], x.shape[3]
        if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
            raise UsageError(f"input {h}x{w} is too small: DefMamba needs height and width >= {MIN_INPUT_SIZE} px")
        for axis, (want, got) in enumerate(zip(self.input_shape, x.shape)):
            if isinstance(want, int) and want != got:
                raise UsageError(f"this model was exported with a fixed input shape {self.input_shape}; got {list(x.shape)} "
                                 f"(axis {axis}); re-export with --dynamic batch or --dynamic shape")
        return np.ascontiguousarray(x)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        x = self.check_input(x)
        return self.session.run(self.output_names, {self.input_name: x})

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)[0]


class Predictor:
    """Images -> top-k classes, for services: ``Predictor("defmamba_s.onnx").predict([img1, img2])``."""

    def __init__(self, model_path: str | os.PathLike, *, img_size: int | tuple[int, int] | None = None,
                 providers=None, threads=None, library=None, labels: Sequence[str] | None = None) -> None:
        self.runner = OrtRunner(model_path, providers, threads, library)
        side = self.runner.sidecar
        if img_size is None:
            img_size = tuple(side.get("export_input_size", (224, 224)))
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        pre = side.get("preprocessing", {})
        from ..data import IMAGENET_MEAN, IMAGENET_STD

        self.mean, self.std = tuple(pre.get("mean", IMAGENET_MEAN)), tuple(pre.get("std", IMAGENET_STD))
        self.labels = list(labels) if labels is not None else None

    def preprocess(self, images) -> np.ndarray:
        from ..data import preprocess

        return np.stack([preprocess(im, self.img_size, mean=self.mean, std=self.std) for im in images])

    def predict(self, images, topk: int = 5) -> list[list[dict]]:
        """For each image (PIL image or path): [{'class', 'label', 'prob'}, ...] best first."""
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise UsageError(f"topk must be an integer >= 1, got {topk!r}")
        if isinstance(images, (str, os.PathLike)) or not hasattr(images, "__len__"):
            images = [images]  # one image
        if len(images) == 0:
            return []
        logits = self.runner(self.preprocess(images))
        z = logits - logits.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        k = min(topk, probs.shape[-1])
        out = []
        for p in probs:
            idx = np.argsort(-p, kind="stable")[:k]
            out.append([{"class": int(i), "label": self.labels[i] if self.labels and i < len(self.labels) else None,
                         "prob": float(p[i])} for i in idx])
        return out
