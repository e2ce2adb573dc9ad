"""build_engine and build_engine_for_cli against a fake TensorRT (no GPU here): both precision paths
apply the one float32 policy, the engine and its sidecar are written as a pair or not at all, and bad
input is one line before any slow work."""
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import defmamba_deploy as dd
import fake_tensorrt as ft
from defmamba_deploy.onnx.precision import float32_nodes, name_nodes
from defmamba_deploy.runtime.tensorrt import build as tb
from defmamba_deploy.runtime.tensorrt import env


def _tiny_model() -> onnx.ModelProto:
    """Conv -> LayerNorm (NHWC) -> ReduceMean -> Gemm: kept float32 are LayerNorm, ReduceMean and the head
    Gemm; the Conv and the Transpose are converted. One node has no name."""
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
            (("conv.w", (4, 3, 1, 1)), ("ln.g", (4,)), ("ln.b", (4,)), ("fc.w", (5, 4)), ("fc.b", (5,)))]
    init.append(numpy_helper.from_array(np.array([1, 2], np.int64), "axes"))
    nodes = [
        helper.make_node("Conv", ["input", "conv.w"], ["c"], name="/stem/Conv"),
        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),  # unnamed: name_nodes names it
        helper.make_node("LayerNormalization", ["t", "ln.g", "ln.b"], ["n"], axis=-1, name="/norm/LayerNormalization"),
        helper.make_node("ReduceMean", ["n", "axes"], ["p"], keepdims=0, name="/pool/ReduceMean"),
        helper.make_node("Gemm", ["p", "fc.w", "fc.b"], ["logits"], transB=1, name="/head/Gemm"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    path = tmp_path / "tiny.onnx"
    onnx.save(_tiny_model(), str(path))
    lib = tmp_path / "libdefmamba_trt_plugins.so"
    lib.write_bytes(b"\x7fELF fake")
    monkeypatch.setattr(tb, "device_info", lambda: ("Fake GPU", "9.0"))

    def use(trt):
        monkeypatch.setattr(tb, "require_tensorrt", lambda: trt)
        return trt

    profile = tb.ShapeProfile((1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64))
    return path, lib, use, profile


def _kept(path):
    return set(float32_nodes(name_nodes(onnx.load(str(path)))))


def test_tensorrt_10_pins_the_policy_nodes(setup, tmp_path):
    path, lib, use, profile = setup
    trt = use(ft.full_module("10.13.0.35"))
    out = tmp_path / "e.plan"
    info = tb.build_engine(path, out, precision="fp16", profile=profile, plugins=lib, timing_cache=tmp_path / "t.cache")
    network, config = trt.built
    assert network.flags == 0 and {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= config.flags
    kept = _kept(path)
    assert kept == {"/norm/LayerNormalization", "/pool/ReduceMean", "/head/Gemm"}
    # every layer of those nodes is pinned (the extra layers the parser makes for a Gemm and a LayerNorm, and
    # the helpers between kept layers, too); nothing of the Conv or the Transpose
    pinned = [layer for layer in network.layers if layer.precision_is_set]
    assert {layer.name for layer in pinned} == set(info.fp32_layers)
    by_node = [layer.metadata for layer in pinned if layer.metadata]
    assert by_node.count("[ONNX Layer: /head/Gemm]") == 2 and by_node.count("[ONNX Layer: /norm/LayerNormalization]") == 3
    assert {"ONNXTRT_unsqueezeTensor", "ONNXTRT_squeezeTensor", "ONNXTRT_reshapeTensor"} <= set(info.fp32_layers)
    assert not any(layer.name.startswith(("/stem/Conv", "Transpose", "conv.w")) for layer in pinned)
    assert [n.name for n in network.parsed.graph.node] == [n.name for n in name_nodes(onnx.load(str(path))).graph.node]
    # the pair, and the timing cache
    assert out.read_bytes() == b"PLAN" and tb.read_engine_sidecar(out) == info
    assert not info.strongly_typed and info.precision == "fp16" and info.compute_capability == "9.0"
    assert (tmp_path / "t.cache").read_bytes() == b"timing-cache"


@pytest.mark.parametrize("version,flags", [("11.0.0", 0), ("10.13.0.35", 1 << 3)], ids=["trt11", "trt10-strongly-typed"])
def test_strongly_typed_keeps_the_same_nodes_in_the_onnx(setup, tmp_path, version, flags):
    path, lib, use, profile = setup
    trt = use(ft.full_module(version))
    info = tb.build_engine(path, tmp_path / "e.plan", precision="fp16", profile=profile, plugins=lib,
                           strongly_typed=None if version.startswith("11") else True)
    network, config = trt.built
    assert network.flags == flags and not config.flags  # no precision flags on a strongly typed network
    assert info.strongly_typed and set(info.fp32_layers) == _kept(path)  # the same set as the TensorRT 10 pins
    parsed = {n.name: n for n in network.parsed.graph.node}
    halves = {i.name for i in network.parsed.graph.initializer if i.data_type == TensorProto.FLOAT16}
    assert "conv.w" in halves or any(n.startswith("conv.w") for n in halves)  # the Conv runs in float16
    assert "/head/Gemm" in parsed


def test_tensorrt_11_refuses_weak_typing(setup, tmp_path):
    path, lib, use, profile = setup
    use(ft.full_module("11.0.0"))
    with pytest.raises(dd.UsageError, match="strongly typed networks only"):
        tb.build_engine(path, tmp_path / "e.plan", precision="fp16", profile=profile, plugins=lib, strongly_typed=False)


def test_failed_build_writes_nothing_and_keeps_the_old_pair(setup, tmp_path):
    path, lib, use, profile = setup
    out = tmp_path / "e.plan"
    use(ft.full_module())
    tb.build_engine(path, out, profile=profile, plugins=lib)
    old = tb.read_engine_sidecar(out)
    use(ft.full_module(plan=None))
    with pytest.raises(dd.UsageError, match="failed to build the engine"):
        tb.build_engine(path, out, precision="fp16", profile=profile, plugins=lib)
    assert out.read_bytes() == b"PLAN" and tb.read_engine_sidecar(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.plan", "e.plan.json", "libdefmamba_trt_plugins.so",
                                                          "tiny.onnx"]


@pytest.mark.parametrize("kwargs,match", [
    ({"onnx_file": "missing.onnx"}, "missing.onnx does not exist"),
    ({"onnx_file": "{tiny}", "output": "x.plan.json"}, "ends in .json"),
    ({"onnx_file": "{lib}"}, "is not an .onnx file"),
    ({"onnx_file": "{tiny}", "calib_images": "imgs"}, "--calib-images is for --int8"),
    ({"onnx_file": "{tiny}", "precision": "int8"}, "--int8 needs calibration images"),
    ({"onnx_file": None, "precision": "int8", "calib_images": "nowhere"}, "nowhere does not exist or is not a folder"),
    ({"onnx_file": None, "precision": "int8", "calib_images": "{dir}", "calib_batch": 0}, "--calib-batch must be an integer >= 1"),
    ({"onnx_file": None, "max_shape": "8x224"}, "is not BxHxW"),
    ({"onnx_file": None, "preset": "warp-speed"}, "unknown preset"),
    ({"onnx_file": None, "model": "q"}, "unknown model"),
    ({"onnx_file": None, "precision": "fp64"}, "precision 'fp64' is not one of"),
    ({"onnx_file": None, "workspace_gib": 0}, r"--workspace \(GiB\) must be > 0"),
    ({"onnx_file": None, "workspace_gib": float("nan")}, r"--workspace \(GiB\) must be a finite number"),
    ({"onnx_file": None, "workspace_gib": float("inf")}, r"--workspace \(GiB\) must be a finite number"),
    ({"onnx_file": None, "plugins": "nope.so"}, "nope.so does not exist"),
    ({"onnx_file": None, "plugins": "{dir}"}, "is a folder, not a file"),
    ({"onnx_file": None, "plugins": "{tiny}"}, r"tiny\.onnx is not a shared library"),
    ({"onnx_file": "{dir}"}, r"ONNX file \S+ is a folder, not a file"),
    ({"onnx_file": "{tiny}", "output": "{dir}"}, r"cannot write engine \S+: it is a folder, not a file \(choose another --output\)"),
])
def test_cli_build_rejects_bad_input_before_any_work(setup, tmp_path, monkeypatch, kwargs, match):
    path, lib, use, _ = setup
    use(ft.full_module())
    import defmamba_deploy.onnx as onnx_pkg

    monkeypatch.setattr(onnx_pkg, "export_onnx", lambda *a, **k: pytest.fail("exported before checking the input"))
    monkeypatch.setattr(tb, "build_engine", lambda *a, **k: pytest.fail("built before checking the input"))
    subs = {"{tiny}": str(path), "{lib}": str(lib), "{dir}": str(tmp_path)}
    kwargs = {k: subs.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    kwargs.setdefault("plugins", str(lib))
    with pytest.raises(dd.DefMambaError, match=match):
        tb.build_engine_for_cli(**{"model": "t", **kwargs})


def test_cli_build_uses_the_preset_export_settings(setup, tmp_path, monkeypatch):
    path, lib, use, _ = setup
    use(ft.full_module())
    import defmamba_deploy.onnx as onnx_pkg

    seen = {}

    def fake_export(model, weights, **kw):
        seen.update(kw, model=model)
        raise dd.UsageError("stop here")

    monkeypatch.setattr(onnx_pkg, "export_onnx", fake_export)
    with pytest.raises(dd.UsageError, match="stop here"):
        tb.build_engine_for_cli(None, model="t", preset="dynamic-shape-224-512", plugins=lib)
    assert seen["model"] == "tiny" and seen["dynamic"] == "shape" and seen["img_size"] == (224, 224)


def test_cli_build_end_to_end_with_an_onnx_file(setup, tmp_path, monkeypatch):
    path, lib, use, _ = setup
    use(ft.full_module())
    monkeypatch.chdir(tmp_path)
    out, info = tb.build_engine_for_cli(path, model="t", precision="fp16", plugins=lib, min_shape="1x64x64",
                                        opt_shape="2x64x64", max_shape="4x64x64")
    assert out.name == "defmamba_t_fp16.plan" and out.is_file() and info.profile["max"] == [4, 3, 64, 64]


def test_env_loaders_without_the_libraries(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_cuda(name, *a, **k):
        if name.startswith(("cuda", "tensorrt")):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_cuda)
    with pytest.raises(dd.MissingDependencyError, match="cuda-python is not installed: pip install cuda-python"):
        env.cudart()
    with pytest.raises(dd.MissingDependencyError, match="TensorRT is not installed: pip install"):
        env.require_tensorrt()
    assert env.tensorrt_version() is None
    assert env.trt_major("10.13.0.35") == 10
    with pytest.raises(dd.UsageError, match="cannot read the TensorRT version"):
        env.trt_major("ten")



# --- files that cannot be written or read: one line, before any build ------------------------------------

def test_build_checks_every_output_before_the_build(setup, tmp_path):
    path, lib, use, profile = setup
    trt = use(ft.full_module())
    (tmp_path / "engine_dir").mkdir()
    cases = [
        ({"output": tmp_path / "engine_dir"}, r"^cannot write engine \S+engine_dir: it is a folder, not a file"),
        ({"output": tmp_path / ("e" * 246 + ".plan")}, r"^cannot write engine sidecar \S+: the name .* is 256 bytes"),
        ({"output": tmp_path / "e.plan", "timing_cache": tmp_path / "tiny.onnx" / "t.cache"},
         r"^cannot write timing cache \S+t\.cache: \S+tiny\.onnx is a file, not a folder \(choose another --timing-cache\)"),
    ]
    for kwargs, match in cases:
        with pytest.raises(dd.UsageError, match=match):
            tb.build_engine(path, profile=profile, plugins=lib, **kwargs)
        assert trt.built is None, "built before checking the outputs"
        with pytest.raises(dd.UsageError, match=match.replace("^", "")):
            tb.build_engine_for_cli(path, model="t", plugins=lib, **kwargs)
        assert trt.built is None, "built before checking the outputs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine_dir", "libdefmamba_trt_plugins.so", "tiny.onnx"]


def test_build_refuses_input_files_of_the_wrong_kind(setup, tmp_path):
    path, lib, use, profile = setup
    use(ft.full_module())
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk" * 50)
    for onnx_file, match in ((tmp_path / "folder.onnx", "is a folder, not a file"), (tmp_path / "empty.onnx", "is empty"),
                             (tmp_path / "junk.onnx", "is not a valid ONNX model")):
        with pytest.raises(dd.UsageError, match=match):
            tb.build_engine(onnx_file, tmp_path / "e.plan", profile=profile, plugins=lib)
        with pytest.raises(dd.UsageError, match=match):
            tb.build_engine_for_cli(onnx_file, model="t", plugins=lib, output=tmp_path / "e.plan")
    assert not (tmp_path / "e.plan").exists()


def _runtime_engine(tmp_path, monkeypatch, plan: bytes):
    """An engine file with a good sidecar, and a fake TensorRT whose runtime cannot deserialize it."""
    from defmamba_deploy.files import write_json
    from defmamba_deploy.runtime.tensorrt import runner as rn

    info = tb.EngineInfo(tensorrt_version="10.13.0.35", gpu_name="Fake GPU", compute_capability="9.0",
                         precision="fp32", profile={"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]},
                         plugin_library="lib.so", plugin_library_sha256="", onnx_path="t.onnx", onnx_sha256="",
                         variant="tiny")
    engine = tmp_path / "t.plan"
    engine.write_bytes(plan)
    write_json(tb.engine_sidecar_path(engine), info.to_dict())
    trt = ft.full_module("10.13.0.35")
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: None)
    monkeypatch.setattr(rn, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(rn, "cudart", lambda: object())
    monkeypatch.setattr(rn, "device_info", lambda runtime=None: ("Fake GPU", "9.0"))
    return engine, rn


def test_the_runner_refuses_engine_files_of_the_wrong_kind(tmp_path, monkeypatch):
    engine, rn = _runtime_engine(tmp_path, monkeypatch, b"\x00garbage, not a plan")
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\x7fELF fake")
    r = rn.TrtRunner(engine, plugins=lib)
    with pytest.raises(dd.UsageError, match=r"^TensorRT could not deserialize \S+t\.plan: it is not an engine of this "
                                             r"TensorRT or it is damaged; rebuild it"):
        r.activate()
    assert not r.is_active
    engine.write_bytes(b"")
    with pytest.raises(dd.UsageError, match=r"^engine \S+t\.plan is empty \(0 bytes\): build one with"):
        rn.TrtRunner(engine)
    engine.unlink()
    engine.mkdir()
    with pytest.raises(dd.UsageError, match=r"^engine \S+t\.plan is a folder, not a file \(build one with"):
        rn.TrtRunner(engine)
    engine.rmdir()
    engine.write_bytes(b"PLAN")
    tb.engine_sidecar_path(engine).unlink()
    tb.engine_sidecar_path(engine).mkdir()
    with pytest.raises(dd.UsageError, match=r"engine sidecar \S+t\.plan\.json is a folder, not a file; rebuild"):
        rn.TrtRunner(engine)


@pytest.mark.parametrize("change,match", [
    ({"profile": {"min": ["1", 3, 64, 64], "max": [4, 3, 64, 64]}}, "gives a profile"),
    ({"profile": {"min": [1, 3, 64, 64], "max": [4, 3, 64, True]}}, "gives a profile"),
    ({"tensorrt_version": 10}, "tensorrt_version is 10, which is not what build-engine writes"),
    ({"backbone": "no"}, "backbone is 'no'"),
    ({"precision": "fp64"}, "unknown precision 'fp64'"),
])
def test_an_engine_sidecar_of_the_wrong_shape_is_one_line(tmp_path, change, match):
    good = {"tensorrt_version": "10.13.0.35", "compute_capability": "9.0", "precision": "fp32",
            "profile": {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}}
    assert tb.EngineInfo.from_dict(good).min_shape == (1, 3, 64, 64)
    with pytest.raises(dd.UsageError, match=match + r".*rebuild the engine"):
        tb.EngineInfo.from_dict({**good, **change}, "e.plan.json")
    with pytest.raises(dd.UsageError, match="holds a JSON list, not an object"):
        tb.EngineInfo.from_dict([good], "e.plan.json")


def test_the_runner_checks_the_engine_before_the_plugin_library(tmp_path, monkeypatch):
    """An engine of another TensorRT needs a rebuild whatever the library: that is the line, not the library's."""
    engine, rn = _runtime_engine(tmp_path, monkeypatch, b"PLAN")
    info = tb.read_engine_sidecar(engine)
    info.tensorrt_version = "10.8.0"
    from defmamba_deploy.files import write_json

    write_json(tb.engine_sidecar_path(engine), info.to_dict())
    with pytest.raises(dd.UsageError, match="built with TensorRT 10.8.0, this is TensorRT 10.13.0.35"):
        rn.TrtRunner(engine, plugins=tmp_path / "no_such_lib.so").activate()
    with pytest.raises(dd.MissingDependencyError, match="no_such_lib.so does not exist"):
        info.tensorrt_version = "10.13.0.35"
        write_json(tb.engine_sidecar_path(engine), info.to_dict())
        rn.TrtRunner(engine, plugins=tmp_path / "no_such_lib.so").activate()
