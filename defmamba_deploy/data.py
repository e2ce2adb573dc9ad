"""Image loading and the DefMamba evaluation preprocessing (PIL + NumPy; no torchvision needed).

The transform is the authors' evaluation transform (``classification/data/build.py`` of
leiyeliu/DefMamba with its config defaults ``DATA.INTERPOLATION = 'bilinear'``, ``TEST.CROP = True``),
reproduced pixel for pixel from torchvision's documented rules for PIL images:

1. ``convert('RGB')``, as their image loader does;
2. ``Resize(int(256 / 224 * S))`` with bilinear interpolation: the shorter side becomes
   ``R = int((1 / crop_pct) * S)`` (``1 / 0.875`` is the same float as ``256 / 224``), the longer
   ``int(R * long / short)``; PIL's ``Image.resize`` (always antialiased) does the resampling, and an
   image already of that size is left alone;
3. ``CenterCrop(S)``: ``top = int(round((h - S) / 2.0))``, ``left`` likewise (Python's round, half
   to even), zero padding where the image is smaller than the crop;
4. ``ToTensor`` and ``Normalize``: ``(x / 255 - mean) / std`` in float32, layout (3, H, W).

For a non-square crop (H, W) the image is scaled uniformly so that it covers
``int(H / crop_pct) x int(W / crop_pct)`` (each computed as above): the side that binds gets its
target exactly, the other ``int(target * other / this)``, then the centre crop. For H == W this is
step 2. Used by ``predict``, ``parity``, the ``Predictor`` and INT8 calibration, so every backend
sees the same pixels.

Every image is refused with one UsageError line, before it is decoded, when its header claims more
than the pixel limit: the ``max_pixels=`` argument, else ``$DEFMAMBA_MAX_IMAGE_PIXELS``, else
:data:`MAX_IMAGE_PIXELS` (89,478,485, Pillow's own default).
"""
from __future__ import annotations

import contextlib
import io
import numbers
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875  # 224 / 256
DEFAULT_INTERPOLATION = "bilinear"
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}

# the default pixel limit; the max_pixels= argument and $DEFMAMBA_MAX_IMAGE_PIXELS take precedence
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default (1024**3 // 4 // 3): about 9459 x 9459
MAX_PIXELS_ENV = "DEFMAMBA_MAX_IMAGE_PIXELS"
_RAISE_HINT = f"raise the limit with max_pixels= or {MAX_PIXELS_ENV}"

# PIL's own bomb check reads one process-wide setting; it is swapped only around a decode, under
# this lock, and restored, so concurrent decodes of this module never see each other's limit
_PIL_LOCK = threading.Lock()


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_size(size: int | Sequence[int]) -> tuple[int, int]:
    """A crop size (an int, or (height, width) of ints) as (height, width), or a UsageError."""
    if _is_int(size):
        hw = [size, size]
    elif isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 2:
        hw = None
    else:
        hw = list(size)
    if hw is None or not all(_is_int(v) for v in hw):
        raise UsageError(f"image size must be an int or (height, width) of ints, got {size!r}")
    h, w = int(hw[0]), int(hw[1])
    if h < 1 or w < 1:
        raise UsageError(f"image size must be positive, got {h}x{w}")
    return h, w


# --- options ---------------------------------------------------------------------------------------
def pixel_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels``, else ``$DEFMAMBA_MAX_IMAGE_PIXELS``, else
    :data:`MAX_IMAGE_PIXELS`."""
    if max_pixels is None:
        env = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if env:
            try:
                value = int(env)
            except ValueError:
                value = 0
            if value < 1:
                raise UsageError(f"{MAX_PIXELS_ENV} must be a positive whole number of pixels, got {env!r}")
            return value
        max_pixels = MAX_IMAGE_PIXELS
    if not _is_int(max_pixels) or max_pixels < 1:
        raise UsageError(f"max_pixels must be a positive whole number of pixels, got {max_pixels!r}")
    return int(max_pixels)


def check_interpolation(interpolation: str | None) -> str:
    """``interpolation`` (None: the default) as one of :data:`INTERPOLATIONS`, or a UsageError."""
    if interpolation is None:
        return DEFAULT_INTERPOLATION
    name = interpolation.lower() if isinstance(interpolation, str) else interpolation
    if name not in INTERPOLATIONS:
        raise UsageError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {interpolation!r}")
    return name


def check_crop_pct(crop_pct: float | None) -> float:
    """``crop_pct`` (None: 0.875) as a float in (0, 1], or a UsageError."""
    if crop_pct is None:
        return DEFAULT_CROP_PCT
    real = isinstance(crop_pct, numbers.Real) and not isinstance(crop_pct, bool)
    value = float(crop_pct) if real else float("nan")
    if not 0.0 < value <= 1.0:  # NaN fails the comparison too
        raise UsageError(f"crop_pct must be in (0, 1] (the crop's share of the resized shorter side, 0.875 = 224/256), "
                         f"got {crop_pct!r}")
    return value


def check_normalization(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean`` and ``std`` as three floats each whose float32 normalisation of [0, 1] stays finite
    (std > 0, nothing that overflows float32), or a UsageError."""
    try:
        m = np.asarray(mean, dtype=np.float64)
        sd = np.asarray(std, dtype=np.float64)
    except (TypeError, ValueError):
        m = sd = np.zeros(0)
    if m.shape != (3,) or sd.shape != (3,) or not (np.isfinite(m).all() and np.isfinite(sd).all() and (sd > 0).all()):
        raise UsageError(f"mean and std must be three finite numbers each, std > 0; got mean {mean!r}, std {std!r}")
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        ends = (np.array([[0.0], [1.0]], np.float32) - m.astype(np.float32)) / sd.astype(np.float32)
    if not np.isfinite(ends).all() or not (sd.astype(np.float32) > 0).all():
        raise UsageError(f"mean {mean!r} / std {std!r} overflow float32 when they normalise pixels in [0, 1]")
    return tuple(float(v) for v in m), tuple(float(v) for v in sd)


def _pil_filter(interpolation: str):
    from PIL import Image

    return getattr(Image.Resampling, check_interpolation(interpolation).upper())


# --- geometry ----------------------------------------------------------------------------------------
def resize_side(side: int, crop_pct: float = DEFAULT_CROP_PCT) -> int:
    """What a crop side ``side`` resizes to before the crop: ``int((1 / crop_pct) * side)``,
    bit-identical to the authors' ``int((256 / 224) * side)`` at 0.875."""
    return int((1.0 / check_crop_pct(crop_pct)) * side)


def resized_size(image_hw: Sequence[int], size: int | Sequence[int] = 224,
                 crop_pct: float = DEFAULT_CROP_PCT) -> tuple[int, int]:
    """(height, width) an image of ``image_hw`` is resized to before the centre crop ``size``."""
    ih, iw = (int(v) for v in image_hw)
    h, w = check_size(size)
    th, tw = resize_side(h, crop_pct), resize_side(w, crop_pct)
    if th * iw >= tw * ih:  # th / ih >= tw / iw: the height binds (for a square crop: the shorter side)
        return th, int(th * iw / ih)
    return int(tw * ih / iw), tw


def center_crop(image, size: int | Sequence[int]) -> np.ndarray:
    """torchvision's ``CenterCrop`` of a PIL image or (H, W[, C]) array, as an array: offsets
    ``int(round(excess / 2.0))``; a side smaller than the crop is zero-padded, ``(crop - side) // 2``
    before it. (Slicing, not ``Image.crop``, which would apply PIL's process-wide pixel limit.)"""
    h, w = check_size(size)
    arr = np.asarray(image)
    ih, iw = arr.shape[:2]
    top = int(round((ih - h) / 2.0)) if ih >= h else -((h - ih) // 2)
    left = int(round((iw - w) / 2.0)) if iw >= w else -((w - iw) // 2)
    if ih >= h and iw >= w:
        return arr[top : top + h, left : left + w]
    out = np.zeros((h, w, *arr.shape[2:]), arr.dtype)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, ih), min(left + w, iw)
    out[y0 - top : y1 - top, x0 - left : x1 - left] = arr[y0:y1, x0:x1]
    return out


# --- loading -----------------------------------------------------------------------------------------
def _bomb_message(name: str, w: int, h: int, limit: int) -> str:
    return (f"{name} claims {w}x{h} pixels ({w * h:,}), more than the limit of {limit:,} (a decompression "
            f"bomb?): if it is genuine, {_RAISE_HINT}")


def _check_pixels(name: str, size: tuple[int, int], limit: int) -> None:
    w, h = size
    if w * h > limit:
        raise UsageError(_bomb_message(name, w, h, limit))
    if w < 1 or h < 1:
        raise UsageError(f"{name} has no pixels ({w}x{h})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


@contextlib.contextmanager
def _pil_check_off():
    """PIL's own (process-wide) bomb check off, for a header read; hold _PIL_LOCK."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@contextlib.contextmanager
def _decode_errors(name: str, limit: int):
    """Whatever PIL raises for a bad file, as one UsageError line naming ``name``."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except (UsageError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UsageError(f"{name}: PIL refuses to decode it as a possible decompression bomb ({_first_line(e)}): "
                         f"if it is genuine, {_RAISE_HINT} (now {limit:,})") from None
    except UnidentifiedImageError:
        raise UsageError(f"{name} is not an image that PIL can read: pass a JPEG/PNG/... file") from None
    except PermissionError:
        raise UsageError(f"{name} cannot be read: permission denied") from None
    except Exception as e:  # noqa: BLE001 - a broken file makes PIL raise anything (OSError, SyntaxError, zlib, struct)
        raise UsageError(f"{name} could not be decoded ({_first_line(e)}): the file is damaged or truncated") from None


def _decode(source, name: str, limit: int):
    """``Image.open`` + ``load`` of a path or file object, checked against ``limit`` from the header.

    PIL's own limit (a process-wide setting) is off only for the header read, under a lock, so that
    the check here (with its message and the caller's limit) comes first; the decode itself runs
    outside the lock, so threads decode in parallel. PIL checks the size at ``open`` (and ``crop``),
    not while decoding, and the header's size is the one checked here.
    """
    from PIL import Image

    with _decode_errors(name, limit):
        with _PIL_LOCK, _pil_check_off():
            im = Image.open(source)
        try:
            _check_pixels(name, im.size, limit)
            im.load()
        except BaseException:
            im.close()
            raise
    return im


def _to_rgb(im, name: str):
    """``im`` as an RGB image, as the authors' loader converts; high-bit-depth modes are refused
    (PIL's conversion clips them at 255)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "F") or im.mode.startswith("I;"):
        raise UsageError(f"{name} has PIL mode {im.mode!r} (more than 8 bits per channel), which PIL's RGB conversion "
                         f"clips at 255: convert it to 8-bit RGB first")
    try:
        return im.convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises ValueError for modes it cannot convert
        raise UsageError(f"{name} has PIL mode {im.mode!r}, which PIL cannot convert to RGB ({_first_line(e)})") from None


def _from_array(arr: np.ndarray, name: str, limit: int):
    from PIL import Image

    ok = arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)))
    if not ok:
        raise UsageError(f"{name} has dtype {arr.dtype} and shape {arr.shape}: a numpy image must be uint8 (H, W, 3) RGB, "
                         f"(H, W, 4) RGBA or (H, W) grey; pass a list for several images")
    _check_pixels(name, (arr.shape[1], arr.shape[0]), limit)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(arr)), name)


def load_image(image, *, max_pixels: int | None = None):
    """An image as an RGB PIL image, or a one-line UsageError for anything that is not one.

    ``image``: a file path, the bytes of an image file, a binary file object, a PIL image, or a uint8
    numpy array ((H, W, 3) RGB, (H, W, 4) RGBA whose alpha is dropped, (H, W) grey). Other modes go
    through ``convert('RGB')`` like the authors' loader (alpha dropped, palettes expanded, CMYK
    converted); 16/32-bit modes are refused. ``max_pixels``: see :func:`pixel_limit`.
    """
    from PIL import Image

    limit = pixel_limit(max_pixels)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.is_dir():
            raise UsageError(f"image {path} is a folder, not an image file")
        if not path.is_file():
            raise UsageError(f"image {path} does not exist")
        if path.stat().st_size == 0:
            raise UsageError(f"image {path} is an empty file (0 bytes)")
        return _decoded_rgb(path, str(path), limit)
    if hasattr(image, "read") and not isinstance(image, Image.Image):
        try:
            image = image.read()
        except Exception as e:  # noqa: BLE001 - a closed or unreadable stream
            raise UsageError(f"the file object could not be read ({_first_line(e)})") from None
        if not isinstance(image, (bytes, bytearray, memoryview)):
            raise UsageError(f"the file object gave {type(image).__name__}, not bytes: open it in binary mode ('rb')")
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise UsageError("the image bytes are empty (0 bytes)")
        return _decoded_rgb(io.BytesIO(bytes(image)), f"the image bytes ({len(image):,} bytes)", limit)
    if isinstance(image, Image.Image):
        _check_pixels("the PIL image", image.size, limit)
        if getattr(image, "tile", None):  # opened lazily by the caller: decode it under the same checks
            image = _decode_opened(image, limit)
        return _to_rgb(image, "the PIL image")
    if isinstance(image, np.ndarray):
        return _from_array(image, "the numpy array", limit)
    raise UsageError(f"cannot use {type(image).__name__} as an image: pass a file path, PIL image, uint8 numpy array "
                     f"(H, W, 3) or the bytes of an image file")


def _decoded_rgb(source, name: str, limit: int):
    im = _decode(source, name, limit)
    try:
        rgb = _to_rgb(im, name)
        return rgb.copy() if rgb is im else rgb  # closing the file releases the decoded pixels too
    finally:
        im.close()


def _decode_opened(image, limit: int):
    """``load`` of a PIL image the caller opened lazily, with the decode-time checks of :func:`_decode`."""
    with _decode_errors("the PIL image", limit):
        image.load()
    return image


def _describe(image) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return "the numpy array" if isinstance(image, np.ndarray) else "the image"


# --- the transform -----------------------------------------------------------------------------------
def preprocess(image, size: int | Sequence[int] = 224, crop_pct: float = DEFAULT_CROP_PCT,
               mean=IMAGENET_MEAN, std=IMAGENET_STD, *, interpolation: str = DEFAULT_INTERPOLATION,
               max_pixels: int | None = None) -> np.ndarray:
    """One image (anything :func:`load_image` takes) -> normalised float32 array (3, H, W).

    The authors' evaluation transform (module docstring). ``size``: the crop, an int or (H, W).
    ``crop_pct``: the crop's share of the resized side (0.875: 256 for 224). ``interpolation``: one
    of :data:`INTERPOLATIONS` (the authors': bilinear). ``max_pixels``: the limit on the image and on
    the resized image before the crop (an extreme aspect ratio grows the longer side a lot).
    """
    h, w = check_size(size)
    resample = _pil_filter(interpolation)
    crop_pct = check_crop_pct(crop_pct)
    mean, std = check_normalization(mean, std)
    limit = pixel_limit(max_pixels)
    name = _describe(image)
    image = load_image(image, max_pixels=limit)
    iw, ih = image.size
    rh, rw = resized_size((ih, iw), (h, w), crop_pct)
    if rh * rw > limit:
        raise UsageError(f"{name} is {iw}x{ih}: resizing it for a {w}x{h} crop needs {rw}x{rh} pixels "
                         f"({rw * rh:,}), more than the limit of {limit:,}: crop it to a less extreme aspect ratio, "
                         f"or {_RAISE_HINT}")
    if (rh, rw) != (ih, iw):
        image = image.resize((rw, rh), resample)
    arr = center_crop(image, (h, w)).astype(np.float32) / np.float32(255)
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocessing_record(size: int | Sequence[int] = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         interpolation: str = DEFAULT_INTERPOLATION, crop_pct: float = DEFAULT_CROP_PCT) -> dict:
    """The preprocessing as the ONNX sidecar records it (and :class:`Predictor` reads it back).

    ``resize``: what the shorter side becomes for a square crop (torchvision ``Resize(256)``), or
    for a non-square one [height, width] of the box the resized image covers; ``crop_pct``: the
    ratio it comes from, which a reader applies to other crop sizes.
    """
    h, w = check_size(size)
    crop_pct = check_crop_pct(crop_pct)
    rh, rw = resize_side(h, crop_pct), resize_side(w, crop_pct)
    return {
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "layout": "NCHW",
        "dtype": "float32",
        "color": "RGB",
        "interpolation": check_interpolation(interpolation),
        "crop_pct": crop_pct,
        "resize": rh if rh == rw else [rh, rw],
        "resize_rule": "scale uniformly to cover int((1 / crop_pct) * side) for each crop side (square crop: "
                       "torchvision Resize(int), shorter side to it), then centre crop",
        "center_crop": [h, w],
    }


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
                        samples: int | None = None, *, interpolation: str = DEFAULT_INTERPOLATION,
                        crop_pct: float = DEFAULT_CROP_PCT, max_pixels: int | None = None) -> list[np.ndarray]:
    """Preprocessed calibration batches (batch_size, 3, H, W) float32 from the images in ``folder``.

    Uses the same preprocessing as inference (:func:`preprocess` with these options). ``samples``
    caps the number of images; a final incomplete batch is dropped (TensorRT calibrates with a fixed
    batch size), unless there are fewer images than one batch, which is an error.
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
    hw = check_size(size)
    opts = {"interpolation": interpolation, "crop_pct": crop_pct, "max_pixels": max_pixels}
    return [np.stack([preprocess(f, hw, **opts) for f in files[i : i + batch_size]]) for i in range(0, n, batch_size)]


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names, one per line, from a UTF-8 text file; one line naming the file when it is not one."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"labels file {path} is a folder: pass a text file with one class name per line")
    if not path.is_file():
        raise UsageError(f"labels file {path} does not exist: pass a text file with one class name per line")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"labels file {path} cannot be read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"labels file {path} is not UTF-8 text (byte {e.start}): pass a text file with one class "
                         f"name per line") from None
    if "\0" in text:
        raise UsageError(f"labels file {path} is binary (holds NUL bytes): pass a text file with one class name per line")
    names = text.splitlines()
    if not any(n.strip() for n in names):
        raise UsageError(f"labels file {path} is empty: pass a text file with one class name per line")
    return names
