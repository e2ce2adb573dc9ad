"""The service Predictor: the sidecar's preprocessing, classifier-only, and one UsageError line (never
anything else) for every bad input a request can carry."""
import io
import json
import struct
import zlib

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from defmamba_deploy.data import preprocess, preprocessing_record
from defmamba_deploy.errors import DefMambaError, UsageError
from defmamba_deploy.onnx.sidecar import OnnxSidecar, sidecar_path
from defmamba_deploy.runtime import Predictor
from defmamba_deploy.runtime.base import Runner

CLASSES = 7


class FakeRunner(Runner):
    """Logits = per-channel means times a fixed matrix; records every batch it gets."""

    backend = "fake"

    def __init__(self, outputs: int = 1, spatial: bool = False) -> None:
        super().__init__()
        self.output_names = ["logits"] if outputs == 1 else [f"feat{i}" for i in range(outputs)]
        self.spatial = spatial
        self.seen: list[np.ndarray] = []

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, x):
        self.seen.append(x)
        if self.spatial:
            return [x]
        return [x.mean(axis=(2, 3)) @ np.arange(3 * CLASSES, dtype=np.float32).reshape(3, CLASSES)]


def image(w=90, h=70, seed=0, mode="RGB"):
    arr = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return img if mode == "RGB" else img.convert(mode)


def bomb_png(width=30000, height=30000) -> bytes:
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 8)) + chunk(b"IEND", b""))


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.png"
    image().save(good)
    buf = io.BytesIO()
    image(300, 200).save(buf, format="PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    image(300, 200).save(buf, format="JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[:-500])
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    (tmp_path / "folder").mkdir()
    return tmp_path


def test_every_kind_of_image_gives_the_same_pixels(files):
    runner = FakeRunner()
    pred = Predictor.from_runner(runner, 48)
    img = Image.open(files / "good.png").convert("RGB")
    want = preprocess(img, 48)
    kinds = [files / "good.png", str(files / "good.png"), (files / "good.png").read_bytes(), img, np.asarray(img),
             open(files / "good.png", "rb")]
    for kind in kinds:
        res = pred.predict(kind, topk=3)
        assert len(res) == 1 and len(res[0]) == 3
        assert np.array_equal(runner.seen[-1][0], want)
    kinds[-1].close()
    res = pred.predict(kinds[:5], topk=2)
    assert len(res) == 5 and all(np.array_equal(b, want) for b in runner.seen[-1])
    assert all([c["class"] for c in r] == [c["class"] for c in res[0]] for r in res)
    assert pred.predict((p for p in [files / "good.png"]), topk=1)[0][0]["class"] == res[0][0]["class"]  # any iterable
    assert len(runner.seen[-1]) == 1
    assert pred.predict([]) == []
    assert len(pred.predict(files / "good.png", topk=np.int64(2))[0]) == 2


@pytest.mark.parametrize("mode", ["P", "LA", "CMYK", "1", "L", "RGBA", "PA"])
def test_pil_modes_are_converted_to_rgb(mode):
    runner = FakeRunner()
    img = image(mode=mode)
    Predictor.from_runner(runner, 48).predict(img)
    assert np.array_equal(runner.seen[-1][0], preprocess(img.convert("RGB"), 48))


def _high_depth(mode):
    arr = np.full((40, 50), 1000, {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
    return Image.fromarray(arr)


BAD = {
    "truncated png": (lambda d: d / "trunc.png", "could not be decoded"),
    "truncated jpeg": (lambda d: d / "trunc.jpg", "could not be decoded"),
    "folder": (lambda d: d / "folder", "is a folder, not an image file"),
    "missing": (lambda d: d / "nope.png", "does not exist"),
    "not an image": (lambda d: d / "text.jpg", "is not an image that PIL can read"),
    "empty file": (lambda d: d / "empty.png", "is an empty file"),
    "bomb": (lambda d: d / "bomb.png", r"claims 30000x30000 pixels \(900,000,000\), more than the limit of 89,478,485"),
    "bomb bytes": (lambda d: bomb_png(), "claims 30000x30000 pixels"),
    "garbage bytes": (lambda d: b"\x00\x01garbage", "is not an image that PIL can read"),
    "mode I;16": (lambda d: _high_depth("I;16"), "mode 'I;16'"),
    "mode I": (lambda d: _high_depth("I"), "mode 'I'"),
    "mode F": (lambda d: _high_depth("F"), "mode 'F'"),
    "float array": (lambda d: np.zeros((40, 40, 3), np.float32), "dtype float32"),
    "4-d array": (lambda d: np.zeros((2, 40, 40, 3), np.uint8), "pass a list for several images"),
    "CHW array": (lambda d: np.zeros((3, 40, 40), np.uint8), r"shape \(3, 40, 40\)"),
    "empty array": (lambda d: np.zeros((0, 40, 3), np.uint8), "no pixels"),
    "None": (lambda d: None, "cannot use NoneType as an image"),
    "int": (lambda d: 5, "cannot use int as an image"),
    "object": (lambda d: object(), "cannot use object as an image"),
    "tensor": (lambda d: torch.zeros(3, 40, 40), "cannot use Tensor as an image"),
    "None in a list": (lambda d: [d / "good.png", None], r"^images\[1\]: cannot use NoneType as an image"),
    "bad file in a list": (lambda d: [d / "good.png", d / "good.png", d / "trunc.png"], r"^images\[2\]: .*trunc.png"),
    "nested list": (lambda d: [[d / "good.png"]], "cannot use list as an image"),
    "text file object": (lambda d: open(d / "good.png", encoding="latin-1"), "binary mode"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_usage_error_line(files, name):
    make, message = BAD[name]
    pred = Predictor.from_runner(FakeRunner(), 48)
    item = make(files)
    with pytest.raises(UsageError, match=message) as e:
        pred.predict(item)
    assert isinstance(e.value, DefMambaError) and e.value.exit_code == 2 and "\n" not in str(e.value)
    if hasattr(item, "close"):
        item.close()


@pytest.mark.parametrize("topk", [0, -1, 2.5, "3", True, None, [3]])
def test_bad_topk(files, topk):
    pred = Predictor.from_runner(FakeRunner(), 48)
    with pytest.raises(UsageError, match="topk must be an integer >= 1"):
        pred.predict(files / "good.png", topk=topk)


def test_options_and_pixel_limit(files, monkeypatch):
    runner = FakeRunner()
    pred = Predictor.from_runner(runner, (48, 64), interpolation="bicubic", crop_pct=0.9)
    pred.predict(files / "good.png")
    assert np.array_equal(runner.seen[-1][0], preprocess(files / "good.png", (48, 64), 0.9, interpolation="bicubic"))
    assert not np.array_equal(runner.seen[-1][0], preprocess(files / "good.png", (48, 64)))
    for kwargs, message in [({"interpolation": "cubic"}, "interpolation must be one of"),
                            ({"crop_pct": 1.2}, "crop_pct must be in"), ({"max_pixels": 0}, "max_pixels must be"),
                            ({"img_size": (0, 4)}, "image size must be positive")]:
        with pytest.raises(UsageError, match=message):
            Predictor.from_runner(FakeRunner(), **{"img_size": 48, **kwargs})
    small = Predictor.from_runner(FakeRunner(), 48, max_pixels=6299)  # good.png is 90x70 = 6300
    with pytest.raises(UsageError, match=r"claims 90x70 pixels \(6,300\), more than the limit of 6,299"):
        small.predict(files / "good.png")
    # a crop below the model's minimum is the runner's one-line refusal
    with pytest.raises(UsageError, match="too small"):
        Predictor.from_runner(FakeRunner(), 16).predict(files / "good.png")
    monkeypatch.setenv("DEFMAMBA_MAX_IMAGE_PIXELS", "6000")
    with pytest.raises(UsageError, match=r"more than the limit of 6,000 \(a decompression bomb\?\): if it is genuine, raise the limit"):
        Predictor.from_runner(FakeRunner(), 48).predict(files / "good.png")


def test_backbone_runners_are_refused(files):
    with pytest.raises(UsageError, match=r"is a backbone \(4 feature maps\), not a classifier"):
        Predictor.from_runner(FakeRunner(outputs=4), 48)
    pred = Predictor.from_runner(FakeRunner(spatial=True), 48)  # one output, but not (batch, classes)
    with pytest.raises(UsageError, match=r"returned shape \[1, 3, 48, 48\] for 1 image\(s\), not \(batch, classes\)"):
        pred.predict(files / "good.png")


# --- ONNX files: tiny hand-made graphs with a sidecar --------------------------------------------------
def _tiny_onnx(path, *, backbone=False, sidecar: dict | None = None, write_sidecar=True):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 48, 48])
    if backbone:
        outs = [helper.make_tensor_value_info(f"feat{i}", TensorProto.FLOAT, ["batch", 3, 48, 48]) for i in range(4)]
        nodes = [helper.make_node("Identity", ["input"], [f"feat{i}"]) for i in range(4)]
        inits = []
    else:
        outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])]
        w = np.arange(3 * CLASSES, dtype=np.float32).reshape(3, CLASSES)
        inits = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())]
        nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
                 helper.make_node("MatMul", ["m", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [x], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    if write_sidecar:
        side = {"variant": "tiny", "backbone": backbone,
                "inputs": [{"name": "input", "shape": ["batch", 3, 48, 48], "dtype": "float32"}],
                "outputs": [{"name": o.name, "shape": ["batch", CLASSES] if not backbone else ["batch", 3, 48, 48],
                             "dtype": "float32"} for o in outs],
                "export_input_size": [48, 48], **(sidecar or {})}
        sidecar_path(path).write_text(json.dumps(OnnxSidecar.from_dict(side).to_dict()))
    return path


def test_sidecar_preprocessing_is_used(files):
    path = _tiny_onnx(files / "m.onnx", sidecar={"preprocessing": preprocessing_record(48, interpolation="bicubic",
                                                                                       crop_pct=0.9)})
    pred = Predictor(path, threads=1)
    assert (pred.img_size, pred.interpolation, pred.crop_pct) == ((48, 48), "bicubic", 0.9)
    res = pred.predict(files / "good.png", topk=CLASSES)
    x = preprocess(files / "good.png", 48, 0.9, interpolation="bicubic")
    logits = x.mean(axis=(1, 2)) @ np.arange(3 * CLASSES, dtype=np.float32).reshape(3, CLASSES)
    assert [r["class"] for r in res[0]] == list(np.argsort(-logits, kind="stable"))
    explicit = Predictor(path, threads=1, interpolation="nearest", crop_pct=1.0, img_size=(48, 48))
    assert (explicit.interpolation, explicit.crop_pct) == ("nearest", 1.0)


def test_old_sidecars_and_no_sidecar_use_the_default(files):
    old = {"preprocessing": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW",
                             "dtype": "float32"}}
    for path in (_tiny_onnx(files / "old.onnx", sidecar=old), _tiny_onnx(files / "bare.onnx", write_sidecar=False)):
        pred = Predictor(path, threads=1)
        assert (pred.interpolation, pred.crop_pct) == ("bilinear", 0.875)
        assert len(pred.predict([files / "good.png"] * 2)) == 2


@pytest.mark.parametrize("key,value", [("mean", [1e308] * 3), ("std", [1e-45] * 3), ("mean", [0.5, 0.5])])
def test_unusable_normalisation_is_refused(files, key, value):
    pre = {**preprocessing_record(48), key: value}
    try:
        path = _tiny_onnx(files / "n.onnx", sidecar={"preprocessing": pre})
    except UsageError:  # the sidecar's own check refuses it already
        return
    with pytest.raises(UsageError, match=r"sidecar records an unusable normalisation"):
        Predictor(path, threads=1)
    with pytest.raises(UsageError, match="mean|std"):
        Predictor.from_runner(FakeRunner(), 48, **{key: value})


def test_backbone_exports_are_refused_at_construction(files):
    path = _tiny_onnx(files / "bb.onnx", backbone=True)
    with pytest.raises(UsageError) as e:
        Predictor(path, threads=1)
    assert str(e.value) == f"{path} is a backbone export (4 feature maps), not a classifier: export without --backbone"
    path = _tiny_onnx(files / "bb_bare.onnx", backbone=True, write_sidecar=False)  # known by its outputs alone
    with pytest.raises(UsageError, match=r"is a backbone export \(4 feature maps\), not a classifier"):
        Predictor(path, threads=1)


# --- a real export -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from defmamba_deploy.onnx import export_onnx

    return export_onnx("t", None, portable=True, img_size=(64, 64), output=tmp_path_factory.mktemp("pred") / "t.onnx")


def test_export_records_the_preprocessing_and_predictor_reads_it(exported, files):
    side = json.loads(exported.sidecar_path.read_text())
    assert side["preprocessing"] == preprocessing_record((64, 64))
    assert side["preprocessing"]["interpolation"] == "bilinear" and side["preprocessing"]["resize"] == 73
    pred = Predictor(exported.path, threads=1)
    assert (pred.img_size, pred.interpolation, pred.crop_pct) == ((64, 64), "bilinear", 0.875)
    res = pred.predict([files / "good.png", image(40, 90)], topk=3)
    assert len(res) == 2 and all(len(r) == 3 for r in res)
    with pytest.raises(UsageError, match="claims 30000x30000"):
        pred.predict(files / "bomb.png")
