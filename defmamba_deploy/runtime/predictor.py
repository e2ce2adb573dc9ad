"""Images in, top-k classes out, over any runner: the service-facing API.

``Predictor("defmamba_s.onnx")`` runs the custom-op or portable ONNX file in ONNX Runtime, with the
input size and normalisation its sidecar records; ``Predictor.from_runner(runner, ...)`` wraps any
other runner (the CLI's PyTorch ``predict`` uses it), so every path shares one preprocessing and
one softmax / top-k.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..errors import UsageError
from .base import Runner
from .onnxrt import OrtRunner


class Predictor:
    """Images -> top-k classes, for services: ``Predictor("defmamba_s.onnx").predict([img1, img2])``."""

    def __init__(self, model_path: str | os.PathLike, *, img_size: int | tuple[int, int] | None = None,
                 providers=None, threads=None, library=None, labels: Sequence[str] | None = None) -> None:
        runner = OrtRunner(model_path, providers, threads, library)
        side = runner.sidecar
        pre = side.preprocessing if side is not None else {}
        if img_size is None:
            img_size = side.img_size if side is not None else (224, 224)
        self._setup(runner, img_size, pre.get("mean"), pre.get("std"), labels)

    @classmethod
    def from_runner(cls, runner: Runner, img_size: int | tuple[int, int] = (224, 224), *, mean=None, std=None,
                    labels: Sequence[str] | None = None) -> "Predictor":
        self = cls.__new__(cls)
        self._setup(runner, img_size, mean, std, labels)
        return self

    def _setup(self, runner: Runner, img_size, mean, std, labels) -> None:
        from ..data import IMAGENET_MEAN, IMAGENET_STD

        self.runner = runner
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.mean = tuple(mean if mean is not None else IMAGENET_MEAN)
        self.std = tuple(std if std is not None else IMAGENET_STD)
        self.labels = list(labels) if labels is not None else None

    def preprocess(self, images) -> np.ndarray:
        from ..data import preprocess

        return np.stack([preprocess(im, self.img_size, mean=self.mean, std=self.std) for im in images])

    def predict(self, images, topk: int = 5) -> list[list[dict]]:
        """For each image (PIL image or path): [{'class', 'label', 'prob'}, ...] best first."""
        check_topk(topk)
        if isinstance(images, (str, os.PathLike)) or not hasattr(images, "__len__"):
            images = [images]  # one image
        if len(images) == 0:
            return []
        return top_k(self.runner(self.preprocess(images)), topk, self.labels)


def check_topk(topk) -> None:
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise UsageError(f"topk must be an integer >= 1, got {topk!r}")


def top_k(logits: np.ndarray, topk: int, labels: Sequence[str] | None = None) -> list[list[dict]]:
    """Softmax over the last axis and the ``topk`` best classes of each row: [{'class', 'label', 'prob'}]."""
    check_topk(topk)
    logits = np.asarray(logits, dtype=np.float64)
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    k = min(topk, probs.shape[-1])
    out = []
    for p in probs:
        idx = np.argsort(-p, kind="stable")[:k]
        out.append([{"class": int(i), "label": labels[i] if labels and i < len(labels) else None,
                     "prob": float(p[i])} for i in idx])
    return out
