"""TensorRT engine side, as far as a CPU allows: profiles, calibration data, sidecars, fail-fast paths.

Tests that need TensorRT and a GPU skip with the reason printed.
"""
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import defmamba_deploy as dd
from defmamba_deploy.cli import app
from defmamba_deploy.data import calibration_batches, preprocess
from defmamba_deploy.files import write_json
from defmamba_deploy.onnx import OnnxSidecar, read_sidecar
from defmamba_deploy.onnx.presets import list_presets, load_preset
from defmamba_deploy.runtime.tensorrt import build as tb


def _side(dynamic, batch, size):
    shape = ["batch" if dynamic != "none" else batch, 3, *(("height", "width") if dynamic == "shape" else size)]
    return OnnxSidecar(variant="tiny", inputs=[{"name": "input", "shape": shape}], outputs=[], dynamic=dynamic,
                       export_batch=batch, export_input_size=list(size))


runner = CliRunner()
SIDE_BATCH = _side("batch", 1, (224, 224))
SIDE_SHAPE = _side("shape", 1, (224, 224))
SIDE_NONE = _side("none", 2, (160, 256))

try:
    import tensorrt  # noqa: F401

    HAVE_TRT = True
except Exception:  # noqa: BLE001
    HAVE_TRT = False


def test_parse_shape():
    assert tb.parse_shape("8x224x224") == (8, 224, 224)
    assert tb.parse_shape("8,3,160,256") == (8, 160, 256)
    for bad in ("8x224", "8x4x224x224", "axbxc"):
        with pytest.raises(dd.UsageError):
            tb.parse_shape(bad)


def test_profile_defaults_by_dynamic_mode():
    p = tb.compute_profile(SIDE_BATCH)
    assert (p.min, p.opt, p.max) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    p = tb.compute_profile(SIDE_SHAPE)
    assert p.min == (1, 3, 224, 224) and p.max == (16, 3, 512, 512)
    p = tb.compute_profile(SIDE_NONE)
    assert p.min == p.opt == p.max == (2, 3, 160, 256)


def test_profile_from_preset_and_flags():
    assert {"dynamic-batch-224", "dynamic-shape-224-512", "static-1x224"} <= set(list_presets())
    p = tb.compute_profile(SIDE_SHAPE, preset=load_preset("dynamic-shape-224-512"))
    assert p.opt == (4, 3, 384, 384)
    p = tb.compute_profile(SIDE_SHAPE, preset=load_preset("dynamic-shape-224-512"), max_shape="8x448x448")
    assert p.max == (8, 3, 448, 448) and p.min == (1, 3, 224, 224)
    assert p.as_dict()["opt"] == [4, 3, 384, 384]


@pytest.mark.parametrize("side,kwargs,match", [
    (SIDE_BATCH, {"max_shape": "32x256x256"}, "fixed 224x224"),
    (SIDE_NONE, {"max_shape": "4x160x256"}, "fixed batch of 2"),
    (SIDE_SHAPE, {"min_shape": "1x32x224"}, "below the model minimum"),
    (SIDE_SHAPE, {"min_shape": "8x224x224", "opt_shape": "4x224x224"}, "min <= opt <= max"),
    (SIDE_BATCH, {"min_shape": "0x224x224"}, "must be >= 1"),
])
def test_profile_errors(side, kwargs, match):
    with pytest.raises(dd.UsageError, match=match):
        tb.compute_profile(side, **kwargs)


def test_unknown_preset():
    with pytest.raises(dd.UsageError, match="unknown preset"):
        load_preset("warp-speed")


@pytest.fixture()
def photo_dir(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray((rng.random((50 + i, 60, 3)) * 255).astype(np.uint8)).save(tmp_path / f"p{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_calibration_batches(photo_dir):
    batches = calibration_batches(photo_dir, 64, batch_size=3)
    assert len(batches) == 2 and all(b.shape == (3, 3, 64, 64) and b.dtype == np.float32 for b in batches)
    # same pixels as inference preprocessing, files in sorted order
    np.testing.assert_array_equal(batches[0][0], preprocess(photo_dir / "p0.png", 64))
    assert len(calibration_batches(photo_dir, (48, 64), batch_size=2, samples=4)) == 2
    with pytest.raises(dd.UsageError, match="fewer than one batch"):
        calibration_batches(photo_dir, 64, batch_size=8)
    empty = photo_dir / "empty"
    empty.mkdir()
    with pytest.raises(dd.UsageError, match="no images"):
        calibration_batches(empty, 64, batch_size=1)
    with pytest.raises(dd.UsageError, match="does not exist"):
        calibration_batches(photo_dir / "nope", 64, batch_size=1)


def test_engine_sidecar_round_trip_and_compat(tmp_path):
    info = tb.EngineInfo(tensorrt_version="10.14.1", gpu_name="NVIDIA H100", compute_capability="9.0", precision="fp16",
                         profile={"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]},
                         plugin_library="lib.so", plugin_library_sha256="abc", onnx_path="m.onnx", onnx_sha256="def",
                         variant="small", fp32_layers=["ln"])
    engine = tmp_path / "m.plan"
    write_json(tb.engine_sidecar_path(engine), info.to_dict())
    side = tb.read_engine_sidecar(engine)
    assert side == info and side.format == "defmamba-deploy/engine-sidecar/1"
    tb.check_engine_compatible(side, "10.14.1", "9.0", "abc")
    with pytest.raises(dd.UsageError, match="built with TensorRT 10.14.1, this is TensorRT 11.0.0.*rebuild"):
        tb.check_engine_compatible(side, "11.0.0", "9.0")
    with pytest.raises(dd.UsageError, match="compute capability 9.0"):
        tb.check_engine_compatible(side, "10.14.1", "8.6")
    with pytest.raises(dd.UsageError, match="plugin library differs"):
        tb.check_engine_compatible(side, "10.14.1", "9.0", "zzz")
    # what the engine can stand in for
    assert side.problem(variant="small", precision="fp16", img_sizes=[(224, 224)], batches=[1, 32]) is None
    assert "DefMamba-small, not DefMamba-tiny" in side.problem(variant="tiny")
    assert "fp16 engine, not int8" in side.problem(precision="int8")
    assert "batch 64 is outside" in side.problem(batches=[64])
    assert "input size 256x256 is outside" in side.problem(img_sizes=[(256, 256)])
    # unreadable sidecars: one line each
    tb.engine_sidecar_path(engine).write_text("{broken")
    with pytest.raises(dd.UsageError, match="not valid JSON"):
        tb.read_engine_sidecar(engine)
    write_json(tb.engine_sidecar_path(engine), {**info.to_dict(), "format": "other/1"})
    with pytest.raises(dd.UsageError, match="has format 'other/1'"):
        tb.read_engine_sidecar(engine)
    write_json(tb.engine_sidecar_path(engine), {k: v for k, v in info.to_dict().items() if k != "profile"})
    with pytest.raises(dd.UsageError, match="lacks profile"):
        tb.read_engine_sidecar(engine)
    write_json(tb.engine_sidecar_path(engine), {**info.to_dict(), "profile": {"min": [1, 224]}})
    with pytest.raises(dd.UsageError, match="not min/opt/max shapes"):
        tb.read_engine_sidecar(engine)
    with pytest.raises(dd.UsageError, match="missing"):
        tb.read_engine_sidecar(tmp_path / "other.plan")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the not-installed path cannot be shown")
@pytest.mark.parametrize("args", [
    ["build-engine", "--fp16", "missing.onnx"],
    ["build-engine", "--int8", "--calib-images", "nowhere"],
    ["parity", "-m", "t", "--backends", "torch,trt", "--img-size", "48"],
])
def test_tensorrt_commands_fail_fast_without_tensorrt(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "TensorRT is not installed: pip install" in r.output and "Traceback" not in r.output


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_bench_skips_trt_without_tensorrt():
    from defmamba_deploy.bench import run_bench

    rep = run_bench("t", backends=["trt"], sizes=[(48, 48)], iters=1, seconds=None, warmup=0)
    assert rep.results == [] and "TensorRT is not installed" in rep.skipped[0]["reason"]


@pytest.mark.gpu
def test_engine_build_and_parity_on_gpu(tmp_path):
    if not HAVE_TRT:
        pytest.skip("TensorRT is not installed (needs an NVIDIA GPU machine): engine build/run not exercised here")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from defmamba_deploy.onnx import export_onnx
    from defmamba_deploy.parity import run_parity

    onnx_path = export_onnx("t", img_size=(64, 64), output=tmp_path / "t.onnx").path
    engine = tmp_path / "t.plan"
    tb.build_engine(onnx_path, engine, profile=tb.compute_profile(read_sidecar(onnx_path), max_shape="4x64x64",
                                                                  opt_shape="2x64x64"))
    assert tb.read_engine_sidecar(engine).variant == "tiny"
    report = run_parity("t", backends=["torch", "trt"], engine=engine, img_size=(64, 64), samples=2, batches=(1, 2))
    assert report.passed
