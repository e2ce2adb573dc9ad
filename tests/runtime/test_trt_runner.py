"""The trt backend's registry entry and TrtRunner, as far as a CPU allows: lazy import, fail-fast
checks with one line each, the engine sidecar checked before TensorRT is touched."""
import subprocess
import sys

import numpy as np
import pytest

import defmamba_deploy as dd
import fake_tensorrt as ft
from defmamba_deploy.files import write_json
from defmamba_deploy.runtime.registry import BackendRequest, Unavailable, get_backend
from defmamba_deploy.runtime.tensorrt import build as tb
from defmamba_deploy.runtime.tensorrt import runner as rn

try:
    import tensorrt  # noqa: F401

    HAVE_TRT = True
except Exception:  # noqa: BLE001
    HAVE_TRT = False


def test_importing_the_backend_does_not_import_tensorrt():
    code = ("import sys\nfrom defmamba_deploy.runtime.registry import backends\n"
            "b = backends()['trt']\nassert b.file_kind == 'engine' and b.precisions == ('fp32', 'fp16', 'int8')\n"
            "assert 'tensorrt' not in sys.modules and 'cuda' not in sys.modules, 'imported too early'\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the not-installed path cannot be shown")
def test_unavailable_without_tensorrt():
    backend = get_backend("trt")
    for request in (BackendRequest(model="t"), BackendRequest(model="t", file="x.plan")):
        with pytest.raises(Unavailable, match="TensorRT is not installed: pip install"):
            backend.precheck(request)
        with pytest.raises(Unavailable, match="TensorRT is not installed"):
            backend.create(request)


def _engine(tmp_path, **changes):
    info = tb.EngineInfo(tensorrt_version="10.13.0.35", gpu_name="Fake GPU", compute_capability="9.0",
                         precision="fp16", profile={"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]},
                         plugin_library="lib.so", plugin_library_sha256="abc", onnx_path="t.onnx", onnx_sha256="def",
                         variant="tiny")
    for k, v in changes.items():
        setattr(info, k, v)
    path = tmp_path / "t.plan"
    path.write_bytes(b"PLAN")
    write_json(tb.engine_sidecar_path(path), info.to_dict())
    return path


@pytest.fixture()
def fake_runtime(monkeypatch):
    monkeypatch.setattr(rn, "require_tensorrt", lambda: ft.module())
    monkeypatch.setattr(rn, "cudart", lambda: object())


def test_checks_fail_fast_with_one_line(tmp_path, fake_runtime):
    backend = get_backend("trt")
    with pytest.raises(Unavailable, match="int8 needs calibration data: build the engine with .*--int8"):
        backend.precheck(BackendRequest(model="t", precision="int8"))
    onnx_file = tmp_path / "t.onnx"
    onnx_file.write_bytes(b"")
    with pytest.raises(dd.UsageError, match="is an ONNX file; the trt backend runs an engine"):
        backend.precheck(BackendRequest(model="t", file=onnx_file))
    with pytest.raises(dd.UsageError, match="does not exist"):
        backend.precheck(BackendRequest(model="t", file=tmp_path / "none.plan"))
    engine = _engine(tmp_path)
    with pytest.raises(Unavailable, match="is a fp16 engine, not fp32"):
        backend.precheck(BackendRequest(model="t", file=engine))
    with pytest.raises(dd.UsageError, match="DefMamba-tiny, not DefMamba-small"):
        backend.precheck(BackendRequest(model="s", precision="fp16", file=engine))
    with pytest.raises(dd.UsageError, match="batch 8 is outside its profile"):
        backend.precheck(BackendRequest(model="t", precision="fp16", file=engine, img_size=(64, 64), batches=(1, 8)))
    with pytest.raises(dd.UsageError, match="input size 224x224 is outside"):
        backend.precheck(BackendRequest(model="t", precision="fp16", file=engine))
    tb.engine_sidecar_path(engine).unlink()
    with pytest.raises(dd.UsageError, match="is missing: engines are checked against the sidecar"):
        backend.precheck(BackendRequest(model="t", precision="fp16", file=engine, img_size=(64, 64)))


def test_create_gives_an_inactive_runner_for_a_fitting_engine(tmp_path, fake_runtime):
    engine = _engine(tmp_path)
    r = get_backend("trt").create(BackendRequest(model="tiny", precision="fp16", file=engine, img_size=(64, 64),
                                                 batches=(1, 4)))
    assert isinstance(r, rn.TrtRunner) and not r.is_active and r.name == "trt"
    assert r.input_shape == ["batch", 3, 64, 64] and r.device_memory_mib() is None
    x = np.zeros((8, 3, 64, 64), np.float32)
    with pytest.raises(dd.UsageError, match=r"outside the engine's profile \[1, 3, 64, 64\]..\[4, 3, 64, 64\]"):
        r.check_input(x)
    with pytest.raises(dd.UsageError, match="fixed input shape"):
        r.check_input(np.zeros((1, 3, 80, 64), np.float32))
    assert r.check_input(x[:2]).shape == (2, 3, 64, 64)


def test_activation_refuses_an_engine_from_another_tensorrt(tmp_path, monkeypatch):
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"x")
    engine = _engine(tmp_path, tensorrt_version="10.8.0")
    monkeypatch.setattr(rn, "require_tensorrt", lambda: ft.module("10.13.0.35"))
    monkeypatch.setattr(rn, "cudart", lambda: object())
    monkeypatch.setattr(rn, "device_info", lambda runtime=None: ("Fake GPU", "9.0"))
    r = rn.TrtRunner(engine, plugins=lib)
    with pytest.raises(dd.UsageError, match="built with TensorRT 10.8.0, this is TensorRT 10.13.0.35"):
        r.activate()
    assert not r.is_active
