"""Images in, top-k classes out, over any runner: the service-facing API.

``Predictor("defmamba_s.onnx")`` runs the custom-op or portable ONNX file in ONNX Runtime, with the
input size and preprocessing (interpolation, crop_pct, mean/std) its sidecar records;
``Predictor.from_runner(runner, ...)`` wraps any other runner (the CLI's PyTorch ``predict`` uses
it), so every path shares one preprocessing and one softmax / top-k.

For a service: everything bad input can cause (a missing, empty, truncated or non-image file, a
folder, a decompression bomb, an unsupported PIL mode, a wrong object or array, a bad ``topk``)
raises a :class:`~defmamba_deploy.errors.UsageError` with one line; nothing else.
"""
from __future__ import annotations

import numbers
import os
from typing import Sequence

import numpy as np

from ..errors import OutputError, UsageError
from .base import Runner
from .onnxrt import OrtRunner

_BACKBONE_FIX = "not a classifier: export without --backbone"


class Predictor:
    """Images -> top-k classes, for services: ``Predictor("defmamba_s.onnx").predict([img1, img2])``.

    An image is a file path, a PIL image, a uint8 numpy array ((H, W, 3) RGB, (H, W, 4) RGBA or
    (H, W) grey), the bytes of an image file or a binary file object (see
    :func:`defmamba_deploy.data.load_image`). ``interpolation`` / ``crop_pct``: the resize of the
    evaluation transform (default: the sidecar's, else bilinear / 0.875, the authors'); ``max_pixels``:
    the decompression-bomb limit (default: ``$DEFMAMBA_MAX_IMAGE_PIXELS``, else 89,478,485).
    """

    def __init__(self, model_path: str | os.PathLike, *, img_size: int | tuple[int, int] | None = None,
                 providers=None, threads=None, library=None, labels: Sequence[str] | None = None,
                 interpolation: str | None = None, crop_pct: float | None = None,
                 max_pixels: int | None = None) -> None:
        runner = OrtRunner(model_path, providers, threads, library)
        side = runner.sidecar
        _require_classifier(runner, model_path, backbone=bool(side is not None and side.backbone))
        pre = side.preprocessing if side is not None and isinstance(side.preprocessing, dict) else {}
        if img_size is None:  # the sidecar's export size, else the graph's fixed size, else 224
            fixed = [d for d in runner.input_shape[2:4] if isinstance(d, int)]
            img_size = side.img_size if side is not None else tuple(fixed) if len(fixed) == 2 else (224, 224)
        where = f"{model_path}'s sidecar"
        if pre.get("mean") is not None or pre.get("std") is not None:
            from ..data import IMAGENET_MEAN, IMAGENET_STD, check_normalization

            try:
                check_normalization(pre.get("mean", IMAGENET_MEAN), pre.get("std", IMAGENET_STD))
            except UsageError as e:
                raise UsageError(f"{where} records an unusable normalisation ({e}): re-export the model") from None
        self._setup(runner, img_size, pre.get("mean"), pre.get("std"), labels,
                    _option(interpolation, pre.get("interpolation"), where, "interpolation"),
                    _option(crop_pct, pre.get("crop_pct"), where, "crop_pct"), max_pixels)

    @classmethod
    def from_runner(cls, runner: Runner, img_size: int | tuple[int, int] = (224, 224), *, mean=None, std=None,
                    labels: Sequence[str] | None = None, interpolation: str | None = None,
                    crop_pct: float | None = None, max_pixels: int | None = None) -> "Predictor":
        n = len(getattr(runner, "output_names", None) or [])
        if n > 1:
            raise UsageError(f"the {runner.name} runner's model is a backbone ({n} feature maps), not a classifier: "
                             f"give it the classifier (without --backbone)")
        self = cls.__new__(cls)
        self._setup(runner, img_size, mean, std, labels, interpolation, crop_pct, max_pixels)
        return self

    def _setup(self, runner: Runner, img_size, mean, std, labels, interpolation, crop_pct, max_pixels) -> None:
        from ..data import (IMAGENET_MEAN, IMAGENET_STD, check_size, check_crop_pct, check_interpolation,
                            check_normalization, pixel_limit)

        self.runner = runner
        self.img_size = check_size(img_size)
        self.mean, self.std = check_normalization(mean if mean is not None else IMAGENET_MEAN,
                                                  std if std is not None else IMAGENET_STD)
        self.labels = list(labels) if labels is not None else None
        self.interpolation = check_interpolation(interpolation)
        self.crop_pct = check_crop_pct(crop_pct)
        if max_pixels is not None:
            pixel_limit(max_pixels)  # a bad value fails here, not at the first request
        self.max_pixels = max_pixels  # None: $DEFMAMBA_MAX_IMAGE_PIXELS / the default, read per call

    def preprocess(self, images) -> np.ndarray:
        """A list of images -> the (B, 3, H, W) float32 batch the runner gets."""
        from ..data import preprocess

        images = _as_list(images)
        if not images:
            raise UsageError("no images given: pass at least one image")
        out = []
        for i, im in enumerate(images):
            try:
                out.append(preprocess(im, self.img_size, self.crop_pct, self.mean, self.std,
                                      interpolation=self.interpolation, max_pixels=self.max_pixels))
            except UsageError as e:
                if len(images) == 1:
                    raise
                raise UsageError(f"images[{i}]: {e}") from None
        return np.stack(out)

    def predict(self, images, topk: int = 5) -> list[list[dict]]:
        """For each image (or the one image given): [{'class', 'label', 'prob'}, ...] best first."""
        check_topk(topk)
        images = _as_list(images)
        if len(images) == 0:
            return []
        x = self.preprocess(images)
        logits = np.asarray(self.runner(x))
        if logits.ndim != 2 or logits.shape[0] != len(x):
            raise UsageError(f"the {self.runner.name} runner returned shape {list(logits.shape)} for {len(x)} image(s), "
                             f"not (batch, classes) logits: give it a classifier (without --backbone)")
        return top_k(logits, topk, self.labels)


def _option(given, recorded, where: str, what: str):
    """An explicit option, else the sidecar's value (checked, naming the sidecar), else None (the default)."""
    if given is not None or recorded is None:
        return given
    from ..data import check_crop_pct, check_interpolation

    try:
        return (check_interpolation if what == "interpolation" else check_crop_pct)(recorded)
    except UsageError as e:
        raise UsageError(f"{where} records an unusable preprocessing {what} ({e}): re-export the model or pass {what}=") from None


def _require_classifier(runner: OrtRunner, path, *, backbone: bool) -> None:
    """A UsageError unless ``runner`` gives (batch, classes) logits: a backbone export has 4 outputs."""
    outputs = runner.session.get_outputs() if getattr(runner, "session", None) is not None else []
    if backbone or len(outputs) > 1:
        n = len(outputs) if len(outputs) > 1 else 4
        raise UsageError(f"{path} is a backbone export ({n} feature maps), {_BACKBONE_FIX}")
    shape = list(outputs[0].shape) if outputs else [None, None]
    if len(shape) != 2:
        raise UsageError(f"{path} outputs shape {shape}, not (batch, classes) logits: {_BACKBONE_FIX}")


def _as_list(images) -> list:
    """``images`` as a list: one image (a path, bytes, array, PIL image, file object) becomes a list of one."""
    from PIL import Image

    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Image.Image)) or hasattr(images, "read"):
        return [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    try:
        return list(iter(images))
    except TypeError:  # not a collection: one (probably wrong) image, refused by preprocess with its type
        return [images]


def check_topk(topk) -> None:
    if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or topk < 1:
        raise UsageError(f"topk must be an integer >= 1, got {topk!r}")


def top_k(logits: np.ndarray, topk: int, labels: Sequence[str] | None = None) -> list[list[dict]]:
    """Softmax over the last axis and the ``topk`` best classes of each row: [{'class', 'label', 'prob'}]."""
    check_topk(topk)
    topk = int(topk)
    logits = np.asarray(logits, dtype=np.float64)
    bad = ~np.isfinite(logits).all(axis=-1)
    if bad.any():  # a softmax of NaN is NaN: a service must not answer with "prob": NaN
        raise OutputError(f"the model returned NaN/inf logits for {int(bad.sum())} of {len(bad)} image(s) (first: "
                          f"#{int(np.argmax(bad))}): its weights are damaged or it overflowed on that input")
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    k = min(topk, probs.shape[-1])
    out = []
    for p in probs:
        idx = np.argsort(-p, kind="stable")[:k]
        out.append([{"class": int(i), "label": labels[i] if labels and i < len(labels) else None,
                     "prob": float(p[i])} for i in idx])
    return out
