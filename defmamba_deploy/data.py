"""Image loading and the standard ImageNet preprocessing (PIL + NumPy; no torchvision needed).

Resize the shorter side to ``size / crop_pct`` (bicubic), centre-crop ``size``, scale to [0, 1],
normalise with the ImageNet mean/std, layout (3, H, W) float32. Used by ``predict``, ``parity``,
the ORT ``Predictor`` and INT8 calibration, so every backend sees the same pixels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def load_image(path: str | os.PathLike):
    """Open an image file as RGB, with a one-line error for anything that is not an image."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UsageError(f"{path} is not an image that PIL can read ({type(e).__name__}): pass a JPEG/PNG/... file") from None


def preprocess(image, size: int | Sequence[int] = 224, crop_pct: float = DEFAULT_CROP_PCT,
               mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """PIL image (or path) -> normalised float32 array (3, H, W)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = load_image(image)
    h, w = _size_hw(size)
    if h < 1 or w < 1:
        raise UsageError(f"image size must be positive, got {h}x{w}")
    scale_h, scale_w = h / crop_pct, w / crop_pct
    iw, ih = image.size
    ratio = max(scale_h / ih, scale_w / iw)  # shorter side (relative to the target) fills the crop
    rw, rh = max(w, round(iw * ratio)), max(h, round(ih * ratio))
    image = image.resize((rw, rh), Image.BICUBIC)
    left, top = (rw - w) // 2, (rh - h) // 2
    image = image.crop((left, top, left + w, top + h))
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` (sorted), by suffix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"image folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {folder}")
    return files


def sample_images() -> list[Path]:
    """A few real photos shipped by scikit-image (if installed), for parity checks and demos."""
    try:
        import skimage.data  # noqa: F401
        from skimage import data_dir
    except ImportError:
        return []
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg"]
    return [p for p in (Path(data_dir) / n for n in names) if p.is_file()]


def calibration_batches(folder: str | os.PathLike, size: int | Sequence[int], batch_size: int,
                        samples: int | None = None) -> list[np.ndarray]:
    """Preprocessed calibration batches (batch_size, 3, H, W) float32 from the images in ``folder``.

    Uses the same preprocessing as inference. ``samples`` caps the number of images; a final
    incomplete batch is dropped (TensorRT calibrates with a fixed batch size), unless there are
    fewer images than one batch, which is an error.
    """
    if batch_size < 1:
        raise UsageError(f"calibration batch size must be >= 1, got {batch_size}")
    if samples is not None and samples < 1:
        raise UsageError(f"--calib-samples must be >= 1, got {samples}")
    files = list_images(folder)
    if samples is not None:
        files = files[:samples]
    if len(files) < batch_size:
        raise UsageError(f"{len(files)} calibration image(s) in {folder}, fewer than one batch of {batch_size}: "
                         f"add images or lower the calibration batch size")
    n = len(files) // batch_size * batch_size
    hw = _size_hw(size)
    return [np.stack([preprocess(f, hw) for f in files[i : i + batch_size]]) for i in range(0, n, batch_size)]
