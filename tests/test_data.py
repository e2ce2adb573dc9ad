"""data.py: the evaluation transform against torchvision's documented rules, pixel for pixel, and
the image loader's refusals (decompression bombs, broken files, unsupported modes and types).

The reference below is written from torchvision's rules for PIL images (``Resize(int)`` via
``_compute_resized_output_size`` and ``Image.resize``, ``CenterCrop`` with its zero padding,
``ToTensor`` and ``Normalize`` on torch tensors), literally and apart from ``data.py``'s code.
"""
import io
import struct
import warnings
import zlib
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from defmamba_deploy import data
from defmamba_deploy.data import (IMAGENET_MEAN, IMAGENET_STD, calibration_batches, center_crop, load_image,
                                  preprocess, preprocessing_record)
from defmamba_deploy.errors import DefMambaError, UsageError

PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


# --- the reference: torchvision's eval pipeline, literally -------------------------------------------
def tv_resize(img, size, interpolation):
    """transforms.Resize(size: int) on a PIL image."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if [h, w] == [new_h, new_w]:
        return img
    return img.resize((new_w, new_h), interpolation)


def tv_center_crop(img, crop_height, crop_width):
    """transforms.CenterCrop((h, w)) on a PIL image, padding included."""
    image_width, image_height = img.size
    if crop_width > image_width or crop_height > image_height:
        padding_ltrb = [
            (crop_width - image_width) // 2 if crop_width > image_width else 0,
            (crop_height - image_height) // 2 if crop_height > image_height else 0,
            (crop_width - image_width + 1) // 2 if crop_width > image_width else 0,
            (crop_height - image_height + 1) // 2 if crop_height > image_height else 0,
        ]
        img = ImageOps.expand(img, border=tuple(padding_ltrb), fill=(0, 0, 0))
        image_width, image_height = img.size
        if crop_width == image_width and crop_height == image_height:
            return img
    crop_top = int(round((image_height - crop_height) / 2.0))
    crop_left = int(round((image_width - crop_width) / 2.0))
    return img.crop((crop_left, crop_top, crop_left + crop_width, crop_top + crop_height))


def tv_to_tensor_normalize(img) -> np.ndarray:
    t = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(img.size[1], img.size[0], 3)
    t = t.permute((2, 0, 1)).contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return t.sub_(mean).div_(std).numpy()


def authors_eval(img, img_size, interpolation="bilinear"):
    """The authors' build_transform(is_train=False) with TEST.CROP = True, after their RGB loader."""
    img = img.convert("RGB")
    img = tv_resize(img, int((256 / 224) * img_size), PIL_FILTERS[interpolation])
    return tv_to_tensor_normalize(tv_center_crop(img, img_size, img_size))


def old_preprocess(img, size):
    """What data.preprocess did before: bicubic, round(size / 0.875), floor offsets."""
    scale = size / 0.875
    iw, ih = img.size
    ratio = max(scale / ih, scale / iw)
    rw, rh = max(size, round(iw * ratio)), max(size, round(ih * ratio))
    img = img.convert("RGB").resize((rw, rh), Image.BICUBIC)
    left, top = (rw - size) // 2, (rh - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return arr.transpose(2, 0, 1)


def noise(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    # smooth structure too, so that interpolations differ visibly
    arr[..., 0] = (np.arange(w)[None, :] * 7 + np.arange(h)[:, None] * 3) % 256
    return Image.fromarray(arr).convert(mode) if mode != "RGB" else Image.fromarray(arr)


def photos():
    out = []
    for p in data.sample_images():
        with Image.open(p) as im:
            im = im.convert("RGB")
        out.append((p.name, im))
        out.append((p.name + "-portrait", im.transpose(Image.Transpose.TRANSPOSE)))
    return out


PHOTOS = photos()
# (w, h): tiny, below the crop, odd excesses (banker's rounding: 17.5 -> 18, 18.5 -> 18), already
# at the resize size (no resize), square, extreme aspect
SYNTHETIC = [(1, 1), (5, 7), (7, 5), (223, 224), (224, 224), (256, 256), (256, 259), (261, 256), (256, 300),
             (300, 257), (333, 517), (517, 333), (1000, 40), (40, 1000), (1023, 1025)]


# --- the transform ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not PHOTOS, reason="scikit-image's sample photos are not installed")
@pytest.mark.parametrize("size", [224, 97])
@pytest.mark.parametrize("name,img", PHOTOS, ids=[n for n, _ in PHOTOS])
def test_photos_match_the_authors_eval_transform(name, img, size):
    ref = authors_eval(img, size)
    out = preprocess(img, size)
    assert out.dtype == np.float32 and out.shape == (3, size, size) and out.flags.c_contiguous
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("wh", SYNTHETIC, ids=[f"{w}x{h}" for w, h in SYNTHETIC])
@pytest.mark.parametrize("size", [224, 64, 33])
def test_synthetic_sizes_match_the_authors_eval_transform(wh, size):
    img = noise(*wh, seed=wh[0] * 31 + wh[1])
    assert np.array_equal(preprocess(img, size), authors_eval(img, size))


@pytest.mark.parametrize("interpolation", sorted(PIL_FILTERS))
def test_other_interpolations_follow_the_same_rules(interpolation):
    img = PHOTOS[2][1] if PHOTOS else noise(451, 300)
    assert np.array_equal(preprocess(img, 64, interpolation=interpolation), authors_eval(img, 64, interpolation))
    assert np.array_equal(preprocess(img, 64, interpolation=interpolation.upper()), authors_eval(img, 64, interpolation))


def test_the_old_bicubic_transform_differs():
    """The comparisons above can fail: the previous transform is not the authors'."""
    imgs = [im for _, im in PHOTOS[:4]] + [noise(333, 517)]
    for img in imgs:
        assert not np.array_equal(old_preprocess(img, 224), authors_eval(img, 224))
        assert not np.array_equal(preprocess(img, 224, interpolation="bicubic"), preprocess(img, 224))
    # no resize at all (the shorter side is already 256): only the crop offset, round(35 / 2) = 18, differs
    img = noise(256, 259)
    assert np.array_equal(preprocess(img, 224), authors_eval(img, 224))
    assert not np.array_equal(old_preprocess(img, 224), authors_eval(img, 224))


def test_crop_pct_option():
    img = noise(333, 517)
    for crop_pct in (1.0, 0.95, 0.75):
        ref = tv_to_tensor_normalize(tv_center_crop(tv_resize(img, int((1 / crop_pct) * 96), Image.BILINEAR), 96, 96))
        assert np.array_equal(preprocess(img, 96, crop_pct=crop_pct), ref)
    assert data.resize_side(224) == 256 and data.resize_side(384) == int(256 / 224 * 384) == 438
    for bad in (0, 1.5, -0.5, float("nan"), "x", "0.9", True, [0.9]):
        with pytest.raises(UsageError, match="crop_pct must be in"):
            preprocess(img, 96, crop_pct=bad)


def _cover_reference(img, h, w, crop_pct=0.875):
    """The documented generalisation to a (h, w) crop, with exact fractions for the binding side."""
    iw, ih = img.size
    th, tw = int((1 / crop_pct) * h), int((1 / crop_pct) * w)
    if Fraction(th, ih) >= Fraction(tw, iw):
        new_h, new_w = th, int(th * iw / ih)
    else:
        new_h, new_w = int(tw * ih / iw), tw
    assert new_h >= h and new_w >= w
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.BILINEAR)
    return tv_to_tensor_normalize(tv_center_crop(img, h, w))


@pytest.mark.parametrize("hw", [(64, 80), (80, 64), (48, 160), (160, 48), (224, 225)])
@pytest.mark.parametrize("wh", [(451, 300), (300, 451), (500, 500), (7, 5), (1000, 40)])
def test_non_square_crops(hw, wh):
    img = noise(*wh, seed=3)
    out = preprocess(img, hw)
    assert out.shape == (3, *hw)
    assert np.array_equal(out, _cover_reference(img, *hw))


def test_center_crop_pads_like_torchvision():
    img = noise(5, 7)
    for h, w in [(9, 9), (10, 4), (4, 10), (7, 5), (3, 2), (8, 6)]:
        assert np.array_equal(center_crop(img, (h, w)), np.asarray(tv_center_crop(img, h, w)))
        assert np.array_equal(center_crop(np.asarray(img)[..., 0], (h, w)), np.asarray(tv_center_crop(img, h, w))[..., 0])


@pytest.mark.parametrize("mode", ["L", "P", "LA", "PA", "RGBA", "CMYK", "1", "YCbCr", "RGBX"])
def test_modes_convert_to_rgb_like_the_authors_loader(mode):
    img = noise(90, 70, mode=mode)
    assert np.array_equal(preprocess(img, 48), authors_eval(img, 48))


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_modes_are_refused(mode):
    img = Image.fromarray(np.full((40, 50), 1000, {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    if img.mode != mode:
        img = img.convert(mode)
    with pytest.raises(UsageError, match=r"more than 8 bits per channel.*convert it to 8-bit RGB"):
        preprocess(img, 48)


def test_numpy_arrays_bytes_and_file_objects(tmp_path):
    img = noise(90, 70)
    ref = preprocess(img, 48)
    arr = np.asarray(img)
    assert np.array_equal(preprocess(arr, 48), ref)
    assert np.array_equal(preprocess(np.dstack([arr, np.full(arr.shape[:2], 7, np.uint8)]), 48), ref)  # RGBA
    assert np.array_equal(preprocess(arr[..., 1], 48), preprocess(img.getchannel(1), 48))
    path = tmp_path / "a.png"
    img.save(path)
    assert np.array_equal(preprocess(path, 48), ref)
    assert np.array_equal(preprocess(str(path), 48), ref)
    assert np.array_equal(preprocess(path.read_bytes(), 48), ref)
    with open(path, "rb") as f:
        assert np.array_equal(preprocess(f, 48), ref)
    with open(path, "r", encoding="latin-1") as f, pytest.raises(UsageError, match="binary mode"):
        preprocess(f, 48)
    with pytest.raises(UsageError, match="the file object could not be read"):
        preprocess(f, 48)  # closed
    for bad, what in [(arr.astype(np.float32), "dtype float32"), (arr[None], r"shape \(1, 70, 90, 3\)"),
                      (arr[..., :2], r"shape \(70, 90, 2\)"), (arr.transpose(2, 0, 1), r"shape \(3, 70, 90\)"),
                      (np.zeros((0, 5, 3), np.uint8), "no pixels")]:
        with pytest.raises(UsageError, match=what):
            preprocess(bad, 48)


def test_lazily_opened_pil_images(tmp_path):
    img = noise(90, 70)
    img.save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as lazy:
        assert np.array_equal(preprocess(lazy, 48), preprocess(img, 48))
    _truncated_png(tmp_path / "t.png")
    with Image.open(tmp_path / "t.png") as lazy, pytest.raises(UsageError, match="could not be decoded"):
        preprocess(lazy, 48)


# --- refusals ------------------------------------------------------------------------------------------
def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG whose IHDR claims ``width`` x ``height`` RGB pixels, with a few bytes of IDAT."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 8)) + chunk(b"IEND", b"")


def _truncated_png(path):
    buf = io.BytesIO()
    noise(300, 200).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.mark.parametrize("wh", [(30000, 30000), (10000, 10000)], ids=["bomb", "pil-warning-range"])
def test_decompression_bomb_refused_from_the_header(tmp_path, wh):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(*wh))
    assert path.stat().st_size < 100
    pil_limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    w, h = wh
    line = (f"{path} claims {w}x{h} pixels ({w * h:,}), more than the limit of 89,478,485 (a decompression bomb?): "
            f"if it is genuine, raise the limit with max_pixels= or DEFMAMBA_MAX_IMAGE_PIXELS")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for call in (lambda: load_image(path), lambda: preprocess(path), lambda: preprocess(path.read_bytes()),
                     lambda: calibration_batches(tmp_path, 64, 1)):
            with pytest.raises(UsageError) as e:
                call()
            assert str(e.value).endswith(line.split(" claims ")[1]) and "\n" not in str(e.value)
    assert not [x for x in seen if issubclass(x.category, Image.DecompressionBombWarning)]
    with pytest.raises(UsageError) as e:
        load_image(path)
    assert str(e.value) == line
    # PIL's own setting and the warning filters are as they were
    assert Image.MAX_IMAGE_PIXELS == pil_limit and warnings.filters == filters


def test_pixel_limit_argument_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    noise(30, 20).save(path)
    assert preprocess(path, 48).shape == (3, 48, 48)
    with pytest.raises(UsageError, match=r"claims 30x20 pixels \(600\), more than the limit of 599"):
        load_image(path, max_pixels=599)
    load_image(path, max_pixels=600)
    monkeypatch.setenv("DEFMAMBA_MAX_IMAGE_PIXELS", "500")
    assert data.pixel_limit() == 500
    with pytest.raises(UsageError, match="more than the limit of 500"):
        preprocess(path, 48)
    assert preprocess(path, 48, max_pixels=10**6).shape == (3, 48, 48)  # the argument wins
    monkeypatch.delenv("DEFMAMBA_MAX_IMAGE_PIXELS")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL's own setting does not decide, ours does
    assert preprocess(path, 48).shape == (3, 48, 48)
    assert Image.MAX_IMAGE_PIXELS == 100
    monkeypatch.setenv("DEFMAMBA_MAX_IMAGE_PIXELS", "200_000_000")
    assert data.pixel_limit() == 200_000_000
    for bad in ("lots", "0", "-5"):
        monkeypatch.setenv("DEFMAMBA_MAX_IMAGE_PIXELS", bad)
        with pytest.raises(UsageError, match="DEFMAMBA_MAX_IMAGE_PIXELS must be a positive whole number"):
            preprocess(path, 48)
    monkeypatch.delenv("DEFMAMBA_MAX_IMAGE_PIXELS")
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(UsageError, match="more than the limit of 100"):
        load_image(path)
    for bad in (0, -1, 2.5, "9", True):
        with pytest.raises(UsageError, match="max_pixels must be a positive whole number"):
            load_image(path, max_pixels=bad)


def test_pils_own_bomb_check_becomes_a_usage_error(tmp_path, monkeypatch):
    """Frames or tiles that grow past the header's size are refused by PIL during the decode, at
    PIL's process-wide limit (the decode runs outside our lock, so we do not change that setting
    for it); here simulated at load: PIL's error comes out as one UsageError line."""
    path = tmp_path / "a.png"
    noise(20, 20).save(path)
    real_load = ImageFile.ImageFile.load

    def load(self):
        Image._decompression_bomb_check((100, 100))
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(UsageError, match=r"PIL refuses to decode it as a possible decompression bomb .*"
                                             r"raise the limit with max_pixels= or DEFMAMBA_MAX_IMAGE_PIXELS"):
            preprocess(path, 48, max_pixels=100_000)
    assert not seen and warnings.filters == filters


def test_decoding_runs_in_parallel(tmp_path, monkeypatch):
    """Only the header read holds the module's lock: a decode in one thread does not wait for another's."""
    import threading

    path = tmp_path / "a.png"
    noise(20, 20).save(path)
    real_load = ImageFile.ImageFile.load
    inside, release = threading.Event(), threading.Event()

    def slow_load(self):
        if threading.current_thread().name == "slow":
            inside.set()
            release.wait(30)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", slow_load)
    t = threading.Thread(target=lambda: load_image(path), name="slow")
    t.start()
    assert inside.wait(30)
    try:
        assert load_image(path).size == (20, 20)  # would block on the lock if the decode held it
    finally:
        release.set()
        t.join(30)


def test_extreme_aspect_ratio_is_bounded_by_the_limit():
    strip = noise(2, 300)
    with pytest.raises(UsageError, match=r"resizing it for a 224x224 crop needs 256x38400 pixels.*less extreme aspect"):
        preprocess(strip, 224, max_pixels=50_000)
    assert preprocess(strip, 224).shape == (3, 224, 224)


def test_bad_files_and_objects(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("hello, not an image")
    (tmp_path / "folder").mkdir()
    _truncated_png(tmp_path / "trunc.png")
    buf = io.BytesIO()
    noise(300, 200).save(buf, format="JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[:-400])
    cases = [
        (tmp_path / "empty.png", "is an empty file"),
        (tmp_path / "notes.jpg", "is not an image that PIL can read"),
        (tmp_path / "folder", "is a folder, not an image file"),
        (tmp_path / "nope.png", "does not exist"),
        (tmp_path / "trunc.png", "could not be decoded .*damaged or truncated"),
        (tmp_path / "trunc.jpg", "could not be decoded .*damaged or truncated"),
        (b"", "bytes are empty"),
        (b"GIF89a-no", "is not an image that PIL can read"),
        (None, "cannot use NoneType as an image"),
        (3, "cannot use int as an image"),
        ([noise(9, 9)], "cannot use list as an image"),
        (torch.zeros(3, 9, 9), "cannot use Tensor as an image"),
    ]
    for image, message in cases:
        with pytest.raises(UsageError, match=message) as e:
            preprocess(image, 48)
        assert isinstance(e.value, DefMambaError) and "\n" not in str(e.value)
    for bad in ("cubic", 3):
        with pytest.raises(UsageError, match="interpolation must be one of"):
            preprocess(noise(9, 9), 48, interpolation=bad)
    for bad in (0, (0, 5), (5,), "big", "22", 224.5, (64, 64.5), True, None):
        with pytest.raises(UsageError, match="image size must be"):
            preprocess(noise(9, 9), bad)


def test_normalisation_is_checked():
    img = noise(9, 9)
    assert np.array_equal(preprocess(img, 48, mean=[0.5] * 3, std=(0.25,) * 3),
                          (preprocess(img, 48, mean=(0, 0, 0), std=(1, 1, 1)) - 0.5) / np.float32(0.25))
    for mean, std, what in [([1e308] * 3, IMAGENET_STD, "overflow float32"), (IMAGENET_MEAN, [1e-45] * 3, "overflow"),
                            ([0.5, 0.5], IMAGENET_STD, "three finite"), (IMAGENET_MEAN, [0.2, 0, 0.2], "std > 0"),
                            ([float("nan")] * 3, IMAGENET_STD, "three finite"), ("abc", IMAGENET_STD, "three finite")]:
        with pytest.raises(UsageError, match=what):
            preprocess(img, 48, mean=mean, std=std)


def test_calibration_uses_the_same_preprocessing(tmp_path):
    for i in range(3):
        noise(80 + 9 * i, 60 + 5 * i, seed=i).save(tmp_path / f"p{i}.png")
    batches = calibration_batches(tmp_path, 48, 1, interpolation="bicubic", crop_pct=0.9)
    assert np.array_equal(batches[1][0], preprocess(tmp_path / "p1.png", 48, 0.9, interpolation="bicubic"))
    assert np.array_equal(calibration_batches(tmp_path, 48, 3)[0][2], preprocess(tmp_path / "p2.png", 48))


def test_preprocessing_record():
    rec = preprocessing_record(224)
    assert rec["interpolation"] == "bilinear" and rec["crop_pct"] == 0.875 and rec["resize"] == 256
    assert rec["center_crop"] == [224, 224] and rec["mean"] == list(IMAGENET_MEAN) and rec["std"] == list(IMAGENET_STD)
    assert rec["layout"] == "NCHW" and rec["dtype"] == "float32"
    rec = preprocessing_record((64, 80), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), interpolation="BICUBIC", crop_pct=0.9)
    assert rec["resize"] == [71, 88] and rec["interpolation"] == "bicubic" and rec["mean"] == [0.5] * 3
    with pytest.raises(UsageError, match="interpolation must be one of"):
        preprocessing_record(224, interpolation="cubic")
